"""Greedy coreset subsampling of a memory bank (PatchCore §3.2), on a seeded random projection.

The memory-bank baselines (PatchCore, SoftPatch) keep only a coreset of their training patches: the
farthest-point (k-center) selection below, computed on a Johnson-Lindenstrauss projection so that wide
descriptors stay cheap. Only the selection uses the projection; callers keep the full descriptors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["coreset_size", "farthest_point_sampling", "greedy_coreset", "random_projection"]


def random_projection(features: Tensor, dim: int, seed: int) -> Tensor:
    """Seeded Gaussian random projection ``[N, D] -> [N, dim]`` (Johnson-Lindenstrauss).

    Entries are ``N(0, 1/dim)``, so squared distances are preserved in expectation. Features with
    ``D <= dim`` are returned unchanged: projecting them would not make anything cheaper. The matrix is
    drawn on the CPU, so the result does not depend on the device.
    """
    if features.shape[1] <= dim:
        return features
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=gen, dtype=torch.float32) / math.sqrt(dim)
    return features @ matrix.to(device=features.device, dtype=features.dtype)


def farthest_point_sampling(points: Tensor, num: int, start: int, progress: bool = False) -> Tensor:
    """Greedy k-center selection: ``num`` indices, each the point farthest from those already chosen.

    Starts at ``start`` and keeps every point's squared distance to its nearest chosen point, updated
    with one matrix-vector product per step: O(N * num) time and O(N) extra memory. The loop never
    synchronises with the device. Ties go to the lowest index. Computes in float32 (float64 stays float64).

    Args:
        points: ``[N, D]`` points.
        num: Number of indices to select, ``1 <= num <= N``.
        start: Index of the first selected point.
        progress: Show a progress bar.

    Returns:
        ``[num]`` int64 indices in selection order, on the points' device.
    """
    n = points.shape[0]
    if not 1 <= num <= n:
        raise ValueError(f"num must be in [1, {n}], got {num}")
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n}), got {start}")
    z = points if points.dtype == torch.float64 else points.float()
    sq = (z * z).sum(dim=1)
    selected = torch.empty(num, dtype=torch.long, device=z.device)
    # ``idx`` stays a one-element tensor: indexing with it (unlike with a 0-d tensor or an int taken from
    # the device) needs no host synchronisation, so the loop queues kernels without waiting on a GPU.
    idx = torch.full((1,), start, dtype=torch.long, device=z.device)
    min_dist = torch.full((n,), math.inf, dtype=z.dtype, device=z.device)
    for i in tqdm(range(num), desc="coreset", unit="pt", disable=not progress, dynamic_ncols=True):
        if i:
            idx = torch.argmax(min_dist).view(1)
        selected[i : i + 1] = idx
        # ||z - c||^2 = ||z||^2 + ||c||^2 - 2 z.c, clamped at 0 against cancellation.
        dist = (sq + sq[idx] - 2.0 * (z @ z[idx].squeeze(0))).clamp_min_(0.0)
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist.index_fill_(0, idx, 0.0)  # a chosen point is never chosen again, whatever the rounding
    return selected


def coreset_size(n: int, ratio: float) -> int:
    """Number of coreset points for ``n`` features: ``round(ratio * n)`` clipped to ``[1, n]``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, round(ratio * n)))


def greedy_coreset(
    features: Tensor,
    ratio: float,
    projection_dim: int = 128,
    seed: int = 0,
    progress: bool = False,
    *,
    of: int | None = None,
) -> Tensor:
    """Indices of a greedy coreset of ``features`` (PatchCore's memory-bank subsampling).

    Farthest-point selection (:func:`farthest_point_sampling`) on the seeded random projection of the
    features (:func:`random_projection`), from a seeded random start.

    Args:
        features: ``[N, D]`` patch features.
        ratio: Share of features kept, in (0, 1]; 1.0 returns every index in order; at least one is kept.
        projection_dim: Projection width for the distance computations.
        seed: Seed of the projection and of the starting point.
        progress: Show a progress bar.
        of: Count ``ratio`` against this many features instead of ``N`` (SoftPatch: against all training
            patches, before its discriminator dropped some, so the bank is as large as PatchCore's).

    Returns:
        ``[M]`` int64 indices on the features' device, ``M = round(ratio * of)`` (``of`` defaults to
        ``N``) clipped to ``[1, N]``.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot select a coreset of zero features")
    num = min(n, coreset_size(n if of is None else max(of, 1), ratio))
    if num == n:
        return torch.arange(n, device=features.device)
    gen = torch.Generator().manual_seed(seed)
    start = int(torch.randint(n, (1,), generator=gen))
    projected = random_projection(features.float(), projection_dim, seed)
    return farthest_point_sampling(projected, num, start, progress=progress)
