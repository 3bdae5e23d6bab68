from __future__ import annotations

import math
import re

import pytest

from ssfilter.reporting.charts import (
    PlotArea,
    Series,
    bar_chart,
    colorbar,
    line_chart,
    nice_step,
    padded_range,
    ticks,
)

NASTY = "<b>\"x\" & 'y'</b>"


def test_ticks_are_round_values_inside_the_range() -> None:
    assert ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ticks(0.0, 0.3) == [0.0, 0.1, 0.2, 0.3]
    assert ticks(-3.0, 7.0) == [-2.5, 0.0, 2.5, 5.0]
    assert ticks(2.0, 2.0) == [2.0]
    assert all(str(t) != "-0.0" for t in ticks(-1e-13, 1.0))


@pytest.mark.parametrize(("raw", "step"), [(0.3, 1), (1, 1), (3, 5), (12, 20), (60, 100), (100, 100)])
def test_nice_step(raw: float, step: float) -> None:
    assert nice_step(raw) == step


def test_padded_range() -> None:
    assert padded_range([1.0, 3.0]) == pytest.approx((0.9, 3.1))
    assert padded_range([2.0]) == pytest.approx((1.8, 2.2))
    assert padded_range([0.0]) == (-1.0, 1.0)
    assert padded_range([]) == (0.0, 1.0)
    assert padded_range([math.nan, math.inf, 5.0, 15.0]) == pytest.approx((4.5, 15.5))


def test_plot_area_maps_data_to_svg_pixels() -> None:
    area = PlotArea.inside((380, 320), (70, 14, 30, 48), (0.0, 2.0), (-1.0, 1.0))
    assert (area.left, area.top, area.width, area.height, area.bottom) == (70, 30, 296, 242, 272)
    assert area.px(0.0) == 70 and area.px(2.0) == 366 and area.px(1.0) == 218
    assert area.py(-1.0) == 272 and area.py(1.0) == 30 and area.py(0.0) == 151  # SVG y grows downwards
    flat = PlotArea.inside((100, 100), (10, 10, 10, 10), (3.0, 3.0), (5.0, 5.0))
    assert flat.px(3.0) == 10 and flat.py(5.0) == 90


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.split(r"[ ,]", text) if v]


def test_line_chart_draws_finite_points_and_escapes_text() -> None:
    svg = line_chart(
        [
            Series(NASTY, [0.0, 0.5, math.nan, 1.0], [0.0, 0.5, 0.7, 1.0], "#123456", css_class="curve a"),
            Series(
                "pts",
                [0.25, 0.75, 0.5],
                [0.25, 0.75, math.inf],
                "#000",
                "points",
                "points",
                ["#111", "#222", "#333"],
                [NASTY, "b", "c"],
                ["circle", "diamond", "circle"],
            ),
        ],
        x_range=(0, 1),
        y_range=(0, 1),
        x_label=NASTY,
        y_label="y",
        title=NASTY,
        diagonal=True,
    )
    assert "<b>" not in svg and "&lt;b&gt;&quot;x&quot; &amp; &#x27;y&#x27;&lt;/b&gt;" in svg
    points = re.findall(r'<polyline class="curve a"[^>]*points="([^"]*)"', svg)[0]
    coords = _numbers(points)
    # (0, 0), (0.5, 0.5), (1, 1) in a 296 x 242 plot at (70, 30); the NaN point is left out
    assert coords == pytest.approx([70, 272, 218, 151, 366, 30])
    assert re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="4" fill="#111"', svg) == [("144.0", "211.5")]
    assert svg.count("<circle") == 1 and svg.count("<path") == 1  # the infinite point is left out
    assert 'fill="#222"' in svg and 'fill="#333"' not in svg
    assert 'stroke-dasharray="4 4"' in svg  # the chance diagonal
    assert svg.startswith("<svg") and svg.endswith("</svg>")


def test_bar_chart_stacks_counts_to_scale() -> None:
    svg = bar_chart(
        [("a", [2, 0, 4], "#aaa"), ("b", [1, 3, 0], "#bbb")],
        [0.0, 1.0, 2.0, 3.0],
        title="t",
        x_label="x",
        y_label="n",
        vline=(1.5, "cut"),
    )
    rects = re.findall(
        r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="(#\w+)"><title>', svg
    )
    assert [r[4] for r in rects] == ["#aaa", "#bbb", "#bbb", "#aaa"]  # zero counts draw nothing
    titles = re.findall(r"<title>(\w): (\d+)</title>", svg)
    assert titles == [("a", "2"), ("b", "1"), ("b", "3"), ("a", "4")]
    # the tallest stack (4) times 1.3 headroom rounded up to the count step 1: 6 counts over 212 pixels
    heights = [float(r[3]) for r in rects]
    assert heights == pytest.approx([2 * 212 / 6, 212 / 6, 3 * 212 / 6, 4 * 212 / 6], abs=0.05)
    first, second = rects[0], rects[1]
    assert float(second[1]) + float(second[3]) == pytest.approx(float(first[1]), abs=0.1)  # b on top of a
    assert ">cut</text>" in svg
    outside = bar_chart(
        [("a", [1], "#aaa")], [0.0, 1.0], title="t", x_label="x", y_label="n", vline=(5, "cut")
    )
    assert "cut" not in outside


def test_colorbar_marks_the_threshold_only_inside_the_scale() -> None:
    svg = colorbar(2.0, 6.0, 3.0)
    x = float(re.findall(r'class="threshold" x1="([\d.]+)"', svg)[0])
    assert x == pytest.approx(10 + 300 * 0.25, abs=0.05)
    assert "pixel threshold 3</text>" in svg
    assert 'class="threshold"' not in colorbar(2.0, 6.0, 7.0)
    assert 'class="threshold"' not in colorbar(2.0, 2.0, 2.0)
    assert 'class="threshold"' not in colorbar(0.0, 1.0)
