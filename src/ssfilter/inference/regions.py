"""Defect regions: the connected components of a defect mask, with their boxes, areas and scores.

numpy and scipy only (no torch): :mod:`ssfilter.inference.onnx_predictor` uses it through
:func:`ssfilter.inference.prediction.decide`.

The defect mask is the normalised anomaly map at or above 0.5, the run's calibrated pixel threshold
(:meth:`ssfilter.inference.calibration.Calibration.normalize_maps`); :func:`defect_mask` is that rule,
used by both :func:`find_regions` and the ``<name>_mask.png`` files
(:func:`ssfilter.inference.visualize.mask_image`), so a region is exactly a blob of the mask file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["CONNECTIVITY", "PIXEL_THRESHOLD", "Region", "defect_mask", "find_regions"]

#: Normalised map value at and above which a pixel is defective (the calibrated pixel threshold).
PIXEL_THRESHOLD = 0.5

#: Neighbourhood joining mask pixels into one region: all 8 neighbours (side and corner). A thin
#: diagonal scratch touches itself only at pixel corners; with 4-connectivity it would fall apart into
#: many one-pixel "defects".
CONNECTIVITY = 8
_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Region:
    """One defect region of an image, in original-image pixels.

    Attributes:
        x0: Left column of the bounding box (inclusive).
        y0: Top row of the bounding box (inclusive).
        x1: Right edge of the bounding box (exclusive: the box is columns ``x0 .. x1 - 1``).
        y1: Bottom edge of the bounding box (exclusive: the box is rows ``y0 .. y1 - 1``).
        area: Number of defective pixels in the region (not the box's area).
        area_percent: ``area`` in percent of the whole image's pixels.
        peak_score: Highest normalised map value in the region (in [0.5, 1]).
        mean_score: Mean normalised map value over the region's pixels.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    area_percent: float
    peak_score: float
    mean_score: float

    def to_dict(self) -> dict[str, Any]:
        """The region as a JSON-ready dict (the keys are the attribute names)."""
        return asdict(self)


def defect_mask(norm_map: np.ndarray) -> np.ndarray:
    """Boolean defect mask of a normalised map: ``map >= 0.5`` (NaN is not defective).

    Args:
        norm_map: Normalised map, any shape.
    """
    return np.asarray(norm_map, dtype=np.float32) >= PIXEL_THRESHOLD


def find_regions(norm_map: np.ndarray) -> list[Region]:
    """The defect regions of one normalised map: connected components of :func:`defect_mask`.

    Components are joined with :data:`CONNECTIVITY` (8 neighbours). Coordinates and areas are those of
    the map given, so pass the map at the original image size
    (:meth:`ssfilter.inference.prediction.Prediction.original_map`) to get original-image pixels.

    Args:
        norm_map: ``[height, width]`` normalised map.

    Returns:
        The regions, largest area first (ties: top-most, then left-most box first); empty when no pixel
        reaches the threshold.

    Raises:
        ValueError: when the map is not 2-D or is empty.
    """
    values = np.asarray(norm_map, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"expected a non-empty 2-D map, got shape {values.shape}")
    mask = defect_mask(values)
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count == 0:
        return []
    # statistics over the defective pixels only, grouped by label (ndimage.maximum is much slower)
    ids = labels[mask] - 1
    inside = values[mask]
    areas = np.bincount(ids, minlength=count)
    sums = np.bincount(ids, weights=inside.astype(np.float64), minlength=count)
    starts = np.concatenate(([0], np.cumsum(areas)[:-1]))
    peaks = np.maximum.reduceat(inside[np.argsort(ids, kind="stable")], starts)
    total = float(values.size)
    regions = [
        Region(
            x0=int(box[1].start),
            y0=int(box[0].start),
            x1=int(box[1].stop),
            y1=int(box[0].stop),
            area=int(areas[i]),
            area_percent=100.0 * float(areas[i]) / total,
            peak_score=float(peaks[i]),
            mean_score=float(sums[i] / areas[i]),
        )
        for i, box in enumerate(ndimage.find_objects(labels))
    ]
    regions.sort(key=lambda r: (-r.area, r.y0, r.x0))
    return regions
