"""``ssfilter demo``: an offline end-to-end run on generated data, for a first look on any machine.

It generates a small industrial-looking image set (parts with scratches, dents and stains, with
masks), hides a few defective images in the training folder, trains a detector and evaluates it.
No data set, no weights and no network are needed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ssfilter.config import Config, get_preset
from ssfilter.data.synthetic import make_synthetic_category

__all__ = ["demo_config", "run_demo"]

RANDOM_ENCODER_NOTE = """
======================================================================================
 NOTE: no pretrained encoder weights were found, so this demo uses a RANDOMLY
 INITIALISED encoder. That is enough to show the pipeline end to end on generated
 data, but real inspection data needs pretrained weights: pass --weights with a
 DINOv2 checkpoint (see README, "Backbones and weights").
======================================================================================
""".strip("\n")


def demo_config(weights: str | None = None) -> Config:
    """The demo's configuration: MobileNetV2 taps at 128 px, a narrow decoder, 80 iterations."""
    cfg = get_preset("cpu-fast")
    cfg.preset = "demo"
    cfg.data.resize, cfg.data.crop, cfg.data.batch_size, cfg.data.eval_size = 128, 128, 8, 128
    cfg.model.backbone = "mobilenet_v2"
    cfg.model.weights = weights
    cfg.model.decoder_dim, cfg.model.decoder_heads = 64, 4
    cfg.train.iters, cfg.train.warmup_iters, cfg.train.hard_mining_ramp = 80, 10, 80
    cfg.train.checkpoint_every = 40
    cfg.train.device = "auto"
    return cfg


def run_demo(
    out: str | Path = "ssfilter_demo", *, weights: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Generate data, train, evaluate; returns the summary written to ``out/summary.json``."""
    from ssfilter.api import Detector
    from ssfilter.io import atomic_write_json

    out = Path(out)
    data = out / "data" / "widget"
    if not data.exists():
        make_synthetic_category(
            data,
            kind="object",
            n_train_good=48,
            n_test_good=12,
            n_test_defect=18,
            n_train_defect=5,
            size=128,
            seed=0,
        )
    weights = weights or os.environ.get("SSFILTER_DEMO_WEIGHTS")
    cfg = demo_config(weights)
    cfg.model.weights = weights
    if weights is None:
        print(RANDOM_ENCODER_NOTE, flush=True)
    run = out / "run"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    cfg.model.random_init = weights is None
    det = Detector(cfg).fit(data, run, progress=progress)
    train_s = time.perf_counter() - t0
    result = det.evaluate(data, out=out / "metrics.json", progress=progress)
    summary = {
        "data": str(data),
        "run": str(run),
        "random_encoder": weights is None,
        "train_seconds": round(train_s, 1),
        "metrics": result["metrics"],
        "n_test": result["n_test"],
    }
    atomic_write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=2))
    print(f"demo finished: summary in {out / 'summary.json'}")
    return summary
