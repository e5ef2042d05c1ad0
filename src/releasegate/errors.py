"""The error vocabulary every layer speaks: a machine-readable code and a sentence for a person.

Services raise these; the API turns them into ``{"error": {"code", "message", "details"}}``
with ``http_status``; the CLI turns them into exit codes (``exit_code``).
"""

from __future__ import annotations

from typing import Any


class ReleasegateError(Exception):
    """Base error: ``code`` for machines, ``message`` for people, ``details`` for context."""

    code: str = "error"
    http_status: int = 500
    exit_code: int = 1

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidInput(ReleasegateError):
    """The caller sent something malformed or semantically invalid (HTTP 422, exit 2)."""

    code = "invalid_input"
    http_status = 422
    exit_code = 2


class NotFound(ReleasegateError):
    """The named object does not exist, or the caller may not know that it does (404, exit 2)."""

    code = "not_found"
    http_status = 404
    exit_code = 2


class Refused(ReleasegateError):
    """A well-formed request that the current state does not allow (HTTP 409, exit 1)."""

    code = "refused"
    http_status = 409
    exit_code = 1


class Unauthenticated(ReleasegateError):
    """No credentials, or credentials that are not valid (HTTP 401)."""

    code = "unauthenticated"
    http_status = 401
    exit_code = 1


class Forbidden(ReleasegateError):
    """Valid credentials that do not allow this action on this object (HTTP 403)."""

    code = "forbidden"
    http_status = 403
    exit_code = 1
