"""What each ``ssfilter`` command does with its parsed arguments: call the API (or a pipeline) and print.

Heavy modules (torch, the API) are imported inside each command, so ``ssfilter --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "cmd_benchmark",
    "cmd_calibrate",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_export",
    "cmd_filter",
    "cmd_info",
    "cmd_predict",
    "cmd_serve",
    "cmd_train",
    "config_from_args",
]


log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace):  # noqa: ANN202 - Config, imported lazily
    """The run configuration: preset or ``--config``, then the shortcut flags, then ``--set``."""
    from ssfilter.config import SHORTCUTS, apply_overrides, get_preset, load_config, shortcut_overrides

    if args.config is not None:
        cfg = load_config(args.config)
        if args.preset:
            warnings.warn("--config given: --preset is ignored", stacklevel=2)
    else:
        cfg = get_preset(args.preset or "paper-448-392")
    apply_overrides(cfg, shortcut_overrides({name: getattr(args, name, None) for name in SHORTCUTS}))
    apply_overrides(cfg, args.overrides)
    if getattr(args, "weights", None) is not None:
        cfg.model.weights = str(Path(args.weights).resolve())
    return cfg


def resolve_data_arg(args: argparse.Namespace):  # noqa: ANN201 - DataSet, imported lazily
    """The ``--data`` folder resolved (``--format``, ``--categories``); its format and categories logged."""
    from ssfilter.data.formats import resolve_data

    names = [n.strip() for n in (getattr(args, "categories", None) or "").split(",") if n.strip()]
    dataset = resolve_data(args.data, args.data_format).select(names)
    if names and not dataset.is_root:
        raise ValueError(f"--categories needs a data-set root; {args.data} is one category")
    log.info("%s", dataset.describe())
    return dataset


def use_data_arg(args: argparse.Namespace, det) -> Path | None:  # noqa: ANN001 - Detector, lazily
    """``--data`` of ``evaluate`` / ``filter``, resolved and logged; a forced ``--format`` goes to ``det``.

    Returns the data to pass on: ``None`` when ``--format`` moved it into ``det`` (its default data).
    """
    if args.data is None:
        if det.data is not None and det.data.exists():
            from ssfilter.data.formats import resolve_data

            log.info("the run's %s", resolve_data(det.data, det.data_format).describe())
        return None
    resolve_data_arg(args)
    if args.data_format is None:
        return args.data
    det.data, det.data_format = Path(args.data).resolve(), args.data_format
    return None


def cmd_train(args: argparse.Namespace) -> int:
    """``ssfilter train``: train (or resume) a run folder, or one per category of a data-set root."""
    from ssfilter.api import Detector

    dataset = resolve_data_arg(args)
    cfg = config_from_args(args)
    if dataset.is_root or args.unified:
        return train_root(args, dataset, cfg)
    from ssfilter.runfolder import CONFIG_FILE

    if args.resume and (args.out / CONFIG_FILE).is_file():
        from ssfilter.config import load_config

        saved = load_config(args.out / CONFIG_FILE)
        if saved.to_dict() != cfg.to_dict():
            print(f"note: resuming with the configuration saved in {args.out / CONFIG_FILE}", file=sys.stderr)
        cfg = saved
    t0 = time.perf_counter()
    options = _training_options(args)
    Detector(cfg).fit(
        args.data, args.out, stop_after=args.stop_after, data_format=args.data_format, **options
    )
    if is_main_process():
        print(f"trained in {time.perf_counter() - t0:.1f}s; run folder: {args.out}")
    return 0


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``train`` options that one run and a data-set root share."""
    return {
        "resume": args.resume,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
        "noise": args.noise,
        "overlap": args.overlap,
        "noise_seed": args.noise_seed,
    }


def train_root(args: argparse.Namespace, dataset, cfg) -> int:  # noqa: ANN001 - DataSet, Config (lazy)
    """``ssfilter train`` over a data-set root: one run per category, or one ``--unified`` run."""
    from ssfilter.pipelines.categories import SUMMARY_MD, train_categories, train_unified

    if args.unified and not dataset.is_root:
        raise ValueError(
            f"--unified needs a data-set root of several categories; {args.data} is one category"
        )
    if args.stop_after is not None:
        raise ValueError("--stop-after applies to one category; over a root, interrupt and use --resume")
    t0 = time.perf_counter()
    (train_unified if args.unified else train_categories)(dataset, cfg, args.out, **_training_options(args))
    if is_main_process():
        print((args.out / SUMMARY_MD).read_text(encoding="utf-8"))
        seconds = time.perf_counter() - t0
        print(f"trained {len(dataset.categories)} categories in {seconds:.0f}s; runs in {args.out}")
    return 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints results."""
    from ssfilter.runtime import distributed

    return distributed.is_main_process()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ssfilter evaluate``: metrics of a run on a test split (and its report)."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    data = use_data_arg(args, det)
    payload = det.evaluate(data, out=args.out, progress=not args.quiet, report=args.report)
    print(json.dumps({"metrics": payload["metrics"], "n_test": payload["n_test"]}, indent=2))
    if args.report is not None:
        print(f"report: {args.report / 'report.html'}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    """``ssfilter filter``: the dataset filter over a folder (lists, report, clean export)."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    data = use_data_arg(args, det)
    summary = det.filter(
        data,
        args.out,
        epochs=args.epochs,
        min_keep=args.min_keep,
        export_clean=args.export_clean,
        progress=not args.quiet,
        overwrite=args.overwrite,
        quarantine=args.quarantine,
        dry_run=args.dry_run,
        uncertainty=args.uncertainty,
        pool=args.pool,
        decision=args.decision,
        outlier_k=args.outlier_k,
    )
    if is_main_process():
        print(json.dumps(summary, indent=2))
        print(f"report: {args.out / 'report.html'}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """``ssfilter benchmark``: methods x noise levels on one data set."""
    from ssfilter.data.noise_protocols import get_protocol
    from ssfilter.pipelines.benchmark import parse_methods, run_benchmark

    methods = parse_methods(args.methods)
    protocol = get_protocol(args.protocol)
    if args.alphas is None:
        alphas = list(protocol.default_alphas)
    else:
        try:
            alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        except ValueError:
            raise ValueError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
    t0 = time.perf_counter()
    dataset = resolve_data_arg(args)
    options = {
        "overlap": args.overlap,
        "noise_seed": args.noise_seed,
        "progress": not args.quiet,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "protocol": protocol.name,
    }
    if dataset.is_root:
        from ssfilter.pipelines.categories import SUMMARY_MD, benchmark_categories

        benchmark_categories(dataset, alphas, methods, config_from_args(args), args.out, **options)
        print((args.out / SUMMARY_MD).read_text(encoding="utf-8"))
        print(
            f"benchmark of {len(dataset.categories)} categories finished in {time.perf_counter() - t0:.0f}s"
        )
        return 0
    run_benchmark(
        args.data, alphas, methods, config_from_args(args), args.out, data_format=args.data_format, **options
    )
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"benchmark finished in {time.perf_counter() - t0:.0f}s; results in {args.out}")
    print(f"report: {args.out / 'report.html'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``ssfilter predict``: OK/NG, scores, overlays and masks of new images."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    report = det.predict_files(
        args.inputs,
        args.out,
        batch_size=args.batch_size,
        threshold=args.threshold,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(
        f"{len(report.records)} image(s): {report.n_ng} NG, {len(report.records) - report.n_ng} OK "
        f"(raw threshold {report.calibration.image_threshold:.6g}); {report.n_regions} defect region(s) "
        f"in the NG images; {len(report.skipped)} skipped; "
        f"results in {args.out}"
    )
    if not report.records:
        print(f"error: no readable image among the inputs; see {args.out / 'skipped.csv'}", file=sys.stderr)
        return 2
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``ssfilter serve``: load the model once, then answer HTTP requests until interrupted."""
    from ssfilter.inference.backends import BACKENDS, load_backend

    name, source = next(
        (n, getattr(args, f"backend_{n}")) for n in BACKENDS if getattr(args, f"backend_{n}") is not None
    )
    try:
        from ssfilter.inference.server import ServeSettings, serve
    except ImportError as err:
        print(f"error: {err}; install the server with: pip install 'ssfilter[serve]'", file=sys.stderr)
        return 2
    if args.max_body_mb <= 0:
        raise ValueError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    settings = ServeSettings(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_images=args.max_images, queue_size=args.queue
    )
    backend = load_backend(name, source, device=args.device, threshold=args.threshold)
    print(f"serving {backend.name} model {backend.source} on http://{args.host}:{args.port}/", flush=True)
    serve(
        backend,
        host=args.host,
        port=args.port,
        workers=args.workers,
        settings=settings,
        device=args.device,
        threshold=args.threshold,
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``ssfilter calibrate``: (re)compute a run's thresholds."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    cal = det.calibrate(args.data, val=args.val, progress=not args.quiet)
    print(json.dumps(cal.to_dict(), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``ssfilter export``: the run in a registered format, written only when it passes the parity check."""
    from ssfilter.inference.formats import UnknownExportFormatError, get_export_format

    try:
        fmt = get_export_format(args.format)
    except UnknownExportFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        from ssfilter.inference.export import ExportParityError, export_run
        from ssfilter.inference.onnx_predictor import read_export_metadata
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        path = export_run(
            args.run,
            args.out,
            fmt.name,
            opset=args.opset,
            batch_size=args.batch_size,
            check_images=args.check_images,
        )
    except ExportParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parity = read_export_metadata(path)["parity"]
    how = f"{parity['runtime']} ({parity['settings']})" if parity.get("settings") else parity["runtime"]
    print(
        f"wrote {path}; parity of {how} vs PyTorch on {parity['n_images']} inputs "
        f"({parity['n_real']} real images): "
        f"max |diff| calibrated map {parity['max_map_diff']:.3g} (tolerance {parity['map_tolerance']:g}), "
        f"normalised score {parity['max_score_diff']:.3g} (tolerance {parity['score_tolerance']:g}), "
        f"OK/NG label mismatches {parity['label_mismatches']}; raw map {parity['max_raw_map_diff']:.3g}, "
        f"raw score {parity['max_raw_score_diff']:.3g}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """``ssfilter info``: parameters and GFLOPs of a configuration."""
    from ssfilter.api import model_info

    print(json.dumps(model_info(config_from_args(args)), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``ssfilter demo``: the offline end-to-end demo."""
    from ssfilter.pipelines.demo import run_demo

    run_demo(args.out, weights=args.weights, progress=not args.quiet)
    return 0
