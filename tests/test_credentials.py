"""Key and token formats: recognisable, checksummed, only hashes stored."""

from __future__ import annotations

from releasegate import credentials


def test_generated_key_parses_and_matches_its_hash() -> None:
    cred = credentials.generate("rgk")
    assert cred.value.startswith("rgk_") and len(cred.value) == 54
    parsed = credentials.parse(cred.value, "rgk")
    assert parsed is not None and parsed.lookup == cred.lookup
    assert credentials.matches(cred.value, cred.secret_hash)
    assert cred.secret_hash != cred.value and cred.value not in cred.secret_hash


def test_checksum_rejects_a_typo() -> None:
    cred = credentials.generate("rgk")
    flipped = cred.value[:20] + ("A" if cred.value[20] != "A" else "B") + cred.value[21:]
    assert credentials.parse(flipped) is None


def test_wrong_prefix_is_rejected() -> None:
    cred = credentials.generate("rgt")
    assert credentials.parse(cred.value, "rgk") is None
    assert credentials.parse(cred.value, "rgt") is not None


def test_scanner_finds_only_real_keys() -> None:
    a, b = credentials.generate("rgk").value, credentials.generate("rgt").value
    fake = "rgk_" + "x" * 50
    text = f"config: key={a}\nother {fake}\ntoken: {b}"
    assert sorted(credentials.looks_like_credential(text)) == sorted([a, b])


def test_keys_are_unique() -> None:
    assert len({credentials.generate("rgk").value for _ in range(200)}) == 200
