"""The server secret is created once, whole, however many callers race for it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from releasegate.settings import Settings


def test_concurrent_first_use_yields_one_secret(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with ThreadPoolExecutor(max_workers=16) as pool:
        secrets = set(pool.map(lambda _: settings.server_secret(), range(64)))
    assert len(secrets) == 1
    (secret,) = secrets
    assert len(secret) >= 48
    assert (tmp_path / "data" / "server-secret").stat().st_mode & 0o077 == 0
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".server-secret.")]
