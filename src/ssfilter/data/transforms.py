"""Preprocessing presets for images and ground-truth masks (SPEC §1 "Transforms").

Images: ``Resize((resize, resize))`` (bilinear, antialiased) -> ``CenterCrop(crop)`` -> tensor in [0, 1] ->
``Normalize(mean, std)``. Masks follow the same geometry: resized bilinearly as an 8-bit image, centre-cropped
and binarised with ``> 0``, the Dinomaly-compatible recipe, so a thin defect is never lost by downsampling.

All callables returned here are plain picklable objects (no lambdas), so datasets using them work with
``DataLoader(num_workers > 0)`` under every multiprocessing start method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ssfilter.config import Config, DataConfig
from ssfilter.data.tiling import scaled_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MaskTransform",
    "Normalization",
    "build_image_transform",
    "ScaledTransform",
    "build_mask_transform",
    "denormalize",
    "mask_transform_for",
    "transform_for",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet, used by DINOv2 and most pretrained encoders."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of ImageNet."""


def _check_sizes(resize: int, crop: int) -> None:
    """Reject sizes that would silently pad or produce empty tensors."""
    if resize <= 0 or crop <= 0:
        raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}")
    if crop > resize:
        raise ValueError(
            f"crop ({crop}) must not exceed resize ({resize}); the centre crop would pad with zeros"
        )


def build_image_transform(
    resize: int,
    crop: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """Build the image preprocessing pipeline.

    Args:
        resize: Side of the square resize (paper: 448).
        crop: Side of the centre crop (paper: 392).
        mean: Normalisation mean per channel.
        std: Normalisation standard deviation per channel.

    Returns:
        A callable mapping an RGB PIL image to a float tensor ``[3, crop, crop]``.
    """
    _check_sizes(resize, crop)
    return T.Compose(
        [
            T.Resize((resize, resize), interpolation=InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(crop),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class Normalization(Protocol):
    """What :func:`transform_for` needs from an encoder: its per-channel input statistics."""

    @property
    def mean(self) -> Sequence[float]:
        """Normalisation mean per channel."""
        ...

    @property
    def std(self) -> Sequence[float]:
        """Normalisation standard deviation per channel."""
        ...


def transform_for(cfg: Config | DataConfig, encoder: Normalization) -> Callable[[Image.Image], torch.Tensor]:
    """The image transform of a run: its data sizes and its encoder's normalisation.

    The one place that pairs ``data.resize`` / ``data.crop`` with the encoder's mean and std, so every
    command preprocesses images exactly as training did. With ``data.coverage = "tiles"`` the image is
    only scaled (:class:`ScaledTransform`); cutting it into tiles is the caller's (see
    :mod:`ssfilter.data.tiling`).

    Args:
        cfg: The run's config, or just its ``data`` section.
        encoder: The model's encoder (anything with ``mean`` and ``std``).

    Returns:
        A callable mapping an RGB PIL image to a float tensor ``[3, crop, crop]`` (tiles: ``[3, H, W]``).
    """
    data = cfg.data if isinstance(cfg, Config) else cfg
    if data.coverage == "tiles":
        return ScaledTransform(data.tile_scale, data.crop, encoder.mean, encoder.std)
    return build_image_transform(data.resize, data.crop, encoder.mean, encoder.std)


def mask_transform_for(cfg: Config | DataConfig) -> Callable[[np.ndarray], torch.Tensor]:
    """The mask transform matching :func:`transform_for`'s geometry for metrics.

    Tiled runs compare maps and masks at ``eval_size x eval_size`` over the whole image, so their masks go
    straight there (bilinear, ``> 0``: a defect of a few pixels is never lost on the way down).
    """
    data = cfg.data if isinstance(cfg, Config) else cfg
    if data.coverage == "tiles":
        return MaskTransform(data.eval_size, data.eval_size)
    return MaskTransform(data.resize, data.crop)


class ScaledTransform:
    """Resize an image by ``scale`` (aspect kept, at least one ``tile`` per side), to tensor, normalise.

    The preprocessing of tiled runs (see :func:`ssfilter.data.tiling.scaled_size`); picklable.

    Args:
        scale: Resize factor (1.0 = native resolution).
        tile: Side of a tile; a shorter image side is scaled up to it.
        mean: Normalisation mean per channel.
        std: Normalisation standard deviation per channel.
    """

    def __init__(
        self,
        scale: float,
        tile: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        scaled_size(tile, tile, scale, tile)  # validates scale and tile
        self.scale, self.tile = scale, tile
        self._tail = T.Compose([T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])

    def size_of(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` an image of this size is resized to."""
        return scaled_size(width, height, self.scale, self.tile)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``[3, H, W]`` normalised tensor of the scaled image."""
        width, height = self.size_of(*image.size)
        if (width, height) != image.size:
            image = T.functional.resize(
                image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        return self._tail(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, tile={self.tile})"


class MaskTransform:
    """Resize, crop and binarise a boolean mask like its image (see :func:`build_mask_transform`).

    Args:
        resize: Side of the square resize.
        crop: Side of the centre crop.
    """

    def __init__(self, resize: int, crop: int) -> None:
        _check_sizes(resize, crop)
        self.resize = resize
        self.crop = crop
        self._geometry = T.Compose(
            [
                T.Resize((resize, resize), interpolation=InterpolationMode.BILINEAR, antialias=True),
                T.CenterCrop(crop),
            ]
        )

    def __call__(self, mask: np.ndarray) -> torch.Tensor:
        """Map an ``(H, W)`` mask (non-zero = defect) to a ``[1, crop, crop]`` float tensor in {0, 1}."""
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {array.shape}")
        image = Image.fromarray(np.where(array > 0, 255, 0).astype(np.uint8))  # 2-D uint8 -> "L"
        resized = np.asarray(self._geometry(image))
        return torch.from_numpy(resized > 0).to(torch.float32).unsqueeze(0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize={self.resize}, crop={self.crop})"


def build_mask_transform(resize: int, crop: int) -> Callable[[np.ndarray], torch.Tensor]:
    """Build the mask preprocessing pipeline matching :func:`build_image_transform`'s geometry.

    Bilinear resizing followed by ``> 0`` slightly dilates the mask boundary rather than dropping thin
    defects, matching Dinomaly's evaluation masks.

    Args:
        resize: Side of the square resize.
        crop: Side of the centre crop.

    Returns:
        A callable mapping an ``(H, W)`` mask to a float tensor ``[1, crop, crop]`` with values in {0, 1}.
    """
    return MaskTransform(resize, crop)


def denormalize(
    tensor: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Undo ``Normalize(mean, std)``: the image in [0, 1] (clamped), for pasting materials and overlays.

    Args:
        tensor: Normalised image ``[C, H, W]`` or batch ``[B, C, H, W]``.
        mean: The mean used for normalisation.
        std: The standard deviation used for normalisation.

    Returns:
        A new tensor of the same shape with values in [0, 1]; the input is not modified.
    """
    if tensor.ndim not in (3, 4):
        raise ValueError(f"expected [C, H, W] or [B, C, H, W], got shape {tuple(tensor.shape)}")
    dtype = tensor.dtype if tensor.is_floating_point() else torch.float32
    m = torch.as_tensor(mean, dtype=dtype, device=tensor.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=tensor.device).view(-1, 1, 1)
    return (tensor.to(dtype) * s + m).clamp(0.0, 1.0)
