"""The contamination estimate against the truth on synthetic contamination levels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssfilter.filtering.contamination import contamination_entry, estimate_contamination, mixture_share
from ssfilter.filtering.filter_outputs import FilterRecord


def _scores(rate: float, n: int = 240, seed: int = 0) -> np.ndarray:
    """Right-skewed normal scores (mean 0.2) and a minority of higher defective ones (mean 0.5)."""
    rng = np.random.default_rng(seed)
    k = round(rate * n)
    return np.concatenate([rng.gamma(20, 0.01, n - k), rng.gamma(20, 0.02, k) + 0.1])


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.2, 0.3])
def test_estimate_within_five_points_of_the_truth(rate: float) -> None:
    est = estimate_contamination(_scores(rate), n_boot=40)
    assert abs(est.estimate - rate) <= 0.05
    assert est.low <= est.estimate <= est.high and est.low >= 0.0 and est.high < 0.5
    assert est.n == 240 and est.level == 0.9


def test_clean_folder_reads_zero_and_one_mode_is_no_contamination() -> None:
    assert mixture_share(_scores(0.0, seed=3)) == 0.0
    assert mixture_share(np.full(50, 0.3)) == 0.0
    est = estimate_contamination(_scores(0.0, seed=4), n_boot=30)
    assert est.estimate == 0.0 and est.high <= 0.05


def test_reproducible_and_nan_scores_left_out() -> None:
    x = list(_scores(0.1))
    a = estimate_contamination([*x, math.nan], n_boot=20)
    b = estimate_contamination(x, n_boot=20)
    assert a == b
    with pytest.raises(ValueError, match="at least 2"):
        estimate_contamination([0.1, math.nan])


def test_entry_uses_u_else_a_and_reports_the_true_share_when_labels_are_known() -> None:
    x = _scores(0.1, n=100)
    flat = np.random.default_rng(1).normal(1.0, 0.01, 100)  # one mode: reads ~0 if it were the score
    recs = [
        FilterRecord(f"{i}.png", 20, 10, float(a), float(u), "normal", int(i >= 90))
        for i, (a, u) in enumerate(zip(flat, x, strict=True))
    ]
    entry = contamination_entry(recs)
    assert entry is not None and entry["score"] == "mean U" and entry["true"] == pytest.approx(0.1)
    assert abs(entry["estimate"] - 0.1) <= 0.05  # U's two modes, not A's one
    recs[0].label = -1
    assert contamination_entry(recs)["true"] is None  # type: ignore[index]
    no_u = [
        FilterRecord("a", 1, 1, 0.1, math.nan, "normal"),
        FilterRecord("b", 1, 1, 0.2, math.nan, "normal"),
    ]
    assert contamination_entry(no_u)["score"] == "mean A"  # type: ignore[index]
