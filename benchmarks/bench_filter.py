"""Section "dataset filter": dataset-level filtering with vs without cached encoder features, and scaling.

:func:`ssfilter.filtering.dataset_filter.filter_dataset` runs the in-batch filter over the data set for
kappa_1 random epochs. With ``cache_features=True`` (the default) every image is read and encoded once and
its features are reused; with ``cache_features=False`` every epoch reads and encodes every image again.
Both runs use the same seed, so their decisions must be identical -- the row says whether they are.

Where the time goes is measured by timing the pieces of the uncached run (wrappers around image reading,
the encoder, patch comparison scoring and the MC-dropout passes): each batch costs one encoder pass but K
bottleneck + decoder passes, so the cache can at most remove the encoder's and the reader's share. The
notes give that breakdown and the ratio projected to the paper's kappa_1 = 20 epochs from it (the measured
runs use fewer epochs to fit the time budget).

Scaling: filter time (cached, one epoch) for 1x, 2x and 4x the images; linear scaling reads 2x and 4x.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ssfilter.filtering.batch_filter as batch_filter_module
from benchmarks.common import Context, Row, now, random_config, random_model
from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, discover
from ssfilter.data.synthetic import make_synthetic_category
from ssfilter.filtering.dataset_filter import filter_dataset
from ssfilter.filtering.filter_outputs import FilterRecords
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.schedule import resolve_schedule

__all__ = ["run"]

SECTION = "dataset filter"
PROJECT_EPOCHS = 20  # the paper's kappa_1


@dataclass
class _Setting:
    preset: str
    overrides: dict[str, object]
    n: int
    batch: int
    epochs: int


FULL_SETTINGS = [
    _Setting("cpu-fast", {}, 16, 8, 2),
    _Setting("paper-448-392", {}, 4, 4, 2),
]
QUICK_SETTINGS = [_Setting("cpu-fast", {"data.resize": 72, "data.crop": 64}, 8, 4, 2)]
FULL_SCALING = _Setting("cpu-fast", {}, 8, 4, 1)
QUICK_SCALING = _Setting("cpu-fast", {"data.resize": 72, "data.crop": 64}, 4, 4, 1)

_PARTS = ("image reading", "encoder", "patch scoring", "MC passes")


@dataclass
class _Breakdown:
    """Seconds spent in each timed piece of one filter run."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_PARTS, 0.0))
    missing: list[str] = field(default_factory=list)

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += now() - start

        return timed


@contextlib.contextmanager
def _instrumented(model: DinomalyModel) -> Iterator[_Breakdown]:
    """Time image reading, the encoder, patch scoring and the MC passes while the block runs.

    The wrappers replace module / class attributes for the duration of the block only; a piece that has
    been renamed in the library is listed in ``missing`` instead of failing the benchmark.
    """
    bd = _Breakdown()
    saved: list[tuple[Any, str, bool, Any]] = []  # (object, attribute, had its own, its own value)

    def patch(obj: Any, attr: str, part: str) -> None:
        if not hasattr(obj, attr):
            bd.missing.append(part)
            return
        own = vars(obj).get(attr)
        saved.append((obj, attr, attr in vars(obj), own))
        setattr(obj, attr, bd.wrap(part, getattr(obj, attr)))

    patch(AnomalyDataset, "__getitem__", "image reading")
    patch(model, "encode", "encoder")
    patch(batch_filter_module, "batch_anomaly_scores", "patch scoring")
    patch(batch_filter_module, "mc_uncertainty", "MC passes")
    try:
        yield bd
    finally:
        for obj, attr, had_own, own in reversed(saved):
            if had_own:
                setattr(obj, attr, own)
            else:
                delattr(obj, attr)


def _filter(
    model: DinomalyModel, data: Path, cfg: Config, epochs: int, cache: bool, ctx: Context
) -> tuple[float, FilterRecords, _Breakdown]:
    samples = discover(data, "train")
    with _instrumented(model) as bd:
        start = now()
        records = filter_dataset(
            model,
            samples,
            cfg,
            epochs=epochs,
            min_keep=max(0, epochs // 2 - 1),
            device=ctx.device,
            progress=False,
            cache_features=cache,
            seed=0,
        )
        seconds = now() - start
    return seconds, records, bd


def _data(s: _Setting, cfg: Config, ctx: Context, tag: str) -> Path:
    return make_synthetic_category(
        ctx.tmp / f"filter_{tag}",
        n_train_good=s.n - max(1, s.n // 8),
        n_train_defect=max(1, s.n // 8),
        n_test_good=1,
        n_test_defect=1,
        size=cfg.data.resize,
        seed=0,
    )


def _config(s: _Setting) -> Config:
    return random_config(s.preset, {**s.overrides, "data.batch_size": s.batch})


def _warm_up(model: DinomalyModel, cfg: Config, ctx: Context) -> None:
    """One filter step on a full batch, so the one-off costs of its shapes hit neither timed run.

    The first call of a shape pays for oneDNN kernel generation, RoPE tables and page faults.
    """
    crop, b = cfg.data.crop, cfg.data.batch_size
    images = torch.randn(b, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    with torch.no_grad():
        batch_filter_module.BatchFilter(cfg.batch_filter, cfg.restoration, 1).select(
            resolve_schedule(cfg).batch_filter.cold_start_iters, model, model.encode(images)
        )


def _shares(bd: _Breakdown, total: float) -> str:
    parts = [f"{name} {100 * bd.seconds[name] / total:.0f}%" for name in _PARTS if name not in bd.missing]
    rest = total - sum(bd.seconds[name] for name in _PARTS)
    parts.append(f"other {100 * rest / total:.0f}%")
    return ", ".join(parts)


def _cache_rows(s: _Setting, ctx: Context) -> list[Row]:
    cfg = _config(s)
    model = random_model(cfg, ctx.device)
    data = _data(s, cfg, ctx, f"{s.preset}_{s.n}")
    setting = (
        f"{s.preset} ({cfg.model.backbone}, crop {cfg.data.crop}), {s.n} images, B {s.batch}, "
        f"K {cfg.batch_filter.mc_passes}, {s.epochs} epochs"
    )
    ctx.log(f"[{SECTION}] {setting}")
    _warm_up(model, cfg, ctx)
    t_off, rec_off, bd_off = _filter(model, data, cfg, s.epochs, False, ctx)
    t_on, rec_on, bd_on = _filter(model, data, cfg, s.epochs, True, ctx)
    same_decisions = [a.decision for a in rec_off] == [b.decision for b in rec_on]
    same_kept = [a.times_kept for a in rec_off] == [b.times_kept for b in rec_on]
    n_diff = sum(a.decision != b.decision for a, b in zip(rec_off, rec_on, strict=True))
    # Projection to kappa_1 = 20: the uncached cost per epoch, vs the cached run's one-off reading and
    # encoding plus its per-epoch cost.
    once = bd_on.seconds["image reading"] + bd_on.seconds["encoder"]
    per_epoch_on = max(t_on - once, 0.0) / s.epochs
    projected = (PROJECT_EPOCHS * t_off / s.epochs) / (once + PROJECT_EPOCHS * per_epoch_on)
    equal = "EQUAL" if same_decisions and same_kept else f"DIFFER ({n_diff} of {len(rec_off)} decisions)"
    notes = (
        f"decisions {equal}; uncached time: {_shares(bd_off, t_off)}; "
        f"projected to {PROJECT_EPOCHS} epochs: {projected:.2f}x"
    )
    if bd_off.missing:
        notes += f"; not timed (renamed in the library?): {', '.join(bd_off.missing)}"
    return [
        Row(
            SECTION,
            setting,
            "no cache",
            t_off,
            "feature cache",
            t_on,
            "s",
            target=">= 2x, decisions equal",
            met=(t_off / t_on >= 2.0) and same_decisions and same_kept,
            notes=notes,
            extra={"equal": same_decisions and same_kept, "projected": projected},
        )
    ]


def _scaling_rows(s: _Setting, ctx: Context) -> list[Row]:
    cfg = _config(s)
    model = random_model(cfg, ctx.device)
    _warm_up(model, cfg, ctx)
    times: dict[int, float] = {}
    for factor in (1, 2, 4):
        n = s.n * factor
        data = _data(_Setting(s.preset, s.overrides, n, s.batch, s.epochs), cfg, ctx, f"scaling_{n}")
        ctx.log(f"[scaling] filter {n} images")
        times[factor], _, _ = _filter(model, data, cfg, s.epochs, True, ctx)
    setting = (
        f"filter time vs images: {s.preset} (crop {cfg.data.crop}), B {s.batch}, "
        f"K {cfg.batch_filter.mc_passes}, {s.epochs} epoch, cached"
    )
    return [
        Row(
            "scaling",
            setting,
            f"{factor}x = {s.n * factor} images",
            times[factor],
            f"1x = {s.n} images",
            times[1],
            "s",
            notes=f"linear scaling: {factor:.2f}x",
        )
        for factor in (2, 4)
    ]


def run(ctx: Context) -> list[Row]:
    """Measure the cache's effect per setting, then the scaling with the number of images.

    Args:
        ctx: The run's context (``quick``: one tiny setting, tiny scaling).

    Returns:
        One row per setting (no cache vs cache) and two scaling rows (2x and 4x images vs 1x).
    """
    rows: list[Row] = []
    for s in QUICK_SETTINGS if ctx.quick else FULL_SETTINGS:
        rows += _cache_rows(s, ctx)
    rows += _scaling_rows(QUICK_SCALING if ctx.quick else FULL_SCALING, ctx)
    return rows
