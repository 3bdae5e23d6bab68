"""Tile geometry: full coverage with the asked overlap, scaling, cutting and stitching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssfilter.data.tiling import TileGrid, scaled_size, tile_positions


@pytest.mark.parametrize("length", [64, 65, 100, 230, 460, 1130])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_positions_cover_every_pixel_with_the_overlap(length: int, overlap: float) -> None:
    tile = 64
    starts = tile_positions(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s : s + tile] = True
    assert bool(covered.all())
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= int(overlap * tile) - 1  # neighbours share at least the overlap (rounding)


def test_positions_reject_what_cannot_be_tiled() -> None:
    with pytest.raises(ValueError, match="scale the image up"):
        tile_positions(50, 64, 0.25)
    with pytest.raises(ValueError, match="overlap"):
        tile_positions(100, 64, 1.0)


def test_scaled_size_keeps_the_aspect_and_holds_one_tile() -> None:
    assert scaled_size(1130, 460, 1.0, 224) == (1130, 460)
    assert scaled_size(1130, 460, 0.5, 224) == (565, 230)
    w, h = scaled_size(1130, 460, 0.25, 224)  # 115 px high would not hold a tile: scaled up to 224
    assert h == 224 and abs(w / h - 1130 / 460) < 0.01
    with pytest.raises(ValueError):
        scaled_size(100, 100, 0.0, 64)


def test_cut_then_stitch_gives_the_image_back() -> None:
    grid = TileGrid(100, 150, 64, 0.25)
    image = torch.rand(1, 100, 150)
    tiles = torch.stack(grid.windows(image))
    assert tiles.shape == (len(grid), 1, 64, 64)
    assert torch.allclose(grid.stitch(tiles[:, 0]), image[0])


def test_stitch_averages_the_overlaps() -> None:
    grid = TileGrid(64, 100, 64, 0.25)  # two tiles, columns 36..63 shared
    maps = torch.stack([torch.zeros(64, 64), torch.ones(64, 64)])
    full = grid.stitch(maps)
    left, right = grid.boxes[1][1], 64
    assert float(full[0, 0]) == 0.0 and float(full[0, 99]) == 1.0
    assert torch.allclose(full[:, left:right], torch.full((64, right - left), 0.5))


def test_tiles_holding_a_mask_pixel() -> None:
    grid = TileGrid(64, 200, 64, 0.25)
    mask = torch.zeros(64, 200)
    mask[10, 190] = 1  # only the last tile
    hits = grid.box_mask_any(mask)
    assert hits[-1] and not any(hits[:-1])


def test_numpy_maps_stitch_like_tensors() -> None:
    grid = TileGrid(100, 150, 64, 0.25)
    maps = torch.rand(len(grid), 64, 64)
    got = grid.stitch(maps.numpy())
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, grid.stitch(maps).numpy(), rtol=1e-6)
    windows = grid.windows(got)
    assert len(windows) == len(grid) and all(w.shape == (64, 64) for w in windows)
