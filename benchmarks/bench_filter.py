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

Per-image MC passes: the paper's protocol (``uncertainty="per-batch"``: K fresh MC-dropout passes of every
image in every epoch, the default) vs ``"per-image"`` (``4 K`` passes per image once, ``u_i`` redrawn per
batch from their spread), same seed and batches. The row gives the time ratio and the agreement of the
decisions (share of identical normal/anomalous calls, share of identical keep counts, mean absolute
difference of the keep counts). On random weights the agreement only shows the mechanics; the agreement
on a trained run is measured with ``python -m benchmarks.bench_filter --run RUN`` (see :func:`main`), which
also runs the paper's protocol with a second seed: the agreement of the paper's protocol with itself is the
yardstick.

Scaling: filter time (cached, one epoch) for 1x, 2x and 4x the images; linear scaling reads 2x and 4x.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

import ssfilter.filtering.batch_filter as batch_filter_module
from benchmarks.common import Context, Row, now, random_config, random_model
from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, discover
from ssfilter.data.synthetic import make_synthetic_category
from ssfilter.filtering.contamination import contamination_entry
from ssfilter.filtering.dataset_filter import POOL_PER_PASS, filter_dataset
from ssfilter.filtering.filter_outputs import FilterRecord, FilterRecords
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.schedule import resolve_schedule

__all__ = ["agreement", "main", "run"]

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
FULL_REUSE = _Setting("cpu-fast", {}, 32, 8, PROJECT_EPOCHS)
QUICK_REUSE = _Setting("cpu-fast", {"data.resize": 72, "data.crop": 64}, 8, 4, 6)
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


def agreement(a: Sequence[FilterRecord], b: Sequence[FilterRecord]) -> dict[str, float]:
    """How far two filter runs over the same images agree.

    Returns:
        ``decisions`` (share of identical normal/anomalous calls), ``kept_counts`` (share of identical
        keep counts), ``kept_mad`` (mean absolute difference of the keep counts), ``removed_a`` /
        ``removed_b`` (images called anomalous by each run).
    """
    if [r.path for r in a] != [r.path for r in b] or not a:
        raise ValueError("agreement needs two non-empty runs over the same images in the same order")
    n = len(a)
    pairs = list(zip(a, b, strict=True))
    return {
        "decisions": sum(x.decision == y.decision for x, y in pairs) / n,
        "kept_counts": sum(x.times_kept == y.times_kept for x, y in pairs) / n,
        "kept_mad": sum(abs(x.times_kept - y.times_kept) for x, y in pairs) / n,
        "removed_a": sum(x.decision == "anomalous" for x in a),
        "removed_b": sum(y.decision == "anomalous" for y in b),
    }


def _agreement_text(agr: dict[str, float]) -> str:
    return (
        f"same decisions {100 * agr['decisions']:.1f}%, same keep counts {100 * agr['kept_counts']:.1f}% "
        f"(mean |diff| {agr['kept_mad']:.2f}), removed {agr['removed_a']:.0f} vs {agr['removed_b']:.0f}"
    )


def _filter(
    model: DinomalyModel,
    data: Path,
    cfg: Config,
    epochs: int,
    cache: bool,
    ctx: Context,
    uncertainty: str = "per-batch",
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
            decision="vote",  # the paper protocol's vote: its decisions are what the rows compare
            device=ctx.device,
            progress=False,
            cache_features=cache,
            seed=0,
            uncertainty=uncertainty,
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


def _reuse_rows(s: _Setting, ctx: Context) -> list[Row]:
    """The paper's per-batch MC passes vs the per-image bank: time and agreement of decisions."""
    cfg = _config(s)
    model = random_model(cfg, ctx.device)
    data = _data(s, cfg, ctx, f"reuse_{s.preset}_{s.n}")
    k = cfg.batch_filter.mc_passes
    setting = (
        f"{s.preset} ({cfg.model.backbone}, crop {cfg.data.crop}), {s.n} images, B {s.batch}, K {k}, "
        f"{s.epochs} epochs, random weights"
    )
    ctx.log(f"[{SECTION}] per-batch vs per-image MC passes: {setting}")
    _warm_up(model, cfg, ctx)
    t_old, rec_old, _ = _filter(model, data, cfg, s.epochs, True, ctx, uncertainty="per-batch")
    t_new, rec_new, _ = _filter(model, data, cfg, s.epochs, True, ctx, uncertainty="per-image")
    agr = agreement(rec_old, rec_new)
    return [
        Row(
            SECTION,
            setting,
            "per-batch MC passes (paper)",
            t_old,
            f"per-image MC passes (pool {POOL_PER_PASS * k})",
            t_new,
            "s",
            notes=_agreement_text(agr),
            extra=agr,
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
    rows += _reuse_rows(QUICK_REUSE if ctx.quick else FULL_REUSE, ctx)
    rows += _scaling_rows(QUICK_SCALING if ctx.quick else FULL_SCALING, ctx)
    return rows


# -- agreement on a trained run (python -m benchmarks.bench_filter --run RUN) ------------------------------


def _run_samples(run_dir: Path, data: Path | None, split: Path | None = None) -> tuple[Any, list[Any]]:
    """The trained run and the images to filter.

    ``data`` (with ``split``: the noisy training set the split made of it), else the run's own (noisy)
    training set.
    """
    from ssfilter.data.noise import NoiseSplit, apply_split
    from ssfilter.data.validation import prepare_training_samples
    from ssfilter.inference.run import load_run_folder
    from ssfilter.runfolder import NOISE_SPLIT_FILE

    loaded = load_run_folder(run_dir, "cpu", calibration="skip")
    if split is not None:
        root = data if data is not None else loaded.data
        if root is None:
            raise SystemExit(f"{run_dir} records no training data: pass --data with --split")
        return loaded, apply_split(root, NoiseSplit.load(split))[0]
    if data is not None:
        return loaded, prepare_training_samples(data)[0]
    split = run_dir / NOISE_SPLIT_FILE
    if split.is_file() and loaded.data is not None:
        return loaded, apply_split(loaded.data, NoiseSplit.load(split))[0]
    if loaded.data is None:
        raise SystemExit(f"{run_dir} records no training data: pass --data")
    return loaded, prepare_training_samples(loaded.data)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Time and compare the paper's per-batch MC passes with the per-image bank on a trained run.

    Prints one JSON document: the seconds of each run, the speed-up, the agreement of the per-image run
    (and of the paper's protocol with another seed, the yardstick) with the paper's protocol, and the
    label-based summary of each run when the labels are known.
    """
    from ssfilter.filtering.filter_outputs import summarize

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_filter", description=main.__doc__)
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--data", type=Path, default=None, help="folder to filter (default: the run's)")
    p.add_argument(
        "--split",
        type=Path,
        default=None,
        help="noise_split.json to rebuild the noisy training set from --data (a benchmark run keeps it "
        "next to its ssfilter folder)",
    )
    p.add_argument(
        "--paper-csv",
        type=Path,
        default=None,
        help="take the paper protocol's decisions from this filter.csv of the same images and seed (e.g. a "
        "benchmark's alpha_A/filter/filter.csv) instead of running it (no speed-up ratio then)",
    )
    p.add_argument("--subset", type=int, default=0, help="first N normal images + all anomalous (0: all)")
    p.add_argument("--epochs", type=int, default=None, help="kappa_1 (default: the run's config)")
    p.add_argument("--min-keep", type=int, default=None, help="kappa_2 (default: the run's config)")
    p.add_argument("--pools", default="", help="comma separated pools of the per-image bank (default 4K)")
    p.add_argument("--seed-baseline", action="store_true", help="also run the paper's protocol with seed 1")
    p.add_argument(
        "--outlier",
        action="store_true",
        help="also decide every run by the folder's outlier cut (same scores) and time the fast path "
        "(per-image passes + outlier cut) against the paper's (per-batch passes + kappa_2 vote)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.paper_csv is not None and args.outlier:
        p.error("--outlier re-decides the paper protocol's own scores: run it instead of --paper-csv")
    loaded, samples = _run_samples(args.run, args.data, args.split)
    if args.subset:
        normal = [x for x in samples if x.label != 1][: args.subset]
        samples = normal + [x for x in samples if x.label == 1]
    cfg, model = loaded.config, loaded.model
    k = cfg.batch_filter.mc_passes
    pools = [int(x) for x in args.pools.split(",") if x.strip()] or [POOL_PER_PASS * k]

    def timed(
        mode: str, pool: int | None = None, seed: int = 0, decision: str = "vote"
    ) -> tuple[float, FilterRecords]:
        start = now()
        recs = filter_dataset(
            model, samples, cfg, epochs=args.epochs, min_keep=args.min_keep, progress=False,
            seed=seed, uncertainty=mode, pool=pool, decision=decision,
        )  # fmt: skip
        return now() - start, recs

    out: dict[str, Any] = {
        "run": str(args.run),
        "n": len(samples),
        "K": k,
        "threads": torch.get_num_threads(),
    }
    if args.paper_csv is not None:
        t_old, old = math.nan, _records_from_csv(args.paper_csv, samples)
        out["per_batch"] = {"seconds": None, "from": str(args.paper_csv)}
    else:
        t_old, old = timed("per-batch")
        out["per_batch"] = {"seconds": t_old, "summary": summarize(old)}
    for pool in pools:
        t_new, new = timed("per-image", pool)
        out[f"per_image_pool{pool}"] = {
            "seconds": t_new,
            "speedup": None if math.isnan(t_old) else t_old / t_new,
            "agreement": agreement(old, new),
            "summary": summarize(new),
        }
        print(json.dumps(out, indent=1), flush=True)
    if args.outlier:
        out["per_batch"]["outlier"] = _outlier_view(old, cfg.dataset_filter.outlier_k)
        t_fast, fast = timed("per-image", decision="outlier")
        out["fast_path"] = {
            "what": f"per-image MC passes (pool {POOL_PER_PASS}K) + the folder's outlier cut",
            "seconds": t_fast,
            "speedup_vs_paper": t_old / t_fast,
            "agreement_with_paper": agreement(old, fast),
            "agreement_with_outlier_on_paper_scores": agreement(
                _decided(old, cfg.dataset_filter.outlier_k), fast
            ),
            "summary": summarize(fast),
            "contamination": contamination_entry(fast),
        }
    if args.seed_baseline:
        t_b, base = timed("per-batch", seed=1)
        out["per_batch_seed1"] = {
            "seconds": t_b,
            "agreement": agreement(old, base),
            "summary": summarize(base),
        }
    text = json.dumps(out, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


def _records_from_csv(path: Path, samples: Sequence[Any]) -> list[SimpleNamespace]:
    """The decisions and keep counts of a written ``filter.csv``, in the order of ``samples``."""
    from ssfilter.io import read_csv_rows

    rows = {row["path"]: row for row in read_csv_rows(path)}
    missing = [str(s.path) for s in samples if str(s.path) not in rows]
    if missing or len(rows) != len(samples):
        raise SystemExit(f"{path} does not hold the same images ({len(missing)} missing, {len(rows)} rows)")
    return [
        SimpleNamespace(
            path=str(s.path),
            decision=rows[str(s.path)]["decision"],
            times_kept=int(rows[str(s.path)]["times_kept"]),
        )
        for s in samples
    ]


def _decided(records: FilterRecords, k: float) -> FilterRecords:
    """A copy of ``records`` decided by the folder's outlier cut instead of the vote."""
    from copy import deepcopy

    from ssfilter.filtering.folder_decision import apply_outlier_decision

    copy = deepcopy(records)
    apply_outlier_decision(copy, k)
    return copy


def _outlier_view(records: FilterRecords, k: float) -> dict[str, Any]:
    """Summary and contamination of ``records`` decided by the outlier cut (same scores)."""
    from ssfilter.filtering.filter_outputs import summarize

    decided = _decided(records, k)
    return {"k": k, "summary": summarize(decided), "agreement_with_vote": agreement(records, decided)}


if __name__ == "__main__":
    sys.exit(main())
