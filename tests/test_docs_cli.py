"""Every CLI command is documented in docs/cli.md (regenerate with scripts/gen_cli_docs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from releasegate.cli.main import build_app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def commands(cmd: Any, path: list[str]) -> list[str]:
    found = [" ".join(path)] if len(path) > 1 else []
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        found.extend(commands(sub, [*path, name]))
    return found


def test_every_command_is_documented() -> None:
    text = DOC.read_text()
    names = commands(typer.main.get_command(build_app()), ["releasegate"])
    assert len(names) > 30
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"undocumented commands (run scripts/gen_cli_docs.py): {missing}"


def test_every_option_is_documented() -> None:
    text = DOC.read_text()
    root = typer.main.get_command(build_app())
    missing = []
    stack: list[tuple[Any, list[str]]] = [(root, ["releasegate"])]
    while stack:
        cmd, path = stack.pop()
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append((sub, [*path, name]))
        if not hasattr(cmd, "commands"):
            section = text.split(f"`{' '.join(path)}`", 1)[-1][:4000]
            for p in cmd.params:
                if p.param_type_name == "option" and p.opts[0] not in section:
                    missing.append(f"{' '.join(path)} {p.opts[0]}")
    assert not missing, f"undocumented options: {missing}"
