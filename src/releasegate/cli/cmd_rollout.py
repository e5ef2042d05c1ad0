"""``status``, the state-machine transitions and ``retarget``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, ReasonOpt, client, emit, run

ModelArg = Annotated[str, typer.Argument(help="The model, org/name.", show_default=False)]
VersionArg = Annotated[str, typer.Argument(help="The version, as named in the plan.", show_default=False)]


def _status(ctx: typer.Context, model: Annotated[str | None, typer.Argument(help="org/name; all models when omitted.")] = None,
            as_json: JsonOpt = False) -> None:
    """Where each version stands: state, stage, audience size, time in stage."""
    rows = run(lambda: client(ctx).status(model))
    versions = [r for r in rows if "version" in r]
    aliases = [r for r in rows if "alias" in r]

    def render() -> None:
        table_rows = [{**r, "stage": f"{r['stage']} ({(r['stage_index'] or 0) + 1}/{r['stage_count']})" if r["stage"] else "-",
                       "time_in_stage": output.human_duration(r["seconds_in_stage"])} for r in versions]
        output.table(table_rows, ["model", "version", "state", "stage", "channels", "audience_size", "time_in_stage", "reason"],
                     title="Rollouts", empty="no models yet: `releasegate plan apply PLAN.yaml`")
        if aliases:
            output.table(aliases, ["model", "alias", "targets"], title="Aliases")

    emit(rows, as_json, render)


def _transition(action: str, help_text: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        model: ModelArg,
        version: VersionArg,
        reason: ReasonOpt,
        as_json: JsonOpt = False,
    ) -> None:
        result = run(lambda: client(ctx).transition(model, version, action, reason=reason, override_reason=None))
        emit(result, as_json, lambda: _done(action, result))

    command.__doc__ = help_text
    return command


def _promote(
    ctx: typer.Context,
    model: ModelArg,
    version: VersionArg,
    reason: ReasonOpt,
    override: Annotated[str | None, typer.Option("--override", help="Admin only: promote although the gate does not pass; the written reason is audited.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a version into its next stage (the gate must pass, or an admin overrides)."""
    result = run(lambda: client(ctx).transition(model, version, "promote", reason=reason, override_reason=override))
    emit(result, as_json, lambda: _done("promote", result))


def _done(action: str, r: dict[str, object]) -> None:
    stage = f" in stage {r['stage']}" if r.get("stage") else ""
    output.console().print(f"[green]{action}[/green]: {r['model']} {r['version']} is now [bold]{r['state']}[/bold]{stage} "
                           f"(audience {r['audience_size']})")


def _history(ctx: typer.Context, model: ModelArg, version: VersionArg, as_json: JsonOpt = False) -> None:
    """Every transition of a version: who, when, why, and the verdict it relied on."""
    rows = run(lambda: client(ctx).version_history(model, version))
    flat = [{**r, "verdict": (r["verdict"] or {}).get("outcome") if r["verdict"] else None,
             "from": f"{r['from_state']}({r['from_stage']})", "to": f"{r['to_state']}({r['to_stage']})"} for r in rows]
    emit(rows, as_json, lambda: output.table(flat, ["at", "action", "from", "to", "actor", "reason", "verdict", "override_reason"]))


def _retarget(
    ctx: typer.Context,
    model: ModelArg,
    alias: Annotated[str, typer.Argument(help="The alias, e.g. atlas.")],
    targets: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT pairs, e.g. v2=100 or v1=90 v2=10.")],
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """Point every instance of an alias at other versions, at once."""
    parsed: dict[str, int] = {}
    for t in targets:
        version, sep, weight = t.partition("=")
        if not sep or not weight.isdigit():
            output.console(stderr=True).print(f"[bold red]error[/bold red] [dim](invalid_targets)[/dim]: {t!r} is not VERSION=WEIGHT")
            raise typer.Exit(2)
        parsed[version] = int(weight)
    result = run(lambda: client(ctx).retarget(model, alias, parsed, reason=reason))
    emit(result, as_json, lambda: output.console().print(f"[green]retargeted[/green] {model} alias {alias} → {result['targets']}"))


def register(app: typer.Typer) -> None:
    app.command("status")(_status)
    app.command("promote")(_promote)
    for action, text in (
        ("pause", "Stop promotion and new admissions; current traffic continues."),
        ("resume", "Resume a paused or halted version."),
        ("halt", "Emergency stop: every request and download for the version is refused with the reason."),
        ("rollback", "Back to the previous stage: the audience added in this stage loses access."),
        ("decommission", "Retire the version for good."),
    ):
        app.command(action)(_transition(action, text))
    app.command("history")(_history)
    app.command("retarget")(_retarget)
