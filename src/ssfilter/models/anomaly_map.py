"""Anomaly maps and image scores from encoder/decoder feature groups (SPEC §1, "Anomaly map at test time").

Anomaly = reconstruction error: per group, the point distance ``1 - cos(enc, dec)`` over channels. The map
of an image is the mean over groups after bilinear upsampling; the test-time map is then resized to the
evaluation size and blurred, and the image score is the mean of its top 1% pixels.

Every function here:

* works with or without autograd, on any device;
* computes in at least float32: bfloat16/float16 inputs are cast up and autocast is switched off inside, so a
  call from within a ``torch.autocast`` region gives the same numbers as one outside it;
* is ONNX-exportable: no Python control flow depends on tensor values, only on (static) shapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "anomaly_map",
    "evaluation_maps",
    "gaussian_blur",
    "gaussian_kernel2d",
    "group_distance_maps",
    "point_distance",
    "topk_mean_score",
]

#: Floor on the feature norms in the cosine similarity (PyTorch's default), so zero vectors give cos = 0.
COSINE_EPS: float = 1e-8


@contextlib.contextmanager
def autocast_disabled(device: torch.device) -> Iterator[None]:
    """Switch autocast off for ``device``'s type, so float32 inputs are not cast down inside the block.

    Used by the map and loss code: the maps and the hard-mining selection must be float32 even when the caller
    runs the model under bf16 autocast.
    """
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield


def _as_float(x: Tensor) -> Tensor:
    """Cast low-precision floating tensors (bf16/fp16) up to float32; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise an ``int`` or ``(h, w)`` size to a pair of ints."""
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def point_distance(enc: Tensor, dec: Tensor) -> Tensor:
    """Per-position distance ``1 - cos(enc, dec)`` over the channel dim of ``[B, C, H, W]`` tensors.

    Returns ``[B, H, W]`` in (at least) float32, in [0, 2]. Norms are floored at :data:`COSINE_EPS`, so an
    all-zero feature vector gives distance 1 and no NaN.
    """
    if enc.shape != dec.shape or enc.ndim != 4:
        raise ValueError(
            f"expected two [B, C, H, W] tensors of equal shape, got {tuple(enc.shape)} and {tuple(dec.shape)}"
        )
    with autocast_disabled(enc.device):
        return 1.0 - F.cosine_similarity(_as_float(enc), _as_float(dec), dim=1, eps=COSINE_EPS)


def _check_groups(enc_groups: Sequence[Tensor], dec_groups: Sequence[Tensor]) -> None:
    """Validate that both group lists are non-empty and of equal length."""
    if len(enc_groups) == 0 or len(enc_groups) != len(dec_groups):
        raise ValueError(
            f"need the same non-zero number of encoder and decoder groups, got {len(enc_groups)} and "
            f"{len(dec_groups)}"
        )


def group_distance_maps(enc_groups: Sequence[Tensor], dec_groups: Sequence[Tensor]) -> Tensor:
    """Stack the per-group point distances ``1 - cos`` over channels into ``[B, G, H, W]``.

    All groups must share the same batch and grid size (they do in Dinomaly: one patch grid).
    """
    _check_groups(enc_groups, dec_groups)
    return torch.stack([point_distance(e, d) for e, d in zip(enc_groups, dec_groups, strict=True)], dim=1)


def anomaly_map(
    enc_groups: Sequence[Tensor], dec_groups: Sequence[Tensor], out_size: int | Sequence[int]
) -> Tensor:
    """Anomaly map ``[B, 1, S_h, S_w]``: per-group distance, bilinear upsampling, mean over groups.

    Each group is upsampled separately (``align_corners=False``) before averaging, so groups on different
    grids are allowed. ``out_size`` is typically the crop size.
    """
    _check_groups(enc_groups, dec_groups)
    size = _size_pair(out_size)
    maps = []
    for enc, dec in zip(enc_groups, dec_groups, strict=True):
        dist = point_distance(enc, dec).unsqueeze(1)
        with autocast_disabled(dist.device):
            maps.append(F.interpolate(dist, size=size, mode="bilinear", align_corners=False))
    return torch.stack(maps, dim=0).mean(dim=0)


def gaussian_kernel2d(
    kernel_size: int = 5,
    sigma: float = 4.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised 2-D Gaussian kernel ``[k, k]`` centred on the middle tap; its entries sum to 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    coords = torch.arange(kernel_size, dtype=torch.float64, device=device) - (kernel_size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    kernel = torch.outer(g, g)  # separable: outer product of 1-D Gaussians == the 2-D isotropic Gaussian
    return (kernel / kernel.sum()).to(dtype)


def gaussian_blur(maps: Tensor, kernel_size: int = 5, sigma: float = 4.0) -> Tensor:
    """Gaussian blur of ``[B, H, W]`` or ``[B, C, H, W]`` maps with ZERO padding; same shape out.

    Zero padding is what SPEC §1 (and Dinomaly's evaluation) prescribes; it lowers values near the borders.
    ``torchvision.transforms.functional.gaussian_blur`` pads by reflection, which changes border values and so
    the scores and pixel metrics; hence this depthwise ``conv2d`` written with plain torch ops.
    """
    if maps.ndim not in (3, 4):
        raise ValueError(f"expected [B, H, W] or [B, C, H, W] maps, got shape {tuple(maps.shape)}")
    x = _as_float(maps)
    # Every channel is blurred on its own: fold the channels into the batch and convolve with one
    # single-channel kernel. Unlike a depthwise conv whose weight is expanded to the traced channel
    # count, the kernel's shape is static, so the ONNX export works with a dynamic batch axis.
    flat = x.reshape(-1, 1, x.shape[-2], x.shape[-1])
    weight = gaussian_kernel2d(kernel_size, sigma, dtype=x.dtype, device=x.device)[None, None]
    with autocast_disabled(x.device):
        out = F.conv2d(flat, weight, padding=kernel_size // 2)
    return out.reshape(x.shape)


def topk_mean_score(maps: Tensor, ratio: float = 0.01) -> Tensor:
    """Image score ``[B]``: mean of the ``max(1, int(ratio * n))`` largest values of each map.

    ``maps`` is ``[B, H, W]`` or ``[B, 1, H, W]``; ``n`` is the number of values per image (``H * W``). ``k``
    depends only on the shape, so the ``topk`` is static for ONNX export.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    flat = _as_float(maps.flatten(1))
    k = max(1, int(ratio * flat.shape[1]))
    return torch.topk(flat, k, dim=1, largest=True, sorted=False).values.mean(dim=1)


def evaluation_maps(
    enc_groups: Sequence[Tensor],
    dec_groups: Sequence[Tensor],
    crop: int | Sequence[int],
    eval_size: int = 256,
    blur: bool = True,
) -> tuple[Tensor, Tensor]:
    """Test-time maps ``[B, eval_size, eval_size]`` and image scores ``[B]`` (SPEC §1).

    Map at crop resolution, bilinear resize to ``eval_size`` (metrics are computed at 256x256), Gaussian blur
    5x5 / sigma 4 with zero padding (skipped with ``blur=False``); score = mean of the top 1% pixels of the
    returned (blurred) map.
    """
    amap = anomaly_map(enc_groups, dec_groups, crop)
    size = _size_pair(eval_size)
    if tuple(amap.shape[-2:]) != size:
        with autocast_disabled(amap.device):
            amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    if blur:
        amap = gaussian_blur(amap, kernel_size=5, sigma=4.0)
    maps = amap.squeeze(1)
    return maps, topk_mean_score(maps, ratio=0.01)
