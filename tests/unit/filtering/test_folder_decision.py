"""The dataset filter's folder-level outlier cut: clean folders keep almost everything, defects go."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssfilter.filtering.contamination import contamination_entry
from ssfilter.filtering.filter_outputs import FilterRecord, FilterRecords, suspicion_order
from ssfilter.filtering.folder_decision import apply_estimate_decision, apply_outlier_decision, outlier_cut


def _records(scores, labels=None, uncertainty=None) -> FilterRecords:
    """Records as the dataset filter returns them under the outlier cut (not yet decided)."""
    labels = labels if labels is not None else [0] * len(scores)
    us = uncertainty if uncertainty is not None else [math.nan] * len(scores)
    recs = [
        FilterRecord(f"{i:04d}.png", 20, 10, float(a), float(u), "normal", label=int(y))
        for i, (a, y, u) in enumerate(zip(scores, labels, us, strict=True))
    ]
    return FilterRecords(recs, {"epochs": 20, "min_keep": 5, "decision": "outlier", "outlier_k": 4.0})


def _folder(n_normal: int, n_defect: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal normal scores (a right-skewed mode) and defects well above them."""
    rng = np.random.default_rng(seed)
    normal = np.exp(rng.normal(-2.0, 0.3, n_normal))
    defect = np.exp(rng.normal(-2.0 + 8 * 0.3, 0.3, n_defect))
    return np.concatenate([normal, defect]), np.r_[np.zeros(n_normal), np.ones(n_defect)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_folder_keeps_at_least_97_percent(seed: int) -> None:
    scores, labels = _folder(300, 0, seed)
    recs = _records(scores, labels)
    apply_outlier_decision(recs, 4.0)
    kept = sum(r.decision == "normal" for r in recs) / len(recs)
    assert kept >= 0.97


@pytest.mark.parametrize("share", [0.05, 0.1, 0.2, 0.3])
def test_defects_go_and_normals_stay(share: float) -> None:
    n_defect = int(round(300 * share))
    scores, labels = _folder(300 - n_defect, n_defect, 7)
    recs = _records(scores, labels)
    apply_outlier_decision(recs, 4.0)
    removed = [r.decision == "anomalous" for r in recs]
    assert np.mean([d for d, y in zip(removed, labels, strict=True) if y == 1]) >= 0.95
    assert np.mean([not d for d, y in zip(removed, labels, strict=True) if y == 0]) >= 0.97


def test_cut_matches_a_hand_computed_median_and_mad() -> None:
    scores = np.exp(np.array([0.0, 1.0, 2.0, 3.0, 10.0]))
    cut = outlier_cut(_records(scores), 2.0)
    assert cut is not None and cut.score == "mean A"
    # first round: median 2, |log - 2| = 2, 1, 0, 1, 8 -> MAD 1, cut 4.97: 10 is clipped; second round
    # over 0..3: median 1.5, MAD 1, cut 4.47 keeps all four -> done
    assert cut.median == pytest.approx(1.5)
    assert cut.scale == pytest.approx(1.4826 * 1.0)
    assert cut.to_dict()["threshold"] == pytest.approx(math.exp(1.5 + 2.0 * 1.4826))
    recs = _records(scores)
    apply_outlier_decision(recs, 2.0)
    assert [r.decision for r in recs] == ["normal"] * 4 + ["anomalous"]


def test_uncertainty_is_the_score_without_a_and_nothing_changes_without_scores() -> None:
    us = np.exp(np.array([0.0, 0.1, -0.1, 0.05, 3.0]))
    recs = _records([math.nan] * 5, uncertainty=us)
    cut = apply_outlier_decision(recs, 4.0)
    assert cut is not None and cut.score == "mean U"
    assert [r.decision for r in recs].count("anomalous") == 1 and recs[4].decision == "anomalous"
    empty = _records([math.nan] * 3)
    assert apply_outlier_decision(empty, 4.0) is None
    assert all(r.decision == "normal" for r in empty)
    with pytest.raises(ValueError, match="positive"):
        outlier_cut(recs, 0.0)


def test_suspicion_order_follows_the_cut_with_a_reason() -> None:
    scores, labels = _folder(40, 4, 3)
    recs = _records(scores, labels)
    recs[0].times_kept = 0  # under the vote this image would rank first; under the cut, A decides
    recs.settings["outlier_cut"] = apply_outlier_decision(recs, 4.0).to_dict()
    ranked = suspicion_order(recs)
    assert [r.label for r in ranked[:4]] == [1, 1, 1, 1]
    assert all("robust z" in r.reason and "> 4.0" in r.reason for r in ranked[:4])
    assert all(r.reason == "" for r in ranked[4:])
    assert [r.rank for r in ranked] == list(range(1, len(recs) + 1))


@pytest.mark.parametrize("share", [0.0, 0.1, 0.2])
def test_estimate_decision_quarantines_the_estimated_share_highest_u_first(share: float) -> None:
    n_defect = int(round(240 * share))
    u, labels = _folder(240 - n_defect, n_defect, 11)
    flat_a = np.exp(np.random.default_rng(0).normal(-2.0, 0.3, 240))  # A says nothing here: U decides
    recs = _records(flat_a, labels, uncertainty=u)
    recs.params["decision"] = "estimate"
    cut = apply_estimate_decision(recs)
    assert cut is not None and cut.score == "mean U"
    est = contamination_entry(recs)
    assert est is not None and cut.share == pytest.approx(est["estimate"])  # one estimate, one decision
    removed = np.array([r.decision == "anomalous" for r in recs])
    assert removed.sum() == round(cut.share * len(recs))
    assert (~removed[labels == 0]).mean() >= 0.97
    if n_defect:
        assert removed[labels == 1].mean() >= 0.95
        assert removed.sum() == pytest.approx(n_defect, abs=0.05 * 240)
    else:
        assert not removed.any()  # a clean folder loses nothing
    recs.settings["outlier_cut"] = cut.to_dict()
    ranked = suspicion_order(recs)
    assert all(r.decision == "anomalous" for r in ranked[: removed.sum()])
    assert all("estimated" in r.reason and "most suspect" in r.reason for r in ranked[: removed.sum()])
    us = [r.mean_uncertainty for r in ranked[: removed.sum() + 1]]
    assert us == sorted(us, reverse=True)  # highest U first


def test_estimate_decision_falls_back_to_a_and_leaves_records_without_scores() -> None:
    scores, labels = _folder(90, 10, 4)
    recs = _records(scores, labels)  # no U
    cut = apply_estimate_decision(recs)
    assert cut is not None and cut.score == "mean A" and cut.share is not None
    assert sum(r.decision == "anomalous" for r in recs) == round(cut.share * 100)
    empty = _records([math.nan] * 3)
    assert apply_estimate_decision(empty) is None and all(r.decision == "normal" for r in empty)


def test_the_cli_offers_exactly_the_decisions() -> None:
    import argparse

    from ssfilter.cli.parser import build_parser
    from ssfilter.filtering.folder_decision import DECISIONS

    # The parser spells the names out (importing this module there would load torch for `--help`).
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["filter"]._actions if "--decision" in a.option_strings)
    assert tuple(action.choices) == DECISIONS
