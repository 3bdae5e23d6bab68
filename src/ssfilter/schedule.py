"""Schedule lengths (lr warm-up, hard-mining ramp, the in-batch filter's cold start) in iterations.

Each is given either as an iteration count or, when that is ``None``, as a share of ``train.iters``, so
that ``--iters`` moves the phases along with training. This module turns a config into the iteration
counts training runs with, and says in words where the phases begin and end, with a warning for every
phase a run can never reach.
"""

from __future__ import annotations

from ssfilter.config import Config

__all__ = ["resolve_schedule", "schedule_length", "schedule_notes"]


def resolve_schedule(cfg: Config) -> Config:
    """A copy of ``cfg`` whose schedule lengths are iteration counts (fractions of ``train.iters`` applied).

    Warm-up, hard-mining ramp and cold start are given either in iterations or, when those are ``None``,
    as shares of training, so that ``--iters`` moves them along (paper presets: 0.1 / 1.0 / 1.0, the
    paper's 100 / 1000 / 1000 at its 1000 iterations). Training and the dataset filter read this copy;
    the run folder keeps the config as given.
    """
    out = cfg.copy()
    tr, bf, iters = out.train, out.batch_filter, out.train.iters
    tr.warmup_iters = schedule_length(tr.warmup_iters, tr.warmup_fraction, iters)
    tr.hard_mining_ramp = schedule_length(tr.hard_mining_ramp, tr.hard_mining_ramp_fraction, iters, minimum=1)
    bf.cold_start_iters = schedule_length(bf.cold_start_iters, bf.cold_start_fraction, iters)
    return out


def schedule_length(iterations: int | None, fraction: float, iters: int, minimum: int = 0) -> int:
    """A schedule length in iterations: the explicit count when given, else ``fraction`` of ``iters``.

    Args:
        iterations: Explicit length, or ``None``.
        fraction: Share of training used when ``iterations`` is ``None``.
        iters: Training length.
        minimum: Smallest length returned for a fraction (e.g. 1 for a ramp that is divided by).
    """
    if iterations is not None:
        return int(iterations)
    if fraction < 0:
        raise ValueError(f"a schedule fraction must be >= 0, got {fraction}")
    return max(minimum, round(fraction * iters))


def schedule_notes(cfg: Config) -> tuple[str, list[str]]:
    """The phase boundaries of a run in words, and a warning for every phase it can never reach.

    Args:
        cfg: A config (resolved or not).

    Returns:
        ``(summary, warnings)``.
    """
    run = resolve_schedule(cfg)
    iters, tr, bf = run.train.iters, run.train, run.batch_filter
    assert tr.warmup_iters is not None and tr.hard_mining_ramp is not None and bf.cold_start_iters is not None
    parts = [f"{iters} iterations", f"lr warm-up 0-{min(tr.warmup_iters, iters)}"]
    parts.append(f"hard-mining p ramps to {tr.hard_mining_max:g} by iteration {tr.hard_mining_ramp}")
    notes: list[str] = []
    if tr.warmup_iters >= iters:
        notes.append(f"the lr warm-up ({tr.warmup_iters} iterations) is as long as training ({iters})")
    if tr.hard_mining_ramp > iters:
        reached = tr.hard_mining_max * iters / tr.hard_mining_ramp
        notes.append(
            f"hard-mining p reaches only {reached:.2f} of {tr.hard_mining_max:g}: its ramp "
            f"({tr.hard_mining_ramp} iterations) is longer than training ({iters})"
        )
    if run.train.method == "ssfilter":
        cold = min(bf.cold_start_iters, iters)
        parts.append(
            f"in-batch filter: cold start (A alone) 0-{cold}, regular phase (A and U) {cold}-{iters}"
        )
        if bf.uncertainty and bf.cold_start_iters >= iters:
            notes.append(
                f"the in-batch filter's regular phase (A and U together, Eq. 9) is never reached: the cold "
                f"start ({bf.cold_start_iters} iterations) covers all {iters}; set "
                "batch_filter.cold_start_fraction below 1 (or batch_filter.cold_start_iters) to use it"
            )
    return "schedule: " + "; ".join(parts), notes
