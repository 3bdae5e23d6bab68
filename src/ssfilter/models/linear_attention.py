"""Dinomaly's plain linear-attention decoder block: the "without MLLA" ablation (paper Table 4, row 1).

Dinomaly decodes with pre-norm ViT blocks whose softmax attention is replaced by kernelised linear attention
(``LinearAttention2`` in its ``models/vision_transformer.py``): ``phi(x) = ELU(x) + 1`` on queries and keys,
per head ``out = phi(q) (phi(k)^T v) / (phi(q) · sum_n phi(k))``. It has no positional information at all: the
block is permutation-equivariant over tokens, which is what the MLLA block's convolutions and RoPE change.

:class:`LinearAttentionBlock` has the constructor and ``forward(x, grid)`` signature of
:class:`~ssfilter.models.mlla.MLLABlock` (``grid`` is accepted and ignored) so a decoder can swap them.
"""

from __future__ import annotations

import torch
from torch import nn

from ssfilter.models.layers import Mlp, init_weights

__all__ = ["LinearAttention", "LinearAttentionBlock"]


class LinearAttention(nn.Module):
    """Dinomaly's linear attention (ELU+1 feature map, sum normaliser).

    Per head, with ``q, k = ELU(.) + 1`` and ``v`` from one ``Linear(dim, 3*dim)``::

        out = (q @ (k^T v)) * z,   z = 1 / (q · sum_n(k) + eps)

    followed by an output ``Linear(dim, dim)``. Dinomaly's code has no ``eps``; the default 1e-6 only guards
    against a query whose ELU+1 features all underflow to 0 (which would give 0/0) and is negligible against
    ``q · sum_n(k)`` otherwise. The sums are evaluated as means (numerator and denominator both divided by
    ``N``, ``eps`` by ``N`` too), which is the same quantity but cannot overflow in float16 at 28x28 tokens.

    Args:
        dim: Channel width (multiple of ``num_heads``).
        num_heads: Attention heads.
        qkv_bias: Bias in the ``qkv`` projection (Dinomaly's decoder uses ``True``).
        eps: Added to the normaliser's denominator ``q · sum_n(k)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.eps = eps
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all ``[B, N, C]`` tokens; returns ``[B, N, C]``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, h, N, d]
        q = nn.functional.elu(q) + 1.0
        k = nn.functional.elu(k) + 1.0
        kv = (k.transpose(-2, -1) @ v) / n  # k^T v / N: [B, h, d, d]
        denom = q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + self.eps / n  # (q · sum k + eps) / N
        out = (q @ kv) / denom
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"dim={self.dim}, num_heads={self.num_heads}, eps={self.eps:g}"


class LinearAttentionBlock(nn.Module):
    """Dinomaly's pre-norm ViT decoder block with linear attention (Table 4 "without MLLA").

    ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``. No dropout or drop-path, like the MLLA block.
    Submodule names follow Dinomaly's ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``). The block initialises itself with ``self.apply(init_weights)``.

    Args:
        dim: Channel width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        ln_eps: LayerNorm epsilon (Dinomaly: 1e-8).
        qkv_bias: Bias in the ``qkv`` projection.
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
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = LinearAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Transform ``[B, N, C]`` tokens; ``grid`` is ignored (kept for MLLABlock's signature)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def extra_repr(self) -> str:
        """Hyper-parameters shown in the module repr."""
        return f"dim={self.dim}, num_heads={self.num_heads}, mlp_ratio={self.mlp_ratio}"
