"""The dataset-level filter page: summary, score scatter, keep-count histogram and the quarantined images.

It shows :class:`~ssfilter.filtering.dataset_filter.FilterRecord` objects (``path``, ``times_seen``,
``times_kept``, ``mean_score``, ``mean_uncertainty``, ``decision``, ``label``) as written by ``ssfilter
filter``; thumbnails of the quarantined images go into ``report_assets/`` under generated names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssfilter.data.images import ImageReadError, read_image
from ssfilter.reporting.charts import (
    ANOMALY_COLOUR,
    KEPT_COLOUR,
    NORMAL_COLOUR,
    REMOVED_COLOUR,
    Series,
    bar_chart,
    line_chart,
    nice_step,
    padded_range,
)
from ssfilter.reporting.frame import (
    ReportAssets,
    escape,
    figure,
    links_paragraph,
    num,
    pct,
    short_name,
    table,
    write_report,
)

__all__ = ["filter_section", "write_filter_report"]


def _thumbnail(path: str, size: int) -> Image.Image | None:
    """A thumbnail of an image file, or ``None`` when it cannot be read."""
    try:
        image = read_image(path)
    except (ImageReadError, OSError, ValueError):
        return None
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _label_text(label: int) -> str:
    """A record's true label in words."""
    return {0: "normal", 1: "anomalous"}.get(int(label), "unknown")


def _finite(v: float) -> float:
    """``v`` when it is a finite number, else minus infinity (sorts undefined scores last when negated)."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def _counts(values: Sequence[int], top: int) -> list[int]:
    """How many of ``values`` are 0, 1, ..., ``top`` (values outside are clipped into that range)."""
    out = [0] * (top + 1)
    for v in values:
        out[min(max(int(v), 0), top)] += 1
    return out


# -- summary and quarantined images -------------------------------------------------------------------


def _summary_rows(
    records: Sequence[Any], removed: Sequence[Any], summary: dict[str, Any], known: bool
) -> list[list[str]]:
    """Rows of the summary table: counts, and with known labels how well the filter did."""
    n = len(records)
    rows = [
        ["images", f'<span class="big">{n}</span>'],
        ["kept as normal", f'<span class="big">{summary.get("n_kept", n - len(removed))}</span>'],
        ["quarantined", f'<span class="big">{summary.get("n_removed", len(removed))}</span>'],
    ]
    est = summary.get("contamination")
    if isinstance(est, dict) and est.get("estimate") is not None:
        truth = f" (true share {pct(est['true'])})" if est.get("true") is not None else ""
        rows.append(
            [
                "estimated share of defective images",
                f"<b>{pct(est['estimate'])}</b>, {round(100 * est['level'])}% interval {pct(est['low'])} "
                f"&ndash; {pct(est['high'])}{truth}",
            ]
        )
    if not known:
        rows.append(["true labels", "unknown (filter quality cannot be measured on unlabelled data)"])
        return rows
    n_anom = sum(1 for r in records if r.label == 1)
    caught = sum(1 for r in removed if r.label == 1)
    normal_kept = sum(1 for r in records if r.label == 0 and r.decision == "normal")
    return rows + [
        ["anomalies removed", f"<b>{caught} of {n_anom}</b> ({pct(summary.get('anomalies_removed'))})"],
        ["normal images kept", f"<b>{normal_kept} of {n - n_anom}</b> ({pct(summary.get('normal_kept'))})"],
        [
            "noise rate",
            f"{pct(summary.get('noise_rate_before'))} before &rarr; "
            f"<b>{pct(summary.get('noise_rate_after'))}</b> after",
        ],
    ]


def _quarantine_tiles(
    ordered: Sequence[Any],
    assets: ReportAssets,
    known: bool,
    thumb_size: int,
    heatmaps: dict[str, Image.Image] | None = None,
) -> str:
    """A grid of thumbnails (``unreadable`` where an image cannot be read) with kept count and scores.

    With ``heatmaps`` (path -> overlay), each suspect's heat-map stands beside its thumbnail.
    """
    tiles = []
    for rank, r in enumerate(ordered):
        thumb = _thumbnail(r.path, thumb_size)
        img = (
            f'<img src="{escape(assets.add_png(thumb))}" alt="{escape(Path(r.path).name)}">'
            if thumb is not None
            else '<div class="undefined">unreadable</div>'
        )
        heat = (heatmaps or {}).get(r.path)
        if heat is not None and thumb is not None:
            heat = heat.copy()
            heat.thumbnail((thumb_size, thumb_size), Image.Resampling.LANCZOS)
            img += f'<img class="heatmap" src="{escape(assets.add_png(heat))}" alt="heat-map">'
        truth = f"<br>true label: {_label_text(r.label)}" if known else ""
        why = f'<br><span class="note">{escape(r.reason)}</span>' if getattr(r, "reason", "") else ""
        tiles.append(
            f'<figure class="tile thumb quarantined" data-rank="{rank}">{img}<figcaption>'
            f"#{getattr(r, 'rank', 0) or rank + 1} "
            f'<span class="name" title="{escape(r.path)}">{escape(short_name(r.path, 2))}</span><br>'
            f"kept {r.times_kept}/{r.times_seen}<br>A {num(r.mean_score)} &middot; U "
            f"{num(r.mean_uncertainty)}{truth}{why}</figcaption></figure>"
        )
    return '<div class="grid">' + "".join(tiles) + "</div>"


def _quarantine_table(ordered: Sequence[Any], known: bool) -> str:
    """Every quarantined image: full path, kept count and mean scores (and the true label when known)."""
    header = ["file", "rank", "kept / seen", "mean score A", "mean uncertainty U"]
    header += (["true label"] if known else []) + ["reason"]
    rows = [
        [
            f'<span class="name">{escape(r.path)}</span>',
            str(getattr(r, "rank", 0) or "-"),
            f"{r.times_kept} / {r.times_seen}",
            num(r.mean_score),
            num(r.mean_uncertainty),
        ]
        + ([_label_text(r.label)] if known else [])
        + [escape(getattr(r, "reason", ""))]
        for r in ordered
    ]
    return table(header, rows, "quarantined-list")


def _quarantined(
    removed: Sequence[Any],
    assets: ReportAssets,
    known: bool,
    max_thumbnails: int,
    thumb_size: int,
    heatmaps: dict[str, Image.Image] | None = None,
) -> list[str]:
    """The quarantined images, most suspect first: thumbnails, then the full list.

    In the order of ``filter.csv`` (the records' ``rank``) when ranked, else least often kept (then highest
    score) first.
    """
    if removed and all(getattr(r, "rank", 0) > 0 for r in removed):
        ordered = sorted(removed, key=lambda r: r.rank)
    else:
        ordered = sorted(removed, key=lambda r: (r.times_kept, -_finite(r.mean_score)))
    parts = [f"<h3>Quarantined images ({len(removed)})</h3>"]
    if not removed:
        return parts + ["<p>The filter quarantined no image.</p>"]
    if len(removed) > max_thumbnails:
        parts.append(
            f'<p class="note">Thumbnails for the {max_thumbnails} least-often kept images; all '
            f"{len(removed)} are listed in the table below.</p>"
        )
    parts.append(_quarantine_tiles(ordered[:max_thumbnails], assets, known, thumb_size, heatmaps))
    parts.append(_quarantine_table(ordered, known))
    return parts


# -- charts -------------------------------------------------------------------------------------------


def _score_scatter(records: Sequence[Any], known: bool) -> str:
    """Mean A vs mean U per image (decision colours, true anomalies as diamonds); ``""`` if none has both."""
    xs = [float(r.mean_score) for r in records]
    ys = [float(r.mean_uncertainty) for r in records]
    ok = [math.isfinite(x) and math.isfinite(y) for x, y in zip(xs, ys, strict=True)]
    if not any(ok):
        return ""
    colours = [KEPT_COLOUR if r.decision == "normal" else REMOVED_COLOUR for r in records]
    markers = ["diamond" if known and r.label == 1 else "circle" for r in records]
    tips = [
        f"{short_name(r.path, 2)}: kept {r.times_kept}/{r.times_seen}"
        + (f", true label {_label_text(r.label)}" if known else "")
        for r in records
    ]
    svg = line_chart(
        [Series("images", xs, ys, KEPT_COLOUR, "points", "points", colours, tips, markers)],
        x_range=padded_range([x for x, g in zip(xs, ok, strict=True) if g]),
        y_range=padded_range([y for y, g in zip(ys, ok, strict=True) if g]),
        x_label="mean patch comparison score A",
        y_label="mean uncertainty U",
        title="Filter scores per image",
        css_class="chart filter-scatter",
    )
    legend = (
        f'<span class="legend"><span><i class="swatch" style="background:{KEPT_COLOUR}"></i>kept</span>'
        f'<span><i class="swatch" style="background:{REMOVED_COLOUR}"></i>quarantined</span>'
        + ("<span>&#9670; = truly anomalous</span>" if known else "")
        + "</span>"
    )
    return figure(svg, "Mean A vs mean U over the filter epochs. " + legend)


def _one_score_histogram(records: Sequence[Any]) -> str:
    """With one score only (uncertainty or patch scoring off): its histogram by decision, or ``""``."""
    xs = [float(r.mean_score) for r in records]
    name, values = (
        ("mean patch comparison score A", xs)
        if any(math.isfinite(x) for x in xs)
        else ("mean uncertainty U", [float(r.mean_uncertainty) for r in records])
    )
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    edges = np.linspace(*padded_range(finite), 21)
    groups = []
    for label, kept, colour in (("kept", True, KEPT_COLOUR), ("quarantined", False, REMOVED_COLOUR)):
        chosen = [
            v
            for v, r in zip(values, records, strict=True)
            if math.isfinite(v) and (r.decision == "normal") == kept
        ]
        groups.append((label, np.histogram(chosen, edges)[0].tolist(), colour))
    svg = bar_chart(
        groups,
        edges.tolist(),
        title="Filter scores per image",
        x_label=name,
        y_label="images",
        css_class="histogram filter-scores",
    )
    return figure(svg, f"{name[0].upper()}{name[1:]} over the filter epochs, by decision.")


def _keep_histogram(records: Sequence[Any], params: dict[str, Any], known: bool) -> str:
    """How often each image was kept (by true class when known), the ``min_keep`` cut dashed, or ``""``."""
    seen = max((r.times_seen for r in records), default=0)
    if seen <= 0:
        return ""
    if known:
        groups = [
            (title, _counts([r.times_kept for r in records if r.label == label], seen), colour)
            for title, label, colour in (
                ("true normal", 0, NORMAL_COLOUR),
                ("true anomaly", 1, ANOMALY_COLOUR),
            )
        ]
    else:
        groups = [("images", _counts([r.times_kept for r in records], seen), KEPT_COLOUR)]
    min_keep = params.get("min_keep") if params.get("decision", "vote") == "vote" else None
    svg = bar_chart(
        groups,
        [k - 0.5 for k in range(seen + 2)],
        title="How often each image was kept",
        x_label=f"times kept (out of {seen})",
        x_ticks=list(range(0, seen + 1, int(nice_step(seen / 6)))),
        y_label="images",
        vline=(float(min_keep) + 0.5, "normal ->") if isinstance(min_keep, int) else None,
        css_class="histogram keep-histogram",
    )
    note = "Images right of the dashed line are kept as normal." if min_keep is not None else ""
    return figure(svg, note or "The keep counts inform the ranking; the folder's cut decided.")


def _filter_charts(records: Sequence[Any], params: dict[str, Any], known: bool) -> str:
    """The score scatter (or, with one score only, its histogram) and the keep-count histogram."""
    scores = _score_scatter(records, known) or _one_score_histogram(records)
    return scores + _keep_histogram(records, params, known)


# -- page ---------------------------------------------------------------------------------------------


def filter_section(
    records: Sequence[Any],
    summary: dict[str, Any],
    assets: ReportAssets,
    *,
    params: dict[str, Any] | None = None,
    links: Sequence[tuple[str, str]] = (),
    max_thumbnails: int = 200,
    thumb_size: int = 128,
    heatmaps: dict[str, Image.Image] | None = None,
) -> str:
    """HTML of a dataset-level filter: summary, score scatter, keep-count histogram, quarantined images.

    Args:
        records: :class:`~ssfilter.filtering.dataset_filter.FilterRecord` objects (``path``, ``times_seen``,
            ``times_kept``, ``mean_score``, ``mean_uncertainty``, ``decision``, ``label``).
        summary: :func:`~ssfilter.filtering.filter_outputs.summarize` of the records.
        assets: Where the thumbnails go.
        params: Filter parameters (``epochs``, ``min_keep``, ...), default ``records.params``.
        links: ``(text, relative href)`` links to the filter's data files.
        max_thumbnails: Quarantined images shown with a thumbnail; the rest are listed without one.
        thumb_size: Thumbnail side in pixels.
        heatmaps: Heat-map overlays by image path, shown beside their thumbnails.
    """
    params = dict(params if params is not None else getattr(records, "params", {}) or {})
    removed = [r for r in records if r.decision != "normal"]
    known = bool(summary.get("labels_known"))
    cut = (getattr(records, "settings", None) or {}).get("outlier_cut") or {}
    if params.get("decision") == "estimate":
        rule = (
            "the <b>quarantined</b> images are the estimated share of defective images "
            f"({pct(cut.get('share'))}), those with the highest {escape(cut.get('score', 'score'))} "
            "first"
        )
    elif params.get("decision") == "outlier":
        rule = (
            "an image is <b>quarantined</b> when its mean patch comparison score A lies more than "
            f"{escape(params.get('outlier_k', '?'))} robust standard deviations (log scale) above the whole "
            "folder's median"
        )
    else:
        rule = (
            f"an image counts as normal when it was kept more than {escape(params.get('min_keep', '?'))} "
            "times, otherwise it is <b>quarantined</b>"
        )
    parts = [
        '<section id="filter"><h2>Dataset-level filter</h2>',
        "<p>The trained in-batch filter was run over the whole training set for "
        f"{escape(params.get('epochs', '?'))} random epochs; {rule} (left out of the clean set; the input "
        "folder is never modified).</p>",
        table(["", ""], _summary_rows(records, removed, summary, known), "filter-summary"),
    ]
    if links:
        parts.append(links_paragraph(links))
    parts.append('<div class="charts">' + _filter_charts(records, params, known) + "</div>")
    parts += _quarantined(removed, assets, known, max_thumbnails, thumb_size, heatmaps)
    parts.append("</section>")
    return "\n".join(parts)


def write_filter_report(
    out_dir: str | os.PathLike[str],
    records: Sequence[Any],
    summary: dict[str, Any] | None = None,
    *,
    title: str = "",
    max_thumbnails: int = 200,
    heatmaps: dict[str, Image.Image] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (+ ``report_assets/``) for a dataset-level filter; returns its path.

    Args:
        out_dir: The filter's output folder (links to ``filter.csv`` / ``filter.json`` when present).
        records: Filter records.
        summary: Their :func:`~ssfilter.filtering.filter_outputs.summarize` (computed when omitted).
        title: Page title (default "ssfilter filter report").
        max_thumbnails: Quarantined images shown with a thumbnail.
        heatmaps: Heat-map overlays by image path, shown beside the thumbnails (e.g. from
            :func:`ssfilter.pipelines.filter_run.suspect_heatmaps`).
    """
    from ssfilter.filtering.filter_outputs import summarize  # torch: only when used
    from ssfilter.runfolder import FILTER_CSV, FILTER_JSON

    out = Path(out_dir)
    summary = summary if summary is not None else summarize(records)
    links = [(name, name) for name in (FILTER_CSV, FILTER_JSON) if (out / name).is_file()]
    assets = ReportAssets(out, "filter")
    section = filter_section(
        records, summary, assets, links=links, max_thumbnails=max_thumbnails, heatmaps=heatmaps
    )
    return write_report(out, title or "ssfilter filter report", [section], assets=[assets])
