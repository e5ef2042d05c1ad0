"""Fault injection by request header (``x-mock-*``): the header names and canned payloads.

The headers are interpreted in :meth:`MockUpstream._http` (status, delay, garbage) and
:meth:`MockUpstream._shape` (chunk delay, chunk count, abort-after).
"""

from __future__ import annotations

__all__ = ["FAULT_HEADERS", "GARBAGE_BODY"]

FAULT_HEADERS: tuple[str, ...] = (
    "x-mock-status",
    "x-mock-delay",
    "x-mock-garbage",
    "x-mock-chunk-delay",
    "x-mock-chunks",
    "x-mock-abort-after",
)
GARBAGE_BODY = b"\xff\xfe<<mock upstream garbage: this is not JSON>>\x00{{"
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}
