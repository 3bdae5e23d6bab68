from __future__ import annotations

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
    torch.testing.assert_close(unc.uncertainty, unc.pass_scores.std(0, correction=1))
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


def test_single_pass_gives_zero_not_nan() -> None:
    maps = torch.rand(1, 2, 8, 8)
    unc = uncertainty_from_maps(maps)
    assert torch.equal(unc.uncertainty, torch.zeros(2))
