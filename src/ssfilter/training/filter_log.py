"""Summaries of the in-batch filter log (``filter_log.csv``) -- the paper's "abnormal recall".

When the training set's true labels are known (noise-injected benchmarks), every iteration logs how
many anomalies its batch held and how many the filter discarded. The abnormal recall is the share
of those anomalies that were discarded; the normal discard rate is the price paid in clean images.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["summarize_filter_log"]


def summarize_filter_log(path: str | Path, from_fraction: float = 0.5) -> dict[str, Any]:
    """Filter statistics over the iterations after ``from_fraction`` of training.

    Returns:
        ``iterations`` counted, ``abnormal_recall`` (discarded anomalies / anomalies seen, pooled),
        ``abnormal_recall_batch_mean`` (mean of the per-batch recall over batches holding an anomaly),
        ``normal_discard_rate`` (discarded normals / normals seen), ``mean_kept`` and
        ``synthetic_total``. Label-based figures are None when labels were unknown.
    """
    with Path(path).open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path} has no rows")
    last = max(int(r["iteration"]) for r in rows)
    rows = [r for r in rows if int(r["iteration"]) > from_fraction * last]
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
        "from_iteration": int(from_fraction * last) + 1,
        "abnormal_recall": discarded / anomalies if anomalies else None,
        "abnormal_recall_batch_mean": sum(per_batch) / len(per_batch) if per_batch else None,
        "anomalies_seen": anomalies if labelled else None,
        "normal_discard_rate": normals_discarded / normals if normals else None,
        "mean_kept": sum(int(r["kept"]) for r in rows) / len(rows),
        "synthetic_total": sum(int(r["synthetic"]) for r in rows),
    }
