"""What any cut on one per-image score of a dataset filter run could reach, given the truth.

Issue 14 asks the dataset filter to remove at least 90% of the injected defects while keeping at least 93%
of the good images. Whatever rule decides (the paper's vote, the folder's outlier cut, a threshold chosen
by hand), if it ranks the images by one score it cannot beat that score's ROC curve: keeping a share ``q``
of the good images means cutting above the ``q``-quantile of their scores, and the defects above that
cut are the most it can remove. This reads a written ``filter.csv`` and the ``noise_split.json`` that says
which images were injected, and prints for each score (mean ``A``, mean ``U``, the keep count of the vote)
its AUROC and that best recall at each ``q``: a bound set by the scores, not by a threshold rule.

Next to the bounds it prints what the folder's robust cut (``--decision outlier``: clipped median and
MAD of the log-scores, :func:`~ssfilter.filtering.folder_decision.clipped_median_scale`) removes and
keeps at each ``--k`` on mean ``A``, on mean ``U`` and on either of them, so that a fixed rule can be read
against its bound on every run without choosing ``k`` on any one of them. Last, ``decisions``: what the
run's own decision (the ``decision`` column) and ``--decision estimate`` (re-decided here from the same
scores) removed and kept, and the contamination estimate next to the true share.

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
from ssfilter.filtering.contamination import contamination_entry
from ssfilter.filtering.filter_outputs import FilterRecord
from ssfilter.filtering.folder_decision import apply_estimate_decision, clipped_median_scale
from ssfilter.io import read_csv_rows

__all__ = ["best_recall", "decisions", "folder_cuts", "main", "score_bounds"]

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


def _labels(rows: Sequence[dict[str, str]], injected: set[str]) -> np.ndarray:
    """1 for the rows whose image was injected, else 0."""
    return np.array([int(Path(r["path"]).resolve().as_posix() in injected) for r in rows])


def score_bounds(
    rows: Sequence[dict[str, str]], injected: set[str], kept: Sequence[float]
) -> dict[str, dict[str, float | None]]:
    """AUROC and :func:`best_recall` at every ``kept`` share for each score of ``rows`` (filter.csv)."""
    from sklearn.metrics import roc_auc_score

    labels = _labels(rows, injected)
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


def _robust_z(values: np.ndarray, k: float) -> np.ndarray:
    """Robust z of the log-scores against the folder's clipped median and scale at ``k``."""
    logs = np.log(values)  # positive: folder_cuts leaves out scores with any value <= 0
    med, scale = clipped_median_scale(logs, k)
    return (logs - med) / scale if scale > 0 else np.zeros_like(logs)


def folder_cuts(
    rows: Sequence[dict[str, str]], injected: set[str], ks: Sequence[float]
) -> dict[str, dict[str, dict[str, float]]]:
    """Share of defects removed and good images kept by the robust cut at each ``k`` (A, U, A or U)."""
    labels = _labels(rows, injected)
    columns = {"mean A": "mean_score", "mean U": "mean_uncertainty"}
    values = {n: np.array([float(r[c]) for r in rows]) for n, c in columns.items()}
    values = {n: v for n, v in values.items() if np.isfinite(v).all() and (v > 0).all()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k in ks:
        flags = {n: _robust_z(v, k) > k for n, v in values.items()}
        if len(flags) == 2:
            flags["mean A or mean U"] = flags["mean A"] | flags["mean U"]
        for name, cut in flags.items():
            removed = float(cut[labels == 1].mean()) if (labels == 1).any() else float("nan")
            kept = float((~cut[labels == 0]).mean()) if (labels == 0).any() else float("nan")
            out.setdefault(name, {})[f"k={k:g}"] = {"removed": removed, "kept": kept}
    return out


def decisions(rows: Sequence[dict[str, str]], injected: set[str]) -> dict[str, dict[str, float | None]]:
    """Removed / kept of the recorded decision and of ``"estimate"``, and the estimate vs the truth."""
    labels = _labels(rows, injected)
    records = [
        FilterRecord(
            r["path"],
            int(r["times_seen"]),
            int(r["times_kept"]),
            float(r["mean_score"]),
            float(r["mean_uncertainty"]),
            "normal",
            label=int(y),
        )
        for r, y in zip(rows, labels, strict=True)
    ]
    est = contamination_entry(records)
    apply_estimate_decision(records)
    flags = {
        "recorded": np.array([r["decision"] == "anomalous" for r in rows]),
        "estimate": np.array([r.decision == "anomalous" for r in records]),
    }
    out: dict[str, dict[str, float | None]] = {
        name: {
            "removed": float(cut[labels == 1].mean()) if (labels == 1).any() else None,
            "kept": float((~cut[labels == 0]).mean()) if (labels == 0).any() else None,
        }
        for name, cut in flags.items()
    }
    if est is not None:
        out["contamination"] = {k: est[k] for k in ("estimate", "low", "high", "true")}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the bounds of one filter run as JSON; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.filter_bounds", description=__doc__)
    p.add_argument("--csv", type=Path, required=True, help="a dataset filter's filter.csv")
    p.add_argument(
        "--split", type=Path, default=None, help="noise_split.json of the filtered set (none: clean)"
    )
    p.add_argument("--kept", default="0.93,0.95,0.97", help="comma separated shares of good images kept")
    p.add_argument("--k", default="3,4,5", help="comma separated k of the folder's robust cut")
    args = p.parse_args(argv)
    rows = read_csv_rows(args.csv)
    split = NoiseSplit.load(args.split) if args.split is not None else None
    injected = {Path(x).resolve().as_posix() for x in split.injected} if split is not None else set()
    kept = [float(x) for x in args.kept.split(",") if x.strip()]
    result = {
        "csv": str(args.csv),
        "n": len(rows),
        "injected": int(_labels(rows, injected).sum()),
        "scores": score_bounds(rows, injected, kept),
        "folder_cuts": folder_cuts(rows, injected, [float(x) for x in args.k.split(",") if x.strip()]),
        "decisions": decisions(rows, injected),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
