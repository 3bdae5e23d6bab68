"""``ssfilter benchmark``: methods x noise levels on one data set, in one command (SPEC §7, §11).

For every alpha the noise protocol (:mod:`ssfilter.data.noise_protocols`: ``softpatch`` by default, or
Table 10's ``boundary``, a training set half anomalous) builds one noisy training set and test set; every
method is trained on it and evaluated with the same metrics. The methods come from the method registry
(:mod:`ssfilter.pipelines.methods`: dinomaly, ssfilter and every registered baseline). ``X+filter``
trains X on the images that a trained SSFilter kept when filtering that noisy training set (paper §3.6,
Table 1 lower half); the SSFilter run and its filter decisions are shared by all ``+filter`` methods of an
alpha. ``ssfilter+filter`` is SSFilter's own second pass: a fresh SSFilter run on those kept images.

Outputs in ``out``: ``results.json`` (``{"rows": [{"method", "alpha", "overlap", "metrics", "filter"}]}``),
``results.md`` (I-AUROC/P-AUPRO per alpha and their mean, like the paper's tables, plus the
filter-quality table of Fig. 4-5), ``report.html`` (the same tables as a self-contained page) and
one folder per alpha with the runs. The shared SSFilter run (``alpha_A/ssfilter``) records its data and
noise split like a ``ssfilter train --noise`` run, so ``ssfilter filter --run`` / ``evaluate --run`` on it
see the same noisy training and test sets.

A long benchmark can be interrupted: ``results.json`` is rewritten after every finished row, and
``resume=True`` keeps the finished rows, continues unfinished training runs from their last
checkpoint and reuses a finished dataset-level filter instead of starting over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ssfilter.config import Config
from ssfilter.coverage import resolve_coverage
from ssfilter.data.datasets import Sample
from ssfilter.data.formats import Category, resolve_category
from ssfilter.data.noise_protocols import RefineFunction
from ssfilter.errors import RunExistsError
from ssfilter.io import atomic_write_json, atomic_write_text, read_csv_rows
from ssfilter.pipelines.methods import (
    FILTER_SUFFIX,
    MethodContext,
    base_method,
    method_registry,
    parse_methods,
    train_run,
)
from ssfilter.reporting.benchmark_tables import results_tables
from ssfilter.runfolder import (
    FILTER_CSV,
    FILTER_JSON,
    FILTER_SUMMARY_FILE,
    NOISE_SPLIT_FILE,
    SKIPPED_FILE,
    write_data_record,
)

__all__ = ["parse_methods", "results_markdown", "run_benchmark"]


def run_benchmark(
    data: str | Path,
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
    data_format: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method at every noise level; write results.json and results.md.

    Args:
        data: One labelled category (MVTec AD, VisA, Real-IAD; see :mod:`ssfilter.data.formats`).
        alphas: Noise levels of the format's protocol (SoftPatch; Real-IAD: its FUIAD lists).
        methods: Method names (see :func:`~ssfilter.pipelines.methods.parse_methods`).
        cfg: Configuration shared by all methods.
        out: Output folder.
        overlap: Keep the injected anomalies in the test set.
        noise_seed: Seed of the injected selection.
        progress: Show progress bars.
        resume: Continue an interrupted benchmark in ``out`` (finished rows are kept, not recomputed).
        overwrite: Start over in an ``out`` that already holds a (finished or interrupted) benchmark.
        protocol: Noise protocol name (see :func:`~ssfilter.data.noise_protocols.get_protocol`).
        data_format: Read ``data`` as this format instead of detecting it.

    Returns:
        The ``results.json`` payload.

    Raises:
        RunExistsError: ``out`` holds a benchmark and neither ``resume`` nor ``overwrite`` is set.
        ValueError: Both ``resume`` and ``overwrite`` are set, or ``resume`` meets another protocol's results.
        UnknownProtocolError: ``protocol`` is not registered.
    """
    from ssfilter.data.noise_protocols import get_protocol

    methods = parse_methods(methods)
    refine = get_protocol(protocol).refine
    out = Path(out)
    category = resolve_category(data, data_format)
    cfg = resolve_coverage(cfg, category.handler.coverage)  # the paper's centre crop on benchmark formats
    rows, previous_seconds = _start(out, overlap, resume, overwrite, protocol)
    started = time.perf_counter()

    def elapsed() -> float:
        return round(previous_seconds + time.perf_counter() - started, 1)

    def save(row: dict[str, Any]) -> None:
        rows.append({**row, "protocol": protocol})
        atomic_write_json(out / "results.json", {"rows": rows, "seconds": elapsed(), "protocol": protocol})

    for alpha in alphas:
        todo = [m for m in methods if not any(r["method"] == m and r["alpha"] == alpha for r in rows)]
        if todo:
            _run_alpha(category, alpha, todo, cfg, out, overlap, noise_seed, progress, resume, save, refine)
    payload = {"rows": rows, "seconds": elapsed(), "data": str(data), "protocol": protocol}
    atomic_write_json(out / "results.json", payload)
    atomic_write_text(out / "results.md", results_markdown(rows))
    from ssfilter.reporting.benchmark_page import write_benchmark_report

    write_benchmark_report(out, rows, subtitle=f"data: {data}; protocol: {protocol}; overlap: {overlap}")
    return payload


def _start(
    out: Path, overlap: bool, resume: bool, overwrite: bool, protocol: str = "softpatch"
) -> tuple[list[dict[str, Any]], float]:
    """Check ``out`` and return the finished rows (of this ``overlap``) and seconds to continue from.

    A benchmark made with another noise protocol is not resumed: its alpha folders hold other splits.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    existing = [p.name for p in sorted(out.glob("alpha_*"))]
    if (out / "results.json").exists():
        existing.insert(0, "results.json")
    if existing and not (resume or overwrite):
        raise RunExistsError(
            f"{out} already holds a benchmark ({', '.join(existing[:4])}); pass --resume to continue it or "
            "--overwrite to start over"
        )
    if resume and (out / "results.json").is_file():
        done = json.loads((out / "results.json").read_text(encoding="utf-8"))
        earlier = done.get("protocol", "softpatch")  # benchmarks before --protocol were all softpatch
        if earlier != protocol:
            raise ValueError(
                f"{out} holds a benchmark of the {earlier!r} noise protocol; resume it with --protocol "
                f"{earlier} or start the {protocol!r} one in another folder (or --overwrite)"
            )
        rows = [r for r in done.get("rows", []) if r.get("overlap") == overlap]
        return rows, float(done.get("seconds", 0.0))
    return [], 0.0


def _run_alpha(
    category: Category,
    alpha: float,
    todo: Sequence[str],
    cfg: Config,
    out: Path,
    overlap: bool,
    noise_seed: int,
    progress: bool,
    resume: bool,
    save: Callable[[dict[str, Any]], None],
    refine: RefineFunction,
) -> None:
    """Run the unfinished methods ``todo`` at noise level ``alpha``; ``save`` each row as it finishes.

    The noisy split is the category's own (its format's protocol) refined by the noise protocol's ``refine``.

    The shared SSFilter run is trained first when a method needs it or a ``+filter`` method runs, then
    the dataset-level filter when a ``+filter`` method runs, then every method in order.
    """
    from ssfilter.data.noise import contamination

    registry = method_registry()
    train, test, split = refine(*category.noisy_split(alpha, overlap=overlap, seed=noise_seed), noise_seed)
    folder = out / f"alpha_{alpha:g}"
    split.save(folder / NOISE_SPLIT_FILE)
    train, test = _readable(train, test, folder)
    ctx = MethodContext(cfg, test, folder, progress=progress, resume=resume)
    filtered = any(m.endswith(FILTER_SUFFIX) for m in todo)
    kept: list[Sample] = []
    filter_stats = None
    if filtered or any(registry[base_method(m)].needs_ssfilter_run for m in todo):
        t0 = time.perf_counter()
        ctx.ssfilter_model = train_run(cfg, "ssfilter", train, folder / "ssfilter", progress, resume)
        ctx.ssfilter_seconds = round(time.perf_counter() - t0, 1)
        # The shared run records its data and split, as `ssfilter train --noise` does: `ssfilter filter
        # --run RUN` and `ssfilter evaluate --run RUN` then rebuild the same noisy training and test sets.
        write_data_record(folder / "ssfilter", category.path, len(train), category.format)
        split.save(folder / "ssfilter" / NOISE_SPLIT_FILE)
        summary = folder / "ssfilter" / FILTER_SUMMARY_FILE
        ctx.ssfilter_in_batch = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None
    if filtered:
        kept, filter_stats = _filter(ctx.ssfilter_model, train, cfg, folder / "filter", progress, resume)
        filter_stats["noise_rate_before"] = contamination(train)["noise_rate"]
    for name in todo:
        t0 = time.perf_counter()
        method = registry[base_method(name)]
        on_kept = name.endswith(FILTER_SUFFIX)
        samples = kept if on_kept else train
        metrics = method.runner(on_kept)(ctx, samples, folder / name)
        save(
            {
                "method": name,
                "alpha": alpha,
                "overlap": overlap,
                "metrics": metrics,
                "filter": filter_stats if on_kept else None,
                "in_batch_filter": ctx.ssfilter_in_batch if name == "ssfilter" else None,
                "n_train": len(samples),
                "seconds": round(time.perf_counter() - t0, 1)
                + (ctx.ssfilter_seconds if method.needs_ssfilter_run else 0.0),
            }
        )


def _readable(
    train: Sequence[Sample], test: Sequence[Sample], folder: Path
) -> tuple[list[Sample], list[Sample]]:
    """Leave out unreadable images (test images also when their mask is), listed in ``folder/skipped.csv``."""
    from ssfilter.data.images import write_skipped_csv
    from ssfilter.data.validation import validate_samples

    kept_train, skipped_train = validate_samples(train, what="training image")
    kept_test, skipped_test = validate_samples(test, masks=True, what="test image")
    write_skipped_csv(skipped_train + skipped_test, folder / SKIPPED_FILE)
    if not kept_train or not kept_test:
        raise ValueError(f"no readable training or test images left; see {folder / SKIPPED_FILE}")
    return kept_train, kept_test


def _filter(
    model: Any, train: Sequence[Sample], cfg: Config, out: Path, progress: bool, resume: bool = False
) -> tuple[list[Sample], dict[str, Any]]:
    """Dataset-level filter of ``train`` with the shared SSFilter model (reused when already finished)."""
    from ssfilter.filtering.filter_outputs import summarize
    from ssfilter.pipelines.filter_run import filter_folder

    csv_path, json_path = out / FILTER_CSV, out / FILTER_JSON
    if resume and csv_path.is_file() and json_path.is_file():
        # Both files are written atomically, so existing ones are a finished filter of this split.
        decisions = {row["path"]: row["decision"] for row in read_csv_rows(csv_path)}
        if set(decisions) == {s.path for s in train}:
            summary = json.loads(json_path.read_text(encoding="utf-8"))
            normal = {p for p, d in decisions.items() if d == "normal"}
            return [s for s in train if s.path in normal], _filter_stats(summary)
    records = filter_folder(model, train, cfg, out, report=False, progress=progress)
    normal = {r.path for r in records if r.decision == "normal"}
    return [s for s in train if s.path in normal], _filter_stats(summarize(records))


def _filter_stats(summary: dict[str, Any]) -> dict[str, Any]:
    """The filter-quality entries of a benchmark row."""
    return {
        "noise_rate_after": summary["noise_rate_after"],
        "normal_kept": summary["normal_kept"],
        "anomalies_removed": summary["anomalies_removed"],
        "n_kept": summary["n_kept"],
    }


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Paper-style tables: I-AUROC/P-AUPRO (%) per alpha and their mean; filter quality per alpha.

    Args:
        rows: ``results.json`` rows.
    """
    lines: list[str] = []
    for table in results_tables(rows):
        if lines:
            lines.append("")
        lines += [table["title"], "", "| " + " | ".join(table["header"]) + " |"]
        lines.append("|" + "---|" * len(table["header"]))
        lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"
