"""Per-image MC-dropout pass scores, computed once and redrawn in every epoch of the dataset filter.

Why this is valid: the uncertainty ``u_i`` of an image (paper §3.3) is the spread of its K dropout
reconstructions' scores. The decoder reconstructs every image on its own (no layer mixes images of a
batch, the model is in eval mode) and the score of a pass is a top-1% mean of that image's own map, so
``u_i`` depends only on the image and the K dropout masks -- not on the batch the image is in. Only the
patch comparison scores ``A`` and the in-batch split compare images with each other.

The dataset filter of the paper nevertheless re-runs the K passes of every image in every one of its
kappa_1 epochs, i.e. it draws ``u_i`` afresh kappa_1 times from the same distribution. This module runs
``pool`` >= K passes of every image ONCE (:meth:`UncertaintyBank.build`) and, per filtered batch, draws K
of each image's ``pool`` pass scores without replacement and takes their unbiased std
(:meth:`UncertaintyBank.draw`): a fresh, equally distributed draw of ``u_i`` per epoch, from
``pool`` decoder passes per image instead of ``K * kappa_1``. With ``pool == K`` every epoch sees the same
``u_i``. The draws of epoch ``e``, batch ``j`` are seeded by ``(seed, e, j)`` like the per-batch masks, and
the bank's masks by ``(seed, chunk)`` with chunks of the data set in order, so the result does not depend
on how the work is split between processes.
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
    """``pool`` MC-dropout pass scores per image; K of them per draw give an uncertainty ``u_i``.

    Args:
        pass_scores: ``[n, pool]`` top-1% score of every pass of every image.
        passes: K, the passes one uncertainty is computed from (``2 <= K <= pool``, or ``K == pool == 1``).

    Raises:
        ValueError: ``passes`` out of range.
    """

    def __init__(self, pass_scores: Tensor, passes: int) -> None:
        pool = int(pass_scores.shape[1])
        if not (1 <= passes <= pool):
            raise ValueError(f"passes (K) must be in [1, pool = {pool}], got {passes}")
        self.pass_scores = pass_scores.detach().to("cpu", torch.float64)
        self.passes = int(passes)

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
        """Uncertainties ``[len(indices)]``: unbiased std of K of each image's pass scores (no replacement).

        With ``pool == K`` every draw is the same (all passes); with K == 1 the std is reported as 0.
        """
        rows = self.pass_scores[indices]
        if self.pool > self.passes:
            pick = torch.rand(rows.shape, generator=generator, dtype=torch.float64).argsort(dim=1)
            rows = rows.gather(1, pick[:, : self.passes])
        if self.passes < 2:
            return torch.zeros(rows.shape[0], dtype=torch.float64)
        return rows.std(dim=1, correction=1)

    def mean_score(self) -> Tensor:
        """``[n]`` mean of each image's pass scores: a dropout-averaged reconstruction anomaly score."""
        return self.pass_scores.mean(dim=1)
