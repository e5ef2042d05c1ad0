"""``releasegate deployer``: organisations building on the model."""

from __future__ import annotations

from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, ReasonOpt, client, emit, run

app = typer.Typer(help="Deployers: organisations building on the model.", no_args_is_help=True)
RefArg = Annotated[str, typer.Argument(help="Deployer id or name.", show_default=False)]
COLUMNS = ["id", "name", "tier", "status", "use_cases", "admitted_at"]


@app.command()
def create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Short name, e.g. bluebank.")],
           email: Annotated[str | None, typer.Option(help="Contact e-mail; becomes the owner member.")] = None,
           as_json: JsonOpt = False) -> None:
    """Register an organisation (it can use nothing until an application is approved)."""
    d = run(lambda: client(ctx).deployer_create(name, email))
    emit(d, as_json, lambda: output.console().print(f"[green]created[/green] deployer {d['name']} ({d['id']})"))


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List deployers."""
    rows = run(lambda: client(ctx).deployer_list())
    emit(rows, as_json, lambda: output.table(rows, COLUMNS, empty="no deployers yet"))


@app.command()
def show(ctx: typer.Context, ref: RefArg, as_json: JsonOpt = False) -> None:
    """Show one deployer with its members and approved use cases."""
    d = run(lambda: client(ctx).deployer_show(ref))
    emit(d, as_json, lambda: output.fields({**d, "members": [f"{m['email']} ({m['role']})" for m in d["members"]]}))


@app.command("add-member")
def add_member(ctx: typer.Context, ref: RefArg, email: Annotated[str, typer.Argument(help="E-mail of the person.")],
               role: Annotated[str, typer.Option(help="owner or member.")] = "member", as_json: JsonOpt = False) -> None:
    """Add a person to a deployer."""
    d = run(lambda: client(ctx).deployer_add_member(ref, email, role))
    emit(d, as_json, lambda: output.console().print(f"[green]added[/green] {email} to {d['name']}"))


@app.command()
def suspend(ctx: typer.Context, ref: RefArg, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Suspend a deployer: all its keys stop working at once."""
    d = run(lambda: client(ctx).deployer_set_status(ref, "suspended", reason))
    emit(d, as_json, lambda: output.console().print(f"[yellow]suspended[/yellow] {d['name']}"))


@app.command()
def reinstate(ctx: typer.Context, ref: RefArg, reason: ReasonOpt,
              waitlist: Annotated[bool, typer.Option(help="Reinstate onto the waitlist rather than fully.")] = False,
              as_json: JsonOpt = False) -> None:
    """Lift a suspension."""
    d = run(lambda: client(ctx).deployer_set_status(ref, "waitlisted" if waitlist else "active", reason))
    emit(d, as_json, lambda: output.console().print(f"[green]reinstated[/green] {d['name']} ({d['status']})"))
