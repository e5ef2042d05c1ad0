"""Printing results: Rich tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, title: str | None = None, empty: str = "nothing to show") -> None:
    out = console()
    if not rows:
        out.print(f"[dim]{empty}[/dim]")
        return
    t = Table(title=title, show_lines=False)
    for col in columns:
        t.add_column(col.replace("_", " "))
    for row in rows:
        t.add_row(*[_cell(row.get(col)) for col in columns])
    out.print(t)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def fields(data: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    out = console()
    for key in keys or list(data):
        if key in data:
            out.print(f"[bold]{key.replace('_', ' ')}[/bold]: {_cell(data[key])}")


def human_duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"
