"""Shared pieces of the benchmark sections: result rows, interleaved timing, memory, machine description.

Every section returns :class:`Row` objects; :func:`render_markdown` turns all rows of a run into ONE table.
A row compares two measurements ``A`` and ``B`` of the same setting and reports ``A / B`` (each section
states what A and B are, e.g. "sequential" vs "batched", so the ratio reads as a speed-up or a cost).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ssfilter.config import Config, apply_overrides, get_preset
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.training.checkpoint import build_model

__all__ = [
    "CLOCKS",
    "MB",
    "Context",
    "Row",
    "clock_name",
    "cpu_seconds",
    "load_average",
    "machine_info",
    "measure_peak",
    "now",
    "quiet_stdout",
    "random_config",
    "random_model",
    "render_markdown",
    "set_clock",
    "synchronize",
    "time_interleaved",
    "time_samples",
]

MB = 1024**2
T = TypeVar("T")

#: Clocks :func:`now` can read: wall time, or this process's CPU time (see :func:`set_clock`).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: list[str] = ["wall"]


def set_clock(name: str) -> None:
    """Choose what every timing of the run measures: ``"wall"`` (default) or ``"cpu"``.

    ``"cpu"`` reads the process's CPU time. With one torch thread (``--threads 1``) that is the cost of
    the computation itself, unaffected by time slicing when other processes share the cores: the way to
    get stable ratios on a busy machine. CPU runs only; a CUDA run always uses wall time.

    Args:
        name: ``"wall"`` or ``"cpu"``.
    """
    if name not in CLOCKS:
        raise ValueError(f"unknown clock {name!r}; choose one of {sorted(CLOCKS)}")
    _clock[0] = name


def clock_name() -> str:
    """The clock chosen with :func:`set_clock`."""
    return _clock[0]


def now() -> float:
    """The current reading of the chosen clock, in seconds."""
    return CLOCKS[_clock[0]]()


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Context:
    """What every section gets: the run's mode, device and a scratch folder.

    Attributes:
        quick: ``--quick``: tiny sizes, one repeat, slow variants reported as n/a (CI smoke run).
        device: Device the measurements run on.
        tmp: Scratch folder (deleted after the run).
        log: Progress printer (stderr), so stdout carries only the table.
    """

    quick: bool
    device: torch.device
    tmp: Path
    log: Callable[[str], None] = print


@dataclass
class Row:
    """One line of the results table: two measurements of one setting and their ratio ``A / B``.

    Attributes:
        section: Benchmark section, e.g. ``"patch scoring"``.
        setting: What was measured (sizes, preset, batch, K ...).
        a: Label of measurement A (e.g. ``"blocked"``).
        a_value: Value of A (None when not measured).
        b: Label of measurement B.
        b_value: Value of B (None when not measured).
        unit: Unit of both values (``"s"``, ``"MB"``, ``"img/s"`` ...).
        target: The issue's threshold on ``A / B`` in words (empty when there is none).
        met: Whether the target is met (None: no target, or not measured).
        notes: Anything needed to read the row (method, breakdown, caveats).
        na: Why the ratio could not be measured; the ratio cell then reads ``n/a (na)``.
    """

    section: str
    setting: str
    a: str
    a_value: float | None
    b: str
    b_value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    notes: str = ""
    na: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``A / B``, or None when either value is missing, B is 0 or the row is n/a."""
        if self.na is not None or self.a_value is None or self.b_value is None or self.b_value == 0:
            return None
        return self.a_value / self.b_value

    def ratio_text(self) -> str:
        """The ratio cell: ``1.23x`` or ``n/a (reason)``."""
        ratio = self.ratio
        if ratio is None:
            return f"n/a ({self.na or 'not measured'})"
        return f"{ratio:.2f}x"

    def met_text(self) -> str:
        """The "met" cell: yes / NO / - (no target or not measured)."""
        if self.met is None:
            return "-"
        return "yes" if self.met else "NO"


def _fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    """Make ``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[Row], header: Mapping[str, str], title: str = "Benchmark results") -> str:
    """All rows as one Markdown table, preceded by the run's description.

    Args:
        rows: Rows of every section, in the order they should appear.
        header: ``label -> value`` lines written above the table (date, machine, torch, mode ...).
        title: Heading of the document.

    Returns:
        The Markdown text (ends with a newline).
    """
    lines = [f"# {title}", ""]
    lines += [f"- **{key}:** {value}" for key, value in header.items()]
    lines += [
        "",
        "| section | setting | A | B | A / B | target | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            r.section,
            r.setting,
            f"{r.a}: {_fmt_value(r.a_value, r.unit)}",
            f"{r.b}: {_fmt_value(r.b_value, r.unit)}",
            r.ratio_text(),
            r.target or "-",
            r.met_text(),
            r.notes or "",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# -- timing -------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA); a no-op on the CPU.

    Args:
        device: The device whose work is waited for.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_samples(
    fns: Mapping[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Wall times (s) of each function, measured round-robin (A, B, A, B, ...).

    Times are read with :func:`now` (wall or CPU time, see :func:`set_clock`). Interleaving matters on
    a shared machine: a burst of load from other processes then slows every
    variant alike instead of biasing whichever ran during the burst.

    Args:
        fns: ``name -> zero-argument callable`` to time.
        device: Synchronised before each clock read (CUDA).
        repeats: Timed calls per function (at least 1).
        warmup: Untimed calls per function first.

    Returns:
        ``name -> list of seconds``, one per repeat.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = now()
            fn()
            synchronize(device)
            samples[name].append(now() - start)
    return samples


def time_interleaved(
    fns: Mapping[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 0
) -> dict[str, float]:
    """Median wall time (s) of each function over :func:`time_samples` (round-robin calls).

    Args:
        fns: ``name -> zero-argument callable`` to time.
        device: Synchronised before each clock read (CUDA).
        repeats: Timed calls per function (at least 1).
        warmup: Untimed calls per function first.

    Returns:
        ``name -> median seconds``.
    """
    samples = time_samples(fns, device, repeats, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


# -- memory -------------------------------------------------------------------------------------------


def _status_kib(field_name: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB, or None off Linux."""
    try:
        match = re.search(rf"{field_name}:\s+(\d+)", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; False where the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def measure_peak(fn: Callable[[], T], device: torch.device) -> tuple[float, float | None, T]:
    """Run ``fn`` once; return its time (s, :func:`now`), the peak extra memory (MB) and its result.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated before (exact for
    the caching allocator). CPU (Linux): the peak resident-set increase, by resetting ``VmHWM`` through
    ``/proc/self/clear_refs`` and reading it afterwards; it also counts allocator slack and temporary
    copies. None where neither is available.

    Args:
        fn: The call to measure.
        device: Where ``fn`` allocates.
    """
    before: float | None
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = float(torch.cuda.memory_allocated(device))
    else:
        kib = _status_kib("VmRSS") if _reset_peak_rss() else None
        before = None if kib is None else kib * 1024.0
    start = now()
    out = fn()
    synchronize(device)
    seconds = now() - start
    if before is None:
        return seconds, None, out
    if device.type == "cuda":
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / MB, out
    peak = _status_kib("VmHWM")
    return seconds, None if peak is None else (peak * 1024.0 - before) / MB, out


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send everything written to file descriptor 1 (C/C++ code included) to /dev/null for the block.

    The table is the only thing on stdout; some libraries print diagnostics from C++ (e.g. the
    TorchScript ONNX exporter dumps the whole graph when an operator is unsupported).
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            with contextlib.redirect_stdout(sys.stderr):
                yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# -- machine ------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def machine_info(device: torch.device) -> dict[str, str]:
    """Date, CPU model and cores, load average, torch version and threads, and the GPU when used.

    Args:
        device: The device of the run (its name is reported for CUDA).
    """
    cores = os.cpu_count() or 0
    info = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{_cpu_model()}, {cores} logical cores, {platform.system()} {platform.machine()}",
        "load average (1/5/15 min) at start": f"{_load_average()} on {cores} cores",
        "torch": f"{torch.__version__}, {torch.get_num_threads()} CPU threads",
        "device": str(device),
    }
    if device.type == "cuda":
        info["device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    return info


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and its finished children; NaN off Unix."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def load_average() -> str:
    """The current 1/5/15-minute load average (``/proc/loadavg``), or ``n/a``."""
    return _load_average()


# -- models -------------------------------------------------------------------------------------------


def random_config(preset: str, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """A preset's config with a randomly initialised encoder (no weights file needed), plus overrides.

    Speed does not depend on the weights' values, so random weights of the right architecture measure
    the same throughput as pretrained ones.

    Args:
        preset: Named preset (``paper-256-224``, ``paper-448-392``, ``cpu-fast``).
        overrides: ``section.key=value`` strings or a dict, applied after the preset.
    """
    cfg = get_preset(preset)
    cfg.model.random_init = True
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg


def random_model(cfg: Config, device: torch.device) -> DinomalyModel:
    """The model ``cfg`` describes (random encoder weights), in eval mode on ``device``.

    Args:
        cfg: Configuration (see :func:`random_config`).
        device: Target device.
    """
    return build_model(cfg, allow_random=True).to(device).eval()
