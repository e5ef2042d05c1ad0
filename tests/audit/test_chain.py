"""The hash chain detects every kind of tampering and says where."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasegate.audit.chain import GENESIS, entry_hash, format_time, verify_chain
from releasegate.audit.checkpoint import Checkpoint, sign_checkpoint, signature_valid


def make_chain(n: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(1, n + 1):
        e = {"seq": i, "at": format_time(t0 + timedelta(minutes=i)), "actor": "alice", "action": "x.do",
             "target": f"t:{i}", "reason": None, "changes": {"i": i}, "prev_hash": prev}
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        entries.append(e)
    return entries


def test_intact_chain_verifies() -> None:
    assert verify_chain(make_chain(10)) == []
    assert verify_chain([]) == []


def test_edited_entry_is_named() -> None:
    chain = make_chain(10)
    chain[4]["changes"] = {"i": 999}
    problems = verify_chain(chain)
    assert [(p.seq, p.kind) for p in problems] == [(5, "edited")]


def test_deleted_entry_is_named() -> None:
    chain = make_chain(10)
    del chain[3]
    kinds = {(p.seq, p.kind) for p in verify_chain(chain)}
    assert (5, "deleted") in kinds


def test_inserted_entry_is_named() -> None:
    chain = make_chain(5)
    forged = dict(chain[2])
    forged["changes"] = {"forged": True}
    forged["hash"] = entry_hash(forged)
    chain.insert(3, forged)
    problems = verify_chain(chain)
    assert problems and problems[0].seq == 3


def test_reordered_entries_are_named() -> None:
    chain = make_chain(6)
    chain[2], chain[3] = chain[3], chain[2]
    problems = verify_chain(chain)
    assert any(p.kind == "inserted_or_reordered" for p in problems)


def test_recomputed_chain_passes_verify_but_not_a_checkpoint() -> None:
    key = Ed25519PrivateKey.generate()
    chain = make_chain(5)
    cp = sign_checkpoint(key, size=5, head=chain[-1]["hash"], at=datetime(2026, 2, 1, tzinfo=UTC))
    assert signature_valid(cp)
    forged = make_chain(5)
    forged[1]["changes"] = {"rewritten": True}
    prev = forged[0]["hash"]
    for e in forged[1:]:
        e["prev_hash"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
    assert verify_chain(forged) == []  # the chain alone cannot tell
    assert forged[-1]["hash"] != cp.head  # the signed checkpoint can


def test_checkpoint_signature_detects_tampering() -> None:
    key = Ed25519PrivateKey.generate()
    cp = sign_checkpoint(key, size=3, head="ab" * 32, at=datetime(2026, 2, 1, tzinfo=UTC))
    tampered = Checkpoint.from_dict({**cp.to_dict(), "size": 2})
    assert not signature_valid(tampered)
    other = sign_checkpoint(Ed25519PrivateKey.generate(), size=3, head="ab" * 32, at=cp.at)
    assert not signature_valid(other, trusted_public_key=cp.public_key)
