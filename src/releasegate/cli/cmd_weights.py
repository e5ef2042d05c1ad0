"""``releasegate weights ...`` (register, terms, access requests, review) and ``releasegate trace``.

Licensees run these against a server (``--server`` and ``--token`` with their ``rgt_`` licensee
token); staff may run them locally or remotely. ``trace`` runs on the server's machine: it needs
the original files and the server secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from releasegate.cli import output
from releasegate.cli.client import RemoteClient, local_actor
from releasegate.cli.main import JsonOpt, emit, run, state
from releasegate.errors import InvalidInput
from releasegate.weights import access, downloads, registry, terms, tracing

app = typer.Typer(help="Gated weights: register files, publish terms, request access, review requests, read downloads.",
                  no_args_is_help=True)
ModelArg = Annotated[str, typer.Argument(help="The model, org/name.", show_default=False)]
IdArg = Annotated[str, typer.Argument(help="Access request id (wrq_…).", show_default=False)]
REQUEST_COLUMNS = ["id", "model", "email", "status", "submitted_at", "decided_by", "expires_at", "reason"]


class _Calls:
    """The same operations in-process (local store, local admin) or over HTTP (server and token)."""

    def __init__(self, ctx: typer.Context) -> None:
        s = state(ctx)
        self.remote = RemoteClient(s.server, s.token) if s.server else None
        self.svc = None if s.server else s.service_context()
        self.actor = local_actor()

    def call(self, method: str, path: str, local: Any, **kwargs: Any) -> Any:
        if self.remote is not None:
            return self.remote._call(method, "/weights" + path, **kwargs)
        return local(self.svc, self.actor)


def _model(model: str) -> str:
    if model.count("/") != 1:
        raise InvalidInput(f"model {model!r} must be written org/name", code="invalid_model")
    return model


def _fields(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--field {pair!r} must be written NAME=VALUE", code="invalid_field")
        out[key.strip()] = value
    return out


@app.command("register")
def register_(ctx: typer.Context, model: ModelArg, version: Annotated[str, typer.Argument(help="Version name, e.g. v1.")],
              directory: Annotated[Path | None, typer.Argument(help="Directory of weight files; default: the plan's versions.<v>.weights.path.")] = None,
              as_json: JsonOpt = False) -> None:
    """Register a version's weight files (sha256, size) as repository commit ORG/NAME@VERSION."""
    c = _Calls(ctx)
    r = run(lambda: c.call("POST", f"/{_model(model)}/register",
                           lambda svc, a: registry.register(svc, a, model, version, directory),
                           json={"version": version, "path": str(directory.resolve()) if directory else None}))
    emit(r, as_json, lambda: output.console().print(
        f"[green]{'registered' if r.get('changed') else 'unchanged'}[/green] {r['model']} {r['version']}: "
        f"{r['files']} files, {r['total_size']} bytes, commit {r['commit']}"))


@app.command("publish-terms")
def publish_terms(ctx: typer.Context, model: ModelArg, as_json: JsonOpt = False) -> None:
    """Publish the plan's terms documents; a changed document becomes a new version everyone accepts again."""
    c = _Calls(ctx)
    rows = run(lambda: c.call("POST", f"/{_model(model)}/terms/publish", lambda svc, a: terms.publish(svc, a, model), json={}))
    emit(rows, as_json, lambda: output.table(rows, ["terms_id", "version", "content_hash", "changed", "summary"]))


@app.command("terms")
def show_terms(ctx: typer.Context, model: ModelArg, as_json: JsonOpt = False) -> None:
    """Show the terms licensees of MODEL must accept now."""
    c = _Calls(ctx)
    t = run(lambda: c.call("GET", f"/{_model(model)}/terms", lambda svc, a: terms.show(svc, a, model)))

    def render() -> None:
        out = output.console()
        out.print(f"[bold]{t['terms_id']}[/bold] version {t['version']} (sha256 {t['content_hash'][:16]}…)")
        out.print(f"[dim]{t['summary']}[/dim]\n")
        out.print(t["text"])
        if "accepted" in t:
            out.print("[green]you have accepted this version[/green]" if t["accepted"] else
                      f"accept it with: releasegate weights accept-terms {model} --version {t['version']}")

    emit(t, as_json, render)


@app.command("accept-terms")
def accept_terms(ctx: typer.Context, model: ModelArg,
                 version: Annotated[int | None, typer.Option(help="The terms version you read (refused if no longer current).")] = None,
                 as_json: JsonOpt = False) -> None:
    """Accept the current terms of MODEL (as the licensee whose token you use)."""
    c = _Calls(ctx)
    r = run(lambda: c.call("POST", f"/{_model(model)}/terms/accept",
                           lambda svc, a: terms.accept(svc, a, model, version=version), json={"version": version}))
    emit(r, as_json, lambda: output.console().print(f"[green]accepted[/green] {r['terms_id']} version {r['version']} of {model}"))


@app.command("request")
def request_(ctx: typer.Context, model: ModelArg,
             field: Annotated[list[str] | None, typer.Option("--field", "-f", help="A form field, NAME=VALUE (repeat).")] = None,
             use: Annotated[str, typer.Option("--use", help="What you will use the weights for.")] = "",
             as_json: JsonOpt = False) -> None:
    """Request access to MODEL's weights; prints whether it was approved, queued for review, or rejected."""
    c = _Calls(ctx)
    values = run(lambda: _fields(field or []))
    r = run(lambda: c.call("POST", f"/{_model(model)}/requests",
                           lambda svc, a: access.submit(svc, a, model, fields=values, declared_use=use),
                           json={"fields": values, "declared_use": use}))

    def render() -> None:
        out = output.console()
        out.print(f"request {r['id']}: [bold]{r['status']}[/bold]" + (f" ({r['reason']})" if r.get("reason") else ""))
        if r["status"] == "approved":
            out.print(f"next: releasegate weights accept-terms {model}, then download with HF_ENDPOINT and HF_TOKEN set")

    emit(r, as_json, render)


@app.command("status")
def status(ctx: typer.Context, model: ModelArg, as_json: JsonOpt = False) -> None:
    """May you download MODEL now? If not, the next step (`hf download` only says "requires approval")."""
    c = _Calls(ctx)
    r = run(lambda: c.call("GET", f"/{_model(model)}/access", lambda svc, a: access.status(svc, a, model)))
    emit(r, as_json, lambda: output.console().print(("[green]ready[/green] " if r["ok"] else f"[yellow]{r['code']}[/yellow] ")
                                                    + r["message"]))


@app.command("requests")
def list_requests(ctx: typer.Context,
                  status: Annotated[str | None, typer.Option(help="pending, approved, rejected, revoked or expired.")] = None,
                  model: Annotated[str | None, typer.Option(help="Only this model.")] = None, as_json: JsonOpt = False) -> None:
    """List access requests: the review queue for staff (--status pending), your own for a licensee."""
    c = _Calls(ctx)
    params = {k: v for k, v in {"status": status, "model": model}.items() if v}
    rows = run(lambda: c.call("GET", "/requests", lambda svc, a: access.list_requests(svc, a, status=status, model=model),
                              params=params))
    emit(rows, as_json, lambda: output.table(rows, REQUEST_COLUMNS, empty="no requests"))


@app.command("show-request")
def show_request(ctx: typer.Context, request_id: IdArg, as_json: JsonOpt = False) -> None:
    """Show one request with its form, declared use and the vetting checks."""
    c = _Calls(ctx)
    r = run(lambda: c.call("GET", f"/requests/{request_id}", lambda svc, a: access.show(svc, a, request_id)))
    emit(r, as_json, lambda: output.fields(r))


def _decide(ctx: typer.Context, request_id: str, verb: str, reason: str | None, as_json: bool) -> None:
    c = _Calls(ctx)
    fn = {"approve": access.approve, "reject": access.reject, "revoke": access.revoke}[verb]
    r = run(lambda: c.call("POST", f"/requests/{request_id}/{verb}", lambda svc, a: fn(svc, a, request_id, reason=reason),
                           json={"reason": reason}))
    emit(r, as_json, lambda: output.console().print(f"{r['id']}: [bold]{r['status']}[/bold]"
                                                    + (f" until {r['expires_at']}" if r.get("expires_at") and verb == "approve" else "")))


@app.command()
def approve(ctx: typer.Context, request_id: IdArg,
            reason: Annotated[str | None, typer.Option("--reason", "-r", help="Shown to the requester.")] = None,
            as_json: JsonOpt = False) -> None:
    """Approve a pending request (the grant lasts the policy's grant_days)."""
    _decide(ctx, request_id, "approve", reason, as_json)


@app.command()
def reject(ctx: typer.Context, request_id: IdArg,
           reason: Annotated[str, typer.Option("--reason", "-r", help="Why; the requester sees it (required).")] = "",
           as_json: JsonOpt = False) -> None:
    """Reject a pending request with a reason the requester sees."""
    _decide(ctx, request_id, "reject", reason, as_json)


@app.command()
def revoke(ctx: typer.Context, request_id: IdArg,
           reason: Annotated[str, typer.Option("--reason", "-r", help="Why; the licensee sees it (required).")] = "",
           as_json: JsonOpt = False) -> None:
    """Revoke a grant at once: the licensee's next download is refused."""
    _decide(ctx, request_id, "revoke", reason, as_json)


@app.command("downloads")
def list_downloads(ctx: typer.Context, model: ModelArg, version: Annotated[str | None, typer.Option(help="Only this version.")] = None,
                   as_json: JsonOpt = False) -> None:
    """The download record: who fetched which file, which terms version, how many bytes."""
    c = _Calls(ctx)
    rows = run(lambda: c.call("GET", f"/{_model(model)}/downloads",
                              lambda svc, a: downloads.list_downloads(svc, a, model, version=version),
                              params={"version": version} if version else None))
    emit(rows, as_json, lambda: output.table(rows, ["started_at", "principal_id", "version", "path", "range", "bytes_sent",
                                                    "completed", "terms_version", "fingerprinted"], empty="no downloads"))


def trace_cmd(ctx: typer.Context, path: Annotated[Path, typer.Argument(help="The leaked safetensors file or directory.")],
              model: Annotated[str, typer.Option(help="org/name")], version: Annotated[str, typer.Option(help="Version, e.g. v1.")],
              threshold: Annotated[float, typer.Option(help="z-score needed to name a licensee.")] = 8.0,
              as_json: JsonOpt = False) -> None:
    """Name the licensee a leaked copy of MODEL VERSION came from, with a confidence (local store only)."""
    s = state(ctx)
    if s.server:
        raise run(lambda: _local_only())
    r = run(lambda: tracing.trace_leak(s.service_context(), local_actor(), path, _model(model), version, threshold=threshold))

    def render() -> None:
        out = output.console()
        if r["licensee"]:
            out.print(f"[bold red]{r['licensee_name']}[/bold red] ({r['licensee']}, {r['licensee_email'] or 'no e-mail'}) "
                      f"with confidence {r['confidence']:.12f} (z={r['score']:.1f}, threshold {r['threshold']})")
        else:
            out.print(f"no licensee named: best z={r['score']:.1f} is below the threshold {r['threshold']}")
        out.print(f"[dim]{r['candidates']} candidates; runner-up z={r['runner_up_score']:.1f}; "
                  f"{r['positions_used']}/{r['positions_planned']} marked positions usable[/dim]")

    emit(r, as_json, render)


def _local_only() -> Any:
    raise InvalidInput("trace runs on the server's machine (it needs the original files and the server secret); "
                       "drop --server", code="local_only")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="weights")
    root.command("trace")(trace_cmd)
