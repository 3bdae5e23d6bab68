"""Training iteration cost: plain Dinomaly vs SSFilter (in-batch filter on) on the same config.

Prints seconds per iteration, images/s and the ratio ssfilter / dinomaly (issue: at most 2.5x).
Runs on generated images with a randomly initialised encoder, so it needs no data or weights; the
first iterations (image decoding, feature caching, warm-up) are excluded from the timing.

    python benchmarks/bench_training.py --preset cpu-fast --iters 30 --warmup 5
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
from pathlib import Path

import torch

from ssfilter.config import apply_overrides, get_preset
from ssfilter.data.datasets import discover
from ssfilter.data.synthetic import make_synthetic_category
from ssfilter.training.trainer import Trainer


def _time_method(method: str, args: argparse.Namespace, data: Path, out: Path) -> dict[str, float]:
    cfg = get_preset(args.preset)
    cfg.train.method = method
    cfg.train.iters = args.warmup + args.iters
    cfg.train.checkpoint_every = cfg.train.iters
    cfg.train.device = args.device
    cfg.model.random_init = True
    if args.batch_size:
        cfg.data.batch_size = args.batch_size
    apply_overrides(cfg, args.set)
    samples = discover(data, "train")
    Trainer(cfg, samples, out / method, progress=False).fit()
    with (out / method / "train_log.csv").open() as fh:
        secs = [float(r["seconds"]) for r in csv.DictReader(fh)][args.warmup :]
    per_it = sum(secs) / len(secs)
    return {"s_per_iter": per_it, "images_per_s": cfg.data.batch_size / per_it, "batch": cfg.data.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-fast")
    parser.add_argument("--iters", type=int, default=30, help="timed iterations per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first iterations")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], help="config override SECTION.KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        cfg = get_preset(args.preset)
        n = max(64, 4 * (args.batch_size or cfg.data.batch_size))
        data = make_synthetic_category(
            tmp_path / "data", n_train_good=n, n_test_good=1, n_test_defect=1, size=cfg.data.resize, seed=0
        )
        results = {m: _time_method(m, args, data, tmp_path) for m in ("dinomaly", "ssfilter")}
    ratio = results["ssfilter"]["s_per_iter"] / results["dinomaly"]["s_per_iter"]
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(
        f"preset {args.preset}, device {args.device}, batch {results['dinomaly']['batch']}, "
        f"{args.iters} timed iters"
    )
    print(f"{'method':<10} {'s/iter':>8} {'images/s':>9}")
    for m, r in results.items():
        print(f"{m:<10} {r['s_per_iter']:>8.3f} {r['images_per_s']:>9.1f}")
    print(f"ratio ssfilter/dinomaly: {ratio:.2f}x (target <= 2.5x)")
    print(json.dumps({"results": results, "ratio": ratio}))


if __name__ == "__main__":
    main()
