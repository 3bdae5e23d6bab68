"""Command-line interface (SPEC §11). Argument parsing only; the work happens in :mod:`ssfilter.api`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from ssfilter.config import PRESETS
from ssfilter.training.methods import list_methods
from ssfilter.version import VERSION

__all__ = ["build_parser", "main"]

METHODS = list_methods()


def _add_config_options(p: argparse.ArgumentParser, *, train: bool) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="named preset (default paper-448-392)"
    )
    g.add_argument(
        "--config", type=Path, default=None, help="YAML config file (applied before the options below)"
    )
    g.add_argument(
        "--backbone",
        default=None,
        help="encoder: dinov2_vits14_reg (default), dinov2_vitb14_reg, "
        "dinov2_vitl14_reg, mobilenet_v2, tiny_vit",
    )
    g.add_argument("--weights", default=None, help="local encoder weights file (.pth or .safetensors)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    if train:
        g.add_argument("--method", choices=METHODS, default=None, help="training method")
        g.add_argument(
            "--attention",
            choices=("mlla", "linear"),
            default=None,
            help="decoder attention (linear = Dinomaly's plain linear attention ablation)",
        )
        g.add_argument("--iters", type=int, default=None, help="training iterations")
        g.add_argument("--batch-size", type=int, default=None, help="training batch size")
        g.add_argument("--seed", type=int, default=None, help="random seed")
        g.add_argument("--device", default=None, help="auto (default), cpu or cuda")


def _non_negative_int(text: str) -> int:
    """Argparse type of a count that may be 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter train``."""
    p = sub.add_parser("train", help="train a model on a folder of (mostly good) images")
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout category or any folder of images")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        metavar="ALPHA",
        help="inject int(ALPHA * n_train) anomalous test images into training (SoftPatch protocol)",
    )
    p.add_argument(
        "--overlap", action="store_true", help="with --noise: keep injected images in the test set"
    )
    p.add_argument("--noise-seed", type=int, default=0, help="with --noise: seed of the injected selection")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after iteration N as if interrupted (e.g. a job time limit); continue with --resume",
    )
    _add_config_options(p, train=True)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter evaluate``."""
    p = sub.add_parser("evaluate", help="metrics of a trained run on an MVTec-layout test split")
    p.add_argument("--run", type=Path, required=True, help="run folder")
    p.add_argument("--data", type=Path, default=None, help="test data (default: the run's training folder)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write an HTML report (DIR/report.html: metrics, ROC/PRO curves, heat-maps)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def _add_filter(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter filter``."""
    p = sub.add_parser(
        "filter", help="filter a whole training set with a trained run (writes filter.csv/json)"
    )
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument(
        "--data", type=Path, default=None, help="folder to filter (default: the run's training set)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for filter.csv and filter.json")
    p.add_argument("--epochs", type=int, default=None, help="random epochs kappa_1 (default 20)")
    p.add_argument(
        "--min-keep", type=int, default=None, help="normal when kept more than this often (default 5)"
    )
    p.add_argument(
        "--export-clean", type=Path, default=None, help="lay out the kept images as a training folder"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier filter in --out"
    )


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter benchmark``."""
    p = sub.add_parser("benchmark", help="methods x noise levels on one MVTec-layout folder (paper tables)")
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout category")
    p.add_argument("--alphas", default="0,0.1,0.2,0.4", help="noise levels, comma separated")
    p.add_argument("--overlap", action="store_true", help="keep injected images in the test set")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the injected selection")
    p.add_argument(
        "--methods",
        default="ssfilter,dinomaly",
        help="comma separated: ssfilter, dinomaly, patchcore, softpatch; X+filter for any X but ssfilter",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (results.json, results.md, runs)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted benchmark in --out (keeps done rows)"
    )
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a benchmark")
    _add_config_options(p, train=True)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter predict``."""
    p = sub.add_parser(
        "predict", help="score new images: OK/NG, normalised scores, heat-map overlays and defect masks"
    )
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, help="output folder (predictions.csv/json, PNGs)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="raw image-score threshold overriding the calibrated one",
    )
    p.add_argument("--overwrite", action="store_true", help="write into an --out that holds predictions")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter calibrate``."""
    p = sub.add_parser(
        "calibrate", help="(re)compute a run's OK/NG and pixel thresholds (RUN/calibration.json)"
    )
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--val", type=Path, default=None, help="labelled MVTec-layout folder: F1-max thresholds"
    )
    group.add_argument(
        "--data", type=Path, default=None, help="unlabelled images (default: the run's training set)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def _add_export(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter export``."""
    p = sub.add_parser(
        "export",
        help="export a run's whole inference graph to ONNX, checked against PyTorch",
        description="Export the run (preprocessed [0, 1] RGB crops in; raw maps and scores out; calibration "
        "in the metadata). The file is written only when ONNX Runtime reproduces PyTorch on the run's "
        "training images (or --check-images) plus random inputs: max |diff| of the calibrated maps and "
        "of the normalised scores <= 1e-4, and identical OK/NG labels.",
    )
    p.add_argument("--run", type=Path, required=True, help="trained, calibrated run folder")
    p.add_argument("--format", default="onnx", help="export format (only onnx)")
    p.add_argument("--out", type=Path, required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="fixed batch size (default: dynamic batch axis)"
    )
    p.add_argument(
        "--check-images",
        type=Path,
        default=None,
        help="images for the parity check (default: up to 4 of the run's training images); the check "
        "refuses the export when calibrated maps or normalised scores differ by more than 1e-4 or an "
        "OK/NG label differs",
    )


def _add_info(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter info``."""
    p = sub.add_parser("info", help="parameter count and GFLOPs of a configuration (JSON)")
    _add_config_options(p, train=False)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter demo``."""
    p = sub.add_parser("demo", help="offline end-to-end demo on generated images (no data or weights needed)")
    p.add_argument(
        "--out", type=Path, default=Path("ssfilter_demo"), help="output folder (default ssfilter_demo)"
    )
    p.add_argument(
        "--weights",
        default=None,
        help="encoder weights: DINOv2 (Meta .pth / timm .safetensors) or MobileNetV2; default: "
        "$SSFILTER_DEMO_WEIGHTS or DINOv2 weights in the local Hugging Face cache, else a random encoder",
    )


#: One function per command, in the order ``--help`` lists them.
_SUBCOMMANDS = (
    _add_train,
    _add_evaluate,
    _add_filter,
    _add_benchmark,
    _add_predict,
    _add_calibrate,
    _add_export,
    _add_info,
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ssfilter`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="ssfilter",
        description="Fully unsupervised anomaly detection on noisy image sets (SSFilter on Dinomaly-MLLA).",
    )
    parser.add_argument("--version", action="version", version=f"ssfilter {VERSION}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument(
        "--max-image-pixels",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="decompression-bomb limit per image in pixels (default: Pillow's, about 89 Mpx; 0: no limit); "
        "raise it for trusted very large images such as line-scan captures",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _config_from_args(args: argparse.Namespace):  # noqa: ANN202 - Config, imported lazily
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


def _cmd_train(args: argparse.Namespace) -> int:
    from ssfilter.api import Detector

    cfg = _config_from_args(args)
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
    if _is_main_process():
        print(f"trained in {time.perf_counter() - t0:.1f}s; run folder: {args.out}")
    return 0


def _is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that prints results."""
    from ssfilter.runtime.distributed import is_main_process

    return is_main_process()


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    payload = det.evaluate(args.data, out=args.out, progress=not args.quiet, report=args.report)
    print(json.dumps({"metrics": payload["metrics"], "n_test": payload["n_test"]}, indent=2))
    if args.report is not None:
        print(f"report: {args.report / 'report.html'}")
    return 0


def _cmd_filter(args: argparse.Namespace) -> int:
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
    )
    if _is_main_process():
        print(json.dumps(summary, indent=2))
        print(f"report: {args.out / 'report.html'}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
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
        _config_from_args(args),
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


def _cmd_predict(args: argparse.Namespace) -> int:
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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from ssfilter.api import Detector

    det = Detector.load(args.run, device=args.device)
    cal = det.calibrate(args.data, val=args.val, progress=not args.quiet)
    print(json.dumps(cal.to_dict(), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_info(args: argparse.Namespace) -> int:
    from ssfilter.api import model_info

    print(json.dumps(model_info(_config_from_args(args)), indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ssfilter.pipelines.demo import run_demo

    run_demo(args.out, weights=args.weights, progress=not args.quiet)
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "filter": _cmd_filter,
    "benchmark": _cmd_benchmark,
    "info": _cmd_info,
    "demo": _cmd_demo,
    "predict": _cmd_predict,
    "calibrate": _cmd_calibrate,
    "export": _cmd_export,
}


#: What Ctrl-C leaves behind, per command (every output file is written atomically).
_INTERRUPTED = {
    "train": "interrupted; the last complete checkpoint is kept (use --resume to continue)",
    "benchmark": "interrupted; finished rows and checkpoints are kept (use --resume to continue)",
    "filter": "interrupted before the filter finished: filter.csv/json and the --export-clean folder "
    "were not written (earlier results are unchanged); run the command again",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssfilter`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from ssfilter.data.images import PIXEL_LIMIT_ENV
    from ssfilter.errors import SSFilterError

    if args.max_image_pixels is not None:  # through the environment, so workers and ranks see it too
        os.environ[PIXEL_LIMIT_ENV] = str(args.max_image_pixels)

    done = False
    try:
        status = _COMMANDS[args.command](args)
        done = True
        return status
    except KeyboardInterrupt:
        print(_INTERRUPTED.get(args.command, "interrupted; no output was half-written"), file=sys.stderr)
        return 130
    # SSFilterError: every refusal of ssfilter's own (bad weights, run folder, device, an image that
    # became unreadable after validation, ...); the built-in ones come from argument checks.
    except (SSFilterError, FileNotFoundError, NotADirectoryError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if "ssfilter.runtime.distributed" in sys.modules:  # a torchrun launch joined a process group
            sys.modules["ssfilter.runtime.distributed"].cleanup(wait=done)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
