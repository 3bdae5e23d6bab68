"""Decoder blocks by name: the MLLA block (paper) and Dinomaly's plain linear-attention block (ablation).

This module sits above both block modules, so choosing a block kind needs no import between them. Every
kind has the constructor ``(dim, num_heads, mlp_ratio=..., ln_eps=...)`` and ``forward(x [B, N, C], grid)``.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ssfilter.models.linear_attention import LinearAttentionBlock
from ssfilter.models.mlla import MLLABlock

__all__ = ["DECODER_BLOCKS", "build_decoder_block"]

#: Decoder block class of each ``ModelConfig.attention`` value.
DECODER_BLOCKS: dict[str, type[nn.Module]] = {"mlla": MLLABlock, "linear": LinearAttentionBlock}


def build_decoder_block(
    kind: Literal["mlla", "linear"],
    dim: int,
    num_heads: int,
    mlp_ratio: float = 1.0,
    ln_eps: float = 1e-8,
) -> nn.Module:
    """Build one decoder block by name; every kind has ``forward(x [B, N, C], grid) -> [B, N, C]``.

    Args:
        kind: ``"mlla"`` (paper, :class:`~ssfilter.models.mlla.MLLABlock`) or ``"linear"`` (Dinomaly's
            plain linear-attention ViT block, the "without MLLA" ablation of Table 4).
        dim: Channel width.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden ratio.
        ln_eps: LayerNorm epsilon.

    Raises:
        ValueError: ``kind`` is not one of the known block kinds.
    """
    block = DECODER_BLOCKS.get(kind)
    if block is None:
        known = ", ".join(repr(k) for k in DECODER_BLOCKS)
        raise ValueError(f"unknown decoder block kind {kind!r}; expected one of {known}")
    return block(dim, num_heads, mlp_ratio=mlp_ratio, ln_eps=ln_eps)
