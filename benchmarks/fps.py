"""Inference throughput (images/s) of the presets, next to the paper's Table 3.

What is timed is ssfilter's inference computation on a batch already on the device: the frozen encoder,
the bottleneck in eval mode, the decoder, ``1 - cos`` maps, resizing to ``data.eval_size``, the Gaussian
blur and the top-1% image scores (:func:`ssfilter.evaluation.evaluate.predict_maps`). Image decoding and
host-to-device copies are not included. On CUDA it runs under bf16 autocast with TF32 matmuls (``--amp``,
the default there), as training does. The encoder has random weights of the preset's architecture, which
does not change the speed.

Paper Table 3 (NVIDIA RTX 3090, batch 16): 638 FPS at 256-224, 202 FPS at 448-392.

Used by ``benchmarks/gpu_check.sh`` and by the "inference" section of ``python -m benchmarks``::

    python -m benchmarks.fps --device cuda --batch 16
    python -m benchmarks.fps --device cpu --batch 2 --iters 2 --set data.resize=64 --set data.crop=56
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.common import random_config, random_model, synchronize, time_samples
from ssfilter.config import Config
from ssfilter.evaluation.scorers import predict_maps
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["PAPER_FPS", "FpsResult", "inference_fn", "main", "measure_fps"]

#: Paper Table 3: FPS on an NVIDIA RTX 3090 at batch 16.
PAPER_FPS: dict[str, float] = {"paper-256-224": 638.0, "paper-448-392": 202.0}


@dataclass
class FpsResult:
    """One throughput measurement.

    Attributes:
        images_per_s: Images per second (batch / median seconds per batch).
        seconds_per_batch: Median wall time of one batch.
        first_call_s: Wall time of the first call (includes compilation for ``torch.compile``), always on
            the wall clock because the compiler also works in worker processes.
        batch: Images per batch.
        repeats: Timed batches.
    """

    images_per_s: float
    seconds_per_batch: float
    first_call_s: float
    batch: int
    repeats: int


def inference_fn(model: torch.nn.Module, cfg: Config, amp: bool) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The timed computation: maps and scores of a batch (autocast bf16 on CUDA when ``amp``).

    Args:
        model: The model (or its ``torch.compile`` wrapper).
        cfg: Its configuration (for ``data.eval_size``).
        amp: bf16 autocast on CUDA.
    """

    def infer(images: Tensor) -> tuple[Tensor, Tensor]:
        return predict_maps(model, images, cfg.data.eval_size, amp=amp)  # type: ignore[arg-type]

    return infer


def measure_fps(
    fn: Callable[[Tensor], object],
    cfg: Config,
    device: torch.device,
    *,
    batch: int,
    warmup: int = 1,
    repeats: int = 5,
) -> FpsResult:
    """Throughput of ``fn`` on random ``[batch, 3, crop, crop]`` inputs already on ``device``.

    Args:
        fn: Inference function (see :func:`inference_fn`).
        cfg: Configuration (crop size).
        device: Where the inputs live and the work runs.
        batch: Images per call.
        warmup: Untimed calls after the first one.
        repeats: Timed calls (the median is reported).
    """
    crop = cfg.data.crop
    images = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(device)
    synchronize(device)
    start = time.perf_counter()  # wall clock: compilation also runs in worker processes
    fn(images)
    synchronize(device)
    first = time.perf_counter() - start
    secs = time_samples({"fn": lambda: fn(images)}, device, repeats, warmup=warmup)["fn"]
    median = statistics.median(secs)
    return FpsResult(batch / median, median, first, batch, repeats)


def _enable_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print one FPS line per preset.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", action="append", default=None, help="preset(s); default: both paper ones")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (paper: 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches after the first")
    parser.add_argument("--iters", type=int, default=20, help="timed batches (median reported)")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA (default: bf16 autocast)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--set", action="append", default=[], help="config override SECTION.KEY=VALUE")
    args = parser.parse_args(argv)

    name = args.device
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    amp = device.type == "cuda" and not args.no_amp
    if device.type == "cuda":
        _enable_tf32()
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast + TF32" if amp else ("float32 + TF32" if device.type == "cuda" else "float32")
    print(f"fps: torch {torch.__version__}, python {platform.python_version()}, {where}", flush=True)
    for preset in args.preset or list(PAPER_FPS):
        cfg = random_config(preset, args.set)
        model: DinomalyModel | torch.nn.Module = random_model(cfg, device)
        if args.compile:
            model = torch.compile(model)
        res = measure_fps(
            inference_fn(model, cfg, amp),
            cfg,
            device,
            batch=args.batch,
            warmup=args.warmup,
            repeats=args.iters,
        )
        paper = PAPER_FPS.get(preset)
        paper_text = f"paper Table 3 (RTX 3090, batch 16): {paper:.0f} FPS" if paper else "paper: n/a"
        print(
            f"FPS {preset} (crop {cfg.data.crop}, {cfg.model.backbone}): {res.images_per_s:.1f} images/s "
            f"| batch {args.batch}, {where}, {precision}, median of {args.iters} "
            f"| {paper_text}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
