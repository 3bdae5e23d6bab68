"""The decision thresholds and fixed score / heat-map scales of a trained run (``RUN/calibration.json``).

Raw anomaly scores are distances with no natural unit: a model trained on bottles and one trained on
screws put their normal images at different values. A :class:`Calibration` turns them into something a
user can act on:

* ``image_threshold``: an image is **NG** when its raw score is ``>= image_threshold``, else **OK**;
* ``normalize_scores``: raw scores to [0, 1] with the threshold at exactly 0.5;
* ``pixel_threshold`` and ``normalize_maps``: raw anomaly maps to [0, 1] on ONE fixed scale for every
  image of the run (never a per-image min-max, which would paint the noise of a good image as brightly
  as a real defect), with the pixel threshold at exactly 0.5, so ``normalized_map >= 0.5`` is the
  defect mask.

Each normalisation is piecewise linear, ``[min, threshold] -> [0, 0.5]`` and ``[threshold, max] -> [0.5, 1]``,
clipped to [0, 1]. This module holds the record, how it is applied and its JSON file; how the thresholds
are chosen (the robust unsupervised rule and the labelled F1-max rule) lives in
:mod:`ssfilter.inference.calibration_rules`.

This module imports numpy and the standard library only (no torch), so torch-free runtimes such as
the ONNX predictor can import it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssfilter.errors import CalibrationError
from ssfilter.io import atomic_write_json
from ssfilter.runfolder import CALIBRATION_FILE

__all__ = ["CALIBRATION_VERSION", "Calibration", "Label"]

#: On-disk format of ``calibration.json``; a newer file gives a clear error.
CALIBRATION_VERSION = 1
#: The decision on one image.
Label = Literal["OK", "NG"]
_BELOW_HALF64 = float(np.nextafter(np.float64(0.5), np.float64(0.0)))
_BELOW_HALF32 = np.nextafter(np.float32(0.5), np.float32(0.0))


@dataclass
class Calibration:
    """Thresholds and fixed normalisation scales of one run.

    Attributes:
        image_threshold: Raw image score at and above which an image is NG.
        score_min: Raw score mapped to normalised 0.
        score_max: Raw score mapped to normalised 1.
        pixel_threshold: Raw map value at and above which a pixel belongs to the defect mask.
        map_min: Raw map value mapped to normalised 0 (the same for every image of the run).
        map_max: Raw map value mapped to normalised 1.
        rule: How the thresholds were chosen, in words.
        source: ``"training"`` (unsupervised rule) or ``"validation"`` (labelled F1-max).
        n_images: Number of images the calibration was computed from.
        map_size: Side of the square maps the pixel values refer to (``data.eval_size``), if known.
        params: Parameters of the rule (e.g. ``{"k": 4.0}``) and statistics worth keeping.
    """

    image_threshold: float
    score_min: float
    score_max: float
    pixel_threshold: float
    map_min: float
    map_max: float
    rule: str
    source: str
    n_images: int
    map_size: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ("image_threshold", "score_min", "score_max", "pixel_threshold", "map_min", "map_max")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise CalibrationError(f"calibration field {name!r} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise CalibrationError(f"calibration field {name!r} must be finite, got {value}")
            setattr(self, name, value)
        if not self.score_min <= self.image_threshold <= self.score_max:
            raise CalibrationError(
                f"need score_min <= image_threshold <= score_max, got {self.score_min} <= "
                f"{self.image_threshold} <= {self.score_max}"
            )
        if not self.map_min <= self.pixel_threshold <= self.map_max:
            raise CalibrationError(
                f"need map_min <= pixel_threshold <= map_max, got {self.map_min} <= "
                f"{self.pixel_threshold} <= {self.map_max}"
            )
        if self.source not in ("training", "validation", "manual"):
            raise CalibrationError(
                f"calibration source must be 'training', 'validation' or 'manual', got {self.source!r}"
            )
        self.n_images = int(self.n_images)
        self.map_size = None if self.map_size is None else int(self.map_size)

    # -- applying it --------------------------------------------------------------------------------------

    def normalize_scores(self, raw: np.ndarray | Sequence[float]) -> np.ndarray:
        """Raw image scores to [0, 1] (float64) with ``image_threshold`` mapped to exactly 0.5.

        Piecewise linear: ``[score_min, threshold] -> [0, 0.5]`` and ``[threshold, score_max] -> [0.5, 1]``,
        clipped. A value is ``>= 0.5`` exactly when the raw score is ``>= image_threshold`` (guaranteed
        even under rounding); NaN maps to 1 (treated as anomalous).

        Args:
            raw: Raw scores, any shape.
        """
        return _normalize(raw, self.score_min, self.image_threshold, self.score_max, np.float64)

    def normalize_maps(self, raw: np.ndarray) -> np.ndarray:
        """Raw anomaly maps to [0, 1] (float32) on the run's fixed scale, ``pixel_threshold`` at 0.5.

        The mapping does not depend on the other images of a batch, or on the image itself: the same raw
        value always gives the same normalised value. ``normalize_maps(m) >= 0.5`` equals :meth:`mask`.

        Args:
            raw: Raw maps, any shape (typically ``[N, H, W]``).
        """
        return _normalize(raw, self.map_min, self.pixel_threshold, self.map_max, np.float32)

    def label(self, raw_scores: np.ndarray | Sequence[float]) -> list[Label]:
        """``"NG"`` for raw scores ``>= image_threshold`` (normalised ``>= 0.5``), else ``"OK"``.

        Args:
            raw_scores: Raw image scores, 1-D.
        """
        norm = self.normalize_scores(np.asarray(raw_scores, dtype=np.float64).reshape(-1))
        return ["NG" if v >= 0.5 else "OK" for v in norm]

    def mask(self, raw_maps: np.ndarray) -> np.ndarray:
        """Boolean defect masks: raw map values ``>= pixel_threshold`` (normalised ``>= 0.5``).

        Args:
            raw_maps: Raw maps, any shape.
        """
        return self.normalize_maps(raw_maps) >= 0.5

    def with_threshold(self, image_threshold: float) -> Calibration:
        """A copy with a user-chosen image threshold (``--threshold``); the pixel scale is kept.

        The score range is kept when it still contains the new threshold; otherwise it is re-centred on
        it with the same half-width, so the threshold still maps to 0.5.

        Args:
            image_threshold: The raw score threshold to use.
        """
        thr = float(image_threshold)
        if not math.isfinite(thr):
            raise CalibrationError(f"threshold must be a finite number, got {image_threshold}")
        lo, hi = self.score_min, self.score_max
        if not lo < thr < hi:
            half = max(self.image_threshold - lo, hi - self.image_threshold, abs(thr) * 1e-6, 1e-12)
            lo, hi = thr - half, thr + half
        return replace(
            self,
            image_threshold=thr,
            score_min=lo,
            score_max=hi,
            source="manual",
            rule=f"image threshold set by the user to {thr:.6g} (was: {self.rule})",
            params={**self.params, "calibrated_image_threshold": self.image_threshold},
        )

    # -- persistence --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration.json`` content (with its ``version`` key)."""
        return {"version": CALIBRATION_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "calibration") -> Calibration:
        """Build a calibration from :meth:`to_dict` output, with clear errors for malformed input.

        Args:
            raw: The parsed JSON object.
            where: Name of the source used in error messages (usually the file path).

        Raises:
            CalibrationError: when keys are missing or unknown, values have the wrong type, or the
                version is newer than this ssfilter understands.
        """
        if not isinstance(raw, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        data = dict(raw)
        version = data.pop("version", None)
        if not isinstance(version, int) or isinstance(version, bool):
            raise CalibrationError(f"{where}: missing or invalid 'version' key (got {version!r})")
        if version > CALIBRATION_VERSION:
            raise CalibrationError(
                f"{where}: calibration format {version} is newer than this ssfilter reads "
                f"({CALIBRATION_VERSION}); upgrade ssfilter or recompute it with `ssfilter calibrate`"
            )
        specs = cls.__dataclass_fields__
        known = set(specs)
        required = {n for n, f in specs.items() if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        unknown = sorted(set(data) - known)
        if missing or unknown:
            raise CalibrationError(
                f"{where}: malformed calibration (missing keys: {missing or 'none'}; unknown keys: "
                f"{unknown or 'none'}); recompute it with `ssfilter calibrate --run RUN`"
            )
        if not isinstance(data.get("params", {}), dict):
            raise CalibrationError(f"{where}: 'params' must be an object")
        for name in ("rule", "source"):
            if not isinstance(data[name], str):
                raise CalibrationError(f"{where}: {name!r} must be a string, got {data[name]!r}")
        for name in ("n_images", "map_size"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise CalibrationError(f"{where}: {name!r} must be an integer, got {value!r}")
        try:
            return cls(**data)
        except CalibrationError as err:
            raise CalibrationError(f"{where}: {err}") from None

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        """Write ``run_dir/calibration.json`` atomically and return its path.

        Args:
            run_dir: The run folder.
        """
        path = Path(run_dir) / CALIBRATION_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> Calibration:
        """Read ``run_dir/calibration.json`` (or a calibration file given directly).

        Args:
            run_dir: The run folder, or the path of a calibration JSON file.

        Raises:
            FileNotFoundError: when the file does not exist (the message says how to create it).
            CalibrationError: when it is not valid JSON or not a valid calibration.
        """
        given = Path(run_dir)
        path = given if given.is_file() else given / CALIBRATION_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: this run has no calibration; compute it with "
                f"`ssfilter calibrate --run {given}`"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CalibrationError(
                f"{path} is not valid JSON ({err}); recompute it with `ssfilter calibrate --run RUN`"
            ) from None
        return cls.from_dict(raw, where=str(path))


def _normalize(raw: Any, lo: float, thr: float, hi: float, dtype: type) -> np.ndarray:
    """Piecewise-linear ``[lo, thr] -> [0, 0.5]``, ``[thr, hi] -> [0.5, 1]``, clipped; NaN -> 1."""
    x = np.asarray(raw, dtype=np.float64)
    below = x < thr
    out = np.empty_like(x)
    lower_span = thr - lo
    upper_span = hi - thr
    if lower_span > 0:
        out[below] = 0.5 * (x[below] - lo) / lower_span
    else:
        out[below] = 0.0
    above = ~below
    if upper_span > 0:
        out[above] = 0.5 + 0.5 * (x[above] - thr) / upper_span
    else:
        out[above] = 1.0
    out = np.clip(out, 0.0, 1.0)
    out[np.isnan(x)] = 1.0
    out = out.astype(dtype)
    # Rounding must never push a value below the threshold up to 0.5 (labels and masks use >= 0.5).
    cap = _BELOW_HALF32 if dtype == np.float32 else _BELOW_HALF64
    np.minimum(out, cap, out=out, where=below)
    return out
