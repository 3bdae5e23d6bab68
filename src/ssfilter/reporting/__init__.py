"""Self-contained HTML reports (``report.html`` + ``report_assets/``) for evaluate, filter, benchmark, demo.

One module per page: :mod:`~ssfilter.reporting.evaluate_page` (``evaluate --report``),
:mod:`~ssfilter.reporting.filter_page` (``filter``) and :mod:`~ssfilter.reporting.benchmark_page`
(``benchmark``, its tables from :mod:`~ssfilter.reporting.benchmark_tables`); the demo report puts the
filter and evaluate sections on one page. They share the page frame (:mod:`~ssfilter.reporting.frame`)
and the SVG charts (:mod:`~ssfilter.reporting.charts`); rendering needs numpy, scipy and Pillow only.
:mod:`ssfilter.reporting.examples` collects heat-maps of selected test images from a model (torch).
"""

from ssfilter.reporting.benchmark_page import write_benchmark_report
from ssfilter.reporting.evaluate_page import EvaluateReport, write_evaluate_report
from ssfilter.reporting.filter_page import write_filter_report
from ssfilter.reporting.frame import ASSETS_DIR, write_report
from ssfilter.runfolder import REPORT_FILE

__all__ = [
    "ASSETS_DIR",
    "REPORT_FILE",
    "EvaluateReport",
    "write_benchmark_report",
    "write_evaluate_report",
    "write_filter_report",
    "write_report",
]
