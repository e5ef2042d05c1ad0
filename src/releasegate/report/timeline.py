"""The stage timeline as an inline SVG: one lane per version, one rect per stage segment, dates on the axis.

Pure string building, no JavaScript and no external assets; every text is escaped. Each segment
is a ``<rect class="seg">`` with a ``<title>`` (a browser shows it on hover) and, where it fits,
a label with the stage name and its audience size.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape

from releasegate.report.data import ReleaseReport, Segment, duration_text

STATE_COLOURS = {"active": "#2f855a", "paused": "#b7791f", "halted": "#c53030"}
WIDTH = 1080
LABEL_W = 96
RIGHT_PAD = 24
LANE_H = 30
LANE_GAP = 14
TOP = 30
AXIS_H = 34
CHAR_W = 6.4  # approximate width of one 11px character, to decide whether a label fits
TICK_STEPS = (timedelta(hours=1), timedelta(hours=6), timedelta(hours=12), timedelta(days=1), timedelta(days=2),
              timedelta(days=7), timedelta(days=14), timedelta(days=30), timedelta(days=91), timedelta(days=182),
              timedelta(days=365))


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _ticks(start: datetime, end: datetime, max_ticks: int = 8) -> tuple[list[datetime], timedelta]:
    span = end - start
    step = next((s for s in TICK_STEPS if span / s <= max_ticks), TICK_STEPS[-1])
    first = start.replace(minute=0, second=0, microsecond=0)
    if step >= timedelta(days=1):
        first = first.replace(hour=0)
    ticks: list[datetime] = []
    t = first
    while t <= end:
        if t >= start:
            ticks.append(t)
        t += step
    return ticks, step


def _label(seg: Segment, width: float) -> str:
    """The longest label that fits: stage and audience, the stage, a shortened stage, or nothing."""
    if seg.state != "active":
        candidates = [f"{seg.state} · {seg.stage}", seg.state]
    else:
        n = seg.audience_size
        candidates = ([f"{seg.stage} · {n} deployer{'s' if n != 1 else ''}", f"{seg.stage} · {n}"] if n is not None else [])
        candidates.append(seg.stage)
    room = int((width - 10) / CHAR_W)
    for text in candidates:
        if len(text) <= room:
            return text
    return candidates[-1][: room - 1] + "…" if room >= 4 else ""


def render_timeline(report: ReleaseReport) -> str:
    """The SVG (a string) for ``report``'s versions over the report window."""
    start, end = report.window
    if end - start < timedelta(hours=1):
        end = start + timedelta(hours=1)
    lanes = report.versions
    height = TOP + max(len(lanes), 1) * (LANE_H + LANE_GAP) + AXIS_H
    plot_w = WIDTH - LABEL_W - RIGHT_PAD
    span = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return LABEL_W + (t - start).total_seconds() / span * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" viewBox="0 0 {WIDTH} {height}" '
           f'width="100%" role="img" aria-label="Stage timeline of {_e(report.model)}">']
    out.append('<style>.timeline text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;fill:#1a202c}'
               '.timeline .lane-label{font-weight:600;font-size:12px}.timeline .seg-label{fill:#fff;font-weight:600}'
               '.timeline .tick{fill:#4a5568}.timeline .now{fill:#4a5568;font-style:italic}</style>')
    ticks, step = _ticks(start, end)
    axis_y = TOP + len(lanes) * (LANE_H + LANE_GAP)
    for t in ticks:
        tx = x(t)
        out.append(f'<line x1="{tx:.1f}" y1="{TOP - 6}" x2="{tx:.1f}" y2="{axis_y}" stroke="#e2e8f0" stroke-width="1"/>')
        label = t.strftime("%Y-%m-%d") if step >= timedelta(days=1) else t.strftime("%m-%d %H:%M")
        out.append(f'<text class="tick" x="{tx:.1f}" y="{axis_y + 16}" text-anchor="middle">{_e(label)}</text>')
    out.append(f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{WIDTH - RIGHT_PAD}" y2="{axis_y}" stroke="#a0aec0"/>')
    now_x = x(report.generated_at)
    out.append(f'<line x1="{now_x:.1f}" y1="{TOP - 10}" x2="{now_x:.1f}" y2="{axis_y}" stroke="#4a5568" '
               'stroke-dasharray="3 3"/>')
    out.append(f'<text class="now" x="{now_x - 4:.1f}" y="{TOP - 14}" text-anchor="end">report generated '
               f'{_e(report.generated_at.strftime("%Y-%m-%d %H:%M UTC"))}</text>')
    for lane, v in enumerate(lanes):
        y = TOP + lane * (LANE_H + LANE_GAP)
        out.append(f'<text class="lane-label" x="8" y="{y + LANE_H / 2 + 4:.1f}">{_e(v.version)}</text>')
        out.append(f'<rect x="{LABEL_W}" y="{y}" width="{plot_w}" height="{LANE_H}" fill="#f7fafc" rx="3"/>')
        if not v.segments:
            out.append(f'<text class="tick" x="{LABEL_W + 8}" y="{y + LANE_H / 2 + 4:.1f}">'
                       f'{_e(v.state)}: never released</text>')
        for seg in v.segments:
            sx, ex = x(seg.start), x(seg.end)
            w = max(ex - sx, 2.0)
            colour = STATE_COLOURS.get(seg.state, "#718096")
            tip = (f"{v.version} · {seg.stage} · {seg.state} · {seg.start:%Y-%m-%d %H:%M} → "
                   f"{'now' if seg.ongoing else format(seg.end, '%Y-%m-%d %H:%M')} ({duration_text(seg.seconds)})"
                   + (f" · audience ≈ {seg.audience_size}" if seg.audience_size is not None else ""))
            out.append(f'<rect class="seg seg-{_e(seg.state)}" x="{sx:.1f}" y="{y}" width="{w:.1f}" height="{LANE_H}" '
                       f'fill="{colour}" stroke="#fff" stroke-width="1" rx="3" data-stage="{_e(seg.stage)}" '
                       f'data-state="{_e(seg.state)}"><title>{_e(tip)}</title></rect>')
            label = _label(seg, w)
            if label:
                out.append(f'<text class="seg-label" x="{sx + 6:.1f}" y="{y + LANE_H / 2 + 4:.1f}">{_e(label)}</text>')
    legend_x = LABEL_W
    for state, colour in STATE_COLOURS.items():
        out.append(f'<rect x="{legend_x}" y="6" width="12" height="12" rx="2" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + 17}" y="16">{_e(state)}</text>')
        legend_x += 80
    out.append("</svg>")
    return "".join(out)
