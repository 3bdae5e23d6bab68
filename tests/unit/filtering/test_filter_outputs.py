"""Tests of the dataset filter's summary and of ``filter.csv`` / ``filter.json`` (filter_outputs.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from ssfilter.filtering.filter_outputs import (
    FilterRecord,
    robust_z,
    summarize,
    suspicion_order,
    write_filter_outputs,
)


def _rec(path: str, kept: bool, label: int = -1) -> FilterRecord:
    return FilterRecord(path, 20, 10 if kept else 2, 0.5, 0.1, "normal" if kept else "anomalous", label)


def test_summary_math() -> None:
    recs = [
        _rec("a", True, 0),
        _rec("b", True, 0),
        _rec("c", True, 0),
        _rec("d", False, 0),
        _rec("e", True, 1),
        _rec("f", False, 1),
        _rec("g", False, 1),
        _rec("h", True, 0),
    ]
    s = summarize(recs)
    assert (s["n"], s["n_kept"], s["n_removed"], s["labels_known"]) == (8, 5, 3, True)
    assert s["noise_rate_before"] == pytest.approx(3 / 8)
    assert s["noise_rate_after"] == pytest.approx(1 / 5)
    assert s["normal_kept"] == pytest.approx(4 / 5)
    assert s["anomalies_removed"] == pytest.approx(2 / 3)


def test_summary_unknown_labels_and_empty_denominators() -> None:
    s = summarize([_rec("a", True), _rec("b", False, 0)])
    assert s["labels_known"] is False and s["noise_rate_before"] is None and s["normal_kept"] is None
    s = summarize([_rec("a", False, 0), _rec("b", False, 0)])
    assert s["noise_rate_before"] == 0.0 and s["normal_kept"] == 0.0
    assert s["noise_rate_after"] is None and s["anomalies_removed"] is None


def test_nan_means_written_as_nan(tmp_path: Path) -> None:
    rec = FilterRecord("x.png", 3, 3, math.nan, 0.25, "normal")
    csv_path, _ = write_filter_outputs([rec], tmp_path)
    row = next(csv.DictReader(csv_path.read_text(encoding="utf-8").splitlines()))
    assert math.isnan(float(row["mean_score"])) and float(row["mean_uncertainty"]) == 0.25


def test_suspicion_order_ranks_fewest_keeps_first_and_explains_quarantines(tmp_path: Path) -> None:
    recs = [FilterRecord(f"n{i}.png", 20, 15 + i % 3, 0.10 + 0.001 * i, 0.02, "normal", 0) for i in range(9)]
    recs += [
        FilterRecord("hiA.png", 20, 1, 0.90, 0.02, "anomalous", 1),
        FilterRecord("hiU.png", 20, 1, 0.10, 0.50, "anomalous", 1),
        FilterRecord("edge.png", 20, 4, 0.1045, 0.02, "anomalous", 0),
    ]
    ordered = suspicion_order(recs, min_keep=5)
    assert [r.path for r in ordered[:3]] == ["hiA.png", "hiU.png", "edge.png"]  # keeps, then z of A and U
    assert [r.rank for r in ordered] == list(range(1, len(recs) + 1))
    reasons = {r.path: r.reason for r in recs}
    assert "A high" in reasons["hiA.png"] and "U high" not in reasons["hiA.png"]
    assert (
        "U high" in reasons["hiU.png"]
        and "kept 1 of 20 epochs (normal needs more than 5)" in reasons["hiU.png"]
    )
    assert "A high" not in reasons["edge.png"] and "U high" not in reasons["edge.png"]
    assert all(r.reason == "" for r in recs if r.decision == "normal")
    csv_path, _ = write_filter_outputs(recs, tmp_path)
    rows = list(csv.DictReader(csv_path.read_text(encoding="utf-8").splitlines()))
    assert [r["path"] for r in rows] == [r.path for r in ordered]
    # a plain list carries no params: the reason then leaves out the kappa_2 it was judged against
    assert rows[0]["reason"] == "kept 1 of 20 epochs; A high (robust z 214.7)" and rows[-1]["reason"] == ""


def test_robust_z() -> None:
    z = robust_z([1.0, 2.0, 3.0, math.nan, 100.0, 2.0])
    assert z[1] == 0.0 and math.isnan(z[3]) and z[4] > 10
    assert robust_z([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]
    assert robust_z([1.0, 1.0, 1.0, 4.0])[3] == pytest.approx(2.0)  # MAD 0: the std (1.5) is the scale
