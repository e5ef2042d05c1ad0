"""``releasegate plan``: validate, diff, apply, show and export the schema of release plans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, client, emit, run
from releasegate.errors import InvalidInput
from releasegate.plan.loader import LoadedPlan, PlanError, load_plan_file

app = typer.Typer(help="Release plans as code: validate, diff, apply, show.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="The release plan YAML file.", show_default=False)]


def _load(path: Path, as_json: bool = False) -> LoadedPlan:
    try:
        loaded = load_plan_file(path)
    except PlanError as exc:
        if as_json:
            output.print_json({"ok": False, "issues": [i.to_dict() for i in exc.issues]})
        else:
            err = output.console(stderr=True)
            for issue in exc.issues:
                colour = "red" if issue.severity == "error" else "yellow"
                err.print(f"[{colour}]{issue.severity}[/{colour}] {issue}", markup=True, highlight=False)
            n = sum(1 for i in exc.issues if i.severity == "error")
            err.print(f"[bold red]{path}: {n} error{'s' if n != 1 else ''}[/bold red] [dim](plan_invalid)[/dim]")
        raise typer.Exit(2) from None
    except InvalidInput as exc:
        output.console(stderr=True).print(f"[bold red]error[/bold red] [dim]({exc.code})[/dim]: {exc.message}")
        raise typer.Exit(2) from None
    return loaded


def _warn(loaded: LoadedPlan) -> None:
    err = output.console(stderr=True)
    for w in loaded.warnings:
        err.print(f"[yellow]warning[/yellow] {w}", highlight=False)


@app.command()
def validate(file: FileArg, as_json: JsonOpt = False) -> None:
    """Check a plan: every problem with file, line, column, field and a hint."""
    loaded = _load(file, as_json)
    stages = [s.name for s in loaded.plan.stages]
    data = {"ok": True, "model": loaded.plan.model, "content_hash": loaded.content_hash,
            "stages": stages, "warnings": [w.to_dict() for w in loaded.warnings]}

    def render() -> None:
        _warn(loaded)
        output.console().print(f"[green]ok[/green] {file}: {loaded.plan.model}, {len(loaded.plan.versions)} versions, "
                               f"{len(stages)} stages ({' → '.join(stages)})")

    emit(data, as_json, render)


@app.command()
def diff(ctx: typer.Context, file: FileArg, as_json: JsonOpt = False) -> None:
    """Show what applying the plan would change, and whether it would cut live access."""
    loaded = _load(file, as_json)
    result = run(lambda: client(ctx).plan_diff(loaded))

    def render() -> None:
        _warn(loaded)
        out = output.console()
        if result["identical"]:
            out.print(f"no changes: revision {result['current_revision']} of {result['model']} has the same content")
            return
        out.print(f"[bold]{result['model']}[/bold]: revision {result['current_revision']} → {result['current_revision'] + 1}")
        for line in result["changes"]:
            out.print(f"  {line}", highlight=False)
        for line in result["live_impact"]:
            out.print(f"  [red]cuts live access:[/red] {line}")
        if result["live_impact"]:
            out.print("[red]apply will refuse this unless --force with a --reason[/red]")

    emit(result, as_json, render)


@app.command()
def apply(
    ctx: typer.Context,
    file: FileArg,
    force: Annotated[bool, typer.Option(help="Apply although it removes a live stage or cuts its audience.")] = False,
    reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why (required with --force).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store the plan as a new revision (identical content is a no-op)."""
    loaded = _load(file, as_json)
    if force and not (reason and reason.strip()):
        output.console(stderr=True).print("[bold red]error[/bold red] [dim](reason_required)[/dim]: --force needs a --reason")
        raise typer.Exit(2)
    result = run(lambda: client(ctx).plan_apply(loaded, force_reason=reason if force else None))

    def render() -> None:
        _warn(loaded)
        out = output.console()
        if not result["changed"]:
            out.print(f"unchanged: {result['model']} is already at revision {result['revision']} with this content")
            return
        out.print(f"[green]applied[/green] {result['model']} revision {result['revision']} ({result['content_hash'][:12]})")
        for line in result["changes"]:
            out.print(f"  {line}", highlight=False)

    emit(result, as_json, render)


@app.command()
def show(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="org/name")],
    revision: Annotated[int | None, typer.Option(help="A past revision.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the plan in force (or a past revision)."""
    result = run(lambda: client(ctx).plan_show(model, revision))
    emit(result, as_json, lambda: print(result["text"], end=""))


@app.command()
def history(ctx: typer.Context, model: Annotated[str, typer.Argument(help="org/name")], as_json: JsonOpt = False) -> None:
    """List the plan revisions of a model."""
    rows = run(lambda: client(ctx).plan_history(model))
    emit(rows, as_json, lambda: output.table(rows, ["revision", "content_hash", "created_at", "created_by", "forced_reason"]))


@app.command()
def schema() -> None:
    """Print the plan's JSON Schema (for editors: yaml-language-server)."""
    from releasegate.plan.jsonschema import plan_json_schema

    print(json.dumps(plan_json_schema(), indent=2))
