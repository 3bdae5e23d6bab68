"""The training loop: seeded, resumable, logged, CPU or CUDA (bf16 autocast), one process or DDP.

The trainer keeps the loop -- setup, restore, batches, optimiser steps, logs and checkpoints -- and
hands every iteration's batch to the training method named by ``cfg.train.method``
(:mod:`ssfilter.training.methods`), which returns the loss. Batches and random streams are pure
functions of ``(seed, iteration)`` (:mod:`ssfilter.training.plan`), so a resumed run continues exactly
as an uninterrupted one would.

**Multi-process training (DDP).** Under ``torchrun --nproc_per_node=N`` every process trains a slice of
the same global batch and the trainable part of the model runs inside ``DistributedDataParallel``
(:mod:`ssfilter.training.ddp`); each method scales its rank's loss so that the averaged gradient is the
gradient of one loss over the global batch (``dinomaly`` then equals a single-process run, ``ssfilter``
filters every rank's slice on its own). Rank 0 alone writes checkpoints and logs; a checkpoint holds
every rank's method state, so a resume with the same number of processes is exact.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.tile_dataset import TileDataset, dataset_groups, dataset_labels, training_dataset
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.feature_cache import FeatureCache
from ssfilter.runfolder import LOG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.runtime import distributed
from ssfilter.runtime.device import enable_tf32, resolve_device
from ssfilter.runtime.seeding import seed_everything, seed_torch
from ssfilter.schedule import resolve_schedule, schedule_notes
from ssfilter.training.checkpoint import (
    build_model,
    load_train_state,
    restore_train_state,
    save_model,
    save_train_state,
    train_state,
    write_run_config,
)
from ssfilter.training.ddp import DecodeStep
from ssfilter.training.logs import LOG_FIELDS, append_log, truncate_log
from ssfilter.training.losses import hard_mining_p
from ssfilter.training.methods import (
    MethodState,
    StepBatch,
    StepModel,
    TrainingMethod,
    get_method,
    list_methods,
)
from ssfilter.training.optim import StableAdamW, build_scheduler
from ssfilter.training.plan import BatchPlan, PlanSampler, iteration_rng_seed, stack_images

__all__ = ["TrainResult", "Trainer"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` returns."""

    run_dir: Path
    iterations: int
    final_loss: float
    seconds: float


@dataclass
class _Run:
    """What one :meth:`Trainer.fit` builds: this rank's model, optimiser, method, data and slice."""

    rank: int
    world: int
    model: DinomalyModel
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: TrainingMethod
    dataset: AnomalyDataset | TileDataset
    plan: BatchPlan
    lo: int  # this rank's slice [lo, hi) of every global batch
    hi: int
    channels_last: bool
    cache: FeatureCache | None = None  # set once the run is restored
    net: StepModel | None = None

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder (rank 0)."""
        return self.rank == 0


class Trainer:
    """Trains a :class:`DinomalyModel` on unlabelled images and writes a run folder.

    ``cfg.train.method`` picks the training method (see :func:`ssfilter.training.methods.list_methods`):
    plain Dinomaly (every image trained on) or SSFilter (the in-batch filter selects, restoration adds
    synthetic anomalies). Launched by ``torchrun`` with several processes, it trains with DDP (see the
    module docstring for what equals a single-process run).

    On CUDA: TF32 matmuls, bf16 autocast of the encoder and decoder (``train.amp``), channels-last
    inputs for CNN encoders, pinned host batches and, with ``data.num_workers > 0``, images decoded by
    DataLoader workers ahead of time (then they are not cached; encoder features still are). The hot
    loop of ``dinomaly`` makes no host-device synchronisation except on logging and checkpoint
    iterations; the in-batch filter of ``ssfilter`` needs its decisions on the host every iteration.

    Args:
        cfg: Full run configuration (saved as ``config.yaml``).
        samples: Training images (already validated; unreadable files removed). Their labels are
            only read for the filter log's recall figures.
        run_dir: Output folder.
        progress: Show a progress bar (rank 0 only).
        stop_after: Stop (as if interrupted) after this many iterations -- for tests of resume.
        on_iteration: Optional callback ``(iteration, log_row)`` after every iteration.
        cache_bytes: Memory budget of the image and encoder-feature cache.
    """

    def __init__(
        self,
        cfg: Config,
        samples: Sequence[Sample],
        run_dir: str | Path,
        *,
        progress: bool = True,
        stop_after: int | None = None,
        on_iteration: Callable[[int, dict[str, Any]], None] | None = None,
        cache_bytes: int = 4 << 30,
    ) -> None:
        self.given_cfg = cfg  # saved in the run folder as given (schedule fractions kept)
        self.cfg = resolve_schedule(cfg)  # what training runs with: schedule lengths in iterations
        self.samples = list(samples)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.stop_after = stop_after
        self.on_iteration = on_iteration
        self.device = resolve_device(cfg.train.device)
        self.cache_bytes = cache_bytes

    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or resume) and write weights, config, state and log into the run folder.

        Args:
            resume: Continue from the run folder's last checkpoint (a missing one warns and starts over).

        Raises:
            UnknownMethodError: ``cfg.train.method`` names no registered training method.
        """
        method_cls = get_method(self.cfg.train.method)
        self.device = distributed.init_distributed(self.device)
        run = self._setup(method_cls)
        if run.main:
            summary, notes = schedule_notes(self.given_cfg)
            log.info("%s", summary)
            for note in notes:
                warnings.warn(note, stacklevel=2)
        start = self._start(run, resume)
        self._attach(run)
        end = self.cfg.train.iters
        if self.stop_after is not None:
            end = min(end, self.stop_after)
        return self._train(run, start, end)

    # -- setup and restore ------------------------------------------------------------------------

    def _setup(self, method_cls: type[TrainingMethod]) -> _Run:
        """Seed, build the model, optimiser, schedule, method, dataset and batch plan of this rank."""
        cfg = self.cfg
        rank, world = distributed.rank(), distributed.world_size()
        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(self.device)
        channels_last = self.device.type == "cuda" and model.encoder.prefers_channels_last
        enable_tf32(self.device)
        if channels_last:
            model.encoder.to(memory_format=torch.channels_last)
        params = model.trainable_parameters()
        optimizer = StableAdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True)
        scheduler = build_scheduler(optimizer, cfg.train.iters, cfg.train.warmup_iters, cfg.train.final_lr)
        dataset = training_dataset(cfg, self.samples, model.encoder)
        # True labels are only read for the filter log's recall figures (noise-injected benchmarks);
        # training itself never sees them.
        groups = dataset_groups(dataset)  # tiled runs only: a method without tiles need not know them
        extra = {} if groups is None else {"groups": groups}
        method = method_cls(cfg, rank=rank, world=world, labels=dataset_labels(dataset), **extra)
        plan = BatchPlan(len(dataset), cfg.data.batch_size, cfg.train.seed)
        if plan.batch_size < world:
            raise ValueError(
                f"the global batch of {plan.batch_size} images cannot be split across {world} processes; "
                "use a larger --batch-size or fewer processes"
            )
        lo, hi = distributed.shard_bounds(plan.batch_size, rank, world)
        return _Run(
            rank, world, model, params, optimizer, scheduler, method, dataset, plan, lo, hi, channels_last
        )

    def _start(self, run: _Run, resume: bool) -> int:
        """Restore the last checkpoint (with ``resume``) or start over; return the first iteration."""
        start = 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.run_dir / STATE_FILE
        # Rank 0 reads the checkpoint and sends it to the others: every rank resumes from the same state,
        # also on nodes that do not share rank 0's file system.
        state = load_train_state(state_path) if resume and run.main and state_path.is_file() else None
        if resume and run.world > 1:
            state = distributed.broadcast_object(state)
        if state is not None:
            start = self._restore(run, state, state_path)
            log.info("resuming %s at iteration %d", self.run_dir, start)
        elif resume and run.main:
            warnings.warn(f"--resume: no {STATE_FILE} in {self.run_dir}; starting from scratch", stacklevel=3)
        if run.main:
            write_run_config(self.run_dir, self.given_cfg)
            if start == 0:
                for path in self._log_paths():
                    truncate_log(path, 0)
        return start

    def _restore(self, run: _Run, state: dict[str, Any], path: Path) -> int:
        """Load a checkpoint into this rank's model, optimiser, schedule and method; return its iteration.

        Args:
            run: This rank's freshly built run.
            state: The content of ``train_state.pt``.
            path: Where it was read (for messages).
        """
        iteration = restore_train_state(state, path, run.model, run.optimizer, run.scheduler)
        run.method.restore(MethodState(state.get("filter"), state.get("filter_ranks")), path, iteration)
        if run.main:
            for log_path in self._log_paths():
                truncate_log(log_path, iteration)
        return iteration

    def _log_paths(self) -> list[Path]:
        """The training log and every registered method's logs.

        A run folder can hold logs of an earlier run with another method (``--overwrite`` keeps the
        folder), so a fresh start empties them all and a resume cuts them all back to its checkpoint.
        """
        names = [LOG_FILE, *(name for m in list_methods() for name in get_method(m).log_files)]
        return [self.run_dir / name for name in dict.fromkeys(names)]

    def _attach(self, run: _Run) -> None:
        """Wrap the trainable part for DDP (after the restore) and set up the feature cache."""
        decode = StepModel.plain(run.model).decode
        if run.world > 1:
            # After the restore: DDP broadcasts rank 0's parameters, so every rank starts identical.
            decode = DistributedDataParallel(DecodeStep(run.model))
        run.cache = FeatureCache(
            run.dataset,
            run.model,
            self.device,
            self.cache_bytes,
            channels_last=run.channels_last,
            pin_memory=self.device.type == "cuda",
        )
        run.net = StepModel(run.model, decode, run.cache.encode)

    # -- the loop ---------------------------------------------------------------------------------

    def _train(self, run: _Run, start: int, end: int) -> TrainResult:
        """Iterations ``[start, end)`` with progress, logging and checkpoints; the result of the run."""
        cfg = self.cfg
        loader = self._loader(run, start, end)
        pending: list[dict[str, Any]] = []
        last_logged = float("nan")
        last_row: dict[str, Any] | None = None
        t_start = time.perf_counter()
        bar = tqdm(
            total=cfg.train.iters,
            initial=start,
            disable=not (self.progress and run.main),
            desc="train",
            unit="it",
            dynamic_ncols=True,
        )
        run.model.train()
        try:
            for it in range(start, end):
                row = last_row = self._iteration(run, it, loader)
                pending.append(row)
                if self.on_iteration is not None:
                    self.on_iteration(it + 1, row)
                bar.update(1)
                if (it + 1) % cfg.train.log_every == 0:
                    last_logged = float(row["loss"])
                    bar.set_postfix(loss=f"{last_logged:.4f}", lr=f"{row['lr']:.2e}")
                if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == cfg.train.iters:
                    self._checkpoint(run, it + 1, pending)
                    pending = []
        finally:
            bar.close()
        distributed.barrier()  # every rank returns once rank 0 has written the last checkpoint
        if pending:
            last_logged = float(pending[-1]["loss"])
        elif math.isnan(last_logged) and last_row is not None:
            last_logged = float(last_row["loss"])
        return TrainResult(self.run_dir, end, last_logged, time.perf_counter() - t_start)

    def _loader(self, run: _Run, start: int, end: int) -> Iterator[Tensor] | None:
        """Images of this rank for iterations ``[start, end)``, decoded by DataLoader workers; or None."""
        if self.cfg.data.num_workers <= 0 or end <= start:
            return None
        loader = DataLoader(
            run.dataset,
            batch_sampler=PlanSampler(run.plan, start, end, run.lo, run.hi),
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=stack_images,
        )
        return iter(loader)

    def _iteration(self, run: _Run, it: int, loader: Iterator[Tensor] | None) -> dict[str, Any]:
        """One training iteration on this rank; its training-log row.

        Args:
            run: This rank's run.
            it: 0-based iteration.
            loader: DataLoader batches of this rank, or None (images come from the cache).
        """
        cfg = self.cfg
        assert run.cache is not None and run.net is not None
        t0 = time.perf_counter()
        seed_torch(iteration_rng_seed(cfg.train.seed, it, run.rank), self.device)
        indices = run.plan.indices(it)[run.lo : run.hi]
        if loader is not None:
            images: Tensor | None = next(loader).to(self.device, non_blocking=True)
        elif run.method.needs_images:
            images = run.cache.images_for(indices)
        else:
            images = None  # features only; uncached images are read on demand
        p = hard_mining_p(it, cfg.train.hard_mining_max, cfg.train.hard_mining_ramp)
        total = run.plan.batch_size
        amp = cfg.train.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            feats = run.cache.features_for(indices, images)
            batch = StepBatch(it, indices, feats, images, p, run.lo, -(-total // run.world), total)
            loss = run.method.step(batch, run.net)
        lr = self._optimize(run, loss)
        # The loss of the global batch: the mean of the ranks' scaled losses (no host sync).
        shown = loss.detach() if run.world == 1 else distributed.all_reduce_sum(loss) / run.world
        return {
            "iteration": it + 1,
            "loss": shown,
            "lr": lr,
            "p": p,
            "batch": total,
            "seconds": time.perf_counter() - t0,
        }

    def _optimize(self, run: _Run, loss: Tensor) -> float:
        """Backward (gradients averaged over ranks under DDP), clip, optimiser and schedule step.

        Returns:
            The learning rate the step used.
        """
        run.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # DDP notes that depthwise-conv gradients [C, 1, k, k] have another (equivalent) stride
            # on the size-1 axis than its bucket views; harmless, so not shown to users.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            loss.backward()  # under DDP the gradients are averaged over ranks here
        torch.nn.utils.clip_grad_norm_(run.params, self.cfg.train.grad_clip)
        run.optimizer.step()
        lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        return lr

    def _checkpoint(self, run: _Run, iteration: int, rows: list[dict[str, Any]]) -> None:
        """Write logs, training state and weights (rank 0; the method's part may be a collective).

        Args:
            run: This rank's run.
            iteration: Iterations done.
            rows: Training-log rows since the last checkpoint.
        """
        if run.main:
            append_log(self.run_dir / LOG_FILE, rows, LOG_FIELDS)
        saved = run.method.checkpoint(self.run_dir)  # every rank: it may gather the ranks' states
        if not run.main:
            return
        state = train_state(
            iteration, run.model, run.optimizer, run.scheduler, saved.state, saved.ranks, run.world
        )
        # Training state first, deployable weights second: both renames are atomic, and resume only
        # reads the state file, so a kill between them loses nothing.
        save_train_state(self.run_dir / STATE_FILE, state)
        save_model(run.model, self.run_dir / MODEL_FILE, iteration)
