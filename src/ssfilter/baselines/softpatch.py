"""SoftPatch (Jiang et al., NeurIPS 2022, "SoftPatch: Unsupervised Anomaly Detection with Noisy Data").

SoftPatch is PatchCore with a patch-level noise discriminator, the other noise-robust baseline of the
SSFilter paper. This is its ``weight_method lof`` variant:

1. Outlier score per training patch: for every patch position, a Local Outlier Factor over the training
   images' patches at that position (the images of one category are roughly aligned, so a defect is an
   outlier among the patches that share its place). Like the reference code, LOF runs on the seeded
   random projection that the coreset uses (``projection_dim``), with ``lof_k`` neighbours.
2. Denoising: the ``threshold`` share of all training patches with the highest LOF (one quantile over
   every position and image) is dropped before the greedy coreset; the coreset keeps ``coreset_ratio`` of
   *all* training patches, as PatchCore's would.
3. Soft weights: each memory entry keeps its LOF as a weight, and at test time a patch's nearest-memory
   distance is multiplied by its nearest entry's weight ("soft_weight"), so a remaining, slightly
   atypical memory entry explains a test patch less well. The image score is the largest weighted patch
   score (the reference scores by the plain maximum; PatchCore's Eq. 7 reweighting is off by default).

Choices and their reasons:

* ``lof_k = 5``: the default the reference's model takes; its command line also offers ``--lof_k 6``,
  but passes it under another keyword (``LOF_k``) that the model never reads, so its runs used 5.
* With fewer training images than ``lof_k + 1`` the neighbourhood shrinks to ``images - 1``; with one
  image there is nothing to compare, every weight is 1 and nothing is dropped.
* Everything else (features, local pooling, coreset, maps) is PatchCore's (see
  :mod:`ssfilter.baselines.patchcore`), so the two differ exactly by the discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ssfilter.baselines.coreset import greedy_coreset, random_projection
from ssfilter.baselines.patchcore import PatchCore, PatchCoreConfig
from ssfilter.baselines.registry import register_baseline
from ssfilter.models.encoders import Encoder

__all__ = ["SoftPatch", "SoftPatchConfig", "clean_patch_mask", "lof_patch_weights"]


@dataclass
class SoftPatchConfig(PatchCoreConfig):
    """SoftPatch hyper-parameters: PatchCore's plus the noise discriminator's (reference defaults).

    Attributes:
        lof_k: Neighbours of the Local Outlier Factor.
        threshold: Share of all training patches, those with the highest LOF, dropped before the coreset.
        soft_weight: Multiply test distances by the LOF weight of the nearest memory entry.
        reweight: PatchCore's Eq. 7 image-score reweighting (off: SoftPatch scores by the plain maximum).
    """

    lof_k: int = 5
    threshold: float = 0.15
    soft_weight: bool = True
    reweight: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lof_k < 1:
            raise ValueError(f"lof_k must be positive, got {self.lof_k}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")


def lof_patch_weights(feats: Tensor, k: int, projection_dim: int = 128, seed: int = 0) -> Tensor:
    """Local Outlier Factor of every training patch among the patches at its position.

    Args:
        feats: ``[I, N, D]`` features of ``N`` patch positions in ``I`` training images.
        k: LOF neighbours (reduced to ``I - 1`` when there are fewer images).
        projection_dim: Width of the seeded random projection LOF runs on (wider features only).
        seed: Seed of the projection.

    Returns:
        ``[I, N]`` float32 LOF values on the features' device: about 1 for a patch as dense as its
        neighbours, larger for an outlier; all ones when ``I < 2``.
    """
    from sklearn.neighbors import LocalOutlierFactor

    images, positions, dim = feats.shape
    k = min(k, images - 1)
    if k < 1:
        return torch.ones(images, positions, device=feats.device)
    projected = random_projection(feats.reshape(-1, dim).float(), projection_dim, seed)
    per_position = projected.reshape(images, positions, -1).transpose(0, 1).cpu().double().numpy()
    weights = np.empty((positions, images), dtype=np.float64)
    lof = LocalOutlierFactor(n_neighbors=k, metric="euclidean")
    for p in range(positions):
        lof.fit(per_position[p])
        weights[p] = -lof.negative_outlier_factor_
    return torch.from_numpy(weights.T.copy()).to(device=feats.device, dtype=torch.float32)


def clean_patch_mask(weights: Tensor, threshold: float) -> Tensor:
    """Patches that survive the discriminator: all but the ``threshold`` share with the highest weight.

    The cut is one quantile over every patch (``weight <= quantile(1 - threshold)`` survives), so a
    position without outliers may lose nothing and a defective position several patches.

    Args:
        weights: ``[I, N]`` LOF weights.
        threshold: Share to drop, in ``[0, 1)``; 0 keeps every patch.

    Returns:
        ``[I, N]`` boolean mask, True for a kept patch.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    flat = weights.detach().reshape(-1).cpu().double().numpy()
    cut = float(np.quantile(flat, 1.0 - threshold))
    return weights <= cut


@register_baseline("softpatch")
class SoftPatch(PatchCore):
    """SoftPatch (``weight_method lof``) on a frozen encoder: PatchCore plus its noise discriminator.

    After :meth:`fit`, :attr:`patch_weights` holds every training patch's LOF ``[I, N]`` and
    :attr:`kept_patches` which of them the discriminator kept (for inspection; not saved).

    Args:
        encoder: Frozen encoder; its patch descriptors are the features.
        cfg: Hyper-parameters (``None``: defaults, local pooling as for PatchCore).
        crop: Input side.
    """

    config_type: ClassVar[type[PatchCoreConfig]] = SoftPatchConfig
    file_format: ClassVar[str] = "ssfilter-softpatch"
    display_name: ClassVar[str] = "SoftPatch"

    def __init__(self, encoder: Encoder, cfg: SoftPatchConfig | None = None, crop: int = 224) -> None:
        if cfg is not None and not isinstance(cfg, SoftPatchConfig):
            raise TypeError(f"SoftPatch needs a SoftPatchConfig, got {type(cfg).__name__}")
        super().__init__(encoder, cfg, crop)
        self.cfg: SoftPatchConfig
        self.register_buffer("_weights", torch.empty(0), persistent=False)
        self._weights: Tensor
        self.patch_weights: Tensor | None = None
        self.kept_patches: Tensor | None = None

    @property
    def memory_weights(self) -> Tensor:
        """LOF weight ``[M]`` of every memory entry."""
        bank = self.memory_bank  # raises before fit
        if self._weights.shape != (bank.shape[0],):
            raise RuntimeError("SoftPatch's memory weights do not match its bank; fit() or load() it")
        return self._weights

    def build_memory(self, feats: Tensor, progress: bool = False) -> None:
        """Score every training patch by LOF, drop the most outlying ones, then take the coreset."""
        cfg = self.cfg
        weights = lof_patch_weights(feats, cfg.lof_k, cfg.projection_dim, cfg.seed)
        kept = clean_patch_mask(weights, cfg.threshold)
        self.patch_weights, self.kept_patches = weights, kept
        pool, pool_weights = feats[kept], weights[kept]
        total = feats.shape[0] * feats.shape[1]
        index = greedy_coreset(pool, cfg.coreset_ratio, cfg.projection_dim, cfg.seed, progress, of=total)
        self.set_memory_bank(pool[index])
        self._weights = pool_weights[index].to(self.device).contiguous()

    @torch.no_grad()
    def patch_distances(self, desc: Tensor) -> tuple[Tensor, Tensor]:
        """PatchCore's patch scores, times the LOF weight of each patch's nearest entry (``soft_weight``)."""
        dist, nearest = super().patch_distances(desc)
        if self.cfg.soft_weight:
            dist = dist * self.memory_weights[nearest]
        return dist, nearest

    def state_tensors(self) -> dict[str, Tensor]:
        """The memory bank and the LOF weights of its entries."""
        return {**super().state_tensors(), "memory_weights": self.memory_weights}

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore the memory bank and its weights."""
        bank, weights = tensors["memory_bank"], tensors["memory_weights"]
        if weights.shape != (bank.shape[0],):
            raise ValueError(f"memory_weights must be [{bank.shape[0]}], got {tuple(weights.shape)}")
        self.set_memory_bank(bank)
        self._weights = weights.to(device=self.device, dtype=torch.float32).contiguous()
