"""Secret formats: API keys (``rgk_``), bearer tokens (``rgt_``). Recognisable, checksummed, hashed.

A credential is ``<prefix>_<lookup:12><secret:32><checksum:6>`` in base62. The checksum
(CRC32 of the rest) lets a secret scanner tell a real releasegate key from random text
without asking the server; the lookup part finds the stored row; only a SHA-256 of the
whole credential is stored, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIXES = ("rgk", "rgt")
_BODY = 12 + 32
_RE = re.compile(r"^(rgk|rgt)_([0-9A-Za-z]{12})([0-9A-Za-z]{32})([0-9A-Za-z]{6})$")


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _random_b62(width: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(width))


def _checksum(prefix: str, body: str) -> str:
    return _b62(zlib.crc32(f"{prefix}_{body}".encode()), 6)


def hash_secret(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


@dataclass(frozen=True)
class NewCredential:
    value: str  # shown once, never stored
    lookup: str
    secret_hash: str

    @property
    def hint(self) -> str:
        return f"{self.value[:8]}…{self.value[-4:]}"


def generate(prefix: str) -> NewCredential:
    assert prefix in PREFIXES
    body = _random_b62(12) + _random_b62(32)
    value = f"{prefix}_{body}{_checksum(prefix, body)}"
    return NewCredential(value=value, lookup=body[:12], secret_hash=hash_secret(value))


@dataclass(frozen=True)
class ParsedCredential:
    prefix: str
    lookup: str
    value: str


def parse(value: str, prefix: str | None = None) -> ParsedCredential | None:
    """The parts of a well-formed credential with a valid checksum, else None."""
    m = _RE.match(value)
    if m is None:
        return None
    p, lookup, secret, check = m.groups()
    if prefix is not None and p != prefix:
        return None
    if not hmac.compare_digest(_checksum(p, lookup + secret), check):
        return None
    return ParsedCredential(prefix=p, lookup=lookup, value=value)


def matches(value: str, secret_hash: str) -> bool:
    """Constant-time check of a presented credential against its stored hash."""
    return hmac.compare_digest(hash_secret(value), secret_hash)


def looks_like_credential(text: str) -> list[str]:
    """Every checksum-valid releasegate credential in ``text`` (for secret scanners)."""
    found = re.findall(r"\b(?:rgk|rgt)_[0-9A-Za-z]{50}\b", text)
    return [f for f in found if parse(f) is not None]
