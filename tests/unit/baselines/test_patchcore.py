from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ssfilter.baselines.coreset import farthest_point_sampling, greedy_coreset, random_projection
from ssfilter.baselines.nearest import nearest_distances
from ssfilter.baselines.patchcore import PatchCore, PatchCoreConfig, default_local_pool, fit_patchcore
from ssfilter.config import DataConfig
from ssfilter.data.datasets import AnomalyDataset, mvtec_samples
from ssfilter.data.transforms import build_image_transform
from ssfilter.evaluation.evaluate import evaluate_baseline
from ssfilter.evaluation.metrics import METRIC_KEYS
from ssfilter.models.encoders import Encoder, build_encoder

CROP = 32


def _brute_force_fps(points: np.ndarray, num: int, start: int) -> list[int]:
    """Farthest-point sampling from the full float64 distance matrix, recomputing every min each step."""
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    chosen = [start]
    while len(chosen) < num:
        nearest = dist[:, chosen].min(axis=1)
        chosen.append(int(np.argmax(nearest)))
    return chosen


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------
# Coreset


@pytest.mark.parametrize("start", [0, 17, 59])
def test_farthest_point_sampling_matches_brute_force(start: int) -> None:
    points = _randn(60, 5, seed=start)
    for num in (1, 2, 10, 60):
        got = farthest_point_sampling(points.double(), num, start)
        assert got.dtype == torch.long and got.shape == (num,)
        assert got.tolist() == _brute_force_fps(points.double().numpy(), num, start)
        assert farthest_point_sampling(points, num, start).tolist() == got.tolist()  # float32 too
    with pytest.raises(ValueError, match="num must be"):
        farthest_point_sampling(points, 61, start)
    with pytest.raises(ValueError, match="start must be"):
        farthest_point_sampling(points, 3, 60)


def test_greedy_coreset_is_farthest_point_sampling_on_the_projection() -> None:
    feats = _randn(120, 40, seed=1)
    idx = greedy_coreset(feats, 0.2, projection_dim=8, seed=3)
    assert idx.shape == (24,) and len(set(idx.tolist())) == 24
    projected = random_projection(feats, 8, seed=3)
    assert projected.shape == (120, 8)
    ref = _brute_force_fps(projected.double().numpy(), 24, int(idx[0]))
    assert idx.tolist() == ref
    # Narrow features are not projected.
    narrow = _randn(50, 6, seed=2)
    assert random_projection(narrow, 8, seed=0) is narrow
    idx = greedy_coreset(narrow, 0.3, projection_dim=8, seed=0)
    assert idx.tolist() == _brute_force_fps(narrow.double().numpy(), 15, int(idx[0]))


def test_random_projection_roughly_preserves_distances() -> None:
    feats = _randn(40, 512, seed=4)
    proj = random_projection(feats, 256, seed=0)
    ratio = torch.pdist(proj) / torch.pdist(feats)
    assert 0.8 < float(ratio.mean()) < 1.2


def test_greedy_coreset_ratio_bounds() -> None:
    feats = _randn(37, 10, seed=5)
    assert greedy_coreset(feats, 1.0).tolist() == list(range(37))
    assert greedy_coreset(feats, 1e-6).shape == (1,)  # at least one
    for ratio in (0.1, 0.5, 0.9):
        idx = greedy_coreset(feats, ratio, projection_dim=4)
        assert idx.numel() == round(ratio * 37)
        assert len(set(idx.tolist())) == idx.numel() and int(idx.min()) >= 0 and int(idx.max()) < 37
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio"):
            greedy_coreset(feats, bad)
    with pytest.raises(ValueError, match="zero features"):
        greedy_coreset(feats[:0], 0.5)


def test_greedy_coreset_is_deterministic_by_seed() -> None:
    feats = _randn(200, 64, seed=6)
    a = greedy_coreset(feats, 0.1, projection_dim=16, seed=0)
    assert torch.equal(a, greedy_coreset(feats, 0.1, projection_dim=16, seed=0))
    b = greedy_coreset(feats, 0.1, projection_dim=16, seed=1)
    assert not torch.equal(a, b)


def test_coreset_covers_a_far_cluster() -> None:
    # 99 points in a tight cluster, one far outlier: a 2-point coreset must include the outlier.
    feats = torch.cat([_randn(99, 8, seed=7) * 0.01, torch.full((1, 8), 10.0)])
    assert 99 in greedy_coreset(feats, 0.02, projection_dim=128).tolist()


# ------------------------------------------------------------------------------------------------
# Nearest neighbours


@pytest.mark.parametrize("k", [1, 3])
def test_chunked_nearest_equals_full_cdist(k: int) -> None:
    queries, bank = _randn(53, 12, seed=8), _randn(40, 12, seed=9)
    full = torch.cdist(queries.double(), bank.double())
    ref_d, ref_i = full.topk(k, dim=1, largest=False)
    for chunk in (1, 7, 53, 1000):
        dist, idx = nearest_distances(queries, bank, k=k, chunk_size=chunk)
        assert dist.shape == idx.shape == (53, k) and idx.dtype == torch.long
        assert torch.equal(idx, ref_i)
        torch.testing.assert_close(dist.double(), ref_d, atol=1e-5, rtol=0)
        assert bool((dist[:, 1:] >= dist[:, :-1]).all())


def test_nearest_distance_of_a_bank_row_is_exactly_zero() -> None:
    bank = _randn(300, 64, seed=10) * 50.0  # large norms: cdist's matrix-product path is inexact here
    dist, idx = nearest_distances(bank[::7], bank, chunk_size=16)
    assert torch.equal(idx[:, 0], torch.arange(0, 300, 7))
    assert torch.equal(dist, torch.zeros_like(dist))


def test_nearest_distances_validates() -> None:
    with pytest.raises(ValueError, match="k must be"):
        nearest_distances(_randn(3, 4), _randn(2, 4), k=3)
    with pytest.raises(ValueError, match=r"\[Q, D\]"):
        nearest_distances(_randn(3, 4), _randn(2, 5))
    dist, idx = nearest_distances(_randn(0, 4), _randn(2, 4))
    assert dist.shape == idx.shape == (0, 1)


# ------------------------------------------------------------------------------------------------
# Model


@pytest.fixture(scope="module")
def vit() -> Encoder:
    return build_encoder("tiny_vit", allow_random=True)


@pytest.fixture(scope="module")
def cnn() -> Encoder:
    return build_encoder("mobilenet_v2", allow_random=True)


@pytest.fixture(scope="module")
def data_cfg() -> DataConfig:
    return DataConfig(resize=CROP, crop=CROP, batch_size=4, eval_size=CROP)


def _images(root: Path, split: str, encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    samples = mvtec_samples(root, split)  # type: ignore[arg-type]
    ds = AnomalyDataset(samples, build_image_transform(CROP, CROP, encoder.mean, encoder.std))
    return torch.stack([ds[i]["image"] for i in range(len(ds))]), torch.tensor([s.label for s in samples])


@pytest.fixture(scope="module")
def train_images(synthetic_mvtec: Path, vit: Encoder) -> torch.Tensor:
    return _images(synthetic_mvtec, "train", vit)[0]


@pytest.fixture(scope="module")
def test_images(synthetic_mvtec: Path, vit: Encoder) -> tuple[torch.Tensor, torch.Tensor]:
    return _images(synthetic_mvtec, "test", vit)


@pytest.fixture(scope="module")
def full_model(synthetic_mvtec: Path, vit: Encoder, data_cfg: DataConfig) -> PatchCore:
    cfg = PatchCoreConfig(coreset_ratio=1.0, local_pool=3)
    return fit_patchcore(mvtec_samples(synthetic_mvtec, "train"), vit, data_cfg, cfg, progress=False)


def test_default_local_pool(vit: Encoder, cnn: Encoder) -> None:
    assert default_local_pool(vit) == 3 and PatchCore(vit, crop=32).cfg.local_pool == 3
    assert default_local_pool(cnn) == 1 and PatchCore(cnn, crop=32).cfg.local_pool == 1
    assert PatchCore(cnn, PatchCoreConfig(local_pool=3), crop=32).cfg.local_pool == 3  # as given


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="coreset_ratio"):
        PatchCoreConfig(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="local_pool"):
        PatchCoreConfig(local_pool=2)
    with pytest.raises(ValueError, match="unknown"):
        PatchCoreConfig.from_dict({"coreset_ratio": 0.5, "bogus": 1})


def test_predict_shapes_and_bank_size(vit: Encoder) -> None:
    images = _randn(3, 3, 32, 32, seed=11)
    model = PatchCore(vit, PatchCoreConfig(coreset_ratio=0.25), crop=32)
    with pytest.raises(RuntimeError, match="fit"):
        _ = model.memory_bank
    model.fit([images[:2], {"image": images[2:]}])  # plain tensors and loader dicts
    assert model.memory_bank.shape == (round(0.25 * 3 * 16), vit.descriptor_dim)
    maps, scores = model.predict(images)
    assert maps.shape == (3, 32, 32) and scores.shape == (3,)
    assert maps.dtype == scores.dtype == torch.float32
    assert bool(torch.isfinite(maps).all()) and bool((maps >= 0).all()) and bool((scores >= 0).all())
    with pytest.raises(ValueError, match="expected images"):
        model.predict(_randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="no training images"):
        PatchCore(vit, crop=32).fit([])


def test_local_pooling_averages_the_grid_neighbourhood(vit: Encoder) -> None:
    images = _randn(1, 3, 32, 32, seed=12)
    raw = PatchCore(vit, PatchCoreConfig(local_pool=1), crop=32).features(images)
    pooled = PatchCore(vit, PatchCoreConfig(local_pool=3), crop=32).features(images)
    grid = raw[0].view(4, 4, -1)
    torch.testing.assert_close(pooled[0].view(4, 4, -1)[1, 2], grid[0:3, 1:4].mean((0, 1)))
    torch.testing.assert_close(pooled[0].view(4, 4, -1)[0, 0], grid[0:2, 0:2].mean((0, 1)))  # no zero pad


def test_training_image_is_in_memory_and_scores_zero(
    vit: Encoder, train_images: torch.Tensor, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """With the whole bank kept, a training image's patches are their own nearest entries.

    This is PatchCore's collapse in the "overlap" noisy setting: an anomalous image that was also
    trained on is in memory and scores as normal.
    """
    images, labels = test_images
    defective = images[labels == 1][:2]
    cfg = PatchCoreConfig(coreset_ratio=1.0, reweight=False)
    clean = PatchCore(vit, cfg, crop=CROP).fit([train_images])
    noisy = PatchCore(vit, cfg, crop=CROP).fit(
        [train_images, defective]
    )  # "overlap": trained on test anomalies

    patch, _, _ = clean.patch_scores(train_images[:3])
    assert float(patch.abs().max()) < 1e-4
    maps, scores = clean.predict(train_images[:3])
    assert float(scores.max()) < 1e-4 and float(maps.max()) < 1e-4

    _, detected = clean.predict(defective)
    _, hidden = noisy.predict(defective)
    assert float(hidden.max()) < 1e-4 < float(detected.min())


def test_foreign_patch_scores_higher(
    full_model: PatchCore,
    vit: Encoder,
    train_images: torch.Tensor,
    test_images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    images, labels = test_images
    good = images[labels == 0]
    tampered = good.clone()
    tampered[..., 8:16, 16:24] = _randn(1, 3, 8, 8, seed=13) * 2.0  # exactly grid cell (1, 2)
    both = torch.cat([good, tampered])
    _, scores = full_model.predict(both)
    assert bool((scores[3:] > 2.0 * scores[:3]).all())
    # Without pooling the foreign cell itself is the farthest from memory, and the map peaks on it.
    unpooled = PatchCore(vit, PatchCoreConfig(coreset_ratio=1.0, local_pool=1), crop=CROP).fit([train_images])
    patch, _, _ = unpooled.patch_scores(tampered)
    assert patch.argmax(dim=1).tolist() == [1 * 4 + 2] * 3
    maps, scores = unpooled.predict(both)
    assert bool((scores[3:] > 2.0 * scores[:3]).all())
    for m in maps[3:]:
        row, col = divmod(int(m.argmax()), CROP)
        assert 8 <= row < 16 and 16 <= col < 24


def test_reweighting_scales_scores_into_zero_one(
    full_model: PatchCore, vit: Encoder, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images = test_images[0]
    plain = PatchCore(vit, PatchCoreConfig(coreset_ratio=1.0, reweight=False), crop=CROP)
    plain.set_memory_bank(full_model.memory_bank)
    _, weighted = full_model.predict(images)
    _, raw = plain.predict(images)
    patch, _, _ = plain.patch_scores(images)
    torch.testing.assert_close(raw, patch.max(dim=1).values)  # score = max patch distance
    assert bool((weighted <= raw).all()) and bool((weighted > 0).all())
    # One memory entry: Eq. 7 is degenerate (b = 1 gives weight 0), so it is skipped.
    single = PatchCore(vit, PatchCoreConfig(reweight=True), crop=CROP)
    single.set_memory_bank(full_model.memory_bank[:1])
    single_plain = PatchCore(vit, PatchCoreConfig(reweight=False), crop=CROP)
    single_plain.set_memory_bank(full_model.memory_bank[:1])
    torch.testing.assert_close(single.predict(images[:2])[1], single_plain.predict(images[:2])[1])


def test_predict_does_not_depend_on_chunk_size(
    full_model: PatchCore, vit: Encoder, test_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    images = test_images[0][:3]
    small = PatchCore(vit, PatchCoreConfig(coreset_ratio=1.0, chunk_size=5), crop=CROP)
    small.set_memory_bank(full_model.memory_bank)
    for a, b in zip(full_model.predict(images), small.predict(images), strict=True):
        torch.testing.assert_close(a, b)


def test_save_load_round_trip(
    tmp_path: Path,
    full_model: PatchCore,
    vit: Encoder,
    cnn: Encoder,
    test_images: tuple[torch.Tensor, torch.Tensor],
) -> None:
    images = test_images[0][:3]
    path = tmp_path / "sub" / "patchcore.safetensors"
    full_model.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["patchcore.safetensors"]  # no temp file left
    loaded = PatchCore.load(path, vit)
    assert loaded.cfg == full_model.cfg and loaded.crop == full_model.crop
    assert torch.equal(loaded.memory_bank, full_model.memory_bank)
    for a, b in zip(loaded.predict(images), full_model.predict(images), strict=True):
        assert torch.equal(a, b)

    with pytest.raises(ValueError, match="fitted with encoder"):
        PatchCore.load(path, cnn)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something"})
    with pytest.raises(ValueError, match="not an ssfilter PatchCore"):
        PatchCore.load(other, vit)


def test_evaluate_patchcore_metrics(
    synthetic_mvtec: Path, full_model: PatchCore, data_cfg: DataConfig
) -> None:
    samples = mvtec_samples(synthetic_mvtec, "test")
    result = evaluate_baseline(full_model, samples, data_cfg, batch_size=5).to_json()
    assert result["n_test"] == len(samples) == 9
    assert set(result["metrics"]) == set(METRIC_KEYS)
    for key, value in result["metrics"].items():
        assert value is None or (0.0 <= value <= 1.0 and math.isfinite(value)), key
    assert result["metrics"]["I-AUROC"] is not None and result["metrics"]["P-AUPRO"] is not None
    assert [im["label"] for im in result["images"]] == [s.label for s in samples]
    json.dumps(result)  # the evaluate JSON contract is serialisable


def test_patchcore_fits_and_scores_tiles(synthetic_mvtec: Path, vit: Encoder, data_cfg: DataConfig) -> None:
    # The 64-px synthetic images in 32-px tiles: 3 x 3 per image; the bank holds every tile's patches.
    tiles_cfg = DataConfig(**{**data_cfg.__dict__, "coverage": "tiles", "resize": CROP})
    train = mvtec_samples(synthetic_mvtec, "train")
    cfg = PatchCoreConfig(coreset_ratio=1.0, local_pool=3)
    plain = fit_patchcore(train, vit, data_cfg, cfg, progress=False)
    tiled = fit_patchcore(train, vit, tiles_cfg, cfg, progress=False)
    assert tiled.memory_bank.shape[0] > 2 * plain.memory_bank.shape[0]
    result = evaluate_baseline(tiled, mvtec_samples(synthetic_mvtec, "test"), tiles_cfg).to_json()
    assert result["n_test"] == 9 and result["metrics"]["I-AUROC"] is not None
