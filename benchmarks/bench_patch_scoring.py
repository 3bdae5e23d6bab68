"""Section "patch scoring": pair-blocked vs full-matrix patch comparison scoring (Algorithm 1, SPEC §2).

Times :func:`ssfilter.filtering.patch_scoring.patch_scores` (pair-blocked, ``block_rows=4096``) against
:func:`ssfilter.filtering.patch_scoring.full_patch_scores` (one ``(B*HW)^2`` similarity matrix) on random
ViT-S-sized descriptors (D = 3 * 384 = 1152) at crop 224 (16x16 = 256 patches) and crop 392 (28x28 = 784),
and the extra memory each needs (:func:`benchmarks.common.measure_peak`: the peak RSS increase on the CPU,
``max_memory_allocated`` on CUDA). The notes give the analytic size of the largest buffer (the float32
similarity block or matrix, the kept top-k values) next to the measured peak.

Reading the times: on the CPU, ``z @ z.T`` on the whole matrix is recognised as a symmetric product and
costs about half the FLOPs of a general product. Until 2026-12-01 the blocked version cut the matrix into
row blocks, which cannot use that symmetry; it now multiplies each image pair once (see the module
docstring of ``patch_scoring``), the same saving with bounded memory. The issue's thresholds (crop 392,
batch 32): blocked < 1 GB and at most 1.3x the full version's time.
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import MB, Context, Row, measure_peak, time_samples
from ssfilter.filtering.patch_scoring import full_patch_scores, neighbour_count, patch_scores

__all__ = ["run"]

SECTION = "patch scoring"
DIM = 1152  # ViT-S descriptor: blocks 2 and 5 plus the mean of blocks 2, 5 and 9 (Eq. 1)
GRIDS = {224: 16, 392: 28}  # crop -> patch grid side (patch size 14)
QUICK_CASES = [(224, 8), (392, 4)]
FULL_CASES = [(224, 8), (224, 32), (392, 8), (392, 16), (392, 32)]
BLOCK_ROWS = 4096
TOPK_RATIO = 0.001
MAX_FULL_GB = 6.0  # skip the full version above this (its matrix alone)
THRESHOLD_CASE = (392, 32)


def _block_floats(b: int, hw: int) -> int:
    """Floats of the largest similarity block: one image's patches against at most ``B-1`` partners'."""
    partners = min(b - 1, max(1, BLOCK_ROWS * b // hw))
    return hw * partners * hw


def _repeats(n: int, quick: bool) -> int:
    """Timed calls per version: more for cheap cases, one from 12,544 patches on (tens of seconds each)."""
    if quick:
        return 1
    return 3 if n <= 4096 else 2 if n <= 8192 else 1


def _case(crop: int, b: int, ctx: Context, gen: torch.Generator) -> tuple[list[Row], float | None]:
    """Measure one (crop, batch) case; return its rows and the blocked version's peak MB."""
    hw = GRIDS[crop] ** 2
    n = b * hw
    k = neighbour_count(b, hw, TOPK_RATIO)
    desc = torch.randn(b, hw, DIM, generator=gen).to(ctx.device)
    blocked_fn = lambda: patch_scores(desc, TOPK_RATIO, BLOCK_ROWS)  # noqa: E731
    full_fn = lambda: full_patch_scores(desc, TOPK_RATIO)  # noqa: E731
    block = _block_floats(b, hw)
    # Largest live buffers: the float32 similarity block / matrix, the kept top-k values, the normalised copy.
    blk_analytic = (block + b * hw * b * min(k, hw) + n * DIM) * 4 / MB
    full_analytic = (n * n + n * k + n * DIM) * 4 / MB
    setting = f"crop {crop} ({hw} patches), B {b}, D {DIM}, N {n}, k {k}"
    ctx.log(f"[{SECTION}] {setting}")

    t_blk, m_blk, blocked = measure_peak(blocked_fn, ctx.device)
    if n * n * 4 > MAX_FULL_GB * 1024**3:
        reason = f"full matrix needs {n * n * 4 / 1024**3:.1f} GB > {MAX_FULL_GB:g} GB"
        return [
            Row(SECTION, setting, "blocked", t_blk, "full", None, "s", na=reason),
            Row(SECTION, setting, "blocked peak", m_blk, "full peak", None, "MB", na=reason),
        ], m_blk
    t_full, m_full, full = measure_peak(full_fn, ctx.device)
    max_diff = float((blocked - full).abs().max())
    extra = _repeats(n, ctx.quick) - 1
    # The memory-measuring call is the first timed sample; more are taken round-robin (A, B, A, B).
    samples = time_samples({"blocked": blocked_fn, "full": full_fn}, ctx.device, extra) if extra else {}
    t_blk = statistics.median([t_blk, *samples.get("blocked", [])])
    t_full = statistics.median([t_full, *samples.get("full", [])])
    is_threshold = (crop, b) == THRESHOLD_CASE
    time_row = Row(
        SECTION,
        setting,
        "blocked",
        t_blk,
        "full",
        t_full,
        "s",
        target="<= 1.3x" if is_threshold else "",
        met=(t_blk / t_full <= 1.3) if is_threshold else None,
        notes=f"time, median of {extra + 1}; max |blocked - full| = {max_diff:.1e}",
    )
    mem_note = (
        f"peak {'allocated' if ctx.device.type == 'cuda' else 'RSS'} increase; analytic largest buffers "
        f"{blk_analytic:.0f} MB blocked ({block} floats per block), {full_analytic:.0f} MB full"
    )
    mem_row = Row(
        SECTION,
        setting,
        "blocked peak",
        m_blk,
        "full peak",
        m_full,
        "MB",
        target="blocked < 1 GB" if is_threshold else "",
        met=(m_blk is not None and m_blk < 1024) if is_threshold else None,
        notes=mem_note,
        na=None if m_blk is not None and m_full is not None else "peak memory not measurable here",
    )
    return [time_row, mem_row], m_blk


def run(ctx: Context) -> list[Row]:
    """Measure every case of this section.

    Args:
        ctx: The run's context (``quick`` picks the two small cases).

    Returns:
        Two rows per case (time, memory) and the "scoring memory vs batch size" scaling rows.
    """
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(2, 64, DIM, generator=gen).to(ctx.device)  # one-off start-up costs
    patch_scores(warm, TOPK_RATIO, 32)
    full_patch_scores(warm, TOPK_RATIO)
    rows: list[Row] = []
    peaks: dict[tuple[int, int], float | None] = {}
    for crop, b in QUICK_CASES if ctx.quick else FULL_CASES:
        case_rows, peaks[(crop, b)] = _case(crop, b, ctx, gen)
        rows += case_rows
    rows += _memory_scaling(peaks, ctx)
    return rows


def _memory_scaling(peaks: dict[tuple[int, int], float | None], ctx: Context) -> list[Row]:
    """Scaling rows: blocked scoring memory of the largest batch vs the smallest, per crop."""
    rows = []
    for crop in GRIDS:
        batches = sorted(b for c, b in peaks if c == crop)
        if len(batches) < 2:
            continue
        lo, hi = batches[0], batches[-1]
        hw = GRIDS[crop] ** 2
        analytic = _block_floats(hi, hw) / _block_floats(lo, hw)
        rows.append(
            Row(
                "scaling",
                f"blocked scoring memory vs batch size, crop {crop}",
                f"B {hi}",
                peaks[(crop, hi)],
                f"B {lo}",
                peaks[(crop, lo)],
                "MB",
                notes=(
                    f"batch x{hi / lo:g}; analytic block ratio {analytic:.1f}x (one image's patches against "
                    f"its later partners, at most block_rows * N)"
                ),
                na=None if peaks[(crop, hi)] and peaks[(crop, lo)] else "peak memory not measurable here",
            )
        )
    if not rows:
        ctx.log(f"[{SECTION}] one batch size per crop: no memory scaling row")
    return rows
