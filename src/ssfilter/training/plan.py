"""Which images every iteration trains on, and the random streams derived from ``(seed, iteration)``.

Batches are a pure function of ``(seed, iteration)`` -- epoch ``e`` is a seeded permutation of the
training set cut into ``drop_last`` batches -- so a resumed run draws exactly the batches an
uninterrupted run would, without storing sampler state. The other random streams are pure functions
too: at the start of every iteration the global torch generator is seeded from ``(seed, iteration,
rank)`` (it drives the in-batch filter's MC-dropout passes), and the training dropout masks of an
image come from ``(seed, iteration, position in the global batch)``. Under DDP every rank takes a
contiguous slice of the same global batch, so the masks do not depend on how the batch is sliced.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from ssfilter.runtime import distributed

__all__ = [
    "BatchPlan",
    "PlanSampler",
    "dropout_row_seeds",
    "iteration_rng_seed",
    "resumed_synthesis_seed",
    "stack_images",
    "synthesis_seed",
]

# Tags that keep the derived random streams apart (see distributed.derive_seed).
_TAG_ITERATION = 1
_TAG_DROPOUT = 2
_TAG_SYNTHETIC_DROPOUT = 3
_TAG_SYNTHESIS = 4


def iteration_rng_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """Seed of the global torch generator at the start of ``iteration`` on ``rank``.

    It drives the in-batch filter's MC-dropout masks; deriving it per iteration makes resume exact
    without saving per-rank random states.

    Args:
        seed: The run's seed.
        iteration: 0-based iteration.
        rank: Process rank (0 in a single process).
    """
    return distributed.derive_seed(seed, _TAG_ITERATION, iteration, rank)


def dropout_row_seeds(
    seed: int, iteration: int, positions: Iterable[int], synthetic: bool = False
) -> list[int]:
    """Training dropout seeds of the images at ``positions`` of the global batch of ``iteration``.

    Args:
        seed: The run's seed.
        iteration: 0-based iteration.
        positions: Positions in the global batch (for synthetic images: rank offset + index).
        synthetic: Seeds for synthetic images (a separate stream).
    """
    tag = _TAG_SYNTHETIC_DROPOUT if synthetic else _TAG_DROPOUT
    return [distributed.derive_seed(seed, tag, iteration, int(pos)) for pos in positions]


def synthesis_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s synthesis generator (rank 0 keeps the run's seed, as a single process)."""
    return seed if rank == 0 else distributed.derive_seed(seed, _TAG_SYNTHESIS, rank)


def resumed_synthesis_seed(seed: int, iteration: int, rank: int) -> int:
    """Fresh seed of rank ``rank``'s synthesis generator when a resume cannot give it its saved state.

    That happens when the checkpoint was written by another number of processes.

    Args:
        seed: The run's seed.
        iteration: Iteration the run resumes at.
        rank: Process rank.
    """
    return distributed.derive_seed(seed, _TAG_SYNTHESIS, iteration, rank)


class BatchPlan:
    """Deterministic batches: epoch permutations from ``seed``, ``drop_last``.

    A training set smaller than the batch size trains on all images each iteration (with a warning)
    instead of producing no batch at all.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < 1:
            raise ValueError("the training set is empty")
        if n < batch_size:
            warnings.warn(
                f"the training set has {n} images, fewer than the batch size {batch_size}; "
                f"training with batches of {n}",
                stacklevel=2,
            )
            batch_size = n
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch = -1
        self._perm: Tensor | None = None

    def indices(self, iteration: int) -> list[int]:
        """Dataset indices of the batch used at ``iteration``."""
        epoch, pos = divmod(iteration, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=gen)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size].tolist()


class PlanSampler(Sampler[list[int]]):
    """A rank's slice ``[lo, hi)`` of the planned batches of iterations ``[start, end)``, for a DataLoader."""

    def __init__(self, plan: BatchPlan, start: int, end: int, lo: int, hi: int) -> None:
        self.plan = copy.copy(plan)  # own permutation cache: the training loop uses the original
        self.start, self.end, self.lo, self.hi = start, end, lo, hi

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.end):
            yield self.plan.indices(it)[self.lo : self.hi]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def stack_images(items: list[dict[str, Any]]) -> Tensor:
    """DataLoader collate: the batch's transformed images ``[B, 3, S, S]``."""
    return torch.stack([item["image"] for item in items])
