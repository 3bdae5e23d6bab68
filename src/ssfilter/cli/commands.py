"""What each ``ssfilter`` command does with its parsed arguments: call the API (or a pipeline) and print.

Heavy modules (torch, the API) are imported inside each command, so ``ssfilter --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

__all__ = [
    "cmd_benchmark",
    "cmd_calibrate",
    "cmd_demo",
    "cmd_evaluate",
    "cmd_export",
    "cmd_filter",
    "cmd_info",
    "cmd_predict",
    "cmd_train",
    "config_from_args",
]


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


def cmd_train(args: argparse.Namespace) -> int:
    """``ssfilter train``: train (or resume) a run folder."""
    from ssfilter.api import Detector

    cfg = config_from_args(args)
    if args.resume and (args.out / "config.yaml").is_file():
        from ssfilter.config import load_config

        saved = load_config(args.out / "config.yaml")
        if saved.to_dict() != cfg.to_dict():
            print(f"note: resuming with the configuration saved in {args.out}/config.yaml", file=sys.stderr)
        cfg = saved
    t0 = time.perf_counter()
    Detector(cfg).fit(
        args.data,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        noise=args.noise,
        overlap=args.overlap,
        noise_seed=args.noise_seed,
        stop_after=args.stop_after,
    )
    if is_main_process():
        print(f"trained in {time.perf_counter() - t0:.1f}s; run folder: {args.out}")
    return 0


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints results."""
    from ssfilter.runtime import distributed

    return distributed.is_main_process()


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ssfilter evaluate``: metrics of a run on a test split (and its report)."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    payload = det.evaluate(args.data, out=args.out, progress=not args.quiet, report=args.report)
    print(json.dumps({"metrics": payload["metrics"], "n_test": payload["n_test"]}, indent=2))
    if args.report is not None:
        print(f"report: {args.report / 'report.html'}")
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    """``ssfilter filter``: the dataset filter over a folder (lists, report, clean export)."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    summary = det.filter(
        args.data,
        args.out,
        epochs=args.epochs,
        min_keep=args.min_keep,
        export_clean=args.export_clean,
        progress=not args.quiet,
        overwrite=args.overwrite,
        quarantine=args.quarantine,
        dry_run=args.dry_run,
        uncertainty=args.uncertainty,
    )
    if is_main_process():
        print(json.dumps(summary, indent=2))
        print(f"report: {args.out / 'report.html'}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    """``ssfilter benchmark``: methods x noise levels on one data set."""
    from ssfilter.pipelines.benchmark import parse_methods, run_benchmark

    methods = parse_methods(args.methods)
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
    t0 = time.perf_counter()
    run_benchmark(
        args.data,
        alphas,
        methods,
        config_from_args(args),
        args.out,
        overlap=args.overlap,
        noise_seed=args.noise_seed,
        progress=not args.quiet,
        resume=args.resume,
        overwrite=args.overwrite,
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
        f"(raw threshold {report.calibration.image_threshold:.6g}); {len(report.skipped)} skipped; "
        f"results in {args.out}"
    )
    if not report.records:
        print(f"error: no readable image among the inputs; see {args.out / 'skipped.csv'}", file=sys.stderr)
        return 2
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``ssfilter calibrate``: (re)compute a run's thresholds."""
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    cal = det.calibrate(args.data, val=args.val, progress=not args.quiet)
    print(json.dumps(cal.to_dict(), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``ssfilter export``: the run as an ONNX file, written only when it passes the parity check."""
    if args.format.lower() != "onnx":
        print(f"error: unsupported export format {args.format!r}; only 'onnx' is available", file=sys.stderr)
        return 2
    try:
        from ssfilter.inference.export import ExportParityError, export_onnx
        from ssfilter.inference.onnx_predictor import read_onnx_metadata
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(
            args.run, args.out, opset=args.opset, batch_size=args.batch_size, check_images=args.check_images
        )
    except ExportParityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parity = read_onnx_metadata(path)["parity"]
    print(
        f"wrote {path}; parity on {parity['n_images']} inputs ({parity['n_real']} real images): "
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
