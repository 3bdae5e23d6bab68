"""Training on tiles: every tile a sample, its image as its group, labels from the defect's mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssfilter.config import get_preset
from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, AnomalyDataset, Sample
from ssfilter.data.tile_dataset import TileDataset, dataset_groups, dataset_labels, training_dataset
from ssfilter.data.transforms import ScaledTransform


def _image(path: Path, width: int, height: int, value: int = 100) -> Path:
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


def test_tiles_groups_and_mask_labels(tmp_path: Path) -> None:
    good = _image(tmp_path / "good.png", 160, 64)
    bad = _image(tmp_path / "bad.png", 160, 64)
    mask = np.zeros((64, 160), np.uint8)
    mask[30:33, 150:153] = 255  # a 3-px defect in the last tile only
    Image.fromarray(mask).save(tmp_path / "bad_mask.png")
    samples = [
        Sample(str(good), LABEL_NORMAL),
        Sample(str(bad), LABEL_ANOMALOUS, mask_path=str(tmp_path / "bad_mask.png")),
    ]
    ds = TileDataset(samples, ScaledTransform(1.0, 64), overlap=0.25)
    per_image = len(ds.grids[0])
    assert per_image == 3 and len(ds) == 6  # 160 px wide: tiles at 0, 48, 96
    assert ds.groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.labels.tolist() == [0, 0, 0, 0, 0, 1]  # only the tile holding the defect counts
    item = ds[5]
    assert item["image"].shape == (3, 64, 64) and item["group"] == 1 and item["tile"] == 2


def test_scale_changes_the_number_of_tiles(tmp_path: Path) -> None:
    path = _image(tmp_path / "big.png", 512, 256)
    native = TileDataset([Sample(str(path), LABEL_NORMAL)], ScaledTransform(1.0, 64), 0.25)
    half = TileDataset([Sample(str(path), LABEL_NORMAL)], ScaledTransform(0.5, 64), 0.25)
    assert len(native) > 3 * len(half)


def test_training_dataset_follows_the_coverage(tmp_path: Path) -> None:
    path = _image(tmp_path / "a.png", 128, 128)
    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop = 64, 64
    cfg.data.coverage = "whole"

    class Enc:
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    plain = training_dataset(cfg, [Sample(str(path), LABEL_NORMAL)] * 2, Enc())
    assert isinstance(plain, AnomalyDataset) and dataset_groups(plain) is None
    assert dataset_labels(plain).tolist() == [0, 0]
    cfg.data.coverage = "tiles"
    tiled = training_dataset(cfg, [Sample(str(path), LABEL_NORMAL)] * 2, Enc())
    assert isinstance(tiled, TileDataset) and len(tiled) == 18
    assert torch.equal(dataset_groups(tiled), torch.arange(2).repeat_interleave(9))


def test_tiles_of_one_image_decode_it_once(tmp_path: Path, monkeypatch) -> None:
    import ssfilter.data.tile_dataset as module

    path = _image(tmp_path / "a.png", 160, 64)
    ds = TileDataset([Sample(str(path), LABEL_NORMAL)] * 2, ScaledTransform(1.0, 64), 0.25)
    reads: list[str] = []
    real = module.read_image
    monkeypatch.setattr(module, "read_image", lambda p: reads.append(str(p)) or real(p))
    tiles = [ds[i]["image"] for i in range(len(ds))]
    assert len(reads) == 2  # two images of three tiles each
    assert torch.equal(tiles[0], tiles[3])  # the same file twice: the same first tile
