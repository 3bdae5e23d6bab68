from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.api import Detector
from ssfilter.cli import main
from ssfilter.config import save_config
from ssfilter.data.datasets import discover
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.outputs import RECORD_FIELDS
from ssfilter.inference.predictor import Predictor
from ssfilter.inference.visualize import BOX_COLOR, crop_box
from ssfilter.runfolder import CALIBRATION_FILE


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config) -> Path:
    """A tiny dinomaly run trained once for the module (conftest's tiny config)."""
    cfg = make_tiny_config()
    cfg.train.checkpoint_every = 6
    cfg.train.method = "dinomaly"
    root = tmp_path_factory.mktemp("predict")
    save_config(cfg, root / "tiny.yaml")
    out = root / "run"
    args = [
        "-q",
        "train",
        "--data",
        str(synthetic_mvtec),
        "--config",
        str(root / "tiny.yaml"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path) -> dict[str, Path]:
    """Images of different, non-square sizes; two share a stem; plus a broken file."""
    root = tmp_path_factory.mktemp("inputs")
    tests = sorted((synthetic_mvtec / "test").rglob("*.png"))
    sizes = {"a/part.png": (97, 45), "b/part.png": (40, 71), "c/wide.jpg": (120, 64)}
    made: dict[str, Path] = {}
    for (rel, size), src in zip(sizes.items(), tests[::3], strict=False):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").resize(size).save(dest)
        made[rel] = dest
    broken = root / "c" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    made["broken"] = broken
    return made


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_training_writes_calibration(run: Path) -> None:
    cal = Calibration.load(run)
    assert cal.source == "training" and cal.n_images == 8 and cal.map_size == 64
    assert cal.params["k"] == 4.0 and cal.params["pixel_k"] == 4.0
    assert cal.score_min <= cal.image_threshold < cal.score_max
    # the threshold follows the documented rule on the training scores
    det = Detector.load(run, device="cpu")
    train = [s.path for s in discover(det.data, "train")]
    scores, maps = det.predict(train)
    flat = maps.reshape(len(maps), -1)
    again = det.predictor().calibrate_unlabelled(train)
    assert again.image_threshold == pytest.approx(cal.image_threshold, rel=1e-5)
    med = np.median(scores)
    mad = np.median(np.abs(scores - med))
    assert cal.image_threshold == pytest.approx(med + 4.0 * 1.4826 * mad, rel=1e-4)
    mx = flat.max(1)
    pmed = np.median(mx)
    assert cal.pixel_threshold == pytest.approx(pmed + 4.0 * 1.4826 * np.median(np.abs(mx - pmed)), rel=1e-4)


def test_predict_cli_writes_everything(run: Path, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    missing = tmp_path / "nope.png"
    args = ["-q", "predict", "--run", str(run), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    pattern = inputs["b/part.png"].parent / "p*t.png"
    code = main(
        [*args, str(inputs["a/part.png"]), str(pattern), str(inputs["c/wide.jpg"].parent), str(missing)]
    )
    assert code == 0, capsys.readouterr().err
    cal = Calibration.load(run)
    rows = _read_csv(out / "predictions.csv")
    assert list(rows[0]) == list(RECORD_FIELDS)
    assert sorted(Path(r["path"]).name for r in rows) == ["part.png", "part.png", "wide.jpg"]
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["n_images"] == 3 and payload["n_skipped"] == 2
    assert payload["threshold"] == cal.image_threshold
    assert Calibration.from_dict(payload["calibration"]) == cal
    for row, rec in zip(rows, payload["images"], strict=True):
        raw, score = float(row["raw_score"]), float(row["score"])
        assert rec["raw_score"] == raw and rec["score"] == score and rec["label"] == row["label"]
        assert float(row["threshold"]) == cal.image_threshold
        assert score == pytest.approx(float(cal.normalize_scores([raw])[0]))
        assert 0.0 <= score <= 1.0
        assert row["label"] == ("NG" if raw >= cal.image_threshold else "OK")
        assert (score >= 0.5) == (row["label"] == "NG")
        original = Image.open(row["path"])
        overlay, mask = Image.open(out / row["overlay"]), Image.open(out / row["mask"])
        assert overlay.size == original.size == mask.size
        assert (int(row["width"]), int(row["height"])) == original.size
        assert overlay.mode == "RGB" and mask.mode == "L"
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        # regions: the CSV summarises the JSON list; NG regions are the mask's blobs, boxed on the overlay
        regions = rec["regions"]
        assert int(row["n_regions"]) == rec["n_regions"] == len(regions)
        largest = max((r["area"] for r in regions), default=0)
        assert int(row["largest_region_area"]) == rec["largest_region_area"] == largest
        if row["label"] == "OK":
            assert regions == []
        else:
            assert sum(r["area"] for r in regions) == int(np.count_nonzero(np.asarray(mask)))
        for r in regions:
            assert 0 <= r["x0"] < r["x1"] <= original.width and 0 <= r["y0"] < r["y1"] <= original.height
            assert tuple(np.asarray(overlay)[r["y0"], r["x0"]]) == BOX_COLOR
    printed = capsys.readouterr().out
    assert f"{sum(r['n_regions'] for r in payload['images'])} defect region(s)" in printed
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == sorted(
        ["a_part_overlay.png", "a_part_mask.png", "b_part_overlay.png", "b_part_mask.png"]
        + ["wide_overlay.png", "wide_mask.png"]
    )
    skipped = {Path(r["path"]).name: r["reason"] for r in _read_csv(out / "skipped.csv")}
    assert set(skipped) == {"broken.png", "nope.png"}
    assert skipped["nope.png"] == "file not found" and skipped["broken.png"]
    assert not list(out.glob(".*tmp"))


def test_threshold_override_and_exact_half(run: Path, inputs: dict[str, Path], tmp_path: Path) -> None:
    files = [str(inputs["a/part.png"]), str(inputs["b/part.png"]), str(inputs["c/wide.jpg"])]
    base = ["-q", "predict", "--run", str(run), "--device", "cpu", *files, "--out"]
    assert main([*base, str(tmp_path / "first")]) == 0
    raw = {r["path"]: float(r["raw_score"]) for r in _read_csv(tmp_path / "first" / "predictions.csv")}
    middle = sorted(raw, key=raw.__getitem__)[1]
    thr = raw[middle]  # the middle image's raw score becomes the threshold
    assert main([*base, str(tmp_path / "second"), "--threshold", repr(thr)]) == 0
    rows = {r["path"]: r for r in _read_csv(tmp_path / "second" / "predictions.csv")}
    assert float(rows[middle]["raw_score"]) == thr
    assert float(rows[middle]["score"]) == 0.5 and rows[middle]["label"] == "NG"
    for path, row in rows.items():
        assert float(row["threshold"]) == thr
        assert row["label"] == ("NG" if raw[path] >= thr else "OK")
    assert sum(r["label"] == "NG" for r in rows.values()) == 2
    payload = json.loads((tmp_path / "second" / "predictions.json").read_text())
    assert payload["threshold"] == thr and payload["calibration"]["source"] == "manual"


def test_fixed_heat_map_scale_and_masks(run: Path, inputs: dict[str, Path]) -> None:
    predictor = Predictor.load(run, device="cpu")
    target = inputs["a/part.png"]
    alone, _ = predictor.predict([target])
    others, _ = predictor.predict([inputs["c/wide.jpg"], target, inputs["b/part.png"]], batch_size=3)
    np.testing.assert_allclose(alone[0].map, others[1].map, atol=1e-5)
    np.testing.assert_array_equal(alone[0].map, predictor.calibration.normalize_maps(alone[0].raw_map))
    # a calibration that marks every pixel: the mask is exactly the model's crop of the original image
    cfg = predictor.cfg.copy()
    cfg.data.resize = 80  # the model still sees a 64 px crop, now of an 80 px resize
    everything = Calibration(
        image_threshold=0.0,
        score_min=-1.0,
        score_max=1.0,
        pixel_threshold=-1.0,
        map_min=-2.0,
        map_max=0.0,
        rule="test",
        source="manual",
        n_images=0,
    )
    wide = Predictor(predictor.model, cfg, everything)
    preds, _ = wide.predict([target])
    full = preds[0].original_map(cfg.data.resize, cfg.data.crop)
    left, top, right, bottom = crop_box(97, 45, 80, 64)
    assert full.shape == (45, 97)
    assert np.all(full[top:bottom, left:right] >= 0.5)
    # ... and that crop is its one defect region, in the original image's pixels
    assert preds[0].label == "NG"
    assert [(r.x0, r.y0, r.x1, r.y1, r.area) for r in preds[0].regions] == [
        (left, top, right, bottom, (right - left) * (bottom - top))
    ]
    outside = np.ones_like(full, dtype=bool)
    outside[top:bottom, left:right] = False
    assert outside.any() and np.all(full[outside] == 0.0)


def test_calibrate_cli_with_labelled_val(run: Path, synthetic_mvtec: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert (
        main(["-q", "calibrate", "--run", str(copy), "--val", str(synthetic_mvtec), "--device", "cpu"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    cal = Calibration.load(copy)
    assert printed == cal.to_dict()
    assert cal.source == "validation" and "F1-max" in cal.rule and cal.n_images == 9
    assert "pixel_f1" in cal.params  # the synthetic category has ground-truth masks
    det = Detector.load(copy, device="cpu")
    test = discover(synthetic_mvtec, "test")
    scores, _ = det.predict([s.path for s in test])
    labels = np.array([s.label for s in test])
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        best = max(best, 2 * tp / (int(pred.sum()) + int(labels.sum())))
    pred = scores >= cal.image_threshold
    f1 = 2 * int(np.sum(pred & (labels == 1))) / (int(pred.sum()) + int(labels.sum()))
    assert f1 == pytest.approx(best) == pytest.approx(cal.params["image_f1"])


def test_old_run_without_calibration(run: Path, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / CALIBRATION_FILE).unlink()
    args = ["-q", "predict", "--run", str(old), str(inputs["a/part.png"]), "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "p1")]) == 0  # computed on the fly from the training data
    assert Calibration.load(old).image_threshold == pytest.approx(Calibration.load(run).image_threshold)
    (old / CALIBRATION_FILE).unlink()
    (old / "data.json").unlink()
    capsys.readouterr()
    assert main([*args, str(tmp_path / "p2")]) == 2
    assert "ssfilter calibrate" in capsys.readouterr().err
    (old / CALIBRATION_FILE).write_text("{broken")
    assert main([*args, str(tmp_path / "p3")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_predict_files_api_and_no_readable_input(
    run: Path, inputs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    det = Detector.load(run, device="cpu")
    report = det.predict_files(inputs["a/part.png"].parent.parent, tmp_path / "api", progress=False)
    assert len(report.records) == 3 and [Path(s.path).name for s in report.skipped] == ["broken.png"]
    assert report.n_ng == sum(r["label"] == "NG" for r in report.records)
    assert (
        main(["-q", "predict", "--run", str(run), str(inputs["broken"]), "--out", str(tmp_path / "x")]) == 2
    )
    assert _read_csv(tmp_path / "x" / "skipped.csv")[0]["path"] == str(inputs["broken"])
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["-q", "predict", "--run", str(run), str(empty), "--out", str(tmp_path / "y")]) == 2
    assert "no image files found" in capsys.readouterr().err


def test_calibrate_val_reads_any_labelled_format_and_refuses_a_plain_folder(
    run: Path, tmp_path: Path, capsys
) -> None:
    from ssfilter.data.synthetic_layouts import make_synthetic_dataset

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    visa = make_synthetic_dataset(tmp_path / "visa", "visa", ("candle",), n_test_good=2, n_test_defect=3)
    base = ["-q", "calibrate", "--run", str(copy), "--device", "cpu", "--val"]
    assert main([*base, str(visa / "candle")]) == 0
    cal = Calibration.load(copy)
    assert cal.source == "validation" and cal.n_images == 5  # the VisA split CSV's test rows
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(next(p for p in (visa / "candle").rglob("*") if p.suffix.lower() in {".jpg", ".png"}), plain)
    capsys.readouterr()
    assert main([*base, str(plain)]) == 2
    assert "needs labels" in capsys.readouterr().err
