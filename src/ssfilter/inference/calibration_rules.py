"""How a run's thresholds are chosen: the robust unsupervised rule and the labelled F1-max rule.

Both build a :class:`~ssfilter.inference.calibration.Calibration` (the record and its JSON file live
there).

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

Like the record, this module imports numpy and the standard library only (no torch); only
:func:`calibrate_from_labels` imports the (torch-free) metrics module, when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ssfilter.errors import CalibrationError
from ssfilter.inference.calibration import Calibration

__all__ = [
    "DEFAULT_K",
    "DEFAULT_PIXEL_K",
    "MAD_TO_SIGMA",
    "calibrate_from_labels",
    "calibrate_unsupervised",
    "map_extrema",
    "robust_threshold",
]

#: Factor turning a median absolute deviation into a standard deviation for normally distributed data.
MAD_TO_SIGMA = 1.4826
#: Default robust-sigma multiplier of the image threshold (``calibration.k``).
DEFAULT_K = 4.0
#: Default robust-sigma multiplier of the pixel threshold (``calibration.pixel_k``).
DEFAULT_PIXEL_K = 4.0


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

    ``image_threshold = median(s) + k * 1.4826 * MAD(s)`` over the raw scores (images below it are
    kept as normal); ``pixel_threshold``: the same rule with ``pixel_k`` over the per-image map maxima.
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
    params: dict[str, Any] = {"k": float(k), "pixel_k": float(pixel_k)}
    params.update(score_median=stats["median"], score_sigma=stats["sigma"], n_kept=int(kept.sum()))
    if map_minima is not None and map_maxima is not None:
        pixel_thr, map_min, pixel_rule = _robust_pixel_scale(s, kept, map_minima, map_maxima, pixel_k, params)
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


def _robust_pixel_scale(
    scores: np.ndarray,
    kept: np.ndarray,
    map_minima: np.ndarray | Sequence[float],
    map_maxima: np.ndarray | Sequence[float],
    pixel_k: float,
    params: dict[str, Any],
) -> tuple[float, float, str]:
    """The unsupervised pixel threshold and ``map_min``, and the rule in words (adds to ``params``).

    Args:
        scores: Raw image scores ``[N]`` (for the shape check).
        kept: ``[N]`` images kept as normal by the image threshold.
        map_minima: Per-image smallest map values ``[N]``.
        map_maxima: Per-image largest map values ``[N]``.
        pixel_k: Robust-sigma multiplier of the pixel threshold.
        params: The calibration's parameters; the map statistics are recorded here.
    """
    mins = np.asarray(map_minima, dtype=np.float64).reshape(-1)
    maxs = np.asarray(map_maxima, dtype=np.float64).reshape(-1)
    if mins.shape != scores.shape or maxs.shape != scores.shape:
        raise CalibrationError(
            f"need one map minimum and maximum per score, got {mins.size}, {maxs.size} for {scores.size}"
        )
    pixel_thr, pstats = robust_threshold(maxs, pixel_k)
    finite_min = mins[kept & np.isfinite(mins)]
    map_min = float(np.median(finite_min)) if finite_min.size else pstats["median"]
    map_min = min(map_min, pixel_thr)
    params.update({"map_max_median": pstats["median"], "map_max_sigma": pstats["sigma"]})
    rule = f"pixel threshold = median + {pixel_k:g} * 1.4826 * MAD of the per-image maximum map values"
    return pixel_thr, map_min, rule


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
        pixel_thr, map_min, pixel_rule = _labelled_pixel_scale(maps, masks, good, pixel_k, params)
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


def _labelled_pixel_scale(
    maps: np.ndarray,
    masks: np.ndarray | None,
    good: np.ndarray,
    pixel_k: float,
    params: dict[str, Any],
) -> tuple[float, float, str]:
    """The labelled pixel threshold and ``map_min``, and the rule in words (adds to ``params``).

    Pixel F1-max over all pixels when ``masks`` are given, else the robust rule on the good images'
    map maxima; ``map_min`` is the median of the good images' map minima.

    Args:
        maps: Raw maps ``[N, H, W]``.
        masks: Ground-truth masks aligned with ``maps``, or ``None``.
        good: ``[N]`` boolean, the images labelled good.
        pixel_k: Robust-sigma multiplier of the rule without masks.
        params: The calibration's parameters; the pixel F1 or ``pixel_k`` is recorded here.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.shape[0] != good.size:
        raise CalibrationError(f"{m.shape[0]} maps for {good.size} scores")
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
    return pixel_thr, map_min, pixel_rule
