"""Tests of choosing a decoder block by name."""

from __future__ import annotations

import pytest
import torch

from ssfilter.models.decoder_blocks import build_decoder_block
from ssfilter.models.linear_attention import LinearAttentionBlock
from ssfilter.models.mlla import MLLABlock

DIM, HEADS = 32, 4


def test_build_decoder_block() -> None:
    assert isinstance(build_decoder_block("mlla", DIM, HEADS, 1.0, 1e-8), MLLABlock)
    linear = build_decoder_block("linear", DIM, HEADS, mlp_ratio=2.0, ln_eps=1e-6)
    assert isinstance(linear, LinearAttentionBlock)
    assert linear.norm1.eps == 1e-6 and linear.mlp.fc1.out_features == 2 * DIM
    x = torch.randn(2, 24, DIM)
    for kind in ("mlla", "linear"):
        assert build_decoder_block(kind, DIM, HEADS)(x, (4, 6)).shape == x.shape
    with pytest.raises(ValueError, match="unknown decoder block kind 'mamba'"):
        build_decoder_block("mamba", DIM, HEADS)  # type: ignore[arg-type]
