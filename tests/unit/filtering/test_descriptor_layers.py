"""The patch-descriptor layer setting (paper Table 8: L1 / L2 of Eq. 1) reaches the in-batch scoring."""

from __future__ import annotations

import pytest
import torch

from ssfilter.config import BatchFilterConfig, RestorationConfig
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.models.encoders import build_encoder
from ssfilter.models.encoders.vit import VIT_DESCRIPTOR_L1, VIT_DESCRIPTOR_L2


class _Model:
    """What :meth:`BatchFilter.descriptors` needs of a model: its encoder."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.encoder = encoder


@pytest.fixture(scope="module")
def vit_feats():
    encoder = build_encoder("tiny_vit", allow_random=True)
    images = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    return encoder, encoder(images)


def _filter(l1: list[int] | None, l2: list[int] | None) -> BatchFilter:
    cfg = BatchFilterConfig(descriptor_layers=l1, descriptor_mean_layers=l2)
    return BatchFilter(cfg, RestorationConfig(), total_iters=10)


def test_default_is_the_papers_descriptor(vit_feats) -> None:
    encoder, feats = vit_feats
    assert (VIT_DESCRIPTOR_L1, VIT_DESCRIPTOR_L2) == ((0, 3), (0, 3, 7))
    default = _filter(None, None).descriptors(_Model(encoder), feats)
    a, b, c = feats.patches(0), feats.patches(3), feats.patches(7)
    assert torch.equal(default, torch.cat([a, b, (a + b + c) / 3.0], dim=-1))
    explicit = _filter([0, 3], [0, 3, 7]).descriptors(_Model(encoder), feats)
    assert torch.equal(default, explicit)


@pytest.mark.parametrize(
    ("l1", "l2", "expected"),
    [
        ([3], None, lambda f: f.patches(3)),  # Table 8 "{3} {-}"
        (
            [0],
            [0, 3, 7],
            lambda f: torch.cat([f.patches(0), (f.patches(0) + f.patches(3) + f.patches(7)) / 3], -1),
        ),
        (
            [3],
            [0, 2, 4],
            lambda f: torch.cat([f.patches(3), (f.patches(0) + f.patches(2) + f.patches(4)) / 3], -1),
        ),
        (None, [7], lambda f: f.patches(7)),
    ],
)
def test_setting_changes_the_source_layers(vit_feats, l1, l2, expected) -> None:
    encoder, feats = vit_feats
    got = _filter(l1, l2).descriptors(_Model(encoder), feats)
    torch.testing.assert_close(got, expected(feats), rtol=0, atol=1e-6)
    assert got.shape[-1] != encoder.descriptor_dim


def test_descriptor_layers_change_the_scores(vit_feats) -> None:
    from ssfilter.filtering.patch_scoring import batch_anomaly_scores

    encoder, feats = vit_feats
    scores = [
        batch_anomaly_scores(_filter(l1, l2).descriptors(_Model(encoder), feats), 0.001, 0.01, 4096)
        for l1, l2 in ((None, None), ([7], []))
    ]
    assert not torch.allclose(scores[0], scores[1])


def test_cnn_descriptors_are_pooled_and_widths_checked() -> None:
    encoder = build_encoder("mobilenet_v2", allow_random=True)
    feats = encoder(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    all_taps = _filter([0, 1, 2, 3], []).descriptors(_Model(encoder), feats)
    assert torch.equal(all_taps, encoder.patch_descriptors(feats))  # the default is all taps, pooled
    assert _filter([3], None).descriptors(_Model(encoder), feats).shape[-1] == encoder.layer_dims[3]
    with pytest.raises(ValueError, match="different widths"):
        _filter(None, [0, 3]).descriptors(_Model(encoder), feats)


@pytest.mark.parametrize(("l1", "l2", "message"), [([], [], "both empty"), ([8], None, "out of range")])
def test_bad_descriptor_layers(vit_feats, l1, l2, message) -> None:
    encoder, feats = vit_feats
    with pytest.raises(ValueError, match=message):
        _filter(l1, l2).descriptors(_Model(encoder), feats)
