"""Several categories in one command: one run (or one benchmark) per category, and a summary with the mean.

The paper trains one model per category and reports each category plus the mean. Over a data-set root
(:class:`~ssfilter.data.formats.DataSet` with ``is_root``):

* :func:`train_categories` trains ``OUT/<category>/`` with :func:`~ssfilter.pipelines.training_run.fit_run`
  and evaluates it on the category's test split (the run's noisy split when ``noise`` is given); a plain
  folder has no test split and gets no metrics;
* :func:`benchmark_categories` runs :func:`~ssfilter.pipelines.benchmark.run_benchmark` into
  ``OUT/<category>/`` (methods x noise levels of each category);
* :func:`train_unified` trains one model on the union of the categories (Dinomaly's multi-class setting,
  ``--unified``) in ``OUT/unified/`` and evaluates it per category.

Each writes ``OUT/summary.json`` and ``OUT/summary.md``: one row per category, one column per metric
(training) or per method, alpha and metric (benchmark), and a mean row over the categories (a mean needs
every category). ``summary.json`` is rewritten after every finished category; ``resume=True`` keeps the
finished categories and continues the others (unfinished runs from their last checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ssfilter.config import Config, load_config
from ssfilter.data.datasets import Sample
from ssfilter.data.formats import Category, DataSet, get_format, recorded_split
from ssfilter.errors import RunExistsError
from ssfilter.io import atomic_write_json, atomic_write_text
from ssfilter.pipelines.benchmark import run_benchmark
from ssfilter.pipelines.run_data import UNIFIED_CATEGORIES
from ssfilter.pipelines.training_run import fit_run, fit_samples
from ssfilter.runfolder import (
    CONFIG_FILE,
    FILTER_SUMMARY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    NOISE_SPLIT_FILE,
    STATE_FILE,
)
from ssfilter.runtime.distributed import is_main_process

#: The run folder of ``--unified`` under ``OUT``; per-category splits go to ``OUT/unified/categories/<c>/``.
UNIFIED_RUN = "unified"

__all__ = [
    "SUMMARY_JSON",
    "SUMMARY_MD",
    "TRAIN_COLUMNS",
    "benchmark_categories",
    "summary_markdown",
    "train_categories",
    "train_unified",
]

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
#: The metrics of a training summary (the paper's seven; P-AUPRO is the MVTec definition).
TRAIN_COLUMNS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "P-AUPRO")
#: The benchmark summary's metrics per method and alpha (the paper's Tables 1-2).
_BENCHMARK_METRICS = ("I-AUROC", "P-AUPRO")

#: Markdown column of the in-batch filter's abnormal recall (second half of training, SSFilter runs).
_RECALL_COLUMN = "abnormal recall (in-batch filter)"

Row = dict[str, Any]


def train_categories(
    dataset: DataSet,
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    noise: float | None = None,
    overlap: bool = False,
    noise_seed: int = 0,
) -> dict[str, Any]:
    """Train and evaluate one run per category into ``out/<category>/``; write the summary.

    Args:
        dataset: The categories to train (a root, possibly narrowed with ``DataSet.select``).
        cfg: Configuration of every run (a resumed run keeps the one saved in its folder).
        out: Output folder.
        resume: Keep finished categories; continue unfinished runs from their last checkpoint.
        overwrite: Start over in an ``out`` that holds a summary (finished runs are replaced).
        progress: Show progress bars.
        noise: Noise ratio of the format's protocol per category (SoftPatch; Real-IAD: FUIAD lists).
        overlap: Keep injected images in the test set (SoftPatch).
        noise_seed: Seed of the injected selection.

    Returns:
        The ``summary.json`` payload.
    """
    out = Path(out)

    def one(category: Category) -> Row:
        run = out / category.name
        run_cfg = cfg
        if resume and (run / CONFIG_FILE).is_file():
            run_cfg = load_config(run / CONFIG_FILE)
        fit_run(
            run_cfg,
            category.path,
            run,
            resume=resume and (run / STATE_FILE).is_file(),
            overwrite=overwrite,
            progress=progress,
            noise=noise,
            overlap=overlap,
            noise_seed=noise_seed,
            data_format=dataset.format,
        )
        metrics = _evaluate_run(run, category, dataset.format, cfg.train.device, progress)
        row = {"category": category.name, "run": str(run), "values": _pick(metrics, TRAIN_COLUMNS)}
        return {**row, "abnormal_recall": _abnormal_recall(run)}

    return _per_category(dataset, out, "train", list(TRAIN_COLUMNS), one, resume=resume, overwrite=overwrite)


def train_unified(
    dataset: DataSet,
    cfg: Config,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    noise: float | None = None,
    overlap: bool = False,
    noise_seed: int = 0,
) -> dict[str, Any]:
    """One model on the union of the categories (``--unified``), evaluated per category; the summary.

    Each category's training set (with its noise protocol) is built as for a per-category run; its
    ``noise_split.json`` and ``skipped.csv`` go to ``out/unified/categories/<category>/`` and its test split
    (the noisy one when ``noise`` is given) is what the category's row is evaluated on. The in-batch filter
    then compares images of mixed categories in one batch; the run's ``filter_summary.json`` (abnormal
    recall, normal discard rate) is copied into the summary to show what that does. Arguments as for
    :func:`train_categories`.
    """
    from ssfilter.data.validation import prepare_training_samples

    out = Path(out)
    run = out / UNIFIED_RUN
    _start(out, "unified", resume, overwrite)  # refuse an existing summary early
    if (run / MODEL_FILE).is_file() and not (resume or overwrite):
        raise RunExistsError(f"{run} already holds a trained model; pass --resume or --overwrite")
    log.info("one unified model on %d categories: %s", len(dataset.categories), ", ".join(dataset.names))
    union: list[Sample] = []
    for category in dataset.categories:
        folder = run / UNIFIED_CATEGORIES / category.name
        if resume and (folder / NOISE_SPLIT_FILE).is_file():
            from ssfilter.data.noise import NoiseSplit

            saved = NoiseSplit.load(folder / NOISE_SPLIT_FILE)
            noise, overlap, noise_seed = saved.alpha, saved.overlap, saved.seed
        samples, _ = prepare_training_samples(
            category.path,
            folder,
            noise=noise,
            overlap=overlap,
            noise_seed=noise_seed,
            data_format=dataset.format,
        )
        union += samples
    run_cfg = load_config(run / CONFIG_FILE) if resume and (run / CONFIG_FILE).is_file() else cfg
    if overwrite:
        (run / STATE_FILE).unlink(missing_ok=True)
    resumed = resume and (run / STATE_FILE).is_file()
    fit_samples(
        run_cfg, union, run, dataset.path, resume=resumed, progress=progress, data_format=dataset.format
    )
    recall = _abnormal_recall(run)

    def one(category: Category) -> Row:
        folder = run / UNIFIED_CATEGORIES / category.name
        metrics = _evaluate_run(run, category, dataset.format, cfg.train.device, progress, splits=folder)
        row = {"category": category.name, "run": str(run), "values": _pick(metrics, TRAIN_COLUMNS)}
        return {**row, "abnormal_recall": recall}

    return _per_category(
        dataset, out, "unified", list(TRAIN_COLUMNS), one, resume=resume, overwrite=overwrite
    )


def _abnormal_recall(run: Path) -> float | None:
    """The in-batch filter's abnormal recall of a finished SSFilter run (``None`` without labels)."""
    path = run / FILTER_SUMMARY_FILE
    if not path.is_file():
        return None
    return _defined(json.loads(path.read_text(encoding="utf-8")).get("abnormal_recall"))


def benchmark_categories(
    dataset: DataSet,
    alphas: Sequence[float],
    methods: Sequence[str],
    cfg: Config,
    out: str | Path,
    *,
    overlap: bool = False,
    noise_seed: int = 0,
    progress: bool = True,
    resume: bool = False,
    overwrite: bool = False,
    protocol: str = "softpatch",
) -> dict[str, Any]:
    """:func:`~ssfilter.pipelines.benchmark.run_benchmark` per category into ``out/<category>/``; the summary.

    Columns are ``"<method> alpha=<a> <metric>"`` for I-AUROC and P-AUPRO; each category's own
    ``results.md`` / ``report.html`` hold the full tables. Arguments as for :func:`train_categories` and
    ``run_benchmark``.
    """
    out = Path(out)
    columns = [f"{m} alpha={a:g} {k}" for m in methods for a in alphas for k in _BENCHMARK_METRICS]

    def one(category: Category) -> Row:
        folder = out / category.name
        payload = run_benchmark(
            category.path,
            alphas,
            methods,
            cfg,
            folder,
            overlap=overlap,
            noise_seed=noise_seed,
            progress=progress,
            resume=resume,
            overwrite=overwrite,
            data_format=dataset.format,
            protocol=protocol,
        )
        values = {
            f"{r['method']} alpha={r['alpha']:g} {k}": r["metrics"].get(k)
            for r in payload["rows"]
            for k in _BENCHMARK_METRICS
        }
        return {"category": category.name, "run": str(folder), "values": _pick(values, columns)}

    return _per_category(dataset, out, "benchmark", columns, one, resume=resume, overwrite=overwrite)


def _per_category(
    dataset: DataSet,
    out: Path,
    kind: str,
    columns: list[str],
    one: Callable[[Category], Row],
    *,
    resume: bool,
    overwrite: bool,
) -> dict[str, Any]:
    """Run ``one`` for every unfinished category, saving the summary after each; return the payload."""
    main = is_main_process()  # under torchrun every process trains and evaluates; rank 0 writes
    done, previous_seconds = _start(out, kind, resume, overwrite)
    started = time.perf_counter()
    rows: list[Row] = []

    def payload() -> dict[str, Any]:
        return {
            "kind": kind,
            "format": dataset.format,
            "data": str(dataset.path),
            "citation": get_format(dataset.format).citation_for(dataset.names),
            "columns": columns,
            "rows": rows,
            "mean": _mean_row(rows, columns),
            "seconds": round(previous_seconds + time.perf_counter() - started, 1),
        }

    for category in dataset.categories:
        if category.name in done:
            log.info("%s: finished earlier, kept (%s)", category.name, done[category.name]["run"])
            rows.append(done[category.name])
            continue
        log.info("category %s (%d of %d)", category.name, len(rows) + 1, len(dataset.categories))
        t0 = time.perf_counter()
        row = one(category)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if main:
            atomic_write_json(out / SUMMARY_JSON, payload())
    result = payload()
    if main:
        atomic_write_json(out / SUMMARY_JSON, result)
        atomic_write_text(out / SUMMARY_MD, summary_markdown(result))
    return result


def _start(out: Path, kind: str, resume: bool, overwrite: bool) -> tuple[dict[str, Row], float]:
    """Check ``out``; the finished categories of an earlier summary of the same kind (with ``resume``)."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    path = out / SUMMARY_JSON
    if not path.is_file():
        return {}, 0.0
    if not (resume or overwrite):
        raise RunExistsError(
            f"{out} already holds a multi-category {SUMMARY_JSON}; pass --resume to continue it or "
            "--overwrite to start over"
        )
    if overwrite:
        return {}, 0.0
    previous = json.loads(path.read_text(encoding="utf-8"))
    if previous.get("kind") != kind:
        raise RunExistsError(f"{path} is a {previous.get('kind')} summary, not a {kind} one")
    rows = {r["category"]: r for r in previous.get("rows", [])}
    return rows, float(previous.get("seconds", 0.0))


def _evaluate_run(
    run: Path,
    category: Category,
    data_format: str,
    device: str,
    progress: bool,
    splits: Path | None = None,
) -> dict[str, Any]:
    """Metrics of the run on the category's test split (its noisy split's when it has one).

    The split is looked for in ``splits`` (default: the run folder), where the evaluation JSON is written
    (``metrics.json``). A plain folder has no labelled test split: its row has no metrics.
    """
    if data_format == "folder" or not (run / MODEL_FILE).is_file():
        return {}
    from ssfilter.runtime.device import resolve_device
    from ssfilter.training.checkpoint import load_run

    splits = splits or run
    recorded = recorded_split(category.path, splits, data_format)
    test = recorded[1] if recorded is not None else category.samples("test")
    run_cfg, model = load_run(run, resolve_device(device))
    return _evaluate_model(model, run_cfg, test, splits / METRICS_FILE, progress)


def _evaluate_model(
    model: Any, cfg: Config, test: Sequence[Sample], out: Path, progress: bool
) -> dict[str, Any]:
    """Evaluate ``model`` on the readable ``test`` samples; write the evaluation JSON to ``out``."""
    from ssfilter.data.validation import validate_samples
    from ssfilter.evaluation.evaluate import evaluate_model

    samples, skipped = validate_samples(test, masks=True, what="test image")
    if not samples:
        raise ValueError(f"no readable test images for {out.parent} ({len(skipped)} skipped)")
    device = next(model.parameters()).device
    result = evaluate_model(model, samples, cfg, device=device, progress=progress)
    payload = result.to_json()
    payload["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
    if is_main_process():
        atomic_write_json(out, payload)
    return dict(result.metrics)


def _defined(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when missing or NaN."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _pick(values: dict[str, Any], columns: Sequence[str]) -> dict[str, float | None]:
    """The summary columns of ``values`` (``None`` where undefined)."""
    return {c: _defined(values.get(c)) for c in columns}


def _mean_row(rows: Sequence[Row], columns: Sequence[str]) -> dict[str, float | None]:
    """Mean per column over the categories; ``None`` where any category lacks the value."""
    mean: dict[str, float | None] = {}
    for c in columns:
        values = [r["values"].get(c) for r in rows]
        mean[c] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    return mean


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (values in %, one decimal; ``-`` undefined), the mean row last."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    columns = summary["columns"]
    recall = any(r.get("abnormal_recall") is not None for r in summary["rows"])
    extra = [_RECALL_COLUMN] if recall else []
    lines = [
        f"{summary['kind']} summary: {summary['format']} data at {summary['data']} (%)",
        "",
        "| category | " + " | ".join([*columns, *extra]) + " |",
        "|" + "---|" * (len(columns) + len(extra) + 1),
    ]
    for row in summary["rows"]:
        cells = [cell(row["values"][c]) for c in columns]
        cells += [cell(row.get("abnormal_recall"))] if recall else []
        lines.append(f"| {row['category']} | " + " | ".join(cells) + " |")
    mean = [cell(summary["mean"][c]) for c in columns] + ([""] if recall else [])
    lines.append("| **mean** | " + " | ".join(mean) + " |")
    if summary.get("citation"):
        lines += ["", f"Data: {summary['citation']}."]
    return "\n".join(lines) + "\n"
