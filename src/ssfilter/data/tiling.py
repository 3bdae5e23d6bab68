"""Tiles at native resolution: where the tiles of an image lie, and how their maps are stitched back.

A defect covering 0.2% of a 1130 x 460 part is 2-3 pixels wide once the part is squashed to 224 x 224; at
native resolution it spans several feature cells. With ``data.coverage = "tiles"`` an image is resized by
``data.tile_scale`` (1.0 = native, aspect ratio kept), cut into overlapping ``crop x crop`` tiles, every
tile is scored by the model as an image of its own, and the tiles' maps are averaged back into one map of
the whole image (:func:`stitch`).

Geometry only, and free of torch: the same :class:`TileGrid` cuts and stitches torch tensors (the dataset
that yields tiles, :class:`ssfilter.data.tile_dataset.TileDataset`, and the scorer that stitches maps,
:class:`ssfilter.evaluation.scorers.TiledScorer`) and numpy arrays (the torch-free predictor of exported
tiled runs, :mod:`ssfilter.inference.exported_tiles`), so training, evaluation and deployment tile alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TileGrid", "scaled_size", "tile_positions"]


def tile_positions(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least ``overlap`` shared.

    The first tile starts at 0, the last ends at ``length``; the ones between are spread evenly, so no
    pixel is left out and neighbours share at least ``overlap * tile`` pixels.

    Raises:
        ValueError: ``length < tile`` (scale the image up first, see :func:`scaled_size`), ``tile < 1``
            or ``overlap`` outside ``[0, 1)``.
    """
    if tile < 1:
        raise ValueError(f"tile side must be positive, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if length < tile:
        raise ValueError(f"a side of {length} px cannot hold a {tile} px tile; scale the image up first")
    if length == tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def scaled_size(width: int, height: int, scale: float, tile: int) -> tuple[int, int]:
    """``(width, height)`` an image is resized to before tiling: ``scale`` times its own, aspect kept.

    A side that would end shorter than one tile is brought up to ``tile`` (the other side grows in the
    same ratio), so every image holds at least one tile.

    Raises:
        ValueError: non-positive sizes or scale.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if not scale > 0:
        raise ValueError(f"tile scale must be positive, got {scale}")
    factor = max(scale, tile / min(width, height))
    return max(tile, round(width * factor)), max(tile, round(height * factor))


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one (scaled) image: ``len(grid)`` boxes of ``tile x tile`` pixels.

    Attributes:
        height: Height of the scaled image.
        width: Width of the scaled image.
        tile: Side of a tile (the model's input size, ``data.crop``).
        overlap: Least share of a tile its neighbours overlap.
    """

    height: int
    width: int
    tile: int
    overlap: float = 0.25

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile, row by row."""
        rows = tile_positions(self.height, self.tile, self.overlap)
        cols = tile_positions(self.width, self.tile, self.overlap)
        return [(top, left) for top in rows for left in cols]

    def __len__(self) -> int:
        return len(self.boxes)

    def windows(self, image: Any) -> list[Any]:
        """The ``tile x tile`` views of every tile of ``image`` ``[..., height, width]``, in box order.

        Works on torch tensors and numpy arrays alike (plain slicing); stack them with the array's own
        library (``torch.stack``, ``np.stack``).
        """
        if tuple(image.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"image of {tuple(image.shape[-2:])} does not match the grid's {(self.height, self.width)}"
            )
        t = self.tile
        return [image[..., y : y + t, x : x + t] for y, x in self.boxes]

    def stitch(self, maps: Any) -> Any:
        """One ``[height, width]`` map from the tiles' maps ``[T, tile, tile]``, overlaps averaged.

        ``maps`` is a torch tensor (the result stays on its device and dtype) or a numpy array.
        """
        if maps.ndim != 3 or maps.shape[0] != len(self) or tuple(maps.shape[1:]) != (self.tile, self.tile):
            raise ValueError(
                f"expected {len(self)} tile maps of {self.tile} x {self.tile}, got {tuple(maps.shape)}"
            )
        total = _zeros_like(maps, (self.height, self.width))
        count = _zeros_like(maps, (self.height, self.width))
        t = self.tile
        for (y, x), tile_map in zip(self.boxes, maps, strict=True):
            total[y : y + t, x : x + t] += tile_map
            count[y : y + t, x : x + t] += 1
        return total / count

    def box_mask_any(self, mask: Any) -> list[bool]:
        """Whether each tile holds a non-zero pixel of ``mask`` ``[height, width]`` (a defect's tiles)."""
        t = self.tile
        return [bool((mask[y : y + t, x : x + t] > 0).any()) for y, x in self.boxes]


def _zeros_like(maps: Any, shape: tuple[int, int]) -> Any:
    """Zeros of ``shape`` in the array library, dtype (and device) of ``maps``: a torch tensor or numpy."""
    new_zeros = getattr(maps, "new_zeros", None)  # torch tensors; numpy arrays have no such method
    return new_zeros(shape) if new_zeros is not None else np.zeros(shape, dtype=maps.dtype)
