"""Scorers: what turns a batch of preprocessed images into anomaly maps and image scores.

A :class:`Scorer` is all :func:`ssfilter.evaluation.evaluate.evaluate`, the predictor and the reports need
of a method: ``maps, scores = scorer(images)``. :class:`ModelScorer` adapts a trained Dinomaly-family model
(:func:`predict_maps`), :class:`BaselineScorer` a fitted baseline (PatchCore, SoftPatch), and
:class:`TiledScorer` scores whole images tile by tile for runs with ``data.coverage = "tiles"``
(:func:`scorer_for` builds the right one for a run).

Tiles: the model sees ``crop x crop`` tiles at native resolution (:mod:`ssfilter.data.tiling`). The tiles'
test-time maps (blurred at tile resolution, like any crop) are averaged back into one map of the whole
scaled image. The image score is the largest top-1% mean over the tile windows of that stitched map, not
the top-1% mean of the whole map: a defect covering 0.2% of a large part would be diluted five-fold by the
latter, while each window is exactly the area one model input sees. The returned map is brought to
``eval_size x eval_size`` like every other scorer's, so metrics, calibration and heat-maps are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ssfilter.baselines.registry import Baseline
from ssfilter.config import Config, DataConfig
from ssfilter.data.tiling import TileGrid
from ssfilter.models.anomaly_map import evaluation_maps, topk_mean_score
from ssfilter.models.dinomaly import DinomalyModel

__all__ = [
    "BaselineScorer",
    "ModelScorer",
    "Scorer",
    "TiledScorer",
    "predict_maps",
    "score_tensors",
    "scorer_for",
    "with_coverage",
]


@torch.no_grad()
def predict_maps(
    model: DinomalyModel, images: torch.Tensor, eval_size: int, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred anomaly maps ``[B, S, S]`` at ``eval_size`` and top-1% image scores ``[B]``."""
    device_type = images.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type == "cuda"):
        rec = model(images)
    enc = [t.float() for t in rec.encoder]
    dec = [t.float() for t in rec.decoder]
    return evaluation_maps(enc, dec, model.crop, eval_size)


class Scorer(Protocol):
    """Anomaly maps and image scores of image batches: what :func:`evaluate` needs of a method.

    Attributes:
        device: Where the scorer wants its input images.
        mean: Per-channel mean of the image normalisation the scorer expects.
        std: Per-channel standard deviation of that normalisation.
    """

    device: torch.device
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` at the evaluation size and image scores ``[B]`` of normalised images."""
        ...


class ModelScorer:
    """A trained Dinomaly-family model as a :class:`Scorer` (:func:`predict_maps`).

    Args:
        model: The model, already on its device.
        eval_size: Side of the maps.
        amp: Run the model under bfloat16 autocast on CUDA.
    """

    def __init__(self, model: DinomalyModel, eval_size: int, amp: bool = False) -> None:
        self.model = model.eval()
        self.eval_size = eval_size
        self.amp = amp
        self.device = next(model.parameters()).device
        self.mean, self.std = model.encoder.mean, model.encoder.std

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` and top-1% image scores ``[B]``."""
        return predict_maps(self.model, images, self.eval_size, amp=self.amp)


class BaselineScorer:
    """A fitted baseline (PatchCore, SoftPatch) as a :class:`Scorer`.

    The baseline's maps come at the crop size; they are resized bilinearly to ``eval_size`` (when they
    differ), the image scores are the baseline's own.

    Args:
        model: The fitted baseline, already on its device.
        eval_size: Side of the maps.
    """

    def __init__(self, model: Baseline, eval_size: int) -> None:
        self.model = model
        self.eval_size = eval_size
        self.device = model.device
        self.mean, self.std = model.encoder.mean, model.encoder.std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` and image scores ``[B]``."""
        maps, scores = self.model.predict(images)
        size = self.eval_size
        if tuple(maps.shape[-2:]) != (size, size):
            maps = F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
            maps = maps.squeeze(1)
        return maps, scores


class TiledScorer:
    """A :class:`~ssfilter.evaluation.evaluate.Scorer` of whole scaled images built on a tile scorer.

    Args:
        inner: Scores ``[N, 3, tile, tile]`` batches with maps at tile resolution.
        tile: Side of a tile.
        overlap: Least share of a tile its neighbours overlap.
        eval_size: Side of the returned maps.
        chunk: Tiles per forward pass of ``inner``.
    """

    def __init__(self, inner: Scorer, tile: int, overlap: float, eval_size: int, chunk: int = 32) -> None:
        self.inner = inner
        self.tile, self.overlap, self.eval_size, self.chunk = tile, overlap, eval_size, max(1, chunk)
        self.device, self.mean, self.std = inner.device, inner.mean, inner.std

    @torch.no_grad()
    def stitched(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The whole-image map ``[H, W]`` of one scaled image ``[3, H, W]`` and its score (0-d)."""
        grid = TileGrid(int(image.shape[-2]), int(image.shape[-1]), self.tile, self.overlap)
        tiles = torch.stack(grid.windows(image))
        parts = [self.inner(tiles[i : i + self.chunk])[0] for i in range(0, len(tiles), self.chunk)]
        full = grid.stitch(torch.cat(parts).float())
        return full, topk_mean_score(torch.stack(grid.windows(full)), ratio=0.01).max()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Maps ``[B, S, S]`` at ``eval_size`` and image scores ``[B]`` of scaled images ``[B, 3, H, W]``."""
        maps, scores = [], []
        size = (self.eval_size, self.eval_size)
        for image in images:
            full, score = self.stitched(image)
            maps.append(
                F.interpolate(full[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
            )
            scores.append(score)
        return torch.stack(maps), torch.stack(scores)


def with_coverage(make: Callable[[int], Scorer], data: DataConfig) -> Scorer:
    """The scorer a run's coverage needs: ``make(eval_size)`` itself, or tiled around ``make(crop)``.

    Args:
        make: Builds the method's scorer for maps of a given side.
        data: The run's data settings (coverage, sizes, overlap).
    """
    if data.coverage != "tiles":
        return make(data.eval_size)
    return TiledScorer(make(data.crop), data.crop, data.tile_overlap, data.eval_size)


def score_tensors(scorer: Scorer, images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Maps ``[B, S, S]`` and scores ``[B]`` of preprocessed images that may differ in size (tiled runs).

    Images of one size go through ``scorer`` together, so a plain run's batch is still one forward pass.
    """
    if not images:
        raise ValueError("no images to score")
    if all(im.shape == images[0].shape for im in images):
        return scorer(torch.stack(list(images)).to(scorer.device))
    parts = [scorer(im[None].to(scorer.device)) for im in images]
    return torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])


def scorer_for(model: DinomalyModel, cfg: Config) -> Scorer:
    """The scorer of a trained model under its run's config (tiled when ``data.coverage = "tiles"``)."""
    return with_coverage(lambda size: ModelScorer(model, size, amp=cfg.train.amp), cfg.data)
