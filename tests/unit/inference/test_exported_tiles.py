"""The numpy side of exported tiled runs gives the numbers of the torch evaluation path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ssfilter.data.tiling import TileGrid
from ssfilter.data.transforms import ScaledTransform
from ssfilter.evaluation.scorers import TiledScorer
from ssfilter.inference.exported_tiles import (
    TileSettings,
    resize_bilinear,
    scaled_input,
    stitched_outputs,
    topk_mean,
)
from ssfilter.models.anomaly_map import topk_mean_score


@pytest.mark.parametrize(
    ("shape", "size"),
    [((160, 64), (64, 64)), ((64, 64), (64, 64)), ((37, 90), (64, 64)), ((300, 121), (13, 250))],
)
def test_resize_bilinear_matches_torch_interpolate(shape: tuple[int, int], size: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="bilinear", align_corners=False)
    got = resize_bilinear(image, *size)
    assert got.dtype == np.float32 and got.shape == size
    # float32 rounding of the source coordinates moves a few values by ~3e-6 (export tolerance: 1e-4)
    np.testing.assert_allclose(got, ref[0, 0].numpy(), rtol=0, atol=1e-5)


def test_topk_mean_matches_the_torch_score() -> None:
    maps = np.random.default_rng(1).random((5, 33, 47), dtype=np.float32)
    ref = topk_mean_score(torch.from_numpy(maps), ratio=0.01).numpy()
    np.testing.assert_allclose(topk_mean(maps), ref, rtol=1e-6)
    np.testing.assert_allclose(
        topk_mean(maps, 0.2), topk_mean_score(torch.from_numpy(maps), 0.2).numpy(), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("size", "scale"), [((1130, 460), 0.5), ((90, 40), 1.0), ((64, 64), 1.0), ((500, 300), 0.3)]
)
def test_scaled_input_matches_the_training_transform(size: tuple[int, int], scale: float) -> None:
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ref = ScaledTransform(scale, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image).numpy()
    got = scaled_input(image, scale, 64)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


def test_grayscale_image_is_scaled_as_rgb() -> None:
    image = Image.fromarray(np.full((50, 120), 128, np.uint8), mode="L")
    got = scaled_input(image, 1.0, 64)
    assert got.shape == (3, 64, 154) and np.allclose(got, 128 / 255)


class _MapsOf:
    """A tile scorer whose maps are fixed per tile (to compare the stitching paths)."""

    device, mean, std = torch.device("cpu"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps, self.seen = maps, 0

    def __call__(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.maps[self.seen : self.seen + len(tiles)]
        self.seen += len(tiles)
        return out, out.flatten(1).max(1).values


def test_stitched_outputs_match_the_tiled_scorer() -> None:
    grid = TileGrid(100, 230, 64, 0.25)
    maps = torch.rand(len(grid), 64, 64, generator=torch.Generator().manual_seed(3))
    maps[2, 10:13, 20:23] += 5.0  # a defect inside one tile
    scorer = TiledScorer(_MapsOf(maps), 64, 0.25, eval_size=48, chunk=2)
    ref_maps, ref_scores = scorer(torch.zeros(1, 3, 100, 230))
    got_map, got_score = stitched_outputs(grid, maps.numpy(), 48)
    assert got_map.shape == (48, 48)
    np.testing.assert_allclose(got_map, ref_maps[0].numpy(), rtol=0, atol=1e-5)
    assert got_score == pytest.approx(float(ref_scores[0]), rel=1e-6)


def test_tile_settings_from_metadata() -> None:
    assert TileSettings.from_metadata({"coverage": "crop", "crop": 64}) is None
    assert TileSettings.from_metadata({"crop": 64}) is None  # exports from before tiling
    tiles = TileSettings.from_metadata(
        {"coverage": "tiles", "tile_scale": 0.5, "tile_overlap": 0.25, "crop": 64}
    )
    assert tiles == TileSettings(0.5, 0.25, 64)
    assert len(tiles.grid(64, 200)) == len(TileGrid(64, 200, 64, 0.25)) == 4


def test_cut_gives_the_scaled_images_tiles_in_box_order() -> None:
    image = Image.fromarray(np.random.default_rng(4).integers(0, 256, (90, 200, 3), dtype=np.uint8))
    grid, tiles = TileSettings(1.0, 0.25, 64).cut(image)
    x = scaled_input(image, 1.0, 64)
    assert (grid.height, grid.width) == x.shape[1:] and tiles.shape == (len(grid), 3, 64, 64)
    for (top, left), tile in zip(grid.boxes, tiles, strict=True):
        np.testing.assert_array_equal(tile, x[:, top : top + 64, left : left + 64])
