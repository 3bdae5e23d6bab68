"""Exact nearest-neighbour search of query patches in a memory bank, in bounded-memory chunks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_distances"]


def nearest_distances(
    queries: Tensor, bank: Tensor, k: int = 1, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """Euclidean distances and indices of the ``k`` nearest bank rows of every query, in query chunks.

    Each chunk of ``chunk_size`` queries is compared with the whole bank by :func:`torch.cdist`, so memory
    is O(chunk_size * M). The distances of the selected neighbours are then recomputed directly from the
    differences: cdist's matrix-product path loses precision for near-identical vectors, and a training
    patch found in memory should read 0, not 1e-3.

    Args:
        queries: ``[Q, D]``.
        bank: ``[M, D]``.
        k: Neighbours per query, ``1 <= k <= M``.
        chunk_size: Queries per chunk.

    Returns:
        ``(dist [Q, k], idx [Q, k])``, ascending along ``k``.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected [Q, D] and [M, D], got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0]}] (bank size), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dists: list[Tensor] = []
    idxs: list[Tensor] = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        _, idx = torch.cdist(q, bank).topk(k, dim=1, largest=False)
        exact = (q.unsqueeze(1) - bank[idx]).norm(dim=-1)
        exact, order = exact.sort(dim=1)
        dists.append(exact)
        idxs.append(idx.gather(1, order))
    if not dists:
        return queries.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)
