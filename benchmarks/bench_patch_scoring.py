"""Benchmark: row-blocked vs full-matrix patch comparison scoring (paper Algorithm 1, SPEC §2).

Times :func:`ssfilter.filtering.patch_scoring.patch_scores` (row-blocked) against
:func:`ssfilter.filtering.patch_scoring.full_patch_scores` (one ``(B*HW)^2`` similarity matrix) on random
ViT-S-sized descriptors (D = 3 * 384 = 1152) at crop 224 (16x16 = 256 patches) and crop 392 (28x28 = 784),
and reports the extra memory each needs.

Memory method:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory allocated
  before the call (the input descriptors are excluded). Exact for the caching allocator.
* CPU: two numbers. ``analytic``: bytes of the largest intermediate, the float32 similarity block
  (``min(block_rows, N) x N``, or ``N x N`` for the full version). ``rss``: the peak resident-set increase
  during the call, measured on Linux by resetting the process's peak RSS (``echo 5 > /proc/self/clear_refs``)
  and reading ``VmHWM`` from ``/proc/self/status`` afterwards; it also counts the normalised copy of the
  descriptors and allocator slack. Where ``clear_refs`` is unavailable the rss column shows ``n/a``
  (``getrusage``'s ``ru_maxrss`` is a lifetime maximum, so it cannot isolate one call).

The full version is skipped when its similarity matrix alone would exceed ``--max-full-gb`` (default 6 GB);
its row then says ``skipped`` and how much the matrix would need.

Reading the times: on CPU (MKL), ``z @ z.T`` on the whole matrix is recognised as a symmetric product
and costs about half the FLOPs of a general matrix product, which the row blocks cannot use; the full
version is therefore somewhat faster on CPU whenever it fits in memory. The blocked version trades that for
bounded memory. Small cases' rss numbers are dominated by allocator reuse between calls.

Usage::

    python benchmarks/bench_patch_scoring.py --quick        # CPU, under 3 minutes on 2 cores
    python benchmarks/bench_patch_scoring.py --device cuda  # the whole grid
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ssfilter.filtering.patch_scoring import full_patch_scores, neighbour_count, patch_scores

DIM = 1152  # ViT-S descriptor: blocks 2 and 5 plus the mean of blocks 2, 5 and 9 (Eq. 1)
GRIDS = {224: 16, 392: 28}  # crop -> patch grid side (patch size 14)
QUICK_CASES = [(224, 8), (224, 32), (392, 8), (392, 16)]
MB = 1024**2

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_kib(field: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in KiB, or None off Linux."""
    try:
        match = re.search(rf"{field}:\s+(\d+)", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _measure(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int
) -> tuple[float, float | None, torch.Tensor]:
    """Median wall time (s) over ``repeats`` calls, the peak extra memory (MB) and the last result."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        fn()  # warm-up (kernels, allocator); on CPU the one-off warm-up in main() is enough
        sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        ok = _reset_peak_rss()
        before = _rss_kib("VmRSS") if ok else None
    times = []
    out = torch.empty(0)
    for _ in range(repeats):
        del out
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        extra = (torch.cuda.max_memory_allocated(device) - before) / MB
    else:
        peak = _rss_kib("VmHWM")
        extra = (peak - before) / 1024 if before is not None and peak is not None else None
    return statistics.median(times), extra, out


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def _run_case(
    crop: int, b: int, args: argparse.Namespace, device: torch.device, gen: torch.Generator, repeats: int
) -> str:
    """Time and measure both versions on one (crop, batch) case; return the table row."""
    hw = GRIDS[crop] ** 2
    n = b * hw
    k = neighbour_count(b, hw, args.topk_ratio)
    desc = torch.randn(b, hw, DIM, generator=gen).to(device)
    blk_bytes = min(args.block_rows, n) * n * 4
    full_bytes = n * n * 4
    t_blk, m_blk, blocked = _measure(
        lambda: patch_scores(desc, args.topk_ratio, args.block_rows), device, repeats
    )
    blk_mem = _fmt(m_blk) if device.type == "cuda" else f"{blk_bytes / MB:.0f}/{_fmt(m_blk)}"
    if full_bytes > args.max_full_gb * 1024**3:
        t_full_s, ratio_s, diff_s = "skipped", "", "n/a"
        full_mem = f"needs {full_bytes / 1024**3:.2f} GB"
    else:
        t_full, m_full, full = _measure(lambda: full_patch_scores(desc, args.topk_ratio), device, repeats)
        t_full_s, ratio_s = f"{t_full:.3f}", f"{t_full / t_blk:.2f}"
        full_mem = _fmt(m_full) if device.type == "cuda" else f"{full_bytes / MB:.0f}/{_fmt(m_full)}"
        diff_s = f"{float((blocked - full).abs().max()):.1e}"
    return (
        f"{crop:>4} {hw:>4} {b:>3} {n:>6} {k:>3} | {t_blk:9.3f} {t_full_s:>8} {ratio_s:>8} | "
        f"{blk_mem:>13} {full_mem:>15} | {diff_s:>9}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_CASES} (crop, batch), one repeat")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="8,16,32", help="batch sizes of the full grid")
    parser.add_argument("--block-rows", type=int, default=4096)
    parser.add_argument("--topk-ratio", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-full-gb", type=float, default=6.0, help="skip the full version above this")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    batches = [int(b) for b in args.batches.split(",")]
    cases = QUICK_CASES if args.quick else [(crop, b) for crop in GRIDS for b in batches]

    print(
        f"device={device} threads={torch.get_num_threads()} D={DIM} block_rows={args.block_rows} "
        f"topk_ratio={args.topk_ratio} repeats={repeats} (median)"
    )
    memory_note = (
        "cuda max_memory_allocated" if device.type == "cuda" else "analytic largest block / rss peak"
    )
    print(f"memory: extra MB ({memory_note})")
    header = (
        f"{'crop':>4} {'HW':>4} {'B':>3} {'N':>6} {'k':>3} | {'blocked s':>9} {'full s':>8} "
        f"{'full/blk':>8} | {'blk MB':>13} {'full MB':>15} | {'max|diff|':>9}"
    )
    print(header)
    print("-" * len(header))
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(2, 64, DIM, generator=gen).to(device)  # one-off start-up costs (thread pools, kernels)
    patch_scores(warm, args.topk_ratio, 32)
    full_patch_scores(warm, args.topk_ratio)
    for crop, b in cases:
        print(_run_case(crop, b, args, device, gen, repeats), flush=True)


if __name__ == "__main__":
    main()
