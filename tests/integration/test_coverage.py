"""Whole-image coverage: a plain folder is seen whole by default, so a defect in the border is found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssfilter.api import Detector
from ssfilter.config import load_config

SIDE = 80  # images; the preset crop is 64, so the centre crop would cut 8 px (10%) off every border


def _scratch(img: np.ndarray, index: int) -> None:
    img[2:8, 30:40] = (255, 20, 20)  # inside the outer 10%: outside any centre crop of 64/80


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, make_parts) -> tuple[Path, list[Path], list[Path]]:
    """A plain folder of 16 good textures; 4 good test images and 4 with a red scratch in the top border."""
    return make_parts(tmp_path_factory.mktemp("coverage"), 16, SIDE, SIDE, _scratch)


def _fit(cfg, folder: Path, run: Path, coverage: str) -> Detector:
    cfg.data.resize, cfg.data.crop = SIDE, 64
    cfg.data.coverage = coverage
    cfg.model.random_init = True
    cfg.train.iters, cfg.train.method = 20, "dinomaly"
    cfg.calibration.after_training = False
    return Detector(cfg).fit(folder, run, progress=False)


def test_border_defect_found_by_default_on_a_folder(tmp_path: Path, parts, tiny_config) -> None:
    folder, good, bad = parts
    det = _fit(tiny_config, folder, tmp_path / "run", "auto")
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.data.coverage, saved.data.resize, saved.data.crop) == ("whole", 64, 64)
    assert det.config.data.coverage == "whole"  # the detector predicts as the run was trained
    scores, _ = det.predict([*good, *bad])
    assert scores[4:].min() > scores[:4].max(), scores


def test_centre_crop_cannot_see_the_border(tmp_path: Path, parts, tiny_config) -> None:
    folder, good, bad = parts
    det = _fit(tiny_config, folder, tmp_path / "run", "crop")
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.data.coverage, saved.data.resize, saved.data.crop) == ("crop", SIDE, 64)
    scores, _ = det.predict([*good, *bad])
    assert scores[4:].min() < scores[:4].max(), scores  # the scratch is cut away: no separation


def test_benchmark_formats_keep_the_paper_crop(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    tiny_config.data.resize = 72
    tiny_config.train.iters, tiny_config.train.method = 2, "dinomaly"
    tiny_config.calibration.after_training = False
    Detector(tiny_config).fit(synthetic_mvtec, tmp_path / "run", progress=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.data.coverage, saved.data.resize, saved.data.crop) == ("crop", 72, 64)
