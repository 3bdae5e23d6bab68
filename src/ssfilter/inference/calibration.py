"""Decision thresholds and fixed score / heat-map scales of a trained run (``RUN/calibration.json``).

Raw anomaly scores are distances with no natural unit: a model trained on bottles and one trained on
screws put their normal images at different values. A :class:`Calibration` turns them into something a
user can act on:

* ``image_threshold``: an image is **NG** when its raw score is ``>= image_threshold``, else **OK**;
* ``normalize_scores``: raw scores to [0, 1] with the threshold at exactly 0.5;
* ``pixel_threshold`` and ``normalize_maps``: raw anomaly maps to [0, 1] on ONE fixed scale for every
  image of the run (never a per-image min-max, which would paint the noise of a good image as brightly
  as a real defect), with the pixel threshold at exactly 0.5, so ``normalized_map >= 0.5`` is the
  defect mask.

Two ways to choose the thresholds:

**Unsupervised** (:func:`calibrate_unsupervised`, the default; run automatically at the end of training).
Users have no labels, and a noisy training set may hold some defective images, so the rule uses robust
statistics that a minority of outliers cannot move. With ``s`` the raw scores of the training images:

    image_threshold = median(s) + k * 1.4826 * MAD(s)        (k = ``calibration.k``, default 4)

``1.4826 * MAD`` estimates the standard deviation of the normal images' scores even when up to half of
the images are anomalous. The pixel threshold is the same rule applied to each training image's
*largest* map value: ``median(m) + pixel_k * 1.4826 * MAD(m)`` (``calibration.pixel_k``, default 4),
i.e. a pixel is marked when it is clearly higher than the hottest pixel of a typical good image, so the
masks of normal-looking images stay empty. If the MAD is zero (e.g. identical scores) the standard
deviation is used instead, and if that is zero too a tiny relative margin. The training images whose
score is below the image threshold are the ones the rule *keeps* as normal; the lower ends of the scales
are the smallest kept score (``score_min``) and the median of the kept images' smallest map values
(``map_min``), and the upper ends are symmetric to them about the thresholds, so each normalisation is a
single straight line ``0.5 + 0.5 * (raw - threshold) / (threshold - min)``, clipped to [0, 1].

Training images are reconstructed slightly better than unseen good images, which is why ``k`` is larger
than the textbook 3: it leaves room for that gap.

**Labelled** (:func:`calibrate_from_labels`, ``ssfilter calibrate --val DIR``): the image threshold that
maximises F1 on a labelled validation set (``score >= threshold`` predicted defective, the convention of
:func:`ssfilter.evaluation.metrics.f1_max_threshold`, which computes it), and, when ground-truth masks
exist, the pixel threshold that maximises pixel F1.

This module imports numpy and the standard library only (no torch), so torch-free runtimes such as
the ONNX predictor can import it; only :func:`calibrate_from_labels` imports the (torch-free) metrics
module, when called.
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

__all__ = [
    "CALIBRATION_VERSION",
    "DEFAULT_K",
    "DEFAULT_PIXEL_K",
    "MAD_TO_SIGMA",
    "Calibration",
    "calibrate_from_labels",
    "calibrate_unsupervised",
    "map_extrema",
    "robust_threshold",
]

#: On-disk format of ``calibration.json``; a newer file gives a clear error.
CALIBRATION_VERSION = 1
#: Factor turning a median absolute deviation into a standard deviation for normally distributed data.
MAD_TO_SIGMA = 1.4826
#: Default robust-sigma multiplier of the image threshold (``calibration.k``).
DEFAULT_K = 4.0
#: Default robust-sigma multiplier of the pixel threshold (``calibration.pixel_k``).
DEFAULT_PIXEL_K = 4.0

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


# -- rules ----------------------------------------------------------------------------------------------


def robust_threshold(values: np.ndarray | Sequence[float], k: float) -> tuple[float, dict[str, float]]:
    """``median + k * 1.4826 * MAD`` of ``values``, with fallbacks when the MAD is zero.

    Args:
        values: 1-D sample (finite values only are used).
        k: Multiplier of the robust standard deviation.

    Returns:
        ``(threshold, stats)`` with ``stats = {"median", "mad", "sigma", "sigma_source"...}``.

    Raises:
        CalibrationError: when ``values`` holds no finite number.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise CalibrationError("no finite values to calibrate from")
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    sigma = MAD_TO_SIGMA * mad
    source = "mad"
    if sigma <= 0:
        sigma, source = float(np.std(x)), "std"
    if sigma <= 0:
        sigma, source = max(abs(med), 1.0) * 1e-6, "epsilon"
    return med + float(k) * sigma, {"median": med, "mad": mad, "sigma": sigma, "sigma_from": source}


def map_extrema(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image smallest and largest map values (the only map statistics calibration needs).

    Computing these batch by batch keeps calibration memory independent of the training-set size.

    Args:
        maps: ``[N, ...]`` raw maps.

    Returns:
        ``(minima, maxima)``, each ``[N]`` float64.
    """
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    return flat.min(axis=1), flat.max(axis=1)


def _symmetric_max(low: float, thr: float) -> float:
    """Upper end of a scale symmetric to ``low`` about ``thr`` (a tiny span when they coincide)."""
    return thr + max(thr - low, abs(thr) * 1e-6, 1e-12)


def calibrate_unsupervised(
    scores: np.ndarray | Sequence[float],
    map_minima: np.ndarray | Sequence[float] | None = None,
    map_maxima: np.ndarray | Sequence[float] | None = None,
    *,
    k: float = DEFAULT_K,
    pixel_k: float = DEFAULT_PIXEL_K,
    map_size: int | None = None,
    source: str = "training",
) -> Calibration:
    """Thresholds from unlabelled (mostly normal) images by the module's robust rule.

    ``image_threshold = median(s) + k * 1.4826 * MAD(s)`` over the raw scores; images below it are
    kept as normal. ``pixel_threshold = median(x) + pixel_k * 1.4826 * MAD(x)`` over the per-image map
    maxima ``x`` of all images (robust to the anomalous minority). ``score_min`` is the smallest kept
    score and ``map_min`` the median of the kept images' map minima; the upper ends are symmetric.
    Without map statistics the pixel scale falls back to the score scale (the score is a mean of top
    pixels, so the two are on the same axis).

    Args:
        scores: Raw image scores ``[N]``.
        map_minima: Per-image smallest map values ``[N]`` (see :func:`map_extrema`).
        map_maxima: Per-image largest map values ``[N]``.
        k: Robust-sigma multiplier of the image threshold.
        pixel_k: Robust-sigma multiplier of the pixel threshold.
        map_size: Side of the maps, recorded for consumers.
        source: Recorded origin of the images (``"training"`` by default).

    Raises:
        CalibrationError: when there are no finite scores or the map statistics do not match.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    thr, stats = robust_threshold(s, k)
    kept = np.isfinite(s) & (s < thr)
    if not kept.any():
        kept = np.isfinite(s)
    score_min = float(s[kept].min())
    params: dict[str, Any] = {
        "k": float(k),
        "pixel_k": float(pixel_k),
        "score_median": stats["median"],
        "score_sigma": stats["sigma"],
        "n_kept": int(kept.sum()),
    }
    if map_minima is not None and map_maxima is not None:
        mins = np.asarray(map_minima, dtype=np.float64).reshape(-1)
        maxs = np.asarray(map_maxima, dtype=np.float64).reshape(-1)
        if mins.shape != s.shape or maxs.shape != s.shape:
            raise CalibrationError(
                f"need one map minimum and maximum per score, got {mins.size}, {maxs.size} for {s.size}"
            )
        pixel_thr, pstats = robust_threshold(maxs, pixel_k)
        finite_min = mins[kept & np.isfinite(mins)]
        map_min = float(np.median(finite_min)) if finite_min.size else pstats["median"]
        map_min = min(map_min, pixel_thr)
        params.update({"map_max_median": pstats["median"], "map_max_sigma": pstats["sigma"]})
        pixel_rule = (
            f"pixel threshold = median + {pixel_k:g} * 1.4826 * MAD of the per-image maximum map values"
        )
    else:
        pixel_thr, map_min = thr, score_min
        pixel_rule = "pixel threshold = image threshold (no map statistics given)"
    rule = (
        f"unsupervised: image threshold = median + {k:g} * 1.4826 * MAD of the raw scores of {s.size} "
        f"{source} images ({int(kept.sum())} below it kept as normal); {pixel_rule}"
    )
    return Calibration(
        image_threshold=thr,
        score_min=min(score_min, thr),
        score_max=_symmetric_max(min(score_min, thr), thr),
        pixel_threshold=pixel_thr,
        map_min=map_min,
        map_max=_symmetric_max(map_min, pixel_thr),
        rule=rule,
        source=source,
        n_images=int(s.size),
        map_size=map_size,
        params=params,
    )


def _f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, f1)`` maximising F1 with ``score >= threshold`` predicted positive.

    Delegates to :func:`ssfilter.evaluation.metrics.f1_max_threshold` (the project's one F1max, exact
    and memory-lean for pixel sets; imported lazily, it needs scipy/sklearn but not torch). Among equal
    F1 values the lowest threshold wins.

    Args:
        scores: Raw scores, any shape (flattened).
        labels: 0/1 (or boolean) ground truth of the same size.

    Raises:
        CalibrationError: when the sizes differ or both classes are not present.
    """
    from ssfilter.evaluation.metrics import f1_max_threshold

    y = np.asarray(labels).reshape(-1).astype(bool)
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size != x.size:
        raise CalibrationError(f"{x.size} scores but {y.size} labels")
    if y.all() or not y.any():
        raise CalibrationError("F1-max calibration needs both normal and defective examples")
    if not np.isfinite(x).all():
        raise CalibrationError("F1-max calibration needs finite scores")
    best = f1_max_threshold(x, y)
    assert best is not None  # both classes are present
    f1, threshold = best
    return float(threshold), float(f1)


def calibrate_from_labels(
    scores: np.ndarray | Sequence[float],
    labels: np.ndarray | Sequence[int],
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    *,
    pixel_k: float = DEFAULT_PIXEL_K,
    map_size: int | None = None,
) -> Calibration:
    """F1-max thresholds from a labelled validation set.

    The image threshold maximises image-level F1 (``score >= threshold`` is NG). With ``maps`` and
    ``masks`` the pixel threshold maximises pixel F1 over all pixels of all images; with ``maps`` only,
    the unsupervised pixel rule is applied to the normal images' maps; without maps the pixel scale
    follows the score scale. ``score_min`` / ``map_min`` come from the normal images, the upper ends are
    symmetric about the thresholds.

    Args:
        scores: Raw image scores ``[N]``.
        labels: ``[N]``, 1 = defective, 0 = good.
        maps: Optional raw maps ``[N, H, W]``.
        masks: Optional ground-truth masks ``[N, H, W]`` (non-zero = defect), aligned with ``maps``.
        pixel_k: Robust-sigma multiplier of the pixel rule when there are maps but no masks.
        map_size: Side of the maps, recorded for consumers.

    Raises:
        CalibrationError: when one class is missing or shapes disagree.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(int)
    thr, f1 = _f1_max(s, y)
    good = y == 0
    score_min = min(float(s[good].min()), thr)
    params: dict[str, Any] = {"image_f1": f1, "n_good": int(good.sum()), "n_defective": int((~good).sum())}
    if maps is not None:
        m = np.asarray(maps, dtype=np.float64)
        if m.shape[0] != s.size:
            raise CalibrationError(f"{m.shape[0]} maps for {s.size} scores")
        mins, maxs = map_extrema(m)
        if masks is not None:
            gt = np.asarray(masks)
            if gt.shape != m.shape:
                raise CalibrationError(f"masks {gt.shape} do not match maps {m.shape}")
            pixel_thr, pixel_f1 = _f1_max(m, gt > 0)
            params["pixel_f1"] = pixel_f1
            pixel_rule = "pixel threshold = F1-max over all validation pixels"
        else:
            pixel_thr, _ = robust_threshold(maxs[good], pixel_k)
            params["pixel_k"] = float(pixel_k)
            pixel_rule = (
                f"pixel threshold = median + {pixel_k:g} * 1.4826 * MAD of the good images' map maxima "
                "(no ground-truth masks)"
            )
        map_min = min(float(np.median(mins[good])), pixel_thr)
    else:
        pixel_thr, map_min = thr, score_min
        pixel_rule = "pixel threshold = image threshold (no maps given)"
    return Calibration(
        image_threshold=thr,
        score_min=score_min,
        score_max=_symmetric_max(score_min, thr),
        pixel_threshold=pixel_thr,
        map_min=map_min,
        map_max=_symmetric_max(map_min, pixel_thr),
        rule=f"labelled: image threshold = F1-max (F1 {f1:.3f}) on {s.size} validation images; {pixel_rule}",
        source="validation",
        n_images=int(s.size),
        map_size=map_size,
        params=params,
    )
