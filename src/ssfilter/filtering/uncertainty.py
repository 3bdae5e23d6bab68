"""MC-dropout uncertainty of the reconstruction (paper §3.3, SPEC §3).

K decoder passes with fresh dropout masks in the bottleneck (the decoder itself has no dropout) run
as ONE batched pass over the K-times repeated bottleneck input, which is several times faster than K
sequential passes. Each pass gives an anomaly map at crop resolution (upsampled, blurred) and a
top-1% score; the uncertainty of an image is the unbiased standard deviation of its K scores and the
accumulated map (Eq. 4) is the sum of its K maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ssfilter.models.anomaly_map import anomaly_map, gaussian_blur, topk_mean_score
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import EncoderFeatures

__all__ = ["Uncertainty", "mc_uncertainty", "uncertainty_from_maps"]


@dataclass
class Uncertainty:
    """Per-pass scores, uncertainty and accumulated maps of one batch.

    Attributes:
        pass_scores: ``[K, B]`` top-1% score of every pass (Eq. 3).
        uncertainty: ``[B]`` unbiased std over the K passes (the ``u_i`` of the paper).
        acc_map: ``[B, S, S]`` sum of the K blurred maps at crop resolution (Eq. 4).
    """

    pass_scores: Tensor
    uncertainty: Tensor
    acc_map: Tensor

    @property
    def mean_score(self) -> Tensor:
        """``[B]`` mean of the per-pass scores (a dropout-averaged anomaly score)."""
        return self.pass_scores.mean(0)


def uncertainty_from_maps(maps: Tensor, image_topk_ratio: float = 0.01) -> Uncertainty:
    """Scores, std and accumulated map from per-pass maps ``[K, B, S, S]``.

    With K = 1 the std is undefined; it is reported as 0 (no spread observed) rather than NaN.
    """
    k, b, h, w = maps.shape
    scores = topk_mean_score(maps.reshape(k * b, h, w), image_topk_ratio).reshape(k, b)
    std = scores.std(0, correction=1) if k > 1 else torch.zeros(b, device=maps.device, dtype=scores.dtype)
    return Uncertainty(scores, std, maps.sum(0))


@torch.no_grad()
def mc_uncertainty(
    model: DinomalyModel,
    feats: EncoderFeatures,
    passes: int = 10,
    image_topk_ratio: float = 0.01,
    chunk: int | None = None,
) -> Uncertainty:
    """Run ``passes`` MC-dropout reconstructions of a batch as one batched pass.

    Args:
        model: The reconstruction model (its mode is irrelevant: dropout is forced on).
        feats: Frozen-encoder features of the batch (computed once and shared by all passes).
        passes: K, the number of dropout masks (paper: 10).
        image_topk_ratio: Share of the hottest pixels averaged into a score (paper: 1%).
        chunk: Optional cap on images per batched pass, to bound memory on large batches; the passes
            are then run in slices of ``chunk`` images, still K passes at a time.

    Returns:
        :class:`Uncertainty` with maps at crop resolution.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    b = feats.batch_size
    step = b if chunk is None else max(1, chunk)
    parts: list[Uncertainty] = []
    for start in range(0, b, step):
        sub = feats.select(slice(start, start + step)) if step < b else feats
        parts.append(_batched_passes(model, sub, passes, image_topk_ratio))
    if len(parts) == 1:
        return parts[0]
    return Uncertainty(
        torch.cat([p.pass_scores for p in parts], dim=1),
        torch.cat([p.uncertainty for p in parts]),
        torch.cat([p.acc_map for p in parts]),
    )


def _batched_passes(model: DinomalyModel, feats: EncoderFeatures, passes: int, ratio: float) -> Uncertainty:
    b = feats.batch_size
    dec = model.decode(feats, mc_passes=passes)  # pass-major: rows k*B .. (k+1)*B-1 are pass k
    enc = [t.repeat(passes, 1, 1, 1) for t in model.target_groups(feats)]
    maps = anomaly_map([t.float() for t in enc], [t.float() for t in dec], model.crop)  # [K*B, 1, S, S]
    maps = gaussian_blur(maps)[:, 0]
    return uncertainty_from_maps(maps.reshape(passes, b, *maps.shape[-2:]), ratio)
