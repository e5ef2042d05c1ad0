"""``releasegate report`` (the release report for auditors) and ``releasegate webhook ...`` (outgoing webhooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from releasegate.cli import output
from releasegate.cli.client import RemoteClient, local_actor
from releasegate.cli.main import JsonOpt, emit, run, state
from releasegate.errors import InvalidInput, ReleasegateError
from releasegate.services import webhooks

webhook_app = typer.Typer(help="Outgoing webhooks: signed HTTP notifications of halts, rollbacks, incidents, applications, ready gates.",
                          no_args_is_help=True)
DELIVERY_COLUMNS = ["id", "event", "status", "attempts", "last_status_code", "next_attempt_at", "last_error"]


def _local(ctx: typer.Context, what: str) -> Any:
    s = state(ctx)
    if s.server:
        raise InvalidInput(f"{what} works on the server's own store: run it on the server machine, without --server",
                           code="local_only")
    return s.service_context()


def _format(fmt: str | None, out: Path) -> str:
    if fmt is None:
        return "md" if out.suffix.lower() in (".md", ".markdown") else "html"
    if fmt not in ("html", "md"):
        raise InvalidInput(f"unknown report format {fmt!r}; use html or md", code="invalid_format")
    return fmt


def _remote_document(remote: RemoteClient, model: str, fmt: str) -> str:
    try:
        resp = remote.http.get(f"/models/{remote._m(model)}/report", params={"format": fmt})
    except httpx.HTTPError as exc:
        raise ReleasegateError(f"cannot reach the releasegate server: {exc}", code="server_unreachable") from exc
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
        except (ValueError, KeyError, TypeError):
            err = {"code": "http_error", "message": f"HTTP {resp.status_code}: {resp.text[:200]}"}
        raise ReleasegateError(err["message"], code=err["code"], details=err.get("details") or {})
    return resp.text


def _report(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="The model, org/name.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (the format follows a .md suffix unless --format says).")],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="html (self-contained, default) or md.")] = None,
) -> None:
    """Write the release report of a model for auditors: timeline, decisions, evidence, incidents, approvals, audit head."""

    def build() -> str:
        chosen = _format(fmt, out)
        s = state(ctx)
        if s.server:
            return _remote_document(RemoteClient(s.server, s.token), model, chosen)
        from releasegate.report import render
        from releasegate.report.data import build_report

        return render(build_report(s.service_context(), local_actor(), model), chosen)

    text = run(build)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    output.console().print(f"[green]wrote[/green] {out} ({len(text.encode()):,} bytes)")


@webhook_app.command("add")
def add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL.", show_default=False)],
    event: Annotated[list[str], typer.Option("--event", "-e", help="An event to send (repeat); short forms like halt, rollback, gate-ready; * for all.")],
    secret: Annotated[str | None, typer.Option("--secret", help="Signing secret (16+ characters); generated when omitted.", show_default=False)] = None,
    description: Annotated[str, typer.Option("--description", help="What the receiver is.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Subscribe a URL to events; prints the signing secret once."""
    svc = run(lambda: _local(ctx, "webhook add"))
    w = run(lambda: webhooks.subscribe(svc, local_actor(), url, event, secret, description=description))

    def render() -> None:
        out = output.console()
        out.print(f"[green]webhook {w['id']}[/green] → {w['url']} for {', '.join(w['events'])}")
        out.print("signing secret (shown once; give it to the receiver):")
        out.print(f"[bold]{w['secret']}[/bold]")

    emit(w, as_json, render)


@webhook_app.command("list")
def list_(ctx: typer.Context, all_: Annotated[bool, typer.Option("--all", help="Include removed webhooks.")] = False,
          as_json: JsonOpt = False) -> None:
    """Webhooks and the events they receive (never their secrets)."""
    svc = run(lambda: _local(ctx, "webhook list"))
    rows = run(lambda: webhooks.list_webhooks(svc, local_actor(), include_removed=all_))
    emit(rows, as_json, lambda: output.table(rows, ["id", "url", "events", "active", "created_by", "created_at"],
                                             empty="no webhooks: `releasegate webhook add URL --event halt`"))


@webhook_app.command("remove")
def remove(ctx: typer.Context, webhook_id: Annotated[str, typer.Argument(help="Webhook id (whk_…).", show_default=False)],
           reason: Annotated[str | None, typer.Option("--reason", "-r", help="Why; recorded in the audit trail.")] = None,
           as_json: JsonOpt = False) -> None:
    """Stop sending to a webhook; its pending deliveries are dropped, its log is kept."""
    svc = run(lambda: _local(ctx, "webhook remove"))
    w = run(lambda: webhooks.unsubscribe(svc, local_actor(), webhook_id, reason=reason))
    emit(w, as_json, lambda: output.console().print(f"[green]removed[/green] webhook {w['id']} ({w['url']})"))


@webhook_app.command("deliveries")
def deliveries(
    ctx: typer.Context,
    webhook_id: Annotated[str | None, typer.Option("--webhook", help="Only this webhook's deliveries.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, delivered or failed.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The delivery log: each event sent to each webhook, its attempts and last answer."""
    svc = run(lambda: _local(ctx, "webhook deliveries"))
    rows = run(lambda: webhooks.deliveries(svc, local_actor(), webhook_id=webhook_id, status=status, limit=limit))
    emit(rows, as_json, lambda: output.table(rows, DELIVERY_COLUMNS, empty="no deliveries yet"))


@webhook_app.command("deliver")
def deliver(ctx: typer.Context,
            timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each receiver.")] = webhooks.DEFAULT_TIMEOUT,
            as_json: JsonOpt = False) -> None:
    """Send the deliveries that are due now, once (the server's delivery loop does this continuously)."""
    svc = run(lambda: _local(ctx, "webhook deliver"))
    with httpx.Client() as client:
        n = run(lambda: webhooks.deliver_due(svc, client=client, timeout=timeout))
    emit({"attempts": n}, as_json, lambda: output.console().print(f"{n} delivery attempt(s) made"))


def register(app: typer.Typer) -> None:
    app.command("report")(_report)
    app.add_typer(webhook_app, name="webhook")
