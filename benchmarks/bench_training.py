"""Section "training": cost of one training iteration, plain Dinomaly vs SSFilter (in-batch filter on).

Both methods train with :class:`ssfilter.training.trainer.Trainer` on the same generated images, with a
randomly initialised encoder (no data or weights needed); their times per iteration (between the trainer's
``on_iteration`` callbacks, on the run's clock) are compared. The first iterations -- one pass over the
data, which decodes and encodes every image before the trainer's feature cache takes over -- are excluded,
so the figures are the steady state of a training run whose features fit the cache. Images/s counts the
batch's images (SSFilter trains on the kept ones plus its synthetic anomalies).

Threshold carried over from the earlier issue: SSFilter at most 2.5x the time of Dinomaly per iteration.
"""

from __future__ import annotations

import itertools
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, now, random_config, synchronize
from ssfilter.data.datasets import discover
from ssfilter.data.synthetic import make_synthetic_category
from ssfilter.training.trainer import Trainer

__all__ = ["run"]

SECTION = "training"


def _time_method(
    method: str, preset: str, overrides: dict[str, object], warmup: int, iters: int, data: Path, ctx: Context
) -> float:
    """Median seconds per timed iteration of one method (read with :func:`benchmarks.common.now`)."""
    cfg = random_config(preset, overrides)
    cfg.train.method = method
    cfg.train.iters = warmup + iters
    cfg.train.checkpoint_every = cfg.train.iters
    cfg.train.device = ctx.device.type
    stamps: list[float] = []

    def stamp(iteration: int, row: dict[str, Any]) -> None:
        synchronize(ctx.device)
        stamps.append(now())

    trainer = Trainer(
        cfg, discover(data, "train"), ctx.tmp / f"train_{preset}_{method}", progress=False, on_iteration=stamp
    )
    trainer.fit()
    # Time between the ends of consecutive iterations; the first `warmup` (model building included) drop.
    secs = [b - a for a, b in itertools.pairwise(stamps)][warmup - 1 :]
    return statistics.median(secs)


def run(ctx: Context) -> list[Row]:
    """Train both methods for a few iterations and compare their time per iteration.

    Args:
        ctx: The run's context (``quick``: crop 64, batch 4, one timed iteration).

    Returns:
        One row: SSFilter vs Dinomaly seconds per iteration, with images/s in the notes.
    """
    preset = "cpu-fast"
    if ctx.quick:
        overrides: dict[str, object] = {"data.resize": 72, "data.crop": 64, "data.batch_size": 4}
        warmup, iters = 1, 1
    else:
        overrides, warmup, iters = {}, 2, 4
    cfg = random_config(preset, overrides)
    batch = cfg.data.batch_size
    # Exactly `warmup` iterations per epoch: the untimed ones encode every image once.
    data = make_synthetic_category(
        ctx.tmp / "train_data",
        n_train_good=warmup * batch,
        n_test_good=1,
        n_test_defect=1,
        size=cfg.data.resize,
        seed=0,
    )
    setting = (
        f"{preset} ({cfg.model.backbone}, crop {cfg.data.crop}, decoder {cfg.model.decoder_dim}), "
        f"B {batch}, K {cfg.batch_filter.mc_passes}"
    )
    ctx.log(f"[{SECTION}] {setting}")
    t = {m: _time_method(m, preset, overrides, warmup, iters, data, ctx) for m in ("dinomaly", "ssfilter")}
    return [
        Row(
            SECTION,
            setting,
            "ssfilter s/iter",
            t["ssfilter"],
            "dinomaly s/iter",
            t["dinomaly"],
            "s",
            target="<= 2.5x",
            met=t["ssfilter"] / t["dinomaly"] <= 2.5,
            notes=(
                f"median of {iters} iterations after {warmup} untimed; images/s: "
                f"ssfilter {batch / t['ssfilter']:.2f}, dinomaly {batch / t['dinomaly']:.2f}"
            ),
        )
    ]
