"""Request recording: what the mock upstream saw (in memory, optionally a JSON-lines file)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from releasegate.mockupstream._asgi import _dumps

__all__ = ["MockState"]


class MockState:
    """What the mock upstream saw. Thread-safe: tests read it from another thread."""

    def __init__(self, max_recorded: int = 10_000, record_file: str | None = None) -> None:
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self.total = 0
        self.record_file = record_file
        self._fh: Any = None
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.total += 1
            entry["seq"] = self.total
            self.requests.append(entry)
            if self.record_file is not None:
                if self._fh is None:
                    self._fh = open(self.record_file, "ab")  # noqa: SIM115 - long-lived handle
                self._fh.write(_dumps(entry) + b"\n")
                self._fh.flush()

    def snapshot(
        self, request_id: str | None = None, path: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.requests)
        if request_id is not None:
            items = [r for r in items if r.get("request_id") == request_id]
        if path is not None:
            items = [r for r in items if r.get("path") == path]
        return items

    def seen(self, request_id: str) -> bool:
        return bool(self.snapshot(request_id=request_id))

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.requests[-1] if self.requests else None

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.total = 0

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
