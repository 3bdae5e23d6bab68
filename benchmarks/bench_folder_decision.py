"""The dataset filter's folder-level outlier cut against the truth of a noisy split (one data set, one seed).

Runs :func:`ssfilter.filtering.dataset_filter.filter_dataset` with patch scoring only (no MC passes): the
mean patch comparison score ``A`` it gives is exactly that of a full filter run with the same config and
seed, because ``A`` needs only the frozen encoder. The decoder stays untrained; no training run is needed.
Prints one JSON line: the truth, the AUROC of mean ``A``, and the removed / kept shares of the outlier cut
at each ``k``, with the contamination estimates (mixture and clipped-cut share).

Example (the README's table)::

    python -m benchmarks.bench_folder_decision --data ../shared/data/mvtec_bottle --noise 0.1
        --weights ../shared/weights/mobilenet_v2_imagenet.safetensors   (one command line)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from ssfilter.config import get_preset
from ssfilter.coverage import resolve_coverage
from ssfilter.data.formats import resolve_category
from ssfilter.filtering.contamination import estimate_contamination
from ssfilter.filtering.dataset_filter import filter_dataset
from ssfilter.filtering.folder_decision import apply_outlier_decision
from ssfilter.training.checkpoint import build_model

__all__ = ["main"]


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else None


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the outlier cut on one noisy split; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_folder_decision", description=__doc__)
    p.add_argument("--data", required=True, help="a labelled category (MVTec layout)")
    p.add_argument("--noise", type=float, default=0.0, help="SoftPatch noise ratio (with --overlap)")
    p.add_argument("--weights", default=None, help="MobileNetV2 weights file (default: random, smoke tests)")
    p.add_argument("--ks", default="3,4,5", help="comma separated k of the cut")
    p.add_argument("--seed", type=int, default=0, help="filter seed")
    p.add_argument("--coverage", choices=("crop", "whole"), default="crop", help="data.coverage")
    args = p.parse_args(argv)
    cfg = get_preset("cpu-fast")
    cfg.model.weights = args.weights
    cfg.batch_filter.uncertainty = False
    cfg.train.seed = args.seed
    cfg.data.coverage = args.coverage
    cfg = resolve_coverage(cfg, args.coverage)
    samples, _, _ = resolve_category(args.data).noisy_split(args.noise, overlap=True, seed=0)
    start = time.perf_counter()
    model = build_model(cfg, allow_random=args.weights is None)
    records = filter_dataset(model, samples, cfg, progress=False)
    labels = np.array([r.label for r in records])
    a = np.array([r.mean_score for r in records])
    out: dict[str, object] = {
        "data": args.data,
        "noise": args.noise,
        "coverage": args.coverage,
        "n": len(records),
        "truth": float(labels.mean()),
        "seconds": time.perf_counter() - start,
        "auroc_mean_a": _auroc(a, labels),
        "mixture_estimate": estimate_contamination(a).estimate,
    }
    for k in (float(x) for x in args.ks.split(",")):
        apply_outlier_decision(records, k)
        cut = np.array([r.decision == "anomalous" for r in records])
        out[f"k{k:g}"] = {
            "removed": float(cut[labels == 1].mean()) if labels.any() else None,
            "kept": float((~cut[labels == 0]).mean()),
            "share": float(cut.mean()),
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
