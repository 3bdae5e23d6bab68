"""Tiled runs on the numpy side of an exported graph: what the tiled evaluation does, without torch.

The graph of a tiled run (``data.coverage = "tiles"``) scores ``crop x crop`` tiles and returns their maps
at tile resolution. Everything around it happens here, in numpy and Pillow, with the geometry training
and evaluation use (:class:`ssfilter.data.tiling.TileGrid`):

* the image is resized by ``tile_scale`` with its aspect kept (:func:`scaled_input`: Pillow ``BILINEAR``,
  which is what torchvision's antialiased resize calls for a PIL image, so the pixels are the run's);
* cut into overlapping tiles, the tiles' maps averaged back into one map (:meth:`TileGrid.stitch`);
* the image score is the largest top-1% mean over the tile windows of that map, and the map is resized
  to ``eval_size`` (:func:`stitched_outputs`), as in :class:`ssfilter.evaluation.scorers.TiledScorer`.

:func:`resize_bilinear` is written by hand on purpose: evaluation resizes the stitched map with torch's
``interpolate(mode="bilinear", align_corners=False)`` without antialiasing, and Pillow antialiases when it
shrinks, which would move the exported maps away from the ones the run was evaluated with.

Nothing in this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ssfilter.data.tiling import TileGrid, scaled_size

__all__ = [
    "TileSettings",
    "image_array",
    "resize_bilinear",
    "scaled_input",
    "stitched_outputs",
    "topk_mean",
]

#: Share of a window's values averaged into its score (the top 1%, as every image score of ssfilter).
SCORE_TOPK_RATIO = 0.01


@dataclass(frozen=True)
class TileSettings:
    """How an exported tiled run cuts images (from the export's metadata).

    Attributes:
        scale: Resize factor before tiling (``data.tile_scale``; 1.0 = native resolution).
        overlap: Least share of a tile its neighbours overlap (``data.tile_overlap``).
        tile: Side of a tile, the graph's input size (``data.crop``).
    """

    scale: float
    overlap: float
    tile: int

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> TileSettings | None:
        """The settings of a tiled export, ``None`` for an export that scores whole inputs."""
        if meta.get("coverage") != "tiles":
            return None
        return cls(float(meta["tile_scale"]), float(meta["tile_overlap"]), int(meta["crop"]))

    def grid(self, height: int, width: int) -> TileGrid:
        """The tiles of a scaled image of ``height x width``."""
        return TileGrid(height, width, self.tile, self.overlap)

    def cut(self, image: Image.Image) -> tuple[TileGrid, np.ndarray]:
        """The scaled image's grid and its tiles ``float32 [T, 3, tile, tile]`` in [0, 1] (graph inputs)."""
        x = scaled_input(image, self.scale, self.tile)
        grid = self.grid(x.shape[1], x.shape[2])
        return grid, np.stack(grid.windows(x))


def image_array(image: Image.Image) -> np.ndarray:
    """``float32 [3, H, W]`` in [0, 1] of an 8-bit RGB image (what torchvision's ``ToTensor`` gives)."""
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)


def scaled_input(image: Image.Image, scale: float, tile: int) -> np.ndarray:
    """``float32 [3, H, W]`` in [0, 1]: the image resized like the run's ``ScaledTransform``, not normalised.

    Args:
        image: An RGB image.
        scale: Resize factor (aspect kept; a side shorter than ``tile`` is brought up to it).
        tile: Side of a tile.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = scaled_size(image.width, image.height, scale, tile)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    return image_array(image)


def topk_mean(values: np.ndarray, ratio: float = SCORE_TOPK_RATIO) -> np.ndarray:
    """Mean of the ``max(1, int(ratio * n))`` largest of the ``n`` values of each ``[..., H, W]`` map."""
    flat = values.reshape(*values.shape[:-2], -1)
    n = flat.shape[-1]
    k = max(1, int(ratio * n))
    return np.partition(flat, n - k, axis=-1)[..., n - k :].mean(axis=-1)


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every output row: the two source rows and the weight of the second (torch's rule)."""
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    low = src.astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    return low, high, (src - low).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[height, width]`` bilinear resize of a 2-D map, as torch's ``align_corners=False``, no antialias."""
    low, high, w = _source_index(height, image.shape[0])
    rows = image[low] * (1 - w)[:, None] + image[high] * w[:, None]
    low, high, w = _source_index(width, image.shape[1])
    return (rows[:, low] * (1 - w)[None, :] + rows[:, high] * w[None, :]).astype(np.float32)


def stitched_outputs(grid: TileGrid, tile_maps: np.ndarray, eval_size: int) -> tuple[np.ndarray, float]:
    """The whole image's map ``[eval_size, eval_size]`` and score from its tiles' maps ``[T, tile, tile]``.

    Args:
        grid: The image's tiles.
        tile_maps: The graph's maps of those tiles, in box order.
        eval_size: Side of the returned map.
    """
    full = grid.stitch(np.asarray(tile_maps, dtype=np.float32))
    score = float(topk_mean(np.stack(grid.windows(full))).max())
    return resize_bilinear(full, eval_size, eval_size), score
