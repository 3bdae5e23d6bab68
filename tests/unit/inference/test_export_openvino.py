"""OpenVINO export: the same graph and parity gate as ONNX, pinned f32 precision, torch-free predictor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ssfilter[openvino]')")

from ssfilter.api import Detector  # noqa: E402
from ssfilter.config import Config, get_preset  # noqa: E402
from ssfilter.data.datasets import discover  # noqa: E402
from ssfilter.errors import SSFilterError  # noqa: E402
from ssfilter.inference import formats, parity, runtimes  # noqa: E402
from ssfilter.inference.calibration import Calibration  # noqa: E402
from ssfilter.inference.export import ExportParityError, export_run  # noqa: E402
from ssfilter.inference.onnx_predictor import (  # noqa: E402
    ExportedPredictor,
    OpenVinoPredictor,
    load_predictor,
    read_export_metadata,
)
from ssfilter.inference.openvino_export import export_openvino  # noqa: E402
from ssfilter.inference.predictor import Predictor  # noqa: E402
from ssfilter.training.checkpoint import build_model  # noqa: E402

TOL = parity.SCORE_TOLERANCE


def _dinomaly(cfg: Config) -> Config:
    cfg.train.method = "dinomaly"
    cfg.train.checkpoint_every = cfg.train.iters
    return cfg


@pytest.fixture(scope="module")
def ov_exported(
    synthetic_mvtec: Path, tmp_path_factory: pytest.TempPathFactory, make_tiny_config
) -> tuple[Path, Path]:
    """A tiny trained, calibrated run and its OpenVINO export (through ``Detector.export``)."""
    base = tmp_path_factory.mktemp("ov_export")
    run = base / "run"
    det = Detector(_dinomaly(make_tiny_config())).fit(synthetic_mvtec, run, progress=False)
    path = det.export(base / "model.xml", format="openvino")
    return run, path


def _test_images(root: Path) -> list[str]:
    return [s.path for s in discover(root, "test")]


def test_ir_files_and_metadata(ov_exported: tuple[Path, Path]) -> None:
    run, path = ov_exported
    assert path.suffix == ".xml" and path.is_file() and path.with_suffix(".bin").is_file()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no temp left
    meta = read_export_metadata(path)
    assert meta["format"] == "openvino" and (meta["crop"], meta["resize"], meta["eval_size"]) == (64, 64, 64)
    assert meta["calibration"] == Calibration.load(run).to_dict()
    record = json.loads(meta["openvino"])
    assert record["inference_precision"] == "f32" and record["device"] == "CPU"
    p = meta["parity"]
    assert p["ok"] and p["runtime"] == "OpenVINO" and "INFERENCE_PRECISION_HINT=f32" in p["settings"]
    assert p["n_real"] == 4 and p["max_map_diff"] <= parity.MAP_TOLERANCE and p["max_score_diff"] <= TOL
    model = ov.Core().read_model(str(path))
    assert model.inputs[0].get_partial_shape()[0].is_dynamic
    assert {o.get_any_name() for o in model.outputs} == {"maps", "scores"}
    # weights stay float32: no f16 constant in the IR
    assert not any(
        op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16
        for op in model.get_ops()
    )


def test_openvino_onnx_and_torch_agree(
    ov_exported: tuple[Path, Path], synthetic_mvtec: Path, tmp_path: Path
) -> None:
    run, path = ov_exported
    onnx_path = Detector.load(run, device="cpu").export(tmp_path / "model.onnx")
    paths = _test_images(synthetic_mvtec)
    ref, _ = Predictor.load(run, device="cpu").predict(paths, batch_size=4)
    ov_pred = load_predictor(path, threads=1)
    assert isinstance(ov_pred, ExportedPredictor) and ov_pred.runtime.name == "OpenVINO"
    got_ov, skipped = ov_pred.predict(paths, batch_size=4)
    got_onnx, _ = load_predictor(onnx_path, threads=1).predict(paths, batch_size=4)
    assert not skipped and len(got_ov) == len(got_onnx) == len(ref) == 9
    for t, o, x in zip(ref, got_ov, got_onnx, strict=True):
        assert o.label == x.label == t.label and o.path == t.path
        assert abs(o.score - t.score) <= TOL and abs(o.score - x.score) <= TOL
        assert abs(o.raw_score - t.raw_score) <= 1e-5
        assert np.abs(o.map - t.map).max() <= parity.MAP_TOLERANCE
        assert np.abs(o.map - x.map).max() <= parity.MAP_TOLERANCE


def test_predictor_pins_the_checked_precision(ov_exported: tuple[Path, Path]) -> None:
    _, path = ov_exported
    pred = OpenVinoPredictor(path, threads=1)
    assert pred.precision == "f32"
    assert pred.runtime.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert pred.runtime.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    s1, m1 = pred.run(x)
    s2, m2 = pred.run(x[:1])  # dynamic batch: one image alone gives the same numbers
    assert m1.shape == (3, 64, 64) and np.abs(s1[:1] - s2).max() < 1e-6 and np.abs(m1[:1] - m2).max() < 1e-6


def test_concurrent_runs_match_sequential(ov_exported: tuple[Path, Path]) -> None:
    """A server calls one predictor from several threads: same numbers as one call after another."""
    from concurrent.futures import ThreadPoolExecutor

    pred = load_predictor(ov_exported[1], threads=1)
    rng = np.random.default_rng(5)
    xs = [rng.random((2, 3, 64, 64), dtype=np.float32) for _ in range(6)]
    sequential = [pred.run(x) for x in xs]
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(pred.run, xs))
    for (s1, m1), (s2, m2) in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(m1, m2)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_low_precision_compile_is_caught_and_refused(
    ov_exported: tuple[Path, Path], tmp_path: Path, precision: str
) -> None:
    """A bf16/f16 compile (what the CPU plug-in may choose by default) is refused; nothing is written.

    Where the CPU executes that precision the parity gate refuses it; where it does not, OpenVINO
    compiles at another precision and the runtime refuses to run what was not asked for. Either way:
    no file.
    """
    run, path = ov_exported
    config = {"INFERENCE_PRECISION_HINT": precision}
    probe = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", config)
    executes = probe.get_property("INFERENCE_PRECISION_HINT") == getattr(ov.Type, precision)
    target = tmp_path / f"{precision}.xml"
    with pytest.raises(SSFilterError) as info:
        export_openvino(run, target, precision=precision)
    msg = str(info.value)
    if executes:
        assert isinstance(info.value, ExportParityError) and not info.value.report.ok
        assert msg.startswith("OpenVINO export refused") and f"INFERENCE_PRECISION_HINT={precision}" in msg
        assert "no file was written" in msg
    else:
        assert f"not the requested {precision}" in msg
    assert list(tmp_path.iterdir()) == []


def test_noisy_outputs_refused_and_old_export_kept(
    ov_exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outputs rounded through float16 (an f16 execution) are refused; an earlier export is untouched."""
    run, _ = ov_exported
    real = parity.runtime_outputs

    def half(runtime, x, batch_size):  # noqa: ANN001, ANN202
        maps, scores = real(runtime, x, batch_size)
        return maps.astype(np.float16).astype(np.float32), scores.astype(np.float16).astype(np.float32)

    monkeypatch.setattr(parity, "runtime_outputs", half)
    target = tmp_path / "model.xml"
    target.write_text("previous xml")
    target.with_suffix(".bin").write_bytes(b"previous bin")
    with pytest.raises(ExportParityError) as info:
        export_openvino(run, target)
    assert info.value.report.runtime == "OpenVINO" and not info.value.report.ok
    assert target.read_text() == "previous xml" and target.with_suffix(".bin").read_bytes() == b"previous bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]


def test_bad_inputs(ov_exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = ov_exported
    with pytest.raises(formats.UnknownExportFormatError, match="only 'onnx' and 'openvino' are available"):
        export_run(run, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match=r"\.xml"):
        export_openvino(run, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="exported files end in"):
        load_predictor(tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(runtimes.MissingExtraError, match=r"ssfilter\[openvino\]"):
        export_openvino(run, tmp_path / "m.xml")
    with pytest.raises(ImportError, match=r"ssfilter\[openvino\]"):
        OpenVinoPredictor(tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_model_object(tmp_path: Path) -> None:
    """A MobileNetV2 model object without calibration, fixed batch 2: the predictor pads the last batch."""
    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop, cfg.data.eval_size = 72, 64, 48
    cfg.model.decoder_depth = 2
    model = build_model(cfg, allow_random=True)
    path = export_openvino(model, tmp_path / "fixed.xml", config=cfg, batch_size=2)
    pred = OpenVinoPredictor(path, threads=1)
    assert pred.fixed_batch == 2 and pred.calibration is None
    assert read_export_metadata(path)["parity"]["scale"] == "reference range"
    x = np.random.default_rng(1).random((3, 3, cfg.data.crop, cfg.data.crop), dtype=np.float32)
    scores, maps = pred.run(x)
    with torch.no_grad():
        ref_maps, ref_scores = parity.InferenceGraph(model.eval(), cfg.data.eval_size)(torch.from_numpy(x))
    assert np.abs(maps - ref_maps[:, 0].numpy()).max() < 1e-5
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-5


_TORCH_FREE_SCRIPT = """
import json, sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
from ssfilter.inference.onnx_predictor import OpenVinoPredictor, load_predictor
model, out, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
pred = load_predictor(model, threads=1)
assert type(pred).__name__ == "ExportedPredictor" and OpenVinoPredictor(model, threads=1).precision == "f32"
preds, skipped = pred.predict(paths)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
np.savez(out, raw=np.array([p.raw_score for p in preds]), label=np.array([p.label for p in preds]))
print(json.dumps({"n": len(preds), "skipped": len(skipped), "loaded": [m for m in loaded if sys.modules[m]]}))
"""


def test_openvino_predictor_runs_without_torch(
    ov_exported: tuple[Path, Path], synthetic_mvtec: Path, tmp_path: Path, run_script
) -> None:
    run, path = ov_exported
    paths = _test_images(synthetic_mvtec)
    out = tmp_path / "ov_out.npz"
    proc = run_script(_TORCH_FREE_SCRIPT, str(path), str(out), *paths)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"n": 9, "skipped": 0, "loaded": []}
    got = np.load(out)
    ref, _ = Predictor.load(run, device="cpu").predict(paths)
    assert list(got["label"]) == [p.label for p in ref]
    assert np.abs(got["raw"] - np.array([p.raw_score for p in ref])).max() <= 1e-5


def test_openvino_serve_backend_matches_the_predictor(
    ov_exported: tuple[Path, Path], synthetic_mvtec: Path
) -> None:
    from ssfilter.data.images import read_image
    from ssfilter.inference.backends import BACKENDS, load_backend

    _, xml = ov_exported
    assert BACKENDS["openvino"].option == "--openvino"
    backend = load_backend("openvino", xml)
    paths = _test_images(synthetic_mvtec)[:3]
    served = backend.predict([read_image(p) for p in paths], paths)
    direct, _ = OpenVinoPredictor(xml).predict(paths)
    assert [p.label for p in served] == [p.label for p in direct]
    np.testing.assert_allclose([p.raw_score for p in served], [p.raw_score for p in direct], rtol=1e-6)
    assert backend.info()["backend"] == "openvino"
