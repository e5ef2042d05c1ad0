"""``releasegate webhook ...`` on a local store: add (secret shown once), list, deliver, the log, remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

import releasegate.store.all_models  # noqa: F401
from releasegate.cli.main import build_app
from releasegate.store.base import Base

PLAN = Path(__file__).resolve().parents[2] / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
MODEL = "acme/atlas-8b"
DEAD = "http://127.0.0.1:9/nothing-listens"


def test_webhook_commands(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASEGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("RELEASEGATE_ACTOR", "alice@acme.example")
    monkeypatch.delenv("RELEASEGATE_SERVER", raising=False)
    runner, app = CliRunner(), build_app()

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--data-dir", str(tmp_path / "data"), *args])
        assert result.exit_code == code, f"{args}: {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result.stdout + (result.stderr if code else "")

    cli("init")
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)  # tables not yet in the migration: until it is regenerated
    engine.dispose()
    cli("plan", "apply", str(PLAN))
    added = json.loads(cli("webhook", "add", DEAD, "--event", "halt", "-e", "rollback", "--json"))
    assert added["secret"].startswith("whsec_") and added["events"] == ["rollout.halt", "rollout.rollback"]
    listed = json.loads(cli("webhook", "list", "--json"))
    assert [w["id"] for w in listed] == [added["id"]] and "secret" not in listed[0]
    assert added["secret"] not in cli("webhook", "list")
    cli("promote", MODEL, "v1", "--reason", "start")
    cli("halt", MODEL, "v1", "--reason", "drill")
    assert json.loads(cli("webhook", "deliver", "--timeout", "1", "--json")) == {"attempts": 1}
    [d] = json.loads(cli("webhook", "deliveries", "--json"))
    assert (d["event"], d["status"], d["attempts"]) == ("rollout.halt", "pending", 1) and "ConnectError" in d["last_error"]
    assert json.loads(cli("webhook", "deliveries", "--status", "delivered", "--json")) == []
    cli("webhook", "remove", added["id"], "--reason", "retired")
    assert json.loads(cli("webhook", "list", "--json")) == []
    assert "invalid_url" in cli("webhook", "add", "ftp://example.org", "--event", "halt", code=2)
    assert "unknown_event" in cli("webhook", "add", DEAD, "--event", "explode", code=2)
    assert "local_only" in cli("--server", "http://127.0.0.1:9", "--token", "rgt_x", "webhook", "list", code=2)
