"""The result of predicting one image, shared by the torch and the torch-free (ONNX) predictors.

numpy only: :mod:`ssfilter.inference.onnx_predictor` must run without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ssfilter.inference.calibration import Calibration
from ssfilter.inference.visualize import map_to_original

__all__ = ["Prediction", "decide"]


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

    def original_map(self, resize: int, crop: int) -> np.ndarray:
        """The normalised map at the original image size (0 outside the model's crop).

        Args:
            resize: The run's ``data.resize``.
            crop: The run's ``data.crop``.
        """
        return map_to_original(self.map, self.width, self.height, resize, crop)


def decide(
    calibration: Calibration,
    paths: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    scores: np.ndarray,
    maps: np.ndarray,
) -> list[Prediction]:
    """One :class:`Prediction` per image of a batch: raw outputs turned into decisions by the calibration.

    Args:
        calibration: The run's thresholds and fixed scales.
        paths: The images' files.
        sizes: Their original ``(width, height)``.
        scores: Raw image scores ``[B]``.
        maps: Raw maps ``[B, S, S]``.
    """
    norm_scores = calibration.normalize_scores(scores)
    labels = calibration.label(scores)
    norm_maps = calibration.normalize_maps(maps)
    return [
        Prediction(
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
        for i, (path, (width, height)) in enumerate(zip(paths, sizes, strict=True))
    ]
