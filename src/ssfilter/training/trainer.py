"""The training loop: seeded, resumable, logged, CPU or CUDA (bf16 autocast), one process or DDP.

Batches are a pure function of ``(seed, iteration)`` -- epoch ``e`` is a seeded permutation of the
training set cut into ``drop_last`` batches -- so a resumed run draws exactly the batches an
uninterrupted run would, without storing sampler state. The other random streams are pure functions
too: at the start of every iteration the global torch generator is seeded from ``(seed, iteration,
rank)`` (it drives the in-batch filter's MC-dropout passes), and the training dropout masks of an
image come from ``(seed, iteration, position in the global batch)``.

**Multi-process training (DDP).** Under ``torchrun --nproc_per_node=N`` every process takes a
contiguous slice of the same global batch (sizes differ by at most one image) and the trainable part
(bottleneck, decoder, heads; the frozen encoder is not wrapped) runs inside
``DistributedDataParallel``, which averages the gradients. Each rank's loss is scaled so that this
average is exactly the gradient of ONE loss over the global batch:

* ``dinomaly``: ``L_r = N * sum_{i in slice r} D_i / B`` -- the mean of the per-rank losses is the mean
  of ``D`` over all ``B`` images. The hard-mining threshold of ``D`` is taken over the global batch (the
  point distances are all-gathered) and the dropout masks do not depend on the slicing, so a DDP run
  equals a single-process run up to floating-point rounding, for any N (``B % N`` does not matter).
* ``ssfilter``: every rank filters ITS OWN slice in-batch (patch comparison, MC-dropout, selection,
  materials and synthesis over the rank's images, as the paper's mini-batch), then
  ``L_r = N * (sum_{kept on r} D + sum_{synthetic on r} D) / (n1 + n2)`` with ``n1``, ``n2`` summed
  over all ranks (and a global hard-mining threshold): the step is Eq. 14 over the union of all ranks'
  kept and synthetic images, each image weighing the same whichever rank holds it. It equals a
  single-process run whose filter is applied to the N slices separately -- not a single-process run
  filtering the whole global batch, since patch comparison and the batch statistics see only the
  rank's images. Per-rank decisions are logged in ``filter_log_ranks.csv``.

Rank 0 alone writes checkpoints and logs. The in-batch filter's state (synthesis generator, material
bank) is per rank; checkpoints hold every rank's, so a resume with the same number of processes is
exact.
"""

from __future__ import annotations

import copy
import csv
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
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import build_image_transform
from ssfilter.errors import RunFormatError
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.io import atomic_writer
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import CNNEncoder, EncoderFeatures
from ssfilter.models.feature_cache import FeatureCache
from ssfilter.runfolder import FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE, LOG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.runtime import distributed
from ssfilter.runtime.device import enable_tf32, resolve_device
from ssfilter.runtime.seeding import rng_state, seed_everything, seed_torch, set_rng_state
from ssfilter.training.checkpoint import (
    build_model,
    load_train_state,
    save_model,
    save_train_state,
    write_run_config,
)
from ssfilter.training.losses import ThresholdPool, hard_cosine_loss, hard_mining_p
from ssfilter.training.optim import StableAdamW, build_scheduler

__all__ = ["BatchPlan", "TrainResult", "Trainer", "dropout_row_seeds", "iteration_rng_seed"]

log = logging.getLogger(__name__)

LOG_FIELDS = ["iteration", "loss", "lr", "p", "batch", "seconds"]
#: Per-iteration filter log of the ssfilter method (``filter_log.csv``). The last four columns count
#: true labels when the training set's labels are known (noise-injected benchmarks), else stay empty.
FILTER_FIELDS = [
    "iteration",
    "phase",
    "batch",
    "kept",
    "recalled",
    "material",
    "synthetic",
    "mu1",
    "sigma1",
    "anomalies",
    "anomalies_discarded",
    "normals",
    "normals_discarded",
]
FILTER_RANK_FIELDS = ["iteration", "rank", *FILTER_FIELDS[1:], "discarded"]
METHODS = ("ssfilter", "dinomaly")

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
    seed: int, iteration: int, positions: Sequence[int], synthetic: bool = False
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


@dataclass
class TrainResult:
    """What a finished :meth:`Trainer.fit` returns."""

    run_dir: Path
    iterations: int
    final_loss: float
    seconds: float


class _DecodeStep(nn.Module):
    """The trainable part of a :class:`DinomalyModel` as one module, for ``DistributedDataParallel``.

    It registers the bottleneck, decoder and heads (the parameters DDP synchronises) but not the frozen
    encoder, which stays outside DDP (no broadcast, no gradient buckets). ``forward`` is the model's
    ``decode``, so one DDP forward per iteration covers every trained image.
    """

    def __init__(self, model: DinomalyModel) -> None:
        super().__init__()
        self.bottleneck = model.bottleneck
        self.decoder = model.decoder
        self.heads = model.heads
        self._model = (model,)  # a tuple attribute is not registered as a submodule

    def forward(self, feats: EncoderFeatures, row_seeds: Sequence[int] | None = None) -> list[Tensor]:
        """Decoder reconstructions of ``feats`` (see :meth:`DinomalyModel.decode`)."""
        return self._model[0].decode(feats, row_seeds=row_seeds)


class _PlanSampler(Sampler[list[int]]):
    """A rank's slice of the planned batches of iterations ``[start, end)``, for a DataLoader."""

    def __init__(self, plan: BatchPlan, start: int, end: int, lo: int, hi: int) -> None:
        self.plan = copy.copy(plan)  # own permutation cache: the training loop uses the original
        self.start, self.end, self.lo, self.hi = start, end, lo, hi

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.end):
            yield self.plan.indices(it)[self.lo : self.hi]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def _stack_images(items: list[dict[str, Any]]) -> Tensor:
    """DataLoader collate: the batch's transformed images ``[B, 3, S, S]``."""
    return torch.stack([item["image"] for item in items])


def _gather_pool(rows: int, images: int) -> ThresholdPool:
    """Hard-mining pool over every rank's point distances (padded to ``rows`` images with ``-inf``).

    Args:
        rows: Largest number of images any rank contributes.
        images: Total number of real images over all ranks.
    """

    def pool(dist: Tensor) -> tuple[Tensor, int]:
        values = distributed.gather_rows(dist, rows, float("-inf"))
        return values.flatten(), images * int(dist.shape[1]) * int(dist.shape[2])

    return pool


class Trainer:
    """Trains a :class:`DinomalyModel` on unlabelled images and writes a run folder.

    ``cfg.train.method`` picks plain Dinomaly (every image trained on) or SSFilter (the in-batch
    filter selects, restoration adds synthetic anomalies). Launched by ``torchrun`` with several
    processes, it trains with DDP (see the module docstring for what equals a single-process run).

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
        self.cfg = cfg
        self.samples = list(samples)
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.stop_after = stop_after
        self.on_iteration = on_iteration
        self.device = resolve_device(cfg.train.device)
        self.cache_bytes = cache_bytes
        # True labels are only read for the filter log's recall figures (noise-injected benchmarks);
        # training itself never sees them.
        self._labels = torch.tensor([s.label for s in self.samples], dtype=torch.long)
        # Set by fit(); these defaults serve direct calls of the step methods (one process, no DDP).
        self._rank, self._world = 0, 1
        self._slice: tuple[int, int, int] | None = None  # (lo, hi, global batch size)
        self._decode: Callable[..., list[Tensor]] | None = None
        self._cache: FeatureCache | None = None

    # -- public ---------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or resume) and write weights, config, state and log into the run folder.

        Args:
            resume: Continue from the run folder's last checkpoint (a missing one warns and starts over).
        """
        cfg = self.cfg
        if cfg.train.method not in METHODS:
            raise ValueError(f"unknown method {cfg.train.method!r}; choose one of {', '.join(METHODS)}")
        self.device = distributed.init_distributed(self.device)
        rank, world = distributed.rank(), distributed.world_size()
        self._rank, self._world = rank, world
        main = rank == 0
        cuda = self.device.type == "cuda"

        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(self.device)
        channels_last = cuda and isinstance(model.encoder, CNNEncoder)
        enable_tf32(self.device)
        if channels_last:
            model.encoder.to(memory_format=torch.channels_last)
        params = model.trainable_parameters()
        optimizer = StableAdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True)
        scheduler = build_scheduler(optimizer, cfg.train.iters, cfg.train.warmup_iters, cfg.train.final_lr)
        batch_filter = (
            BatchFilter(
                cfg.batch_filter, cfg.restoration, cfg.train.iters, seed=_synthesis_seed(cfg.train.seed, rank)
            )
            if cfg.train.method == "ssfilter"
            else None
        )

        transform = build_image_transform(
            cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std
        )
        dataset = AnomalyDataset(self.samples, transform)
        plan = BatchPlan(len(dataset), cfg.data.batch_size, cfg.train.seed)
        global_batch = plan.batch_size
        if global_batch < world:
            raise ValueError(
                f"the global batch of {global_batch} images cannot be split across {world} processes; "
                "use a larger --batch-size or fewer processes"
            )
        lo, hi = distributed.shard_bounds(global_batch, rank, world)
        self._slice = (lo, hi, global_batch)

        start = 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.run_dir / STATE_FILE
        # Rank 0 reads the checkpoint and sends it to the others: every rank resumes from the same state,
        # also on nodes that do not share rank 0's file system.
        state = load_train_state(state_path) if resume and main and state_path.is_file() else None
        if resume and world > 1:
            state = distributed.broadcast_object(state)
        if state is not None:
            start = self._restore(state, state_path, model, optimizer, scheduler, batch_filter)
            log.info("resuming %s at iteration %d", self.run_dir, start)
        elif resume and main:
            warnings.warn(f"--resume: no {STATE_FILE} in {self.run_dir}; starting from scratch", stacklevel=2)
        if main:
            write_run_config(self.run_dir, cfg)
            if start == 0:
                for name in (LOG_FILE, FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE):
                    _truncate_log(self.run_dir / name, 0)

        self._decode = None
        if world > 1:
            # After the restore: DDP broadcasts rank 0's parameters, so every rank starts identical.
            self._decode = DistributedDataParallel(_DecodeStep(model))

        cache = FeatureCache(
            dataset, model, self.device, self.cache_bytes, channels_last=channels_last, pin_memory=cuda
        )
        self._cache = cache
        end = cfg.train.iters
        if self.stop_after is not None:
            end = min(end, self.stop_after)
        loader = None
        if cfg.data.num_workers > 0 and end > start:
            loader = iter(
                DataLoader(
                    dataset,
                    batch_sampler=_PlanSampler(plan, start, end, lo, hi),
                    num_workers=cfg.data.num_workers,
                    pin_memory=cuda,
                    collate_fn=_stack_images,
                )
            )

        amp = cfg.train.amp and cuda
        pending: list[dict[str, Any]] = []
        pending_filter: list[dict[str, Any]] = []
        last_loss = float("nan")
        t_start = time.perf_counter()
        bar = tqdm(
            total=cfg.train.iters,
            initial=start,
            disable=not (self.progress and main),
            desc="train",
            unit="it",
            dynamic_ncols=True,
        )
        model.train()
        try:
            for it in range(start, end):
                t0 = time.perf_counter()
                seed_torch(iteration_rng_seed(cfg.train.seed, it, rank), self.device)
                indices = plan.indices(it)[lo:hi]
                if loader is not None:
                    images: Tensor | None = next(loader).to(self.device, non_blocking=True)
                elif batch_filter is not None:
                    images = cache.images_for(indices)
                else:
                    images = None  # dinomaly needs only features; uncached images are read on demand
                p = hard_mining_p(it, cfg.train.hard_mining_max, cfg.train.hard_mining_ramp)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                    feats = cache.features_for(indices, images)
                    if batch_filter is None:
                        loss = self._dinomaly_step(it, model, feats, p)
                    else:
                        assert images is not None
                        loss, frow = self._ssfilter_step(it, model, batch_filter, indices, images, feats, p)
                        pending_filter.append(frow)
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():
                    # DDP notes that depthwise-conv gradients [C, 1, k, k] have another (equivalent) stride
                    # on the size-1 axis than its bucket views; harmless, so not shown to users.
                    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                    loss.backward()  # under DDP the gradients are averaged over ranks here
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                # The loss of the global batch: the mean of the ranks' scaled losses (no host sync).
                shown = loss.detach() if world == 1 else distributed.all_reduce_sum(loss) / world
                row = {
                    "iteration": it + 1,
                    "loss": shown,
                    "lr": lr,
                    "p": p,
                    "batch": global_batch,
                    "seconds": time.perf_counter() - t0,
                }
                pending.append(row)
                if self.on_iteration is not None:
                    self.on_iteration(it + 1, row)
                bar.update(1)
                if (it + 1) % cfg.train.log_every == 0:
                    last_loss = float(shown)
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == cfg.train.iters:
                    self._checkpoint(
                        it + 1, model, optimizer, scheduler, batch_filter, pending, pending_filter
                    )
                    pending, pending_filter = [], []
        finally:
            bar.close()
        distributed.barrier()  # every rank returns once rank 0 has written the last checkpoint
        if pending:
            last_loss = float(pending[-1]["loss"])
        elif math.isnan(last_loss) and end > start:
            last_loss = float(shown)
        return TrainResult(self.run_dir, end, last_loss, time.perf_counter() - t_start)

    # -- internals ------------------------------------------------------------------------------

    def _checkpoint(
        self,
        iteration: int,
        model: DinomalyModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batch_filter: BatchFilter | None,
        rows: list[dict[str, Any]],
        filter_rows: list[dict[str, Any]],
    ) -> None:
        """Write logs, training state and weights (rank 0; collective under DDP with the filter on).

        Args:
            iteration: Iterations done.
            model: The model.
            optimizer: Its optimiser.
            scheduler: Its learning-rate schedule.
            batch_filter: This rank's in-batch filter, or None (dinomaly).
            rows: Training-log rows since the last checkpoint.
            filter_rows: This rank's filter-log rows since the last checkpoint.
        """
        filter_state = batch_filter.state_dict() if batch_filter is not None else None
        rank_rows, rank_states = [filter_rows], [filter_state]
        if self._world > 1 and batch_filter is not None:
            gathered = distributed.all_gather_object((filter_rows, filter_state))
            rank_rows, rank_states = [g[0] for g in gathered], [g[1] for g in gathered]
        if self._rank != 0:
            return
        _append_log(self.run_dir / LOG_FILE, rows, LOG_FIELDS)
        if batch_filter is not None:
            _append_log(self.run_dir / FILTER_LOG_FILE, _merge_filter_rows(rank_rows), FILTER_FIELDS)
            if self._world > 1:
                per_rank = [r for same_it in zip(*rank_rows, strict=True) for r in same_it]
                _append_log(self.run_dir / FILTER_RANKS_LOG_FILE, per_rank, FILTER_RANK_FIELDS)
        state = {
            "iteration": iteration,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "trainable": {
                k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("encoder.")
            },
            "rng": rng_state(),
            "filter": filter_state,
            "filter_ranks": rank_states if self._world > 1 and batch_filter is not None else None,
            "world_size": self._world,
        }
        # Training state first, deployable weights second: both renames are atomic, and resume only
        # reads the state file, so a kill between them loses nothing.
        save_train_state(self.run_dir / STATE_FILE, state)
        save_model(model, self.run_dir / MODEL_FILE, iteration)

    def _restore(
        self,
        state: dict[str, Any],
        path: Path,
        model: DinomalyModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batch_filter: BatchFilter | None,
    ) -> int:
        """Load a checkpoint into this rank's model, optimiser, schedule and filter; return its iteration.

        Args:
            state: The content of ``train_state.pt``.
            path: Where it was read (for messages).
            model: The freshly built model.
            optimizer: Its optimiser.
            scheduler: Its learning-rate schedule.
            batch_filter: This rank's in-batch filter, or None (dinomaly).
        """
        mismatch = f"{path} does not match this model; was the config changed since the run started?"
        try:
            missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
        except RuntimeError as err:  # tensor shapes differ
            raise RunFormatError(mismatch) from err
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise RunFormatError(mismatch)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        iteration = int(state["iteration"])
        if batch_filter is not None:
            if state.get("filter") is None:
                raise RunFormatError(
                    f"{path} was written by a run without the in-batch filter; cannot resume it as ssfilter"
                )
            saved = state.get("filter_ranks") or [state["filter"]]
            batch_filter.load_state_dict(saved[self._rank % len(saved)])
            if len(saved) != self._world:
                if self._rank == 0:
                    warnings.warn(
                        f"{path} was written by {len(saved)} process(es), this run has {self._world}: the "
                        "in-batch filters restart from the saved banks with new random streams, so the "
                        "run will not be bit-identical to an uninterrupted one",
                        stacklevel=2,
                    )
                seed = distributed.derive_seed(self.cfg.train.seed, _TAG_SYNTHESIS, iteration, self._rank)
                batch_filter.generator.manual_seed(seed)
        if self._rank == 0:
            for name in (LOG_FILE, FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE):
                _truncate_log(self.run_dir / name, iteration)
        return iteration

    def _decoder(self, model: DinomalyModel) -> Callable[[EncoderFeatures, list[int]], list[Tensor]]:
        """``(feats, row_seeds) -> groups``: the DDP-wrapped decode under torchrun, else the model's."""
        if self._decode is None:
            return lambda feats, seeds: model.decode(feats, row_seeds=seeds)
        return self._decode

    def _rows_layout(self, local: int) -> tuple[int, int, int]:
        """``(offset, largest slice, global batch)`` of this rank (one process: ``(0, local, local)``)."""
        if self._slice is None:
            return 0, local, local
        lo, _, total = self._slice
        return lo, -(-total // self._world), total

    def _dinomaly_step(self, it: int, model: DinomalyModel, feats: EncoderFeatures, p: float) -> Tensor:
        """Plain Dinomaly loss of this rank's slice, scaled so DDP's gradient average is the global mean.

        Args:
            it: 0-based iteration.
            model: The model.
            feats: Encoder features of this rank's slice.
            p: Hard-mining share of the iteration.
        """
        factor = self.cfg.train.hard_mining_factor
        lo, rows, total = self._rows_layout(feats.batch_size)
        seeds = dropout_row_seeds(self.cfg.train.seed, it, range(lo, lo + feats.batch_size))
        enc = model.target_groups(feats)
        dec = self._decoder(model)(feats, seeds)
        if self._world == 1:
            return hard_cosine_loss(enc, dec, p, factor=factor)
        per_image = hard_cosine_loss(
            enc, dec, p, factor=factor, reduction="none", pool=_gather_pool(rows, total)
        )
        return per_image.sum() * (self._world / total)

    def _ssfilter_step(
        self,
        it: int,
        model: DinomalyModel,
        batch_filter: BatchFilter,
        indices: Sequence[int],
        images: Tensor,
        feats: EncoderFeatures,
        p: float,
    ) -> tuple[Tensor, dict[str, Any]]:
        """One SSFilter iteration: select, reconstruct the kept images, restore synthetic anomalies.

        Loss (Eq. 12-14): ``(sum_kept D(F(x), F^(x)) + sum_synthetic D(F(x_clean), F^(x_syn))) / (n1 + n2)``;
        under DDP ``n1``, ``n2`` and the hard-mining thresholds are those of all ranks together and the loss
        is scaled by the number of ranks (see the module docstring). Kept and synthetic images go through
        the decoder in one pass.

        Args:
            it: 0-based iteration.
            model: The model.
            batch_filter: This rank's in-batch filter.
            indices: Dataset indices of this rank's images.
            images: Their normalised images.
            feats: Their encoder features.
            p: Hard-mining share of the iteration.
        """
        factor = self.cfg.train.hard_mining_factor
        seed = self.cfg.train.seed
        world = self._world
        lo, rows, _ = self._rows_layout(len(indices))
        sel = batch_filter.select(it, model, feats, images)
        keep_host = sel.decision.keep.cpu()
        kept_host = torch.nonzero(keep_host).flatten()
        kept = kept_host.to(images.device)
        kept_feats = feats.select(kept)
        enc = model.target_groups(kept_feats)
        syn = batch_filter.synthesize(it, model, images[kept], kept_feats, sel)
        n1, n2 = int(kept_host.numel()), (len(syn) if syn is not None else 0)
        if world > 1:
            counts = distributed.gather_rows(torch.tensor([[n1, n2]], device=images.device), 1).tolist()
        else:
            counts = [[n1, n2]]
        total1, total2 = sum(c[0] for c in counts), sum(c[1] for c in counts)
        seeds = dropout_row_seeds(seed, it, (lo + j for j in kept_host.tolist()))
        parts = [kept_feats]
        if syn is not None:
            parts.append(self._encode(model, syn.images))
            seeds += dropout_row_seeds(seed, it, range(lo, lo + n2), synthetic=True)
        dec = self._decoder(model)(EncoderFeatures.cat(parts) if len(parts) > 1 else kept_feats, seeds)

        def pool(n_max: int, n_total: int) -> ThresholdPool | None:
            return _gather_pool(n_max, n_total) if world > 1 else None

        per_image = [
            hard_cosine_loss(
                enc,
                [g[:n1] for g in dec],
                p,
                factor=factor,
                reduction="none",
                pool=pool(max(c[0] for c in counts), total1),
            )
        ]
        if total2 > 0:  # every rank joins (the pool is a collective), with no rows when it has no synthetic
            # restore the CLEAN image's features
            if syn is not None:
                clean = [g[syn.source_index.to(g.device)] for g in enc]
            else:
                clean = [g[:0] for g in enc]
            per_image.append(
                hard_cosine_loss(
                    clean,
                    [g[n1:] for g in dec],
                    p,
                    factor=factor,
                    reduction="none",
                    pool=pool(max(c[1] for c in counts), total2),
                )
            )
        loss = torch.cat(per_image).sum() * (world / (total1 + total2))
        d = sel.decision
        row: dict[str, Any] = {
            "iteration": it + 1,
            "rank": self._rank,
            "phase": d.phase,
            "batch": len(indices),
            "kept": d.n_kept,
            "recalled": d.n_recalled,
            "material": d.n_material,
            "synthetic": n2,
            "mu1": d.mu1,
            "sigma1": d.sigma1,
            "discarded": " ".join(str(indices[j]) for j in torch.nonzero(~keep_host).flatten().tolist()),
        }
        labels = self._labels[torch.as_tensor(list(indices), dtype=torch.long)]
        if bool((labels >= 0).all()):
            anomalous = labels == 1
            discarded = ~keep_host
            row.update(
                anomalies=int(anomalous.sum()),
                anomalies_discarded=int((anomalous & discarded).sum()),
                normals=int((~anomalous).sum()),
                normals_discarded=int((~anomalous & discarded).sum()),
            )
        return loss, row

    def _encode(self, model: DinomalyModel, images: Tensor) -> EncoderFeatures:
        """Encoder features of images made during the step (channels-last like the cache's)."""
        return self._cache.encode(images) if self._cache is not None else model.encode(images)


def _synthesis_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s synthesis generator (rank 0 keeps the run's seed, as a single process)."""
    return seed if rank == 0 else distributed.derive_seed(seed, _TAG_SYNTHESIS, rank)


def _merge_filter_rows(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One ``filter_log.csv`` row per iteration from every rank's rows.

    Counts (batch, kept, recalled, material, synthetic, label counts) are summed over ranks; ``mu1`` and
    ``sigma1`` are the mean of the ranks' finite values (NaN when none). One rank: its rows unchanged.

    Args:
        per_rank: Each rank's rows for the same iterations, in rank order.
    """
    if len(per_rank) == 1:
        return per_rank[0]
    merged = []
    for rows in zip(*per_rank, strict=True):
        phases = sorted({str(r["phase"]) for r in rows})
        out: dict[str, Any] = {"iteration": rows[0]["iteration"], "phase": "/".join(phases)}
        for key in ("batch", "kept", "recalled", "material", "synthetic"):
            out[key] = sum(int(r[key]) for r in rows)
        for key in ("mu1", "sigma1"):
            values = [float(r[key]) for r in rows if math.isfinite(float(r[key]))]
            out[key] = sum(values) / len(values) if values else float("nan")
        label_keys = ("anomalies", "anomalies_discarded", "normals", "normals_discarded")
        if all(k in r for r in rows for k in label_keys):
            for key in label_keys:
                out[key] = sum(int(r[key]) for r in rows)
        merged.append(out)
    return merged


def _append_log(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Append rows to the CSV log (rewritten atomically so a kill never leaves half a line)."""
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        if not existing:
            fh.write(",".join(fields) + "\n")
        else:
            fh.write(existing)
        writer = csv.writer(fh)
        for row in rows:
            values = [float(v) if isinstance(v, Tensor) else v for v in (row.get(k, "") for k in fields)]
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log rows after ``iteration`` (rows logged after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= iteration]
    if iteration == 0:
        keep = []
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        fh.writelines(keep)
