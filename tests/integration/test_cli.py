from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssfilter.cli import main
from ssfilter.config import save_config


def _train_args(data: Path, out: Path, cfg_path: Path) -> list[str]:
    return [
        "-q",
        "train",
        "--data",
        str(data),
        "--method",
        "dinomaly",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
    ]


def test_train_evaluate_info(tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    save_config(tiny_config, cfg_path)
    run = tmp_path / "run"
    assert main(_train_args(synthetic_mvtec, run, cfg_path)) == 0
    assert (run / "model.safetensors").is_file()

    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", "--run", str(run), "--out", str(out), "--device", "cpu"]) == 0
    payload = json.loads(out.read_text())
    assert payload["n_test"] == 9
    keys = {"I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "P-AUPRO", "P-AUPRO-dinomaly"}
    assert set(payload["metrics"]) == keys
    for k, v in payload["metrics"].items():
        assert v is None or 0.0 <= v <= 1.0, k
    assert len(payload["images"]) == 9

    # a finished run is never overwritten silently
    capsys.readouterr()
    assert main(_train_args(synthetic_mvtec, run, cfg_path)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*_train_args(synthetic_mvtec, run, cfg_path), "--overwrite", "--iters", "2"]) == 0

    capsys.readouterr()
    assert main(["info", "--config", str(cfg_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"params_total", "params_trainable", "gflops", "grid", "crop"} <= set(info)
    assert info["crop"] == 64 and info["grid"] == [8, 8]


def test_cli_set_overrides_and_errors(tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    save_config(tiny_config, cfg_path)
    assert (
        main(["info", "--config", str(cfg_path), "--set", "data.crop=32", "--set", "model.attention=linear"])
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["crop"] == 32 and info["attention"] == "linear"
    assert main(["info", "--set", "train.nonsense=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_train_args(empty, tmp_path / "r2", cfg_path)) == 2
    assert "no images" in capsys.readouterr().err
    assert (
        main(["-q", "evaluate", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")]) == 2
    )


def test_dinov2_offline_error_is_clear(tmp_path: Path, synthetic_mvtec: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["-q", "train", "--data", str(synthetic_mvtec), "--out", str(tmp_path / "r"), "--iters", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--weights" in err and "dinov2" in err.lower()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_gpu_is_a_clear_error(tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg_path)
    code = main([*_train_args(synthetic_mvtec, tmp_path / "run", cfg_path), "--device", "cuda"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
