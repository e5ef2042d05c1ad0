"""Structured logging that never carries secrets.

``configure_logging(json=True)`` emits one JSON object per line; every record passes
through ``redact`` so API keys, bearer tokens and signed-URL signatures are masked
wherever they appear (message, arguments or extra fields).
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_SECRET_PATTERNS = (
    re.compile(r"\b(rg[kt])_[0-9A-Za-z]{20,}"),
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)([?&](?:sig|signature|token)=)[^&\s\"']+"),
)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with every credential-looking substring replaced by a marker."""
    text = _SECRET_PATTERNS[0].sub(lambda m: f"{m.group(1)}_[redacted]", text)
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)}[redacted]", text)
    return _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}[redacted]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(data, default=str).decode()


def configure_logging(*, json: bool = False, level: str = "INFO") -> None:
    """Install one handler on the ``releasegate`` and ``uvicorn`` loggers (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    for name in ("releasegate", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
