"""Tiling at native resolution: a tiny defect on a high-resolution part is found by tiles, not by resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssfilter.api import Detector
from ssfilter.config import load_config

WIDTH, HEIGHT = 384, 256  # a non-square part; the model input is 64 x 64
DOT = 3  # side of the defect in pixels: 0.01% of the image, half a pixel once squashed to 64 x 64


def _dot_positions() -> list[tuple[int, int]]:
    rng = np.random.default_rng(7)
    return [(int(rng.integers(20, HEIGHT - 20)), int(rng.integers(20, WIDTH - 20))) for _ in range(4)]


DOTS = _dot_positions()  # where the four defective parts carry their dot


def _dot(img: np.ndarray, index: int) -> None:
    y, x = DOTS[index]
    img[y : y + DOT, x : x + DOT] = (255, 20, 20)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, make_parts) -> tuple[Path, list[Path], list[Path]]:
    """A folder of 12 good parts; 4 good test parts and 4 with a small red dot somewhere inside."""
    return make_parts(tmp_path_factory.mktemp("tiling"), 12, HEIGHT, WIDTH, _dot)


def _fit(cfg, folder: Path, run: Path, coverage: str, iters: int = 20) -> Detector:
    cfg.data.crop = 64
    cfg.data.coverage = coverage
    cfg.model.random_init = True
    cfg.train.iters, cfg.train.method = iters, "dinomaly"
    cfg.calibration.after_training = False
    return Detector(cfg).fit(folder, run, progress=False)


def test_tiles_find_a_tiny_defect_on_a_large_part(tmp_path: Path, parts, tiny_config) -> None:
    folder, good, bad = parts
    det = _fit(tiny_config, folder, tmp_path / "run", "tiles")
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.data.coverage, saved.data.tile_scale, saved.data.crop) == ("tiles", 1.0, 64)
    scores, maps = det.predict([*good, *bad])
    assert scores[4:].min() > scores[:4].max(), scores
    assert maps.shape[1:] == (saved.data.eval_size, saved.data.eval_size)


def test_resizing_the_whole_part_misses_it(tmp_path: Path, parts, tiny_config) -> None:
    folder, good, bad = parts
    det = _fit(tiny_config, folder, tmp_path / "run", "whole")
    scores, _ = det.predict([*good, *bad])
    # Squashed to half a pixel: at most half of the defective parts stand out (tiles: all of them).
    assert int((scores[4:] > scores[:4].max()).sum()) <= 2, scores


_TORCH_FREE = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from ssfilter.inference.onnx_predictor import load_predictor
preds, skipped = load_predictor(sys.argv[1], threads=1).predict(sys.argv[2:])
print(json.dumps({"raw": [p.raw_score for p in preds], "labels": [p.label for p in preds],
                  "torch": [m for m in sys.modules if m.startswith("torch") and sys.modules[m]]}))
"""


@pytest.fixture(scope="module")
def tiled_export(
    parts, make_tiny_config, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Detector, object, Path]:
    """A calibrated tiled run, its calibration and its ONNX export."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    base = tmp_path_factory.mktemp("tiled_export")
    det = _fit(make_tiny_config(), parts[0], base / "run", "tiles")
    cal = det.calibrate(progress=False)
    return det, cal, det.export(base / "tiled.onnx")


def test_tiled_run_exports_and_finds_the_defect_without_torch(tiled_export, parts, run_script) -> None:
    import json

    from ssfilter.inference.export import MAP_TOLERANCE, SCORE_TOLERANCE
    from ssfilter.inference.onnx_predictor import OnnxPredictor, read_onnx_metadata

    det, cal, path = tiled_export
    meta = read_onnx_metadata(path)
    assert (meta["coverage"], meta["tile_scale"], meta["tile_overlap"]) == ("tiles", 1.0, 0.25)
    assert (meta["tile_map_size"], meta["eval_size"], meta["ssfilter_export_format"]) == (64, 64, 2)
    # parity: the first and last tile of 4 training images, and 2 random inputs
    assert meta["parity"]["ok"] and meta["parity"]["n_real"] == 8

    images = [*parts[1], *parts[2]]
    ref, _ = det.predictor(cal).predict(images)
    got, skipped = OnnxPredictor(path, threads=1).predict(images)
    assert not skipped and len(got) == len(ref) == 8
    for t, o in zip(ref, got, strict=True):
        assert (o.width, o.height) == (t.width, t.height) == (WIDTH, HEIGHT) and o.label == t.label
        assert abs(o.raw_score - t.raw_score) <= 1e-5 and abs(o.score - t.score) <= SCORE_TOLERANCE
        assert o.map.shape == t.map.shape and np.abs(o.map - t.map).max() <= MAP_TOLERANCE
    scores = np.array([p.raw_score for p in got])
    assert scores[4:].min() > scores[:4].max(), scores  # the tiny dots are still found, by ONNX alone

    proc = run_script(_TORCH_FREE, str(path), *map(str, images))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["torch"] == [] and out["labels"] == [p.label for p in got]
    np.testing.assert_allclose(out["raw"], scores, rtol=0, atol=1e-6)


def test_tiled_run_exports_to_openvino(tiled_export, parts, tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ssfilter[openvino]')")
    from ssfilter.inference.onnx_predictor import OnnxPredictor, load_predictor, read_export_metadata

    det, _, onnx_path = tiled_export
    xml = det.export(tmp_path / "tiled.xml", format="openvino")
    assert read_export_metadata(xml)["coverage"] == "tiles"
    images = [*parts[1], *parts[2]]
    ov_scores, ov_maps = load_predictor(xml, threads=1).predict_raw(images)
    ort_scores, ort_maps = OnnxPredictor(onnx_path, threads=1).predict_raw(images)
    assert ov_maps.shape == ort_maps.shape == (8, 64, 64)
    np.testing.assert_allclose(ov_scores, ort_scores, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ov_maps, ort_maps, rtol=0, atol=1e-4)


def test_tiled_ssfilter_run_trains_evaluates_and_filters_per_image(tmp_path: Path, tiny_config) -> None:
    import csv
    import json

    from ssfilter.data.synthetic import make_synthetic_category

    root = make_synthetic_category(
        tmp_path / "widget", n_train_good=10, n_test_good=3, n_test_defect=6, size=128, seed=1
    )
    tiny_config.data.coverage = "tiles"
    tiny_config.model.random_init = True
    tiny_config.train.method = "ssfilter"
    tiny_config.calibration.after_training = False
    det = Detector(tiny_config).fit(root, tmp_path / "run", progress=False, noise=0.2, overlap=True)
    run = tmp_path / "run"
    with open(run / "filter_log.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(r["anomalies"] != "" for r in rows)  # tile labels known from masks
    n_train = len(json.loads((run / "noise_split.json").read_text())["train"])
    result = det.evaluate(progress=False, report=tmp_path / "report")
    assert result["n_test"] >= 6 and result["metrics"]["P-AUROC"] is not None
    assert (tmp_path / "report" / "report.html").is_file()
    summary = det.filter(out=tmp_path / "filter", epochs=2, min_keep=0, decision="outlier", dry_run=True)
    with open(tmp_path / "filter" / "filter.csv", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == n_train  # one verdict per image
    assert summary["n"] == n_train and summary["labels_known"]
