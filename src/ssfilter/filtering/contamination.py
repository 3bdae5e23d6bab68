"""How dirty was the folder? An estimate of the share of defective images, with an interval.

The dataset filter's decisions are relative to each batch (the lower half of every batch is kept), so the
share of quarantined images is no estimate of the contamination: a clean folder still loses its least
typical images. The per-image *scores* are on one scale over the folder, though. The score used is the
mean MC-dropout uncertainty ``U`` of the trained decoder over the kappa_1 epochs (the mean patch
comparison score ``A`` when uncertainty is off): the decoder was trained to reconstruct the normal images,
so their ``U`` forms one tight mode and defective images a second, higher one, and the contamination is
the weight of that second mode. ``A`` (the frozen encoder's comparison with random batch partners) was the
score until 2026-12-02; its normal images have a long right tail that a mixture takes for a second mode
(bottle: 19.5% read on a clean folder, 21.7% at 8.7% truth), where ``U`` read 0.0 / 8.2 / 12.3% at
0 / 8.7 / 12.9% on bottle and 13.7% at 13.1% on BSData (README, "The dataset filter"):

* the scores are log-transformed (they are positive and right-skewed; the normal mode is then close to
  Gaussian) and a one- and a two-component Gaussian mixture are fitted; the two-component model is taken
  when its BIC is lower, its upper component has the higher mean by at least ``min_separation`` pooled
  standard deviations, and its weight is below one half (defects are the minority -- the premise of the
  in-batch filter); otherwise (one clear mode, possibly with a long tail of a few far-off images) the
  estimate is the share of images above ``median + 4 * 1.4826 * MAD`` of the log-scores -- the robust
  rule the run's calibration uses -- which reads 0 for a clean folder without outliers;
* the interval is the percentile bootstrap of the same procedure (``n_boot`` resamples of the images),
  so it covers the uncertainty of the model choice too.

The mixture is fitted by a small deterministic EM (several starts, the best likelihood wins) and the
bootstrap is seeded, so the result is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL
from ssfilter.filtering.filter_outputs import FilterRecord

__all__ = [
    "ContaminationEstimate",
    "contamination_entry",
    "estimate_contamination",
    "estimate_score",
    "mixture_share",
]

#: Minimum distance of the two modes, in pooled standard deviations, for a second mode to count.
MIN_SEPARATION = 2.0
#: Robust standard deviations above the median from which an image lies outside the normal mode when no
#: clear second mode is fitted (the calibration's default ``k``, :mod:`ssfilter.inference.calibration_rules`).
OUTLIER_K = 4.0


@dataclass(frozen=True)
class ContaminationEstimate:
    """Estimated share of defective images with a ``level`` bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    score: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``filter.json``."""
        return asdict(self)


_SQRT_2PI = math.sqrt(2 * math.pi)
_STARTS = np.array([0.02, 0.05, 0.1, 0.2, 0.35])


def _em(x: np.ndarray, iters: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-Gaussian EM on every row of ``x [R, n]`` from every start of :data:`_STARTS`, all at once.

    A start ``s`` takes the top ``s`` share of the row as the upper component. Returns, per row, the
    best start's ``(log_likelihood [R], weights [R, 2], means [R, 2], sds [R, 2])``.
    """
    r, n = x.shape
    xs = np.repeat(x[:, None, :], _STARTS.size, axis=1)  # [R, S, n]
    cut = np.quantile(x, 1 - _STARTS, axis=1).T  # [R, S]
    hi = xs >= cut[..., None]
    floor = (1e-3 * x.std(axis=1) + 1e-12)[:, None, None]
    resp = np.stack([~hi, hi], axis=-1).astype(np.float64)  # [R, S, n, 2]
    ll = np.full((r, _STARTS.size), -np.inf)
    for _ in range(iters):
        nk = resp.sum(axis=2) + 1e-12  # [R, S, 2]
        w = nk / n
        mu = (resp * xs[..., None]).sum(axis=2) / nk
        var = (resp * (xs[..., None] - mu[:, :, None, :]) ** 2).sum(axis=2) / nk
        sd = np.maximum(np.sqrt(var), floor)
        z = (xs[..., None] - mu[:, :, None, :]) / sd[:, :, None, :]
        dens = (w / (sd * _SQRT_2PI))[:, :, None, :] * np.exp(-0.5 * z**2)
        total = dens.sum(axis=-1) + 1e-300
        new_ll = np.log(total).sum(axis=-1)
        resp = dens / total[..., None]
        done = np.all(np.abs(new_ll - ll) <= 1e-8 * np.abs(new_ll))
        ll = new_ll
        if done:
            break
    best = np.argmax(ll, axis=1)
    rows = np.arange(r)
    return ll[rows, best], w[rows, best], mu[rows, best], sd[rows, best]


def _shares(x: np.ndarray, min_separation: float) -> np.ndarray:
    """:func:`mixture_share` of every row of the log-scores ``x [R, n]``."""
    n = x.shape[1]
    sd1 = np.maximum(x.std(axis=1), 1e-12)
    ll1 = -0.5 * n * (np.log(2 * math.pi * sd1**2) + 1)
    ll2, w, mu, sd = _em(x)
    better = (-2 * ll2 + 5 * math.log(n)) < (-2 * ll1 + 2 * math.log(n))
    hi = np.argmax(mu, axis=1)
    rows = np.arange(x.shape[0])
    gap = np.abs(mu[:, 0] - mu[:, 1]) / np.sqrt((sd[:, 0] ** 2 + sd[:, 1] ** 2) / 2)
    weight = w[rows, hi]
    ok = better & (gap >= min_separation) & (weight < 0.5) & (np.ptp(x, axis=1) > 0)
    return np.where(ok, weight, _outlier_shares(x))


def _outlier_shares(x: np.ndarray, k: float = OUTLIER_K) -> np.ndarray:
    """Share of each row of ``x [R, n]`` above ``median + k * 1.4826 * MAD`` (0 where the MAD is 0)."""
    med = np.median(x, axis=1, keepdims=True)
    scale = 1.4826 * np.median(np.abs(x - med), axis=1, keepdims=True)
    above = (x - med) > k * scale
    return np.where(scale[:, 0] > 0, above.mean(axis=1), 0.0)


def mixture_share(scores: np.ndarray, *, min_separation: float = MIN_SEPARATION) -> float:
    """Weight of the upper mode of ``log(scores)`` (the robust outlier share when there is no clear one).

    The two-component fit is the best of EM runs started from the top 2, 5, 10, 20 and 35% of the scores.

    Args:
        scores: Positive per-image scores.
        min_separation: Minimum gap of the two means, in pooled standard deviations.
    """
    x = np.log(np.clip(np.asarray(scores, dtype=np.float64), 1e-12, None))
    if x.size < 4:
        return 0.0
    return float(_shares(x[None, :], min_separation)[0])


def estimate_contamination(
    scores: Sequence[float],
    *,
    score_name: str = "mean A",
    n_boot: int = 100,
    level: float = 0.9,
    seed: int = 0,
) -> ContaminationEstimate:
    """The share of defective images among those with finite ``scores``, with a bootstrap interval.

    Args:
        scores: One positive score per image (higher = more anomalous); NaN ones are left out.
        score_name: What the scores are (written with the estimate).
        n_boot: Bootstrap resamples.
        level: Coverage of the interval.
        seed: Seed of the resampling.

    Raises:
        ValueError: Fewer than 2 finite scores.
    """
    x = np.asarray([s for s in scores if math.isfinite(s)], dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"a contamination estimate needs at least 2 finite scores, got {x.size}")
    est = mixture_share(x)
    rng = np.random.default_rng(seed)
    logs = np.log(np.clip(x, 1e-12, None))
    boots = (
        np.concatenate(
            [
                _shares(logs[rng.integers(0, x.size, (min(50, n_boot - k), x.size))], MIN_SEPARATION)
                for k in range(0, n_boot, 50)
            ]
        )
        if x.size >= 4
        else np.zeros(1)
    )
    alpha = (1 - level) / 2
    low, high = (float(np.quantile(boots, q)) for q in (alpha, 1 - alpha))
    return ContaminationEstimate(
        estimate=est,
        low=min(low, est),
        high=max(high, est),
        level=level,
        n=int(x.size),
        score=score_name,
        method=f"2-Gaussian mixture on log({score_name}) (else robust outliers, median + 4 MAD-sd); "
        f"{n_boot}-resample bootstrap",
    )


def estimate_score(records: Sequence[FilterRecord]) -> tuple[str, list[float]] | None:
    """The score the estimate reads: ``("mean U", values)``, else ``("mean A", values)``; None without.

    A score counts when at least 2 records have a finite value of it.
    """
    for name, values in (
        ("mean U", [r.mean_uncertainty for r in records]),
        ("mean A", [r.mean_score for r in records]),
    ):
        if sum(math.isfinite(v) for v in values) >= 2:
            return name, values
    return None


def contamination_entry(records: Sequence[FilterRecord]) -> dict[str, Any] | None:
    """``filter.json``'s ``"contamination"``: the estimate over :func:`estimate_score` of the records.

    Adds ``"true"``, the labelled share of defective images, when every label is known (e.g. the noise
    benchmark), else None. None when fewer than 2 images have a finite score.
    """
    found = estimate_score(records)
    if found is None:
        return None
    name, values = found
    out = estimate_contamination(values, score_name=name).to_dict()
    known = all(r.label in (LABEL_NORMAL, LABEL_ANOMALOUS) for r in records)
    out["true"] = sum(r.label == LABEL_ANOMALOUS for r in records) / len(records) if known else None
    return out
