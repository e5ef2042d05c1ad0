"""The release report: a self-contained document for auditors (``data`` gathers, ``html``/``markdown`` render)."""

from __future__ import annotations

from releasegate.errors import InvalidInput

FORMATS = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8"}


def render(report: object, fmt: str) -> str:
    """``report`` (a ``data.ReleaseReport``) rendered as ``fmt``: ``html`` or ``md``."""
    from releasegate.report.data import ReleaseReport
    from releasegate.report.html import render_html
    from releasegate.report.markdown import render_markdown

    assert isinstance(report, ReleaseReport)
    if fmt == "html":
        return render_html(report)
    if fmt in ("md", "markdown"):
        return render_markdown(report)
    raise InvalidInput(f"unknown report format {fmt!r}; use html or md", code="invalid_format")
