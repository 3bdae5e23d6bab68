"""Per-image MC-dropout pass scores, computed once and redrawn in every epoch of the dataset filter.

Why this is valid: the uncertainty ``u_i`` of an image (paper §3.3) is the spread of its K dropout
reconstructions' scores. The decoder reconstructs every image on its own (no layer mixes images of a
batch, the model is in eval mode) and the score of a pass is a top-1% mean of that image's own map, so
``u_i`` depends only on the image and the K dropout masks -- not on the batch the image is in. Only the
patch comparison scores ``A`` and the in-batch split compare images with each other.

The dataset filter of the paper nevertheless re-runs the K passes of every image in every one of its
kappa_1 epochs, i.e. it draws ``u_i`` afresh kappa_1 times from the same distribution: the unbiased std of
K pass scores. This module runs ``pool`` >= K passes of every image ONCE (:meth:`UncertaintyBank.build`),
estimates the spread ``s_i`` of the image's pass scores from them, and per filtered batch draws
``u_i = s_i * sqrt(chi2_{K-1} / (K-1))`` (:meth:`UncertaintyBank.draw`): the distribution of the std of K
fresh pass scores when they are normal with spread ``s_i``. Each epoch's draw is independent, as the
paper's are; only the estimate ``s_i`` is shared by the epochs.

Why not redraw K of the ``pool`` stored scores: measured on a trained bottle run (README, "The dataset
filter"), resampling a small pool reuses the same few values in every epoch, so an image's unlucky
passes count against it kappa_1 times and the filter quarantines more good images than the paper's
protocol does; the normal draw around a pooled estimate comes much closer to it.

The draws of epoch ``e``, batch ``j`` are seeded by ``(seed, e, j)`` like the per-batch masks, and the
bank's masks by ``(seed, chunk)`` with chunks of the data set in order, so the result does not depend on
how the work is split between processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ssfilter.filtering.uncertainty import mc_uncertainty
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.feature_cache import FeatureCache
from ssfilter.runtime import distributed
from ssfilter.runtime.seeding import seed_torch

__all__ = ["UncertaintyBank", "bank_chunk_seed"]

_TAG_BANK = 6


def bank_chunk_seed(seed: int, chunk: int) -> int:
    """Seed of the dropout masks of the bank's ``chunk``-th chunk of images (independent of sharding)."""
    return distributed.derive_seed(seed, _TAG_BANK, chunk)


class UncertaintyBank:
    """``pool`` MC-dropout pass scores per image, and draws of ``u_i`` as if from K fresh passes.

    Args:
        pass_scores: ``[n, pool]`` top-1% score of every pass of every image.
        passes: K, the passes a paper uncertainty is the std of (``1 <= K <= pool``).

    Raises:
        ValueError: ``passes`` out of range.
    """

    def __init__(self, pass_scores: Tensor, passes: int) -> None:
        pool = int(pass_scores.shape[1])
        if not (1 <= passes <= pool):
            raise ValueError(f"passes (K) must be in [1, pool = {pool}], got {passes}")
        self.pass_scores = pass_scores.detach().to("cpu", torch.float64)
        self.passes = int(passes)
        #: ``[n]`` unbiased std of each image's pass scores: the spread estimate ``s_i`` (0 for a pool of 1).
        self.spread = (
            self.pass_scores.std(dim=1, correction=1)
            if pool > 1
            else torch.zeros(self.pass_scores.shape[0], dtype=torch.float64)
        )

    @property
    def pool(self) -> int:
        """Pass scores held per image."""
        return int(self.pass_scores.shape[1])

    @classmethod
    def build(
        cls,
        model: DinomalyModel,
        cache: FeatureCache,
        n: int,
        *,
        passes: int,
        pool: int,
        chunk: int,
        image_topk_ratio: float,
        seed: int,
        device: torch.device,
        step: Callable[[int], None] | None = None,
    ) -> UncertaintyBank:
        """Run ``pool`` dropout passes of every image once, in chunks of ``chunk`` images in data order.

        Under several processes each one runs every world-th chunk and the chunks are gathered. The
        caller provides ``torch.no_grad`` / autocast and leaves the global RNG to be reseeded per chunk.

        Args:
            model: The trained model.
            cache: Encoder features of the ``n`` images (filled on the way, within its budget).
            n: Number of images.
            passes: K.
            pool: Passes run per image (``>= passes``).
            chunk: Images per chunk (the batch size).
            image_topk_ratio: Share of a map's hottest pixels averaged into a pass score.
            seed: The dataset filter's seed.
            device: Where the model runs.
            step: Called with the number of images done after each chunk (progress).
        """
        if pool < passes:
            raise ValueError(f"pool ({pool}) must be at least the number of passes K ({passes})")
        starts = list(range(0, n, chunk))
        rank, world = distributed.rank(), distributed.world_size()
        mine: list[tuple[int, Tensor]] = []
        for c in range(rank, len(starts), world):
            ids = list(range(starts[c], min(starts[c] + chunk, n)))
            seed_torch(bank_chunk_seed(seed, c), device)
            feats = cache.features_for(ids)
            unc = mc_uncertainty(model, feats, pool, image_topk_ratio)
            mine.append((c, unc.pass_scores.float().cpu().T))  # [ids, pool]
            if step is not None:
                step(len(ids))
        if world > 1:
            mine = sorted(p for part in distributed.all_gather_object(mine) for p in part)
        scores = torch.cat([s for _, s in sorted(mine, key=lambda p: p[0])])
        return cls(scores, passes)

    def draw(self, indices: list[int], generator: torch.Generator) -> Tensor:
        """Uncertainties ``[len(indices)]``: ``s_i * sqrt(chi2_{K-1} / (K-1))``, one fresh draw per image.

        The std of K independent normal pass scores with spread ``s_i`` has exactly this distribution;
        with K == 1 the std is reported as 0, as :func:`~ssfilter.filtering.uncertainty.mc_uncertainty`
        does.
        """
        k = self.passes
        if k < 2:
            return torch.zeros(len(indices), dtype=torch.float64)
        z = torch.randn((len(indices), k - 1), generator=generator, dtype=torch.float64)
        return self.spread[indices] * (z.square().sum(dim=1) / (k - 1)).sqrt()

    def mean_score(self) -> Tensor:
        """``[n]`` mean of each image's pass scores: a dropout-averaged reconstruction anomaly score."""
        return self.pass_scores.mean(dim=1)
