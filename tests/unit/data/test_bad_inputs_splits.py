"""Bad data-set layouts (issue 7, item 1): tiny training sets, test folders without or with broken masks.

Uses a random tiny model (no training needed for the data paths checked here) and the conftest's tiny config.
"""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.api import Detector
from ssfilter.data.datasets import discover
from ssfilter.evaluation.evaluate import evaluate_model
from ssfilter.evaluation.metrics import IMAGE_KEYS, PIXEL_KEYS, UndefinedMetricWarning
from ssfilter.training.checkpoint import build_model


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _loss_column(run: Path) -> list[float]:
    with (run / "train_log.csv").open(encoding="utf-8", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.parametrize(("n_images", "method"), [(2, "dinomaly"), (1, "ssfilter"), (3, "ssfilter")])
def test_training_set_smaller_than_one_batch(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, n_images: int, method: str
) -> None:
    data = tmp_path / "few"
    data.mkdir()
    for p in sorted((synthetic_mvtec / "train" / "good").glob("*.png"))[:n_images]:
        shutil.copy(p, data / p.name)
    tiny_config.train.method = method
    tiny_config.train.iters = 4
    tiny_config.calibration.after_training = False
    assert tiny_config.data.batch_size > n_images
    with pytest.warns(UserWarning, match=f"has {n_images} images, fewer than the batch size"):
        Detector(tiny_config).fit(data, tmp_path / "run", progress=False)
    losses = _loss_column(tmp_path / "run")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


def test_test_folder_without_any_masks(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    data = _copy(synthetic_mvtec, tmp_path / "data")
    shutil.rmtree(data / "ground_truth")
    with pytest.warns(UserWarning, match="6 of 6 anomalous test images .* have no ground-truth mask"):
        samples = discover(data, "test")
    model = build_model(tiny_config, allow_random=True)
    with pytest.warns(UndefinedMetricWarning, match="no ground-truth mask"):
        res = evaluate_model(model, samples, tiny_config, progress=False)
    assert all(res.metrics[k] is None for k in PIXEL_KEYS)  # undefined, not 0 or 0.5
    assert all(0.0 <= res.metrics[k] <= 1.0 for k in IMAGE_KEYS)


def test_test_images_with_mis_sized_masks(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    data = _copy(synthetic_mvtec, tmp_path / "data")
    masks = sorted((data / "ground_truth").rglob("*_mask.png"))
    for mask in masks[:3]:
        with Image.open(mask) as m:
            m.resize((m.width // 2, m.height + 10), Image.Resampling.NEAREST).save(mask)
    model = build_model(tiny_config, allow_random=True)
    with pytest.warns(UserWarning, match="resized the mask"):
        res = evaluate_model(model, discover(data, "test"), tiny_config, progress=False)
    assert all(v is not None and 0.0 <= v <= 1.0 for k, v in res.metrics.items() if k != "P-AUPRO-dinomaly")


def test_evaluate_skips_unreadable_test_images_and_masks(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    data = _copy(synthetic_mvtec, tmp_path / "data")
    bad_image = sorted((data / "test" / "good").glob("*.png"))[0]
    bad_image.write_bytes(b"")
    defect = next(p for p in sorted((data / "test").iterdir()) if p.name != "good")
    image_with_bad_mask = sorted(defect.glob("*.png"))[0]
    mask = data / "ground_truth" / defect.name / f"{image_with_bad_mask.stem}_mask.png"
    mask.write_bytes(mask.read_bytes()[:40])  # truncated
    det = Detector(tiny_config)
    det.model = build_model(tiny_config, allow_random=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        with pytest.warns(UserWarning, match="skipped 2 unreadable test image"):
            payload = det.evaluate(data, out=tmp_path / "m.json", progress=False)
    skipped = {s["path"]: s["reason"] for s in payload["skipped"]}
    assert set(skipped) == {str(bad_image.resolve()), str(image_with_bad_mask.resolve())}
    assert "empty" in skipped[str(bad_image.resolve())]
    assert str(mask.resolve()) in skipped[str(image_with_bad_mask.resolve())]
    assert payload["n_test"] == 9 - 2
    assert {i["path"] for i in payload["images"]}.isdisjoint(skipped)


def test_constant_test_images_give_finite_scores(tmp_path: Path, tiny_config) -> None:
    """All-equal images: identical scores, finite; I-AUROC is chance (0.5), a defined value."""
    root = tmp_path / "flat"
    for rel in ["train/good/0.png", "test/good/0.png", "test/good/1.png", "test/dent/0.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (128, 128, 128)).save(root / rel)
    (root / "ground_truth" / "dent").mkdir(parents=True)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[20:30, 20:30] = 255
    Image.fromarray(mask).save(root / "ground_truth" / "dent" / "0_mask.png")
    model = build_model(tiny_config, allow_random=True)
    res = evaluate_model(model, discover(root, "test"), tiny_config, progress=False)
    assert all(math.isfinite(s) for s in res.scores) and len(set(res.scores)) == 1
    assert res.metrics["I-AUROC"] == pytest.approx(0.5)
    assert all(v is None or 0.0 <= v <= 1.0 for v in res.metrics.values())
