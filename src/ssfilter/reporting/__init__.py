"""Self-contained HTML reports (``report.html`` + ``report_assets/``) for evaluate, filter, benchmark, demo.

:mod:`ssfilter.reporting.html` renders (numpy and Pillow only); :mod:`ssfilter.reporting.examples`
collects heat-maps of selected test images from a model (torch).
"""

from ssfilter.reporting.html import (
    ASSETS_DIR,
    REPORT_FILE,
    EvaluateReport,
    write_benchmark_report,
    write_evaluate_report,
    write_filter_report,
    write_report,
)

__all__ = [
    "ASSETS_DIR",
    "REPORT_FILE",
    "EvaluateReport",
    "write_benchmark_report",
    "write_evaluate_report",
    "write_filter_report",
    "write_report",
]
