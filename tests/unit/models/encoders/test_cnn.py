"""Tests of the CNN encoders: the generic tapped-stage encoder and MobileNetV2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders import CNNEncoder, build_encoder

SHARED = Path(__file__).resolve().parents[4].parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet.safetensors"


def test_missing_weights_file() -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_encoder("mobilenet_v2", "/nonexistent/weights.safetensors")
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        build_encoder("mobilenet_v2")


@pytest.mark.skipif(
    not MOBILENET.is_file(), reason="needs ../shared/weights/mobilenet_v2_imagenet.safetensors"
)
def test_mobilenet_real_weights_load_strictly() -> None:
    enc = build_encoder("mobilenet_v2", str(MOBILENET))
    feats = enc(torch.zeros(1, 3, 224, 224))
    assert feats.grid == (28, 28)
    assert enc.group_dims == [56, 160]


def _toy_stages() -> nn.Sequential:
    """Four stages: strides 2, 2, 1, 2 (cumulative 2, 4, 4, 8), widths 4, 6, 8, 10, then one never tapped."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Conv2d(6, 8, 3, stride=1, padding=1),
        nn.Conv2d(8, 10, 3, stride=2, padding=1),
        nn.Conv2d(10, 12, 3, stride=2, padding=1),
    )


def _toy_encoder() -> CNNEncoder:
    return CNNEncoder(
        "toy_cnn",
        _toy_stages(),
        {1: 6, 2: 8, 3: 10},
        ((1, 2), (3,)),
        stride=4,
        embed_dim=16,
        num_heads=2,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def test_cnn_encoder_is_generic_over_stages() -> None:
    enc = _toy_encoder()
    assert len(enc.features) == 4, "stages after the deepest tap are dropped"
    assert enc.layer_dims == [6, 8, 10] and enc.group_dims == [14, 10]
    assert enc.bottleneck_dim == enc.descriptor_dim == 24 and enc.num_prefix == 0
    x = torch.randn(2, 3, 32, 32)
    feats = enc(x)
    assert feats.grid == (8, 8) and feats.num_prefix == 0
    # Independent reference: run the stages by hand; the stride-8 tap is upsampled to the 8x8 grid.
    s = enc.features
    with torch.no_grad():
        t1 = s[1](s[0](x))
        t2 = s[2](t1)
        t3 = torch.nn.functional.interpolate(s[3](t2), size=(8, 8), mode="bilinear")
    for got, want in zip(feats.layers, (t1, t2, t3), strict=True):
        torch.testing.assert_close(got, want.flatten(2).transpose(1, 2))
    g0, g1 = enc.groups(feats)
    torch.testing.assert_close(g0, torch.cat([feats.layers[0], feats.layers[1]], dim=-1))
    torch.testing.assert_close(g1, feats.layers[2])
    torch.testing.assert_close(enc.foreground_features(feats), g1)


def test_cnn_encoder_rejects_groups_that_miss_taps() -> None:
    with pytest.raises(ValueError, match="exactly once"):
        CNNEncoder(
            "bad",
            _toy_stages(),
            {1: 6, 2: 8, 3: 10},
            ((1, 2),),
            stride=4,
            embed_dim=16,
            num_heads=2,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        )


def test_mobilenet_rejects_another_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(path))
    with pytest.raises(WeightsUnavailableError, match="not a torchvision MobileNetV2 state dict"):
        build_encoder("mobilenet_v2", str(path))


def test_mobilenet_layout() -> None:
    enc = build_encoder("mobilenet_v2", allow_random=True)
    assert enc.taps == [3, 6, 10, 13] and len(enc.features) == 14
    assert enc.layer_dims == [24, 32, 64, 96] and enc.group_dims == [56, 160]
    assert (enc.stride, enc.embed_dim, enc.num_heads) == (8, 192, 4)
    assert enc.mean == enc.std == (0.5, 0.5, 0.5)
    assert next(iter(enc.state_dict())).startswith("features.0."), "run folders store encoder.features.*"
