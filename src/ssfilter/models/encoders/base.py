"""The encoder interface: target-layer features and the abstract frozen :class:`Encoder` (SPEC §10).

Every backbone returns its target-layer features as token sequences ``[B, P + H*W, C_l]`` on one
common ``H x W`` grid (``P`` prefix tokens: CLS and registers for ViTs, none for CNNs). The
backbone-specific ways of combining those layers -- reconstruction groups, bottleneck input, patch
descriptors for SSFilter's comparison scoring -- are methods, and what callers need to know about a
backbone (its input layout, whether its descriptors are already pooled) are attributes, so the rest of
the code never branches on the backbone type.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Encoder", "EncoderFeatures"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderFeatures:
    """Target-layer outputs of a frozen encoder.

    Attributes:
        layers: One tensor ``[B, P + H*W, C_l]`` per target layer, in target-layer order.
        grid: Patch grid ``(H, W)``.
        num_prefix: Number of prefix tokens ``P`` (CLS + registers) before the patch tokens.
    """

    layers: list[Tensor]
    grid: tuple[int, int]
    num_prefix: int

    @property
    def batch_size(self) -> int:
        """Number of images."""
        return self.layers[0].shape[0]

    def patches(self, index: int) -> Tensor:
        """Patch tokens ``[B, H*W, C]`` of target layer ``index``."""
        return self.layers[index][:, self.num_prefix :]

    def select(self, index: Tensor | slice | list[int]) -> EncoderFeatures:
        """Features of a subset of the batch."""
        return EncoderFeatures([t[index] for t in self.layers], self.grid, self.num_prefix)

    def to(self, *args: object, **kwargs: object) -> EncoderFeatures:
        """Move/cast every layer (same arguments as :meth:`torch.Tensor.to`)."""
        return EncoderFeatures([t.to(*args, **kwargs) for t in self.layers], self.grid, self.num_prefix)

    @staticmethod
    def cat(parts: list[EncoderFeatures]) -> EncoderFeatures:
        """Concatenate features of several batches along the batch axis."""
        first = parts[0]
        layers = [torch.cat([p.layers[i] for p in parts]) for i in range(len(first.layers))]
        return EncoderFeatures(layers, first.grid, first.num_prefix)


class Encoder(nn.Module, metaclass=ABCMeta):
    """Abstract base of frozen encoders.

    Subclasses implement :meth:`extract`, :meth:`groups`, :meth:`bottleneck_input` and
    :meth:`patch_descriptors`, and set the describing attributes below in their constructor. The module is
    always in eval mode and never receives gradients.

    Attributes:
        name: Backbone name as accepted by :func:`~ssfilter.models.encoders.build_encoder`.
        mean: Normalisation mean of the input images (0..1 pixel scale).
        std: Normalisation std of the input images.
        layer_dims: Channel width of each target layer.
        group_dims: Channel width of each reconstruction group.
        bottleneck_dim: Channel width of the bottleneck input.
        descriptor_dim: Channel width of the patch descriptors.
        embed_dim: Natural decoder width.
        num_heads: Natural number of decoder attention heads.
        stride: Input pixels per grid cell.
        num_prefix: Prefix tokens (CLS + registers) in every layer.
        prefers_channels_last: The encoder runs faster on channels-last images and weights on CUDA
            (convolutional networks); the trainer then converts both. False for token models.
        pooled_descriptors: :meth:`patch_descriptors` already average each cell's neighbourhood, so
            PatchCore adds no local aggregation of its own.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_dims: list[int]
    group_dims: list[int]
    bottleneck_dim: int
    descriptor_dim: int
    embed_dim: int
    num_heads: int
    stride: int
    num_prefix: int
    prefers_channels_last: bool = False
    pooled_descriptors: bool = False

    def train(self, mode: bool = True) -> Encoder:
        """Keep the frozen encoder in eval mode whatever the caller asks."""
        return super().train(False)

    def freeze(self) -> None:
        """Disable gradients and switch to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def grid_size(self, crop: int) -> tuple[int, int]:
        """Patch grid for a square crop of side ``crop``."""
        return crop // self.stride, crop // self.stride

    def check_crop(self, crop: int) -> None:
        """Raise a clear error when ``crop`` does not fit the encoder's stride."""
        if crop % self.stride:
            raise ValueError(
                f"crop {crop} must be a multiple of the {self.name} stride {self.stride} "
                f"(e.g. {crop - crop % self.stride} or {crop - crop % self.stride + self.stride})"
            )

    @torch.no_grad()
    def forward(self, images: Tensor) -> EncoderFeatures:
        """Target-layer features of normalised images ``[B, 3, S, S]``."""
        return self.extract(images)

    @abstractmethod
    def extract(self, images: Tensor) -> EncoderFeatures:
        """Compute target-layer features of normalised images ``[B, 3, S, S]``."""

    # -- combinations of layers, backbone specific --------------------------------------------

    @abstractmethod
    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Reconstruction targets: one ``[B, H*W, C_g]`` tensor per group (patch tokens only)."""

    @abstractmethod
    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        """Bottleneck input ``[B, P + H*W, bottleneck_dim]``."""

    @abstractmethod
    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        """Patch descriptors ``[B, H*W, descriptor_dim]`` for comparison scoring (Eq. 1)."""

    def layer_descriptors(
        self, feats: EncoderFeatures, concat: Sequence[int], mean: Sequence[int] = ()
    ) -> Tensor:
        """Eq. 1 with explicit layer sets: ``concat(layers L1, mean(layers L2))`` of the patch tokens.

        The descriptor ablation of Table 8 (``batch_filter.descriptor_layers`` / ``descriptor_mean_layers``).
        Indices refer to the target-layer list. The result goes through :meth:`aggregate_descriptors`, as the
        backbone's own descriptor does.

        Raises:
            ValueError: Both sets empty, an index out of range, or ``mean`` layers of different widths.
        """
        n = len(feats.layers)
        concat, mean = [int(i) for i in concat], [int(i) for i in mean]
        if not concat and not mean:
            raise ValueError("patch descriptor layers: L1 and L2 are both empty")
        bad = [i for i in [*concat, *mean] if not 0 <= i < n]
        if bad:
            raise ValueError(f"patch descriptor layers {bad} out of range: {self.name} has {n} target layers")
        parts = [feats.patches(i) for i in concat]
        if mean:
            widths = {feats.layers[i].shape[-1] for i in mean}
            if len(widths) > 1:
                raise ValueError(
                    f"patch descriptor L2 layers {mean} have different widths {sorted(widths)} and cannot be "
                    "averaged; list them in L1 instead"
                )
            total = feats.patches(mean[0])
            for i in mean[1:]:
                total = total + feats.patches(i)
            parts.append(total / len(mean))
        return self.aggregate_descriptors(torch.cat(parts, dim=-1), feats.grid)

    def aggregate_descriptors(self, descriptors: Tensor, grid: tuple[int, int]) -> Tensor:
        """Local aggregation of descriptors ``[B, H*W, C]`` on ``grid`` (none by default)."""
        return descriptors

    def foreground_features(self, feats: EncoderFeatures) -> Tensor:
        """Features ``[B, H*W, C]`` whose first principal component separates object from background."""
        return self.groups(feats)[0]
