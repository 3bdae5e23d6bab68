"""Self-contained HTML reports for ``evaluate``, ``filter``, ``benchmark`` and the demo.

A report is one ``report.html`` (inline CSS, charts as inline SVG, no JavaScript) plus the PNG images it
shows, written into a ``report_assets/`` folder beside it and referenced by relative links only, so the
folder can be zipped, copied or opened from a file share. Asset names are generated (``eval-0003.png``),
never derived from user file names; every user-provided string (file names, paths, defect types) is
escaped with :func:`html.escape` before it reaches the page. Every file is written atomically.

The charts are hand-written SVG rather than matplotlib or a JavaScript library: they need a few dozen
lines each (axes, a polyline, circles, bars), keep the package free of a plotting dependency, render
identically in every browser without network access, and stay crisp at any zoom.

Rendering here needs only numpy and Pillow; collecting the data from a model (heat-maps of selected test
images) lives in :mod:`ssfilter.reporting.examples`.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ssfilter.evaluation.metrics import METRIC_KEYS
from ssfilter.inference.visualize import COLORMAP_ANCHORS, colorize
from ssfilter.io import atomic_path, atomic_write_text

__all__ = [
    "ASSETS_DIR",
    "REPORT_FILE",
    "EvaluateReport",
    "ExampleGroup",
    "ExampleImage",
    "HeatmapScale",
    "ReportAssets",
    "benchmark_section",
    "evaluate_section",
    "filter_section",
    "render_page",
    "write_benchmark_report",
    "write_evaluate_report",
    "write_filter_report",
    "write_report",
]

REPORT_FILE = "report.html"
ASSETS_DIR = "report_assets"

# Heat-map colours come from ssfilter.inference.visualize, so report overlays and ``predict`` overlays
# mean the same thing (blue: normal, switch to yellow at the pixel threshold, red: most anomalous).
_CONTOUR_RGB = (255, 0, 255)  # ground-truth outline: magenta is absent from the heat-map colours
_KEPT_COLOUR = "#2b6cb0"
_REMOVED_COLOUR = "#c53030"
_NORMAL_COLOUR = "#2f855a"
_ANOMALY_COLOUR = "#c05621"

_METRIC_HELP = {
    "I-AUROC": "image-level area under the ROC curve",
    "I-AP": "image-level average precision",
    "I-F1max": "image-level best F1 over all thresholds",
    "P-AUROC": "pixel-level area under the ROC curve",
    "P-AP": "pixel-level average precision",
    "P-F1max": "pixel-level best F1 over all thresholds",
    "P-AUPRO": "area under the per-region-overlap curve up to FPR 0.3 (exact, MVTec AD definition)",
    "P-AUPRO-dinomaly": "AUPRO as computed by Dinomaly (200 thresholds, FPR re-normalised)",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a202c;
  background:#f7fafc}
header{background:#1a365d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:1.5em} header p{margin:4px 0 0;opacity:.85}
main{padding:8px 28px 40px;max-width:1250px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:6px 20px 18px;margin:18px 0}
h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px} h3{margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #e2e8f0;padding:4px 10px;text-align:left}
th{background:#edf2f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.undefined{color:#718096;font-style:italic}
.charts{display:flex;flex-wrap:wrap;gap:18px} .charts figure{margin:0}
figcaption{font-size:.85em;color:#4a5568;max-width:380px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.tile{border:1px solid #e2e8f0;border-radius:6px;padding:6px;background:#fff;font-size:.82em;max-width:340px}
.tile img{display:block;width:320px;height:auto;image-rendering:auto}
.thumb img{width:112px;height:112px;object-fit:contain;display:block;background:#edf2f7}
.thumb{max-width:150px}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.big{font-size:1.25em;font-weight:600}
.note{color:#4a5568;font-size:.9em}
.warn{background:#fffbeb;border:1px solid #f6ad55;padding:8px 12px;border-radius:6px}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:middle}
nav a{margin-right:16px}
"""


def _e(value: object) -> str:
    """Escape any value for HTML text and quoted attributes."""
    return html.escape(str(value), quote=True)


# -- assets -------------------------------------------------------------------------------------------


class ReportAssets:
    """PNG files of one report, in ``report_assets/`` beside ``report.html``, under generated names.

    Args:
        report_dir: Folder of ``report.html``.
        prefix: Name prefix of this section's files (letters, digits, ``-``), e.g. ``"eval"``.
    """

    def __init__(self, report_dir: str | os.PathLike[str], prefix: str) -> None:
        if not prefix.replace("-", "").isalnum():
            raise ValueError(f"asset prefix must be alphanumeric, got {prefix!r}")
        self.folder = Path(report_dir) / ASSETS_DIR
        self.prefix = prefix
        self.count = 0

    def add_png(self, pixels: np.ndarray | Image.Image) -> str:
        """Write an image atomically and return its link relative to ``report.html``.

        Args:
            pixels: ``uint8`` RGB array ``[H, W, 3]`` (or grey ``[H, W]``) or a Pillow image.
        """
        image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
        name = f"{self.prefix}-{self.count:04d}.png"
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name) as tmp:
            image.save(tmp, format="PNG")
        return f"{ASSETS_DIR}/{name}"

    def remove_stale(self) -> None:
        """Delete this prefix's images left over from an earlier, larger report in the same folder.

        Call after the new ``report.html`` is written; only generated names (``<prefix>-NNNN.png``) with a
        number at or above this report's count are removed.
        """
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f"{self.prefix}-*.png"):
            number = path.stem[len(self.prefix) + 1 :]
            if len(number) == 4 and number.isdigit() and int(number) >= self.count:
                path.unlink(missing_ok=True)


# -- SVG charts ---------------------------------------------------------------------------------------


@dataclass
class _Series:
    """One data series of a chart: a line or points, optionally with per-point colours and tooltips."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    kind: str = "line"  # "line" or "points"
    css_class: str = ""
    point_colours: Sequence[str] | None = None
    tooltips: Sequence[str] | None = None
    markers: Sequence[str] | None = None  # "circle" or "diamond" per point


def _svg_frame(
    css_class: str, title: str, width: int, height: int, plot: tuple[float, float, float, float]
) -> list[str]:
    """Opening SVG elements of a chart: root, title, background, heading and plot frame ``(x, y, w, h)``."""
    left, top, pw, ph = plot
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{_e(css_class)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="600">'
        f"{_e(title)}</text>",
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#a0aec0"/>',
    ]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (multiples of 1, 2 or 5 times a power of ten) within ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / (n - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [round(t, 12) + 0.0 for t in ticks]  # + 0.0: no "-0"


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``raw`` (and at least 1): count ticks."""
    raw = max(raw, 1.0)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fmt_tick(v: float) -> str:
    return f"{v:.3g}"


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
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


def _svg_chart(
    series: Sequence[_Series],
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
    """A line / scatter chart as an inline SVG element with axes, ticks, labels and a legend."""
    left, right, top, bottom = 70, 14, 30, 48
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = x_range
    y0, y1 = y_range
    sx = pw / (x1 - x0) if x1 > x0 else 1.0
    sy = ph / (y1 - y0) if y1 > y0 else 1.0

    def px(x: float) -> float:
        return left + (x - x0) * sx

    def py(y: float) -> float:
        return top + ph - (y - y0) * sy

    out = _svg_frame(css_class, title, width, height, (left, top, pw, ph))
    for t in _ticks(x0, x1):
        out.append(
            f'<line x1="{px(t):.1f}" y1="{top + ph}" x2="{px(t):.1f}" y2="{top + ph + 4}" stroke="#4a5568"/>'
            f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="10">'
            f"{_fmt_tick(t)}</text>"
        )
    for t in _ticks(y0, y1):
        out.append(
            f'<line x1="{left - 4}" y1="{py(t):.1f}" x2="{left}" y2="{py(t):.1f}" stroke="#4a5568"/>'
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#edf2f7"/>'
            f'<text x="{left - 6}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">{_fmt_tick(t)}</text>'
        )
    out.append(_axis_labels(left + pw / 2, height - 8, top + ph / 2, x_label, y_label))
    if diagonal:
        out.append(
            f'<line x1="{px(x0):.1f}" y1="{py(y0):.1f}" x2="{px(x1):.1f}" y2="{py(y1):.1f}" '
            'stroke="#a0aec0" stroke-dasharray="4 4"/>'
        )
    for s in series:
        pts = [(x, y) for x, y in zip(s.xs, s.ys, strict=True)]
        cls = f' class="{_e(s.css_class)}"' if s.css_class else ""
        if s.kind == "line":
            coords = " ".join(f"{px(x):.2f},{py(y):.2f}" for x, y in pts if math.isfinite(x + y))
            out.append(
                f'<polyline{cls} fill="none" stroke="{s.colour}" stroke-width="2" points="{coords}">'
                f"<title>{_e(s.name)}</title></polyline>"
            )
            continue
        out.append(f"<g{cls}>")
        for i, (x, y) in enumerate(pts):
            if not math.isfinite(x + y):
                continue
            colour = s.point_colours[i] if s.point_colours else s.colour
            tip = f"<title>{_e(s.tooltips[i])}</title>" if s.tooltips else ""
            marker = s.markers[i] if s.markers else "circle"
            cx, cy = px(x), py(y)
            if marker == "diamond":
                out.append(
                    f'<path d="M{cx:.1f} {cy - 6:.1f}L{cx + 6:.1f} {cy:.1f}L{cx:.1f} {cy + 6:.1f}'
                    f'L{cx - 6:.1f} {cy:.1f}Z" fill="{colour}" fill-opacity="0.85" stroke="#1a202c" '
                    f'stroke-width="1">{tip}</path>'
                )
            else:
                out.append(
                    f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}" '
                    f'fill-opacity="0.75">{tip}</circle>'
                )
        out.append("</g>")
    legend = [s for s in series if s.kind == "line"]
    for k, s in enumerate(legend):
        y = top + ph - 10 - 14 * (len(legend) - 1 - k)
        out.append(
            f'<line x1="{left + pw - 120}" y1="{y}" x2="{left + pw - 100}" y2="{y}" stroke="{s.colour}" '
            f'stroke-width="2"/><text x="{left + pw - 95}" y="{y + 4}" font-size="10">{_e(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _axis_labels(cx: float, y: float, cy: float, x_label: str, y_label: str) -> str:
    """The x-axis label centred at ``(cx, y)`` and the rotated y-axis label centred at height ``cy``."""
    return (
        f'<text x="{cx:.1f}" y="{y}" text-anchor="middle" font-size="11">{_e(x_label)}</text>'
        f'<text x="12" y="{cy:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {cy:.1f})">{_e(y_label)}</text>'
    )


def _svg_bars(
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
    """A stacked histogram: ``groups`` are ``(name, counts per bin, colour)``; ``edges`` the bin edges."""
    left, right, top, bottom = 50, 14, 40, 48
    pw, ph = width - left - right, height - top - bottom
    nb = len(edges) - 1
    totals = [sum(g[1][b] for g in groups) for b in range(nb)]
    step = _nice_step(max(max(totals, default=0), 1) / 4)
    ymax = step * math.ceil(max(max(totals, default=0), 1) * 1.3 / step)  # headroom for the legend
    x0, x1 = edges[0], edges[-1]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw if x1 > x0 else left

    out = _svg_frame(css_class, title, width, height, (left, top, pw, ph))
    for b in range(nb):
        base = 0.0
        for name, counts, colour in groups:
            c = counts[b]
            if c <= 0:
                continue
            h = c / ymax * ph
            y = top + ph - (base + c) / ymax * ph
            out.append(
                f'<rect x="{px(edges[b]) + 1:.1f}" y="{y:.1f}" '
                f'width="{max(px(edges[b + 1]) - px(edges[b]) - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colour}"><title>{_e(name)}: {c:g}</title></rect>'
            )
            base += c
    for k in range(round(ymax / step) + 1):
        y = top + ph - k * step / ymax * ph
        out.append(
            f'<text x="{left - 6}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{k * step:g}</text>'
        )
    for t in x_ticks if x_ticks is not None else _ticks(x0, x1):
        out.append(
            f'<text x="{px(t):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="10">'
            f"{_fmt_tick(t)}</text>"
        )
    if vline is not None and x0 <= vline[0] <= x1:
        out.append(
            f'<line x1="{px(vline[0]):.1f}" y1="{top}" x2="{px(vline[0]):.1f}" y2="{top + ph}" '
            'stroke="#2d3748" stroke-dasharray="5 3"/>'
            f'<text x="{px(vline[0]) + 3:.1f}" y="{top - 4}" font-size="10">{_e(vline[1])}</text>'
        )
    out.append(_axis_labels(left + pw / 2, height - 8, top + ph / 2, x_label, y_label))
    for k, (name, _, colour) in enumerate(groups):
        out.append(
            f'<rect x="{left + pw - 100}" y="{top + 6 + 14 * k}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{left + pw - 86}" y="{top + 15 + 14 * k}" font-size="10">{_e(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _svg_colorbar(scale: HeatmapScale, width: int = 320, height: int = 52) -> str:
    """The heat-map colour scale with its raw-value ends (and the calibrated pixel threshold inside it)."""
    stops = "".join(
        f'<stop offset="{v:.2f}" stop-color="rgb({r},{g},{b})"/>' for v, (r, g, b) in COLORMAP_ANCHORS
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="colorbar" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="heat-map colour scale">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<defs><linearGradient id="heat" x1="0" x2="1" y1="0" y2="0">{stops}</linearGradient></defs>',
        f'<rect x="10" y="4" width="{width - 20}" height="16" fill="url(#heat)" stroke="#a0aec0"/>',
        f'<text x="10" y="34" font-size="10">{_fmt_tick(scale.lo)}</text>',
        f'<text x="{width - 10}" y="34" font-size="10" text-anchor="end">{_fmt_tick(scale.hi)}</text>',
    ]
    t = scale.threshold
    if t is not None and scale.lo <= t <= scale.hi and scale.hi > scale.lo:
        x = 10 + (width - 20) * float(scale.normalize(np.array([t]))[0])
        out.append(
            f'<line class="threshold" x1="{x:.1f}" y1="1" x2="{x:.1f}" y2="23" stroke="#000" '
            'stroke-width="2"/>'
            f'<text x="{min(max(x, 70.0), width - 70.0):.1f}" y="47" font-size="10" text-anchor="middle">'
            "pixel threshold "
            f"{_fmt_tick(t)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


# -- tables and page ----------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, or the HTML for "undefined"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="undefined">undefined</span>'
    return f"{100 * value:.{digits}f}%"


def _num(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    """An HTML table; ``header`` is escaped, row cells are HTML already (callers escape user strings)."""
    cls = f' class="{_e(css_class)}"' if css_class else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _short_name(path: str, parts: int = 3) -> str:
    """The last ``parts`` components of a path (enough to tell ``test/scratch/001.png`` apart)."""
    pieces = Path(path).parts
    return "/".join(pieces[-parts:]) if pieces else path


def render_page(title: str, sections: Sequence[str], subtitle: str | None = None) -> str:
    """A complete HTML document around already-rendered sections.

    Args:
        title: Page title (escaped).
        sections: HTML of each ``<section>``.
        subtitle: Optional line under the title (escaped).
    """
    sub = f"<p>{_e(subtitle)}</p>" if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>{sub}</header><main>" + "\n".join(sections) + "</main></body></html>\n"
    )


def write_report(
    out_dir: str | os.PathLike[str], title: str, sections: Sequence[str], subtitle: str | None = None
) -> Path:
    """Write ``out_dir/report.html`` atomically around rendered sections; returns its path.

    Args:
        out_dir: Report folder (its ``report_assets/`` must already hold the sections' images).
        title: Page title.
        sections: HTML of each section.
        subtitle: Optional line under the title.
    """
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, render_page(title, sections, subtitle))
    return path


# -- evaluate -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeatmapScale:
    """One fixed raw-value range mapped linearly to the heat-map colours for every image of a report.

    Attributes:
        lo: Raw map value drawn with the coolest colour.
        hi: Raw map value drawn with the hottest colour.
        source: Where the range comes from, in words.
        threshold: The run's calibrated pixel threshold, marked on the colour bar when known (display
            only: ``predict`` masks the pixels at or above it).
    """

    lo: float
    hi: float
    source: str = ""
    threshold: float | None = None

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw values to [0, 1] on this scale (clipped); a degenerate range gives zeros.

        Args:
            raw: Raw map values, any shape.
        """
        r = np.asarray(raw, dtype=np.float32)
        if not self.hi > self.lo:
            return np.zeros_like(r)
        return np.clip((r - self.lo) / (self.hi - self.lo), 0.0, 1.0).astype(np.float32)


@dataclass
class ExampleImage:
    """One test image shown with its heat-map.

    Attributes:
        path: Image file.
        score: Image anomaly score.
        label: 0 normal, 1 anomalous.
        defect_type: Defect folder (``"good"`` for normal images).
        image: The model's view of the image, ``uint8 [S, S, 3]`` (S = evaluation size).
        anomaly_map: Raw anomaly map ``[S, S]``.
        mask: Ground-truth mask ``bool [S, S]``, or ``None`` when there is none.
    """

    path: str
    score: float
    label: int
    defect_type: str
    image: np.ndarray
    anomaly_map: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class ExampleGroup:
    """A titled row of example images (e.g. "highest-scored normal images")."""

    title: str
    description: str
    images: list[ExampleImage] = field(default_factory=list)


@dataclass
class EvaluateReport:
    """Everything the evaluate section shows.

    Attributes:
        metrics: Metric name to fraction, or ``None`` when undefined.
        n_test: Number of test images.
        curves: ``image_roc`` (``fpr``, ``tpr``), ``pixel_roc`` and ``pro`` (``fpr``, ``pro``) point lists.
        scores: Image scores of all test images (for the score histogram).
        labels: Their 0/1 labels.
        groups: Example images with heat-maps.
        scale: The one heat-map scale used for every example.
        context: Extra ``(name, value)`` rows for the header table (run folder, data folder, ...).
    """

    metrics: dict[str, float | None]
    n_test: int
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[ExampleGroup] = field(default_factory=list)
    scale: HeatmapScale | None = None
    context: list[tuple[str, str]] = field(default_factory=list)


def _contour(mask: np.ndarray) -> np.ndarray:
    """The one-pixel inner outline of a boolean mask."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), border_value=0)


def _example_tile(ex: ExampleImage, scale: HeatmapScale, assets: ReportAssets) -> str:
    """Image | heat-map overlay side by side (ground-truth outline on both), with a caption."""
    base = np.asarray(ex.image, dtype=np.uint8)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    v = scale.normalize(ex.anomaly_map)
    if v.shape != base.shape[:2]:
        v = np.asarray(Image.fromarray(v).resize(base.shape[1::-1], Image.Resampling.BILINEAR))
    alpha = (0.6 * (0.4 + 0.6 * v))[..., None]
    overlay = np.rint((1 - alpha) * base + alpha * colorize(v)).astype(np.uint8)
    panels = [base.copy(), overlay]
    if ex.mask is not None and ex.mask.any():
        outline = _contour(ex.mask)
        for p in panels:
            p[outline] = _CONTOUR_RGB
    gap = np.full((base.shape[0], 4, 3), 255, np.uint8)
    src = assets.add_png(np.concatenate([panels[0], gap, panels[1]], axis=1))
    kind = "anomalous" if ex.label == 1 else "normal"
    return (
        f'<figure class="tile"><img src="{_e(src)}" alt="{_e(_short_name(ex.path))}">'
        f'<figcaption><span class="name" title="{_e(ex.path)}">{_e(_short_name(ex.path))}</span><br>'
        f"score <b>{ex.score:.4g}</b> &middot; {kind} ({_e(ex.defect_type)})"
        f"{' &middot; outline = ground truth' if ex.mask is not None and ex.mask.any() else ''}"
        "</figcaption></figure>"
    )


def _metrics_table(metrics: dict[str, float | None]) -> str:
    keys = [k for k in METRIC_KEYS if k in metrics] + [k for k in metrics if k not in METRIC_KEYS]
    rows = [
        [_e(k), f'<span class="num">{_pct(metrics[k])}</span>', _e(_METRIC_HELP.get(k, ""))] for k in keys
    ]
    return _table(["metric", "value", "meaning"], rows, "metrics")


def evaluate_section(report: EvaluateReport, assets: ReportAssets) -> str:
    """HTML of the evaluation: metric table, ROC / PRO curves, score histogram and heat-map examples.

    Args:
        report: The evaluation data.
        assets: Where the example images go.
    """
    parts = ['<section id="evaluate"><h2>Evaluation on the test set</h2>']
    if report.context:
        parts.append(
            _table(["", ""], [[_e(k), f'<span class="name">{_e(v)}</span>'] for k, v in report.context])
        )
    parts.append(f"<p>{report.n_test} test images. Metrics in %; a metric that cannot be computed from this ")
    parts.append("test set (e.g. one class only, or no ground-truth masks) is shown as <i>undefined</i>.</p>")
    parts.append(_metrics_table(report.metrics))
    charts = []
    roc = report.curves.get("image_roc", {})
    if roc.get("fpr"):
        series = [_Series("image ROC", roc["fpr"], roc["tpr"], _KEPT_COLOUR, css_class="curve roc")]
        pix = report.curves.get("pixel_roc", {})
        if pix.get("fpr"):
            series.append(
                _Series("pixel ROC", pix["fpr"], pix["tpr"], _ANOMALY_COLOUR, css_class="curve pixel-roc")
            )
        auc = report.metrics.get("I-AUROC")
        charts.append(
            _figure(
                _svg_chart(
                    series,
                    x_range=(0, 1),
                    y_range=(0, 1),
                    x_label="false positive rate",
                    y_label="true positive rate",
                    title="ROC curve",
                    diagonal=True,
                    css_class="chart roc-chart",
                ),
                f"Image-level ROC (I-AUROC {_pct(auc)})"
                + (" and pixel-level ROC." if pix.get("fpr") else "."),
            )
        )
    else:
        charts.append(
            '<p class="undefined">ROC curve undefined (the test set needs normal and anomalous images).</p>'
        )
    pro = report.curves.get("pro", {})
    if pro.get("fpr"):
        max_fpr = max(pro["fpr"]) or 0.3
        charts.append(
            _figure(
                _svg_chart(
                    [_Series("PRO", pro["fpr"], pro["pro"], _NORMAL_COLOUR, css_class="curve pro")],
                    x_range=(0, max_fpr),
                    y_range=(0, 1),
                    x_label="false positive rate (pixels)",
                    y_label="per-region overlap",
                    title="PRO curve",
                    css_class="chart pro-chart",
                ),
                f"Per-region overlap vs pixel FPR up to {max_fpr:g}; "
                f"P-AUPRO {_pct(report.metrics.get('P-AUPRO'))} is its normalised area.",
            )
        )
    else:
        charts.append('<p class="undefined">PRO curve undefined (needs anomalous images with masks).</p>')
    if report.scores:
        charts.append(_figure(_score_histogram(report.scores, report.labels), "Image scores by true class."))
    parts.append('<div class="charts">' + "".join(charts) + "</div>")
    if report.groups and report.scale is not None:
        parts.append("<h3>Heat-maps</h3>")
        parts.append(
            '<p class="note">Left: the model\'s view of the image; right: its anomaly map. '
            f"Every map is drawn on ONE fixed scale ({_e(report.scale.source)}), so equal colours "
            "mean equal anomaly values in every image; a magenta outline marks the ground-truth defect.</p>"
        )
        parts.append(_svg_colorbar(report.scale))
        t = report.scale.threshold
        if t is not None:
            where = (
                "marked on the colour bar"
                if report.scale.lo <= t <= report.scale.hi
                else "above every test map value, so no test pixel would be masked"
                if t > report.scale.hi
                else "below every test map value"
            )
            parts.append(
                f'<p class="note">The run\'s calibrated pixel threshold ({_fmt_tick(t)}; '
                f"<code>predict</code> masks the pixels at or above it) is {where}.</p>"
            )
        for group in report.groups:
            if not group.images:
                continue
            parts.append(f"<h3>{_e(group.title)}</h3><p class='note'>{_e(group.description)}</p>")
            parts.append(
                '<div class="grid">'
                + "".join(_example_tile(x, report.scale, assets) for x in group.images)
                + "</div>"
            )
    parts.append("</section>")
    return "\n".join(parts)


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _score_histogram(scores: Sequence[float], labels: Sequence[int], bins: int = 20) -> str:
    arr = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    lo, hi = _padded_range(arr.tolist())
    edges = np.linspace(lo, hi, bins + 1)
    groups = [
        ("normal", np.histogram(arr[lab == 0], edges)[0].tolist(), _NORMAL_COLOUR),
        ("anomalous", np.histogram(arr[lab == 1], edges)[0].tolist(), _ANOMALY_COLOUR),
    ]
    return _svg_bars(
        groups, edges.tolist(), title="Image scores", x_label="image anomaly score", y_label="images"
    )


def write_evaluate_report(out_dir: str | os.PathLike[str], report: EvaluateReport, title: str = "") -> Path:
    """Write ``out_dir/report.html`` (+ ``report_assets/``) for one evaluation; returns its path.

    Args:
        out_dir: Report folder (created if needed).
        report: The evaluation data.
        title: Page title (default "ssfilter evaluation report").
    """
    assets = ReportAssets(out_dir, "eval")
    section = evaluate_section(report, assets)
    path = write_report(out_dir, title or "ssfilter evaluation report", [section])
    assets.remove_stale()
    return path


# -- filter -------------------------------------------------------------------------------------------


def _thumbnail(path: str, size: int) -> Image.Image | None:
    """A thumbnail of an image file, or ``None`` when it cannot be read."""
    from ssfilter.data.images import ImageReadError, read_image

    try:
        image = read_image(path)
    except (ImageReadError, OSError, ValueError):
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _label_text(label: int) -> str:
    return {0: "normal", 1: "anomalous"}.get(int(label), "unknown")


def filter_section(
    records: Sequence[Any],
    summary: dict[str, Any],
    assets: ReportAssets,
    *,
    params: dict[str, Any] | None = None,
    links: Sequence[tuple[str, str]] = (),
    max_thumbnails: int = 200,
    thumb_size: int = 128,
) -> str:
    """HTML of a dataset-level filter: summary, score scatter, keep-count histogram, quarantined images.

    Args:
        records: :class:`~ssfilter.filtering.dataset_filter.FilterRecord` objects (``path``, ``times_seen``,
            ``times_kept``, ``mean_score``, ``mean_uncertainty``, ``decision``, ``label``).
        summary: :func:`~ssfilter.filtering.dataset_filter.summarize` of the records.
        assets: Where the thumbnails go.
        params: Filter parameters (``epochs``, ``min_keep``, ...), default ``records.params``.
        links: ``(text, relative href)`` links to the filter's data files.
        max_thumbnails: Quarantined images shown with a thumbnail; the rest are listed without one.
        thumb_size: Thumbnail side in pixels.
    """
    params = dict(params if params is not None else getattr(records, "params", {}) or {})
    n = len(records)
    removed = [r for r in records if r.decision != "normal"]
    known = bool(summary.get("labels_known"))
    parts = ['<section id="filter"><h2>Dataset-level filter</h2>']
    parts.append(
        "<p>The trained in-batch filter was run over the whole training set for "
        f"{_e(params.get('epochs', '?'))} random epochs; an image counts as normal when it was kept more "
        f"than {_e(params.get('min_keep', '?'))} times, otherwise it is <b>quarantined</b> (left out of "
        "the clean set; the input folder is never modified).</p>"
    )
    rows = [
        ["images", f'<span class="big">{n}</span>'],
        ["kept as normal", f'<span class="big">{summary.get("n_kept", n - len(removed))}</span>'],
        ["quarantined", f'<span class="big">{summary.get("n_removed", len(removed))}</span>'],
    ]
    if known:
        n_anom = sum(1 for r in records if r.label == 1)
        n_norm = n - n_anom
        caught = sum(1 for r in removed if r.label == 1)
        normal_kept = sum(1 for r in records if r.label == 0 and r.decision == "normal")
        rows += [
            ["anomalies removed", f"<b>{caught} of {n_anom}</b> ({_pct(summary.get('anomalies_removed'))})"],
            ["normal images kept", f"<b>{normal_kept} of {n_norm}</b> ({_pct(summary.get('normal_kept'))})"],
            [
                "noise rate",
                f"{_pct(summary.get('noise_rate_before'))} before &rarr; "
                f"<b>{_pct(summary.get('noise_rate_after'))}</b> after",
            ],
        ]
    else:
        rows.append(["true labels", "unknown (filter quality cannot be measured on unlabelled data)"])
    parts.append(_table(["", ""], rows, "filter-summary"))
    if links:
        parts.append("<p>" + " ".join(f'<a href="{_e(h)}">{_e(t)}</a>' for t, h in links) + "</p>")
    parts.append('<div class="charts">' + _filter_charts(records, params, known) + "</div>")

    order = sorted(
        range(len(removed)), key=lambda i: (removed[i].times_kept, -_finite(removed[i].mean_score))
    )
    parts.append(f"<h3>Quarantined images ({len(removed)})</h3>")
    if not removed:
        parts.append("<p>The filter quarantined no image.</p>")
    else:
        if len(removed) > max_thumbnails:
            parts.append(
                f'<p class="note">Thumbnails for the {max_thumbnails} least-often kept images; all '
                f"{len(removed)} are listed in the table below.</p>"
            )
        tiles = []
        for rank, i in enumerate(order[:max_thumbnails]):
            r = removed[i]
            thumb = _thumbnail(r.path, thumb_size)
            img = (
                f'<img src="{_e(assets.add_png(thumb))}" alt="{_e(Path(r.path).name)}">'
                if thumb is not None
                else '<div class="undefined">unreadable</div>'
            )
            truth = f"<br>true label: {_label_text(r.label)}" if known else ""
            tiles.append(
                f'<figure class="tile thumb quarantined" data-rank="{rank}">{img}<figcaption>'
                f'<span class="name" title="{_e(r.path)}">{_e(_short_name(r.path, 2))}</span><br>'
                f"kept {r.times_kept}/{r.times_seen}<br>A {_num(r.mean_score)} &middot; U "
                f"{_num(r.mean_uncertainty)}{truth}</figcaption></figure>"
            )
        parts.append('<div class="grid">' + "".join(tiles) + "</div>")
        header = ["file", "kept / seen", "mean score A", "mean uncertainty U"] + (
            ["true label"] if known else []
        )
        table_rows = []
        for i in order:
            r = removed[i]
            row = [
                f'<span class="name">{_e(r.path)}</span>',
                f"{r.times_kept} / {r.times_seen}",
                _num(r.mean_score),
                _num(r.mean_uncertainty),
            ]
            table_rows.append(row + ([_label_text(r.label)] if known else []))
        parts.append(_table(header, table_rows, "quarantined-list"))
    parts.append("</section>")
    return "\n".join(parts)


def _finite(v: float) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def _filter_charts(records: Sequence[Any], params: dict[str, Any], known: bool) -> str:
    """Mean A vs mean U scatter (decision colours, true anomalies as diamonds) and keep-count histogram."""
    charts = []
    xs = [float(r.mean_score) for r in records]
    ys = [float(r.mean_uncertainty) for r in records]
    ok = [math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys, strict=True)]
    if any(ok):
        colours = [_KEPT_COLOUR if r.decision == "normal" else _REMOVED_COLOUR for r in records]
        markers = ["diamond" if known and r.label == 1 else "circle" for r in records]
        tips = [
            f"{_short_name(r.path, 2)}: kept {r.times_kept}/{r.times_seen}"
            + (f", true label {_label_text(r.label)}" if known else "")
            for r in records
        ]
        svg = _svg_chart(
            [_Series("images", xs, ys, _KEPT_COLOUR, "points", "points", colours, tips, markers)],
            x_range=_padded_range([x for x, g in zip(xs, ok, strict=True) if g]),
            y_range=_padded_range([y for y, g in zip(ys, ok, strict=True) if g]),
            x_label="mean patch comparison score A",
            y_label="mean uncertainty U",
            title="Filter scores per image",
            css_class="chart filter-scatter",
        )
        legend = (
            f'<span class="legend"><span><i class="swatch" style="background:{_KEPT_COLOUR}"></i>kept</span>'
            f'<span><i class="swatch" style="background:{_REMOVED_COLOUR}"></i>quarantined</span>'
            + ("<span>&#9670; = truly anomalous</span>" if known else "")
            + "</span>"
        )
        charts.append(_figure(svg, "Mean A vs mean U over the filter epochs. " + legend))
    else:
        # One score only (uncertainty or patch scoring switched off): its histogram by decision.
        name, values = (
            ("mean patch comparison score A", xs)
            if any(math.isfinite(x) for x in xs)
            else ("mean uncertainty U", ys)
        )
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            edges = np.linspace(*_padded_range(finite), 21)
            decided = [
                (label, [v for v, r in zip(values, records, strict=True) if math.isfinite(v) and want(r)], c)
                for label, want, c in (
                    ("kept", lambda r: r.decision == "normal", _KEPT_COLOUR),
                    ("quarantined", lambda r: r.decision != "normal", _REMOVED_COLOUR),
                )
            ]
            groups = [(label, np.histogram(v, edges)[0].tolist(), c) for label, v, c in decided]
            svg = _svg_bars(
                groups,
                edges.tolist(),
                title="Filter scores per image",
                x_label=name,
                y_label="images",
                css_class="histogram filter-scores",
            )
            charts.append(_figure(svg, f"{name[0].upper()}{name[1:]} over the filter epochs, by decision."))
    seen = max((r.times_seen for r in records), default=0)
    if seen > 0:
        edges = [k - 0.5 for k in range(seen + 2)]
        kept_counts = [r.times_kept for r in records]
        if known:
            groups = [
                (
                    "true normal",
                    _counts([k for k, r in zip(kept_counts, records, strict=True) if r.label == 0], seen),
                    _NORMAL_COLOUR,
                ),
                (
                    "true anomaly",
                    _counts([k for k, r in zip(kept_counts, records, strict=True) if r.label == 1], seen),
                    _ANOMALY_COLOUR,
                ),
            ]
        else:
            groups = [("images", _counts(kept_counts, seen), _KEPT_COLOUR)]
        min_keep = params.get("min_keep")
        vline = (float(min_keep) + 0.5, "normal ->") if isinstance(min_keep, int) else None
        svg = _svg_bars(
            groups,
            edges,
            title="How often each image was kept",
            x_label=f"times kept (out of {seen})",
            x_ticks=list(range(0, seen + 1, int(_nice_step(seen / 6)))),
            y_label="images",
            vline=vline,
            css_class="histogram keep-histogram",
        )
        charts.append(_figure(svg, "Images right of the dashed line are kept as normal."))
    return "".join(charts)


def _counts(values: Sequence[int], top: int) -> list[int]:
    out = [0] * (top + 1)
    for v in values:
        out[min(max(int(v), 0), top)] += 1
    return out


def write_filter_report(
    out_dir: str | os.PathLike[str],
    records: Sequence[Any],
    summary: dict[str, Any] | None = None,
    *,
    title: str = "",
    max_thumbnails: int = 200,
) -> Path:
    """Write ``out_dir/report.html`` (+ ``report_assets/``) for a dataset-level filter; returns its path.

    Args:
        out_dir: The filter's output folder (links to ``filter.csv`` / ``filter.json`` when present).
        records: Filter records.
        summary: Their :func:`~ssfilter.filtering.dataset_filter.summarize` (computed when omitted).
        title: Page title (default "ssfilter filter report").
        max_thumbnails: Quarantined images shown with a thumbnail.
    """
    from ssfilter.filtering.filter_outputs import summarize
    from ssfilter.runfolder import FILTER_CSV, FILTER_JSON

    out = Path(out_dir)
    summary = summary if summary is not None else summarize(records)
    links = [(name, name) for name in (FILTER_CSV, FILTER_JSON) if (out / name).is_file()]
    assets = ReportAssets(out, "filter")
    section = filter_section(records, summary, assets, links=links, max_thumbnails=max_thumbnails)
    path = write_report(out, title or "ssfilter filter report", [section])
    assets.remove_stale()
    return path


# -- benchmark ----------------------------------------------------------------------------------------


def benchmark_section(rows: Sequence[dict[str, Any]], links: Sequence[tuple[str, str]] = ()) -> str:
    """HTML of a benchmark: I-AUROC / P-AUPRO per method and noise level (with the mean), filter quality.

    Args:
        rows: ``results.json`` rows (``method``, ``alpha``, ``metrics``, ``filter``, ...).
        links: ``(text, relative href)`` links to the benchmark's data files.
    """
    from ssfilter.evaluation.benchmark import results_tables

    tables = results_tables(rows)
    parts = ['<section id="benchmark"><h2>Benchmark</h2>']
    if links:
        parts.append("<p>" + " ".join(f'<a href="{_e(h)}">{_e(t)}</a>' for t, h in links) + "</p>")
    for table in tables:
        parts.append(f"<h3>{_e(table['title'])}</h3>")
        body = [[_bench_cell(c) for c in row] for row in table["rows"]]
        parts.append(_table(table["header"], body, "benchmark"))
    if not rows:
        parts.append("<p>No finished rows yet.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _bench_cell(cell: str) -> str:
    """A benchmark table cell with each ``-`` part (undefined or not run) shown as "undefined"."""
    return " / ".join(
        '<span class="undefined">undefined</span>' if part == "-" else _e(part) for part in cell.split(" / ")
    )


def write_benchmark_report(
    out_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]], subtitle: str | None = None
) -> Path:
    """Write ``out_dir/report.html`` for a benchmark's rows; returns its path.

    Args:
        out_dir: The benchmark's output folder (links to ``results.json`` / ``results.md`` when present).
        rows: ``results.json`` rows.
        subtitle: Optional line under the title (e.g. the data folder).
    """
    out = Path(out_dir)
    links = [(name, name) for name in ("results.json", "results.md") if (out / name).is_file()]
    return write_report(out, "ssfilter benchmark report", [benchmark_section(rows, links)], subtitle)
