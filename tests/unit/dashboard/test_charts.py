"""The dashboard's SVG charts: scale, series, totals and escaping."""

from __future__ import annotations

import re
from datetime import date

from gateway.dashboard.charts import Series, daily_series, every_day, nice_ceiling, stacked_bars

DAYS = every_day(date(2026, 11, 1), date(2026, 11, 3))


def test_nice_ceiling_rounds_up_to_1_2_2_5_or_5_times_a_power_of_ten() -> None:
    assert [nice_ceiling(v) for v in (0, 0.3, 1, 1.1, 2.2, 3, 7, 0.04, 1234)] == [
        1.0, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 0.05, 2000.0
    ]  # fmt: skip


def test_daily_series_puts_each_row_on_its_day_and_fills_gaps_with_zero() -> None:
    rows = [(date(2026, 11, 1), "a", 2.0), (date(2026, 11, 3), "a", 1.0), (date(2026, 11, 3), "b", 4.0)]
    series = daily_series(rows, DAYS, day_of=lambda r: r[0], label_of=lambda r: r[1], value_of=lambda r: r[2])
    assert series == [Series("a", [2.0, 0.0, 1.0]), Series("b", [0.0, 0.0, 4.0])]


def test_a_chart_states_its_total_and_draws_one_bar_segment_per_nonzero_value() -> None:
    svg = str(
        stacked_bars(
            chart_id="c",
            title="Credits by day",
            days=DAYS,
            series=[Series("a", [0.4, 0.0, 0.8]), Series("b", [0.0, 0.0, 0.4])],
            fmt=lambda v: f"{v:.3f}",
            unit="credits",
        )
    )
    assert '<strong class="chart-total">1.600</strong>' in svg
    assert len(re.findall(r"<rect x=", svg)) == 3
    assert "the busiest day was 2026-11-03 with 1.200 credits" in svg
    assert 'role="img"' in svg
    assert 'aria-labelledby="c-t c-d"' in svg


def test_count_charts_have_whole_number_ticks() -> None:
    svg = str(
        stacked_bars(
            chart_id="i", title="Images", days=DAYS, series=[Series("a", [1, 0, 0])], fmt=str, unit="images",
            integer=True,
        )
    )  # fmt: skip
    ticks = re.findall(r'class="tick">([^<]+)</text>', svg)[:5]
    assert ticks == ["0.0", "1.0", "2.0", "3.0", "4.0"]


def test_labels_and_titles_are_escaped() -> None:
    svg = str(
        stacked_bars(
            chart_id="x",
            title="<b>t</b>",
            days=DAYS,
            series=[Series('<script>alert("x")</script>', [1, 1, 1])],
            fmt=str,
            unit="u",
        )
    )
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert "<b>" not in svg
