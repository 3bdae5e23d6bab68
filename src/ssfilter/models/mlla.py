"""Mamba-Like Linear Attention (MLLA) decoder block (SPEC §1, paper §3.1).

The SSFilter decoder is Dinomaly's decoder with its plain linear-attention ViT blocks replaced by the MLLA
block of Han et al., "Demystify Mamba in Vision: A Linear Attention Perspective". A block works on the patch
tokens of one image grid only (``[B, H*W, C]`` plus ``grid=(H, W)``), because three of its parts are spatial:
the two conditional positional encodings (depth-wise 3x3 convolutions), the local positional encoding (LePE)
of the attention and its 2-D rotary position embedding (RoPE).

The grid is an argument of ``forward`` rather than of the constructor: the same weights serve every crop size
(16x16 tokens at crop 224, 28x28 at crop 392), the RoPE tables are rebuilt for the grid on demand and never
stored in the ``state_dict``; a checkpoint records the crop size instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ssfilter.models.layers import Mlp, check_grid, grid_dwconv, init_weights

__all__ = ["MLLAAttention", "MLLABlock", "RoPE2D"]


class RoPE2D(nn.Module):
    """2-D rotary position embedding over the full channel width, in MLLA's layout.

    The ``dim`` channels are read as ``dim / 2`` interleaved pairs ``(2i, 2i+1)``, each rotated as a complex
    number. With ``k = dim / 4`` and ``theta_j = base ** (-j / k)``, pair ``i < k`` is rotated by
    ``row * theta_i`` and pair ``k + j`` by ``col * theta_j``: the first half of the channels encodes the
    token's row, the second half its column. Rotating the full width before the heads are split (as MLLA does)
    means that with an even number of heads the first half of the heads sees rows and the second half columns.

    Because every pair is rotated by an angle linear in the position, ``rope(q)[i] · rope(k)[j]`` depends on
    the positions only through ``i - j`` (relative encoding), and the rotation preserves norms.

    The cos/sin tables depend on the grid, so they are built on first use for each ``(grid, device, dtype)``
    and cached on the module, outside the ``state_dict``.

    Args:
        dim: Channel width; must be a multiple of 4.
        base: Frequency base (10000 as in MLLA and the original RoPE).
    """

    _max_cached = 8

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"RoPE2D needs a channel width divisible by 4, got {dim}")
        self.dim = dim
        self.base = float(base)
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(
        self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(cos, signed sin)`` tables ``[H*W, dim]`` for ``grid``, building them if needed.

        Angles are computed in float64 on the CPU and then cast, so the tables are identical on every device.
        They are built outside inference mode so that a table first made during evaluation can still be used
        by a later training step.
        """
        h, w = int(grid[0]), int(grid[1])
        key = (h, w, torch.device(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        with torch.inference_mode(False), torch.no_grad():
            k = self.dim // 4
            theta = self.base ** (-torch.arange(k, dtype=torch.float64) / k)
            rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # row-major token order
            cols = torch.arange(w, dtype=torch.float64).repeat(h)
            angles = torch.cat([rows[:, None] * theta, cols[:, None] * theta], dim=-1)  # [N, dim/2]
            # Expanded to the full width, in the interleaved pair layout: out = x * cos + swap(x) * sin,
            # with swap(x) = (x1, x0, x3, x2, ...) and the sign of sin folded in (-sin, +sin per pair).
            cos = angles.cos().repeat_interleave(2, dim=-1).to(device=device, dtype=dtype)
            sin = (
                torch.stack([-angles.sin(), angles.sin()], dim=-1).flatten(-2).to(device=device, dtype=dtype)
            )
        if len(self._cache) >= self._max_cached:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (cos, sin)
        return cos, sin

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Rotate ``x`` ``[..., N, dim]`` (tokens row-major on ``grid``); same shape and dtype out."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"RoPE2D built for {self.dim} channels, got {x.shape[-1]}")
        check_grid(x.shape[-2], grid)
        # Rotate half-precision inputs in float32 (as MLLA does): fp16/bf16 angle tables lose the small
        # relative phase differences the encoding relies on.
        work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        cos, sin = self.tables(grid, x.device, work)
        xw = x.to(work)
        # (re, im) -> (re*cos - im*sin, im*cos + re*sin) for every pair, as two fused multiply-adds over the
        # full width; about twice as fast on CPU as splitting and re-stacking the pairs, and ONNX-exportable.
        swapped = xw.unflatten(-1, (self.dim // 2, 2)).flip(-1).flatten(-2)
        return torch.addcmul(xw * cos, swapped, sin).to(x.dtype)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"dim={self.dim}, base={self.base:g}"


class MLLAAttention(nn.Module):
    """MLLA linear attention with RoPE and LePE (SPEC §1).

    ``q, k = ELU(qk(x)) + 1`` from one ``Linear(dim, 2*dim)``; ``v = x`` (no value projection). Per head::

        z   = 1 / (q · mean_n(k) + 1e-6)                      # normaliser from the UN-rotated q, k
        out = rope(q) @ ((rope(k)^T / sqrt(n)) @ (v / sqrt(n))) * z

    and a local positional encoding ``out += dwconv3x3(v)`` on the grid. Keeping RoPE out of the normaliser
    keeps ``z`` positive (rotated features are no longer non-negative), as in the MLLA reference code.

    Args:
        dim: Channel width (multiple of 4 and of ``num_heads``).
        num_heads: Number of heads.
        qkv_bias: Bias in the ``qk`` projection.
        rope_base: RoPE frequency base.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rope_base: float = 10000.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.elu = nn.ELU()
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.rope = RoPE2D(dim, base=rope_base)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, N, C] -> [B, heads, N, head_dim]``."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Attend over the ``[B, N, C]`` tokens on ``grid``; returns ``[B, N, C]``."""
        b, n, c = x.shape
        check_grid(n, grid)
        q, k = self.qk(x).chunk(2, dim=-1)
        q = self.elu(q) + 1.0
        k = self.elu(k) + 1.0
        q_rope = self._heads(self.rope(q, grid))
        k_rope = self._heads(self.rope(k, grid))
        q, k, v = self._heads(q), self._heads(k), self._heads(x)

        z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # [B, h, N, 1]
        scale = n**-0.5
        kv = (k_rope.transpose(-2, -1) * scale) @ (v * scale)  # [B, h, d, d]
        out = (q_rope @ kv) * z

        out = out.transpose(1, 2).reshape(b, n, c)
        return out + grid_dwconv(self.lepe, x, grid)

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"dim={self.dim}, num_heads={self.num_heads}"


class MLLABlock(nn.Module):
    """One MLLA decoder block (SPEC §1), on the patch tokens of one grid.

    ::

        x = x + cpe1(x)                               # depth-wise 3x3, conditional positional encoding
        s = x; h = norm1(x)
        gate = SiLU(act_proj(h))
        h = SiLU(dwc(in_proj(h)))                     # Linear -> depth-wise 3x3 -> SiLU
        x = s + out_proj(attn(h) * gate)
        x = x + cpe2(x)
        x = x + mlp(norm2(x))                         # fc-GELU-fc

    No dropout or drop-path: the SSFilter decoder is deterministic, all stochasticity lives in the bottleneck.
    Submodule names follow the MLLA reference code so its checkpoints map key for key. The block initialises
    itself with ``self.apply(init_weights)``.

    Args:
        dim: Channel width (multiple of 4 and of ``num_heads``).
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim`` (paper: 1.0).
        ln_eps: LayerNorm epsilon (paper: 1e-8, as in Dinomaly).
        qkv_bias: Bias in the attention's ``qk`` projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 1.0,
        ln_eps: float = 1e-8,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio

        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.in_proj = nn.Linear(dim, dim)
        self.act_proj = nn.Linear(dim, dim)
        self.dwc = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.SiLU()
        self.attn = MLLAAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)

        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

        self.apply(init_weights)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Transform ``[B, H*W, C]`` patch tokens (row-major on ``grid=(H, W)``); returns ``[B, H*W, C]``."""
        x = x + grid_dwconv(self.cpe1, x, grid)
        shortcut = x
        h = self.norm1(x)
        gate = self.act(self.act_proj(h))
        h = self.act(grid_dwconv(self.dwc, self.in_proj(h), grid))
        h = self.attn(h, grid)
        x = shortcut + self.out_proj(h * gate)
        x = x + grid_dwconv(self.cpe2, x, grid)
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"dim={self.dim}, num_heads={self.num_heads}, mlp_ratio={self.mlp_ratio}"
