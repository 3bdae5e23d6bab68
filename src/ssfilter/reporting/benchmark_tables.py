"""The benchmark's result tables as plain text cells, shared by ``results.md`` and the HTML report.

A benchmark writes ``results.json`` rows (``method``, ``alpha``, ``metrics``, ``filter``, ...); this module
turns them into the paper-style tables once, so that the Markdown file and the benchmark page show the
same numbers. It lives in the reporting layer (below the benchmark pipeline that writes the rows) so
that the benchmark page does not have to import the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["UNDEFINED_CELL", "results_tables"]

#: The text of an undefined (or not run) value in a table cell.
UNDEFINED_CELL = "-"

_FILTER_HEADER = ["alpha", "noise rate before", "noise rate after", "normal images kept", "anomalies removed"]
_FILTER_KEYS = ("noise_rate_before", "noise_rate_after", "normal_kept", "anomalies_removed")


def _pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or :data:`UNDEFINED_CELL` for ``None`` and NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED_CELL
    return f"{100 * value:.1f}"


def _mean_if_complete(values: Sequence[float | None]) -> float | None:
    """The mean of ``values``, or ``None`` when any is undefined (a mean needs every alpha)."""
    if any(v is None for v in values):
        return None
    defined = [float(v) for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _metric_table(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """I-AUROC / P-AUPRO (%) per method (in first-seen order) and alpha, plus their mean over the alphas."""
    alphas = sorted({r["alpha"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["alpha"]): r for r in rows}
    body = []
    for m in methods:
        found = [by.get((m, a)) for a in alphas]
        i_vals = [r["metrics"].get("I-AUROC") if r else None for r in found]
        p_vals = [r["metrics"].get("P-AUPRO") if r else None for r in found]
        cells = [f"{_pct(i)} / {_pct(p)}" for i, p in zip(i_vals, p_vals, strict=True)]
        mean = f"{_pct(_mean_if_complete(i_vals))} / {_pct(_mean_if_complete(p_vals))}"
        body.append([m, *cells, mean])
    return {
        "title": "I-AUROC / P-AUPRO (%)",
        "header": ["method", *(f"alpha={a:g}" for a in alphas), "mean"],
        "rows": body,
    }


def _filter_table(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The dataset-level filter's quality per alpha (its first ``+filter`` row), or ``None`` if none ran."""
    quality, seen = [], set()
    for r in rows:
        if not r.get("filter") or r["alpha"] in seen:
            continue
        seen.add(r["alpha"])
        quality.append([f"{r['alpha']:g}", *(_pct(r["filter"][k]) for k in _FILTER_KEYS)])
    if not quality:
        return None
    return {"title": "Dataset-level filter (per alpha)", "header": list(_FILTER_HEADER), "rows": quality}


def _in_batch_table(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The SSFilter run's in-batch filter per alpha (second half of training, and each phase), if known."""
    body = []
    for r in rows:
        summary = r.get("in_batch_filter")
        if not summary or summary.get("abnormal_recall") is None:
            continue
        phases = summary.get("phases", {})
        cells = [
            f"{_pct(phases[p]['abnormal_recall'])} / {_pct(phases[p]['normal_discard_rate'])}"
            if p in phases
            else UNDEFINED_CELL
            for p in ("cold", "regular")
        ]
        body.append(
            [
                f"{r['alpha']:g}",
                _pct(summary["abnormal_recall"]),
                _pct(summary["normal_discard_rate"]),
                *cells,
            ]
        )
    if not body:
        return None
    header = [
        "alpha",
        "abnormal recall (second half)",
        "normals discarded (second half)",
        "cold phase: recall / discarded",
        "regular phase: recall / discarded",
    ]
    return {"title": "In-batch filter of the SSFilter run (%)", "header": header, "rows": body}


def results_tables(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark tables as ``{"title", "header", "rows"}`` of text cells (``-`` = undefined).

    The first table holds I-AUROC / P-AUPRO (%) per method and alpha plus their mean over the alphas (a
    mean needs every alpha); the second, present when a ``+filter`` method ran, the dataset-level filter's
    quality per alpha (paper Fig. 4-5); the last, present when the SSFilter run knew its training labels
    (noise benchmark), its in-batch filter's abnormal recall and normal discard rate per alpha (paper
    Table 8). The benchmark's ``results.md`` and the HTML report render these.

    Args:
        rows: ``results.json`` rows.
    """
    tables = [_metric_table(rows)]
    quality = _filter_table(rows)
    if quality is not None:
        tables.append(quality)
    in_batch = _in_batch_table(rows)
    if in_batch is not None:
        tables.append(in_batch)
    return tables
