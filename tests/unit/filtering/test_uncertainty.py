from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssfilter.config import ModelConfig
from ssfilter.filtering.uncertainty import mc_uncertainty, uncertainty_from_maps
from ssfilter.models.anomaly_map import anomaly_map, gaussian_blur, topk_mean_score
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import build_encoder


def _model(dropout: float = 0.2) -> DinomalyModel:
    enc = build_encoder("tiny_vit", allow_random=True)
    return DinomalyModel(enc, ModelConfig(backbone="tiny_vit", dropout=dropout), crop=32).eval()


def test_shapes_and_unbiased_std() -> None:
    torch.manual_seed(0)
    model = _model()
    feats = model.encode(torch.randn(3, 3, 32, 32))
    unc = mc_uncertainty(model, feats, passes=5)
    assert unc.pass_scores.shape == (5, 3)
    assert unc.uncertainty.shape == (3,)
    assert unc.acc_map.shape == (3, 32, 32)
    expected = np.std(unc.pass_scores.double().numpy(), axis=0, ddof=1)  # numpy's unbiased std
    torch.testing.assert_close(unc.uncertainty, torch.from_numpy(expected).float())
    assert bool((unc.uncertainty > 0).all()), "dropout passes must differ"


def test_without_dropout_every_pass_equals_the_plain_map() -> None:
    model = _model(dropout=0.0)
    feats = model.encode(torch.randn(2, 3, 32, 32))
    unc = mc_uncertainty(model, feats, passes=4)
    plain = gaussian_blur(anomaly_map(model.target_groups(feats), model.decode(feats), 32))[:, 0]
    torch.testing.assert_close(unc.acc_map, 4 * plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unc.uncertainty, torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(unc.pass_scores[0], topk_mean_score(plain), rtol=1e-5, atol=1e-6)


def test_chunked_passes_match_layout() -> None:
    model = _model(dropout=0.0)
    feats = model.encode(torch.randn(5, 3, 32, 32))
    full = mc_uncertainty(model, feats, passes=3)
    chunked = mc_uncertainty(model, feats, passes=3, chunk=2)
    torch.testing.assert_close(full.acc_map, chunked.acc_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full.pass_scores, chunked.pass_scores, rtol=1e-5, atol=1e-6)


def test_uncertainty_from_maps_by_hand() -> None:
    # 3 passes over 2 images of 10x10 constant maps: top-1% score (k = 1) = the constant.
    # image 0 scores 1, 2, 4 in the passes: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9,
    # unbiased variance 42/9 / 2 = 7/3; image 1 scores 5 in every pass: no spread.
    values = torch.tensor([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    maps = values[:, :, None, None].expand(3, 2, 10, 10)
    unc = uncertainty_from_maps(maps)
    torch.testing.assert_close(unc.pass_scores, values)
    torch.testing.assert_close(unc.uncertainty, torch.tensor([math.sqrt(7 / 3), 0.0]))
    torch.testing.assert_close(
        unc.acc_map, torch.stack([torch.full((10, 10), 7.0), torch.full((10, 10), 15.0)])
    )
    torch.testing.assert_close(unc.mean_score, torch.tensor([7 / 3, 5.0]))


def test_single_pass_gives_zero_not_nan() -> None:
    maps = torch.rand(1, 2, 8, 8)
    unc = uncertainty_from_maps(maps)
    assert torch.equal(unc.uncertainty, torch.zeros(2))


def test_auto_slices_keep_cpu_slices_cache_sized(monkeypatch) -> None:
    import ssfilter.filtering.uncertainty as unc_mod

    model = _model()
    feats = model.encode(torch.randn(5, 3, 32, 32))
    row = 16 * model.dim * 4  # one image-pass of the 4x4 grid
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", 100 * row)
    assert unc_mod.auto_slices(model, feats, 10) == (5, 10), "everything fits: one pass"
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", 20 * row)
    assert unc_mod.auto_slices(model, feats, 10) == (2, 10), "2 images x 10 passes per slice"
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", 8 * row)
    assert unc_mod.auto_slices(model, feats, 10) == (1, 5), "one image, passes balanced 5 + 5"
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", 1)
    assert unc_mod.auto_slices(model, feats, 10) == (1, 1)
    assert unc_mod.auto_slices(model, feats.to("meta"), 10) == (5, 10), "off the CPU: one pass"


@pytest.mark.parametrize("budget_rows", [8, 20])
def test_sliced_passes_match_one_pass_without_dropout(monkeypatch, budget_rows: int) -> None:
    import ssfilter.filtering.uncertainty as unc_mod

    model = _model(dropout=0.0)
    feats = model.encode(torch.randn(5, 3, 32, 32))
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", budget_rows * 16 * model.dim * 4)
    sliced = mc_uncertainty(model, feats, passes=10)
    whole = mc_uncertainty(model, feats, passes=10, chunk=None)
    assert sliced.pass_scores.shape == (10, 5)
    torch.testing.assert_close(sliced.acc_map, whole.acc_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sliced.pass_scores, whole.pass_scores, rtol=1e-5, atol=1e-6)


def test_auto_slices_are_seeded_and_draw_fresh_masks(monkeypatch) -> None:
    import ssfilter.filtering.uncertainty as unc_mod

    model = _model()
    feats = model.encode(torch.randn(3, 3, 32, 32))
    monkeypatch.setattr(unc_mod, "CPU_SLICE_BYTES", 2 * 16 * model.dim * 4)  # slices of 2 passes
    torch.manual_seed(1)
    a = mc_uncertainty(model, feats, passes=6)
    torch.manual_seed(1)
    b = mc_uncertainty(model, feats, passes=6)
    torch.testing.assert_close(a.acc_map, b.acc_map, rtol=0, atol=0)
    assert a.pass_scores.shape == (6, 3)
    assert bool((a.uncertainty > 0).all()), "every slice draws its own dropout masks"
