"""The benchmark page: the tables of :func:`~ssfilter.reporting.benchmark_tables.results_tables` as HTML.

I-AUROC / P-AUPRO per method and noise level (with their mean) and the dataset-level filter's quality,
the same numbers as the benchmark's ``results.md``; undefined values are marked as such.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssfilter.reporting.benchmark_tables import UNDEFINED_CELL, results_tables
from ssfilter.reporting.frame import UNDEFINED_HTML, escape, links_paragraph, table, write_report

__all__ = ["benchmark_section", "write_benchmark_report"]


def _bench_cell(cell: str) -> str:
    """A benchmark table cell with each undefined (or not run) ``-`` part shown as "undefined"."""
    return " / ".join(
        UNDEFINED_HTML if part == UNDEFINED_CELL else escape(part) for part in cell.split(" / ")
    )


def benchmark_section(rows: Sequence[dict[str, Any]], links: Sequence[tuple[str, str]] = ()) -> str:
    """HTML of a benchmark: I-AUROC / P-AUPRO per method and noise level (with the mean), filter quality.

    Args:
        rows: ``results.json`` rows (``method``, ``alpha``, ``metrics``, ``filter``, ...).
        links: ``(text, relative href)`` links to the benchmark's data files.
    """
    parts = ['<section id="benchmark"><h2>Benchmark</h2>']
    if links:
        parts.append(links_paragraph(links))
    for result_table in results_tables(rows):
        parts.append(f"<h3>{escape(result_table['title'])}</h3>")
        body = [[_bench_cell(c) for c in row] for row in result_table["rows"]]
        parts.append(table(result_table["header"], body, "benchmark"))
    if not rows:
        parts.append("<p>No finished rows yet.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def write_benchmark_report(
    out_dir: str | os.PathLike[str], rows: Sequence[dict[str, Any]], subtitle: str | None = None
) -> Path:
    """Write ``out_dir/report.html`` for a benchmark's rows; returns its path.

    Args:
        out_dir: The benchmark's output folder (links to ``results.json`` / ``results.md`` when present).
        rows: ``results.json`` rows.
        subtitle: Optional line under the title (e.g. the data folder).
    """
    out = Path(out_dir)
    links = [(name, name) for name in ("results.json", "results.md") if (out / name).is_file()]
    return write_report(out, "ssfilter benchmark report", [benchmark_section(rows, links)], subtitle)
