"""The evidence, incident, gate, approve and controller commands on a local store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from releasegate.cli.main import build_app
from releasegate.store.base import Base
from releasegate.store.db import Database

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"
MODEL = "acme/atlas-8b"


@pytest.fixture
def cli(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RELEASEGATE_DATABASE_URL", database_url)
    monkeypatch.delenv("RELEASEGATE_SERVER", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    app = build_app()

    def invoke(*args: str, code: int | None = 0, actor: str = "ops@acme.example") -> tuple[str, str]:
        monkeypatch.setenv("RELEASEGATE_ACTOR", actor)
        result = runner.invoke(app, ["--data-dir", str(tmp_path / "data"), *args])
        if code is not None:
            assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result.stdout, result.stderr

    invoke("init")
    # The evidence tables join the migration when the lead regenerates it; until then, create them.
    import releasegate.store.all_models  # noqa: F401

    db = Database(database_url)
    Base.metadata.create_all(db.engine)
    db.dispose()
    invoke("plan", "apply", str(PLAN))
    return invoke


def test_evidence_gate_approve_controller(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("promote", MODEL, "v1", "-r", "internal dogfood")
    out, _ = cli("gate", "check", MODEL)
    assert "trusted-partners" in out and "inconclusive" in out and "no cyber-uplift/accuracy result" in out
    evals = tmp_path / "evals.json"
    evals.write_text(json.dumps({"model": "atlas-8b-v1", "results": [
        {"suite": "cyber-uplift", "metric": "accuracy", "value": 0.07},
        {"suite": "refusal-harmful", "metric": "refusal_rate", "value": 0.99}]}))
    out, _ = cli("evidence", "import", str(evals), "--model", MODEL, "--version", "v1")
    assert "2 result(s)" in out
    _, err = cli("evidence", "import", str(evals), "--model", MODEL, "--version", "v1", code=1)
    assert "evidence_duplicate" in err
    listed = json.loads(cli("evidence", "list", MODEL, "--json")[0])
    assert {r["suite"] for r in listed["results"]} == {"cyber-uplift", "refusal-harmful"}

    cli("gate", "request", MODEL, "v1", "--stage", "trusted-partners", actor="bob@acme.example")
    _, err = cli("approve", MODEL, "v1", "--stage", "trusted-partners", actor="bob@acme.example", code=1)
    assert "requester_cannot_approve" in err
    _, err = cli("approve", MODEL, "v1", "--stage", "trusted-partners", actor="mallory@acme.example", code=1)
    assert "not_an_approver" in err
    cli("approve", MODEL, "v1", "--stage", "trusted-partners", actor="alice@acme.example")
    cli("approve", MODEL, "v1", "--stage", "trusted-partners", "-c", "ok", actor="carol@acme.example")
    rows = json.loads(cli("gate", "check", MODEL, "--json")[0])
    outcomes = {r["kind"]: r["outcome"] for r in rows[0]["verdict"]["results"]}
    assert outcomes == {"time_in_stage": "fail", "eval": "pass", "findings": "pass", "approvals": "pass"}

    cli("promote", MODEL, "v1", "-r", "partners", "--override", "the pilot contract starts today", actor="alice@acme.example")
    inc = json.loads(cli("incident", "report", MODEL, "v1", "-s", "critical", "-t", "exploit generated", "--json")[0])
    assert json.loads(cli("incident", "list", MODEL, "--json")[0])[0]["id"] == inc["id"]
    actions = json.loads(cli("controller", "--once", "--json")[0])
    assert [(a["kind"], a["done"]) for a in actions] == [("halt", True)]
    assert json.loads(cli("controller", "--once", "--json")[0]) == []
    out, _ = cli("incident", "update", inc["id"], "-s", "triaged", "-r", "confirmed")
    assert "triaged" in out
    _, err = cli("incident", "update", inc["id"], "-s", "open", "-r", "x", code=1)
    assert "illegal_incident_transition" in err
    status = json.loads(cli("status", MODEL, "--json")[0])
    assert next(r for r in status if r.get("version") == "v1")["state"] == "halted"


def test_help_says_local_only(cli) -> None:  # type: ignore[no-untyped-def]
    out, _ = cli("evidence", "--help")
    assert "local store only" in out
    out, _ = cli("approve", "--help")
    assert "Local store only" in out
