"""Tests of the shared decoder building blocks: token-grid convolution and weight init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssfilter.models.layers import Mlp, check_grid, grid_dwconv, init_weights
from ssfilter.models.mlla import MLLABlock


def test_grid_dwconv_is_row_major() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 2] = 1.0  # output(r, c) = input(r, c + 1)
    x = torch.arange(12.0).reshape(1, 12, 1)  # grid 3x4, token value = index
    y = grid_dwconv(conv, x, (3, 4)).reshape(3, 4)
    expected = torch.arange(12.0).reshape(3, 4).roll(-1, dims=1)
    expected[:, -1] = 0
    torch.testing.assert_close(y, expected)


def test_init_weights() -> None:
    torch.manual_seed(0)
    block = MLLABlock(384, 6)
    conv_before = block.cpe1.weight.detach().clone()
    with torch.no_grad():
        for ln in (block.norm1, block.norm2):
            ln.weight.fill_(3.0)
            ln.bias.fill_(2.0)
    block.apply(init_weights)
    weights = torch.cat([m.weight.flatten() for m in block.modules() if isinstance(m, nn.Linear)])
    assert weights.abs().max() <= 0.03
    # std of N(0, 0.01) truncated at ±3 std is 0.00987
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert abs(weights.mean().item()) < 5e-4
    for m in block.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    torch.testing.assert_close(block.cpe1.weight, conv_before, atol=0, rtol=0)  # convs keep their init
    # one module at a time (timm's ``apply`` convention): a container is not itself changed
    seq = nn.Sequential(nn.Linear(4, 4))
    w_before = seq[0].weight.detach().clone()
    init_weights(seq)
    torch.testing.assert_close(seq[0].weight, w_before, atol=0, rtol=0)
    init_weights(seq[0])
    assert seq[0].weight.abs().max() <= 0.03


def test_check_grid() -> None:
    assert check_grid(12, (3, 4)) == (3, 4)
    assert check_grid(6, (torch.tensor(2), torch.tensor(3))) == (2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grid 3x3 holds 9 tokens but the input has 12"):
        check_grid(12, (3, 3))


def test_mlp_is_fc_gelu_fc() -> None:
    torch.manual_seed(0)
    mlp = Mlp(4, 6)
    x = torch.randn(2, 5, 4)
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    hidden = x @ w1.T + b1
    hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / 2.0**0.5))  # exact GELU
    torch.testing.assert_close(mlp(x), hidden @ w2.T + b2)
    assert [n for n, _ in mlp.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert isinstance(Mlp(4, 6, act_layer=nn.SiLU).act, nn.SiLU)
