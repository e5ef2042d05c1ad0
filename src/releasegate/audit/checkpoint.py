"""Signed checkpoints of the audit log head (Ed25519), for outside auditors to keep.

A checkpoint says "the log had ``size`` entries and its head hash was ``head``". Checking
a log against an old checkpoint catches a rewritten history even if every hash after it
was recomputed, because the signature cannot be forged without the key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from releasegate.audit.chain import canonical_json, format_time
from releasegate.errors import InvalidInput


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, created (mode 0600) if missing."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"{path} is not an Ed25519 private key", code="checkpoint_key_invalid")
        return key
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return key


def public_key_b64(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Checkpoint:
    size: int
    head: str
    at: datetime
    public_key: str
    signature: str

    def signed_payload(self) -> bytes:
        return canonical_json({"size": self.size, "head": self.head, "at": format_time(self.at), "public_key": self.public_key})

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "head": self.head, "at": format_time(self.at), "public_key": self.public_key, "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        try:
            return cls(
                size=int(data["size"]), head=str(data["head"]), at=datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00")),
                public_key=str(data["public_key"]), signature=str(data["signature"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidInput(f"not a releasegate checkpoint: {exc}", code="checkpoint_invalid") from exc


def sign_checkpoint(key: Ed25519PrivateKey, *, size: int, head: str, at: datetime) -> Checkpoint:
    unsigned = Checkpoint(size=size, head=head, at=at, public_key=public_key_b64(key.public_key()), signature="")
    signature = base64.b64encode(key.sign(unsigned.signed_payload())).decode()
    return Checkpoint(size=size, head=head, at=at, public_key=unsigned.public_key, signature=signature)


def signature_valid(checkpoint: Checkpoint, trusted_public_key: str | None = None) -> bool:
    """True if the signature is good (and, when given, made by ``trusted_public_key``)."""
    if trusted_public_key is not None and trusted_public_key != checkpoint.public_key:
        return False
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(checkpoint.public_key))
        pub.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_payload())
    except (InvalidSignature, ValueError):
        return False
    return True
