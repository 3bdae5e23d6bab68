"""Tests of the MLLA decoder block, its attention and 2-D RoPE."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch import nn

from ssfilter.models.mlla import MLLAAttention, MLLABlock, RoPE2D

DIM, HEADS = 32, 4


def _randomise(module: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Give every parameter non-trivial random values (the SPEC init is too small to exercise the maths)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _reference_rope(x: torch.Tensor, grid: tuple[int, int], base: float = 10000.0) -> torch.Tensor:
    """MLLA's RoPE layout written independently with complex numbers: pairs (2i, 2i+1) of the full width,
    the first dim/4 pairs rotated by row * theta, the last dim/4 by column * theta."""
    h, w = grid
    c = x.shape[-1]
    k = c // 4
    theta = 1.0 / (base ** (torch.arange(k, dtype=torch.float64) / k))
    rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    angles = torch.cat([rr.reshape(-1, 1) * theta, cc.reshape(-1, 1) * theta], dim=-1)  # [N, c/2]
    rot = torch.polar(torch.ones_like(angles), angles)
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


def _reference_attention(attn: MLLAAttention, x: torch.Tensor, grid: tuple[int, int], rope_in_z: bool):
    """The SPEC §1 formula written out literally; ``rope_in_z`` puts the rotated q, k in the normaliser."""
    b, n, c = x.shape
    nh, d = attn.num_heads, c // attn.num_heads
    qk = x @ attn.qk.weight.T + attn.qk.bias
    q = torch.nn.functional.elu(qk[..., :c]) + 1
    k = torch.nn.functional.elu(qk[..., c:]) + 1
    q_r, k_r = _reference_rope(q, grid), _reference_rope(k, grid)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, nh, d).permute(0, 2, 1, 3)

    q, k, q_r, k_r, v = heads(q), heads(k), heads(q_r), heads(k_r), heads(x)
    qz, kz = (q_r, k_r) if rope_in_z else (q, k)
    z = 1 / (qz @ kz.mean(dim=2, keepdim=True).transpose(-2, -1) + 1e-6)
    out = q_r @ ((k_r.transpose(-2, -1) / math.sqrt(n)) @ (v / math.sqrt(n))) * z
    out = out.permute(0, 2, 1, 3).reshape(b, n, c)
    v_img = x.transpose(1, 2).reshape(b, c, *grid)
    lepe = torch.nn.functional.conv2d(v_img, attn.lepe.weight, attn.lepe.bias, padding=1, groups=c)
    return out + lepe.flatten(2).transpose(1, 2)


def _mlla_param_count(dim: int, mlp_ratio: float) -> int:
    """Closed form from the layer list of SPEC §1 (depth-wise 3x3 convs with bias, Linear with bias)."""
    hidden = int(dim * mlp_ratio)
    dwconv = dim * 9 + dim
    linear = dim * dim + dim
    layernorm = 2 * dim
    qk = dim * 2 * dim + 2 * dim
    mlp = (dim * hidden + hidden) + (hidden * dim + dim)
    # cpe1, norm1, in_proj, act_proj (gate), dwc, qk, lepe, out_proj, cpe2, norm2, mlp
    return dwconv + layernorm + linear + linear + dwconv + qk + dwconv + linear + dwconv + layernorm + mlp


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("grid", [(4, 6), (6, 4), (1, 5), (3, 3), (16, 16), (28, 28)])
def test_block_shapes(grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    block = MLLABlock(DIM, HEADS)
    x = torch.randn(2, grid[0] * grid[1], DIM)
    y = block(x, grid)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_attention_shape_and_dtype_float64() -> None:
    attn = MLLAAttention(DIM, HEADS).double()
    x = torch.randn(2, 24, DIM, dtype=torch.float64)
    y = attn(x, (4, 6))
    assert y.shape == x.shape and y.dtype == torch.float64


def test_wrong_grid_raises() -> None:
    block = MLLABlock(DIM, HEADS)
    with pytest.raises(ValueError, match="grid"):
        block(torch.randn(1, 24, DIM), (5, 5))


def test_bad_widths_raise() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        RoPE2D(30)
    with pytest.raises(ValueError, match="num_heads"):
        MLLAAttention(32, 5)


# ------------------------------------------------------------------------------------------------ RoPE


@pytest.mark.parametrize("grid", [(4, 6), (5, 3)])
def test_rope_matches_mlla_layout(grid: tuple[int, int]) -> None:
    rope = RoPE2D(DIM)
    x = torch.randn(2, HEADS, grid[0] * grid[1], DIM)
    torch.testing.assert_close(rope(x, grid), _reference_rope(x, grid), atol=1e-5, rtol=1e-5)


def test_rope_is_rotation() -> None:
    rope = RoPE2D(DIM)
    x = torch.randn(3, 24, DIM, dtype=torch.float64)
    y = rope(x, (4, 6))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # every channel pair keeps its own norm (a rotation in each 2-D plane)
    torch.testing.assert_close(
        y.unflatten(-1, (DIM // 2, 2)).norm(dim=-1), x.unflatten(-1, (DIM // 2, 2)).norm(dim=-1)
    )
    # position (0, 0) is not rotated
    torch.testing.assert_close(y[:, 0], x[:, 0])


def test_rope_is_relative() -> None:
    """q_rope(i) · k_rope(j) depends only on the displacement between i and j, on both axes."""
    h, w = 4, 6
    rope = RoPE2D(DIM)
    q = torch.randn(DIM, dtype=torch.float64).expand(h * w, DIM)
    k = torch.randn(DIM, dtype=torch.float64).expand(h * w, DIM)
    dots = rope(q, (h, w)) @ rope(k, (h, w)).T  # [N, N]
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    by_shift: dict[tuple[int, int], list[float]] = {}
    for i in range(h * w):
        for j in range(h * w):
            key = (int(rows[i] - rows[j]), int(cols[i] - cols[j]))
            by_shift.setdefault(key, []).append(float(dots[i, j]))
    for values in by_shift.values():
        assert max(values) - min(values) < 1e-9
    # 1-D shifts on each axis give values that differ from the zero shift: both axes are encoded
    zero = by_shift[(0, 0)][0]
    assert abs(by_shift[(1, 0)][0] - zero) > 1e-3
    assert abs(by_shift[(0, 1)][0] - zero) > 1e-3


def test_rope_row_and_column_halves() -> None:
    """MLLA layout: the first half of the channels encodes the row, the second half the column."""
    rope = RoPE2D(DIM)
    x = torch.randn(DIM).expand(12, DIM)
    y = rope(x, (3, 4)).reshape(3, 4, DIM)
    half = DIM // 2
    # same row -> same first half; same column -> same second half
    torch.testing.assert_close(y[1, :, :half], y[1, :1, :half].expand(4, half))
    torch.testing.assert_close(y[:, 2, half:], y[:1, 2, half:].expand(3, half))
    assert not torch.allclose(y[0, 0, :half], y[1, 0, :half])
    assert not torch.allclose(y[0, 0, half:], y[0, 1, half:])


def test_rope_half_precision_rotates_in_float32() -> None:
    rope = RoPE2D(DIM)
    x = torch.randn(2, 784, DIM)
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype)
        y = rope(xh, (28, 28))
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), _reference_rope(xh.float(), (28, 28)), atol=2e-2, rtol=1e-2)
    assert all(key[3] == torch.float32 for key in rope._cache)


def test_rope_tables_cached_outside_state_dict() -> None:
    block = MLLABlock(DIM, HEADS)
    keys_before = set(block.state_dict())
    block(torch.randn(1, 24, DIM), (4, 6))
    block(torch.randn(1, 16, DIM), (4, 4))
    assert set(block.state_dict()) == keys_before
    assert not any("rope" in k for k in keys_before)
    cache = block.attn.rope._cache
    assert len(cache) == 2
    cos_a, _ = block.attn.rope.tables((4, 6), torch.device("cpu"), torch.float32)
    cos_b, _ = block.attn.rope.tables((4, 6), torch.device("cpu"), torch.float32)
    assert cos_a is cos_b  # served from the cache
    # a state_dict saved at one grid loads strictly into a block used at another
    other = MLLABlock(DIM, HEADS)
    other.load_state_dict(block.state_dict(), strict=True)


def test_tables_built_in_inference_mode_usable_for_training() -> None:
    block = MLLABlock(DIM, HEADS)
    with torch.inference_mode():
        block(torch.randn(1, 24, DIM), (4, 6))
    y = block(torch.randn(1, 24, DIM), (4, 6))
    y.sum().backward()
    assert block.attn.qk.weight.grad is not None


# ------------------------------------------------------------------------------------------- attention


def test_normaliser_uses_unrotated_qk() -> None:
    torch.manual_seed(0)
    attn = _randomise(MLLAAttention(DIM, HEADS), std=0.3)
    grid = (4, 6)
    x = torch.randn(2, 24, DIM)
    out = attn(x, grid)
    ref_plain = _reference_attention(attn, x, grid, rope_in_z=False)
    ref_rope = _reference_attention(attn, x, grid, rope_in_z=True)
    torch.testing.assert_close(out, ref_plain, atol=1e-5, rtol=1e-4)
    # the two candidate formulas really differ, so the match above is meaningful
    assert (ref_plain - ref_rope).abs().max() > 1e-2


def test_attention_rope_makes_it_position_aware() -> None:
    """With the LePE zeroed, only RoPE carries position: permuting tokens must still change the output."""
    torch.manual_seed(0)
    attn = _randomise(MLLAAttention(DIM, HEADS), std=0.3)
    with torch.no_grad():
        attn.lepe.weight.zero_()
        attn.lepe.bias.zero_()
    grid = (4, 6)
    x = torch.randn(1, 24, DIM)
    perm = torch.randperm(24)
    assert not torch.allclose(attn(x[:, perm], grid), attn(x, grid)[:, perm], atol=1e-4)


# ----------------------------------------------------------------------------------------------- block


def test_block_is_permutation_sensitive() -> None:
    torch.manual_seed(0)
    block = MLLABlock(DIM, HEADS).eval()
    grid = (4, 6)
    x = torch.randn(1, 24, DIM)
    perm = torch.randperm(24)
    assert not torch.allclose(block(x[:, perm], grid), block(x, grid)[:, perm], atol=1e-4)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    block = MLLABlock(DIM, HEADS)
    x = torch.randn(2, 24, DIM, requires_grad=True)
    y = block(x, (4, 6))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_deterministic_in_eval_mode() -> None:
    torch.manual_seed(0)
    block = MLLABlock(DIM, HEADS).eval()
    x = torch.randn(2, 24, DIM)
    with torch.no_grad():
        torch.testing.assert_close(block(x, (4, 6)), block(x, (4, 6)), atol=0, rtol=0)
    torch.manual_seed(1)
    a = MLLABlock(DIM, HEADS)
    torch.manual_seed(1)
    b = MLLABlock(DIM, HEADS)
    torch.testing.assert_close(a(x, (4, 6)), b(x, (4, 6)), atol=0, rtol=0)


def test_block_has_no_dropout() -> None:
    block = MLLABlock(DIM, HEADS)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in block.modules())
    x = torch.randn(1, 24, DIM)
    torch.testing.assert_close(block.train()(x, (4, 6)), block.eval()(x, (4, 6)), atol=0, rtol=0)


def test_param_count_vit_small() -> None:
    block = MLLABlock(384, 6, mlp_ratio=1.0)
    count = sum(p.numel() for p in block.parameters())
    expected = _mlla_param_count(384, 1.0)
    print(f"MLLABlock(dim=384, heads=6, mlp_ratio=1.0): {count} parameters (closed form {expected})")
    assert count == expected == 1_051_776


def test_param_count_other_ratio() -> None:
    block = MLLABlock(64, 4, mlp_ratio=2.5)
    assert sum(p.numel() for p in block.parameters()) == _mlla_param_count(64, 2.5)


def test_layernorm_eps_and_qkv_bias() -> None:
    block = MLLABlock(DIM, HEADS, ln_eps=1e-5, qkv_bias=False)
    assert block.norm1.eps == 1e-5 and block.norm2.eps == 1e-5
    assert block.attn.qk.bias is None
    assert MLLABlock(DIM, HEADS).norm1.eps == 1e-8


# -------------------------------------------------------------------------------------------------- ONNX


class _FixedGrid(nn.Module):
    def __init__(self, block: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.grid)


def test_onnx_export_matches_torch() -> None:
    pytest.importorskip("onnx", reason="onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    torch.manual_seed(0)
    block = _randomise(MLLABlock(DIM, HEADS), std=0.1).eval()
    grid = (4, 6)
    model = _FixedGrid(block, grid).eval()
    x = torch.randn(2, 24, DIM)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # TorchScript exporter: the dynamo exporter needs onnxscript, which is not a dependency.
        torch.onnx.export(
            model, (x,), buf, opset_version=17, dynamo=False, input_names=["x"], output_names=["y"]
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch_out = model(x).numpy()
    assert abs(onnx_out - torch_out).max() <= 1e-4
