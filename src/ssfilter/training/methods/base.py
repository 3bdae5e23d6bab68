"""The training-method protocol: what the trainer asks of a method, and what it lends one for a step.

The trainer (:class:`ssfilter.training.trainer.Trainer`) keeps the loop: setup, restore, batches,
seeding, optimiser and checkpoints. A method keeps its step -- from one rank's batch to the loss
whose gradient the optimiser follows -- and everything only it needs (the ``ssfilter`` method owns
its :class:`~ssfilter.filtering.batch_filter.BatchFilter`, its filter-log rows and its state in
checkpoints). This module imports nothing heavy at run time, so the registry can list method names
(for the CLI's choices) without loading torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor

    from ssfilter.config import Config
    from ssfilter.models.dinomaly import DinomalyModel
    from ssfilter.models.encoders import EncoderFeatures

__all__ = ["MethodState", "StepBatch", "StepModel", "TrainingMethod"]


@dataclass(frozen=True)
class StepBatch:
    """One rank's share of an iteration's global batch, as a method's step receives it.

    Attributes:
        iteration: 0-based iteration.
        indices: Dataset indices of this rank's images.
        feats: Their encoder features.
        images: Their normalised images, or None (loaded only for methods with ``needs_images``, or
            when DataLoader workers decode them anyway).
        p: Hard-mining share of the iteration.
        offset: Position of this rank's first image in the global batch.
        largest: Largest slice any rank holds (None: one process, ``len(indices)``).
        total: Images in the global batch (None: one process, ``len(indices)``).
    """

    iteration: int
    indices: Sequence[int]
    feats: EncoderFeatures
    images: Tensor | None
    p: float
    offset: int = 0
    largest: int | None = None
    total: int | None = None

    @property
    def layout(self) -> tuple[int, int, int]:
        """``(offset, largest slice, global batch)`` (one process: ``(0, n, n)``)."""
        n = len(self.indices)
        return (
            self.offset,
            n if self.largest is None else self.largest,
            n if self.total is None else self.total,
        )


@dataclass(frozen=True)
class StepModel:
    """The model and how this run executes it, lent to a method's step.

    Attributes:
        model: The model being trained.
        decode: ``(feats, row_seeds) -> reconstructions``; under DDP the wrapped trainable part, so that
            one call per step covers every trained image and its gradients are averaged over ranks.
        encode: Encoder features of images made during the step (e.g. synthetic anomalies), in the
            memory layout of the cached features.
    """

    model: DinomalyModel
    decode: Callable[[EncoderFeatures, list[int]], list[Tensor]]
    encode: Callable[[Tensor], EncoderFeatures]

    @classmethod
    def plain(cls, model: DinomalyModel) -> StepModel:
        """The model run directly (one process, no feature cache): for tests and single steps."""
        return cls(model, lambda feats, seeds: model.decode(feats, row_seeds=seeds), model.encode)


class MethodState(NamedTuple):
    """A method's part of a checkpoint (``train_state.pt`` keys ``"filter"`` and ``"filter_ranks"``).

    Attributes:
        state: Rank 0's state (a single process: its state), tensors and plain values only; None for a
            method without state.
        ranks: Every rank's state in rank order under DDP, else None.
    """

    state: Any = None
    ranks: list[Any] | None = None


class TrainingMethod(ABC):
    """One way to turn a rank's batch into a training loss; registered with ``@register_method(name)``.

    A method object lives for one :meth:`Trainer.fit`. The trainer calls :meth:`step` once per iteration
    (inside autocast, before ``backward``), :meth:`checkpoint` on every rank at every checkpoint and
    :meth:`restore` when a run resumes.

    Attributes:
        name: The registered name (``cfg.train.method``), set by ``register_method``.
        needs_images: The step reads ``batch.images`` (else the trainer loads features only).
        log_files: Run-folder logs this method appends to (cut back on resume, emptied on a fresh start;
            their first column must be the 1-based iteration).

    Args:
        cfg: The run's configuration.
        rank: This process's rank.
        world: Number of processes.
        labels: True labels of the training samples (-1 unknown), for logs only: training never sees them.
        groups: Image index of every training sample when the samples are tiles (tiled runs), else None.
    """

    name: ClassVar[str] = ""
    needs_images: ClassVar[bool] = False
    log_files: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cfg: Config,
        *,
        rank: int = 0,
        world: int = 1,
        labels: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.labels = labels
        self.groups = groups

    @abstractmethod
    def step(self, batch: StepBatch, net: StepModel) -> Tensor:
        """The loss of this rank's batch.

        Under DDP the gradients of the ranks' losses are averaged, so scale the loss so that this average
        is the gradient of one loss over the global batch (see :mod:`ssfilter.training.ddp`).

        Args:
            batch: This rank's images of the iteration.
            net: The model and how to run it.
        """

    def checkpoint(self, run_dir: Path) -> MethodState:
        """Write this method's logs (rank 0) and return its state for ``train_state.pt``.

        Called on every rank at every checkpoint, in the same order, so it may use collectives.

        Args:
            run_dir: The run folder.
        """
        return MethodState()

    def restore(self, saved: MethodState, path: Path, iteration: int) -> None:  # noqa: B027 - optional hook
        """Continue from a checkpoint's method state (the default: a stateless method ignores it).

        Args:
            saved: What :meth:`checkpoint` returned when the checkpoint was written.
            path: The checkpoint file (for messages).
            iteration: Iteration the run resumes at.
        """
