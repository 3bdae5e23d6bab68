"""Restoring the hidden truth: real-anomaly materials, foreground masks and synthetic anomalies (paper §3.5).

During SSFilter training the synergy filter marks some images of a mini-batch as high-confidence anomalies
("material candidates", Eq. 10) and others as kept (Eq. 7). This module turns the candidates into training
signal without ever training the decoder to reconstruct an anomaly:

1. :func:`extract_material` cuts the most anomalous connected region out of a candidate, using its accumulated
   MC-dropout anomaly map ``M_acc = sum_k M^k`` (Eq. 4) and the threshold ``T_p`` of Eq. 11.
2. :func:`foreground_masks` estimates where the object is in each kept image (first principal component of its
   encoder patch features, Otsu threshold), so that materials land on the object, not on the background.
3. :func:`paste_materials` / :func:`synthesize_batch` paste randomly rotated materials onto kept images.
4. The trainer then computes the restoration loss of Eq. 13, ``D(F(x_clean), F_hat(x_synthetic))``, using the
   returned ``source_index``: the reconstruction TARGET is the encoder features of the CLEAN kept image, the
   decoder INPUT is the synthetic one, so the decoder learns to restore normal appearance from real anomalies.

Everything here works on normalised image tensors, on any device, and draws all randomness from a caller-owned
:class:`torch.Generator` (sampled on the generator's device), so synthesis is reproducible and resumable.

Project choices (the paper is silent): materials are kept across iterations in a small FIFO
:class:`MaterialBank` (capacity 0 reproduces the paper's "current mini-batch only"); the number of materials
per synthetic image grows in equal stages from 1 to 5 (:func:`materials_per_image`, Table 9).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy import ndimage
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ssfilter.models.anomaly_map import autocast_disabled

__all__ = [
    "Material",
    "MaterialBank",
    "extract_material",
    "extract_materials",
    "foreground_masks",
    "materials_per_image",
    "paste_materials",
    "rotate_material",
    "synthesize_batch",
]

#: 8-connectivity structuring element for :func:`scipy.ndimage.label` (diagonal neighbours join a region).
_EIGHT_CONNECTED: np.ndarray = np.ones((3, 3), dtype=bool)


@dataclass
class Material:
    """One piece of real anomalous content cut from a material candidate.

    Attributes:
        pixels: Normalised image content under the region's bounding box, ``[3, h, w]``.
        mask: The region inside the bounding box, bool ``[h, w]``.
        source_index: Index of the candidate image in its mini-batch (for logging; ``-1`` when unknown).
        peak: ``(row, col)`` of the map's peak in the source image's coordinates.
    """

    pixels: Tensor
    mask: Tensor
    source_index: int
    peak: tuple[int, int]


# ------------------------------------------------------------------------------------------------
# Material extraction (Eq. 11)


def extract_material(
    image: Tensor,
    acc_map: Tensor,
    max_ratio: float = 0.8,
    percentile: float = 99.0,
    source_index: int = -1,
) -> Material | None:
    """Cut the connected anomalous region around the peak of ``acc_map`` out of ``image`` (Eq. 11).

    The map is min-max normalised to [0, 1]; ``T_p = min(max_ratio * max, percentile-th percentile)`` (the
    percentile caps the threshold so the material is never a handful of pixels, paper Table 7); the region is
    the 8-connected component of ``map >= T_p`` that contains the peak (first arg-max on ties). Non-finite
    map values are treated as the map's minimum.

    Args:
        image: Normalised image ``[3, H, W]``.
        acc_map: Accumulated anomaly map ``[H, W]`` (or ``[1, H, W]``) at the image's resolution.
        max_ratio: Factor of the (normalised) maximum in ``T_p`` (paper: 0.8, Table 7).
        percentile: Percentile in ``T_p``, in [0, 100] (paper: 99).
        source_index: Stored in the material, for logging.

    Returns:
        The material, or ``None`` when the map is constant (no anomaly to locate) or has no finite value.

    Raises:
        ValueError: On inconsistent shapes or an out-of-range ``percentile``.
    """
    if acc_map.dim() == 3 and acc_map.shape[0] == 1:
        acc_map = acc_map[0]
    if image.dim() != 3 or acc_map.dim() != 2 or tuple(image.shape[1:]) != tuple(acc_map.shape):
        raise ValueError(
            f"expected image [C, H, W] and map [H, W], got {tuple(image.shape)} and {tuple(acc_map.shape)}"
        )
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")

    values = acc_map.detach().to("cpu", torch.float64).numpy()
    finite = np.isfinite(values)
    if not finite.any():
        return None
    low, high = values[finite].min(), values[finite].max()
    if not high > low:
        return None
    norm = (np.where(finite, values, low) - low) / (high - low)

    threshold = min(max_ratio * float(norm.max()), float(np.percentile(norm, percentile)))
    row, col = np.unravel_index(int(np.argmax(norm)), norm.shape)
    labels, _ = ndimage.label(norm >= threshold, structure=_EIGHT_CONNECTED)
    peak_label = labels[row, col]
    if peak_label == 0:  # cannot happen for a finite map (the peak is >= T_p); kept as a guard
        return None
    region = labels == peak_label
    rows, cols = np.nonzero(region)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1

    return Material(
        pixels=image.detach()[:, r0:r1, c0:c1].clone(),
        mask=torch.from_numpy(np.ascontiguousarray(region[r0:r1, c0:c1])).to(image.device),
        source_index=int(source_index),
        peak=(int(row), int(col)),
    )


def extract_materials(
    images: Tensor,
    acc_maps: Tensor,
    candidates: Tensor,
    max_ratio: float = 0.8,
    percentile: float = 99.0,
) -> list[Material]:
    """Materials of every material candidate of a mini-batch (the union of Eq. 11).

    Args:
        images: Normalised images ``[B, 3, H, W]``.
        acc_maps: Accumulated anomaly maps ``[B, H, W]``.
        candidates: Bool ``[B]``, the filter's ``h`` vector (Eq. 10).
        max_ratio: See :func:`extract_material`.
        percentile: See :func:`extract_material`.

    Returns:
        One material per candidate whose map is not degenerate, in batch order.
    """
    indices = torch.nonzero(candidates.detach().reshape(-1).bool()).flatten().tolist()
    materials = []
    for i in indices:
        material = extract_material(images[i], acc_maps[i], max_ratio, percentile, source_index=i)
        if material is not None:
            materials.append(material)
    return materials


# ------------------------------------------------------------------------------------------------
# Foreground estimation (PCA + Otsu)


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


# ------------------------------------------------------------------------------------------------
# Synthesis


def materials_per_image(iteration: int, total_iters: int, n_min: int = 1, n_max: int = 5) -> int:
    """Number of materials pasted on one synthetic image at ``iteration`` (Table 9: "from 1 to 5").

    Training is split into ``n_max - n_min + 1`` equal stages, one per value, so the count grows linearly as a
    staircase: ``n_min`` at iteration 0, ``n_max`` at the last iteration (``total_iters - 1``) and beyond.
    """
    if total_iters < 1:
        raise ValueError(f"total_iters must be >= 1, got {total_iters}")
    if not 0 <= n_min <= n_max:
        raise ValueError(f"expected 0 <= n_min <= n_max, got {n_min}, {n_max}")
    iteration = min(max(int(iteration), 0), total_iters - 1)
    if 0 < iteration == total_iters - 1:  # only matters with fewer iterations than stages
        return n_max
    stages = n_max - n_min + 1
    return min(n_min + (stages * iteration) // total_iters, n_max)


def _randint(high: int, generator: torch.Generator) -> int:
    """One integer in ``[0, high)`` drawn on the generator's own device."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One float in ``[low, high)`` drawn on the generator's own device."""
    u = float(torch.rand((1,), generator=generator, device=generator.device, dtype=torch.float64).item())
    return low + (high - low) * u


def rotate_material(
    material: Material, angle: float, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Rotate a material by ``angle`` degrees (counter-clockwise) without clipping it.

    The material is placed on a zero canvas of odd side larger than its diagonal and rotated about the canvas'
    centre pixel (``torchvision``'s ``expand=True`` rotates even-sized inputs about a point between pixels,
    which drops a row or column of the mask at 90 degrees), then cropped to the rotated mask's bounding box.
    Pixels are rotated bilinearly after a 1-pixel replicate padding (so the region's edge is not blended with
    the fill value), the mask with nearest neighbours. Multiples of 90 degrees are exact.

    Returns:
        ``(pixels [3, h', w'] float32, mask [h', w'] bool)`` on ``device`` (default: the material's).
    """
    device = material.pixels.device if device is None else device
    h, w = material.mask.shape
    side = math.ceil(math.hypot(h + 2, w + 2)) + 2
    side += 1 - side % 2  # odd: the rotation centre is a pixel centre
    top, left = (side - h - 2) // 2, (side - w - 2) // 2
    margins = (left, side - w - 2 - left, top, side - h - 2 - top)
    pixels = F.pad(material.pixels.to(device, torch.float32)[None], (1, 1, 1, 1), mode="replicate")
    pixels = F.pad(pixels, margins)[0]
    mask = F.pad(material.mask.to(device, torch.float32)[None, None], (1, 1, 1, 1))
    mask = F.pad(mask, margins)[0]
    pixels = TF.rotate(pixels, angle, interpolation=InterpolationMode.BILINEAR)
    mask = TF.rotate(mask, angle, interpolation=InterpolationMode.NEAREST)[0] > 0.5
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if rows.numel() == 0:  # an empty material: nothing to paste
        return pixels[:, :0, :0], mask[:0, :0]
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    return pixels[:, r0:r1, c0:c1], mask[r0:r1, c0:c1]


def paste_materials(
    image: Tensor,
    materials: Sequence[Material],
    foreground: Tensor,
    n: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Paste ``n`` randomly rotated materials onto the foreground of ``image`` (paper §3.5, Fig. 3).

    Each of the ``n`` pastes draws, in this order: a material (with replacement), an angle in [-180, 180)
    degrees, and a centre among the foreground pixels (any pixel when ``foreground`` is empty). The rotated
    material is centred there, clipped at the image border, and written only where its rotated mask is True;
    later pastes cover earlier ones.

    Args:
        image: Normalised image ``[3, H, W]`` (not modified).
        materials: Materials to choose from.
        foreground: Bool ``[H, W]`` where centres may fall.
        n: Number of materials to paste.
        generator: Source of all randomness.

    Returns:
        ``(synthetic image [3, H, W], mask [H, W] bool)``: the mask is the union of the pasted pixels.
    """
    if image.dim() != 3 or tuple(foreground.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"expected image [C, H, W] and foreground [H, W], got {tuple(image.shape)}, "
            f"{tuple(foreground.shape)}"
        )
    height, width = image.shape[1:]
    out = image.detach().clone()
    pasted = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    if n <= 0 or len(materials) == 0:
        return out, pasted

    centres = torch.nonzero(foreground.detach().to(image.device).reshape(-1)).flatten()
    if centres.numel() == 0:
        centres = torch.arange(height * width, device=image.device)

    for _ in range(n):
        material = materials[_randint(len(materials), generator)]
        angle = _uniform(-180.0, 180.0, generator)
        centre = int(centres[_randint(centres.numel(), generator)])
        cy, cx = divmod(centre, width)

        pixels, mask = rotate_material(material, angle, device=image.device)
        h, w = mask.shape
        top, left = cy - h // 2, cx - w // 2
        y0, y1, x0, x1 = max(top, 0), min(top + h, height), max(left, 0), min(left + w, width)
        if y0 >= y1 or x0 >= x1:
            continue
        region = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        patch = pixels[:, y0 - top : y1 - top, x0 - left : x1 - left].to(out.dtype)
        out[:, y0:y1, x0:x1] = torch.where(region, patch, out[:, y0:y1, x0:x1])
        pasted[y0:y1, x0:x1] |= region
    return out, pasted


def synthesize_batch(
    kept_images: Tensor,
    kept_foreground: Tensor,
    materials: Sequence[Material],
    count: int,
    n_per_image: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Build ``count`` synthetic anomalies from randomly chosen kept images (paper §3.5, Eq. 13).

    Kept images are drawn with replacement (the paper makes one synthetic image per material candidate of the
    batch), then ``n_per_image`` materials are pasted on each with :func:`paste_materials`.

    Args:
        kept_images: Normalised kept images ``[N, 3, H, W]``.
        kept_foreground: Their foreground masks, bool ``[N, H, W]``.
        materials: Materials to paste.
        count: Number of synthetic images.
        n_per_image: Materials per synthetic image (see :func:`materials_per_image`).
        generator: Source of all randomness.

    Returns:
        ``(synthetic [count, 3, H, W], source_index [count] long, masks [count, H, W] bool)``;
        ``source_index`` indexes ``kept_images``: the clean image whose encoder features are the restoration
        target. Empty tensors (leading size 0) when there are no materials, no kept images or ``count <= 0``.
    """
    if kept_images.dim() != 4 or tuple(kept_foreground.shape) != (
        kept_images.shape[0],
        *kept_images.shape[2:],
    ):
        raise ValueError(
            f"expected images [N, C, H, W] and foreground [N, H, W], got {tuple(kept_images.shape)}, "
            f"{tuple(kept_foreground.shape)}"
        )
    device = kept_images.device
    n_kept = kept_images.shape[0]
    if count <= 0 or n_kept == 0 or len(materials) == 0:
        return (
            kept_images.new_empty((0, *kept_images.shape[1:])),
            torch.empty(0, dtype=torch.long, device=device),
            torch.empty((0, *kept_images.shape[2:]), dtype=torch.bool, device=device),
        )

    sources = [_randint(n_kept, generator) for _ in range(count)]
    images, masks = [], []
    for i in sources:
        synthetic, mask = paste_materials(
            kept_images[i], materials, kept_foreground[i], n_per_image, generator
        )
        images.append(synthetic)
        masks.append(mask)
    return torch.stack(images), torch.tensor(sources, dtype=torch.long, device=device), torch.stack(masks)


# ------------------------------------------------------------------------------------------------
# Material bank


class MaterialBank:
    """FIFO of the most recent materials, so synthesis can go on in batches without a new candidate.

    The paper builds the bank from the current mini-batch only ("For each selected anomaly in the minibatch,
    we construct an anomaly material bank"); keeping materials across iterations is this project's choice,
    since high-confidence candidates (``tau = 8``) are rare. ``capacity = 0`` reproduces the paper: each
    :meth:`add` replaces the content with that batch's materials (an empty list empties the bank), so the
    trainer must call :meth:`add` once per iteration. With ``capacity > 0``, :meth:`add` appends and the
    oldest materials beyond ``capacity`` are dropped.

    Args:
        capacity: Maximum number of materials kept across iterations; 0 means "current batch only".
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._items: deque[Material] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def materials(self) -> list[Material]:
        """The stored materials, oldest first."""
        return list(self._items)

    def add(self, materials: Iterable[Material]) -> None:
        """Add one iteration's materials (see the class docstring for ``capacity = 0``)."""
        new = list(materials)
        if self.capacity == 0:
            self._items = deque(new)
            return
        self._items.extend(new)
        while len(self._items) > self.capacity:
            self._items.popleft()

    def clear(self) -> None:
        """Remove every material."""
        self._items.clear()

    def sample(self, n: int, generator: torch.Generator) -> list[Material]:
        """``n`` materials drawn uniformly with replacement; empty when the bank is empty or ``n <= 0``."""
        if n <= 0 or not self._items:
            return []
        return [self._items[_randint(len(self._items), generator)] for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """Tensors (on CPU) and plain values only, loadable with ``torch.load(weights_only=True)``."""
        items = list(self._items)
        return {
            "capacity": self.capacity,
            "pixels": [m.pixels.detach().cpu().clone() for m in items],
            "masks": [m.mask.detach().cpu().clone() for m in items],
            "source_index": torch.tensor([m.source_index for m in items], dtype=torch.long),
            "peak": torch.tensor([list(m.peak) for m in items], dtype=torch.long).reshape(-1, 2),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the exact content saved by :meth:`state_dict` (materials stay on CPU until pasted)."""
        pixels, masks = list(state["pixels"]), list(state["masks"])
        source_index, peak = state["source_index"].tolist(), state["peak"].tolist()
        if not len(pixels) == len(masks) == len(source_index) == len(peak):
            raise ValueError("inconsistent material bank state")
        self.capacity = int(state["capacity"])
        self._items = deque(
            Material(pixels=p, mask=m.bool(), source_index=int(s), peak=(int(r), int(c)))
            for p, m, s, (r, c) in zip(pixels, masks, source_index, peak, strict=True)
        )
