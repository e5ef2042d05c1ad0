"""The release report: built from a small real release, rendered as HTML and Markdown, and through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from releasegate.clock import FrozenClock
from releasegate.errors import Forbidden, NotFound
from releasegate.plan.loader import load_plan_text
from releasegate.report import render
from releasegate.report.data import ReleaseReport, build_report
from releasegate.services import (
    applications,
    approvals,
    deployers,
    evidence,
    incidents,
    plans,
    rollouts,
)
from releasegate.services.context import Actor, ServiceContext

MODEL = "acme/atlas-8b"
XSS = "<script>alert('pwned')</script> & partner asked"
RESULTS_CSV = "suite,task,metric,value,stderr,samples,model\ncyber-uplift,,accuracy,0.15,0.02,400,\nrefusal-harmful,,refusal_rate,0.991,,2000,\n"


def _admit(ctx: ServiceContext, admin: Actor, name: str, tier: str) -> str:
    d = deployers.create(ctx, admin, name=name, contact_email=f"ops@{name}.example")
    a = applications.submit(ctx, admin, deployer=d["id"], model=MODEL, use_cases=["customer-support"])
    applications.approve(ctx, admin, a["id"], tier=tier)
    return str(d["id"])


def build_release(ctx: ServiceContext, admin: Actor, clock: FrozenClock, tmp: Path, example_plan_text: str) -> None:
    """internal → trusted-partners (override) → halt → resume → limited-public (override) → rollback."""
    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    for name, tier in (("acme-support", "internal"), ("bluebank", "trusted-partner"), ("redshift", "trusted-partner")):
        _admit(ctx, admin, name, tier)
        clock.advance(hours=1)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start internal dogfooding")
    clock.advance(days=3)
    csv = tmp / "evals.csv"
    csv.write_text(RESULTS_CSV)
    evidence.import_evidence(ctx, admin, csv, MODEL, "v1")
    bob = Actor(name="bob@acme.example", role="release_manager", email="bob@acme.example")
    approvals.approve(ctx, bob, MODEL, "v1", "trusted-partners", comment="policy review done")
    clock.advance(days=4)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="partners are waiting",
                        override_reason="board decision 2026-01-08: skip the 14-day soak for contracted partners")
    clock.advance(days=5)
    incidents.report(ctx, admin, MODEL, "v1", severity="critical", title="Jailbreak yields <b>exploit</b> steps")
    rollouts.transition(ctx, admin, MODEL, "v1", "halt", reason=XSS)
    clock.advance(days=1)
    rollouts.transition(ctx, admin, MODEL, "v1", "resume", reason="classifier patched and verified")
    clock.advance(days=6)
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="widen to the waitlist",
                        override_reason="regulator sandbox agreement")
    clock.advance(days=2)
    rollouts.transition(ctx, admin, MODEL, "v1", "rollback", reason="scope violations from waitlisted deployers")
    clock.advance(days=1)
    rollouts.transition(ctx, admin, MODEL, "v2", "promote", reason="v2 internal trial")
    clock.advance(days=2)


@pytest.fixture
def release(ctx: ServiceContext, admin: Actor, clock: FrozenClock, tmp_path: Path, example_plan_text: str) -> ReleaseReport:
    build_release(ctx, admin, clock, tmp_path, example_plan_text)
    return build_report(ctx, Actor(name="audra@regulator.example", role="auditor"), MODEL)


def test_report_gathers_what_happened(release: ReleaseReport, ctx: ServiceContext, admin: Actor) -> None:
    from releasegate.services import audit

    v1 = next(v for v in release.versions if v.version == "v1")
    assert [t.action for t in v1.transitions] == ["promote", "promote", "halt", "resume", "promote", "rollback"]
    assert [(s.stage, s.state) for s in v1.segments] == [
        ("internal", "active"), ("trusted-partners", "active"), ("trusted-partners", "halted"),
        ("trusted-partners", "active"), ("limited-public", "active"), ("trusted-partners", "active")]
    assert v1.segments[-1].ongoing and not v1.segments[0].ongoing
    assert v1.segments[0].seconds == 7 * 86400
    # Audience at the time: 1 internal deployer, then internal + 2 trusted partners.
    assert [s.audience_size for s in v1.segments[:3]] == [1, 3, 0]  # a halted version serves nobody
    times = {s.stage: s for s in v1.stage_time}
    assert times["trusted-partners"].by_state == {"active": (5 + 6 + 3) * 86400, "halted": 86400}
    assert v1.transitions[1].override_reason and v1.transitions[1].verdict_outcome == "fail"
    assert [(r["suite"], r["value"]) for r in release.results] == [("cyber-uplift", 0.15), ("refusal-harmful", 0.991)]
    assert release.incidents[0]["severity"] == "critical" and release.approvals[0]["approver"] == "bob@acme.example"
    size, head = audit.verify(ctx, admin)["size"], audit.verify(ctx, admin)["head"]
    assert (release.audit.size, release.audit.hash, release.audit.verified) == (size, head, True)
    assert {d["action"] for d in release.decisions} >= {"plan.apply", "rollout.promote", "rollout.halt", "rollout.rollback",
                                                         "incident.report", "approval.grant", "evidence.import",
                                                         "application.submit"}
    assert any("approximate" in n for n in release.notes)


def test_html_report_is_self_contained_escaped_and_complete(release: ReleaseReport) -> None:
    html = render(release, "html")
    assert html.startswith("<!DOCTYPE html>")
    for t in (t for v in release.versions for t in v.transitions):
        if "<" not in t.reason:
            assert t.reason in html
    assert "board decision 2026-01-08: skip the 14-day soak for contracted partners" in html
    assert release.audit.hash in html and f"#{release.audit.size}" in html
    # Escaping: user-provided text never becomes markup.
    assert "<script>" not in html.lower() and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; partner asked" in html
    assert "<b>exploit</b>" not in html and "&lt;b&gt;exploit&lt;/b&gt;" in html
    # Self-contained: no scripts, no external assets.
    assert not re.search(r"<script|<link|src=|@import|url\(", html, re.I)
    svg = re.search(r"<svg.*?</svg>", html, re.S)
    assert svg is not None
    segments = [s for v in release.versions for s in v.segments]
    assert len(re.findall(r'<rect class="seg ', svg.group(0))) == len(segments) == 7
    assert svg.group(0).count('class="lane-label"') == len(release.versions) == 2
    assert "2026-01-" in svg.group(0)  # dates on the axis
    assert "trusted-partners · 3 deployers" in svg.group(0)  # an audience label


def test_markdown_report_has_the_same_content(release: ReleaseReport) -> None:
    md = render(release, "md")
    assert md.startswith("# Release report: acme/atlas-8b")
    assert release.audit.hash in md
    assert "&lt;script&gt;" in md and "<script>" not in md
    for reason in ("start internal dogfooding", "classifier patched and verified", "scope violations from waitlisted deployers",
                   "regulator sandbox agreement"):
        assert reason in md
    timeline = md.split("## Stage timeline", 1)[1].split("##", 1)[0]
    assert timeline.count("| v1 |") == 6 and timeline.count("| v2 |") == 1


def test_report_needs_an_auditor_and_a_model(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    with pytest.raises(NotFound):
        build_report(ctx, admin, "acme/nothing")
    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    with pytest.raises(Forbidden):
        build_report(ctx, Actor(name="d", role="deployer", deployer_id="dep_x"), MODEL)
    fresh = build_report(ctx, admin, MODEL)  # nothing released yet still renders
    assert "never released" in render(fresh, "html") and "No version has been released yet" in render(fresh, "md")


def test_cli_writes_the_report(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import create_engine

    import releasegate.store.all_models  # noqa: F401
    from releasegate.cli.main import build_app
    from releasegate.store.base import Base

    monkeypatch.setenv("RELEASEGATE_DATABASE_URL", database_url)
    monkeypatch.setenv("RELEASEGATE_ACTOR", "alice@acme.example")
    monkeypatch.delenv("RELEASEGATE_SERVER", raising=False)
    runner, app = CliRunner(), build_app()
    repo = Path(__file__).resolve().parents[2]
    plan = repo / "src" / "releasegate" / "examples" / "atlas" / "plan.yaml"

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--data-dir", str(tmp_path / "data"), *args])
        assert result.exit_code == code, f"{args}: {result.exit_code}\n{result.stdout}\n{result.stderr}"
        return result.stdout + result.stderr

    cli("init")
    engine = create_engine(database_url)
    Base.metadata.create_all(engine)  # tables not yet in the migration (evidence, webhooks): until it is regenerated
    engine.dispose()
    cli("plan", "apply", str(plan))
    cli("promote", MODEL, "v1", "--reason", "start <internal>")
    out = tmp_path / "report.html"
    cli("report", MODEL, "--out", str(out))
    html = out.read_text()
    assert "start &lt;internal&gt;" in html and '<rect class="seg ' in html
    cli("report", MODEL, "--out", str(tmp_path / "report.md"), "--format", "md")
    assert (tmp_path / "report.md").read_text().startswith("# Release report: acme/atlas-8b")
    assert "invalid_format" in cli("report", MODEL, "--out", str(tmp_path / "r.pdf"), "--format", "pdf", code=2)
    assert "model_not_found" in cli("report", "acme/nope", "--out", str(tmp_path / "x.html"), code=2)


def test_api_serves_the_report_to_auditors_only(ctx: ServiceContext, admin: Actor, example_plan_text: str,
                                                 tmp_path: Path) -> None:
    import httpx

    from releasegate.api.app import create_app
    from releasegate.services import principals
    from releasegate.testing.server import run_in_thread

    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start & <go>")
    auditor = principals.create(ctx, admin, name="audra", role="auditor")["token"]
    reviewer = principals.create(ctx, admin, name="rita", role="reviewer")["token"]
    with run_in_thread(create_app(ctx=ctx)) as base, httpx.Client(base_url=base) as http:
        url = "/api/v1/models/acme/atlas-8b/report"
        md = http.get(url, params={"format": "md"}, headers={"Authorization": f"Bearer {auditor}"})
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert "start &amp; &lt;go&gt;" in md.text
        page = http.get(url, headers={"Authorization": f"Bearer {auditor}"})
        assert page.headers["content-type"].startswith("text/html") and '<rect class="seg ' in page.text
        denied = http.get(url, headers={"Authorization": f"Bearer {reviewer}"})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden_role"
        missing = http.get("/api/v1/models/acme/none/report", headers={"Authorization": f"Bearer {auditor}"})
        assert missing.status_code == 404
        # The CLI fetches the same document from the server.
        runner = CliRunner()
        from releasegate.cli.main import build_app

        out = tmp_path / "remote.md"
        result = runner.invoke(build_app(), ["--server", base, "--token", auditor, "report", MODEL, "--out", str(out)])
        assert result.exit_code == 0, result.stdout + result.stderr
        assert out.read_text().startswith("# Release report: acme/atlas-8b")


def test_a_tampered_trail_is_reported(ctx: ServiceContext, admin: Actor, example_plan_text: str) -> None:
    from sqlalchemy import text

    plans.apply(ctx, admin, load_plan_text(example_plan_text))
    rollouts.transition(ctx, admin, MODEL, "v1", "promote", reason="start internal")
    with ctx.db.transaction() as session:
        session.execute(text("UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 2"))
    report = build_report(ctx, admin, MODEL)
    assert not report.audit.verified and report.audit.problems
    assert "chain does NOT verify" in render(report, "html")
    assert "does NOT verify" in render(report, "md")
