"""The release report as one self-contained HTML file: inline CSS and SVG, no scripts, no external assets.

Every value that comes from the store is escaped with ``html.escape``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import Any

from releasegate import __version__
from releasegate.report.data import ReleaseReport, TransitionRow, VersionReport, duration_text
from releasegate.report.timeline import STATE_COLOURS, render_timeline

CSS = """
:root{--ink:#1a202c;--muted:#4a5568;--line:#e2e8f0;--soft:#f7fafc;--accent:#2b6cb0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:#fff}
main{max-width:1120px;margin:0 auto;padding:32px 28px 64px}
header{border-bottom:3px solid var(--ink);padding-bottom:16px;margin-bottom:8px}
h1{font-size:26px;margin:0 0 4px}
h1 small{font-weight:400;color:var(--muted);font-size:15px;display:block;letter-spacing:.04em;text-transform:uppercase}
h2{font-size:18px;margin:36px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px}
p.lead{color:var(--muted);margin:6px 0 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:16px 0 0}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid var(--line)}
th{background:var(--soft);font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.nowrap{white-space:nowrap}
table.compact{width:auto;min-width:50%}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:#718096}
.ok{background:#2f855a}.bad{background:#c53030}.warn{background:#b7791f}
.pass{color:#2f855a;font-weight:600}.fail{color:#c53030;font-weight:600}.inconclusive{color:#b7791f;font-weight:600}
.override{background:#fff5f5;border-left:3px solid #c53030;padding:2px 6px;margin-top:4px;display:block}
ul.crit{margin:4px 0 0;padding-left:16px;color:var(--muted);font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0 0}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:16px}
.note{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px 14px;color:var(--muted);font-size:13px}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:40px;padding-top:12px;border-top:1px solid var(--line);color:var(--muted);font-size:12px}
@media print{main{padding:0}h2{break-after:avoid}table,svg{break-inside:avoid}}
"""


def _e(value: object) -> str:
    return "" if value is None else escape(str(value), quote=True)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str, num: Sequence[int] = (),
           nowrap: Sequence[int] = (0,), cls: str = "") -> str:
    """A table of pre-escaped cells; ``num`` columns align right, ``nowrap`` columns do not wrap."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'

    def td(i: int, c: str) -> str:
        classes = " ".join(k for k, cols in (("num", num), ("nowrap", nowrap)) if i in cols)
        return f'<td class="{classes}">{c}</td>' if classes else f"<td>{c}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(td(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _outcome(outcome: str | None) -> str:
    return f'<span class="{_e(outcome)}">{_e(outcome)}</span>' if outcome else "—"


def _transition_cells(t: TransitionRow) -> list[str]:
    verdict = _outcome(t.verdict_outcome)
    if t.verdict_results:
        verdict += '<ul class="crit">' + "".join(
            f'<li><span class="{_e(r.get("outcome"))}">{_e(r.get("outcome"))}</span> {_e(r.get("kind"))}: {_e(r.get("message"))}</li>'
            for r in t.verdict_results) + "</ul>"
    reason = _e(t.reason)
    if t.override_reason:
        reason += f'<span class="override"><b>Gate overridden:</b> {_e(t.override_reason)}</span>'
    return [_e(_when(t.at)), f"<b>{_e(t.action)}</b>", f"{_e(t.from_label)} → {_e(t.to_label)}", _e(t.actor), reason, verdict]


def _version_section(v: VersionReport) -> str:
    colour = STATE_COLOURS.get(v.state, "#718096")
    parts = [f'<h3>Version {_e(v.version)} <span class="badge" style="background:{colour}">{_e(v.state)}'
             f'{" · " + _e(v.stage) if v.stage else ""}</span></h3>']
    parts.append(_table(["Stage", "Time in stage", "Active", "Paused", "Halted"],
                        [[_e(s.stage), _e(duration_text(s.seconds))] +
                         [_e(duration_text(s.by_state[k])) if k in s.by_state else "—" for k in ("active", "paused", "halted")]
                         for s in v.stage_time], empty="This version was never released.", num=(1, 2, 3, 4), cls="compact"))
    parts.append(_table(["When", "Action", "From → to", "By", "Reason", "Gate verdict"],
                        [_transition_cells(t) for t in v.transitions], empty="No transitions recorded."))
    return "".join(parts)


def _rows(items: Sequence[dict[str, Any]], cols: Sequence[tuple[str, Callable[[dict[str, Any]], object]]]) -> list[list[str]]:
    return [[_e(fn(item)) for _, fn in cols] for item in items]


def render_html(report: ReleaseReport) -> str:
    """The whole report as an HTML document (a string)."""
    a = report.audit
    audit_badge = ('<span class="badge ok">chain verifies</span>' if a.verified
                   else f'<span class="badge bad">chain does NOT verify: {len(a.problems)} problem(s)</span>')
    s: list[str] = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Release report: {_e(report.model)}</title><style>{CSS}</style></head><body><main>",
        f"<header><h1><small>Release report</small>{_e(report.model)}</h1>",
        f'<p class="lead">{_e(report.description)}</p>' if report.description else "",
        '<dl class="facts">',
        f"<dt>Generated</dt><dd>{_e(_when(report.generated_at))} by {_e(report.generated_by)}</dd>",
        f'<dt>Plan in force</dt><dd>revision {report.plan_revision} · <code>{_e(report.plan_hash)}</code></dd>',
        f'<dt>Audit chain head</dt><dd>entry #{a.size} · <code class="audit-head">{_e(a.hash)}</code> {audit_badge}</dd>',
        "</dl></header>",
        '<div class="cards">' + "".join(
            f'<div class="card">{_e(v.version)}<b>{_e(v.state)}</b>{_e(v.stage or "not released")}</div>'
            for v in report.versions) + "</div>",
    ]
    if not a.verified:
        s.append('<p class="note">' + "<br>".join(_e(p) for p in a.problems) + "</p>")

    s.append('<h2 id="timeline">Stage timeline</h2>')
    s.append(render_timeline(report))
    s.append(f'<p class="note">{"<br>".join(_e(n) for n in report.notes)}</p>')

    s.append('<h2 id="plan">Release plan</h2>')
    s.append(_table(["#", "Stage", "Channels", "Audience", "Gate to enter", "Halt rules"],
                    [[str(st.index + 1), f"<b>{_e(st.name)}</b>", _e(", ".join(st.channels)), _e(st.audience),
                      "<br>".join(_e(g) for g in st.gate) or "—", "<br>".join(_e(h) for h in st.halt_on) or "—"]
                     for st in report.stages], empty="No stages."))

    s.append('<h2 id="versions">Versions and decisions</h2>')
    s.extend(_version_section(v) for v in report.versions)

    s.append('<h2 id="evidence">Evidence</h2><h3>Evaluation results</h3>')
    s.append(_table(["Version", "Suite", "Metric", "Value", "± stderr", "Samples", "Source", "Imported"],
                    _rows(report.results, [("v", lambda r: r["version"]), ("s", lambda r: r["suite"] + (f" / {r['task']}" if r["task"] else "")),
                                           ("m", lambda r: r["metric"]), ("val", lambda r: f"{r['value']:.4g}"),
                                           ("se", lambda r: f"{r['stderr']:.3g}" if r["stderr"] is not None else "—"),
                                           ("n", lambda r: r["samples"] if r["samples"] is not None else "—"),
                                           ("src", lambda r: f"{r['source']} (sha256 {r['source_sha256'][:12]}…)"),
                                           ("at", lambda r: f"{_when(r['imported_at'])} by {r['imported_by']}")]),
                    empty="No evaluation results were imported.", num=(3, 4, 5)))
    s.append("<h3>Red-team findings</h3>")
    s.append(_table(["Id", "Version", "Severity", "Status", "Title", "Reported"],
                    _rows(report.findings, [("id", lambda f: f["id"]), ("v", lambda f: f["version"]), ("sev", lambda f: f["severity"]),
                                            ("st", lambda f: f["status"]), ("t", lambda f: f["title"]),
                                            ("at", lambda f: f"{_when(f['created_at'])} by {f['reported_by']}")]),
                    empty="No findings were recorded."))

    s.append('<h2 id="incidents">Incidents</h2>')
    s.append(_table(["Id", "Version", "Stage", "Severity", "Status", "Title", "Reported", "Closed"],
                    _rows(report.incidents, [("id", lambda i: i["id"]), ("v", lambda i: i["version"]), ("st", lambda i: i["stage"] or "—"),
                                             ("sev", lambda i: i["severity"]), ("s", lambda i: i["status"]), ("t", lambda i: i["title"]),
                                             ("at", lambda i: f"{_when(i['created_at'])} by {i['reported_by']} ({i['source']})"),
                                             ("c", lambda i: _when(i["closed_at"]))]),
                    empty="No incidents were reported."))

    s.append('<h2 id="approvals">Approvals</h2>')
    s.append(_table(["Version", "Into stage", "Approver", "Roles", "Comment", "When"],
                    _rows(report.approvals, [("v", lambda x: x["version"]), ("st", lambda x: x["stage"]), ("a", lambda x: x["approver"]),
                                             ("r", lambda x: ", ".join(x["roles"])), ("c", lambda x: x["comment"] or "—"),
                                             ("at", lambda x: _when(x["at"]))]),
                    empty="No approvals were recorded."))

    s.append('<h2 id="revisions">Plan revisions</h2>')
    s.append(_table(["Revision", "Content hash", "Applied", "By", "Forced because"],
                    [[str(r.revision), f"<code>{_e(r.content_hash)}</code>", _e(_when(r.created_at)), _e(r.created_by),
                      _e(r.forced_reason or "—")] for r in report.revisions], empty="No revisions."))

    s.append('<h2 id="decisions">Decision log</h2>')
    s.append('<p>Every audit-trail entry about this model, its versions, aliases, applications, incidents and findings. '
             "Each entry's hash chains to the one before it; check them with <code>releasegate audit verify</code>.</p>")
    s.append(_table(["#", "When", "Actor", "Action", "Target", "Reason", "Entry hash"],
                    [[str(d["seq"]), _e(_when(d["at"])), _e(d["actor"]), _e(d["action"]), _e(d["target"]),
                      _e(d["reason"] or "—"), f'<code>{_e(d["hash"][:16])}…</code>'] for d in report.decisions],
                    empty="No audit entries.", num=(0,), nowrap=(0, 6)))

    s.append(f"<footer>Built by releasegate {_e(__version__)} from audit chain head #{a.size} "
             f'<code>{_e(a.hash)}</code> ({"verified" if a.verified else "NOT verified"}) at {_e(_when(report.generated_at))}. '
             "Entries added after this head are not reflected.</footer>")
    s.append("</main></body></html>")
    return "\n".join(x for x in s if x)
