"""``ssfilter export``: writes a checked ONNX file, refuses on parity failure, explains usage errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from ssfilter.cli import main  # noqa: E402
from ssfilter.config import save_config  # noqa: E402


@pytest.fixture
def trained_run(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> Path:
    cfg_path = tmp_path / "tiny.yaml"
    tiny_config.train.method = "dinomaly"
    save_config(tiny_config, cfg_path)
    run = tmp_path / "run"
    assert (
        main(["-q", "train", "--data", str(synthetic_mvtec), "--config", str(cfg_path), "--out", str(run)])
        == 0
    )
    assert (run / "calibration.json").is_file()
    return run


def test_export_cli(
    trained_run: Path, synthetic_mvtec: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssfilter.inference import parity as gate
    from ssfilter.inference.onnx_predictor import OnnxPredictor, read_onnx_metadata

    out = tmp_path / "model.onnx"
    check = synthetic_mvtec / "test"
    capsys.readouterr()
    code = main(["-q", "export", "--run", str(trained_run), "--out", str(out), "--check-images", str(check)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "tolerance 0.0001" in printed and "label mismatches 0" in printed
    parity = read_onnx_metadata(out)["parity"]
    assert parity["n_real"] == 4 and parity["ok"]  # the --check-images folder was used
    scores, maps = OnnxPredictor(out, threads=1).predict_raw(sorted(check.rglob("*.png"))[:2])
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and np.isfinite(maps).all()

    # only ONNX exists
    assert (
        main(
            ["export", "--run", str(trained_run), "--out", str(tmp_path / "m.pt"), "--format", "torchscript"]
        )
        == 2
    )
    assert "only 'onnx'" in capsys.readouterr().err

    # an uncalibrated run: clear advice, nothing written
    bare = tmp_path / "bare"
    shutil.copytree(trained_run, bare)
    (bare / "calibration.json").unlink()
    assert main(["-q", "export", "--run", str(bare), "--out", str(tmp_path / "b.onnx")]) == 2
    assert f"ssfilter calibrate --run {bare}" in capsys.readouterr().err
    assert not (tmp_path / "b.onnx").exists()

    # parity failure (ONNX Runtime's scores drift): exit status 1, figures printed, no file
    real = gate.ort_outputs

    def drifting(session, x, batch_size):  # noqa: ANN001, ANN202
        maps, scores = real(session, x, batch_size)
        return maps, scores + 0.01

    monkeypatch.setattr(gate, "ort_outputs", drifting)
    bad = tmp_path / "bad.onnx"
    assert main(["-q", "export", "--run", str(trained_run), "--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "ONNX export refused" in err and "max |d score|" in err and "no file was written" in err
    assert not bad.exists()


def test_export_cli_openvino(trained_run: Path, synthetic_mvtec: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'ssfilter[openvino]')")
    from ssfilter.inference.onnx_predictor import OpenVinoPredictor, read_export_metadata

    out = tmp_path / "model.xml"
    capsys.readouterr()
    assert main(["-q", "export", "--run", str(trained_run), "--format", "openvino", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "OpenVINO (CPU, INFERENCE_PRECISION_HINT=f32)" in printed
    assert "label mismatches 0" in printed and out.with_suffix(".bin").is_file()
    assert read_export_metadata(out)["parity"]["ok"]
    check = synthetic_mvtec / "test"
    scores, maps = OpenVinoPredictor(out, threads=1).predict_raw(sorted(check.rglob("*.png"))[:2])
    assert scores.shape == (2,) and maps.shape == (2, 64, 64) and np.isfinite(maps).all()

    # unknown format: the registered ones are listed
    assert (
        main(["export", "--run", str(trained_run), "--out", str(tmp_path / "m.x"), "--format", "tflite"]) == 2
    )
    assert "only 'onnx' and 'openvino' are available" in capsys.readouterr().err
    # an OpenVINO export must be an .xml
    assert (
        main(["export", "--run", str(trained_run), "--out", str(tmp_path / "m.onnx"), "--format", "openvino"])
        == 2
    )
    assert ".xml" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
