"""``releasegate token``: bearer tokens for the admin API, one role each."""

from __future__ import annotations

from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, client, emit, run

app = typer.Typer(help="Bearer tokens for people and automation (roles: admin, release_manager, reviewer, auditor, deployer, licensee).",
                  no_args_is_help=True)


@app.command()
def create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Who or what holds it.")],
           role: Annotated[str, typer.Option(help="admin, release_manager, reviewer, auditor, deployer or licensee.")],
           email: Annotated[str | None, typer.Option(help="The holder's e-mail (approvals are matched on it).")] = None,
           deployer: Annotated[str | None, typer.Option(help="For deployer tokens: the organisation.")] = None,
           as_json: JsonOpt = False) -> None:
    """Create a token (shown once)."""
    t = run(lambda: client(ctx).token_create(name, role, email, deployer))

    def render() -> None:
        out = output.console()
        out.print(f"[green]created[/green] token {t['name']} ({t['role']})")
        out.print(f"[bold]{t['token']}[/bold]")
        out.print("[dim]This is the only time the token is shown.[/dim]")

    emit(t, as_json, render)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List tokens (never their secrets)."""
    rows = run(lambda: client(ctx).token_list())
    emit(rows, as_json, lambda: output.table(rows, ["id", "name", "role", "email", "deployer_id", "created_at", "revoked"]))


@app.command()
def revoke(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="Token id or name.")], as_json: JsonOpt = False) -> None:
    """Revoke a token at once."""
    t = run(lambda: client(ctx).token_revoke(ref))
    emit(t, as_json, lambda: output.console().print(f"[yellow]revoked[/yellow] {t['name']}"))
