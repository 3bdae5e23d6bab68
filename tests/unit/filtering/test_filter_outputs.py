"""Tests of the dataset filter's summary and of ``filter.csv`` / ``filter.json`` (filter_outputs.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from ssfilter.filtering.filter_outputs import FilterRecord, summarize, write_filter_outputs


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
