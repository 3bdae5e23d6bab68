"""The ``evaluate --report`` page: metric table, ROC / PRO curves, score histogram and heat-map examples.

This module holds the page's data (:class:`EvaluateReport` and its parts) and renders it; rendering needs
only numpy, scipy and Pillow. Collecting the data from a model (heat-maps of selected test images) lives in
:mod:`ssfilter.reporting.examples`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ssfilter.evaluation.metrics import METRIC_KEYS
from ssfilter.inference.visualize import colorize
from ssfilter.reporting.charts import (
    ANOMALY_COLOUR,
    KEPT_COLOUR,
    NORMAL_COLOUR,
    Series,
    bar_chart,
    colorbar,
    fmt_tick,
    line_chart,
    padded_range,
)
from ssfilter.reporting.frame import ReportAssets, escape, figure, pct, short_name, table, write_report

__all__ = [
    "EvaluateReport",
    "ExampleGroup",
    "ExampleImage",
    "HeatmapScale",
    "evaluate_section",
    "write_evaluate_report",
]

_CONTOUR_RGB = (255, 0, 255)  # ground-truth outline: magenta is absent from the heat-map colours

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


# -- heat-map examples --------------------------------------------------------------------------------


def _contour(mask: np.ndarray) -> np.ndarray:
    """The one-pixel inner outline of a boolean mask."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), border_value=0)


def _example_pixels(ex: ExampleImage, scale: HeatmapScale) -> np.ndarray:
    """Image | heat-map overlay side by side, 4 white pixels apart, the ground-truth outline on both."""
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
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def _example_tile(ex: ExampleImage, scale: HeatmapScale, assets: ReportAssets) -> str:
    """One example as a tile: its image | overlay picture and a caption (name, score, class)."""
    src = assets.add_png(_example_pixels(ex, scale))
    kind = "anomalous" if ex.label == 1 else "normal"
    return (
        f'<figure class="tile"><img src="{escape(src)}" alt="{escape(short_name(ex.path))}">'
        f'<figcaption><span class="name" title="{escape(ex.path)}">{escape(short_name(ex.path))}</span><br>'
        f"score <b>{ex.score:.4g}</b> &middot; {kind} ({escape(ex.defect_type)})"
        f"{' &middot; outline = ground truth' if ex.mask is not None and ex.mask.any() else ''}"
        "</figcaption></figure>"
    )


def _threshold_note(scale: HeatmapScale) -> str:
    """Where the calibrated pixel threshold lies relative to the scale, or ``""`` when the run has none."""
    t = scale.threshold
    if t is None:
        return ""
    where = (
        "marked on the colour bar"
        if scale.lo <= t <= scale.hi
        else "above every test map value, so no test pixel would be masked"
        if t > scale.hi
        else "below every test map value"
    )
    return (
        f'<p class="note">The run\'s calibrated pixel threshold ({fmt_tick(t)}; '
        f"<code>predict</code> masks the pixels at or above it) is {where}.</p>"
    )


def _heatmaps(report: EvaluateReport, assets: ReportAssets) -> list[str]:
    """The heat-map part: explanation, colour bar, threshold note and one tile row per example group."""
    scale = report.scale
    if not report.groups or scale is None:
        return []
    parts = [
        "<h3>Heat-maps</h3>",
        '<p class="note">Left: the model\'s view of the image; right: its anomaly map. '
        f"Every map is drawn on ONE fixed scale ({escape(scale.source)}), so equal colours "
        "mean equal anomaly values in every image; a magenta outline marks the ground-truth defect.</p>",
        colorbar(scale.lo, scale.hi, scale.threshold),
    ]
    note = _threshold_note(scale)
    if note:
        parts.append(note)
    for group in report.groups:
        if not group.images:
            continue
        parts.append(f"<h3>{escape(group.title)}</h3><p class='note'>{escape(group.description)}</p>")
        tiles = "".join(_example_tile(x, scale, assets) for x in group.images)
        parts.append(f'<div class="grid">{tiles}</div>')
    return parts


# -- metrics and charts -------------------------------------------------------------------------------


def _metrics_table(metrics: dict[str, float | None]) -> str:
    """The metrics in the package's order (unknown ones last) with their value in % and meaning."""
    keys = [k for k in METRIC_KEYS if k in metrics] + [k for k in metrics if k not in METRIC_KEYS]
    rows = [
        [escape(k), f'<span class="num">{pct(metrics[k])}</span>', escape(_METRIC_HELP.get(k, ""))]
        for k in keys
    ]
    return table(["metric", "value", "meaning"], rows, "metrics")


def _roc_figure(report: EvaluateReport) -> str:
    """The image-level (and, when known, pixel-level) ROC curve, or a note that it is undefined."""
    roc = report.curves.get("image_roc", {})
    if not roc.get("fpr"):
        return (
            '<p class="undefined">ROC curve undefined (the test set needs normal and anomalous images).</p>'
        )
    series = [Series("image ROC", roc["fpr"], roc["tpr"], KEPT_COLOUR, css_class="curve roc")]
    pix = report.curves.get("pixel_roc", {})
    if pix.get("fpr"):
        series.append(
            Series("pixel ROC", pix["fpr"], pix["tpr"], ANOMALY_COLOUR, css_class="curve pixel-roc")
        )
    svg = line_chart(
        series,
        x_range=(0, 1),
        y_range=(0, 1),
        x_label="false positive rate",
        y_label="true positive rate",
        title="ROC curve",
        diagonal=True,
        css_class="chart roc-chart",
    )
    caption = f"Image-level ROC (I-AUROC {pct(report.metrics.get('I-AUROC'))})" + (
        " and pixel-level ROC." if pix.get("fpr") else "."
    )
    return figure(svg, caption)


def _pro_figure(report: EvaluateReport) -> str:
    """The per-region-overlap curve up to its largest FPR, or a note that it is undefined."""
    pro = report.curves.get("pro", {})
    if not pro.get("fpr"):
        return '<p class="undefined">PRO curve undefined (needs anomalous images with masks).</p>'
    max_fpr = max(pro["fpr"]) or 0.3
    svg = line_chart(
        [Series("PRO", pro["fpr"], pro["pro"], NORMAL_COLOUR, css_class="curve pro")],
        x_range=(0, max_fpr),
        y_range=(0, 1),
        x_label="false positive rate (pixels)",
        y_label="per-region overlap",
        title="PRO curve",
        css_class="chart pro-chart",
    )
    caption = (
        f"Per-region overlap vs pixel FPR up to {max_fpr:g}; "
        f"P-AUPRO {pct(report.metrics.get('P-AUPRO'))} is its normalised area."
    )
    return figure(svg, caption)


def _score_histogram(scores: Sequence[float], labels: Sequence[int], bins: int = 20) -> str:
    """Image scores in ``bins`` equal bins, normal and anomalous images stacked."""
    arr = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    edges = np.linspace(*padded_range(arr.tolist()), bins + 1)
    groups = [
        ("normal", np.histogram(arr[lab == 0], edges)[0].tolist(), NORMAL_COLOUR),
        ("anomalous", np.histogram(arr[lab == 1], edges)[0].tolist(), ANOMALY_COLOUR),
    ]
    return bar_chart(
        groups, edges.tolist(), title="Image scores", x_label="image anomaly score", y_label="images"
    )


# -- page ---------------------------------------------------------------------------------------------


def evaluate_section(report: EvaluateReport, assets: ReportAssets) -> str:
    """HTML of the evaluation: metric table, ROC / PRO curves, score histogram and heat-map examples.

    Args:
        report: The evaluation data.
        assets: Where the example images go.
    """
    parts = ['<section id="evaluate"><h2>Evaluation on the test set</h2>']
    if report.context:
        parts.append(
            table(
                ["", ""], [[escape(k), f'<span class="name">{escape(v)}</span>'] for k, v in report.context]
            )
        )
    parts.append(f"<p>{report.n_test} test images. Metrics in %; a metric that cannot be computed from this ")
    parts.append("test set (e.g. one class only, or no ground-truth masks) is shown as <i>undefined</i>.</p>")
    parts.append(_metrics_table(report.metrics))
    charts = [_roc_figure(report), _pro_figure(report)]
    if report.scores:
        charts.append(figure(_score_histogram(report.scores, report.labels), "Image scores by true class."))
    parts.append('<div class="charts">' + "".join(charts) + "</div>")
    parts += _heatmaps(report, assets)
    parts.append("</section>")
    return "\n".join(parts)


def write_evaluate_report(out_dir: str | os.PathLike[str], report: EvaluateReport, title: str = "") -> Path:
    """Write ``out_dir/report.html`` (+ ``report_assets/``) for one evaluation; returns its path.

    Args:
        out_dir: Report folder (created if needed).
        report: The evaluation data.
        title: Page title (default "ssfilter evaluation report").
    """
    assets = ReportAssets(out_dir, "eval")
    section = evaluate_section(report, assets)
    return write_report(out_dir, title or "ssfilter evaluation report", [section], assets=[assets])
