"""Evidence, incidents, approvals, gate checks and the controller, on the local store.

These commands call the services in-process as the local operator (``RELEASEGATE_ACTOR``, an
admin). They do not talk to ``--server`` yet: use the API (``/api/v1/evidence`` ...) remotely.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from releasegate.cli import output
from releasegate.cli.client import local_actor
from releasegate.cli.main import JsonOpt, ReasonOpt, emit, run, state
from releasegate.errors import InvalidInput
from releasegate.services import approvals, evidence, gates, incidents
from releasegate.services.context import ServiceContext

LOCAL = "Works on the local store only (not with --server)."
ModelArg = Annotated[str, typer.Argument(help="The model, org/name.", show_default=False)]
VersionArg = Annotated[str, typer.Argument(help="The version, as named in the plan.", show_default=False)]

evidence_app = typer.Typer(help=f"Import and list evaluation results and red-team findings. {LOCAL}", no_args_is_help=True)
incident_app = typer.Typer(help=f"Report, list and triage incidents. {LOCAL}", no_args_is_help=True)
gate_app = typer.Typer(help=f"Judge the gates into the next stage. {LOCAL}", no_args_is_help=True)


def _local(ctx: typer.Context) -> ServiceContext:
    s = state(ctx)
    if s.server:
        raise InvalidInput(f"this command does not support --server yet. {LOCAL}", code="local_only")
    return s.service_context()


# ---------------------------------------------------------------------------- evidence


@evidence_app.command("import")
def _import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Evaluation log or report: Inspect AI (.eval/.json), lm-eval results JSON, generic JSON/CSV.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The model, org/name.")],
    version: Annotated[str, typer.Option("--version", "-v", help="The version the evidence is about.")],
    format: Annotated[str | None, typer.Option("--format", "-f", help="inspect_ai, lm_eval, generic_json, generic_csv (default: detected).")] = None,
    log_model: Annotated[list[str] | None, typer.Option("--log-model", help="A model name in the log that means this version (repeatable).")] = None,
    suite: Annotated[str | None, typer.Option("--suite", help="Record every result under this suite name.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import one evidence file about a model version (each file once; audited)."""
    result = run(lambda: evidence.import_evidence(_local(ctx), local_actor(), file, model, version, format,
                                                  log_models=tuple(log_model or ()), suite=suite))

    def render() -> None:
        out = output.console()
        out.print(f"[green]imported[/green] {result['source_name']} ({result['source_format']}, sha256 {result['source_sha256'][:12]}…) "
                  f"as {result['id']}: {result['results']} result(s), {result['findings']} finding(s) for {model} {version}")
        for w in result["warnings"]:
            out.print(f"[yellow]warning[/yellow]: {w}")

    emit(result, as_json, render)


@evidence_app.command("list")
def _list(
    ctx: typer.Context,
    model: ModelArg,
    version: Annotated[str | None, typer.Option("--version", "-v", help="Only this version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluation results and findings recorded for a model, newest first."""
    data = run(lambda: evidence.list_evidence(_local(ctx), local_actor(), model, version))

    def render() -> None:
        output.table(data["results"], ["version", "suite", "task", "metric", "value", "stderr", "samples", "source_name", "imported_at"],
                     title="Evaluation results", empty="no evaluation results")
        output.table(data["findings"], ["id", "version", "severity", "status", "title"], title="Findings", empty="no findings")

    emit(data, as_json, render)


@evidence_app.command("finding")
def _finding(
    ctx: typer.Context,
    finding_id: Annotated[str, typer.Argument(help="The finding id (fnd_…).")],
    status: Annotated[str, typer.Option("--status", "-s", help="open, triaged, mitigated or closed.")],
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """Change a finding's status (open findings of the gate's severities block promotion)."""
    result = run(lambda: evidence.update_finding(_local(ctx), local_actor(), finding_id, status, reason=reason))
    emit(result, as_json, lambda: output.console().print(f"finding {finding_id} is now [bold]{result['status']}[/bold]"))


# ---------------------------------------------------------------------------- incidents


@incident_app.command("report")
def _report(
    ctx: typer.Context,
    model: ModelArg,
    version: VersionArg,
    severity: Annotated[str, typer.Option("--severity", "-s", help="low, medium, high or critical.")],
    title: Annotated[str, typer.Option("--title", "-t", help="One line: what happened.")],
    description: Annotated[str, typer.Option("--description", "-d", help="Details, reproduction, impact.")] = "",
    deployer: Annotated[str | None, typer.Option("--deployer", help="The deployer concerned, id or name.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="staff (default) or detector.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Record an incident against a version's current stage (halt rules may act on it)."""
    result = run(lambda: incidents.report(_local(ctx), local_actor(), model, version, severity=severity, title=title,
                                          description=description, deployer=deployer, source=source))
    emit(result, as_json, lambda: output.console().print(
        f"[red]incident[/red] {result['id']} ({result['severity']}) recorded for {model} {version} in stage {result['stage'] or '-'}"))


@incident_app.command("list")
def _incidents(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="org/name; all models when omitted.")] = None,
    version: Annotated[str | None, typer.Option("--version", "-v")] = None,
    status: Annotated[str | None, typer.Option("--status", "-s")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Incidents, newest first."""
    rows = run(lambda: incidents.list_incidents(_local(ctx), local_actor(), model, version=version, status=status))
    emit(rows, as_json, lambda: output.table(rows, ["id", "model", "version", "stage", "severity", "status", "source", "title", "created_at"],
                                             title="Incidents", empty="no incidents"))


@incident_app.command("update")
def _update(
    ctx: typer.Context,
    incident_id: Annotated[str, typer.Argument(help="The incident id (inc_…).")],
    status: Annotated[str, typer.Option("--status", "-s", help="triaged, mitigated, closed, or open to reopen.")],
    reason: ReasonOpt,
    severity: Annotated[str | None, typer.Option("--severity", help="Re-grade the incident.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move an incident along open → triaged → mitigated → closed (audited)."""
    result = run(lambda: incidents.transition(_local(ctx), local_actor(), incident_id, status, reason=reason, severity=severity))
    emit(result, as_json, lambda: output.console().print(f"incident {incident_id} is now [bold]{result['status']}[/bold] ({result['severity']})"))


# ---------------------------------------------------------------------------- gates and approvals


def render_verdicts(rows: list[dict[str, Any]]) -> None:
    out = output.console()
    if not rows:
        out.print("[dim]no serving versions: promote one into its first stage[/dim]")
    for row in rows:
        if row["verdict"] is None:
            out.print(f"{row['model']} {row['version']} ({row['state']}, {row['stage']}): in its last stage, no gate ahead")
            continue
        v = row["verdict"]
        colour = {"pass": "green", "fail": "red"}.get(v["outcome"], "yellow")
        out.print(f"{row['model']} {row['version']} ({row['state']}, {row['stage'] or '-'}) → {row['next_stage']}: "
                  f"[{colour}]{v['outcome']}[/{colour}]")
        output.table(v["results"], ["outcome", "kind", "message", "evidence"])


@gate_app.command("check")
def _check(
    ctx: typer.Context,
    model: ModelArg,
    version: Annotated[str | None, typer.Option("--version", "-v", help="This version, whatever its state.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The verdict on the next stage of each serving version: every criterion, why, and the evidence used."""
    rows = run(lambda: gates.check(_local(ctx), local_actor(), model, version))
    emit(rows, as_json, lambda: render_verdicts(rows))


@gate_app.command("request")
def _request(
    ctx: typer.Context,
    model: ModelArg,
    version: VersionArg,
    stage: Annotated[str, typer.Option("--stage", help="The stage the version should enter.")],
    comment: Annotated[str, typer.Option("--comment", "-c")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Ask for a promotion; the requester (RELEASEGATE_ACTOR) cannot approve it."""
    result = run(lambda: approvals.request_promotion(_local(ctx), local_actor(), model, version, stage, comment=comment))
    emit(result, as_json, lambda: output.console().print(f"{result['requested_by']} requested {model} {version} into {stage}"))


def _approve(
    ctx: typer.Context,
    model: ModelArg,
    version: VersionArg,
    stage: Annotated[str, typer.Option("--stage", help="The stage the version would enter.")],
    comment: Annotated[str, typer.Option("--comment", "-c", help="Recorded with the approval.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Approve a version entering a stage, as RELEASEGATE_ACTOR (an e-mail listed under a plan role). Local store only."""
    result = run(lambda: approvals.approve(_local(ctx), local_actor(), model, version, stage, comment=comment))
    emit(result, as_json, lambda: output.console().print(
        f"[green]approved[/green] {model} {version} into {stage} by {result['approver']} ({', '.join(result['roles'])})"))


def _controller(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between reconciliation passes.")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="Run one pass and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Watch halt rules and gates; halt, pause, roll back, suspend, auto-promote, announce readiness. Local store only."""
    from releasegate.controller.loop import Action, reconcile, run_forever

    service_ctx = run(lambda: _local(ctx))

    def show(actions: list[Action]) -> None:
        if as_json:
            output.print_json([a.to_dict() for a in actions])
            return
        if not actions and once:
            output.console().print("[dim]nothing to do[/dim]")
        for a in actions:
            mark = "[green]done[/green]" if a.done else f"[yellow]skipped[/yellow] ({a.note})"
            output.console().print(f"{a.kind} {a.target}: {mark} — {a.reason}")

    if once:
        show(run(lambda: reconcile(service_ctx)))
        return
    try:
        run_forever(service_ctx, interval=interval, on_actions=show, sleep=time.sleep)
    except KeyboardInterrupt:  # pragma: no cover - interactive
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    app.add_typer(evidence_app, name="evidence")
    app.add_typer(incident_app, name="incident")
    app.add_typer(gate_app, name="gate")
    app.command("approve")(_approve)
    app.command("controller")(_controller)
