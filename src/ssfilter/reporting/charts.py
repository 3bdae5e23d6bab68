"""The reports' inline SVG charts: line / scatter charts (ROC, PRO, filter scores), stacked bars, colour bar.

The charts are hand-written SVG rather than matplotlib or a JavaScript library: they need a few dozen
lines each (axes, a polyline, circles, bars), keep the package free of a plotting dependency, render
identically in every browser without network access, and stay crisp at any zoom. Every text that reaches
a chart (titles, labels, series names, tooltips) is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ssfilter.inference.visualize import COLORMAP_ANCHORS
from ssfilter.reporting.frame import escape

__all__ = [
    "ANOMALY_COLOUR",
    "KEPT_COLOUR",
    "NORMAL_COLOUR",
    "REMOVED_COLOUR",
    "PlotArea",
    "Series",
    "bar_chart",
    "colorbar",
    "fmt_tick",
    "line_chart",
    "nice_step",
    "padded_range",
    "ticks",
]

# The reports' palette. Heat-map colours come from ssfilter.inference.visualize instead, so report overlays
# and ``predict`` overlays mean the same thing.
KEPT_COLOUR = "#2b6cb0"
REMOVED_COLOUR = "#c53030"
NORMAL_COLOUR = "#2f855a"
ANOMALY_COLOUR = "#c05621"

_AXIS_COLOUR = "#4a5568"
_GRID_COLOUR = "#edf2f7"


@dataclass
class Series:
    """One data series of a chart: a line or points, optionally with per-point colours and tooltips.

    Attributes:
        name: Shown in the legend (lines) and as the line's tooltip.
        xs: X values; points with a non-finite coordinate are left out.
        ys: Y values.
        colour: CSS colour of the line or of every point.
        kind: ``"line"`` or ``"points"``.
        css_class: Optional class of the ``<polyline>`` / the points' ``<g>``.
        point_colours: One colour per point (points only).
        tooltips: One tooltip per point (points only).
        markers: ``"circle"`` or ``"diamond"`` per point (points only).
    """

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    kind: str = "line"
    css_class: str = ""
    point_colours: Sequence[str] | None = None
    tooltips: Sequence[str] | None = None
    markers: Sequence[str] | None = None


@dataclass(frozen=True)
class PlotArea:
    """The plot rectangle inside a chart's SVG and the data ranges it shows, in SVG pixel coordinates.

    Attributes:
        left: X of the plot's left edge.
        top: Y of the plot's top edge.
        width: Plot width.
        height: Plot height.
        x_range: Data values at the left and right edge.
        y_range: Data values at the bottom and top edge.
    """

    left: int
    top: int
    width: int
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    @classmethod
    def inside(
        cls,
        size: tuple[int, int],
        margins: tuple[int, int, int, int],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
    ) -> PlotArea:
        """The plot area of a ``size`` (width, height) chart with ``margins`` (left, right, top, bottom)."""
        left, right, top, bottom = margins
        return cls(left, top, size[0] - left - right, size[1] - top - bottom, x_range, y_range)

    @property
    def bottom(self) -> int:
        """Y of the plot's bottom edge (the x axis)."""
        return self.top + self.height

    def px(self, x: float) -> float:
        """The SVG x of data value ``x`` (the left edge for an empty range)."""
        x0, x1 = self.x_range
        return self.left + (x - x0) / (x1 - x0) * self.width if x1 > x0 else self.left

    def py(self, y: float) -> float:
        """The SVG y of data value ``y`` (SVG y grows downwards; the bottom edge for an empty range)."""
        y0, y1 = self.y_range
        return self.bottom - (y - y0) / (y1 - y0) * self.height if y1 > y0 else self.bottom


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (multiples of 1, 2 or 5 times a power of ten) within ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    values = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [round(t, 12) + 0.0 for t in values]  # + 0.0: no "-0"


def nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``raw`` (and at least 1): count ticks."""
    raw = max(raw, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def fmt_tick(v: float) -> str:
    """A tick label: three significant digits."""
    return f"{v:.3g}"


def padded_range(values: Sequence[float]) -> tuple[float, float]:
    """A plotting range around finite ``values`` with 5% padding (a unit range around a single value)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _chart_frame(css_class: str, title: str, size: tuple[int, int], area: PlotArea) -> list[str]:
    """Opening SVG elements of a chart: root, title, background, heading and the plot's frame."""
    width, height = size
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{escape(css_class)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="600">'
        f"{escape(title)}</text>",
        f'<rect x="{area.left}" y="{area.top}" width="{area.width}" height="{area.height}" fill="#fff" '
        'stroke="#a0aec0"/>',
    ]


def _x_ticks(area: PlotArea, values: Sequence[float], marks: bool) -> list[str]:
    """Labels (and with ``marks`` short tick lines) under the x axis at data values ``values``."""
    out = []
    for t in values:
        x = area.px(t)
        mark = (
            f'<line x1="{x:.1f}" y1="{area.bottom}" x2="{x:.1f}" y2="{area.bottom + 4}" '
            f'stroke="{_AXIS_COLOUR}"/>'
            if marks
            else ""
        )
        out.append(
            f'{mark}<text x="{x:.1f}" y="{area.bottom + 16}" text-anchor="middle" font-size="10">'
            f"{fmt_tick(t)}</text>"
        )
    return out


def _y_ticks(area: PlotArea, values: Sequence[float], labels: Sequence[str], grid: bool) -> list[str]:
    """Labels left of the y axis at data values ``values`` (with ``grid``: tick lines and grid lines)."""
    out = []
    for t, label in zip(values, labels, strict=True):
        y = area.py(t)
        lines = (
            f'<line x1="{area.left - 4}" y1="{y:.1f}" x2="{area.left}" y2="{y:.1f}" stroke="{_AXIS_COLOUR}"/>'
            f'<line x1="{area.left}" y1="{y:.1f}" x2="{area.left + area.width}" y2="{y:.1f}" '
            f'stroke="{_GRID_COLOUR}"/>'
            if grid
            else ""
        )
        out.append(
            f'{lines}<text x="{area.left - 6}" y="{y + 3:.1f}" text-anchor="end" font-size="10">'
            f"{label}</text>"
        )
    return out


def _axis_labels(area: PlotArea, chart_height: int, x_label: str, y_label: str) -> str:
    """The x-axis label centred under the plot and the rotated y-axis label centred beside it."""
    cx, cy = area.left + area.width / 2, area.top + area.height / 2
    return (
        f'<text x="{cx:.1f}" y="{chart_height - 8}" text-anchor="middle" font-size="11">'
        f"{escape(x_label)}</text>"
        f'<text x="12" y="{cy:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {cy:.1f})">{escape(y_label)}</text>'
    )


def _marker(cx: float, cy: float, shape: str, colour: str, tip: str) -> str:
    """One scatter point: a diamond or a circle centred at ``(cx, cy)`` holding its tooltip ``tip``."""
    if shape == "diamond":
        return (
            f'<path d="M{cx:.1f} {cy - 6:.1f}L{cx + 6:.1f} {cy:.1f}L{cx:.1f} {cy + 6:.1f}'
            f'L{cx - 6:.1f} {cy:.1f}Z" fill="{colour}" fill-opacity="0.85" stroke="#1a202c" '
            f'stroke-width="1">{tip}</path>'
        )
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}" fill-opacity="0.75">{tip}</circle>'


def _series_svg(area: PlotArea, s: Series) -> str:
    """A series as a polyline or as a group of markers; points with a non-finite coordinate are left out."""
    pts = [(x, y) for x, y in zip(s.xs, s.ys, strict=True)]
    cls = f' class="{escape(s.css_class)}"' if s.css_class else ""
    if s.kind == "line":
        coords = " ".join(f"{area.px(x):.2f},{area.py(y):.2f}" for x, y in pts if math.isfinite(x + y))
        return (
            f'<polyline{cls} fill="none" stroke="{s.colour}" stroke-width="2" points="{coords}">'
            f"<title>{escape(s.name)}</title></polyline>"
        )
    out = [f"<g{cls}>"]
    for i, (x, y) in enumerate(pts):
        if not math.isfinite(x + y):
            continue
        colour = s.point_colours[i] if s.point_colours else s.colour
        tip = f"<title>{escape(s.tooltips[i])}</title>" if s.tooltips else ""
        shape = s.markers[i] if s.markers else "circle"
        out.append(_marker(area.px(x), area.py(y), shape, colour, tip))
    out.append("</g>")
    return "".join(out)


def _line_legend(area: PlotArea, series: Sequence[Series]) -> list[str]:
    """A legend of the line series in the plot's lower right corner."""
    lines = [s for s in series if s.kind == "line"]
    right = area.left + area.width
    out = []
    for k, s in enumerate(lines):
        y = area.bottom - 10 - 14 * (len(lines) - 1 - k)
        out.append(
            f'<line x1="{right - 120}" y1="{y}" x2="{right - 100}" y2="{y}" stroke="{s.colour}" '
            f'stroke-width="2"/><text x="{right - 95}" y="{y + 4}" font-size="10">{escape(s.name)}</text>'
        )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_label: str,
    y_label: str,
    title: str,
    diagonal: bool = False,
    css_class: str = "chart",
    width: int = 380,
    height: int = 320,
) -> str:
    """A line / scatter chart as an inline SVG element with axes, ticks, labels and a legend.

    Args:
        series: The lines and point sets, drawn in order.
        x_range: X values at the plot's left and right edge.
        y_range: Y values at the plot's bottom and top edge.
        x_label: X-axis label.
        y_label: Y-axis label.
        title: Heading (and accessible name) of the chart.
        diagonal: Draw the dashed chance diagonal (ROC charts).
        css_class: Class of the ``<svg>`` element.
        width: Chart width in pixels.
        height: Chart height in pixels.
    """
    area = PlotArea.inside((width, height), (70, 14, 30, 48), x_range, y_range)
    out = _chart_frame(css_class, title, (width, height), area)
    out += _x_ticks(area, ticks(*x_range), marks=True)
    y_values = ticks(*y_range)
    out += _y_ticks(area, y_values, [fmt_tick(t) for t in y_values], grid=True)
    out.append(_axis_labels(area, height, x_label, y_label))
    if diagonal:
        (x0, x1), (y0, y1) = x_range, y_range
        out.append(
            f'<line x1="{area.px(x0):.1f}" y1="{area.py(y0):.1f}" '
            f'x2="{area.px(x1):.1f}" y2="{area.py(y1):.1f}" '
            'stroke="#a0aec0" stroke-dasharray="4 4"/>'
        )
    out += [_series_svg(area, s) for s in series]
    out += _line_legend(area, series)
    out.append("</svg>")
    return "".join(out)


def _stacked_bars(
    area: PlotArea, groups: Sequence[tuple[str, Sequence[float], str]], edges: Sequence[float]
) -> list[str]:
    """One rectangle per group and non-empty bin, the groups stacked bottom-up in order."""
    out = []
    for b in range(len(edges) - 1):
        base = 0.0
        left, right = area.px(edges[b]), area.px(edges[b + 1])
        for name, counts, colour in groups:
            c = counts[b]
            if c <= 0:
                continue
            h = c / area.y_range[1] * area.height
            out.append(
                f'<rect x="{left + 1:.1f}" y="{area.py(base + c):.1f}" '
                f'width="{max(right - left - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{escape(name)}: {c:g}</title></rect>'
            )
            base += c
    return out


def _vline(area: PlotArea, vline: tuple[float, str]) -> list[str]:
    """A dashed vertical line at data x ``vline[0]`` labelled ``vline[1]``, when inside the x range."""
    x0, x1 = area.x_range
    if not x0 <= vline[0] <= x1:
        return []
    x = area.px(vline[0])
    return [
        f'<line x1="{x:.1f}" y1="{area.top}" x2="{x:.1f}" y2="{area.bottom}" stroke="#2d3748" '
        'stroke-dasharray="5 3"/>'
        f'<text x="{x + 3:.1f}" y="{area.top - 4}" font-size="10">{escape(vline[1])}</text>'
    ]


def _bar_legend(area: PlotArea, groups: Sequence[tuple[str, Sequence[float], str]]) -> list[str]:
    """A legend of the bar groups (colour swatch and name) in the plot's upper right corner."""
    right = area.left + area.width
    return [
        f'<rect x="{right - 100}" y="{area.top + 6 + 14 * k}" width="10" height="10" fill="{colour}"/>'
        f'<text x="{right - 86}" y="{area.top + 15 + 14 * k}" font-size="10">{escape(name)}</text>'
        for k, (name, _, colour) in enumerate(groups)
    ]


def bar_chart(
    groups: Sequence[tuple[str, Sequence[float], str]],
    edges: Sequence[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    vline: tuple[float, str] | None = None,
    x_ticks: Sequence[float] | None = None,
    css_class: str = "histogram",
    width: int = 380,
    height: int = 300,
) -> str:
    """A stacked histogram as an inline SVG element with count ticks, labels and a legend.

    Args:
        groups: ``(name, counts per bin, colour)`` per group, stacked bottom-up in this order.
        edges: The bin edges (one more than bins).
        title: Heading (and accessible name) of the chart.
        x_label: X-axis label.
        y_label: Y-axis label.
        vline: ``(x, label)`` of a dashed vertical marker line (e.g. a decision threshold).
        x_ticks: X tick values (default: about five round values).
        css_class: Class of the ``<svg>`` element.
        width: Chart width in pixels.
        height: Chart height in pixels.
    """
    top_count = max(max((sum(g[1][b] for g in groups) for b in range(len(edges) - 1)), default=0), 1)
    step = nice_step(top_count / 4)
    ymax = step * math.ceil(top_count * 1.3 / step)  # headroom for the legend
    area = PlotArea.inside((width, height), (50, 14, 40, 48), (edges[0], edges[-1]), (0.0, ymax))
    out = _chart_frame(css_class, title, (width, height), area)
    out += _stacked_bars(area, groups, edges)
    counts = [k * step for k in range(round(ymax / step) + 1)]
    out += _y_ticks(area, counts, [f"{c:g}" for c in counts], grid=False)
    out += _x_ticks(area, x_ticks if x_ticks is not None else ticks(edges[0], edges[-1]), marks=False)
    if vline is not None:
        out += _vline(area, vline)
    out.append(_axis_labels(area, height, x_label, y_label))
    out += _bar_legend(area, groups)
    out.append("</svg>")
    return "".join(out)


def colorbar(lo: float, hi: float, threshold: float | None = None, width: int = 320, height: int = 52) -> str:
    """The heat-map colour scale from raw value ``lo`` to ``hi``, with ``threshold`` marked when inside it.

    Args:
        lo: Raw value of the coolest colour.
        hi: Raw value of the hottest colour.
        threshold: A raw value to mark (the calibrated pixel threshold), or ``None``.
        width: Bar width in pixels.
        height: Bar height in pixels.
    """
    stops = "".join(
        f'<stop offset="{v:.2f}" stop-color="rgb({r},{g},{b})"/>' for v, (r, g, b) in COLORMAP_ANCHORS
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="colorbar" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="heat-map colour scale">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<defs><linearGradient id="heat" x1="0" x2="1" y1="0" y2="0">{stops}</linearGradient></defs>',
        f'<rect x="10" y="4" width="{width - 20}" height="16" fill="url(#heat)" stroke="#a0aec0"/>',
        f'<text x="10" y="34" font-size="10">{fmt_tick(lo)}</text>',
        f'<text x="{width - 10}" y="34" font-size="10" text-anchor="end">{fmt_tick(hi)}</text>',
    ]
    if threshold is not None and lo <= threshold <= hi and hi > lo:
        x = 10 + (width - 20) * (threshold - lo) / (hi - lo)
        out.append(
            f'<line class="threshold" x1="{x:.1f}" y1="1" x2="{x:.1f}" y2="23" stroke="#000" '
            'stroke-width="2"/>'
            f'<text x="{min(max(x, 70.0), width - 70.0):.1f}" y="47" font-size="10" text-anchor="middle">'
            f"pixel threshold {fmt_tick(threshold)}</text>"
        )
    out.append("</svg>")
    return "".join(out)
