"""A run folder written before the config's ``filter`` section was split (config version 1) still works.

The run is trained with today's code and its ``config.yaml`` rewritten in the version-1 layout, key by
key as ssfilter 0.1.0 wrote it; everything a user does with a run must give the same results on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssfilter.api import Detector
from ssfilter.cli import main
from ssfilter.config import save_config
from ssfilter.data.datasets import discover
from ssfilter.runfolder import CONFIG_FILE


def _as_version1(config_yaml: Path) -> None:
    raw = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    batch, restore, dataset = raw.pop("batch_filter"), raw.pop("restoration"), raw.pop("dataset_filter")
    raw["filter"] = {
        **batch,
        "restoring": restore.pop("enabled"),
        **restore,
        **{k: dataset[k] for k in ("epochs", "min_keep")},  # the dataset filter's keys version 1 had
    }
    raw["version"] = 1
    config_yaml.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config
) -> tuple[Path, Path]:
    """The same tiny ssfilter run twice: as written today and in the version-1 layout."""
    cfg = make_tiny_config()
    cfg.train.checkpoint_every = 6
    cfg.restoration.enabled = False
    root = tmp_path_factory.mktemp("legacy")
    save_config(cfg, root / "tiny.yaml")
    new = root / "new"
    assert (
        main(
            [
                "-q",
                "train",
                "--data",
                str(synthetic_mvtec),
                "--config",
                str(root / "tiny.yaml"),
                "--out",
                str(new),
            ]
        )
        == 0
    )
    old = root / "old"
    shutil.copytree(new, old)
    _as_version1(old / CONFIG_FILE)
    assert "filter" in yaml.safe_load((old / CONFIG_FILE).read_text())
    return new, old


def test_version1_run_loads_with_the_same_config_and_scores(runs: tuple[Path, Path]) -> None:
    new, old = runs
    det_new, det_old = Detector.load(new, device="cpu"), Detector.load(old, device="cpu")
    assert det_old.config == det_new.config
    assert det_old.config.restoration.enabled is False
    images = [s.path for s in discover(det_new.data, "test")][:4]
    scores_new, maps_new = det_new.predict(images)
    scores_old, maps_old = det_old.predict(images)
    np.testing.assert_array_equal(scores_old, scores_new)
    np.testing.assert_array_equal(maps_old, maps_new)


def test_version1_run_evaluates_predicts_filters_and_exports(runs: tuple[Path, Path], tmp_path: Path) -> None:
    new, old = runs
    for run in (new, old):
        assert main(["-q", "evaluate", "--run", str(run), "--out", str(tmp_path / run.name / "m.json")]) == 0
    metrics = [json.loads((tmp_path / r.name / "m.json").read_text())["metrics"] for r in (new, old)]
    assert metrics[0] == metrics[1]
    image = str(next(iter(discover(Detector.load(new).data, "test"))).path)
    assert main(["-q", "predict", "--run", str(old), image, "--out", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "predictions.csv").is_file()
    assert (
        main(
            [
                "-q",
                "filter",
                "--run",
                str(old),
                "--epochs",
                "2",
                "--min-keep",
                "0",
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 0
    )
    assert (tmp_path / "f" / "filter.csv").is_file()
    pytest.importorskip("onnxruntime")
    assert main(["-q", "export", "--run", str(old), "--out", str(tmp_path / "model.onnx")]) == 0
    assert (tmp_path / "model.onnx").is_file()
