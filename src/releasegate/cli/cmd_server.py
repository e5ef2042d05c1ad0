"""``init``, ``serve`` and ``demo``: set up a store, run the server, show the product."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from releasegate.cli import output
from releasegate.cli.main import run, state
from releasegate.errors import Refused

DEMO_MARKER = ".releasegate-demo"


def _init(ctx: typer.Context, admin_email: Annotated[str | None, typer.Option(help="E-mail of the first admin.")] = None) -> None:
    """Create the local store (SQLite in --data-dir, or RELEASEGATE_DATABASE_URL) and print the first admin token once."""
    from releasegate.services import principals

    s = state(ctx)
    svc = run(lambda: s.service_context(create=True))
    token = run(lambda: principals.bootstrap_admin(svc, email=admin_email))
    out = output.console()
    out.print(f"[green]store ready[/green] at {svc.db.url.split('@')[-1]}")
    if token is None:
        out.print("an admin token exists already; create more with `releasegate token create`")
        return
    out.print("admin token (shown once; export it as RELEASEGATE_TOKEN to use the API):")
    out.print(f"[bold]{token['token']}[/bold]")


def _serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    log_json: Annotated[bool, typer.Option("--log-json", envvar="RELEASEGATE_LOG_JSON", help="Structured JSON logs.")] = False,
) -> None:
    """Run the control plane (API and docs) in one process on the local store."""
    import uvicorn

    from releasegate.gateway.serving import GatewayHttpProtocol
    from releasegate.logs import configure_logging
    from releasegate.server import create_server_app

    configure_logging(json=log_json, level=log_level)
    s = state(ctx)
    svc = run(lambda: s.service_context(create=True))
    app = create_server_app(svc)
    output.console().print(f"releasegate on http://{host}:{port}  ·  API docs http://{host}:{port}/docs")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, log_config=None,
                http=GatewayHttpProtocol)


def _demo(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Fresh working directory for the demo.")] = Path("releasegate-demo"),
    port: Annotated[int, typer.Option(help="Port for the server.")] = 8080,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Keep serving after set-up.")] = True,
) -> None:
    """Set up a demo release of acme/atlas-8b on SQLite and serve it."""
    from releasegate.demo import setup_demo

    if directory.exists() and any(directory.iterdir()):
        if not (directory / DEMO_MARKER).exists():
            raise run(lambda: _refuse(f"{directory} exists and is not a releasegate demo directory; choose another --dir"))
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / DEMO_MARKER).write_text("created by `releasegate demo`; safe to delete\n")
    s = state(ctx)
    s.data_dir = directory / ".releasegate"
    svc = run(lambda: s.service_context(create=True))
    summary = run(lambda: setup_demo(svc, base_url=f"http://127.0.0.1:{port}"))
    _print_demo(summary, directory, port)
    if serve:
        import uvicorn

        from releasegate.demo import MOCK_UPSTREAM_PORT, start_mock_upstream
        from releasegate.gateway.serving import GatewayHttpProtocol
        from releasegate.server import create_server_app

        mock = start_mock_upstream()
        out = output.console()
        if mock is None:
            out.print(f"[yellow]port {MOCK_UPSTREAM_PORT} is taken: the MOCK model server did not start; "
                      "gateway calls will fail with upstream_unavailable unless something serves it[/yellow]")
        else:
            out.print(f"[bold yellow]MOCK model server[/bold yellow] (echo, not a model) on http://127.0.0.1:{MOCK_UPSTREAM_PORT}/v1")
        try:
            uvicorn.run(create_server_app(svc), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                        http=GatewayHttpProtocol)
        finally:
            if mock is not None:
                mock.stop()


def _refuse(message: str) -> Any:
    raise Refused(message, code="demo_dir_not_empty")


def _print_demo(summary: dict[str, Any], directory: Path, port: int) -> None:
    out = output.console()
    out.rule("[bold]releasegate demo[/bold]")
    out.print(f"model [bold]{summary['model']}[/bold] with plan revision {summary['revision']} from {summary['plan_path']}")
    output.table(summary["status"], ["version", "state", "stage", "audience_size"], title="Where it stands")
    output.table(summary["deployers"], ["name", "tier", "status", "use_cases"], title="Deployers")
    out.print("\n[bold]Credentials[/bold] (shown once; the demo keeps them in "
              f"{directory / 'credentials.json'})")
    out.print(f"  admin token:  {summary['admin_token']}")
    for k in summary["keys"]:
        out.print(f"  API key for {k['deployer']} ({k['use_case']}): {k['key']}")
    out.print("\n[bold]Try next[/bold]")
    dd = f"--data-dir {directory / '.releasegate'}"
    for line in (
        f"releasegate {dd} status",
        f"releasegate {dd} plan diff {summary['plan_path']}",
        f"releasegate {dd} application list --status submitted",
        f"releasegate {dd} promote {summary['model']} v1 --reason 'gate review'   # refused until the gate passes",
        f"releasegate {dd} halt {summary['model']} v1 --reason 'drill'",
        f"releasegate {dd} audit verify",
        f"API docs: http://127.0.0.1:{port}/docs   (Authorization: Bearer <admin token>)",
        *summary.get("extra_lines", []),
    ):
        out.print(f"  {line}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("init")(_init)
    app.command("serve")(_serve)
    app.command("demo")(_demo)
