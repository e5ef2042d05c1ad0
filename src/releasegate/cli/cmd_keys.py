"""``releasegate key``: API keys bound to one deployer and one approved use case."""

from __future__ import annotations

from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, client, emit, run

app = typer.Typer(help="API keys: shown once, stored hashed, bound to one use case.", no_args_is_help=True)
IdArg = Annotated[str, typer.Argument(help="Key id (key_…).", show_default=False)]
COLUMNS = ["id", "hint", "deployer_id", "model", "use_case", "state", "expires_at", "rotated_to"]


def _show_secret(k: dict[str, object]) -> None:
    out = output.console()
    out.print(f"[green]issued[/green] {k['id']} for {k['deployer_id']} · {k['model']} · {k['use_case']}")
    out.print(f"[bold]{k['key']}[/bold]")
    out.print("[dim]This is the only time the key is shown; store it in a secret manager.[/dim]")


@app.command()
def issue(ctx: typer.Context,
          deployer: Annotated[str, typer.Argument(help="Deployer id or name.")],
          model: Annotated[str, typer.Option(help="org/name")],
          use_case: Annotated[str, typer.Option("--use-case", "-u", help="An approved use case.")],
          name: Annotated[str, typer.Option(help="A label for the key.")] = "",
          expires_in_days: Annotated[float | None, typer.Option(help="Expire after this many days.")] = None,
          as_json: JsonOpt = False) -> None:
    """Issue a key (shown once)."""
    k = run(lambda: client(ctx).key_issue(deployer, model, use_case, name, expires_in_days))
    emit(k, as_json, lambda: _show_secret(k))


@app.command("list")
def list_(ctx: typer.Context, deployer: Annotated[str | None, typer.Option(help="Only this deployer's keys.")] = None,
          as_json: JsonOpt = False) -> None:
    """List keys (never their secrets)."""
    rows = run(lambda: client(ctx).key_list(deployer))
    emit(rows, as_json, lambda: output.table(rows, COLUMNS, empty="no keys"))


@app.command()
def revoke(ctx: typer.Context, key_id: IdArg, reason: Annotated[str | None, typer.Option("--reason", "-r")] = None,
           as_json: JsonOpt = False) -> None:
    """Revoke a key at once."""
    k = run(lambda: client(ctx).key_revoke(key_id, reason))
    emit(k, as_json, lambda: output.console().print(f"[yellow]revoked[/yellow] {k['id']}"))


@app.command()
def rotate(ctx: typer.Context, key_id: IdArg,
           grace_hours: Annotated[float, typer.Option(help="Hours the old key keeps working.")] = 24.0,
           as_json: JsonOpt = False) -> None:
    """Replace a key; the old one keeps working for the grace period."""
    k = run(lambda: client(ctx).key_rotate(key_id, grace_hours))

    def render() -> None:
        _show_secret(k)
        output.console().print(f"old key {k['old_key']['id']} stops working at {k['old_key']['expires_at']}")

    emit(k, as_json, render)
