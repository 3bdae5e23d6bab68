"""MC-dropout uncertainty of the reconstruction (paper §3.3, SPEC §3).

K decoder passes with fresh dropout masks in the bottleneck (the decoder itself has no dropout) run
as ONE batched pass over the K-times repeated bottleneck input; the encoder features are computed once
and shared by all passes, which is what makes it several times faster than K sequential forward passes
of the model. Each pass gives an anomaly map at crop resolution (upsampled, blurred) and a top-1% score;
the uncertainty of an image is the unbiased standard deviation of its K scores and the accumulated map
(Eq. 4) is the sum of its K maps.

On a CPU the decoder is bound by memory traffic (element-wise ops, depth-wise convolutions, RoPE), and a
K*B batch whose activations outgrow the cache is slower per image than a small one. There the passes
run in cache-sized slices of images and passes (:func:`auto_slices`). Measured on a 2-core AMD EPYC (one
thread, CPU time): ``cpu-fast`` (B 8, K 3) 2.80 s as one pass of 24 rows, 1.92 s in slices of 2 images
(6 rows), 2.04 s as K sequential passes; ViT-S at crop 392 (B 2, K 10) 9.96 s as one pass of 20 rows,
9.10 s in slices of one image (10 rows), 7.96 s in passes of 2 rows. On a GPU one pass of K*B is best
and is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ssfilter.models.anomaly_map import anomaly_map, gaussian_blur, topk_mean_score
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import EncoderFeatures

__all__ = ["CPU_SLICE_BYTES", "Uncertainty", "auto_slices", "mc_uncertainty", "uncertainty_from_maps"]

#: Size (bytes) of one decoder activation that a slice of the batched passes aims at on a CPU (see the
#: module docstring); about the share of a last-level cache a single core can keep.
CPU_SLICE_BYTES = 3 << 20


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


def _balanced(total: int, cap: int) -> int:
    """The smallest slice size that splits ``total`` into as few slices of at most ``cap`` as possible."""
    cap = max(1, min(cap, total))
    return math.ceil(total / math.ceil(total / cap))


def auto_slices(model: DinomalyModel, feats: EncoderFeatures, passes: int) -> tuple[int, int]:
    """``(images, passes)`` per batched slice of the K MC passes: everything at once off the CPU.

    On a CPU, a slice holds at most ``R = CPU_SLICE_BYTES // (H*W * width * 4)`` image-passes (decoder
    rows), so that one decoder activation stays about cache-sized: all K passes of as many images as fit
    when ``R >= K``, else one image and up to ``R`` of its passes. Slice sizes are balanced (10 passes
    with ``R = 8`` run as 5 + 5, not 8 + 2).

    Args:
        model: The model (its decoder width).
        feats: The batch's encoder features (device, batch size and grid).
        passes: K.

    Returns:
        Images and passes per slice; ``(B, K)`` means one pass over the whole batch.
    """
    b = feats.batch_size
    if feats.layers[0].device.type != "cpu":
        return b, passes
    h, w = feats.grid
    rows = max(1, CPU_SLICE_BYTES // (h * w * model.dim * 4))
    if rows >= passes:
        return _balanced(b, rows // passes), passes
    return 1, _balanced(passes, rows)


@torch.no_grad()
def mc_uncertainty(
    model: DinomalyModel,
    feats: EncoderFeatures,
    passes: int = 10,
    image_topk_ratio: float = 0.01,
    chunk: int | Literal["auto"] | None = "auto",
) -> Uncertainty:
    """Run ``passes`` MC-dropout reconstructions of a batch as one batched pass (or a few slices).

    Args:
        model: The reconstruction model (its mode is irrelevant: dropout is forced on).
        feats: Frozen-encoder features of the batch (computed once and shared by all passes).
        passes: K, the number of dropout masks (paper: 10).
        image_topk_ratio: Share of the hottest pixels averaged into a score (paper: 1%).
        chunk: ``"auto"`` (default): slices from :func:`auto_slices` -- the whole batch and all K passes
            at once on a GPU, cache-sized slices of images and passes on a CPU. None: one pass over the
            whole batch. An int: at most that many images per pass (all K passes), which also bounds
            memory on large batches. The results do not depend on the slicing except through which
            random numbers become which dropout mask.

    Returns:
        :class:`Uncertainty` with maps at crop resolution.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    b = feats.batch_size
    if chunk == "auto":
        step, pass_step = auto_slices(model, feats, passes)
    else:
        step, pass_step = (b if chunk is None else max(1, int(chunk))), passes
    parts: list[Uncertainty] = []
    for start in range(0, b, step):
        sub = feats.select(slice(start, start + step)) if step < b else feats
        maps = [_pass_maps(model, sub, min(pass_step, passes - k0)) for k0 in range(0, passes, pass_step)]
        parts.append(uncertainty_from_maps(torch.cat(maps), image_topk_ratio))
    if len(parts) == 1:
        return parts[0]
    return Uncertainty(
        torch.cat([p.pass_scores for p in parts], dim=1),
        torch.cat([p.uncertainty for p in parts]),
        torch.cat([p.acc_map for p in parts]),
    )


def _pass_maps(model: DinomalyModel, feats: EncoderFeatures, passes: int) -> Tensor:
    """Blurred maps ``[passes, B, S, S]`` of ``passes`` dropout reconstructions run as one batch."""
    b = feats.batch_size
    dec = model.decode(feats, mc_passes=passes)  # pass-major: rows k*B .. (k+1)*B-1 are pass k
    enc = [t.repeat(passes, 1, 1, 1) for t in model.target_groups(feats)]
    maps = anomaly_map([t.float() for t in enc], [t.float() for t in dec], model.crop)  # [K*B, 1, S, S]
    maps = gaussian_blur(maps)[:, 0]
    return maps.reshape(passes, b, *maps.shape[-2:])
