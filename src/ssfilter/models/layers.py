"""Building blocks shared by the decoder blocks: weight init, the MLP and token-grid convolutions.

Both decoder block kinds (:mod:`ssfilter.models.mlla` and :mod:`ssfilter.models.linear_attention`) and the
Dinomaly model import these from here, so neither block module depends on the other.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Mlp", "check_grid", "grid_dwconv", "init_weights"]


def check_grid(n: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Return ``grid`` as two ints after checking that it holds exactly ``n`` tokens.

    Raises:
        ValueError: ``grid`` does not hold ``n`` tokens.
    """
    h, w = int(grid[0]), int(grid[1])
    if h * w != n:
        raise ValueError(f"grid {h}x{w} holds {h * w} tokens but the input has {n}")
    return h, w


def grid_dwconv(conv: nn.Conv2d, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Apply a 2-D convolution to a token sequence laid out row-major on ``grid``.

    Args:
        conv: Convolution that keeps the spatial size (e.g. 3x3, padding 1).
        x: Tokens ``[B, N, C]`` with ``N = H * W``, row-major (token ``i`` sits at row ``i // W``).
        grid: ``(H, W)``.

    Returns:
        ``[B, N, C']`` in the same token order.
    """
    b, n, c = x.shape
    h, w = check_grid(n, grid)
    y = conv(x.transpose(1, 2).reshape(b, c, h, w))
    return y.flatten(2).transpose(1, 2)


def init_weights(module: nn.Module) -> None:
    """Initialise one module the way SPEC §1 (and Dinomaly) does; use as ``model.apply(init_weights)``.

    An ``nn.Linear`` gets weights from a normal distribution with std 0.01 truncated to ±0.03 and a zero
    bias; an ``nn.LayerNorm`` gets weight 1 and bias 0. Other modules are left alone: convolutions keep
    PyTorch's default (Kaiming-uniform) init, as in Dinomaly and MLLA, which only re-initialise Linear and
    LayerNorm layers. Like timm's ``_init_weights`` it does not recurse, so ``apply`` visits each layer once.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Mlp(nn.Module):
    """Two-layer MLP ``fc2(act(fc1(x)))`` without dropout (the decoder has none).

    Written here rather than taken from ``timm.layers`` so the blocks import without timm's (slow) layer
    package; parameter names ``fc1``/``fc2`` match timm, MLLA and Dinomaly checkpoints.

    Args:
        in_features: Input and output width.
        hidden_features: Hidden width.
        act_layer: Activation class (exact GELU by default).
    """

    def __init__(self, in_features: int, hidden_features: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension."""
        return self.fc2(self.act(self.fc1(x)))
