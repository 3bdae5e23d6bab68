"""Image- and pixel-level anomaly detection metrics: AUROC, AP, F1max and two AUPRO variants.

Pixel metrics run on very large pixel sets (10k images x 256x256 = 655M pixels), so they never build
float64 copies of all pixels. Scores stay float32 and are split by class: the normal pixels and the
anomalous pixels are each sorted once (ascending). Every ROC / PR / PRO curve point then follows from
``np.searchsorted`` counts at the distinct score values, processed in blocks. This gives the same
curve points as one joint descending sort with per-pixel cumulative increments (ties included: all
pixels of one score value enter the curve together), without the N-sized int64 permutation and
float64 cumulative arrays such a joint sort needs. Arrays of size n_anomalous (int64 sort order,
float64 region weights) are accepted: anomalous pixels are a small share of a test set.

Undefined metrics (one class only, no masks, no anomalous pixels, ...) are reported as ``None`` with
an :class:`UndefinedMetricWarning`, never as 0 or 0.5.

One job, the SPEC §8 metrics, in one file of more than 500 lines: the image metrics, the pixel metrics
and the streaming :class:`MetricAccumulator` share the input checks and the sorted-by-class curve
machinery above, and the tests check them against brute-force references as one unit.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score, roc_curve

METRIC_KEYS: tuple[str, ...] = (
    "I-AUROC",
    "I-AP",
    "I-F1max",
    "P-AUROC",
    "P-AP",
    "P-F1max",
    "P-AUPRO",
    "P-AUPRO-dinomaly",
)
IMAGE_KEYS: tuple[str, ...] = METRIC_KEYS[:3]
PIXEL_KEYS: tuple[str, ...] = METRIC_KEYS[3:]

# 8-connectivity for ground-truth regions, as in the MVTec AD evaluation (diagonal pixels merge).
_STRUCTURE_8 = np.ones((3, 3), dtype=bool)
# Distinct score values handled per vectorised step; bounds the temporary arrays to ~200 MB.
_BLOCK = 1 << 22
_MAX_CURVE_POINTS = 1000

MaskChunk = NDArray[np.bool_] | None


class UndefinedMetricWarning(UserWarning):
    """A metric cannot be computed from the given data and is reported as ``None``."""


def _warn_undefined(keys: Sequence[str], reason: str) -> None:
    """Warn that ``keys`` are undefined, so a ``None`` in the results is never silent."""
    warnings.warn(
        f"{', '.join(keys)} undefined: {reason}; reported as None", UndefinedMetricWarning, stacklevel=3
    )


# --------------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors (any device, half/bfloat16 too) are supported."""
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()  # numpy has no bfloat16; float32 holds every half/bfloat16 value exactly
        return t.cpu().numpy()
    return np.asarray(x)


def _check_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError if ``a`` holds NaN or inf: the caller must not feed them to the metrics."""
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        problem = "NaN" if np.isnan(a).any() else "inf"
        raise ValueError(f"{name} contain {problem} values; metrics need finite scores")


def _as_scores(x: Any, name: str) -> NDArray[np.float64]:
    """Convert 1-D image scores to float64 (small arrays; keeps sklearn's precision)."""
    a = _to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    _check_finite(a, name)
    return a.astype(np.float64)


def _as_labels(x: Any, n: int, name: str = "image_labels") -> NDArray[np.int8]:
    """Convert binary labels (bool or 0/1 numbers) to int8 and check their length."""
    a = _to_numpy(x)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {a.shape}")
    if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be 0 (normal) or 1 (anomalous)")
    return a.astype(np.int8)


def _as_maps(x: Any, name: str = "maps") -> NDArray[np.float32]:
    """Convert anomaly maps [B,H,W] (or [B,1,H,W]) of any float dtype to a float32 array."""
    a = _to_numpy(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape [B,H,W], got {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    _check_finite(a, name)
    return np.asarray(a, dtype=np.float32)


def _as_masks(x: Any, shape: tuple[int, ...], name: str = "masks") -> NDArray[np.bool_]:
    """Convert binary masks (bool or 0/1 numbers) of ``shape`` (or [B,1,H,W]) to bool."""
    a = _to_numpy(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape != shape:
        raise ValueError(f"{name} must have the shape of the maps {shape}, got {a.shape}")
    if a.dtype == np.bool_:
        return a
    if not ((a == 0) | (a == 1)).all():
        raise ValueError(f"{name} must be binary (bool or 0/1)")
    return a != 0


def _split_by_class(
    scores: NDArray[np.floating], labels: NDArray[np.integer]
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Return the sorted (ascending) scores of the negatives and of the positives."""
    pos = labels.astype(bool)
    neg_s = np.sort(scores[~pos])
    pos_s = np.sort(scores[pos])
    return neg_s, pos_s


# --------------------------------------------------------------------------------------------------
# Sort-based ROC / PR metrics
# --------------------------------------------------------------------------------------------------


def _distinct_blocks(sorted_values: NDArray[Any], block: int | None = None) -> Iterator[NDArray[Any]]:
    """Yield the distinct values of an ascending array in blocks, each value exactly once.

    Blocks (default ``_BLOCK`` values) bound the memory of the per-threshold arrays computed from them.
    """
    block = block or _BLOCK
    n = sorted_values.size
    for start in range(0, n, block):
        stop = min(n, start + block)
        v = sorted_values[start:stop]
        keep = np.empty(stop - start, dtype=bool)
        keep[0] = start == 0 or sorted_values[start - 1] != sorted_values[start]
        np.not_equal(v[1:], v[:-1], out=keep[1:])
        yield v[keep]


@dataclass(frozen=True)
class _RankStats:
    """Threshold-free metrics of a binary scoring, from :func:`_rank_metrics`."""

    auroc: float
    ap: float
    f1: float
    f1_threshold: float


def _rank_metrics(neg: NDArray[Any], pos: NDArray[Any]) -> _RankStats:
    """ROC AUC, AP and F1max from ascending-sorted negative and positive scores (both non-empty).

    Written by hand instead of sklearn because sklearn converts to float64 and builds full curves,
    which does not fit pixel sets of 10^8-10^9 values. Prediction rule: anomalous iff score >= t.
    Only thresholds at positive score values matter: recall (hence AP) changes only there, and F1 at
    any other threshold is beaten by the next higher positive value (same TP, fewer FP).

    - AUROC = Mann-Whitney U / (n_pos n_neg), ties counted 1/2: equals the trapezoidal ROC area.
    - AP = sum over thresholds of (R_n - R_{n-1}) P_n (sklearn's step definition).
    - F1 = 2 TP / (TP + FP + n_pos), maximised over thresholds.
    """
    n_neg, n_pos = neg.size, pos.size
    u2 = 0  # 2 x Mann-Whitney U as a Python int: exact, no int64 overflow
    ap = 0.0
    best_f1, best_thr = -1.0, float(pos[-1])
    for u in _distinct_blocks(pos):
        p_lo = np.searchsorted(pos, u, side="left")
        p_hi = np.searchsorted(pos, u, side="right")
        n_lo = np.searchsorted(neg, u, side="left")
        n_hi = np.searchsorted(neg, u, side="right")
        count = p_hi - p_lo  # positives with score == u
        u2 += int(np.sum(count * (n_lo + n_hi)))
        tp = n_pos - p_lo  # positives with score >= u
        fp = n_neg - n_lo  # negatives with score >= u
        ap += float(np.sum(count * (tp / (tp + fp))))
        f1 = 2.0 * tp / (tp + fp + n_pos)
        i = int(np.argmax(f1))
        if f1[i] > best_f1:
            best_f1, best_thr = float(f1[i]), float(u[i])
    return _RankStats(
        auroc=u2 / (2.0 * n_pos * n_neg),
        ap=min(1.0, ap / n_pos),  # clip float rounding (sum of fractions may reach 1 + 1e-16)
        f1=best_f1,
        f1_threshold=best_thr,
    )


def _roc_points(
    neg: NDArray[Any], pos: NDArray[Any], max_points: int = _MAX_CURVE_POINTS
) -> dict[str, list[float]]:
    """Exact ROC points at <= ``max_points`` thresholds drawn evenly from both score distributions."""
    per_class = (max_points - 2) // 2
    picks = [
        a[np.unique(np.linspace(0, a.size - 1, min(a.size, per_class)).round().astype(np.int64))]
        for a in (neg, pos)
    ]
    thresholds = np.unique(np.concatenate(picks))[::-1]
    tpr = (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size
    fpr = np.concatenate(([0.0], fpr, [1.0]))
    tpr = np.concatenate(([0.0], tpr, [1.0]))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


# --------------------------------------------------------------------------------------------------
# Pixel data: sorted float32 scores per class plus ground-truth region weights
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PixelData:
    """Pixel scores split by class and sorted ascending, with the per-region overlap weights.

    ``pro_ge[i]`` is the PRO (mean over regions of the covered region fraction) when every anomalous
    pixel with index >= i in ``pos`` is predicted positive; ``pro_ge[n_pos] == 0``.
    """

    neg: NDArray[np.float32]
    pos: NDArray[np.float32]
    pro_ge: NDArray[np.float64]
    n_regions: int


def _prepare_pixels(chunks: Sequence[tuple[NDArray[np.float32], MaskChunk]]) -> _PixelData:
    """Split float32 maps into sorted normal / anomalous scores and label ground-truth regions.

    ``chunks`` are ``(maps [B,H,W] float32, masks [B,H,W] bool or None = all normal)`` pairs, read
    without concatenation so that only one float32 copy of all pixels exists (the sorted one).
    """
    n_total = sum(m.size for m, _ in chunks)
    n_pos = sum(int(np.count_nonzero(k)) for _, k in chunks if k is not None)
    neg = np.empty(n_total - n_pos, dtype=np.float32)
    pos = np.empty(n_pos, dtype=np.float32)
    region = np.empty(n_pos, dtype=np.int32)
    i_neg = i_pos = n_regions = 0
    for maps, masks in chunks:
        if masks is None:
            neg[i_neg : i_neg + maps.size] = maps.ravel()
            i_neg += maps.size
            continue
        for m, k in zip(maps, masks, strict=True):
            c = int(np.count_nonzero(k))
            neg[i_neg : i_neg + m.size - c] = m[~k]
            i_neg += m.size - c
            if c:
                lab, n_lab = ndimage.label(k, structure=_STRUCTURE_8)
                pos[i_pos : i_pos + c] = m[k]
                region[i_pos : i_pos + c] = lab[k] + (n_regions - 1)
                i_pos += c
                n_regions += n_lab
    neg.sort()
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    pro_ge = np.zeros(n_pos + 1, dtype=np.float64)
    if n_pos:
        areas = np.bincount(region, minlength=n_regions)
        weight = (1.0 / (areas * float(n_regions)))[region[order]]  # pixel share of the mean over regions
        np.cumsum(weight[::-1], out=pro_ge[-2::-1])
        np.minimum(pro_ge, 1.0, out=pro_ge)  # clip cumulative rounding, as the MVTec AD reference does
    return _PixelData(neg=neg, pos=pos, pro_ge=pro_ge, n_regions=n_regions)


def _pixel_undefined_reason(data: _PixelData) -> str | None:
    """Why pixel metrics cannot be computed from ``data``, or None if they can."""
    if data.pos.size == 0:
        return "no anomalous pixels in the ground-truth masks"
    if data.neg.size == 0:
        return "no normal pixels in the ground-truth masks"
    return None


@dataclass(frozen=True)
class _ProResult:
    """Exact AUPRO and its curve up to ``max_fpr`` (for reports)."""

    aupro: float
    fpr: list[float]
    pro: list[float]


def _aupro_exact_core(data: _PixelData, max_fpr: float) -> _ProResult:
    """Exact MVTec AD AUPRO: area under the PRO/FPR curve up to ``max_fpr``, divided by ``max_fpr``.

    The curve has one point per distinct pixel score (pixels with score >= t predicted positive),
    starts at (0, 0) and is integrated with the trapezoid rule, with PRO interpolated linearly at
    exactly ``max_fpr``. FPR changes only at normal score values v, so the area is a sum of
    independent segments, one per distinct normal value v:
    (FPR(> v), PRO(> v)) -> (FPR(>= v), PRO(>= v)). Segments between them where only anomalous
    pixels enter are vertical and add no area. Only the top ``max_fpr`` share of normal scores is
    visited.
    """
    neg, pos, pro_ge = data.neg, data.pos, data.pro_ge
    n_neg = neg.size
    m = min(n_neg, int(np.ceil(max_fpr * n_neg)) + 1)  # +1: slack so the crossing segment is visited
    top = neg[n_neg - m :]
    area = 0.0
    end_y: float | None = None
    last_full_x, last_full_y = 0.0, 0.0
    for v in _distinct_blocks(top):
        x0 = (n_neg - np.searchsorted(neg, v, side="right")) / n_neg
        x1 = (n_neg - np.searchsorted(neg, v, side="left")) / n_neg
        y0 = pro_ge[np.searchsorted(pos, v, side="right")]
        y1 = pro_ge[np.searchsorted(pos, v, side="left")]
        full = x1 <= max_fpr
        area += float(np.sum((x1[full] - x0[full]) * (y0[full] + y1[full]))) / 2.0
        if full.any():
            j = int(np.argmax(np.where(full, x1, -1.0)))
            if x1[j] >= last_full_x:
                last_full_x, last_full_y = float(x1[j]), float(y1[j])
        cross = np.flatnonzero((x0 < max_fpr) & ~full)  # at most one segment crosses max_fpr
        if cross.size:
            c = int(cross[0])
            y_at = y0[c] + (y1[c] - y0[c]) * (max_fpr - x0[c]) / (x1[c] - x0[c])
            area += (max_fpr - x0[c]) * (y0[c] + y_at) / 2.0
            end_y = float(y_at)
    if end_y is None:
        end_y = last_full_y
    fpr, pro = _pro_curve_points(data, max_fpr, end_y)
    return _ProResult(aupro=min(1.0, float(area) / max_fpr), fpr=fpr, pro=pro)


def _pro_curve_points(data: _PixelData, max_fpr: float, end_y: float) -> tuple[list[float], list[float]]:
    """Up to 1000 exact points of the PRO curve on [0, max_fpr] for plotting."""
    neg, pos, pro_ge = data.neg, data.pos, data.pro_ge
    n_neg = neg.size
    m = min(n_neg, int(np.ceil(max_fpr * n_neg)))
    desc_idx = np.unique(
        np.linspace(0, max(m - 1, 0), min(max(m, 1), _MAX_CURVE_POINTS - 3)).round().astype(np.int64)
    )
    v = np.unique(neg[n_neg - 1 - desc_idx])[::-1]
    x = (n_neg - np.searchsorted(neg, v, side="left")) / n_neg
    y = pro_ge[np.searchsorted(pos, v, side="left")]
    keep = x < max_fpr
    y_start = pro_ge[np.searchsorted(pos, neg[-1], side="right")]  # PRO before the first normal pixel
    fpr = np.concatenate(([0.0, 0.0], x[keep], [max_fpr]))
    pro = np.concatenate(([0.0, y_start], y[keep], [end_y]))
    return fpr.tolist(), pro.tolist()


def _aupro_dinomaly_core(data: _PixelData, num_thresholds: int, max_fpr: float) -> tuple[float | None, str]:
    """AUPRO as computed by Dinomaly's ``compute_pro``; returns (value, reason if undefined).

    Thresholds ``min + k (max - min) / num_thresholds`` for k = 0..num_thresholds-1 over all pixel
    scores (Dinomaly's ``np.arange(min, max, delta)``: the maximum itself is not a threshold), pixels
    with score > threshold are positive, points with FPR < max_fpr are kept, FPR is divided by the
    largest kept FPR and the area is taken with the trapezoid rule.
    """
    neg, pos, pro_ge = data.neg, data.pos, data.pro_ge
    lo = float(min(neg[0], pos[0]))
    hi = float(max(neg[-1], pos[-1]))
    if hi <= lo:
        return None, "all pixel scores are equal"
    # float32 thresholds: compared with float32 scores as in Dinomaly, and no float64 copy of ``neg``.
    th = (lo + (hi - lo) / num_thresholds * np.arange(num_thresholds)).astype(np.float32)
    fpr = (neg.size - np.searchsorted(neg, th, side="right")) / neg.size
    pro = pro_ge[np.searchsorted(pos, th, side="right")]
    keep = fpr < max_fpr
    if np.count_nonzero(keep) < 2:
        return None, f"fewer than 2 of {num_thresholds} thresholds have FPR < {max_fpr}"
    fpr_kept = fpr[keep]
    top = fpr_kept.max()
    if top <= 0.0:
        return None, f"every threshold with FPR < {max_fpr} has FPR 0 (the FPR normalisation divides by 0)"
    return float(auc(fpr_kept / top, pro[keep])), ""


def _check_max_fpr(max_fpr: float) -> None:
    """Reject integration limits outside (0, 1]."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


def _pixel_metrics_from(
    data: _PixelData,
) -> tuple[dict[str, float | None], dict[str, dict[str, list[float]]]]:
    """All pixel metrics and curves of prepared pixel data, warning for undefined ones."""
    out: dict[str, float | None] = dict.fromkeys(PIXEL_KEYS)
    curves: dict[str, dict[str, list[float]]] = {
        "pixel_roc": {"fpr": [], "tpr": []},
        "pro": {"fpr": [], "pro": []},
    }
    reason = _pixel_undefined_reason(data)
    if reason is not None:
        _warn_undefined(PIXEL_KEYS, reason)
        return out, curves
    rank = _rank_metrics(data.neg, data.pos)
    pro = _aupro_exact_core(data, 0.3)
    dino, why = _aupro_dinomaly_core(data, 200, 0.3)
    if dino is None:
        _warn_undefined(("P-AUPRO-dinomaly",), why)
    out.update({"P-AUROC": rank.auroc, "P-AP": rank.ap, "P-F1max": rank.f1, "P-AUPRO": pro.aupro})
    out["P-AUPRO-dinomaly"] = dino
    curves["pixel_roc"] = _roc_points(data.neg, data.pos)
    curves["pro"] = {"fpr": pro.fpr, "pro": pro.pro}
    return out, curves


# --------------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------------


def _image_undefined_reason(labels: NDArray[np.int8]) -> str | None:
    """Why image metrics cannot be computed from ``labels``, or None if they can."""
    if labels.size == 0:
        return "no images"
    n_pos = int(labels.sum())
    if n_pos == 0:
        return "no anomalous images (only one class among the image labels)"
    if n_pos == labels.size:
        return "no normal images (only one class among the image labels)"
    return None


def image_metrics(scores: ArrayLike, labels: ArrayLike) -> dict[str, float | None]:
    """I-AUROC, I-AP and I-F1max of image scores against 0/1 image labels.

    Each is ``None`` (with an :class:`UndefinedMetricWarning`) unless both classes are present.
    """
    s = _as_scores(scores, "image_scores")
    y = _as_labels(labels, s.size)
    reason = _image_undefined_reason(y)
    if reason is not None:
        _warn_undefined(IMAGE_KEYS, reason)
        return dict.fromkeys(IMAGE_KEYS)
    return {
        "I-AUROC": float(roc_auc_score(y, s)),
        "I-AP": float(average_precision_score(y, s)),
        "I-F1max": _rank_metrics(*_split_by_class(s, y)).f1,
    }


def f1_max_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float] | None:
    """Best F1 over all thresholds of the PR curve and the threshold that reaches it.

    The threshold ``t`` is a score value; predict anomalous iff ``score >= t``. Among equal best F1
    values the lowest threshold is returned. ``None`` (with a warning) unless both classes are present.
    """
    s = _as_scores(scores, "scores")
    y = _as_labels(labels, s.size, "labels")
    reason = _image_undefined_reason(y)
    if reason is not None:
        _warn_undefined(("F1max",), reason)
        return None
    stats = _rank_metrics(*_split_by_class(s, y))
    return stats.f1, stats.f1_threshold


def f1_max(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Best F1 over all thresholds of the PR curve; ``None`` unless both classes are present."""
    best = f1_max_threshold(scores, labels)
    return None if best is None else best[0]


def _prepare_public(maps: ArrayLike, masks: ArrayLike) -> _PixelData:
    """Validate full [N,H,W] maps and masks and prepare the sorted pixel data."""
    m = _as_maps(maps)
    k = _as_masks(masks, m.shape)
    return _prepare_pixels([(m, k)])


def pixel_metrics(maps: ArrayLike, masks: ArrayLike) -> dict[str, float | None]:
    """P-AUROC, P-AP, P-F1max, P-AUPRO and P-AUPRO-dinomaly over all pixels of all images.

    ``maps`` [N,H,W] (any float dtype, used as float32) and binary ``masks`` [N,H,W], both at the
    evaluation size. Undefined metrics are ``None`` with an :class:`UndefinedMetricWarning`.
    """
    return _pixel_metrics_from(_prepare_public(maps, masks))[0]


def aupro_exact(maps: ArrayLike, masks: ArrayLike, max_fpr: float = 0.3) -> float | None:
    """Exact MVTec AD AUPRO (threshold-free, 8-connected regions, integrated to ``max_fpr``)."""
    _check_max_fpr(max_fpr)
    data = _prepare_public(maps, masks)
    reason = _pixel_undefined_reason(data)
    if reason is not None:
        _warn_undefined(("P-AUPRO",), reason)
        return None
    return _aupro_exact_core(data, max_fpr).aupro


def aupro_dinomaly(
    maps: ArrayLike, masks: ArrayLike, num_thresholds: int = 200, max_fpr: float = 0.3
) -> float | None:
    """AUPRO as in Dinomaly's ``compute_pro`` (``num_thresholds`` evenly spaced thresholds)."""
    _check_max_fpr(max_fpr)
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    data = _prepare_public(maps, masks)
    reason = _pixel_undefined_reason(data)
    if reason is None:
        value, reason = _aupro_dinomaly_core(data, num_thresholds, max_fpr)
        if value is not None:
            return value
    _warn_undefined(("P-AUPRO-dinomaly",), reason)
    return None


# --------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Collects per-batch scores, maps and masks and computes every metric in :data:`METRIC_KEYS`.

    Maps are stored as float32 (one array per batch, never concatenated) and masks as bool, so a
    test set of 10k images at 256x256 needs ~2.6 GB for maps plus ~0.7 GB for masks.
    """

    def __init__(self) -> None:
        self._scores: list[NDArray[np.float64]] = []
        self._labels: list[NDArray[np.int8]] = []
        self._maps: list[NDArray[np.float32] | None] = []
        self._masks: list[MaskChunk] = []
        self._cache: tuple[dict[str, float | None], dict[str, dict[str, list[float]]]] | None = None

    @property
    def n_images(self) -> int:
        """Number of images added so far."""
        return sum(s.size for s in self._scores)

    def update(
        self,
        image_scores: ArrayLike,
        image_labels: ArrayLike,
        maps: ArrayLike | None = None,
        masks: ArrayLike | None = None,
    ) -> None:
        """Add one batch.

        Args:
            image_scores: [B] image anomaly scores.
            image_labels: [B] 0 (normal) / 1 (anomalous).
            maps: [B,H,W] anomaly maps (numpy or torch, any float dtype; stored as float32), or None.
            masks: [B,H,W] binary ground truth, or None. A missing mask counts as all-normal for a
                normal image; for an anomalous image it makes the pixel metrics undefined.
        """
        s = _as_scores(image_scores, "image_scores")
        y = _as_labels(image_labels, s.size)
        m: NDArray[np.float32] | None = None
        k: MaskChunk = None
        if maps is not None:
            raw_maps = _to_numpy(maps)
            m = _as_maps(raw_maps)
            if m.shape[0] != s.size:
                raise ValueError(f"maps hold {m.shape[0]} images but image_scores {s.size}")
            # Copy views of the caller's memory (numpy input, CPU tensors): the caller may reuse it.
            m = m.copy() if np.shares_memory(m, raw_maps) else m
            if masks is not None:
                raw_masks = _to_numpy(masks)
                k = _as_masks(raw_masks, m.shape)
                k = k.copy() if np.shares_memory(k, raw_masks) else k
        elif masks is not None:
            raise ValueError("masks were given without maps")
        self._scores.append(s)
        self._labels.append(y)
        self._maps.append(m)
        self._masks.append(k)
        self._cache = None

    def _pixel_chunks_or_reason(self) -> tuple[list[tuple[NDArray[np.float32], MaskChunk]], str | None]:
        """The (maps, masks) chunks for the pixel metrics, or why they are undefined."""
        n_missing_maps = sum(s.size for s, m in zip(self._scores, self._maps, strict=True) if m is None)
        if n_missing_maps == self.n_images:
            return [], "no anomaly maps were given"
        if n_missing_maps:
            return [], f"anomaly maps missing for {n_missing_maps} of {self.n_images} images"
        if all(k is None for k in self._masks):
            return [], "no ground-truth masks were given"
        n_unmasked = sum(int(y.sum()) for y, k in zip(self._labels, self._masks, strict=True) if k is None)
        if n_unmasked:
            return [], f"{n_unmasked} anomalous images have no ground-truth mask"
        return [
            (m, k) for m, k in zip(self._maps, self._masks, strict=True) if m is not None and m.size
        ], None

    def _evaluate(self) -> tuple[dict[str, float | None], dict[str, dict[str, list[float]]]]:
        """Compute metrics and curves once per state (the pixel sort is the expensive part)."""
        if self._cache is not None:
            return self._cache
        scores = np.concatenate(self._scores) if self._scores else np.empty(0)
        labels = np.concatenate(self._labels) if self._labels else np.empty(0, dtype=np.int8)
        metrics = image_metrics(scores, labels)
        image_roc: dict[str, list[float]] = {"fpr": [], "tpr": []}
        if _image_undefined_reason(labels) is None:
            fpr, tpr, _ = roc_curve(labels, scores)
            image_roc = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        chunks, reason = self._pixel_chunks_or_reason()
        if reason is not None:
            _warn_undefined(PIXEL_KEYS, reason)
            pixel, pixel_curves = (
                dict.fromkeys(PIXEL_KEYS),
                {"pixel_roc": {"fpr": [], "tpr": []}, "pro": {"fpr": [], "pro": []}},
            )
        else:
            pixel, pixel_curves = _pixel_metrics_from(_prepare_pixels(chunks))
        metrics.update(pixel)
        self._cache = ({key: metrics[key] for key in METRIC_KEYS}, {"image_roc": image_roc, **pixel_curves})
        return self._cache

    def compute(self) -> dict[str, float | None]:
        """All metrics of :data:`METRIC_KEYS`; undefined ones are ``None`` (with a warning)."""
        return dict(self._evaluate()[0])

    def curves(self) -> dict[str, dict[str, list[float]]]:
        """ROC and PRO curves for reports: ``image_roc``, ``pixel_roc`` (<= 1000 points) and ``pro``.

        ``pro`` is the exact-variant curve on FPR [0, 0.3] (<= 1000 points). Undefined curves are empty.
        """
        return {name: {k: list(v) for k, v in c.items()} for name, c in self._evaluate()[1].items()}
