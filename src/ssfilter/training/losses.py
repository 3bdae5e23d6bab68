"""Hard-mining global cosine loss ``D`` of Dinomaly (SPEC §1, used by SSFilter's Eq. 12-14).

The loss value is a plain global cosine distance per image; hard mining acts only on the GRADIENT: positions
that are already well reconstructed ("easy", point distance below the batch-wide k-th largest) have their
gradient scaled by ``factor`` (0.1), so training concentrates on the hard positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ssfilter.models.anomaly_map import COSINE_EPS, autocast_disabled, point_distance

__all__ = ["ThresholdPool", "hard_cosine_loss", "hard_mining_p"]

#: Maps one group's point distances ``[B, H, W]`` to the values the hard-mining threshold is taken over
#: and how many of them are real: ``(values, count)``. Under DDP it gathers every rank's distances (padded
#: with ``-inf``, never among the top ``count``), so the threshold is the global batch's, as in one process.
ThresholdPool = Callable[[Tensor], tuple[Tensor, int]]


def hard_mining_p(iteration: int, p_max: float = 0.9, ramp_iters: int = 1000) -> float:
    """Share of positions treated as easy at ``iteration``: ``min(p_max * iteration / ramp_iters, p_max)``.

    Ramps linearly from 0 so early training uses all gradients. ``ramp_iters <= 0`` gives ``p_max`` at once;
    negative iterations give 0.
    """
    if ramp_iters <= 0:
        return p_max
    return max(0.0, min(p_max * iteration / ramp_iters, p_max))


def _easy_mask(dist: Tensor, p: float, pool: ThresholdPool | None = None) -> Tensor:
    """Positions ``[B, H, W]`` whose distance is strictly below the k-th largest over the whole batch.

    ``k = max(1, int(numel * (1 - p)))``. Ties with the threshold count as hard. With ``p = 0``, ``k = numel``
    and the threshold is the minimum, so no position is strictly below it: gradients stay untouched. With
    ``pool``, the k-th largest is taken over ``pool(dist)`` (``numel`` = its count) instead.
    """
    flat, count = (dist.flatten(), dist.numel()) if pool is None else pool(dist)
    k = max(1, int(count * (1.0 - p)))
    threshold = torch.topk(flat, k, largest=True, sorted=True).values[-1]
    return dist < threshold


def hard_cosine_loss(
    enc_groups: Sequence[Tensor],
    dec_groups: Sequence[Tensor],
    p: float,
    factor: float = 0.1,
    reduction: Literal["mean", "none"] = "mean",
    pool: ThresholdPool | None = None,
) -> Tensor:
    """Global cosine loss with gradient hard mining, averaged over groups.

    Args:
        enc_groups: Encoder feature groups ``[B, C, H, W]`` (targets; detached here).
        dec_groups: Decoder feature groups, same shapes; must carry grad for the mining hook to be installed.
        p: Share of easy positions (see :func:`hard_mining_p`), in ``[0, 1]``.
        factor: Gradient multiplier for easy positions.
        reduction: ``"mean"`` gives a scalar; ``"none"`` gives per-image losses ``[B]`` (mean over groups) so
            the SSFilter trainer can sum kept and synthetic images separately (Eq. 12-14).
        pool: Optional :data:`ThresholdPool`: the batch the threshold is taken over is then ``pool``'s
            (DDP: the global batch of all ranks), called once per group, so it may be a collective.

    Returns:
        The loss in float32 (the cosines are computed in float32 even under bf16 autocast).

    Per image and group the loss is ``1 - cos(a.flatten(), b.flatten())`` over the whole C·H·W vector. For
    each group, a hook on the decoder tensor multiplies by ``factor`` the gradient (all channels) at positions
    whose point distance ``1 - cos(a, b, dim=C)`` is below the k-th largest over the WHOLE batch (threshold
    and mask are fixed at call time, in float32). Because the hook rescales the gradient element-wise, it is
    correct for any later reduction, e.g. summing only a subset of the per-image losses: images left out get
    zero gradient.

    The hook is registered on the decoder tensors themselves: call this once per backward pass on a given
    tensor; a second call stacks a second hook (easy positions would get ``factor**2``).
    """
    if len(enc_groups) == 0 or len(enc_groups) != len(dec_groups):
        raise ValueError(
            f"need the same non-zero number of encoder and decoder groups, got {len(enc_groups)} and "
            f"{len(dec_groups)}"
        )
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")

    per_group = []
    for enc, dec in zip(enc_groups, dec_groups, strict=True):
        a = enc.detach()
        with torch.no_grad():
            dist = point_distance(a, dec.detach())  # [B, H, W], float32, raises on shape mismatch
            easy = _easy_mask(dist, p, pool).unsqueeze(1)  # [B, 1, H, W], broadcast over channels
        if dec.requires_grad and torch.is_grad_enabled():
            dec.register_hook(_make_hook(easy, factor))
        with autocast_disabled(dec.device):
            cos = F.cosine_similarity(
                a.flatten(1).float(), dec.flatten(1).float(), dim=1, eps=COSINE_EPS
            )  # fp32 cast kept in the graph
        per_group.append(1.0 - cos)
    per_image = torch.stack(per_group, dim=0).mean(dim=0)
    return per_image.mean() if reduction == "mean" else per_image


def _make_hook(easy: Tensor, factor: float) -> Callable[[Tensor], Tensor]:
    """Build the gradient hook: ``grad * factor`` at easy positions, ``grad`` unchanged elsewhere."""

    def hook(grad: Tensor) -> Tensor:
        return torch.where(easy, grad * factor, grad)

    return hook
