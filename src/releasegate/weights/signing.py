"""Signed download URLs: bound to one licensee, one model commit and one file; they expire.

A signed URL is ``/weights/dl/<org>/<name>/<commit>/<path>?lic=<licensee>&exp=<unix>&sig=<hex>``
where ``sig = HMAC-SHA256(key, "rg-dl-v1\\n" model \\n commit \\n path \\n licensee \\n exp)`` and the
key is derived from the server secret (so rotating the secret voids every outstanding URL).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote, urlencode

from releasegate.errors import Forbidden

PREFIX = "/weights/dl"
_DOMAIN = b"releasegate/weights/url-signing"
_FP_DOMAIN = b"releasegate/weights/fingerprint"


def signing_key(server_secret: bytes) -> bytes:
    """The URL-signing key: the server secret, domain-separated from every other use."""
    return hmac.new(server_secret, _DOMAIN, hashlib.sha256).digest()


def fingerprint_secret(server_secret: bytes) -> bytes:
    """The fingerprint secret: stable for as long as the server secret is."""
    return hmac.new(server_secret, _FP_DOMAIN, hashlib.sha256).digest()


def _message(model: str, commit: str, path: str, licensee: str, expires: int) -> bytes:
    return "\n".join(("rg-dl-v1", model, commit, path, licensee, str(expires))).encode()


def signature(key: bytes, *, model: str, commit: str, path: str, licensee: str, expires: int) -> str:
    return hmac.new(key, _message(model, commit, path, licensee, expires), hashlib.sha256).hexdigest()


def signed_path(key: bytes, *, model: str, commit: str, path: str, licensee: str, expires: int) -> str:
    """The path and query of a signed URL (relative to the server root)."""
    sig = signature(key, model=model, commit=commit, path=path, licensee=licensee, expires=expires)
    query = urlencode({"lic": licensee, "exp": str(expires), "sig": sig})
    return f"{PREFIX}/{model}/{commit}/{quote(path)}?{query}"


@dataclass(frozen=True)
class SignedGrant:
    """What a verified signature vouches for."""

    model: str
    commit: str
    path: str
    licensee: str
    expires: int


def verify(key: bytes, *, model: str, commit: str, path: str, licensee: str | None, expires: str | None,
           sig: str | None, now: datetime) -> SignedGrant:
    """The grant a signed URL carries; Forbidden (``signature_invalid`` / ``signature_expired``) otherwise.

    The comparison is constant-time and happens before the expiry is looked at, so a forger
    learns nothing from the error about which part was wrong.
    """
    if not licensee or not expires or not sig or not expires.isdigit() or len(expires) > 12:
        raise Forbidden("this download link is incomplete; ask for a new one by downloading again",
                        code="signature_invalid")
    expected = signature(key, model=model, commit=commit, path=path, licensee=licensee, expires=int(expires))
    if not hmac.compare_digest(expected, sig.lower()):
        raise Forbidden("this download link's signature is not valid (tampered or for another file); "
                        "download again to get a fresh link", code="signature_invalid")
    if int(expires) <= int(now.timestamp()):
        raise Forbidden("this download link has expired; download again to get a fresh link",
                        code="signature_expired")
    return SignedGrant(model=model, commit=commit, path=path, licensee=licensee, expires=int(expires))
