"""Convolutional encoders: any stack of CNN stages tapped at several depths, and MobileNetV2 built on it.

:class:`CNNEncoder` is generic over CNNs: it runs a sequence of stages, taps some of their outputs and
resizes them to one grid. A backbone is one registered builder that says which stages to tap and how to
group them (see :func:`mobilenet_v2`); a ResNet would pass its stem and ``layer1..layer4`` as stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders.base import Encoder, EncoderFeatures
from ssfilter.models.encoders.registry import register_encoder
from ssfilter.models.encoders.weights import read_state

__all__ = ["MOBILENET_V2_GROUPS", "MOBILENET_V2_TAPS", "CNNEncoder", "mobilenet_v2"]


class CNNEncoder(Encoder):
    """Outputs of chosen CNN stages, resized to one grid and read as tokens (no prefix tokens).

    Each group is the channel concatenation of its taps, the bottleneck takes all taps, and the patch
    descriptor is all taps after a 3x3 average pool (PatchCore-style local aggregation, hence
    :attr:`pooled_descriptors`). Bilinear resizing by an exact factor of two averages 2x2 cells, so a
    tap at twice the grid's resolution is pooled, not subsampled. Convolutions run faster channels-last
    on CUDA (:attr:`prefers_channels_last`).

    Args:
        name: Backbone name.
        stages: The network's stages in order; ``stages[i]`` is tap ``i``. Stages after the deepest tap
            are dropped (never run). Kept as the ``features`` submodule, so state-dict keys are
            ``features.<i>...``.
        tap_dims: Channel width of each tapped stage, by stage index.
        groups: Reconstruction groups as tuples of stage indices (shallow to deep); every tap is in one.
        stride: Input pixels per grid cell; every tap is resized to ``input / stride``.
        embed_dim: Natural decoder width.
        num_heads: Natural number of decoder attention heads.
        mean: Normalisation mean the network was trained with.
        std: Normalisation std the network was trained with.
    """

    prefers_channels_last = True
    pooled_descriptors = True

    def __init__(
        self,
        name: str,
        stages: nn.Sequential,
        tap_dims: Mapping[int, int],
        groups: tuple[tuple[int, ...], ...],
        *,
        stride: int,
        embed_dim: int,
        num_heads: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        taps = [t for g in groups for t in g]
        if sorted(taps) != sorted(tap_dims):
            raise ValueError(f"groups {groups} must use every tap of {sorted(tap_dims)} exactly once")
        self.name = name
        self.taps = taps
        self.group_taps = groups
        self.features = stages[: max(taps) + 1]
        self.mean, self.std = mean, std
        self.layer_dims = [tap_dims[t] for t in taps]
        self.group_dims = [sum(tap_dims[t] for t in g) for g in groups]
        self.bottleneck_dim = sum(self.layer_dims)
        self.descriptor_dim = self.bottleneck_dim
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.stride = stride
        self.num_prefix = 0
        self.freeze()

    def extract(self, images: Tensor) -> EncoderFeatures:
        """Run the stages and resize every tap to the grid."""
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        layers: list[Tensor] = []
        x = images
        for i, stage in enumerate(self.features):
            x = stage(x)
            if i in self.taps:
                y = x if x.shape[-2:] == (h, w) else F.interpolate(x, size=(h, w), mode="bilinear")
                layers.append(y.flatten(2).transpose(1, 2))
        return EncoderFeatures(layers, (h, w), 0)

    def _cat(self, feats: EncoderFeatures, taps: tuple[int, ...]) -> Tensor:
        return torch.cat([feats.layers[self.taps.index(t)] for t in taps], dim=-1)

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Channel concatenation of each group's taps."""
        return [self._cat(feats, g) for g in self.group_taps]

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        """All taps concatenated."""
        return torch.cat(feats.layers, dim=-1)

    def foreground_features(self, feats: EncoderFeatures) -> Tensor:
        """The deep group, whose first principal component separates object from background.

        On MobileNetV2 the shallow taps' first component follows edges instead.
        """
        return self.groups(feats)[-1]

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        """All taps concatenated after a 3x3 average pool on the grid."""
        return self.aggregate_descriptors(torch.cat(feats.layers, dim=-1), feats.grid)

    def aggregate_descriptors(self, descriptors: Tensor, grid: tuple[int, int]) -> Tensor:
        """3x3 average pool of the descriptors on the grid (PatchCore-style local aggregation)."""
        h, w = grid
        b, n, c = descriptors.shape
        cells = descriptors.transpose(1, 2).reshape(b, c, h, w)
        pooled = F.avg_pool2d(cells, 3, stride=1, padding=1, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------------------------
# torchvision MobileNetV2

#: MobileNetV2 ``features[i]`` outputs tapped, with their channel widths.
MOBILENET_V2_TAPS: dict[int, int] = {3: 24, 6: 32, 10: 64, 13: 96}
#: The two reconstruction groups: strides 4-8 and 16.
MOBILENET_V2_GROUPS: tuple[tuple[int, ...], ...] = ((3, 6), (10, 13))


def _is_mobilenet_v2(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Shape test: a torchvision MobileNetV2 state dict."""
    return "features.0.0.weight" in shapes


@register_encoder("mobilenet_v2", stride=8, small_decoder=(64, 4), recognises=_is_mobilenet_v2)
def mobilenet_v2(weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> CNNEncoder:
    """Torchvision MobileNetV2 taps on a stride-8 grid; ImageNet weights only from a local file.

    ``keep_all_blocks`` has no effect: stages after the deepest tap are always dropped.

    Raises:
        WeightsUnavailableError: No file is given and random weights are not allowed, or the file is
            missing or not a torchvision MobileNetV2 state dict.
    """
    from torchvision.models import mobilenet_v2 as torchvision_mobilenet_v2

    net = torchvision_mobilenet_v2()
    if weights is None:
        if not allow_random:
            raise WeightsUnavailableError(
                "mobilenet_v2 needs a local ImageNet weights file (torchvision layout, .safetensors/.pth); "
                "pass --weights PATH, e.g. ../shared/weights/mobilenet_v2_imagenet.safetensors"
            )
    else:
        state = read_state(weights)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsUnavailableError(
                f"{weights} is not a torchvision MobileNetV2 state dict: {err}"
            ) from err
    return CNNEncoder(
        "mobilenet_v2",
        net.features,
        MOBILENET_V2_TAPS,
        MOBILENET_V2_GROUPS,
        stride=8,
        embed_dim=192,
        num_heads=4,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
