"""Tiny training runs with the paper's ablation settings.

Synthesis methods (Table 5), material counts (Table 9), descriptor layers (Table 8).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.config import Config, load_config, save_config
from ssfilter.data.datasets import discover
from ssfilter.io import read_csv_rows
from ssfilter.runfolder import FILTER_LOG_FILE, MODEL_FILE
from ssfilter.training.trainer import Trainer


@pytest.mark.parametrize("synthesis", ["ours", "cutpaste", "draem"])
def test_training_with_each_synthesis_method(
    tmp_path: Path, synthetic_mvtec: Path, ssf_config, synthesis: str
) -> None:
    ssf_config.restoration.synthesis = synthesis
    Trainer(ssf_config, discover(synthetic_mvtec, "train"), tmp_path / "run", progress=False).fit()
    rows = read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE)
    losses = [float(r["loss"]) for r in read_csv_rows(tmp_path / "run" / "train_log.csv")]
    assert all(torch.isfinite(torch.tensor(losses)))
    synthetic = [int(r["synthetic"]) for r in rows]
    if synthesis == "ours":  # one per extracted material of the batch
        assert any(synthetic) and all(s <= int(r["material"]) for s, r in zip(synthetic, rows, strict=True))
    else:  # the paper's baselines: two per batch, whatever the candidates
        assert synthetic == [2] * len(rows)
    assert load_config(tmp_path / "run" / "config.yaml").restoration.synthesis == synthesis


def test_baseline_synthesis_resumes_identically(tmp_path: Path, synthetic_mvtec: Path, ssf_config) -> None:
    ssf_config.restoration.synthesis = "draem"
    samples = discover(synthetic_mvtec, "train")
    Trainer(ssf_config, samples, tmp_path / "full", progress=False).fit()
    Trainer(ssf_config, samples, tmp_path / "cut", progress=False, stop_after=3).fit()
    Trainer(ssf_config, samples, tmp_path / "cut", progress=False).fit(resume=True)
    a, b = load_file(str(tmp_path / "full" / MODEL_FILE)), load_file(str(tmp_path / "cut" / MODEL_FILE))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_material_count_and_descriptor_settings_train(
    tmp_path: Path, synthetic_mvtec: Path, ssf_config
) -> None:
    ssf_config.restoration.material_count = "rand:1:3"
    ssf_config.batch_filter.descriptor_layers = [3]
    ssf_config.batch_filter.descriptor_mean_layers = [0, 2, 4]
    Trainer(ssf_config, discover(synthetic_mvtec, "train"), tmp_path / "run", progress=False).fit()
    assert any(int(r["synthetic"]) for r in read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE))
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.restoration.material_count == "rand:1:3"
    assert saved.batch_filter.descriptor_mean_layers == [0, 2, 4]


def test_configs_without_the_new_fields_load_with_the_papers_defaults(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    save_config(Config(), path)
    text = path.read_text(encoding="utf-8")
    for key in (
        "synthesis",
        "material_count",
        "synthetic_per_batch",
        "descriptor_layers",
        "descriptor_mean_layers",
    ):
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith(f"{key}:"))
    path.write_text(text + "\n", encoding="utf-8")
    cfg = load_config(path)
    assert (cfg.restoration.synthesis, cfg.restoration.material_count) == ("ours", "schedule")
    assert cfg.restoration.synthetic_per_batch == 2
    assert cfg.batch_filter.descriptor_layers is None and cfg.batch_filter.descriptor_mean_layers is None


def test_settings_from_the_command_line_style_overrides() -> None:
    from ssfilter.config import apply_overrides

    cfg = apply_overrides(
        Config(),
        [
            "restoration.synthesis=cutpaste",
            "restoration.material_count=fixed:2",
            "batch_filter.descriptor_layers=[0,3]",
            "batch_filter.descriptor_mean_layers=[]",
        ],
    )
    assert cfg.restoration.synthesis == "cutpaste" and cfg.restoration.material_count == "fixed:2"
    assert cfg.batch_filter.descriptor_layers == [0, 3] and cfg.batch_filter.descriptor_mean_layers == []
