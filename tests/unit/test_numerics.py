"""No NaN/inf reaches losses, scores or metrics on degenerate data (issue 7, item 2).

Constant images make every patch, feature and uncertainty equal: min-max normalisations, standard deviations
and cosine similarities all meet their zero-variance edge cases at once.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssfilter.api import Detector
from ssfilter.data.datasets import Sample
from ssfilter.filtering.dataset_filter import filter_dataset
from ssfilter.filtering.filter_outputs import summarize
from ssfilter.training.checkpoint import build_model, load_model


def _flat_folder(root: Path, n: int, colour: tuple[int, int, int] = (128, 128, 128)) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (64, 64), colour).save(root / f"{i:02d}.png")
    return root


@pytest.mark.parametrize("colour", [(128, 128, 128), (0, 0, 0)])
def test_ssfilter_training_on_constant_images_stays_finite(tmp_path: Path, tiny_config, colour) -> None:
    data = _flat_folder(tmp_path / "flat", 6, colour)
    tiny_config.train.method = "ssfilter"
    tiny_config.calibration.after_training = False
    run = tmp_path / "run"
    Detector(tiny_config).fit(data, run, progress=False)
    with (run / "train_log.csv").open(encoding="utf-8", newline="") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == tiny_config.train.iters and all(math.isfinite(v) for v in losses)
    with (run / "filter_log.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            assert math.isfinite(float(row["mu1"])) and math.isfinite(float(row["sigma1"]))
    model = load_model(run)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_dataset_filter_on_constant_images_has_finite_means(tmp_path: Path, tiny_config) -> None:
    data = _flat_folder(tmp_path / "flat", 5)
    samples = [Sample(str(p), -1, None, "unknown") for p in sorted(data.glob("*.png"))]
    model = build_model(tiny_config, allow_random=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = filter_dataset(model, samples, tiny_config, epochs=3, min_keep=1, progress=False, seed=0)
    for r in records:
        assert r.times_seen == 3 and 0 <= r.times_kept <= 3
        assert math.isfinite(r.mean_score) and math.isfinite(r.mean_uncertainty)
    summary = summarize(records)
    assert summary["n_kept"] + summary["n_removed"] == 5
    assert summary["noise_rate_before"] is None  # labels unknown: undefined, not 0


def test_metrics_refuse_non_finite_scores_instead_of_reporting_them() -> None:
    from ssfilter.evaluation.metrics import MetricAccumulator

    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="NaN"):
        acc.update([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="inf"):
        acc.update([0.1, 0.2], [0, 1], [[[0.0]], [[float("inf")]]], [[[False]], [[True]]])
