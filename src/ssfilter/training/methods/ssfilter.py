"""SSFilter: the in-batch filter selects the images to train on, restoration adds synthetic anomalies.

Loss (paper Eq. 12-14): ``(sum_kept D(F(x), F^(x)) + sum_synthetic D(F(x_clean), F^(x_syn))) / (n1 + n2)``.

Under DDP every rank filters ITS OWN slice in-batch (patch comparison, MC-dropout, selection,
materials and synthesis over the rank's images, as the paper's mini-batch), then returns
``L_r = N * (sum_{kept on r} D + sum_{synthetic on r} D) / (n1 + n2)`` with ``n1``, ``n2`` summed over
all ranks (and a global hard-mining threshold): the step is Eq. 14 over the union of all ranks' kept
and synthetic images, each image weighing the same whichever rank holds it. It equals a
single-process run whose filter is applied to the N slices separately -- not a single-process run
filtering the whole global batch, since patch comparison and the batch statistics see only the
rank's images. Per-rank decisions are logged in ``filter_log_ranks.csv``.

The in-batch filter's state (synthesis generator, material bank) is per rank; checkpoints hold every
rank's, so a resume with the same number of processes is exact.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssfilter.config import Config
from ssfilter.errors import RunFormatError
from ssfilter.filtering.batch_filter import BatchFilter, Synthesis
from ssfilter.filtering.synergy import FilterDecision
from ssfilter.models.encoders import EncoderFeatures
from ssfilter.runfolder import FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE
from ssfilter.runtime import distributed
from ssfilter.training.ddp import gather_pool
from ssfilter.training.filter_log import FILTER_FIELDS, FILTER_RANK_FIELDS, merge_filter_rows
from ssfilter.training.logs import append_log
from ssfilter.training.losses import ThresholdPool, hard_cosine_loss
from ssfilter.training.methods.base import MethodState, StepBatch, StepModel, TrainingMethod
from ssfilter.training.methods.registry import register_method
from ssfilter.training.plan import dropout_row_seeds, resumed_synthesis_seed, synthesis_seed

__all__ = ["SSFilterMethod"]


@register_method("ssfilter")
class SSFilterMethod(TrainingMethod):
    """Trains on the images this rank's in-batch filter keeps, plus restored synthetic anomalies.

    Args:
        cfg: The run's configuration (``batch_filter``, ``restoration``, ``train``).
        rank: This process's rank.
        world: Number of processes.
        labels: True labels of the training samples (-1 unknown), only for the filter log's recall figures.
        groups: Image index of every sample when the samples are tiles (tiled runs), else None.
        batch_filter: The in-batch filter to use (default: one built from ``cfg``, with this rank's
            synthesis seed).

    Attributes:
        batch_filter: This rank's in-batch filter.
        pending_rows: Filter-log rows of the iterations since the last checkpoint.
    """

    needs_images = True
    log_files = (FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE)

    def __init__(
        self,
        cfg: Config,
        *,
        rank: int = 0,
        world: int = 1,
        labels: Tensor | None = None,
        groups: Tensor | None = None,
        batch_filter: BatchFilter | None = None,
    ) -> None:
        super().__init__(cfg, rank=rank, world=world, labels=labels, groups=groups)
        if batch_filter is None:
            seed = synthesis_seed(cfg.train.seed, rank)
            batch_filter = BatchFilter(cfg.batch_filter, cfg.restoration, cfg.train.iters, seed=seed)
        self.batch_filter = batch_filter
        self.pending_rows: list[dict[str, Any]] = []

    # -- the step -------------------------------------------------------------------------------

    def step(self, batch: StepBatch, net: StepModel) -> Tensor:
        """One SSFilter iteration: select, reconstruct the kept images, restore synthetic anomalies.

        Under DDP ``n1``, ``n2`` and the hard-mining thresholds are those of all ranks together and the loss
        is scaled by the number of ranks (see the module docstring). Kept and synthetic images go through
        the decoder in one pass. The iteration's filter-log row is added to :attr:`pending_rows`.

        Args:
            batch: This rank's images of the iteration (``images`` required).
            net: The model and how to run it.
        """
        images = batch.images
        if images is None:
            raise ValueError("the ssfilter method needs the batch's images")
        model, it = net.model, batch.iteration
        groups = None
        if self.groups is not None:
            groups = self.groups[torch.as_tensor(list(batch.indices), dtype=torch.long)]
        sel = self.batch_filter.select(it, model, batch.feats, images, groups=groups)
        keep_host = sel.decision.keep.cpu()
        kept_host = torch.nonzero(keep_host).flatten()
        kept = kept_host.to(images.device)
        kept_feats = batch.feats.select(kept)
        enc = model.target_groups(kept_feats)
        syn = self.batch_filter.synthesize(it, model, images[kept], kept_feats, sel)
        n1, n2 = int(kept_host.numel()), (len(syn) if syn is not None else 0)
        if self.world > 1:
            counts = distributed.gather_rows(torch.tensor([[n1, n2]], device=images.device), 1).tolist()
        else:
            counts = [[n1, n2]]
        dec = self._decode(batch, net, kept_host.tolist(), kept_feats, syn)
        loss = self._loss(batch.p, enc, dec, syn, n1, counts)
        self.pending_rows.append(self._log_row(batch, sel.decision, keep_host, n2))
        return loss

    def _decode(
        self,
        batch: StepBatch,
        net: StepModel,
        kept: list[int],
        kept_feats: EncoderFeatures,
        syn: Synthesis | None,
    ) -> list[Tensor]:
        """Reconstructions of the kept images, then of the synthetic ones, in one decoder pass.

        Args:
            batch: This rank's images of the iteration.
            net: The model and how to run it.
            kept: Positions of the kept images in this rank's slice.
            kept_feats: Their encoder features.
            syn: The synthetic anomalies, or None.
        """
        seed, it, lo = self.cfg.train.seed, batch.iteration, batch.offset
        seeds = dropout_row_seeds(seed, it, (lo + j for j in kept))
        parts = [kept_feats]
        if syn is not None:
            parts.append(net.encode(syn.images))
            seeds += dropout_row_seeds(seed, it, range(lo, lo + len(syn)), synthetic=True)
        return net.decode(EncoderFeatures.cat(parts) if len(parts) > 1 else kept_feats, seeds)

    def _loss(
        self,
        p: float,
        enc: list[Tensor],
        dec: list[Tensor],
        syn: Synthesis | None,
        n1: int,
        counts: list[list[int]],
    ) -> Tensor:
        """Eq. 14: kept images against themselves, synthetic ones against their CLEAN image's features.

        Args:
            p: Hard-mining share of the iteration.
            enc: Target features of the kept images.
            dec: Reconstructions of the kept images, then of the synthetic ones.
            syn: The synthetic anomalies, or None.
            n1: Number of kept images on this rank.
            counts: ``[kept, synthetic]`` of every rank, in rank order.
        """
        factor, world = self.cfg.train.hard_mining_factor, self.world
        total1, total2 = sum(c[0] for c in counts), sum(c[1] for c in counts)

        def pool(n_max: int, n_total: int) -> ThresholdPool | None:
            return gather_pool(n_max, n_total) if world > 1 else None

        kept_pool = pool(max(c[0] for c in counts), total1)
        per_image = [
            hard_cosine_loss(enc, [g[:n1] for g in dec], p, factor=factor, reduction="none", pool=kept_pool)
        ]
        if total2 > 0:  # every rank joins (the pool is a collective), with no rows when it has no synthetic
            # restore the CLEAN image's features
            if syn is not None:
                clean = [g[syn.source_index.to(g.device)] for g in enc]
            else:
                clean = [g[:0] for g in enc]
            syn_pool = pool(max(c[1] for c in counts), total2)
            per_image.append(
                hard_cosine_loss(
                    clean, [g[n1:] for g in dec], p, factor=factor, reduction="none", pool=syn_pool
                )
            )
        return torch.cat(per_image).sum() * (world / (total1 + total2))

    def _log_row(self, batch: StepBatch, d: FilterDecision, keep_host: Tensor, n2: int) -> dict[str, Any]:
        """The iteration's filter-log row (label counts only when every image's label is known).

        Args:
            batch: This rank's images of the iteration.
            d: The filter's decision.
            keep_host: Its keep mask, on the CPU.
            n2: Number of synthetic images made.
        """
        indices = batch.indices
        row: dict[str, Any] = {
            "iteration": batch.iteration + 1,
            "rank": self.rank,
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
        if self.labels is None:
            return row
        labels = self.labels[torch.as_tensor(list(indices), dtype=torch.long)]
        if bool((labels >= 0).all()):
            anomalous = labels == 1
            discarded = ~keep_host
            row.update(
                anomalies=int(anomalous.sum()),
                anomalies_discarded=int((anomalous & discarded).sum()),
                normals=int((~anomalous).sum()),
                normals_discarded=int((~anomalous & discarded).sum()),
            )
        return row

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self, run_dir: Path) -> MethodState:
        """Write the filter logs (rank 0) and return every rank's filter state (a collective under DDP).

        Args:
            run_dir: The run folder.
        """
        rows, self.pending_rows = self.pending_rows, []
        state = self.batch_filter.state_dict()
        rank_rows, rank_states = [rows], [state]
        if self.world > 1:
            gathered = distributed.all_gather_object((rows, state))
            rank_rows, rank_states = [g[0] for g in gathered], [g[1] for g in gathered]
        if self.rank == 0:
            append_log(run_dir / FILTER_LOG_FILE, merge_filter_rows(rank_rows), FILTER_FIELDS)
            if self.world > 1:
                per_rank = [r for same_it in zip(*rank_rows, strict=True) for r in same_it]
                append_log(run_dir / FILTER_RANKS_LOG_FILE, per_rank, FILTER_RANK_FIELDS)
        return MethodState(state, rank_states if self.world > 1 else None)

    def restore(self, saved: MethodState, path: Path, iteration: int) -> None:
        """Load this rank's filter state; with another number of processes, reseed the synthesis stream.

        Args:
            saved: The checkpoint's method state.
            path: The checkpoint file (for messages).
            iteration: Iteration the run resumes at.

        Raises:
            RunFormatError: The checkpoint was written without the in-batch filter (a dinomaly run).
        """
        if saved.state is None:
            raise RunFormatError(
                f"{path} was written by a run without the in-batch filter; cannot resume it as ssfilter"
            )
        states = saved.ranks or [saved.state]
        self.batch_filter.load_state_dict(states[self.rank % len(states)])
        if len(states) != self.world:
            if self.rank == 0:
                warnings.warn(
                    f"{path} was written by {len(states)} process(es), this run has {self.world}: the "
                    "in-batch filters restart from the saved banks with new random streams, so the "
                    "run will not be bit-identical to an uninterrupted one",
                    stacklevel=2,
                )
            seed = resumed_synthesis_seed(self.cfg.train.seed, iteration, self.rank)
            self.batch_filter.generator.manual_seed(seed)
