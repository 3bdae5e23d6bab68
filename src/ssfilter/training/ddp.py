"""What multi-process training (DDP) adds to a step: the wrapped decoder and the global hard-mining pool.

Under ``torchrun --nproc_per_node=N`` every process takes a contiguous slice of the same global batch
(sizes differ by at most one image) and the trainable part (bottleneck, decoder, heads; the frozen
encoder is not wrapped) runs inside ``DistributedDataParallel``, which averages the gradients. Each
training method scales its rank's loss so that this average is exactly the gradient of ONE loss over
the global batch (see :mod:`ssfilter.training.methods.dinomaly` and
:mod:`ssfilter.training.methods.ssfilter` for how each does it), and takes the hard-mining threshold
over the global batch with :func:`gather_pool`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import EncoderFeatures
from ssfilter.runtime import distributed
from ssfilter.training.losses import ThresholdPool

__all__ = ["DecodeStep", "gather_pool"]


class DecodeStep(nn.Module):
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


def gather_pool(rows: int, images: int) -> ThresholdPool:
    """Hard-mining pool over every rank's point distances (padded to ``rows`` images with ``-inf``).

    A collective: every rank's loss calls it in the same order.

    Args:
        rows: Largest number of images any rank contributes.
        images: Total number of real images over all ranks.
    """

    def pool(dist: Tensor) -> tuple[Tensor, int]:
        values = distributed.gather_rows(dist, rows, float("-inf"))
        return values.flatten(), images * int(dist.shape[1]) * int(dist.shape[2])

    return pool
