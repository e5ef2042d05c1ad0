"""The CLI as a person uses it: local store and remote server, tables and --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from releasegate.cli.main import build_app
from releasegate.testing.server import run_in_thread

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
MODEL = "acme/atlas-8b"


@pytest.fixture
def cli(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run `releasegate ...` against a fresh local store (SQLite file or a PostgreSQL schema)."""
    monkeypatch.setenv("RELEASEGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("RELEASEGATE_ACTOR", "alice@acme.example")
    monkeypatch.delenv("RELEASEGATE_SERVER", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    app = build_app()

    def invoke(*args: str, code: int | None = 0) -> tuple[str, str]:
        result = runner.invoke(app, ["--data-dir", str(tmp_path / "data"), *args])
        if code is not None:
            assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result.stdout, result.stderr

    return invoke


def test_walkthrough_local(cli) -> None:  # type: ignore[no-untyped-def]
    out, _ = cli("init")
    assert "rgt_" in out
    out, _ = cli("plan", "validate", str(PLAN))
    assert "ok" in out and "internal → trusted-partners" in out
    cli("plan", "apply", str(PLAN))
    out, _ = cli("plan", "apply", str(PLAN))
    assert "unchanged" in out
    d = json.loads(cli("deployer", "create", "bluebank", "--email", "ai@bluebank.example", "--json")[0])
    app = json.loads(cli("application", "submit", "bluebank", MODEL, "-u", "customer-support", "--json")[0])
    cli("application", "approve", app["id"], "--tier", "internal")
    key = json.loads(cli("key", "issue", "bluebank", "--model", MODEL, "-u", "customer-support", "--json")[0])
    assert key["key"].startswith("rgk_") and key["deployer_id"] == d["id"]
    listed = json.loads(cli("key", "list", "--json")[0])
    assert listed[0]["id"] == key["id"] and "key" not in listed[0]
    cli("promote", MODEL, "v1", "--reason", "start internal")
    status = json.loads(cli("status", MODEL, "--json")[0])
    v1 = next(r for r in status if r.get("version") == "v1")
    assert v1["state"] == "active" and v1["stage"] == "internal" and v1["audience_size"] == 1
    out, _ = cli("status")
    assert "internal" in out and "v1" in out
    _, err = cli("promote", MODEL, "v1", "--reason", "widen", code=1)
    assert "gate_not_passed" in err and "time_in_stage" in err
    cli("halt", MODEL, "v1", "--reason", "drill")
    _, err = cli("pause", MODEL, "v1", "--reason", "x", code=1)
    assert "illegal_transition" in err and "halted" in err
    hist = json.loads(cli("history", MODEL, "v1", "--json")[0])
    assert [h["action"] for h in hist] == ["promote", "halt"] and hist[1]["reason"] == "drill"
    out, _ = cli("audit", "verify")
    assert out.startswith("ok")
    entries = json.loads(cli("audit", "list", "--json")[0])
    assert entries[0]["action"] == "rollout.halt" and entries[0]["actor"] == "alice@acme.example"


def test_bad_input_exit_codes(cli, tmp_path: Path, database_url: str) -> None:  # type: ignore[no-untyped-def]
    if database_url.startswith("sqlite"):  # an embedded store that was never initialised
        _, err = cli("status", code=2)
        assert "releasegate init" in err
    cli("init")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: acme/x\nmodel: acme/y\n")
    _, err = cli("plan", "validate", str(bad), code=2)
    assert "bad.yaml:2" in err and "duplicate" in err.lower()
    out, _ = cli("plan", "validate", str(bad), "--json", code=2)
    assert json.loads(out)["ok"] is False
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cli("plan", "validate", str(empty), code=2)
    cli("plan", "validate", str(tmp_path / "missing.yaml"), code=2)
    _, err = cli("promote", "acme/nope", "v1", "--reason", "x", code=2)
    assert "model_not_found" in err
    cli("promote", MODEL, "v1", code=2)  # --reason missing: usage error
    cli("retarget", MODEL, "atlas", "v1=abc", "--reason", "x", code=2)


def test_remote_mode_matches_local(cli, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from releasegate.api.app import create_app
    from releasegate.settings import Settings

    out, _ = cli("init")
    token = next(w for w in out.split() if w.startswith("rgt_"))
    cli("plan", "apply", str(PLAN))
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=database_url))
    with run_in_thread(app) as base_url:
        monkeypatch.setenv("RELEASEGATE_SERVER", base_url)
        monkeypatch.setenv("RELEASEGATE_TOKEN", token)
        status = json.loads(cli("status", MODEL, "--json")[0])
        assert {r["version"] for r in status if "version" in r} == {"v1", "v2"}
        cli("promote", MODEL, "v1", "--reason", "remote start")
        _, err = cli("promote", MODEL, "v1", "--reason", "again", code=1)
        assert "gate_not_passed" in err
        out, _ = cli("audit", "verify", "--json")
        assert json.loads(out)["ok"] is True
        monkeypatch.setenv("RELEASEGATE_TOKEN", "rgt_bad")
        _, err = cli("status", code=1)
        assert "invalid_token" in err


def test_audit_checkpoint_roundtrip(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("init")
    cli("plan", "apply", str(PLAN))
    cp = tmp_path / "head.json"
    cli("audit", "checkpoint", "--out", str(cp))
    out, _ = cli("audit", "check", str(cp))
    assert out.startswith("ok")
    data = json.loads(cp.read_text())
    data["head"] = "0" * 64
    cp.write_text(json.dumps(data))
    out, _ = cli("audit", "check", str(cp), code=1)
    assert "bad_signature" in out
