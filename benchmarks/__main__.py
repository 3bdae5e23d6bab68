"""``python -m benchmarks``: every benchmark section in one run, one table of ratios.

Sections (in order): patch scoring (blocked vs full), uncertainty (batched vs sequential K passes),
training (ssfilter vs dinomaly per iteration), inference (eager vs torch.compile vs ONNX Runtime per
preset), dataset filter (with vs without cached features) and scaling rows. Each row compares two
measurements A and B of one setting and gives ``A / B``, the issue's target where there is one, and notes.

    python -m benchmarks                      # full run (under 15 minutes on 2 CPU cores)
    python -m benchmarks --quick              # CI smoke run (under a minute)
    python -m benchmarks --device cuda --out results.md
    python -m benchmarks --only uncertainty --only filter

The table goes to stdout (and to ``--out`` as Markdown with date, machine and torch version); progress
goes to stderr. A section that fails becomes a row ``n/a (error)`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from benchmarks import bench_filter, bench_inference, bench_patch_scoring, bench_training, bench_uncertainty
from benchmarks.common import (
    Context,
    Row,
    cpu_seconds,
    load_average,
    machine_info,
    render_markdown,
    set_clock,
)

SECTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "patch_scoring": bench_patch_scoring.run,
    "uncertainty": bench_uncertainty.run,
    "training": bench_training.run,
    "inference": bench_inference.run,
    "filter": bench_filter.run,
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (CI, under a minute)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to measure (default: cuda when available)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    parser.add_argument(
        "--only", action="append", choices=sorted(SECTIONS), default=None, help="run only these sections"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time (default) or process CPU time -- with --threads 1, stable on a shared machine",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections and print the table.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0, or 1 when a section failed.
    """
    args = _parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        _log("--device cuda: no CUDA GPU is available")
        return 2
    if args.clock == "cpu" and args.device == "cuda":
        _log("--clock cpu measures CPU time; a CUDA run needs --clock wall")
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    device = torch.device(args.device)
    header = machine_info(device)
    header["mode"] = "--quick (smoke sizes, one repeat)" if args.quick else "full"
    header["clock"] = (
        "process CPU time (`--clock cpu`): the computation's own cost, not inflated by other processes"
        if args.clock == "cpu"
        else "wall time"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > (os.cpu_count() or 1) and args.clock == "wall":
        _log(
            f"warning: the machine is busy (load {load:.1f} on {os.cpu_count()} cores); wall times will be "
            "inflated and noisy -- consider --threads 1 --clock cpu"
        )
    rows: list[Row] = []
    failed = False
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ssfilter_bench_") as tmp:
        ctx = Context(quick=args.quick, device=device, tmp=Path(tmp), log=_log)
        for name in args.only or list(SECTIONS):
            t0 = time.perf_counter()
            try:
                rows += SECTIONS[name](ctx)
            except Exception as err:  # noqa: BLE001 - report the failure in the table, keep going
                failed = True
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err) else ''}"
                _log(f"[{name}] FAILED: {reason}")
                rows.append(Row(name, "section failed", "-", None, "-", None, "", na=f"error: {reason}"))
            _log(f"[{name}] done in {time.perf_counter() - t0:.0f} s")
    header["load average (1/5/15 min) at end"] = load_average()
    header["total time"] = (
        f"{time.perf_counter() - start:.0f} s wall, {cpu_seconds():.0f} s CPU (this process and its children)"
    )
    text = render_markdown(rows, header)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
