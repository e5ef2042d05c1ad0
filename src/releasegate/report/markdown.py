"""The release report as Markdown: the same content as the HTML, the timeline as a table.

Every value from the store is HTML-escaped (Markdown viewers render raw HTML) and table cells
are kept on one line with ``|`` escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

from releasegate.report.data import ReleaseReport, TransitionRow, duration_text


def _c(value: object) -> str:
    """One safe table cell."""
    if value is None:
        return "—"
    text = escape(str(value), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return text or "—"


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> list[str]:
    if not rows:
        return [f"_{empty}_", ""]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return [*out, ""]


def _verdict(t: TransitionRow) -> str:
    if not t.verdict_outcome:
        return "—"
    parts = [f"**{_c(t.verdict_outcome)}**"]
    parts.extend(f"{_c(r.get('outcome'))} {_c(r.get('kind'))}: {_c(r.get('message'))}" for r in t.verdict_results)
    return "<br>".join(parts)


def render_markdown(report: ReleaseReport) -> str:
    """The whole report as a Markdown document (a string)."""
    a = report.audit
    md: list[str] = [f"# Release report: {_c(report.model)}", ""]
    if report.description:
        md += [_c(report.description), ""]
    md += [
        f"- **Generated:** {_when(report.generated_at)} by {_c(report.generated_by)}",
        f"- **Plan in force:** revision {report.plan_revision}, content hash `{report.plan_hash}`",
        f"- **Audit chain head:** entry #{a.size}, hash `{a.hash}`: "
        + ("the chain verifies" if a.verified else f"the chain does NOT verify ({len(a.problems)} problems)"),
        "",
    ]
    md += [f"> {_c(p)}" for p in a.problems]
    md += ["## Stage timeline", ""]
    seg_rows = [[_c(s.version), _c(s.stage), _c(s.state), _when(s.start), "now" if s.ongoing else _when(s.end),
                 duration_text(s.seconds), _c(s.audience_size)] for v in report.versions for s in v.segments]
    md += _table(["Version", "Stage", "State", "From", "To", "Duration", "Audience (≈)"], seg_rows,
                 "No version has been released yet.")
    md += [f"> {_c(n)}" for n in report.notes] + [""]
    md += ["## Release plan", ""]
    md += _table(["#", "Stage", "Channels", "Audience", "Gate to enter", "Halt rules"],
                 [[str(s.index + 1), _c(s.name), _c(", ".join(s.channels)), _c(s.audience),
                   "<br>".join(_c(g) for g in s.gate) or "—", "<br>".join(_c(h) for h in s.halt_on) or "—"]
                  for s in report.stages], "No stages.")
    md += ["## Versions and decisions", ""]
    for v in report.versions:
        md += [f"### Version {_c(v.version)}: {_c(v.state)}" + (f" in {_c(v.stage)}" if v.stage else ""), ""]
        md += _table(["Stage", "Time in stage", "Active", "Paused", "Halted"],
                     [[_c(s.stage), duration_text(s.seconds)] + [duration_text(s.by_state[k]) if k in s.by_state else "—"
                                                                 for k in ("active", "paused", "halted")]
                      for s in v.stage_time], "This version was never released.")
        md += _table(["When", "Action", "From → to", "By", "Reason", "Gate verdict"],
                     [[_when(t.at), _c(t.action), f"{_c(t.from_label)} → {_c(t.to_label)}", _c(t.actor),
                       _c(t.reason) + (f"<br>**Gate overridden:** {_c(t.override_reason)}" if t.override_reason else ""),
                       _verdict(t)] for t in v.transitions], "No transitions recorded.")
    md += ["## Evidence", "", "### Evaluation results", ""]
    md += _table(["Version", "Suite", "Metric", "Value", "± stderr", "Samples", "Source", "Imported"],
                 [[_c(r["version"]), _c(r["suite"] + (f" / {r['task']}" if r["task"] else "")), _c(r["metric"]),
                   f"{r['value']:.4g}", f"{r['stderr']:.3g}" if r["stderr"] is not None else "—", _c(r["samples"]),
                   f"{_c(r['source'])} (sha256 `{r['source_sha256'][:12]}…`)", f"{_when(r['imported_at'])} by {_c(r['imported_by'])}"]
                  for r in report.results], "No evaluation results were imported.")
    md += ["### Red-team findings", ""]
    md += _table(["Id", "Version", "Severity", "Status", "Title", "Reported"],
                 [[_c(f["id"]), _c(f["version"]), _c(f["severity"]), _c(f["status"]), _c(f["title"]),
                   f"{_when(f['created_at'])} by {_c(f['reported_by'])}"] for f in report.findings],
                 "No findings were recorded.")
    md += ["## Incidents", ""]
    md += _table(["Id", "Version", "Stage", "Severity", "Status", "Title", "Reported", "Closed"],
                 [[_c(i["id"]), _c(i["version"]), _c(i["stage"]), _c(i["severity"]), _c(i["status"]), _c(i["title"]),
                   f"{_when(i['created_at'])} by {_c(i['reported_by'])} ({_c(i['source'])})", _when(i["closed_at"])]
                  for i in report.incidents], "No incidents were reported.")
    md += ["## Approvals", ""]
    md += _table(["Version", "Into stage", "Approver", "Roles", "Comment", "When"],
                 [[_c(x["version"]), _c(x["stage"]), _c(x["approver"]), _c(", ".join(x["roles"])), _c(x["comment"] or None),
                   _when(x["at"])] for x in report.approvals], "No approvals were recorded.")
    md += ["## Plan revisions", ""]
    md += _table(["Revision", "Content hash", "Applied", "By", "Forced because"],
                 [[str(r.revision), f"`{r.content_hash}`", _when(r.created_at), _c(r.created_by), _c(r.forced_reason)]
                  for r in report.revisions], "No revisions.")
    md += ["## Decision log", "",
           "Every audit-trail entry about this model, its versions, aliases, applications, incidents and findings; "
           "check the chain with `releasegate audit verify`.", ""]
    md += _table(["#", "When", "Actor", "Action", "Target", "Reason", "Entry hash"],
                 [[str(d["seq"]), _when(d["at"]), _c(d["actor"]), _c(d["action"]), _c(d["target"]), _c(d["reason"]),
                   f"`{d['hash'][:16]}…`"] for d in report.decisions], "No audit entries.")
    md += ["---", "", f"Built from audit chain head #{a.size} `{a.hash}` "
           f"({'verified' if a.verified else 'NOT verified'}) at {_when(report.generated_at)}; "
           "entries added after this head are not reflected.", ""]
    return "\n".join(md)
