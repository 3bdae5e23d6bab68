"""The ``ssfilter`` argument parser: one function per command, each defining that command's options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssfilter.config import PRESETS
from ssfilter.training.methods import list_methods
from ssfilter.version import VERSION

__all__ = ["METHODS", "build_parser"]

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
    p.add_argument(
        "--uncertainty",
        choices=("per-image", "per-batch"),
        default="per-batch",
        help="MC-dropout passes per batch in every epoch (default, the paper's protocol) or once per "
        "image, redrawn per batch (about 17x faster on a CPU; its decisions differ, see the README)",
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
        type=non_negative_int,
        default=None,
        metavar="N",
        help="decompression-bomb limit per image in pixels (default: Pillow's, about 89 Mpx; 0: no limit); "
        "raise it for trusted very large images such as line-scan captures",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser
