"""Stacked bar charts drawn as inline SVG, by our own code (no script, no third-party library).

A chart is a `<figure>`: the SVG (with a title and description for screen readers and a tooltip
per bar), a caption with the total, and a legend. The numbers are also in a table next to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TypeVar

from markupsafe import Markup, escape

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito, darkened).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#7a6a00", "#56b4e9", "#8c4f00", "#444444")

_WIDTH, _HEIGHT = 720, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 8, 12, 30


@dataclass(frozen=True)
class Series:
    """One stacked layer: a label and a value per day."""

    label: str
    values: Sequence[float]


R = TypeVar("R")


def every_day(start: date, end: date) -> list[date]:
    """Each day from `start` to `end` inclusive: days without usage still get a (zero) bar."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def daily_series(
    rows: Iterable[R],
    days: Sequence[date],
    *,
    day_of: Callable[[R], date | None],
    label_of: Callable[[R], Hashable],
    value_of: Callable[[R], float],
) -> list[Series]:
    """Rows (one per day and group) as one series per group, in label order."""
    index = {d: i for i, d in enumerate(days)}
    layers: dict[Hashable, list[float]] = {}
    for row in rows:
        day = day_of(row)
        if day not in index:
            continue
        values = layers.setdefault(label_of(row), [0.0] * len(days))
        values[index[day]] += value_of(row)
    return [Series(str(label), values) for label, values in sorted(layers.items(), key=lambda kv: str(kv[0]))]


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-12):
            return step * power
    return 10.0 * power


def stacked_bars(
    *,
    chart_id: str,
    title: str,
    days: Sequence[date],
    series: Sequence[Series],
    fmt: Callable[[float], str],
    unit: str,
    integer: bool = False,
) -> Markup:
    """A stacked bar chart, one bar per day, one colour per series. `fmt` formats values for people;
    `integer` says the values are counts."""
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    grand_total = sum(totals)
    # Four grid steps of a round size; counts get whole-number steps so no tick reads "0.25 images".
    step = nice_ceiling(max(totals, default=0.0) / 4)
    top = 4 * (max(1.0, math.ceil(step)) if integer else step)
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.78)

    def y_of(value: float) -> float:
        return _TOP + plot_h - plot_h * value / top

    parts: list[str] = []
    for i in range(5):  # horizontal grid lines with their values
        value = top * i / 4
        y = y_of(value)
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(fmt(value))}</text>'
        )
    label_every = max(1, math.ceil(len(days) / 8))
    for d_index, day in enumerate(days):
        x = _LEFT + slot * d_index + (slot - bar_w) / 2
        base = 0.0
        for s_index, s in enumerate(series):
            value = s.values[d_index]
            if value <= 0:
                continue
            y_top, y_bottom = y_of(base + value), y_of(base)
            tip = f"{day.isoformat()} · {s.label}: {fmt(value)} {unit}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" height="{max(0.5, y_bottom - y_top):.1f}"'
                f' fill="{PALETTE[s_index % len(PALETTE)]}"><title>{escape(tip)}</title></rect>'
            )
            base += value
        if d_index % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{_HEIGHT - 8}" text-anchor="middle" class="tick">'
                f"{day.strftime('%m-%d')}</text>"
            )
    busiest = max(range(len(days)), key=lambda i: totals[i]) if days and grand_total > 0 else None
    description = f"{title}: {fmt(grand_total)} {unit} in total from {days[0]} to {days[-1]}" if days else title
    if busiest is not None:
        description += f"; the busiest day was {days[busiest]} with {fmt(totals[busiest])} {unit}"
    legend = "".join(
        f'<li><svg width="12" height="12" aria-hidden="true" focusable="false"><rect width="12" height="12"'
        f' fill="{PALETTE[i % len(PALETTE)]}"/></svg> {escape(s.label)}'
        f' <span class="legend-total">{escape(fmt(sum(s.values)))}</span></li>'
        for i, s in enumerate(series)
    )
    return Markup(  # noqa: S704 - every interpolated text above is escaped; the rest is our own markup
        f'<figure class="chart" id="{escape(chart_id)}">'
        f'<figcaption>{escape(title)}: <strong class="chart-total">'
        f"{escape(fmt(grand_total))}</strong> {escape(unit)}</figcaption>"
        f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d"'
        f' preserveAspectRatio="xMidYMid meet">'
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>'
        f'<desc id="{escape(chart_id)}-d">{escape(description)}</desc>'
        f"{''.join(parts)}</svg>"
        f'<ul class="legend">{legend or "<li>No usage in this period.</li>"}</ul></figure>'
    )
