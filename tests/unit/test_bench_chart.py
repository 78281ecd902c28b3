"""The benchmarks' SVG line chart: a well-formed document whose lines pass through the measured points."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bench.svg import Series, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_each_series_is_a_line_through_its_points_in_order_with_a_legend_entry() -> None:
    chart = line_chart(
        "latency",
        "offered requests/s",
        "ms",
        [
            Series("gateway p50", [(50, 2.0), (100, 3.0), (200, 40.0)], "#d62728"),
            Series("engine", [(50, 0.5)], "#1f77b4"),
        ],
        log_y=True,
    )
    root = ET.fromstring(chart)
    lines = root.findall(f"{SVG}polyline")
    assert [len(line.attrib["points"].split()) for line in lines] == [3, 1]
    ys = [float(point.split(",")[1]) for point in lines[0].attrib["points"].split()]
    assert ys[0] > ys[1] > ys[2]  # higher latency is drawn higher (smaller y)
    labels = [text.text for text in root.findall(f"{SVG}text")]
    assert {"gateway p50", "engine"} <= set(labels)


def test_a_log_axis_spans_whole_powers_of_ten_around_the_data() -> None:
    root = ET.fromstring(line_chart("t", "x", "y", [Series("s", [(1, 0.3), (2, 70.0)], "#000")], log_y=True))
    labels = [text.text for text in root.findall(f"{SVG}text")]
    assert {"0.1", "100"} <= set(labels)


def test_nothing_to_draw_is_an_error_not_an_empty_chart() -> None:
    with pytest.raises(ValueError, match="nothing to draw"):
        line_chart("t", "x", "y", [Series("s", [], "#000")])
