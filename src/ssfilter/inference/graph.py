"""The computation an ONNX export holds: ``[0, 1]`` RGB crops in, raw anomaly maps and scores out.

Inside the graph: normalisation by the encoder's mean/std, the frozen encoder, the bottleneck in eval
mode (no dropout), the decoder, ``1 - cos`` per group, bilinear upsampling, resizing to
``data.eval_size``, the 5x5 / sigma 4 zero-padded Gaussian blur and the top-1% image score
(:func:`ssfilter.models.anomaly_map.evaluation_maps`, the numbers ``evaluate`` and ``predict`` use).

The graph of a tiled run scores one tile: its maps stay at tile resolution (:func:`graph_map_size`), and
stitching the tiles back happens outside it (:mod:`ssfilter.inference.exported_tiles`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ssfilter.config import DataConfig
from ssfilter.models.anomaly_map import evaluation_maps
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "InferenceGraph", "graph_map_size"]

#: Name of the graph's input: ``float32 [N, 3, crop, crop]`` RGB in [0, 1], not normalised.
INPUT_NAME = "images"
#: Names of the graph's outputs: ``maps`` ``[N, 1, S, S]`` and ``scores`` ``[N]``, raw.
OUTPUT_NAMES = ("maps", "scores")


def graph_map_size(data: DataConfig) -> int:
    """Side of the exported graph's maps: the tile's for a tiled run (stitched later), else ``eval_size``.

    Evaluation scores a tiled run's tiles at tile resolution too
    (:func:`ssfilter.evaluation.scorers.with_coverage`), so the stitched maps are the same.
    """
    return data.crop if data.coverage == "tiles" else data.eval_size


class InferenceGraph(nn.Module):
    """The exported computation: ``[0, 1]`` RGB crops in, raw maps and scores out.

    Args:
        model: A trained model (used in eval mode: no bottleneck dropout).
        eval_size: Side of the output maps (``data.eval_size``).
    """

    def __init__(self, model: DinomalyModel, eval_size: int) -> None:
        super().__init__()
        self.model = model
        self.eval_size = int(eval_size)
        self.register_buffer("mean", torch.tensor(model.encoder.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.encoder.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def train(self, mode: bool = True) -> InferenceGraph:
        """Stay in eval mode whatever the caller asks (no bottleneck dropout, ever).

        The exporter sets eval mode for tracing and then restores the wrapper's previous mode on the
        whole module tree; a wrapper in training mode would switch the model's dropout back on.

        Args:
            mode: Ignored.
        """
        return super().train(False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Maps ``[N, 1, S, S]`` and scores ``[N]`` of ``[N, 3, crop, crop]`` images in [0, 1]."""
        # The same two operations as torchvision's Normalize (subtract, then divide), so the numbers match.
        rec = self.model((images - self.mean) / self.std)
        maps, scores = evaluation_maps(rec.encoder, rec.decoder, self.model.crop, self.eval_size)
        return maps.unsqueeze(1), scores
