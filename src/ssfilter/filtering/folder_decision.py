"""The dataset filter's decision: the paper's per-batch vote, or a cut calibrated over the whole folder.

* ``"vote"`` (paper §3.6): normal when the in-batch filter kept the image more than kappa_2 times out of
  kappa_1. Each keep is relative to a batch (about half of every batch is passed on), so a clean folder
  still loses the images that are least typical *within their batches*.
* ``"outlier"``: the per-image mean patch comparison score ``A`` over the kappa_1 random batches compares
  every image with (almost) the whole folder, on one scale. An image is anomalous when its ``log`` mean
  ``A`` lies more than ``k`` robust standard deviations (``1.4826 MAD``) above the folder's median -- the
  rule the run's calibration applies to its training scores -- so a clean folder loses only the
  images far off its typical value, however the batches fell. ``A`` needs no trained decoder; when patch
  scoring is off the mean uncertainty ``U`` is the score.
* ``"estimate"``: quarantine the share of the folder that the contamination estimate
  (:mod:`ssfilter.filtering.contamination`) puts in the defective mode, the images with the highest score
  of that estimate (mean ``U``, else mean ``A``) first. The decision and "how dirty was the folder" then
  agree by construction, a clean folder (estimate 0) loses nothing, and the cut adapts to each folder
  where ``"outlier"``'s fixed ``k`` finds nothing on subtle defects (BSData) -- README, "The dataset
  filter". It is written as an :class:`~ssfilter.filtering.filter_outputs.OutlierCut` whose ``k`` is
  the robust z where that share begins, so ranking, reasons and report are those of the outlier cut.

The log makes the right-skewed positive scores close to symmetric, so ``k`` means the same on every
folder; a MAD of 0 (more than half the scores equal) falls back to the standard deviation. Median and
MAD are computed again without the images above the cut until nothing changes (one-sided sigma
clipping): with many defective images (a third of the folder) the first median and MAD are pulled up by
them, the clipped ones describe the normal images. Written here because ``scipy.stats.sigmaclip`` clips
with the mean and standard deviation, which the defective images pull, and on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ssfilter.filtering.contamination import OUTLIER_K, estimate_contamination, estimate_score
from ssfilter.filtering.filter_outputs import FilterRecord, OutlierCut

__all__ = [
    "DECISIONS",
    "FOLDER_CUTS",
    "apply_estimate_decision",
    "apply_outlier_decision",
    "clipped_median_scale",
    "estimate_cut",
    "outlier_cut",
]

#: At most this many rounds of clipping (each only removes images, so it ends much sooner).
MAX_CLIP_ROUNDS = 50


def _score_of(records: Sequence[FilterRecord]) -> tuple[str, np.ndarray] | None:
    """Mean A when at least 2 images have one, else mean U; None when neither is there."""
    for name, values in (
        ("mean A", [r.mean_score for r in records]),
        ("mean U", [r.mean_uncertainty for r in records]),
    ):
        x = np.asarray(values, dtype=np.float64)
        if np.sum(np.isfinite(x) & (x > 0)) >= 2:
            return name, x
    return None


def outlier_cut(records: Sequence[FilterRecord], k: float) -> OutlierCut | None:
    """The folder's robust cut over the records' mean ``A`` (else mean ``U``); None without scores.

    Raises:
        ValueError: ``k`` is not positive.
    """
    if not k > 0:
        raise ValueError(f"the outlier cut k must be positive, got {k}")
    found = _score_of(records)
    if found is None:
        return None
    name, x = found
    med, scale = clipped_median_scale(np.log(x[np.isfinite(x) & (x > 0)]), k)
    return OutlierCut(name, med, scale, float(k))


def clipped_median_scale(logs: np.ndarray, k: float) -> tuple[float, float]:
    """Median and ``1.4826 MAD`` of ``logs``, re-computed without the values above ``median + k * scale``.

    Repeated until nothing changes (one-sided sigma clipping), so that the values describe the bulk of
    the folder (its normal images) even when many values lie in an upper tail.
    """
    inside = np.ones(logs.size, dtype=bool)
    for _ in range(MAX_CLIP_ROUNDS):
        med, scale = _median_scale(logs[inside])
        now = logs <= med + k * scale if scale > 0 else np.ones_like(inside)
        if np.array_equal(now, inside) or now.sum() < 2:
            break
        inside = now
    return med, scale


def _median_scale(logs: np.ndarray) -> tuple[float, float]:
    """Median and ``1.4826 MAD`` (the standard deviation when the MAD is 0)."""
    med = float(np.median(logs))
    scale = 1.4826 * float(np.median(np.abs(logs - med)))
    if scale <= 0 and logs.size > 1:
        scale = float(logs.std(ddof=1))
    return med, scale


def estimate_cut(records: Sequence[FilterRecord]) -> OutlierCut | None:
    """The cut that quarantines the estimated contamination of the records' folder; None without scores.

    The images with a finite positive score of :func:`~ssfilter.filtering.contamination.estimate_score`
    are ordered by it; the estimated share of them (rounded to whole images) from the top is cut off.
    ``median`` and ``scale`` are the folder's clipped ones at the calibration's ``k`` = 4, ``k`` the z
    half-way between the last image cut and the first one kept.
    """
    found = estimate_score(records)
    if found is None:
        return None
    name, values = found
    share = estimate_contamination(values, score_name=name).estimate  # contamination_entry's own call
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x) & (x > 0)]
    if x.size < 2:
        return None
    logs = np.sort(np.log(x))[::-1]
    med, scale = clipped_median_scale(logs, OUTLIER_K)
    scale = scale if scale > 0 else 1.0  # all scores equal: any scale places the cut the same
    m = int(round(share * logs.size))
    if m == 0:
        edge = logs[0]  # z > k is strict: nothing lies above the highest score
    elif m >= logs.size:
        edge = logs[-1] - scale
    else:
        edge = (logs[m - 1] + logs[m]) / 2
    return OutlierCut(name, med, scale, float((edge - med) / scale), share=float(share))


def apply_estimate_decision(records: Sequence[FilterRecord]) -> OutlierCut | None:
    """Decide every record by :func:`estimate_cut` (sets ``decision``); returns the cut, None without."""
    cut = estimate_cut(records)
    if cut is not None:
        _decide(records, cut)
    return cut


def apply_outlier_decision(records: Sequence[FilterRecord], k: float) -> OutlierCut | None:
    """Decide every record by the folder's cut (sets ``decision``); returns the cut.

    A record without a finite score keeps the decision it had. Without any scores nothing changes and
    None is returned.
    """
    cut = outlier_cut(records, k)
    if cut is not None:
        _decide(records, cut)
    return cut


def _decide(records: Sequence[FilterRecord], cut: OutlierCut) -> None:
    """Anomalous above the cut, normal below; a record without a finite score keeps its decision."""
    for r in records:
        z = cut.z(getattr(r, cut.field))
        if math.isfinite(z):
            r.decision = "anomalous" if z > cut.k else "normal"


#: The decisions made over the whole folder, by name: each sets ``decision`` on every record it can
#: judge and returns its cut (for ``filter.json``); called with the records and ``outlier_k``.
FOLDER_CUTS: dict[str, Callable[[Sequence[FilterRecord], float], OutlierCut | None]] = {
    "outlier": apply_outlier_decision,
    "estimate": lambda records, _k: apply_estimate_decision(records),  # the estimate sets the cut
}
#: Values of ``dataset_filter.decision``: the kappa_2 vote (already made by the keep counts), then the
#: folder cuts.
DECISIONS = ("vote", *FOLDER_CUTS)
