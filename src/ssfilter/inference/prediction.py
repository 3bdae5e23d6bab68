"""The result of predicting one image, shared by the torch and the torch-free (ONNX) predictors.

numpy and scipy only: :mod:`ssfilter.inference.onnx_predictor` must run without torch.
:meth:`Prediction.to_record` is the one JSON record of a prediction, written by ``ssfilter predict``
(``predictions.json``/``.csv``) and answered by any other front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssfilter.inference.calibration import Calibration
from ssfilter.inference.regions import Region, find_regions
from ssfilter.inference.visualize import map_to_original

__all__ = ["RECORD_FIELDS", "Prediction", "decide"]

#: The flat fields of a prediction record (:meth:`Prediction.to_record`), in order: the columns of
#: ``predictions.csv``. The JSON record has these plus ``regions`` (the list of region dicts).
RECORD_FIELDS = (
    "path",
    "raw_score",
    "score",
    "label",
    "threshold",
    "overlay",
    "mask",
    "width",
    "height",
    "n_regions",
    "largest_region_area",
)


@dataclass
class Prediction:
    """The result for one image.

    Attributes:
        path: The image file.
        raw_score: Model score (mean of the top 1% map values).
        score: Normalised score in [0, 1]; 0.5 is the threshold.
        label: ``"NG"`` when ``raw_score >= threshold``, else ``"OK"``.
        threshold: The raw image threshold used.
        width: Original image width.
        height: Original image height.
        raw_map: ``[S, S]`` anomaly map on the model's crop (``S = data.eval_size``).
        map: ``raw_map`` on the run's fixed [0, 1] scale (0.5 = pixel threshold).
        regions: The defect regions in original-image pixels, largest first
            (:func:`~ssfilter.inference.regions.find_regions` on :meth:`original_map`). Only NG images
            have regions: an OK image is defect-free by decision, even if a few pixels pass the pixel
            threshold (they still show in its mask). An NG image may have none when no pixel does.
    """

    path: str
    raw_score: float
    score: float
    label: str
    threshold: float
    width: int
    height: int
    raw_map: np.ndarray = field(repr=False)
    map: np.ndarray = field(repr=False)
    regions: list[Region] = field(default_factory=list)

    def original_map(self, resize: int, crop: int) -> np.ndarray:
        """The normalised map at the original image size (0 outside the model's crop).

        Args:
            resize: The run's ``data.resize``.
            crop: The run's ``data.crop``.
        """
        return map_to_original(self.map, self.width, self.height, resize, crop)

    def to_record(self, overlay: str | None = None, mask: str | None = None) -> dict[str, Any]:
        """The prediction as a JSON-ready dict: the :data:`RECORD_FIELDS` plus ``regions``.

        ``n_regions`` and ``largest_region_area`` (pixels, 0 without regions) summarise ``regions``, a
        list of :meth:`Region.to_dict <ssfilter.inference.regions.Region.to_dict>` dicts, largest first.

        Args:
            overlay: File name of the written overlay, if any.
            mask: File name of the written mask, if any.
        """
        return {
            "path": self.path,
            "raw_score": self.raw_score,
            "score": self.score,
            "label": self.label,
            "threshold": self.threshold,
            "overlay": overlay,
            "mask": mask,
            "width": self.width,
            "height": self.height,
            "n_regions": len(self.regions),
            "largest_region_area": max((r.area for r in self.regions), default=0),
            "regions": [r.to_dict() for r in self.regions],
        }


def decide(
    calibration: Calibration,
    paths: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    scores: np.ndarray,
    maps: np.ndarray,
    *,
    resize: int,
    crop: int,
) -> list[Prediction]:
    """One :class:`Prediction` per image of a batch: raw outputs turned into decisions by the calibration.

    NG images also get their defect regions, found on the map at their original size.

    Args:
        calibration: The run's thresholds and fixed scales.
        paths: The images' files.
        sizes: Their original ``(width, height)``.
        scores: Raw image scores ``[B]``.
        maps: Raw maps ``[B, S, S]``.
        resize: The run's ``data.resize`` (to map the maps back onto the original images).
        crop: The run's ``data.crop``.
    """
    norm_scores = calibration.normalize_scores(scores)
    labels = calibration.label(scores)
    norm_maps = calibration.normalize_maps(maps)
    preds = []
    for i, (path, (width, height)) in enumerate(zip(paths, sizes, strict=True)):
        pred = Prediction(
            path=path,
            raw_score=float(scores[i]),
            score=float(norm_scores[i]),
            label=labels[i],
            threshold=calibration.image_threshold,
            width=width,
            height=height,
            raw_map=maps[i],
            map=norm_maps[i],
        )
        if pred.label == "NG":
            pred.regions = find_regions(pred.original_map(resize, crop))
        preds.append(pred)
    return preds
