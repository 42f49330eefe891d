"""Server-side SVG pictures: latency per turn as stacked bars, p50/p95 per stage, daily usage.

Sans-I/O: numbers in, SVG text out. The browser inserts the text as inline
SVG (parsed with ``DOMParser``, never ``innerHTML``), so no charting library,
CDN or build step is involved and the page's CSP can forbid inline scripts and
styles: colours are SVG presentation attributes, not ``style``.

Every piece of text drawn is XML-escaped here; callers redact it before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "TEXT_STAGES",
    "VOICE_STAGES",
    "DayBar",
    "Stage",
    "StageStats",
    "TurnBar",
    "daily_usage_svg",
    "latency_svg",
    "percentile",
    "segments",
    "stage_stats",
    "stage_stats_svg",
]

# Okabe–Ito palette: distinguishable with the common forms of colour blindness.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
_INK = "#1f2933"
_MUTED = "#6b7785"
_GRID = "#e3e7ec"
_FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
_MAX_BARS = 200


@dataclass(frozen=True, slots=True)
class Stage:
    """One segment of a turn: from the previous stamp to ``name``.

    Attributes:
        name: the timing stage that ends the segment (``"first_token"``).
        label: what the segment is, for people (``"typing → first token"``).
    """

    name: str
    label: str


TEXT_STAGES: tuple[Stage, ...] = (
    Stage("typing_sent", "received → typing"),
    Stage("first_token", "typing → first token"),
    Stage("posted", "first token → posted"),
)
"""Segments of a text turn (origin: message received)."""

VOICE_STAGES: tuple[Stage, ...] = (
    Stage("stt_final", "end of speech → STT final"),
    Stage("first_token", "STT final → first token"),
    Stage("first_clause", "first token → first clause"),
    Stage("first_audio", "first clause → first audio"),
    Stage("first_frame", "first audio → first frame played"),
)
"""Segments of a voice turn (origin: end of speech)."""


@dataclass(frozen=True, slots=True)
class TurnBar:
    """One turn to draw: its id and ``durations_ms()`` (milliseconds from the origin)."""

    turn_id: str
    durations_ms: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class StageStats:
    """p50/p95 of one segment over the turns that stamped it."""

    stage: str
    label: str
    p50_ms: float | None
    p95_ms: float | None
    count: int


@dataclass(frozen=True, slots=True)
class DayBar:
    """One day of usage."""

    label: str
    cost_usd: float
    tokens: int
    calls: int


def segments(durations_ms: Mapping[str, float], stages: Sequence[Stage]) -> list[float | None]:
    """Per-segment milliseconds of one turn from its cumulative stamps.

    A segment whose stage was not stamped is ``None``; the next stamped stage
    then measures from the last stamp that exists. Negative gaps (stamps out
    of order) count as zero.
    """
    out: list[float | None] = []
    previous = 0.0
    for stage in stages:
        value = durations_ms.get(stage.name)
        if value is None or not math.isfinite(value):
            out.append(None)
            continue
        out.append(max(0.0, value - previous))
        previous = max(previous, value)
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * min(max(q, 0.0), 1.0)
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stage_stats(turns: Sequence[TurnBar], stages: Sequence[Stage]) -> list[StageStats]:
    """p50/p95 per segment, plus a final ``total`` row (origin → last stamp)."""
    per_stage: list[list[float]] = [[] for _ in stages]
    totals: list[float] = []
    for turn in turns:
        parts = segments(turn.durations_ms, stages)
        for index, part in enumerate(parts):
            if part is not None:
                per_stage[index].append(part)
        stamped = [part for part in parts if part is not None]
        if stamped:
            totals.append(sum(stamped))
    rows = [
        StageStats(
            stage.name, stage.label, percentile(values, 0.5), percentile(values, 0.95), len(values)
        )
        for stage, values in zip(stages, per_stage, strict=True)
    ]
    rows.append(
        StageStats(
            "total",
            "whole turn",
            percentile(totals, 0.5),
            percentile(totals, 0.95),
            len(totals),
        )
    )
    return rows


# --- drawing -------------------------------------------------------------------------------


def _nice_ceiling(value: float) -> float:
    """The smallest 1/2/5 × 10^k at or above ``value`` (axis maximum)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        candidate = step * 10**exponent
        if candidate >= value:
            return candidate
    return 10.0 ** (exponent + 1)


def _fmt_tick_ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g} s"
    return f"{value:g} ms"


def _fmt_ms(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms"


def _fmt_usd(value: float) -> str:
    if value >= 100:
        return f"${value:.0f}"
    if value >= 1:
        return f"${value:.2f}"
    return f"${value:.4f}".rstrip("0").rstrip(".") if value else "$0"


def _text(
    x: float, y: float, text: str, *, anchor: str = "start", size: int = 12, fill: str = _INK
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'fill="{fill}">{escape(text)}</text>'
    )


def _open_svg(width: int, height: int, label: str, css_class: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class={quoteattr(css_class)} '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f"aria-label={quoteattr(label)} font-family={quoteattr(_FONT)}>"
        f"<title>{escape(label)}</title>"
    )


def _empty(width: int, height: int, label: str, message: str, css_class: str) -> str:
    return (
        _open_svg(width, height, label, css_class)
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
        f'fill="#f7f9fb" stroke="{_GRID}"/>'
        + _text(width / 2, height / 2 + 4, message, anchor="middle", size=14, fill=_MUTED)
        + "</svg>"
    )


def _legend(stages: Sequence[Stage], x0: float, y0: float, right: float) -> tuple[str, float]:
    """Legend items wrapped onto as many lines as needed; returns (svg, y below the last line)."""
    parts: list[str] = []
    x, y = x0, y0
    for index, stage in enumerate(stages):
        item_width = 22 + 6.8 * len(stage.label)
        if x + item_width > right and x > x0:
            x, y = x0, y + 20
        colour = _PALETTE[index % len(_PALETTE)]
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" rx="2" fill="{colour}"/>'
        )
        parts.append(_text(x + 17, y, stage.label, size=12))
        x += item_width + 14
    return "".join(parts), y + 14


def latency_svg(
    turns: Sequence[TurnBar],
    stages: Sequence[Stage],
    *,
    title: str,
    width: int = 960,
    height: int = 300,
) -> str:
    """A stacked bar per turn (oldest on the left), one colour per segment.

    Each bar is a ``<g class="turn" data-turn-id=…>`` holding a ``<title>``
    with the turn's numbers and one ``<rect class="seg">`` per stamped segment.
    At most the last 200 turns are drawn.
    """
    turns = list(turns)[-_MAX_BARS:]
    if not turns:
        return _empty(width, height, title, "No turns yet", "chart latency")
    left, right, bottom = 64, 16, 36
    legend, top = _legend(stages, left, 18, width - right)
    top += 8
    plot_w = width - left - right
    plot_h = height - top - bottom
    rows = [segments(turn.durations_ms, stages) for turn in turns]
    totals = [sum(part for part in row if part is not None) for row in rows]
    y_max = _nice_ceiling(max(totals) if totals else 1.0)
    slot = plot_w / len(turns)
    bar_w = max(2.0, min(32.0, slot * 0.7))
    out = [_open_svg(width, height, title, "chart latency"), legend]
    for tick in range(5):
        value = y_max * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{_GRID}"/>'
        )
        out.append(_text(left - 8, y + 4, _fmt_tick_ms(value), anchor="end", size=11, fill=_MUTED))
    label_every = max(1, math.ceil(len(turns) / 12))
    for index, (turn, row, total) in enumerate(zip(turns, rows, totals, strict=True)):
        x = left + slot * index + (slot - bar_w) / 2
        details = [f"turn {turn.turn_id}: {_fmt_ms(total)}"]
        details += [
            f"{stage.label}: {_fmt_ms(part)}"
            for stage, part in zip(stages, row, strict=True)
            if part is not None
        ]
        out.append(f'<g class="turn" data-turn-id={quoteattr(turn.turn_id)}>')
        out.append(f"<title>{escape(chr(10).join(details))}</title>")
        y = top + plot_h
        for stage_index, part in enumerate(row):
            if part is None:
                continue
            h = plot_h * part / y_max
            y -= h
            out.append(
                f'<rect class="seg" data-stage={quoteattr(stages[stage_index].name)} '
                f'x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{max(h, 0.0):.1f}" '
                f'fill="{_PALETTE[stage_index % len(_PALETTE)]}"/>'
            )
        out.append("</g>")
        if index % label_every == 0 or index == len(turns) - 1:
            out.append(
                _text(
                    x + bar_w / 2,
                    top + plot_h + 16,
                    str(index + 1),
                    anchor="middle",
                    size=11,
                    fill=_MUTED,
                )
            )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{_MUTED}"/>'
    )
    out.append(
        _text(
            left + plot_w / 2,
            height - 4,
            f"last {len(turns)} turns, oldest first",
            anchor="middle",
            size=11,
            fill=_MUTED,
        )
    )
    out.append("</svg>")
    return "".join(out)


def stage_stats_svg(
    rows: Sequence[StageStats], *, title: str, width: int = 960, row_h: int = 30
) -> str:
    """p50 (solid) and p95 (pale) per segment as horizontal bars on one shared scale."""
    if not any(row.count for row in rows):
        return _empty(width, 80, title, "No turns yet", "chart stages")
    label_w, value_w = 250, 210
    plot_w = width - label_w - value_w - 16
    height = row_h * len(rows) + 12
    x_max = _nice_ceiling(max((row.p95_ms or 0.0) for row in rows))
    out = [_open_svg(width, height, title, "chart stages")]
    for index, row in enumerate(rows):
        y = 6 + index * row_h
        colour = _INK if row.stage == "total" else _PALETTE[index % len(_PALETTE)]
        out.append(f'<g class="stage" data-stage={quoteattr(row.stage)}>')
        out.append(_text(label_w - 10, y + row_h / 2 + 4, row.label, anchor="end", size=12))
        out.append(
            f'<rect x="{label_w}" y="{y + 5}" width="{plot_w}" height="{row_h - 10}" rx="3" fill="#f2f4f7"/>'
        )
        if row.p95_ms is not None:
            w95 = plot_w * row.p95_ms / x_max
            out.append(
                f'<rect class="p95" x="{label_w}" y="{y + 5}" width="{w95:.1f}" height="{row_h - 10}" '
                f'rx="3" fill="{colour}" fill-opacity="0.3"/>'
            )
        if row.p50_ms is not None:
            w50 = plot_w * row.p50_ms / x_max
            out.append(
                f'<rect class="p50" x="{label_w}" y="{y + 5}" width="{w50:.1f}" height="{row_h - 10}" '
                f'rx="3" fill="{colour}"/>'
            )
        if row.count:
            summary = f"p50 {_fmt_ms(row.p50_ms or 0.0)} · p95 {_fmt_ms(row.p95_ms or 0.0)} · n={row.count}"
        else:
            summary = "not measured"
        out.append(_text(label_w + plot_w + 12, y + row_h / 2 + 4, summary, size=12, fill=_MUTED))
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def daily_usage_svg(
    days: Sequence[DayBar],
    *,
    title: str,
    budget_usd: float | None = None,
    width: int = 960,
    height: int = 240,
) -> str:
    """Cost per day as bars (tokens and calls in each bar's tooltip), with the daily budget line."""
    if not days:
        return _empty(width, height, title, "No usage yet", "chart usage")
    left, right, top, bottom = 64, 16, 24, 32
    plot_w = width - left - right
    plot_h = height - top - bottom
    peak = max(day.cost_usd for day in days)
    # Draw the budget line only when it fits a scale the bars can still be read on.
    budget_on_scale = bool(budget_usd) and (peak <= 0 or budget_usd <= 3 * peak)
    if budget_on_scale and budget_usd:
        peak = max(peak, budget_usd)
    y_max = _nice_ceiling(peak) if peak > 0 else 1.0
    slot = plot_w / len(days)
    bar_w = max(2.0, slot * 0.7)
    out = [_open_svg(width, height, title, "chart usage")]
    for tick in range(5):
        value = y_max * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{_GRID}"/>'
        )
        out.append(_text(left - 8, y + 4, _fmt_usd(value), anchor="end", size=11, fill=_MUTED))
    label_every = max(1, math.ceil(len(days) / 10))
    for index, day in enumerate(days):
        x = left + slot * index + (slot - bar_w) / 2
        h = plot_h * day.cost_usd / y_max
        tip = f"{day.label}: {_fmt_usd(day.cost_usd)}, {day.tokens:,} tokens, {day.calls} calls"
        out.append(f'<g class="day" data-day={quoteattr(day.label)}><title>{escape(tip)}</title>')
        out.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="{_PALETTE[0]}"/>'
        )
        # An invisible full-height target so empty days still show their tooltip.
        out.append(
            f'<rect x="{x:.1f}" y="{top}" width="{bar_w:.1f}" height="{plot_h}" fill="#000" fill-opacity="0"/>'
        )
        out.append("</g>")
        if index % label_every == 0 or index == len(days) - 1:
            out.append(
                _text(
                    x + bar_w / 2,
                    top + plot_h + 16,
                    day.label[5:],
                    anchor="middle",
                    size=11,
                    fill=_MUTED,
                )
            )
    if budget_usd and budget_on_scale:
        y = top + plot_h - plot_h * budget_usd / y_max
        out.append(
            f'<line class="budget" x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="#D55E00" stroke-dasharray="6 4"/>'
        )
        out.append(
            _text(
                width - right - 4,
                y - 6,
                f"daily budget {_fmt_usd(budget_usd)}",
                anchor="end",
                size=11,
                fill="#D55E00",
            )
        )
    elif budget_usd:
        out.append(
            _text(
                width - right - 4,
                top + 4,
                f"daily budget {_fmt_usd(budget_usd)} (above this scale)",
                anchor="end",
                size=11,
                fill="#D55E00",
            )
        )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="{_MUTED}"/>'
    )
    out.append("</svg>")
    return "".join(out)
