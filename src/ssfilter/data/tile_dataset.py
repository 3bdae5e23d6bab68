"""Training on tiles: every tile of every image is a sample of its own.

With ``data.coverage = "tiles"`` the model learns tiles at native resolution (see
:mod:`ssfilter.data.tiling`), so the training set is the list of all tiles. A tile remembers its image
(``group``): the in-batch filter compares a tile only with the tiles of OTHER images, since overlapping
tiles of one image share pixels and would hide each other's defects. The filter decides per tile: the
defect-free tiles of a defective image are good training material, only the tiles holding the defect
should go. Where the defect's mask is known (noise-injected benchmark images), a tile's label for the
filter log says whether it holds defect pixels, so recall figures count tiles that can be caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ssfilter.config import Config, DataConfig
from ssfilter.data.datasets import LABEL_ANOMALOUS, AnomalyDataset, Sample
from ssfilter.data.images import image_size, read_image, read_mask
from ssfilter.data.tiling import TileGrid
from ssfilter.data.transforms import Normalization, ScaledTransform, transform_for

__all__ = ["TileDataset", "dataset_groups", "dataset_labels", "training_dataset"]


class TileDataset(Dataset[dict[str, Any]]):
    """All tiles of ``samples``, image by image, row by row.

    Item: ``{"image": [3, t, t], "label": int, "index": int, "path": str, "group": int, "tile": int}``:
    ``group`` is the image's position in ``samples``, ``tile`` the tile's position in its grid.

    Args:
        samples: The images (validated already).
        transform: Scales and normalises an image (:class:`~ssfilter.data.transforms.ScaledTransform`).
        overlap: Least share of a tile its neighbours overlap.

    Attributes:
        grids: The tile grid of every image.
        groups: ``[N]`` image index of every tile.
        labels: ``[N]`` per-tile labels for logs: an anomalous image's tile is 1 where it holds defect
            pixels of a known mask (0 elsewhere), 1 everywhere when the mask is unknown; normal and
            unknown images pass their label on.
    """

    def __init__(self, samples: Sequence[Sample], transform: ScaledTransform, overlap: float) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.grids: list[TileGrid] = []
        self.items: list[tuple[int, int]] = []
        labels: list[int] = []
        for i, sample in enumerate(self.samples):
            width, height = image_size(sample.path)
            scaled_w, scaled_h = transform.size_of(width, height)
            grid = TileGrid(scaled_h, scaled_w, transform.tile, overlap)
            self.grids.append(grid)
            self.items.extend((i, k) for k in range(len(grid)))
            labels.extend(self._tile_labels(sample, grid, (width, height)))
        self.groups = torch.tensor([i for i, _ in self.items], dtype=torch.long)
        self.labels = torch.tensor(labels, dtype=torch.long)
        # The last image decoded and scaled: tiles read in order (the feature cache's warm-up, the
        # dataset filter) decode each image once instead of once per tile.
        self._last: tuple[int, torch.Tensor] | None = None

    def _scaled(self, image_index: int) -> torch.Tensor:
        """The scaled, normalised image ``[3, H, W]`` (kept until another image is asked for)."""
        if self._last is None or self._last[0] != image_index:
            self._last = (image_index, self.transform(read_image(self.samples[image_index].path)))
        return self._last[1]

    @staticmethod
    def _tile_labels(sample: Sample, grid: TileGrid, size: tuple[int, int]) -> list[int]:
        """Per-tile labels of one image (see the class docstring)."""
        if sample.label != LABEL_ANOMALOUS or sample.mask_path is None:
            return [int(sample.label)] * len(grid)
        mask = torch.from_numpy(np.asarray(read_mask(sample.mask_path, size=size), dtype=np.float32))
        # Any defect pixel marks the tile: area interpolation keeps a few-pixel defect non-zero.
        scaled = F.interpolate(mask[None, None], size=(grid.height, grid.width), mode="area")[0, 0]
        return [int(hit) for hit in grid.box_mask_any(scaled)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, tile = self.items[index]
        sample = self.samples[image_index]
        grid = self.grids[image_index]
        full = self._scaled(image_index)
        top, left = grid.boxes[tile]
        t = grid.tile
        return {
            "image": full[:, top : top + t, left : left + t].contiguous(),
            "label": int(self.labels[index]),
            "index": int(index),
            "path": sample.path,
            "group": image_index,
            "tile": tile,
        }


def training_dataset(
    cfg: Config | DataConfig, samples: Sequence[Sample], encoder: Normalization
) -> AnomalyDataset | TileDataset:
    """The samples a run trains on: the images, or with ``data.coverage = "tiles"`` all their tiles."""
    data = cfg.data if isinstance(cfg, Config) else cfg
    transform = transform_for(data, encoder)
    if isinstance(transform, ScaledTransform):
        return TileDataset(samples, transform, data.tile_overlap)
    return AnomalyDataset(samples, transform)


def dataset_labels(dataset: AnomalyDataset | TileDataset) -> torch.Tensor:
    """``[N]`` label of every training sample (tiles: see :class:`TileDataset`), for logs only."""
    if isinstance(dataset, TileDataset):
        return dataset.labels
    return torch.tensor([s.label for s in dataset.samples], dtype=torch.long)


def dataset_groups(dataset: AnomalyDataset | TileDataset) -> torch.Tensor | None:
    """``[N]`` image index of every training sample when the samples are tiles, else None."""
    return dataset.groups if isinstance(dataset, TileDataset) else None
