"""What tiling costs: seconds per image and tiles per image of the tiled scorer against the resized one.

``data.coverage = "tiles"`` scores every ``crop x crop`` tile of the image scaled by ``tile_scale``
(:mod:`ssfilter.data.tiling`), so inference costs about the number of tiles times a resized image's. This
times :func:`ssfilter.evaluation.scorers.scorer_for` on the first ``--images`` images of ``--data`` (any
folder, or a category's ``train/good``) for the whole-image resize and each ``--scales`` value, with a
randomly initialised ``cpu-fast`` model (speed does not depend on the weights), and prints one JSON
document: per variant the scaled size, tiles per image, seconds per image and the ratio to the resize.
A scale below ``crop / short side`` fits the short side to one tile: the aspect-aware resize.

Example::

    python -m benchmarks.bench_tiling --data ../shared/data/bsdata --scales 1.0 0.5 0.01
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_info, random_config, random_model
from ssfilter.data.datasets import discover
from ssfilter.data.images import read_image
from ssfilter.data.tiling import TileGrid
from ssfilter.data.transforms import ScaledTransform, transform_for
from ssfilter.evaluation.scorers import score_tensors, scorer_for

__all__ = ["main", "time_variant"]


def time_variant(overrides: dict[str, Any], images: list[Any], repeats: int) -> dict[str, Any]:
    """Median seconds per image (over ``repeats`` passes) of one coverage setting, and its tile count."""
    cfg = random_config("cpu-fast", overrides)
    model = random_model(cfg, torch.device("cpu"))
    transform = transform_for(cfg, model.encoder)
    scorer = scorer_for(model, cfg)
    tensors = [transform(im) for im in images]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for t in tensors:
                score_tensors(scorer, [t])
        times.append((time.perf_counter() - start) / len(tensors))
    out = {
        "size": list(tensors[0].shape[-2:][::-1]),
        "tiles": 1,
        "seconds_per_image": statistics.median(times),
    }
    if isinstance(transform, ScaledTransform):
        h, w = tensors[0].shape[-2:]
        out["tiles"] = len(TileGrid(int(h), int(w), cfg.data.crop, cfg.data.tile_overlap))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Time the resize and each tile scale; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_tiling", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="a folder of images or a category")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5], help="tile scales to time")
    p.add_argument("--images", type=int, default=4, help="images timed")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--crop", type=int, default=224, help="model input side (cpu-fast: 224)")
    args = p.parse_args(argv)
    images = [read_image(s.path) for s in discover(args.data, "train")[: max(1, args.images)]]
    base = {"data.crop": args.crop, "data.resize": args.crop}
    whole = time_variant({**base, "data.coverage": "whole"}, images, args.repeats)
    rows = {"whole": whole}
    for scale in args.scales:
        row = time_variant({**base, "data.coverage": "tiles", "data.tile_scale": scale}, images, args.repeats)
        row["ratio_to_whole"] = row["seconds_per_image"] / whole["seconds_per_image"]
        rows[f"tiles@{scale:g}"] = row
    json.dump({"machine": machine_info(torch.device("cpu")), "variants": rows}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
