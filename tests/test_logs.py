"""Logs are structured on request and never contain secrets."""

from __future__ import annotations

import json
import logging

import pytest

from releasegate import credentials
from releasegate.logs import JsonFormatter, RedactingFilter, redact


def test_redact_masks_keys_tokens_and_signatures() -> None:
    key = credentials.generate("rgk").value
    tok = credentials.generate("rgt").value
    text = f"key={key} auth='Bearer {tok}' url=/dl/x?exp=1&sig=abcdef123 other=fine"
    out = redact(text)
    assert key not in out and tok not in out and "abcdef123" not in out
    assert "other=fine" in out and "rgk_[redacted]" in out


def test_json_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    key = credentials.generate("rgk").value
    record = logging.LogRecord("releasegate.test", logging.WARNING, __file__, 1, "denied %s", (key,), None)
    record.deployer = "bluebank"
    record.header = f"Bearer {key}"
    assert RedactingFilter().filter(record)
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "denied rgk_[redacted]"
    assert data["deployer"] == "bluebank" and key not in json.dumps(data)
