"""The in-batch filter's logs (``filter_log.csv``, ``filter_log_ranks.csv``): columns, merging, summary.

The ``ssfilter`` training method writes one row per iteration; under DDP each rank filters its own
slice, the per-rank rows go to ``filter_log_ranks.csv`` and their merge to ``filter_log.csv``.

When the training set's true labels are known (noise-injected benchmarks), every iteration logs how
many anomalies its batch held and how many the filter discarded. The abnormal recall is the share
of those anomalies that were discarded; the normal discard rate is the price paid in clean images.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ssfilter.io import atomic_write_json, read_csv_rows
from ssfilter.runfolder import FILTER_LOG_FILE, FILTER_SUMMARY_FILE

log = logging.getLogger(__name__)

__all__ = [
    "FILTER_FIELDS",
    "FILTER_RANK_FIELDS",
    "merge_filter_rows",
    "summarize_filter_log",
    "write_filter_summary",
]

#: Per-iteration filter log of the ssfilter method (``filter_log.csv``). The last four columns count
#: true labels when the training set's labels are known (noise-injected benchmarks), else stay empty.
FILTER_FIELDS = [
    "iteration",
    "phase",
    "batch",
    "kept",
    "recalled",
    "material",
    "synthetic",
    "mu1",
    "sigma1",
    "anomalies",
    "anomalies_discarded",
    "normals",
    "normals_discarded",
]
#: Per-rank filter log of a DDP run (``filter_log_ranks.csv``), with the rank and the discarded indices.
FILTER_RANK_FIELDS = ["iteration", "rank", *FILTER_FIELDS[1:], "discarded"]


def merge_filter_rows(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ``filter_log.csv`` row per iteration from every rank's rows.

    Counts (batch, kept, recalled, material, synthetic, label counts) are summed over ranks; ``mu1`` and
    ``sigma1`` are the mean of the ranks' finite values (NaN when none). One rank: its rows unchanged.

    Args:
        per_rank: Each rank's rows for the same iterations, in rank order.
    """
    if len(per_rank) == 1:
        return per_rank[0]
    merged = []
    for rows in zip(*per_rank, strict=True):
        phases = sorted({str(r["phase"]) for r in rows})
        out: dict[str, Any] = {"iteration": rows[0]["iteration"], "phase": "/".join(phases)}
        for key in ("batch", "kept", "recalled", "material", "synthetic"):
            out[key] = sum(int(r[key]) for r in rows)
        for key in ("mu1", "sigma1"):
            values = [float(r[key]) for r in rows if math.isfinite(float(r[key]))]
            out[key] = sum(values) / len(values) if values else float("nan")
        label_keys = ("anomalies", "anomalies_discarded", "normals", "normals_discarded")
        if all(k in r for r in rows for k in label_keys):
            for key in label_keys:
                out[key] = sum(int(r[key]) for r in rows)
        merged.append(out)
    return merged


def summarize_filter_log(path: str | Path, from_fraction: float = 0.5) -> dict[str, Any]:
    """Filter statistics over the iterations after ``from_fraction`` of training, and per phase.

    Returns:
        ``iterations`` counted, ``abnormal_recall`` (discarded anomalies / anomalies seen, pooled),
        ``abnormal_recall_batch_mean`` (mean of the per-batch recall over batches holding an anomaly),
        ``normal_discard_rate`` (discarded normals / normals seen), ``mean_kept`` and
        ``synthetic_total``; and under ``phases`` the same figures over every iteration of each phase
        (``cold``, ``regular``, in order of appearance), so the cold start can be judged on its own.
        Label-based figures are None when labels were unknown.
    """
    rows = read_csv_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    last = max(int(r["iteration"]) for r in rows)
    late = [r for r in rows if int(r["iteration"]) > from_fraction * last]
    out = {**_figures(late), "from_iteration": int(from_fraction * last) + 1}
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    out["phases"] = {p: {**_figures([r for r in rows if r["phase"] == p]), **_span(rows, p)} for p in phases}
    return out


def write_filter_summary(run: str | Path) -> dict[str, Any]:
    """Summarise a finished SSFilter run's ``filter_log.csv`` into its ``filter_summary.json``, and log it.

    Every command that trains an SSFilter run (``train``, ``benchmark``) writes the same file, so the
    in-batch filter's abnormal recall sits next to each run's metrics.
    """
    run = Path(run)
    summary = summarize_filter_log(run / FILTER_LOG_FILE)
    atomic_write_json(run / FILTER_SUMMARY_FILE, summary)
    if summary["abnormal_recall"] is not None:
        log.info(
            "abnormal recall in the second half of training: %.3f (normals discarded: %.3f)",
            summary["abnormal_recall"],
            summary["normal_discard_rate"],
        )
        for name, fig in summary["phases"].items():
            if fig["abnormal_recall"] is not None:
                log.info(
                    "%s phase (iterations %d-%d): abnormal recall %.3f, normals discarded %.3f",
                    name,
                    fig["first_iteration"],
                    fig["last_iteration"],
                    fig["abnormal_recall"],
                    fig["normal_discard_rate"],
                )
    return summary


def _span(rows: list[dict[str, str]], phase: str) -> dict[str, int]:
    """First and last iteration of ``phase``."""
    its = [int(r["iteration"]) for r in rows if r["phase"] == phase]
    return {"first_iteration": min(its), "last_iteration": max(its)}


def _figures(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Recall, discard rate and counts over ``rows`` (see :func:`summarize_filter_log`)."""
    labelled = [r for r in rows if r.get("anomalies", "") != ""]
    anomalies = sum(int(r["anomalies"]) for r in labelled)
    discarded = sum(int(r["anomalies_discarded"]) for r in labelled)
    normals = sum(int(r["normals"]) for r in labelled)
    normals_discarded = sum(int(r["normals_discarded"]) for r in labelled)
    per_batch = [
        int(r["anomalies_discarded"]) / int(r["anomalies"]) for r in labelled if int(r["anomalies"]) > 0
    ]
    return {
        "iterations": len(rows),
        "abnormal_recall": discarded / anomalies if anomalies else None,
        "abnormal_recall_batch_mean": sum(per_batch) / len(per_batch) if per_batch else None,
        "anomalies_seen": anomalies if labelled else None,
        "normal_discard_rate": normals_discarded / normals if normals else None,
        "mean_kept": sum(int(r["kept"]) for r in rows) / len(rows) if rows else None,
        "synthetic_total": sum(int(r["synthetic"]) for r in rows),
    }
