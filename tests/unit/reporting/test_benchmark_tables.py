from __future__ import annotations

import math

from ssfilter.reporting.benchmark_tables import results_tables


def _row(method: str, alpha: float, i: float | None, p: float | None, filt: dict | None = None) -> dict:
    return {"method": method, "alpha": alpha, "metrics": {"I-AUROC": i, "P-AUPRO": p}, "filter": filt}


def test_metric_table_by_hand() -> None:
    rows = [
        _row("dinomaly", 0.1, 0.5, 0.25),
        _row("ssfilter", 0.0, 0.9, 0.8),
        _row("dinomaly", 0.0, 0.7, math.nan),
        _row("ssfilter", 0.1, 0.8, 0.6),
        _row("patchcore", 0.1, 1.0, 1.0),  # no alpha=0 row: no mean
    ]
    (table,) = results_tables(rows)
    assert table == {
        "title": "I-AUROC / P-AUPRO (%)",
        "header": ["method", "alpha=0", "alpha=0.1", "mean"],
        "rows": [
            ["dinomaly", "70.0 / -", "50.0 / 25.0", "60.0 / -"],  # a NaN makes its mean undefined
            ["ssfilter", "90.0 / 80.0", "80.0 / 60.0", "85.0 / 70.0"],
            ["patchcore", "- / -", "100.0 / 100.0", "- / -"],
        ],
    }


def test_filter_table_takes_the_first_filter_row_of_each_alpha() -> None:
    f1 = {"noise_rate_before": 0.1, "noise_rate_after": 0.025, "normal_kept": 0.95, "anomalies_removed": 0.75}
    f2 = {"noise_rate_before": 0.2, "noise_rate_after": None, "normal_kept": 1.0, "anomalies_removed": 0.0}
    rows = [
        _row("ssfilter", 0.1, 0.9, 0.9),
        _row("dinomaly+filter", 0.1, 0.9, 0.9, f1),
        _row("patchcore+filter", 0.1, 0.9, 0.9, f2),  # same alpha: its (shared) filter is not repeated
        _row("patchcore+filter", 0.2, 0.9, 0.9, f2),
    ]
    tables = results_tables(rows)
    assert [t["title"] for t in tables] == ["I-AUROC / P-AUPRO (%)", "Dataset-level filter (per alpha)"]
    assert tables[1]["header"] == [
        "alpha",
        "noise rate before",
        "noise rate after",
        "normal images kept",
        "anomalies removed",
    ]
    assert tables[1]["rows"] == [["0.1", "10.0", "2.5", "95.0", "75.0"], ["0.2", "20.0", "-", "100.0", "0.0"]]


def test_no_rows_give_an_empty_metric_table() -> None:
    assert results_tables([]) == [
        {"title": "I-AUROC / P-AUPRO (%)", "header": ["method", "mean"], "rows": []}
    ]


def test_in_batch_table_shows_the_ssfilter_runs_recall_per_alpha() -> None:
    def fig(recall: float | None, discard: float | None) -> dict:
        return {"abnormal_recall": recall, "normal_discard_rate": discard}

    summary = {**fig(0.75, 0.375), "phases": {"cold": fig(0.5, 0.25), "regular": fig(0.75, 0.375)}}
    rows = [
        {**_row("ssfilter", 0.0, 0.9, 0.9), "in_batch_filter": {**fig(None, 0.3), "phases": {}}},  # no labels
        {**_row("ssfilter", 0.2, 0.9, 0.9), "in_batch_filter": summary},
        {**_row("dinomaly", 0.2, 0.8, 0.8), "in_batch_filter": None},
    ]
    tables = results_tables(rows)
    assert tables[-1]["title"] == "In-batch filter of the SSFilter run (%)"
    assert tables[-1]["rows"] == [["0.2", "75.0", "37.5", "50.0 / 25.0", "75.0 / 37.5"]]
    assert len(results_tables([_row("ssfilter", 0.2, 0.9, 0.9)])) == 1  # rows from before the column
