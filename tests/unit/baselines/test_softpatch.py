from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssfilter.baselines.fitting import fit_on_samples
from ssfilter.baselines.patchcore import PatchCore, PatchCoreConfig
from ssfilter.baselines.softpatch import SoftPatch, SoftPatchConfig, clean_patch_mask, lof_patch_weights
from ssfilter.config import DataConfig
from ssfilter.data.datasets import mvtec_samples
from ssfilter.evaluation.evaluate import evaluate_baseline
from ssfilter.models.encoders import Encoder, build_encoder

CROP = 32
IMAGES, POSITIONS = 20, 16
NOISY_IMAGES, DEFECT_POSITION = (2, 9, 15), 5


@pytest.fixture(scope="module")
def vit() -> Encoder:
    return build_encoder("tiny_vit", allow_random=True)


def _reference_lof(points: np.ndarray, k: int) -> np.ndarray:
    """Local Outlier Factor from its definition (Breunig et al. 2000), float64, no tie handling."""
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    neighbours = np.argsort(dist, axis=1)[:, :k]
    k_distance = np.take_along_axis(dist, neighbours[:, -1:], axis=1)[:, 0]
    reach = np.maximum(np.take_along_axis(dist, neighbours, axis=1), k_distance[neighbours])
    lrd = 1.0 / reach.mean(axis=1)
    return lrd[neighbours].mean(axis=1) / lrd


def _features(dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training features ``[I, N, D]`` of aligned images, a few carrying one defect patch; a test pair.

    Every position has its own normal prototype; each image adds small noise. The defect is one fixed
    vector, far from every prototype, planted at ``DEFECT_POSITION`` in ``NOISY_IMAGES``. The test pair
    is a normal image and one with the same defect at the same place.
    """
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(POSITIONS, dim, generator=gen)
    defect = prototypes[DEFECT_POSITION] + 4.0 * torch.randn(dim, generator=gen) / math.sqrt(dim) * 3.0

    def image() -> torch.Tensor:
        return prototypes + 0.05 * torch.randn(POSITIONS, dim, generator=gen)

    train = torch.stack([image() for _ in range(IMAGES)])
    for i in NOISY_IMAGES:
        train[i, DEFECT_POSITION] = defect + 0.05 * torch.randn(dim, generator=gen)
    good, bad = image(), image()
    bad[DEFECT_POSITION] = defect + 0.05 * torch.randn(dim, generator=gen)
    return train, good, bad


def test_lof_weights_match_the_definition() -> None:
    feats = torch.randn(12, 3, 6, generator=torch.Generator().manual_seed(1))
    weights = lof_patch_weights(feats, k=4, projection_dim=6)  # no projection: D <= projection_dim
    assert weights.shape == (12, 3) and weights.dtype == torch.float32
    for p in range(3):
        ref = _reference_lof(feats[:, p].double().numpy(), 4)
        np.testing.assert_allclose(weights[:, p].numpy(), ref, rtol=1e-4)
    # Too few images for k: the neighbourhood shrinks; one image: nothing to compare, weight 1.
    assert torch.isfinite(lof_patch_weights(feats[:3], k=5)).all()
    assert torch.equal(lof_patch_weights(feats[:1], k=5), torch.ones(1, 3))


def test_clean_patch_mask_drops_the_highest_share() -> None:
    weights = torch.arange(40, dtype=torch.float32).view(4, 10)
    kept = clean_patch_mask(weights, 0.25)
    assert int(kept.sum()) == 30 and not bool(kept.view(-1)[30:].any())
    assert bool(clean_patch_mask(weights, 0.0).all())
    with pytest.raises(ValueError, match="threshold"):
        clean_patch_mask(weights, 1.0)


def test_discriminator_drops_planted_outliers_that_patchcore_keeps(vit: Encoder) -> None:
    train, good, bad = _features(vit.descriptor_dim)
    patchcore = PatchCore(vit, PatchCoreConfig(coreset_ratio=1.0, reweight=False), crop=CROP)
    patchcore.build_memory(train)
    softpatch = SoftPatch(vit, SoftPatchConfig(coreset_ratio=1.0), crop=CROP)
    softpatch.build_memory(train)

    planted = train[list(NOISY_IMAGES), DEFECT_POSITION]  # [3, D]
    assert softpatch.kept_patches is not None and softpatch.patch_weights is not None
    assert not bool(softpatch.kept_patches[list(NOISY_IMAGES), DEFECT_POSITION].any())
    top = softpatch.patch_weights.view(-1).topk(len(NOISY_IMAGES)).indices
    assert sorted(top.tolist()) == sorted(i * POSITIONS + DEFECT_POSITION for i in NOISY_IMAGES)

    # PatchCore's bank holds the planted patches; SoftPatch's none of them, and 15% fewer patches.
    def nearest(bank: torch.Tensor) -> torch.Tensor:
        return (planted[:, None] - bank[None]).norm(dim=-1).min(dim=1).values

    assert float(nearest(patchcore.memory_bank).max()) == 0.0
    assert float(nearest(softpatch.memory_bank).min()) > 1.0
    assert (
        softpatch.memory_bank.shape[0]
        == int(softpatch.kept_patches.sum())
        == round(0.85 * IMAGES * POSITIONS)
    )
    assert softpatch.memory_weights.shape == (softpatch.memory_bank.shape[0],)

    # The same defect at test time: PatchCore finds it in memory, SoftPatch does not.
    pc_patch, pc_scores = patchcore.score_features(torch.stack([good, bad]))
    sp_patch, sp_scores = softpatch.score_features(torch.stack([good, bad]))
    assert float(sp_scores[1]) > 5.0 * float(pc_scores[1])
    assert float(sp_scores[1]) > 5.0 * float(sp_scores[0])  # SoftPatch separates the pair ...
    assert float(pc_scores[1]) < 2.0 * float(pc_scores[0])  # ... PatchCore does not
    assert int(sp_patch[1].argmax()) == DEFECT_POSITION


def test_soft_weights_scale_the_nearest_distances(vit: Encoder) -> None:
    train, good, bad = _features(vit.descriptor_dim, seed=3)
    soft = SoftPatch(vit, SoftPatchConfig(coreset_ratio=0.5), crop=CROP)
    soft.build_memory(train)
    plain = SoftPatch(vit, SoftPatchConfig(coreset_ratio=0.5, soft_weight=False), crop=CROP)
    plain.build_memory(train)
    assert torch.equal(soft.memory_bank, plain.memory_bank)
    assert soft.memory_bank.shape[0] == round(0.5 * IMAGES * POSITIONS)  # ratio of all patches
    queries = torch.stack([good, bad])
    weighted, nearest = soft.patch_distances(queries)
    raw, nearest_plain = plain.patch_distances(queries)
    assert torch.equal(nearest, nearest_plain)
    # Independent check: the nearest entry by brute force, its distance times its LOF weight.
    full = torch.cdist(queries.reshape(-1, queries.shape[-1]).double(), soft.memory_bank.double())
    best = full.min(dim=1)
    torch.testing.assert_close(raw.reshape(-1).double(), best.values, rtol=1e-4, atol=1e-5)
    expected = best.values * soft.memory_weights.double()[best.indices]
    torch.testing.assert_close(weighted.reshape(-1).double(), expected, rtol=1e-4, atol=1e-5)


def test_config_validates_and_round_trips(tmp_path: Path, vit: Encoder) -> None:
    with pytest.raises(ValueError, match="lof_k"):
        SoftPatchConfig(lof_k=0)
    with pytest.raises(ValueError, match="threshold"):
        SoftPatchConfig(threshold=1.0)
    with pytest.raises(TypeError, match="SoftPatchConfig"):
        SoftPatch(vit, PatchCoreConfig(), crop=CROP)  # type: ignore[arg-type]
    assert SoftPatch(vit, crop=CROP).cfg == SoftPatchConfig(local_pool=3)  # ViT: pooled like PatchCore

    train, good, bad = _features(vit.descriptor_dim, seed=4)
    model = SoftPatch(vit, SoftPatchConfig(coreset_ratio=0.3), crop=CROP)
    model.build_memory(train)
    path = tmp_path / "softpatch.safetensors"
    model.save(path)
    loaded = SoftPatch.load(path, vit)
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded.memory_bank, model.memory_bank)
    assert torch.equal(loaded.memory_weights, model.memory_weights)
    queries = torch.stack([good, bad])
    for a, b in zip(loaded.score_features(queries), model.score_features(queries), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not an ssfilter PatchCore"):
        PatchCore.load(path, vit)
    pc = PatchCore(vit, PatchCoreConfig(coreset_ratio=0.3), crop=CROP)
    pc.build_memory(train)
    pc.save(tmp_path / "patchcore.safetensors")
    with pytest.raises(ValueError, match="not an ssfilter SoftPatch"):
        SoftPatch.load(tmp_path / "patchcore.safetensors", vit)
    model.set_memory_bank(model.memory_bank[:3])  # weights no longer match the bank
    with pytest.raises(RuntimeError, match="weights"):
        model.score_features(queries)


def test_fit_and_evaluate_on_images(synthetic_mvtec: Path, vit: Encoder) -> None:
    data_cfg = DataConfig(resize=CROP, crop=CROP, batch_size=4, eval_size=CROP)
    model = fit_on_samples(SoftPatch(vit, crop=CROP), mvtec_samples(synthetic_mvtec, "train"), data_cfg)
    assert isinstance(model, SoftPatch) and model.kept_patches is not None
    assert model.kept_patches.shape == (8, 16)  # 8 training images, 4 x 4 grid
    result = evaluate_baseline(model, mvtec_samples(synthetic_mvtec, "test"), data_cfg)
    assert result.n_test == 9 and len(result.scores) == 9
    assert result.metrics["I-AUROC"] is not None and 0.0 <= result.metrics["I-AUROC"] <= 1.0
