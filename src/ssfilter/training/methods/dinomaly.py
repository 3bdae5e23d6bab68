"""Plain Dinomaly: every image of the batch is trained on (the reconstruction loss with hard mining).

Under DDP rank ``r`` returns ``L_r = N * sum_{i in slice r} D_i / B``: the mean of the per-rank losses
(what ``DistributedDataParallel`` averages the gradients of) is the mean of ``D`` over all ``B``
images. The hard-mining threshold of ``D`` is taken over the global batch (the point distances are
all-gathered) and the dropout masks do not depend on the slicing, so a DDP run equals a
single-process run up to floating-point rounding, for any N (``B % N`` does not matter).
"""

from __future__ import annotations

from torch import Tensor

from ssfilter.training.ddp import gather_pool
from ssfilter.training.losses import hard_cosine_loss
from ssfilter.training.methods.base import StepBatch, StepModel, TrainingMethod
from ssfilter.training.methods.registry import register_method
from ssfilter.training.plan import dropout_row_seeds

__all__ = ["DinomalyMethod"]


@register_method("dinomaly")
class DinomalyMethod(TrainingMethod):
    """Dinomaly's loss over every image of the batch; needs encoder features only, not images."""

    def step(self, batch: StepBatch, net: StepModel) -> Tensor:
        """Plain Dinomaly loss of this rank's slice, scaled so DDP's gradient average is the global mean.

        Args:
            batch: This rank's images of the iteration.
            net: The model and how to run it.
        """
        factor = self.cfg.train.hard_mining_factor
        feats = batch.feats
        lo, rows, total = batch.layout
        seeds = dropout_row_seeds(self.cfg.train.seed, batch.iteration, range(lo, lo + feats.batch_size))
        enc = net.model.target_groups(feats)
        dec = net.decode(feats, seeds)
        if self.world == 1:
            return hard_cosine_loss(enc, dec, batch.p, factor=factor)
        per_image = hard_cosine_loss(
            enc, dec, batch.p, factor=factor, reduction="none", pool=gather_pool(rows, total)
        )
        return per_image.sum() * (self.world / total)
