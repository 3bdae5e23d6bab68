"""Dinomaly reconstruction model with an MLLA decoder (SPEC §1, paper §3.1).

The pure torch model: a frozen encoder, a noisy MLP bottleneck, a stack of decoder blocks and one
output head per reconstruction group. It knows nothing about training loops, filtering or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssfilter.config import ModelConfig
from ssfilter.models.decoder_blocks import build_decoder_block
from ssfilter.models.encoders import Encoder, EncoderFeatures
from ssfilter.models.layers import init_weights

__all__ = ["Bottleneck", "DinomalyModel", "Reconstruction", "seeded_dropout", "tokens_to_grid"]


def tokens_to_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Reshape ``[B, H*W, C]`` patch tokens to a ``[B, C, H, W]`` feature map."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


@dataclass
class Reconstruction:
    """Encoder targets and decoder reconstructions, one ``[B, C_g, H, W]`` map per group."""

    encoder: list[Tensor]
    decoder: list[Tensor]


class Bottleneck(nn.Module):
    """Dinomaly's noisy bottleneck: MLP ``in -> 4*dim -> dim`` with dropout in three places.

    Dropout sits at the input, after the hidden activation and at the output. It is active in
    training mode and, for MC-dropout uncertainty (paper §3.3), whenever ``mc=True`` is passed,
    independently of the module's mode.
    """

    def __init__(self, in_dim: int, dim: int, hidden_ratio: float = 4.0, dropout: float = 0.2) -> None:
        super().__init__()
        hidden = int(dim * hidden_ratio)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.p = dropout

    def forward(self, x: Tensor, mc: bool = False, row_seeds: Sequence[int] | None = None) -> Tensor:
        """Apply the noisy MLP.

        Args:
            x: Tokens ``[B, N, C]``.
            mc: Force dropout on (MC-dropout passes).
            row_seeds: Optional seed per row of ``x``: each image's three dropout masks are then drawn from
                its own generator, so they depend neither on the other images of the batch nor on how a
                batch is split across processes (DDP training). Default: ``F.dropout``'s global generator.
        """
        active = self.training or mc
        if row_seeds is not None and active and self.p > 0:
            if len(row_seeds) != x.shape[0]:
                raise ValueError(f"{len(row_seeds)} row seeds for a batch of {x.shape[0]}")
            gens = [torch.Generator(device=x.device).manual_seed(int(s)) for s in row_seeds]
            x = seeded_dropout(x, self.p, gens)
            x = seeded_dropout(self.act(self.fc1(x)), self.p, gens)
            return seeded_dropout(self.fc2(x), self.p, gens)
        x = F.dropout(x, self.p, active)
        x = F.dropout(self.act(self.fc1(x)), self.p, active)
        return F.dropout(self.fc2(x), self.p, active)


def seeded_dropout(x: Tensor, p: float, generators: Sequence[torch.Generator]) -> Tensor:
    """Inverted dropout (as ``F.dropout``) whose mask for row ``i`` comes from ``generators[i]``."""
    if p >= 1.0:
        return x * 0.0
    noise = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in generators])
    return x * (noise >= p).to(x.dtype) * (1.0 / (1.0 - p))


class DinomalyModel(nn.Module):
    """Frozen encoder + noisy bottleneck + decoder that reconstructs grouped encoder features.

    Decoder block outputs are reversed (last block first) and averaged in as many equal chunks as
    the encoder has groups ("loose reconstruction"): with 8 blocks and 2 groups, decoder blocks 7-4
    reconstruct the first encoder group and blocks 3-0 the second.

    Args:
        encoder: A frozen :class:`~ssfilter.models.encoders.Encoder`.
        cfg: Model configuration (decoder width, depth, attention kind, dropout).
        crop: Input crop size; fixes the token grid (RoPE tables depend on it).
    """

    def __init__(self, encoder: Encoder, cfg: ModelConfig, crop: int) -> None:
        super().__init__()
        encoder.check_crop(crop)
        n_groups = len(encoder.group_dims)
        if cfg.decoder_depth % n_groups:
            raise ValueError(f"decoder_depth {cfg.decoder_depth} must be a multiple of the {n_groups} groups")
        dim = cfg.decoder_dim or encoder.embed_dim
        heads = cfg.decoder_heads or encoder.num_heads
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by {heads} heads")
        self.encoder = encoder
        self.crop = crop
        self.grid = encoder.grid_size(crop)
        self.dim = dim
        self.bottleneck = Bottleneck(encoder.bottleneck_dim, dim, dropout=cfg.dropout)
        self.decoder = nn.ModuleList(
            build_decoder_block(cfg.attention, dim, heads, cfg.mlp_ratio, cfg.ln_eps)
            for _ in range(cfg.decoder_depth)
        )
        self.heads = nn.ModuleList(
            nn.Identity() if g == dim else nn.Linear(dim, g) for g in encoder.group_dims
        )
        for part in (self.bottleneck, self.decoder, self.heads):
            part.apply(init_weights)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the bottleneck, decoder and heads (the encoder is frozen)."""
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    @torch.no_grad()
    def encode(self, images: Tensor) -> EncoderFeatures:
        """Frozen encoder features of normalised images."""
        return self.encoder(images)

    def target_groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Encoder reconstruction targets as ``[B, C_g, H, W]`` maps."""
        return [tokens_to_grid(g, feats.grid) for g in self.encoder.groups(feats)]

    def decode(
        self, feats: EncoderFeatures, mc_passes: int = 0, row_seeds: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Reconstruct the groups from encoder features.

        Args:
            feats: Encoder features of ``B`` images.
            mc_passes: When ``K > 0``, run ``K`` MC-dropout passes as one batch of ``K*B`` (pass-major:
                rows ``k*B .. (k+1)*B-1`` are pass ``k``) with dropout forced on in the bottleneck.
            row_seeds: Optional per-image dropout seeds (see :class:`Bottleneck`); not with ``mc_passes``.

        Returns:
            One ``[B or K*B, C_g, H, W]`` map per group.
        """
        x = self.encoder.bottleneck_input(feats)
        if mc_passes > 0:
            if row_seeds is not None:
                raise ValueError("row_seeds cannot be combined with mc_passes")
            x = x.repeat(mc_passes, 1, 1)
        x = self.bottleneck(x, mc=mc_passes > 0, row_seeds=row_seeds)
        x = x[:, feats.num_prefix :]
        outputs: list[Tensor] = []
        for block in self.decoder:
            x = block(x, feats.grid)
            outputs.append(x)
        outputs.reverse()
        chunk = len(outputs) // len(self.heads)
        groups = []
        for g, head in enumerate(self.heads):
            mean = torch.stack(outputs[g * chunk : (g + 1) * chunk]).mean(0)
            groups.append(tokens_to_grid(head(mean), feats.grid))
        return groups

    def forward(self, images: Tensor) -> Reconstruction:
        """Encoder targets and decoder reconstructions of a batch of normalised images."""
        feats = self.encode(images)
        return Reconstruction(self.target_groups(feats), self.decode(feats))
