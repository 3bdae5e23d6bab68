"""ONNX export of the whole inference graph, its parity gate and the torch-free ONNX predictor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ssfilter.api import Detector  # noqa: E402
from ssfilter.config import Config, get_preset  # noqa: E402
from ssfilter.data.datasets import discover  # noqa: E402
from ssfilter.data.images import read_image  # noqa: E402
from ssfilter.data.transforms import build_image_transform  # noqa: E402
from ssfilter.inference import export as ex  # noqa: E402
from ssfilter.inference import parity  # noqa: E402
from ssfilter.inference.calibration import Calibration  # noqa: E402
from ssfilter.inference.onnx_predictor import OnnxPredictor, preprocess, read_onnx_metadata  # noqa: E402
from ssfilter.inference.predictor import Predictor  # noqa: E402
from ssfilter.runfolder import CALIBRATION_FILE  # noqa: E402
from ssfilter.training.checkpoint import build_model  # noqa: E402


def _dinomaly(cfg: Config) -> Config:
    """The shared tiny config as a plain Dinomaly run, checkpointed only at its end."""
    cfg.train.method = "dinomaly"
    cfg.train.checkpoint_every = cfg.train.iters
    return cfg


@pytest.fixture(scope="module")
def exported(
    synthetic_mvtec: Path, tmp_path_factory: pytest.TempPathFactory, make_tiny_config
) -> tuple[Path, Path]:
    """A tiny trained, calibrated run and its ONNX export (through ``Detector.export``)."""
    base = tmp_path_factory.mktemp("export")
    run = base / "run"
    det = Detector(_dinomaly(make_tiny_config())).fit(synthetic_mvtec, run, progress=False)
    assert (run / CALIBRATION_FILE).is_file()
    path = det.export(base / "model.onnx")
    return run, path


def _test_images(root: Path) -> list[str]:
    return [s.path for s in discover(root, "test")]


def test_metadata_round_trip_and_graph_interface(exported: tuple[Path, Path]) -> None:
    run, path = exported
    meta = read_onnx_metadata(path)
    cfg = Detector.load(run, device="cpu").config
    assert (meta["crop"], meta["resize"], meta["eval_size"]) == (64, 64, 64)
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    assert meta["backbone"] == cfg.model.backbone == "tiny_vit" and meta["opset"] == 17
    assert meta["ssfilter_version"] == __import__("ssfilter").__version__
    assert meta["calibration"] == Calibration.load(run).to_dict()
    parity = meta["parity"]
    assert parity["ok"] and parity["scale"] == "calibration" and parity["n_real"] == 4
    assert parity["max_map_diff"] <= ex.MAP_TOLERANCE and parity["max_score_diff"] <= ex.SCORE_TOLERANCE
    assert parity["label_mismatches"] == 0

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(float)" and inp.shape[1:] == [3, 64, 64]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    assert [o.name for o in session.get_outputs()] == ["maps", "scores"]
    # no temporary file left beside the export
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_graph_matches_torch_evaluation_path(exported: tuple[Path, Path], synthetic_mvtec: Path) -> None:
    """The exported graph = normalise + model + evaluation maps, i.e. what ``predict_maps`` computes."""
    from ssfilter.evaluation.scorers import predict_maps

    run, path = exported
    det = Detector.load(run, device="cpu")
    cfg, model = det.config, det.model
    paths = _test_images(synthetic_mvtec)
    pred = OnnxPredictor(path, threads=1)
    x = np.stack([pred.preprocess(read_image(p)) for p in paths])
    scores, maps = pred.run(x)
    norm = build_image_transform(cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std)
    batch = torch.stack([norm(read_image(p)) for p in paths])
    ref_maps, ref_scores = predict_maps(model, batch, cfg.data.eval_size)
    assert maps.shape == (len(paths), 64, 64)
    assert np.abs(maps - ref_maps.numpy()).max() < 1e-5
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-5


def test_onnx_predictor_matches_torch_predictor(exported: tuple[Path, Path], synthetic_mvtec: Path) -> None:
    run, path = exported
    paths = _test_images(synthetic_mvtec)  # 3 good + 6 defective images the model never saw
    torch_preds, _ = Predictor.load(run, device="cpu").predict(paths, batch_size=4)
    onnx_preds, skipped = OnnxPredictor(path, threads=1).predict(paths, batch_size=4)
    assert not skipped and len(onnx_preds) == len(torch_preds) == 9
    for t, o in zip(torch_preds, onnx_preds, strict=True):
        assert o.path == t.path and (o.width, o.height) == (t.width, t.height)
        assert o.label == t.label
        assert abs(o.score - t.score) <= ex.SCORE_TOLERANCE
        assert abs(o.raw_score - t.raw_score) <= 1e-5
        assert o.threshold == t.threshold
        assert np.abs(o.map - t.map).max() <= ex.MAP_TOLERANCE
        assert np.abs(o.raw_map - t.raw_map).max() <= 1e-5


def test_onnx_predictor_gives_the_torch_predictor_regions(
    exported: tuple[Path, Path], synthetic_mvtec: Path
) -> None:
    """Same boxes and areas; only a pixel within the parity tolerance of the threshold may tip."""
    run, path = exported
    paths = _test_images(synthetic_mvtec)
    torch_pred = Predictor.load(run, device="cpu")
    # the tiny model's own pixel threshold marks nothing: every image NG, the hottest 3% of pixels defective
    raw = np.stack([p.raw_map for p in torch_pred.predict(paths)[0]])
    cal = torch_pred.calibration
    low = dataclasses.replace(
        cal,
        image_threshold=cal.score_min,
        pixel_threshold=float(np.quantile(raw, 0.97)),
        map_min=min(cal.map_min, float(raw.min())),
        map_max=max(cal.map_max, float(raw.max())),
        source="manual",
    )
    torch_pred = Predictor(torch_pred.model, torch_pred.cfg, low)
    onnx_pred = OnnxPredictor(path, threads=1)
    onnx_pred.calibration = low
    torch_preds, _ = torch_pred.predict(paths, batch_size=4)
    onnx_preds, _ = onnx_pred.predict(paths, batch_size=4)
    data = torch_pred.cfg.data
    exact = 0
    for t, o in zip(torch_preds, onnx_preds, strict=True):
        full = t.original_map(data.resize, data.crop)
        differ = (full >= 0.5) != (o.original_map(data.resize, data.crop) >= 0.5)
        assert np.all(np.abs(full[differ] - 0.5) <= ex.MAP_TOLERANCE)
        if differ.any():
            continue
        boxes = [(r.x0, r.y0, r.x1, r.y1, r.area) for r in t.regions]
        assert [(r.x0, r.y0, r.x1, r.y1, r.area) for r in o.regions] == boxes
        for a, b in zip(t.regions, o.regions, strict=True):
            assert abs(a.peak_score - b.peak_score) <= ex.MAP_TOLERANCE
            assert abs(a.mean_score - b.mean_score) <= ex.MAP_TOLERANCE
        exact += len(t.regions)
    assert exact >= 1  # not vacuous: regions compared exactly (7 in 9 images when written)


def test_preprocessing_matches_torchvision(tmp_path: Path) -> None:
    """Pillow/numpy preprocessing gives the torchvision transform's pixels (odd sizes, odd crop offsets)."""
    rng = np.random.default_rng(3)
    for (w, h), resize, crop in [
        ((101, 67), 72, 64),
        ((64, 64), 64, 64),
        ((300, 211), 75, 56),
        ((9, 13), 33, 32),
    ]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ref = build_image_transform(resize, crop, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image).numpy()
        got = preprocess(image, resize, crop)
        assert got.dtype == np.float32 and got.shape == ref.shape == (3, crop, crop)
        np.testing.assert_array_equal(got, ref)


_TORCH_FREE_SCRIPT = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from ssfilter.inference.onnx_predictor import OnnxPredictor
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch import was not blocked")
model, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
preds, skipped = OnnxPredictor(model, threads=1).predict(paths)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
np.savez(
    out,
    raw=np.array([p.raw_score for p in preds]),
    score=np.array([p.score for p in preds]),
    label=np.array([p.label for p in preds]),
    maps=np.stack([p.map for p in preds]),
    regions=np.array([len(p.regions) for p in preds]),
)
print(json.dumps({"n": len(preds), "skipped": len(skipped), "loaded": [m for m in loaded if sys.modules[m]]}))
"""


def test_onnx_predictor_runs_without_torch(
    exported: tuple[Path, Path], synthetic_mvtec: Path, tmp_path: Path, run_script
) -> None:
    run, path = exported
    paths = _test_images(synthetic_mvtec)
    out = tmp_path / "onnx_out.npz"
    proc = run_script(_TORCH_FREE_SCRIPT, str(path), str(out), *paths)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info == {"n": 9, "skipped": 0, "loaded": []}
    got = np.load(out)
    ref, _ = Predictor.load(run, device="cpu").predict(paths)
    assert list(got["label"]) == [p.label for p in ref]
    assert np.abs(got["score"] - np.array([p.score for p in ref])).max() <= ex.SCORE_TOLERANCE
    assert np.abs(got["raw"] - np.array([p.raw_score for p in ref])).max() <= 1e-5
    assert np.abs(got["maps"] - np.stack([p.map for p in ref])).max() <= ex.MAP_TOLERANCE
    assert list(got["regions"]) == [len(p.regions) for p in ref]


def test_parity_failure_refuses_and_writes_nothing(
    exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = exported
    real = parity.ort_outputs

    def corrupted(session, x, batch_size):  # noqa: ANN001, ANN202
        maps, scores = real(session, x, batch_size)
        maps = maps.copy()
        maps[:, :, :8, :8] += 0.05  # a corner of every map drifts: a broken graph
        return maps, scores

    monkeypatch.setattr(parity, "ort_outputs", corrupted)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ex.ExportParityError) as info:
        ex.export_onnx(run, target)
    report = info.value.report
    assert not report.ok and report.max_map_diff > ex.MAP_TOLERANCE
    assert report.max_raw_map_diff == pytest.approx(0.05, rel=1e-3)
    assert "no file was written" in str(info.value) and "tolerance 0.0001" in str(info.value)
    assert target.read_bytes() == b"previous export"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left


def test_label_mismatch_alone_fails_parity() -> None:
    """Scores within the tolerance but on both sides of the threshold: refused anyway."""
    cal = Calibration(
        image_threshold=1.0,
        score_min=0.5,
        score_max=1.5,
        pixel_threshold=1.0,
        map_min=0.0,
        map_max=2.0,
        rule="test",
        source="manual",
        n_images=1,
    )
    maps = np.full((2, 1, 4, 4), 0.5, np.float32)
    ref = (maps, np.array([0.9, np.nextafter(np.float32(1.0), np.float32(0.0))], np.float32))
    got = (maps, np.array([0.9, 1.0], np.float32))
    report = parity.compare_outputs(ref, got, cal, n_real=0)
    assert report.max_score_diff <= ex.SCORE_TOLERANCE and report.max_map_diff == 0.0
    assert report.label_mismatches == 1 and not report.ok
    same = parity.compare_outputs(ref, ref, cal, n_real=0)
    assert same.ok and same.label_mismatches == 0


def test_run_without_calibration_is_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = exported
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "model.safetensors"):
        (bare / name).write_bytes((run / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="ssfilter calibrate --run"):
        ex.export_onnx(bare, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match="only 'onnx'"):
        Detector.load(run, device="cpu").export(tmp_path / "m.tflite", format="tflite")


def test_mobilenet_model_object_static_batch(tmp_path: Path) -> None:
    """The CNN encoder exports too: a random MobileNetV2 model object, fixed batch of 2, no calibration."""
    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop, cfg.data.eval_size = 72, 64, 48
    cfg.model.decoder_depth = 2
    model = build_model(cfg, allow_random=True)
    assert model.training
    path = ex.export_onnx(model, tmp_path / "mnv2.onnx", config=cfg, batch_size=2)
    assert model.training and model.bottleneck.training  # the caller's mode is restored
    meta = read_onnx_metadata(path)
    assert meta["backbone"] == "mobilenet_v2" and meta["calibration"] is None
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["batch_size"] == "2"
    assert meta["parity"]["scale"] == "reference range" and meta["parity"]["ok"]
    pred = OnnxPredictor(path, threads=1)
    assert pred.fixed_batch == 2 and pred.calibration is None
    x = np.random.default_rng(1).random((3, 3, 64, 64), dtype=np.float32)  # 3 = one full batch + padding
    scores, maps = pred.run(x)
    with torch.no_grad():
        ref_maps, ref_scores = ex.InferenceGraph(model, 48)(torch.from_numpy(x))
    assert maps.shape == (3, 48, 48)
    assert np.abs(maps - ref_maps[:, 0].numpy()).max() < 1e-5
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-5
    with pytest.raises(ValueError, match="calibration"):
        pred.predict([])


def test_export_friendly_blur_equals_depthwise_convolution() -> None:
    """``gaussian_blur`` folds channels into the batch for ONNX; the numbers are a depthwise conv's."""
    from ssfilter.models.anomaly_map import gaussian_blur, gaussian_kernel2d

    x = torch.rand(2, 4, 19, 23) * 2
    weight = gaussian_kernel2d(5, 4.0).expand(4, 1, 5, 5)
    expected = torch.nn.functional.conv2d(x, weight, padding=2, groups=4)
    assert torch.equal(gaussian_blur(x), expected)
    assert torch.equal(gaussian_blur(x[:, 0]), expected[:, 0])


def test_vit_exports_at_a_crop_other_than_its_native_size(tmp_path: Path, tiny_config: Config) -> None:
    """The ViT position table is resampled once in PyTorch, so no bicubic resize enters the graph.

    DINOv2 checkpoints carry a 37x37 table (518 px) that timm resamples per call with an antialiased
    bicubic kernel ONNX has no operator for; the tiny ViT's native 64 px at crop 48 is the same case.
    """
    import onnx

    cfg = tiny_config
    cfg.data.resize, cfg.data.crop, cfg.data.eval_size = 56, 48, 48
    model = build_model(cfg, allow_random=True)
    path = ex.export_onnx(model, tmp_path / "vit48.onnx", config=cfg)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Resize" in ops  # the map upsampling (bilinear) is still there ...
    resize_modes = {
        attr.s.decode()
        for node in onnx.load(str(path)).graph.node
        if node.op_type == "Resize"
        for attr in node.attribute
        if attr.name == "mode"
    }
    assert resize_modes <= {"linear"}  # ... but no cubic resampling of positions
    meta = read_onnx_metadata(path)
    assert meta["parity"]["ok"] and meta["crop"] == 48
    x = np.random.default_rng(2).random((3, 3, 48, 48), dtype=np.float32)
    scores, maps = OnnxPredictor(path, threads=1).run(x)
    with torch.no_grad():
        ref_maps, ref_scores = ex.InferenceGraph(model, 48)(torch.from_numpy(x))
    assert np.abs(maps - ref_maps[:, 0].numpy()).max() < 1e-5
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-5
