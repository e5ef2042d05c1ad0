"""The ``releasegate`` command. Exit codes: 0 done, 1 refused (with the reason), 2 bad usage or input."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from releasegate.cli import output
from releasegate.cli.client import Client, LocalClient, RemoteClient
from releasegate.cli.state import CliState
from releasegate.errors import InvalidInput, ReleasegateError

T = TypeVar("T")

app = typer.Typer(
    name="releasegate",
    help="Release an AI model step by step: plans as code, gated access, evidence-driven gates, one halt switch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why; recorded in the audit trail (required).")]


@app.callback()
def root(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option("--server", envvar="RELEASEGATE_SERVER", help="Talk to this releasegate server instead of the local store.")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="RELEASEGATE_TOKEN", help="Bearer token for --server.", show_default=False)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="RELEASEGATE_DATA_DIR", help="Local working directory (default ./.releasegate).")] = None,
) -> None:
    ctx.obj = CliState(server=server, token=token, data_dir=data_dir)


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def client(ctx: typer.Context) -> Client:
    s = state(ctx)
    if s.server:
        return RemoteClient(s.server, s.token)
    return LocalClient(s.service_context())


def fail(exc: ReleasegateError) -> typer.Exit:
    err = output.console(stderr=True)
    err.print(f"[bold red]error[/bold red] [dim]({exc.code})[/dim]: {exc.message}")
    for key, value in exc.details.items():
        if key in ("verdict",) and isinstance(value, dict):
            for r in value.get("results", []):
                err.print(f"  {r['outcome']:>12}  {r['kind']}: {r['message']}")
        elif key in ("impact", "issues") and isinstance(value, list):
            for item in value:
                err.print(f"  - {item}")
    return typer.Exit(exc.exit_code)


def run(fn: Callable[[], T]) -> T:
    """Run ``fn``, turning releasegate errors into a message on stderr and the right exit code."""
    try:
        return fn()
    except ReleasegateError as exc:
        raise fail(exc) from None


def emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        output.print_json(data)
    else:
        render()


def _register() -> None:
    from releasegate.cli import (
        cmd_applications,
        cmd_audit,
        cmd_deployers,
        cmd_evidence,
        cmd_gateway,
        cmd_keys,
        cmd_plan,
        cmd_report,
        cmd_rollout,
        cmd_server,
        cmd_tokens,
        cmd_weights,
    )

    app.add_typer(cmd_plan.app, name="plan")
    app.add_typer(cmd_deployers.app, name="deployer")
    app.add_typer(cmd_applications.app, name="application")
    app.add_typer(cmd_keys.app, name="key")
    app.add_typer(cmd_tokens.app, name="token")
    app.add_typer(cmd_audit.app, name="audit")
    cmd_rollout.register(app)
    cmd_server.register(app)
    for module in (cmd_gateway, cmd_evidence, cmd_weights, cmd_report):
        module.register(app)


def main() -> None:
    _register()
    try:
        app()
    except InvalidInput as exc:  # pragma: no cover - defensive
        raise SystemExit(fail(exc).exit_code) from None
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


def build_app() -> typer.Typer:
    """The fully registered Typer app (for tests and docs)."""
    if not app.registered_groups:
        _register()
    return app
