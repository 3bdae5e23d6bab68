"""Section "inference": images/s per preset, eager PyTorch vs ``torch.compile``, ONNX Runtime and OpenVINO.

Each paper preset (ViT-S/14 with random weights; the speed does not depend on their values) is timed on
random inputs already in memory with :mod:`benchmarks.fps` (encoder, decoder, maps at ``eval_size``, blur
and scores). Variants:

* **eager**: plain PyTorch (bf16 autocast + TF32 on CUDA);
* **torch.compile**: the model compiled with the default inductor backend; the time of a cold
  compilation (first call, empty on-disk cache) is in the notes. Any failure is reported as
  ``n/a (reason)``;
* **ONNX Runtime**: the graph written by :func:`ssfilter.inference.export.export_onnx` (fixed batch size),
  run with ONNX Runtime's CPU execution provider (CUDA provider on a CUDA run when installed). The graph
  also normalises the input, which eager does outside the timed call; that is a few element-wise ops.

* **OpenVINO**: the IR written by :func:`ssfilter.inference.openvino_export.export_openvino` (dynamic
  batch axis: a fixed-batch IR compiles to static shapes that OpenVINO 2026.4 gets wrong on these graphs,
  and the same parity gate refuses it), compiled for the CPU with ``INFERENCE_PRECISION_HINT=f32`` -- the
  precision the gate checked and :class:`~ssfilter.inference.onnx_predictor.OpenVinoPredictor` runs with
  -- and ``INFERENCE_NUM_THREADS`` = torch's thread count. A graph the gate refuses is reported as n/a.

``--quick`` measures eager only, on batches of 1, and reports the others as n/a: compiling or
exporting a ViT-S takes tens of seconds to minutes on a CPU.

The suite runs the paper presets; this module also runs on its own for any preset, e.g. the CPU one::

    PYTHONPATH=src python -m benchmarks.bench_inference --preset cpu-fast --threads 1 --clock cpu --no-compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    Context,
    Row,
    machine_info,
    now,
    quiet_stdout,
    random_config,
    random_model,
    render_markdown,
    set_clock,
)
from benchmarks.fps import PAPER_FPS, inference_fn, measure_fps
from ssfilter.config import Config

__all__ = ["main", "run"]

SECTION = "inference"
PRESETS = ("paper-256-224", "paper-448-392")


def _reason(err: BaseException) -> str:
    """A one-line reason for an n/a cell."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:160]}"


@contextlib.contextmanager
def _fresh_compile_cache(folder: Path) -> Iterator[None]:
    """Point inductor's on-disk cache at an empty folder, so the first call measures a cold compile.

    Without it a second run reuses the compiled kernels of the first and its "compilation" takes seconds.
    """
    key = "TORCHINDUCTOR_CACHE_DIR"
    saved = os.environ.get(key)
    os.environ[key] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _batch(ctx: Context) -> int:
    if ctx.quick:
        return 1
    # The paper's batch 16 on a GPU; 4 on a CPU keeps the full run within its time budget (a ViT-S
    # forward at crop 392 costs about 50 GFLOPs per image).
    return 16 if ctx.device.type == "cuda" else 4


def _ort_images_per_s(
    model: torch.nn.Module, cfg: Config, batch: int, repeats: int, ctx: Context
) -> tuple[float, str]:
    """Export with the project's exporter and time ONNX Runtime; return (images/s, notes)."""
    import onnxruntime as ort

    from ssfilter.inference.export import export_onnx  # ImportError -> n/a

    path = ctx.tmp / f"{cfg.preset}_b{batch}.onnx"
    start = time.perf_counter()
    with quiet_stdout():  # a failing export dumps its whole graph on stdout, where the table goes
        export_onnx(model, path, batch_size=batch, config=cfg)
    export_s = time.perf_counter() - start
    providers = ["CPUExecutionProvider"]
    if ctx.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider here; compare on --device cpu")
        providers = ["CUDAExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As many threads as torch uses, so the comparison with eager is like for like.
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(Path(path)), options, providers=providers)
    name = session.get_inputs()[0].name
    crop = cfg.data.crop
    images = np.random.default_rng(0).random((batch, 3, crop, crop), dtype=np.float32)
    session.run(None, {name: images})  # warm-up
    secs = []
    for _ in range(repeats):
        t0 = now()
        session.run(None, {name: images})
        secs.append(now() - t0)
    threads = torch.get_num_threads()
    notes = f"{providers[0]}, {threads} threads; export + parity check {export_s:.0f} s wall"
    return batch / statistics.median(secs), notes


def _openvino_images_per_s(
    model: torch.nn.Module, cfg: Config, batch: int, repeats: int, ctx: Context
) -> tuple[float, str]:
    """Export with the project's OpenVINO exporter and time the compiled IR; return (images/s, notes)."""
    if ctx.device.type != "cpu":
        raise RuntimeError("the OpenVINO row runs OpenVINO's CPU plug-in; compare on --device cpu")
    from ssfilter.inference.openvino_export import export_openvino  # ImportError -> n/a
    from ssfilter.inference.runtimes import OpenVinoRuntime

    path = ctx.tmp / f"{cfg.preset}_dynamic.xml"
    start = time.perf_counter()
    with quiet_stdout():
        # Dynamic batch axis: OpenVINO 2026.4 compiles a fixed-batch IR of these graphs to static shapes
        # whose maps differ from PyTorch by ~0.1, which the parity gate refuses.
        export_openvino(model, path, batch_size=None, config=cfg)
    export_s = time.perf_counter() - start
    threads = torch.get_num_threads()
    runtime = OpenVinoRuntime(path, threads=threads)  # the precision the gate checked (f32)
    crop = cfg.data.crop
    images = np.random.default_rng(0).random((batch, 3, crop, crop), dtype=np.float32)
    runtime.run(images)  # warm-up
    secs = []
    for _ in range(repeats):
        t0 = now()
        runtime.run(images)
        secs.append(now() - t0)
    notes = (
        f"OpenVINO {_openvino_version()} CPU, INFERENCE_PRECISION_HINT={runtime.precision}, "
        f"{threads} threads, "
        f"dynamic batch axis run at batch {batch}; "
        f"export + parity check {export_s:.0f} s wall"
    )
    return batch / statistics.median(secs), notes


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def _exported_row(
    name: str,
    timer: Callable[[torch.nn.Module, Config, int, int, Context], tuple[float, str]],
    args: tuple[torch.nn.Module, Config, int, int],
    setting: str,
    eager: float,
    ctx: Context,
) -> Row:
    """The row of one exported-graph runtime (``timer``) against eager; failures become n/a."""
    ips: float | None = None
    na, notes = None, ""
    if ctx.quick:
        na = "skipped in --quick: export + parity check take tens of seconds"
    else:
        ctx.log(f"[{SECTION}] {setting}: {name}")
        try:
            ips, notes = timer(*args, ctx)
        except ImportError as err:
            na = f"exporter or runtime not available ({_reason(err)})"
        except Exception as err:  # noqa: BLE001 - an export failure is a result to report
            na = f"export failed: {_reason(err)}"
    return Row(SECTION, setting, name, ips, "eager", eager, "img/s", notes=notes, na=na)


def _preset_rows(preset: str, ctx: Context, compile_model: bool = True) -> list[Row]:
    cfg = random_config(preset)
    model = random_model(cfg, ctx.device)
    batch = _batch(ctx)
    amp = ctx.device.type == "cuda"
    repeats = 1 if ctx.quick else 2
    setting = f"{preset} ({cfg.model.backbone}, crop {cfg.data.crop}), batch {batch}"
    ctx.log(f"[{SECTION}] {setting}: eager")
    eager = measure_fps(
        inference_fn(model, cfg, amp), cfg, ctx.device, batch=batch, warmup=0, repeats=repeats
    )
    paper = PAPER_FPS.get(preset)
    paper_note = f"; paper Table 3 (RTX 3090, batch 16): {paper:.0f} img/s" if paper else ""
    rows: list[Row] = []

    compiled: float | None = None
    na: str | None = None
    notes = ""
    if ctx.quick:
        na = "skipped in --quick: compiling takes minutes on a CPU"
    elif not compile_model:
        na = "skipped (--no-compile)"
    else:
        ctx.log(f"[{SECTION}] {setting}: torch.compile")
        try:
            cmodel = torch.compile(model)
            with _fresh_compile_cache(ctx.tmp / f"inductor_{preset}"):
                res = measure_fps(
                    inference_fn(cmodel, cfg, amp), cfg, ctx.device, batch=batch, warmup=0, repeats=repeats
                )
            compiled = res.images_per_s
            notes = f"cold compilation (first call, empty inductor cache) {res.first_call_s:.0f} s wall"
        except Exception as err:  # noqa: BLE001 - any compiler failure is a result to report
            na = _reason(err)
        finally:
            torch._dynamo.reset()
    rows.append(
        Row(
            SECTION,
            setting,
            "torch.compile",
            compiled,
            "eager",
            eager.images_per_s,
            "img/s",
            notes=(notes + "; " if notes else "") + f"median of {repeats}{paper_note}",
            na=na,
        )
    )

    args = (model, cfg, batch, repeats)
    rows.append(_exported_row("ONNX Runtime", _ort_images_per_s, args, setting, eager.images_per_s, ctx))
    rows.append(_exported_row("OpenVINO", _openvino_images_per_s, args, setting, eager.images_per_s, ctx))
    return rows


def run(ctx: Context) -> list[Row]:
    """Measure both paper presets.

    Args:
        ctx: The run's context (``quick``: eager only, batch 1).

    Returns:
        Three rows per preset: torch.compile, ONNX Runtime and OpenVINO vs eager (images/s).
    """
    rows: list[Row] = []
    for preset in PRESETS:
        rows += _preset_rows(preset, ctx)
    return rows


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run this section alone for chosen presets and print its Markdown table.

    Args:
        argv: ``--preset NAME`` (repeatable; default the paper presets), ``--threads N``, ``--clock
            wall|cpu``, ``--no-compile`` (skip ``torch.compile``).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_inference", description=__doc__)
    parser.add_argument("--preset", action="append", default=None, help="preset(s) to measure")
    parser.add_argument("--threads", type=int, default=0, help="torch/runtime CPU threads (0: default)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall or process CPU time")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    device = torch.device("cpu")
    header = {**machine_info(device), "clock": args.clock, "threads": str(torch.get_num_threads())}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ssfilter_bench_") as tmp:
        ctx = Context(quick=False, device=device, tmp=Path(tmp), log=_stderr)
        for preset in args.preset or list(PRESETS):
            rows += _preset_rows(preset, ctx, compile_model=not args.no_compile)
    print(render_markdown(rows, header, title="Inference benchmark"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
