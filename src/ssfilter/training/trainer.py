"""The training loop: seeded, resumable, logged, CPU or CUDA (bf16 autocast).

Batches are a pure function of ``(seed, iteration)`` -- epoch ``e`` is a seeded permutation of the
training set cut into ``drop_last`` batches -- so a resumed run draws exactly the batches an
uninterrupted run would, without storing sampler state.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import build_image_transform
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.io import atomic_writer
from ssfilter.models.dinomaly import DinomalyModel, Reconstruction
from ssfilter.models.encoders import EncoderFeatures
from ssfilter.training.checkpoint import (
    LOG_FILE,
    MODEL_FILE,
    STATE_FILE,
    build_model,
    load_train_state,
    save_model,
    save_train_state,
    write_run_config,
)
from ssfilter.training.losses import hard_cosine_loss, hard_mining_p
from ssfilter.training.optim import StableAdamW, build_scheduler

__all__ = ["BatchPlan", "TrainResult", "Trainer", "resolve_device"]

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
FILTER_LOG_FILE = "filter_log.csv"
METHODS = ("ssfilter", "dinomaly")


def resolve_device(name: str) -> torch.device:
    """Map ``auto``/``cpu``/``cuda`` to a device, with a clear error when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


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


class _BatchCache:
    """Transformed images and frozen-encoder features kept in memory.

    Preprocessing is deterministic and the encoder is frozen, so each image is decoded and encoded
    once; later epochs only run the decoder. Both caches are bounded by ``max_bytes`` together;
    beyond the budget items are recomputed every time, so memory stays bounded on large data sets.
    """

    def __init__(
        self, dataset: AnomalyDataset, model: DinomalyModel, device: torch.device, max_bytes: int
    ) -> None:
        self.dataset = dataset
        self.model = model
        self.device = device
        self.max_bytes = max_bytes
        self.images: dict[int, Tensor] = {}
        self.feats: dict[int, EncoderFeatures] = {}
        self.bytes = 0

    def _fits(self, size: int) -> bool:
        if self.bytes + size > self.max_bytes:
            return False
        self.bytes += size
        return True

    def images_for(self, indices: Sequence[int]) -> Tensor:
        """Normalised images ``[B, 3, S, S]`` on the training device."""
        out = []
        for i in indices:
            item = self.images.get(i)
            if item is None:
                item = self.dataset[i]["image"]
                if self._fits(item.numel() * item.element_size()):
                    self.images[i] = item
            out.append(item)
        return torch.stack(out).to(self.device, non_blocking=True)

    def features_for(self, indices: Sequence[int], images: Tensor | None = None) -> EncoderFeatures:
        """Encoder features of the batch, encoding only the images not cached yet.

        Args:
            indices: Dataset indices of the batch.
            images: The batch's images when the caller has them already; otherwise only the images
                still to be encoded are read (and not kept), so all of the budget goes to features.
        """
        missing = [j for j, i in enumerate(indices) if i not in self.feats]
        fresh_row = {j: row for row, j in enumerate(missing)}
        fresh = None
        if missing:
            if images is None:
                batch = torch.stack([self.dataset[indices[j]]["image"] for j in missing]).to(self.device)
            else:
                batch = images[missing]
            fresh = self.model.encode(batch)
        parts = []
        for j, i in enumerate(indices):
            if i in self.feats:
                parts.append(self.feats[i])
                continue
            assert fresh is not None
            row = fresh_row[j]
            one = EncoderFeatures(
                [t[row : row + 1].clone() for t in fresh.layers], fresh.grid, fresh.num_prefix
            )
            if self._fits(sum(t.numel() * t.element_size() for t in one.layers)):
                self.feats[i] = one
            parts.append(one)
        return EncoderFeatures.cat(parts)


class Trainer:
    """Trains a :class:`DinomalyModel` on unlabelled images and writes a run folder.

    ``cfg.train.method`` picks plain Dinomaly (every image trained on) or SSFilter (the in-batch
    filter selects, restoration adds synthetic anomalies).

    Args:
        cfg: Full run configuration (saved as ``config.yaml``).
        samples: Training images (already validated; unreadable files removed). Their labels are
            only read for the filter log's recall figures.
        run_dir: Output folder.
        progress: Show a progress bar.
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

    # -- public ---------------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or resume) and write weights, config, state and log into the run folder."""
        cfg = self.cfg
        _seed_everything(cfg.train.seed)
        model = build_model(cfg).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        params = model.trainable_parameters()
        optimizer = StableAdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, amsgrad=True)
        scheduler = build_scheduler(optimizer, cfg.train.iters, cfg.train.warmup_iters, cfg.train.final_lr)

        if cfg.train.method not in METHODS:
            raise ValueError(f"unknown method {cfg.train.method!r}; choose one of {', '.join(METHODS)}")
        batch_filter = (
            BatchFilter(cfg.filter, cfg.train.iters, seed=cfg.train.seed)
            if cfg.train.method == "ssfilter"
            else None
        )
        start = 0
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.run_dir / STATE_FILE
        if resume and state_path.is_file():
            start = self._restore(state_path, model, optimizer, scheduler, batch_filter)
            log.info("resuming %s at iteration %d", self.run_dir, start)
        elif resume:
            warnings.warn(f"--resume: no {STATE_FILE} in {self.run_dir}; starting from scratch", stacklevel=2)
        write_run_config(self.run_dir, cfg)
        if start == 0:
            _truncate_log(self.run_dir / LOG_FILE, 0)
            _truncate_log(self.run_dir / FILTER_LOG_FILE, 0)

        transform = build_image_transform(
            cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std
        )
        dataset = AnomalyDataset(self.samples, transform)
        cache = _BatchCache(dataset, model, self.device, self.cache_bytes)
        plan = BatchPlan(len(dataset), cfg.data.batch_size, cfg.train.seed)

        amp = cfg.train.amp and self.device.type == "cuda"
        pending: list[dict[str, Any]] = []
        pending_filter: list[dict[str, Any]] = []
        last_loss = float("nan")
        t_start = time.perf_counter()
        end = cfg.train.iters
        if self.stop_after is not None:
            end = min(end, self.stop_after)
        bar = tqdm(
            total=cfg.train.iters,
            initial=start,
            disable=not self.progress,
            desc="train",
            unit="it",
            dynamic_ncols=True,
        )
        model.train()
        try:
            for it in range(start, end):
                t0 = time.perf_counter()
                indices = plan.indices(it)
                images = cache.images_for(indices)
                p = hard_mining_p(it, cfg.train.hard_mining_max, cfg.train.hard_mining_ramp)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                    feats = cache.features_for(indices, images)
                    if batch_filter is None:
                        rec = Reconstruction(model.target_groups(feats), model.decode(feats))
                        loss = hard_cosine_loss(
                            rec.encoder, rec.decoder, p, factor=cfg.train.hard_mining_factor
                        )
                    else:
                        loss, frow = self._ssfilter_step(it, model, batch_filter, indices, images, feats, p)
                        pending_filter.append(frow)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                row = {
                    "iteration": it + 1,
                    "loss": loss.detach(),
                    "lr": lr,
                    "p": p,
                    "batch": images.shape[0],
                    "seconds": time.perf_counter() - t0,
                }
                pending.append(row)
                if self.on_iteration is not None:
                    self.on_iteration(it + 1, row)
                bar.update(1)
                if (it + 1) % cfg.train.log_every == 0:
                    last_loss = float(loss.detach())
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
                if (it + 1) % cfg.train.checkpoint_every == 0 or it + 1 == cfg.train.iters:
                    self._checkpoint(
                        it + 1, model, optimizer, scheduler, batch_filter, pending, pending_filter
                    )
                    pending, pending_filter = [], []
        finally:
            bar.close()
        if pending:
            last_loss = float(pending[-1]["loss"])
        elif math.isnan(last_loss) and end > start:
            last_loss = float(loss.detach())
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
        _append_log(self.run_dir / LOG_FILE, rows, LOG_FIELDS)
        if batch_filter is not None:
            _append_log(self.run_dir / FILTER_LOG_FILE, filter_rows, FILTER_FIELDS)
        state = {
            "iteration": iteration,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "trainable": {
                k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("encoder.")
            },
            "rng": _rng_state(),
            "filter": batch_filter.state_dict() if batch_filter is not None else None,
        }
        # Training state first, deployable weights second: both renames are atomic, and resume only
        # reads the state file, so a kill between them loses nothing.
        save_train_state(self.run_dir / STATE_FILE, state)
        save_model(model, self.run_dir / MODEL_FILE, iteration)

    def _restore(
        self,
        path: Path,
        model: DinomalyModel,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        batch_filter: BatchFilter | None,
    ) -> int:
        state = load_train_state(path)
        missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise RuntimeError(
                f"{path} does not match this model; was the config changed since the run started?"
            )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        if batch_filter is not None:
            if state.get("filter") is None:
                raise RuntimeError(
                    f"{path} was written by a run without the in-batch filter; cannot resume it as ssfilter"
                )
            batch_filter.load_state_dict(state["filter"])
        iteration = int(state["iteration"])
        _truncate_log(self.run_dir / LOG_FILE, iteration)
        _truncate_log(self.run_dir / FILTER_LOG_FILE, iteration)
        return iteration

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

        Loss (Eq. 12-14): ``(sum_kept D(F(x), F^(x)) + sum_synthetic D(F(x_clean), F^(x_syn))) / (n1 + n2)``.
        """
        factor = self.cfg.train.hard_mining_factor
        sel = batch_filter.select(it, model, feats, images)
        keep = sel.decision.keep.to(images.device)
        kept = torch.nonzero(keep).flatten()
        kept_feats = feats.select(kept)
        enc = model.target_groups(kept_feats)
        per_image = [hard_cosine_loss(enc, model.decode(kept_feats), p, factor=factor, reduction="none")]
        syn = batch_filter.synthesize(it, model, images[kept], kept_feats, sel)
        if syn is not None:
            syn_feats = model.encode(syn.images)
            clean = [g[syn.source_index.to(g.device)] for g in enc]  # restore the CLEAN image's features
            per_image.append(
                hard_cosine_loss(clean, model.decode(syn_feats), p, factor=factor, reduction="none")
            )
        losses = torch.cat(per_image)
        loss = losses.sum() / losses.numel()
        d = sel.decision
        row: dict[str, Any] = {
            "iteration": it + 1,
            "phase": d.phase,
            "batch": len(indices),
            "kept": d.n_kept,
            "recalled": d.n_recalled,
            "material": d.n_material,
            "synthetic": len(syn) if syn is not None else 0,
            "mu1": d.mu1,
            "sigma1": d.sigma1,
        }
        labels = self._labels[torch.as_tensor(list(indices))]
        if bool((labels >= 0).all()):
            anomalous = labels == 1
            discarded = ~d.keep.cpu()
            row.update(
                anomalies=int(anomalous.sum()),
                anomalies_discarded=int((anomalous & discarded).sum()),
                normals=int((~anomalous).sum()),
                normals_discarded=int((~anomalous & discarded).sum()),
            )
        return loss, row


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
