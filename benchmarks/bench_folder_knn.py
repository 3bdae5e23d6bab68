"""Would a larger comparison group give the dataset filter a better per-image score? A folder-wide probe.

Algorithm 1 compares each image's patches with the patches of the 7 other images of its batch (``cpu-fast``)
and the dataset filter averages that over kappa_1 random batches. This probe gives every image a fixed,
larger group instead: the patches of ``--references`` random OTHER images of the folder (the image itself
is never among them). A patch's score is ``1 -`` the mean cosine similarity of its ``k`` best matches in
that group, the image's the mean of its top-1% patch scores (Algorithm 1's definitions, frozen encoder
descriptors, no decoder), for ``k`` = 1 and 3. It prints the AUROC of those scores against the injected
images of a noisy split and the most any cut on them removes while keeping 93% / 95% of the good images
(:func:`benchmarks.filter_bounds.best_recall`), to read next to the bounds of the filter's own scores.

Example (the README's dataset filter section)::

    python -m benchmarks.bench_folder_knn --data ../shared/data/bsdata --noise 0.2 --references 64
        --weights ../shared/weights/mobilenet_v2_imagenet.safetensors   (one command line)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.filter_bounds import best_recall
from ssfilter.config import get_preset
from ssfilter.coverage import resolve_coverage
from ssfilter.data.formats import resolve_category
from ssfilter.data.tile_dataset import training_dataset
from ssfilter.filtering.patch_scoring import image_scores
from ssfilter.training.checkpoint import build_model

__all__ = ["folder_scores", "main"]

#: Best matches averaged per patch.
KS = (1, 3)


@torch.no_grad()
def folder_scores(desc: torch.Tensor, references: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Image scores of ``desc [N, HW, D]`` against ``references`` random other images each, per ``k``."""
    n, _, d = desc.shape
    desc = F.normalize(desc.float(), dim=-1)
    m = min(references, n - 1)
    gen = torch.Generator().manual_seed(seed)
    patches: dict[int, list[torch.Tensor]] = {k: [] for k in KS}
    for i in range(n):
        others = torch.randperm(n - 1, generator=gen)[:m]
        others = others + (others >= i).long()  # skip image i itself
        sim = desc[i] @ desc[others].reshape(-1, d).T
        best = sim.topk(min(max(KS), sim.shape[1]), dim=1).values
        for k in KS:
            patches[k].append(1 - best[:, :k].mean(dim=1))
    return {k: image_scores(torch.stack(v)).numpy() for k, v in patches.items()}


@torch.no_grad()
def _descriptors(model: torch.nn.Module, dataset: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Frozen-encoder patch descriptors ``[N, HW, D]`` of every image, 16 at a time."""
    parts = []
    for s in range(0, len(dataset), 16):
        images = torch.stack([dataset[j]["image"] for j in range(s, min(s + 16, len(dataset)))])
        parts.append(model.encoder.patch_descriptors(model.encode(images)))
    return torch.cat(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Probe the folder-wide comparison score on one noisy split; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_folder_knn", description=__doc__)
    p.add_argument("--data", required=True, help="a labelled category (MVTec layout)")
    p.add_argument("--noise", type=float, default=0.2, help="SoftPatch noise ratio (with --overlap)")
    p.add_argument("--weights", default=None, help="MobileNetV2 weights file (default: random, smoke tests)")
    p.add_argument("--references", type=int, default=64, help="other images each image is compared with")
    p.add_argument("--crop", type=int, default=224, help="model input size")
    p.add_argument("--coverage", choices=("crop", "whole"), default="crop", help="data.coverage")
    args = p.parse_args(argv)
    cfg = get_preset("cpu-fast")
    cfg.model.weights = args.weights
    cfg.data.crop, cfg.data.resize = args.crop, args.crop * 8 // 7  # cpu-fast's 256 / 224 ratio
    cfg.data.coverage = args.coverage
    cfg = resolve_coverage(cfg, args.coverage)
    samples, _, _ = resolve_category(args.data).noisy_split(args.noise, overlap=True, seed=0)
    start = time.perf_counter()
    model = build_model(cfg, allow_random=args.weights is None).eval()
    dataset = training_dataset(cfg, samples, model.encoder)
    desc = _descriptors(model, dataset)
    scores = folder_scores(desc, args.references)
    labels = np.array([s.label for s in samples])
    from sklearn.metrics import roc_auc_score

    out: dict[str, object] = {
        "data": args.data,
        "noise": args.noise,
        "coverage": args.coverage,
        "crop": args.crop,
        "references": args.references,
        "n": len(samples),
        "patches": int(desc.shape[1]),
        "truth": float(labels.mean()),
    }
    both = 0 < labels.sum() < labels.size
    for k, v in scores.items():
        out[f"k{k}"] = {
            "auroc": float(roc_auc_score(labels, v)) if both else None,
            "removed_at_93_kept": best_recall(v, labels, 0.93) if both else None,
            "removed_at_95_kept": best_recall(v, labels, 0.95) if both else None,
        }
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
