"""Whole-image coverage: a plain folder is seen whole by default, so a defect in the border is found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.api import Detector
from ssfilter.config import load_config

SIDE = 80  # images; the preset crop is 64, so the centre crop would cut 8 px (10%) off every border


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:SIDE, :SIDE][1]
    img = np.full((SIDE, SIDE, 3), 120.0)
    img += 25 * np.sin(xx / 3.0 + rng.uniform(0, 6))[..., None]
    return img + rng.normal(0, 6, img.shape)


def _save(img: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """A plain folder of 16 good textures; 4 good test images and 4 with a red scratch in the top border."""
    root = tmp_path_factory.mktemp("coverage")
    folder = root / "parts"
    folder.mkdir()
    for i in range(16):
        _save(_texture(i), folder / f"{i:02d}.png")
    good, bad = [], []
    for i in range(4):
        good.append(root / f"good{i}.png")
        _save(_texture(100 + i), good[-1])
        img = _texture(200 + i)
        img[2:8, 30:40] = (255, 20, 20)  # inside the outer 10%: outside any centre crop of 64/80
        bad.append(root / f"bad{i}.png")
        _save(img, bad[-1])
    return folder, good, bad


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
