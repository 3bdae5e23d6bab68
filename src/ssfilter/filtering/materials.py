"""Material extraction (paper §3.5, Eq. 11): anomalous content cut out of the in-batch filter's candidates.

During SSFilter training the in-batch filter marks some images of a mini-batch as high-confidence anomalies
("material candidates", Eq. 10). :func:`extract_material` cuts the most anomalous connected region out of a
candidate, using its accumulated MC-dropout anomaly map ``M_acc = sum_k M^k`` (Eq. 4) and the threshold
``T_p`` of Eq. 11. The materials are later pasted onto kept images (:mod:`ssfilter.filtering.synthesis`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["Material", "extract_material", "extract_materials"]

#: Structuring elements of :func:`scipy.ndimage.label` by connectivity: 8 (diagonal neighbours join a
#: region; ssfilter's default) or 4 (scipy's default, what the official code gets).
_STRUCTURES: dict[int, np.ndarray] = {
    8: np.ones((3, 3), dtype=bool),
    4: ndimage.generate_binary_structure(2, 1),
}


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


def extract_material(
    image: Tensor,
    acc_map: Tensor,
    max_ratio: float = 0.8,
    percentile: float = 99.0,
    source_index: int = -1,
    connectivity: int = 8,
) -> Material | None:
    """Cut the connected anomalous region around the peak of ``acc_map`` out of ``image`` (Eq. 11).

    The map is min-max normalised to [0, 1]; ``T_p = min(max_ratio * max, percentile-th percentile)`` (the
    percentile caps the threshold so the material is never a handful of pixels, paper Table 7); the region is
    the 8-connected (``connectivity``) component of ``map >= T_p`` that contains the peak (first arg-max on
    ties). Non-finite map values are treated as the map's minimum.

    Args:
        image: Normalised image ``[3, H, W]``.
        acc_map: Accumulated anomaly map ``[H, W]`` (or ``[1, H, W]``) at the image's resolution.
        max_ratio: Factor of the (normalised) maximum in ``T_p`` (paper: 0.8, Table 7).
        percentile: Percentile in ``T_p``, in [0, 100] (paper: 99).
        source_index: Stored in the material, for logging.
        connectivity: 8 (default) or 4 neighbours join a region (``benchmarks.bench_material_choices``
            measures the difference).

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
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")

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
    labels, _ = ndimage.label(norm >= threshold, structure=_STRUCTURES[connectivity])
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
        candidates: Bool ``[B]``, the in-batch filter's ``h`` vector (Eq. 10).
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
