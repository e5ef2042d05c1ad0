"""``releasegate application``: declare use cases, review, approve or reject."""

from __future__ import annotations

from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, client, emit, run

app = typer.Typer(help="Applications: a deployer declares use cases; a reviewer decides.", no_args_is_help=True)
IdArg = Annotated[str, typer.Argument(help="Application id (app_…).", show_default=False)]
COLUMNS = ["id", "deployer_id", "model", "use_cases", "status", "tier", "approved_use_cases", "reason"]


@app.command()
def submit(ctx: typer.Context,
           deployer: Annotated[str, typer.Argument(help="Deployer id or name.")],
           model: Annotated[str, typer.Argument(help="org/name")],
           use_case: Annotated[list[str], typer.Option("--use-case", "-u", help="A use case from the plan's catalog (repeatable).")],
           description: Annotated[str, typer.Option(help="What you will build.")] = "",
           as_json: JsonOpt = False) -> None:
    """Apply to use a model for declared use cases."""
    a = run(lambda: client(ctx).application_submit(deployer, model, use_case, description))
    emit(a, as_json, lambda: output.console().print(f"[green]submitted[/green] {a['id']}: {', '.join(a['use_cases'])} — waiting for review"))


@app.command("list")
def list_(ctx: typer.Context,
          status: Annotated[str | None, typer.Option(help="submitted, approved or rejected.")] = None,
          deployer: Annotated[str | None, typer.Option(help="Only this deployer's.")] = None,
          as_json: JsonOpt = False) -> None:
    """List applications (the review queue with --status submitted)."""
    rows = run(lambda: client(ctx).application_list(status, deployer))
    emit(rows, as_json, lambda: output.table(rows, COLUMNS, empty="no applications"))


@app.command()
def show(ctx: typer.Context, app_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show one application and its decision."""
    a = run(lambda: client(ctx).application_show(app_id))
    emit(a, as_json, lambda: output.fields(a))


@app.command()
def approve(ctx: typer.Context, app_id: IdArg,
            tier: Annotated[str, typer.Option(help="The tier to admit the deployer into.")],
            use_case: Annotated[list[str] | None, typer.Option("--use-case", "-u", help="Approve only these (default: all declared).")] = None,
            waitlist: Annotated[bool, typer.Option(help="Approve onto the waitlist (admitted by a stage's waitlist_percent).")] = False,
            reason: Annotated[str | None, typer.Option("--reason", "-r")] = None,
            as_json: JsonOpt = False) -> None:
    """Approve into a tier for the declared (or some) use cases."""
    a = run(lambda: client(ctx).application_approve(app_id, tier, use_case or None, waitlist, reason))
    emit(a, as_json, lambda: output.console().print(f"[green]approved[/green] {a['id']}: tier {a['tier']}, use cases {', '.join(a['approved_use_cases'])}"))


@app.command()
def reject(ctx: typer.Context, app_id: IdArg,
           reason: Annotated[str, typer.Option("--reason", "-r", help="Shown to the applicant (required).")],
           as_json: JsonOpt = False) -> None:
    """Reject with a reason the applicant sees."""
    a = run(lambda: client(ctx).application_reject(app_id, reason))
    emit(a, as_json, lambda: output.console().print(f"[yellow]rejected[/yellow] {a['id']}: {a['reason']}"))
