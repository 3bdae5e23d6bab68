"""What any cut on one per-image score of a dataset filter run could reach, given the truth.

Issue 14 asks the dataset filter to remove at least 90% of the injected defects while keeping at least 93%
of the good images. Whatever rule decides (the paper's vote, the folder's outlier cut, a threshold chosen
by hand), if it ranks the images by one score it cannot beat that score's ROC curve: keeping a share ``q``
of the good images means cutting above the ``q``-quantile of their scores, and the defects above that
cut are the most it can remove. This reads a written ``filter.csv`` and the ``noise_split.json`` that says
which images were injected, and prints for each score (mean ``A``, mean ``U``, the keep count of the vote)
its AUROC and that best recall at each ``q``: a bound set by the scores, not by a threshold rule.

Example (the README's dataset filter section)::

    python -m benchmarks.filter_bounds --csv BENCH/alpha_0.2/filter/filter.csv
        --split BENCH/alpha_0.2/noise_split.json   (one command line)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssfilter.data.noise import NoiseSplit
from ssfilter.io import read_csv_rows

__all__ = ["best_recall", "main", "score_bounds"]

#: Scores of a filter.csv, higher = more suspect (the keep count is negated: fewer keeps = more suspect).
SCORES = {
    "mean A": ("mean_score", 1.0),
    "mean U": ("mean_uncertainty", 1.0),
    "keep count": ("times_kept", -1.0),
}


def best_recall(scores: np.ndarray, labels: np.ndarray, kept: float) -> float:
    """Largest share of ``labels == 1`` strictly above a cut that keeps at least ``kept`` of the others."""
    good = np.sort(scores[labels == 0])
    if good.size == 0 or not (labels == 1).any():
        return float("nan")
    # The cut keeps every good image scoring at most it: the ceil(kept * n)-th smallest good score.
    cut = good[max(int(np.ceil(kept * good.size)) - 1, 0)]
    return float((scores[labels == 1] > cut).mean())


def score_bounds(
    rows: Sequence[dict[str, str]], injected: set[str], kept: Sequence[float]
) -> dict[str, dict[str, float | None]]:
    """AUROC and :func:`best_recall` at every ``kept`` share for each score of ``rows`` (filter.csv)."""
    from sklearn.metrics import roc_auc_score

    labels = np.array([int(Path(r["path"]).resolve().as_posix() in injected) for r in rows])
    out: dict[str, dict[str, float | None]] = {}
    for name, (column, sign) in SCORES.items():
        values = np.array([float(r[column]) for r in rows]) * sign
        if not np.isfinite(values).all():
            continue  # e.g. no uncertainty in a patch-scoring-only run
        entry: dict[str, float | None] = {
            "auroc": float(roc_auc_score(labels, values)) if 0 < labels.sum() < labels.size else None
        }
        entry.update({f"recall_at_{100 * q:g}_kept": best_recall(values, labels, q) for q in kept})
        out[name] = entry
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the bounds of one filter run as JSON; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.filter_bounds", description=__doc__)
    p.add_argument("--csv", type=Path, required=True, help="a dataset filter's filter.csv")
    p.add_argument("--split", type=Path, required=True, help="the noise_split.json of the filtered set")
    p.add_argument("--kept", default="0.93,0.95,0.97", help="comma separated shares of good images kept")
    args = p.parse_args(argv)
    rows = read_csv_rows(args.csv)
    injected = {Path(x).resolve().as_posix() for x in NoiseSplit.load(args.split).injected}
    kept = [float(x) for x in args.kept.split(",") if x.strip()]
    result = {
        "csv": str(args.csv),
        "n": len(rows),
        "injected": sum(Path(r["path"]).resolve().as_posix() in injected for r in rows),
        "scores": score_bounds(rows, injected, kept),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
