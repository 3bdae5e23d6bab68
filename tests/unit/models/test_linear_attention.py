"""Tests of Dinomaly's plain linear-attention decoder block (the "without MLLA" ablation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssfilter.models.decoder_blocks import build_decoder_block
from ssfilter.models.linear_attention import LinearAttention, LinearAttentionBlock

DIM, HEADS = 32, 4


def _randomise(module: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _dinomaly_linear_attention(attn: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """Dinomaly's LinearAttention2 as published: einsum form, sum normaliser, no epsilon."""
    b, n, c = x.shape
    nh = attn.num_heads
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(b, n, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = torch.nn.functional.elu(q) + 1.0
    k = torch.nn.functional.elu(k) + 1.0
    kv = torch.einsum("...sd,...se->...de", k, v)
    z = 1.0 / torch.einsum("...sd,...d->...s", q, k.sum(dim=-2))
    out = torch.einsum("...de,...sd,...s->...se", kv, q, z)
    out = out.transpose(1, 2).reshape(b, n, c)
    return out @ attn.proj.weight.T + attn.proj.bias


def _dinomaly_block(block: LinearAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Dinomaly's pre-norm ViT Block around the reference attention (exact GELU MLP)."""
    ln = torch.nn.functional.layer_norm
    h = ln(x, (x.shape[-1],), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    x = x + _dinomaly_linear_attention(block.attn, h)
    h = ln(x, (x.shape[-1],), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    h = torch.nn.functional.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    return x + h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


def test_attention_matches_dinomaly_reference() -> None:
    torch.manual_seed(0)
    attn = _randomise(LinearAttention(DIM, HEADS, eps=0.0), std=0.3)
    x = torch.randn(2, 24, DIM)
    torch.testing.assert_close(attn(x), _dinomaly_linear_attention(attn, x), atol=1e-5, rtol=1e-4)
    attn.eps = 1e-6  # the default guard is negligible
    torch.testing.assert_close(attn(x), _dinomaly_linear_attention(attn, x), atol=1e-5, rtol=1e-4)


def test_block_matches_dinomaly_reference() -> None:
    torch.manual_seed(0)
    block = _randomise(LinearAttentionBlock(DIM, HEADS, mlp_ratio=2.0), std=0.3)
    x = torch.randn(2, 49, DIM)
    torch.testing.assert_close(block(x, (7, 7)), _dinomaly_block(block, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", [(4, 6), (16, 16), (28, 28)])
def test_shapes_and_grid_ignored(grid: tuple[int, int]) -> None:
    block = LinearAttentionBlock(DIM, HEADS)
    x = torch.randn(2, grid[0] * grid[1], DIM)
    y = block(x, grid)
    assert y.shape == x.shape
    torch.testing.assert_close(y, block(x), atol=0, rtol=0)


def test_permutation_equivariant() -> None:
    """No positional information: permuting tokens permutes the output (contrast with MLLABlock)."""
    torch.manual_seed(0)
    block = _randomise(LinearAttentionBlock(DIM, HEADS), std=0.3)
    x = torch.randn(1, 24, DIM)
    perm = torch.randperm(24)
    torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm], atol=1e-5, rtol=1e-4)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    block = LinearAttentionBlock(DIM, HEADS)
    y = block(torch.randn(2, 24, DIM), (4, 6))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_fp16_overflow_at_large_grid() -> None:
    """q · sum_n(k) reaches ~4e5 at 28x28 tokens and exceeds float16's range; the mean form does not."""
    torch.manual_seed(0)
    attn = LinearAttention(64, 1)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.fill_(2.0)  # ELU+1 features = 3 everywhere
        attn.qkv.bias[128:].normal_()
    x = torch.randn(1, 28 * 28, 64)
    ref = attn(x)
    out = attn.half()(x.half())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_param_count_vit_small() -> None:
    dim, hidden = 384, 384
    expected = 2 * (2 * dim) + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden)
    expected += hidden * dim + dim
    count = sum(p.numel() for p in LinearAttentionBlock(384, 6, mlp_ratio=1.0).parameters())
    print(
        f"LinearAttentionBlock(dim=384, heads=6, mlp_ratio=1.0): {count} parameters (closed form {expected})"
    )
    assert count == expected == 888_576


def test_same_constructor_as_mlla_and_registry() -> None:
    block = build_decoder_block("linear", DIM, HEADS, 1.0, 1e-8)
    assert isinstance(block, LinearAttentionBlock)
    assert block.norm1.eps == 1e-8 and block.attn.qkv.bias is not None
    assert LinearAttentionBlock(DIM, HEADS, qkv_bias=False).attn.qkv.bias is None
    with pytest.raises(ValueError, match="num_heads"):
        LinearAttentionBlock(30, 4)


def test_init_and_determinism() -> None:
    torch.manual_seed(0)
    block = LinearAttentionBlock(384, 6).eval()
    w = block.attn.qkv.weight
    assert w.abs().max() <= 0.03 and abs(w.std().item() - 0.01) < 5e-4
    assert torch.all(block.attn.qkv.bias == 0) and torch.all(block.norm1.weight == 1)
    x = torch.randn(1, 16, 384)
    torch.testing.assert_close(block(x), block(x), atol=0, rtol=0)
