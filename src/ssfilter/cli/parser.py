"""The ``ssfilter`` argument parser: one function per command, each defining that command's options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssfilter.config import PRESETS
from ssfilter.coverage import COVERAGES
from ssfilter.inference.backends import BACKENDS
from ssfilter.inference.formats import export_format_names, get_export_format
from ssfilter.training.methods import list_methods
from ssfilter.version import VERSION

__all__ = ["METHODS", "add_global_options", "build_parser"]

METHODS = list_methods()


def add_config_options(p: argparse.ArgumentParser, *, train: bool) -> None:
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
        g.add_argument(
            "--coverage",
            choices=COVERAGES,
            default=None,
            help="auto (default: whole for a plain folder, the centre crop for benchmark formats), crop, "
            "whole, or tiles: score overlapping tiles at native resolution (tiny defects on large parts)",
        )
        g.add_argument(
            "--tile-scale",
            type=float,
            default=None,
            metavar="S",
            help="with --coverage tiles: resize factor before tiling (default 1.0 = native resolution)",
        )


def add_data_format_options(p: argparse.ArgumentParser, *, categories: bool) -> None:
    """``--format`` (and ``--categories`` for commands that run over a data-set root)."""
    p.add_argument(
        "--format",
        dest="data_format",
        default=None,
        metavar="FORMAT",
        help="read --data as mvtec, visa, realiad or folder instead of detecting the layout",
    )
    if categories:
        p.add_argument(
            "--categories",
            default=None,
            metavar="A,B,...",
            help="with a data-set root: only these categories (comma separated; default all)",
        )


def non_negative_int(text: str) -> int:
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
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a category (MVTec AD, VisA, Real-IAD), a data-set root (one run per category) or any folder "
        "of images",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder to write (OUT/<category>/ for a root)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument(
        "--noise",
        type=float,
        default=None,
        metavar="ALPHA",
        help="inject int(ALPHA * n_train) anomalous test images into training (SoftPatch protocol); on "
        "Real-IAD: the official realiad_jsons_fuiad_ALPHA/ lists (0.1, 0.2, 0.4)",
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
    add_data_format_options(p, categories=True)
    p.add_argument(
        "--unified",
        action="store_true",
        help="with a data-set root: one model on the union of the categories (OUT/unified/), evaluated per "
        "category (Dinomaly's multi-class setting)",
    )
    add_config_options(p, train=True)


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
    add_data_format_options(p, categories=False)
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
        "--min-keep",
        type=int,
        default=None,
        help="with --decision vote: normal when kept more than this often (default 5)",
    )
    p.add_argument(
        "--export-clean", type=Path, default=None, help="lay out the kept images as a training folder"
    )
    p.add_argument(
        "--quarantine",
        type=Path,
        default=None,
        metavar="DIR",
        help="lay out the suspects for review in DIR/suspects, most suspect first (links or copies)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write filter.csv/json and the report only; no --export-clean / --quarantine folder",
    )
    _add_filter_scoring(p)
    add_data_format_options(p, categories=False)
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier filter in --out"
    )


def _add_filter_scoring(p: argparse.ArgumentParser) -> None:
    """How ``ssfilter filter`` scores and decides: the uncertainty protocol and the decision rule."""
    p.add_argument(
        "--uncertainty",
        choices=("per-image", "per-batch"),
        default=None,
        help="MC-dropout passes per batch in every epoch (the paper's protocol) or 4K passes once per image, "
        "u redrawn per batch from their spread (about 4x faster on a CPU; decisions close to the paper's, "
        "not equal: see the README); default: the run's dataset_filter.uncertainty (per-batch)",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=None,
        metavar="N",
        help="with --uncertainty per-image: MC-dropout passes per image in the bank (default: the run's "
        "dataset_filter.pool, else 4K; at least "
        "K; larger comes closer to the paper's decisions and costs more)",
    )
    p.add_argument(
        "--decision",
        choices=("vote", "outlier", "estimate"),
        default=None,
        help="estimate: quarantine the estimated share of defective images, highest mean U first; vote: "
        "the paper's kappa_2 vote within batches; outlier: quarantine the images whose mean A lies far above "
        "the whole folder's (default: the run's dataset_filter.decision, estimate for runs trained since "
        "2026-12-02)",
    )
    p.add_argument(
        "--outlier-k",
        type=float,
        default=None,
        help="with --decision outlier: robust standard deviations above the folder's median (default 4)",
    )


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter benchmark``."""
    p = sub.add_parser(
        "benchmark", help="methods x noise levels on a category or a data-set root (paper tables)"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a labelled category (MVTec AD, VisA, Real-IAD) or a data-set root (one benchmark per category)",
    )
    p.add_argument(
        "--alphas",
        default=None,
        help="noise levels, comma separated (default: the protocol's, 0,0.1,0.2,0.4 for softpatch and 0.4 "
        "for boundary)",
    )
    p.add_argument(
        "--protocol",
        default="softpatch",
        metavar="NAME",
        help="noise protocol: softpatch (default; inject int(alpha * n_train) test anomalies into training) "
        "or boundary (the same, then the normal training images reduced to as many as were injected: "
        "a 50%% noise rate, paper Table 10)",
    )
    p.add_argument("--overlap", action="store_true", help="keep injected images in the test set")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the injected selection")
    p.add_argument(
        "--methods",
        default="ssfilter,dinomaly",
        help="comma separated: ssfilter, dinomaly, patchcore, softpatch; X+filter: X trained on the images "
        "the SSFilter run's dataset filter kept (ssfilter+filter: a second SSFilter pass)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (results.json, results.md, runs)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted benchmark in --out (keeps done rows)"
    )
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a benchmark")
    add_data_format_options(p, categories=True)
    add_config_options(p, train=True)


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
        "--val", type=Path, default=None, help="labelled category (MVTec AD, VisA, Real-IAD): F1-max"
    )
    group.add_argument(
        "--data", type=Path, default=None, help="unlabelled images (default: the run's training set)"
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def _add_export(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter export``."""
    p = sub.add_parser(
        "export",
        help="export a run's whole inference graph to ONNX or OpenVINO, checked against PyTorch",
        description="Export the run (preprocessed [0, 1] RGB crops in; raw maps and scores out; calibration "
        "in the metadata). The file is written only when its runtime (ONNX Runtime; OpenVINO on the CPU "
        "at INFERENCE_PRECISION_HINT=f32) reproduces PyTorch on the run's "
        "training images (or --check-images) plus random inputs: max |diff| of the calibrated maps and "
        "of the normalised scores <= 1e-4, and identical OK/NG labels.",
    )
    p.add_argument("--run", type=Path, required=True, help="trained, calibrated run folder")
    formats = "; ".join(f"{name}: {get_export_format(name).description}" for name in export_format_names())
    p.add_argument("--format", default="onnx", help=f"export format (default onnx). {formats}")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="file to write: model.onnx, or model.xml for openvino (its model.bin is written beside it)",
    )
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


def positive_int(text: str) -> int:
    """Argparse type of a count that is at least 1."""
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter serve``: one option per registered back end, exactly one required."""
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP: POST /predict, GET /health, GET /info, an inspection page at /",
        description="Load the model once and answer HTTP requests (needs the serve extra: "
        "pip install 'ssfilter[serve]'). Images are handled in memory; nothing is written to disk.",
    )
    model = p.add_mutually_exclusive_group(required=True)
    for spec in BACKENDS.values():
        model.add_argument(spec.option, dest=f"backend_{spec.name}", metavar=spec.metavar, help=spec.help)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="server processes, each with its own copy of the model (default 1)",
    )
    p.add_argument("--device", default="auto", help="for --run: auto (default), cpu or cuda")
    p.add_argument(
        "--threshold", type=float, default=None, help="raw image threshold overriding the calibrated one"
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        help="largest request body in MiB (default 64); larger requests get 413",
    )
    p.add_argument("--max-images", type=positive_int, default=16, help="most images per request (default 16)")
    p.add_argument(
        "--queue",
        type=positive_int,
        default=8,
        help="most requests admitted at once, the running one included (default 8); more get 503",
    )


def _add_info(sub: argparse._SubParsersAction) -> None:
    """Arguments of ``ssfilter info``."""
    p = sub.add_parser("info", help="parameter count and GFLOPs of a configuration (JSON)")
    add_config_options(p, train=False)


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
    _add_serve,
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
    add_global_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():
        add_global_options(command, default=argparse.SUPPRESS)
    return parser


def add_global_options(p: argparse.ArgumentParser, *, default: object) -> None:
    """The options that apply to every command (``-q``, ``--max-image-pixels``).

    Added to the top-level parser (``ssfilter -q train ...``) with real defaults, and to every command's
    parser (``ssfilter train ... -q``, as users type them) with ``argparse.SUPPRESS`` defaults: a command's
    parser then sets the value only when the option is given after the command, and never overwrites one
    given before it.

    Args:
        p: Parser to add the options to.
        default: ``False`` on the top-level parser (``None`` for the pixel limit), ``argparse.SUPPRESS`` on
            command parsers.
    """
    g = p.add_argument_group("global options") if default is argparse.SUPPRESS else p
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bars, warnings only",
    )
    g.add_argument(
        "--max-image-pixels",
        type=non_negative_int,
        default=None if default is False else default,
        metavar="N",
        help="decompression-bomb limit per image in pixels (default: Pillow's, about 89 Mpx; 0: no limit); "
        "raise it for trusted very large images such as line-scan captures",
    )
