"""``releasegate audit``: verify, export, list, checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from releasegate.cli import output
from releasegate.cli.main import JsonOpt, client, emit, fail, run
from releasegate.errors import InvalidInput

app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)


@app.command()
def verify(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Check the hash chain; name any edited, deleted, inserted or reordered entry (exit 1 if broken)."""
    result = run(lambda: client(ctx).audit_verify())

    def render() -> None:
        out = output.console()
        if result["ok"]:
            out.print(f"[green]ok[/green]: {result['entries']} entries, head {result['head'][:16]}…")
        else:
            for p in result["problems"]:
                out.print(f"[red]{p['kind']}[/red] at entry {p['seq']}: {p['message']}")

    emit(result, as_json, render)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("list")
def list_(ctx: typer.Context, target: Annotated[str | None, typer.Option(help="e.g. version:acme/atlas-8b:v1")] = None,
          limit: Annotated[int, typer.Option(min=1, max=1000)] = 50, as_json: JsonOpt = False) -> None:
    """The latest entries, newest first."""
    rows = run(lambda: client(ctx).audit_list(target, limit))
    emit(rows, as_json, lambda: output.table(rows, ["seq", "at", "actor", "action", "target", "reason"], empty="the audit trail is empty"))


@app.command()
def export(ctx: typer.Context, out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default stdout).")] = None,
           since: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0) -> None:
    """Write the entries as JSON lines."""
    if out is None:
        run(lambda: client(ctx).audit_export(sys.stdout.buffer, since))
        return
    with out.open("wb") as fh:
        n = run(lambda: client(ctx).audit_export(fh, since))
    output.console(stderr=True).print(f"wrote {n} entries to {out}")


@app.command()
def checkpoint(ctx: typer.Context, out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the signed checkpoint here.")] = None) -> None:
    """Emit a signed (Ed25519) head of the log for an outside auditor to keep."""
    cp = run(lambda: client(ctx).audit_checkpoint())
    text = json.dumps(cp, indent=2)
    if out:
        out.write_text(text + "\n")
        output.console(stderr=True).print(f"checkpoint of {cp['size']} entries written to {out}")
    else:
        print(text)


@app.command()
def check(ctx: typer.Context, checkpoint_file: Annotated[Path, typer.Argument(help="A checkpoint written by `audit checkpoint`.")],
          public_key: Annotated[str | None, typer.Option(help="The public key you trust (base64); default: the one in the file.")] = None,
          as_json: JsonOpt = False) -> None:
    """Check that the log still holds, unchanged, the history a checkpoint vouched for (exit 1 if not)."""
    try:
        data = json.loads(checkpoint_file.read_text())
    except (OSError, ValueError) as exc:
        raise fail(InvalidInput(f"cannot read checkpoint {checkpoint_file}: {exc}", code="checkpoint_invalid")) from None
    result = run(lambda: client(ctx).audit_check(data, public_key))

    def render() -> None:
        o = output.console()
        if result["ok"]:
            o.print(f"[green]ok[/green]: the log ({result['size']} entries) extends the checkpoint of {result['checkpoint_size']} entries unchanged")
        for p in result["problems"]:
            o.print(f"[red]{p['kind']}[/red] at entry {p['seq']}: {p['message']}")

    emit(result, as_json, render)
    if not result["ok"]:
        raise typer.Exit(1)
