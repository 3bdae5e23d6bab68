"""``ssfilter benchmark --protocol boundary`` (paper Table 10) end to end on a tiny config."""

from __future__ import annotations

import json
from pathlib import Path

from ssfilter.cli import main
from ssfilter.config import save_config


def test_boundary_benchmark_cli(tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys) -> None:
    tiny_config.train.iters = 2
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(synthetic_mvtec), "--protocol", "boundary", "--methods", "dinomaly"]
    args += ["--config", str(cfg), "--out", str(out)]
    assert main([*args, "-q"]) == 0  # the default alphas of the protocol: 0.4 only
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "boundary"
    assert [(r["method"], r["alpha"], r["protocol"]) for r in res["rows"]] == [("dinomaly", 0.4, "boundary")]
    assert res["rows"][0]["n_train"] == 6  # 3 injected anomalies + 3 normal images (of 8)
    split = json.loads((out / "alpha_0.4" / "noise_split.json").read_text())
    assert split["meta"]["protocol"] == "boundary" and split["meta"]["noise_rate"] == 0.5
    assert "protocol: boundary" in (out / "report.html").read_text()
    capsys.readouterr()

    # resuming it as a softpatch benchmark would mix splits: refused
    softpatch = [a if a != "boundary" else "softpatch" for a in args]
    assert main([*softpatch, "--resume", "-q"]) == 2
    assert "'boundary' noise protocol" in capsys.readouterr().err
    assert main([*args, "--resume", "-q"]) == 0


def test_unknown_protocol_and_alpha_zero_are_clear_errors(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys
) -> None:
    args = [
        "benchmark",
        "--data",
        str(synthetic_mvtec),
        "--methods",
        "dinomaly",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main([*args, "--protocol", "fuiad"]) == 2
    assert "unknown noise protocol 'fuiad'" in capsys.readouterr().err
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    assert main([*args, "--protocol", "boundary", "--alphas", "0", "--config", str(cfg), "-q"]) == 2
    assert "at least one injected anomaly" in capsys.readouterr().err
