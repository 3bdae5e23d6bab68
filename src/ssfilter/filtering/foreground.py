"""Foreground masks (paper §3.5): where the object is in each kept image, so materials land on it.

The first principal component of an image's encoder patch features separates object from background;
Otsu's threshold splits the projections. Textures (no object) get an all-True mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ssfilter.models.anomaly_map import autocast_disabled

__all__ = ["foreground_masks"]


def _otsu(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Otsu's threshold of each row of ``values [B, N]``, evaluated exactly at every split of sorted values.

    scikit-image (the usual source of Otsu) is not a dependency, and with a few hundred patch projections per
    image the exact criterion over sorted values is as cheap as a histogram and needs no bin count.

    Returns:
        ``(threshold [B], separability [B], valid [B])``: the midpoint between the two classes, Otsu's
        effectiveness ``sigma_between^2 / sigma_total^2`` in [0, 1], and whether a split exists (values not
        all equal).
    """
    v, _ = values.to(torch.float64).sort(dim=1)
    n = v.shape[1]
    k = torch.arange(1, n, device=v.device, dtype=v.dtype)  # size of the lower class at each split
    lower_sum = v.cumsum(dim=1)[:, :-1]
    upper_sum = v.sum(dim=1, keepdim=True) - lower_sum
    w0 = k / n
    between = w0 * (1.0 - w0) * (lower_sum / k - upper_sum / (n - k)) ** 2
    splittable = v[:, 1:] > v[:, :-1]  # only split between distinct values
    between = between.masked_fill(~splittable, -1.0)
    best_value, best = between.max(dim=1)
    threshold = 0.5 * (v.gather(1, best[:, None]) + v.gather(1, best[:, None] + 1)).squeeze(1)
    total = v.var(dim=1, unbiased=False)
    separability = torch.where(total > 0, best_value.clamp_min(0) / total.clamp_min(1e-300), 0.0)
    return threshold, separability, splittable.any(dim=1)


def _first_component(features: Tensor) -> Tensor:
    """Projections ``[B, N]`` of centred features ``[B, N, C]`` on their first principal component, per image.

    Exact (a symmetric eigendecomposition of the smaller of the ``C x C`` covariance and the ``N x N`` Gram
    matrix, several times faster than an SVD of the features), hence deterministic, unlike
    ``torch.pca_lowrank``. The sign of the component is arbitrary.
    """
    x = features - features.mean(dim=1, keepdim=True)
    if x.shape[2] <= x.shape[1]:
        _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
        return (x @ vectors[..., -1:])[..., 0]
    values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))
    return vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt()


def foreground_masks(
    features: Tensor,
    grid: tuple[int, int],
    out_size: int | Sequence[int],
    min_separability: float = 0.7,
) -> Tensor:
    """Object masks from the first principal component of each image's patch features (paper §3.5).

    Per image: centre its patch features, project them on their first principal component (exact, so the
    result is deterministic; its sign is arbitrary), threshold the projections with Otsu, and invert the
    mask when most border cells are foreground (objects are normally centred). The grid mask is upsampled
    bilinearly and thresholded at 0.5 (smooth outlines instead of patch-sized steps).

    Fallback: the whole image is foreground (all True) when no object is found, i.e. when the projections do
    not split into two classes (constant features), the split is weak (Otsu effectiveness below
    ``min_separability``, default 0.7: noise-like, Gaussian-distributed projections score about 0.64, clear
    object/background splits 0.85 or more), or the mask is empty or full. This is the expected result for
    textures, where anomalies may appear anywhere; a structured texture can still give a partial mask, which
    is harmless since any part of a texture is a valid place for a defect.

    Args:
        features: Patch features ``[B, H*W, C]`` (e.g. ``Encoder.foreground_features``), row-major grid order.
        grid: Patch grid ``(H, W)``.
        out_size: Output size ``S`` or ``(S_h, S_w)``.
        min_separability: Minimum Otsu effectiveness for a mask to count as an object.

    Returns:
        Bool masks ``[B, S_h, S_w]`` on the features' device.
    """
    if features.dim() != 3 or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"expected features [B, {grid[0]}*{grid[1]}, C], got {tuple(features.shape)}")
    size = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    b, hw, _ = features.shape
    if b == 0:
        return torch.zeros((0, *size), dtype=torch.bool, device=features.device)

    if hw < 2:  # a single patch cannot be split
        return torch.ones((b, *size), dtype=torch.bool, device=features.device)
    with autocast_disabled(features.device):  # the eigendecomposition needs float32 matmuls
        projection = _first_component(features.detach().float())

    threshold, separability, valid = _otsu(projection)
    mask = (projection.to(torch.float64) > threshold[:, None]).view(b, *grid)

    border = torch.ones(grid, dtype=torch.bool, device=mask.device)
    border[1:-1, 1:-1] = False
    border_share = (mask & border).flatten(1).sum(1) / border.sum()
    mask = torch.where((border_share > 0.5)[:, None, None], ~mask, mask)

    area = mask.flatten(1).sum(1)
    found = valid & (separability >= min_separability) & (area > 0) & (area < hw)

    up = F.interpolate(mask[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    return up | ~found[:, None, None]
