"""Dataset-level filtering with a trained SSFilter model (paper §3.6; SPEC §6 and §11).

A trained model's in-batch filter is run over the whole training set for ``kappa1`` random epochs; an image
is *normal* when the filter keeps it **more than** ``kappa2`` times (``times_kept > min_keep``), otherwise
*anomalous*. The result can be written as ``filter.csv`` / ``filter.json`` and, on request, the kept images
laid out as a clean training folder of links or copies. The user's files are only ever read.

Choices where the paper is silent (this module's contract):

* **Batches.** Every epoch is a new seeded permutation cut into batches of exactly ``batch_size`` images, as
  in training, and every image is *counted* exactly once per epoch: the remainder of ``n % batch_size``
  images is padded to a full batch with images drawn (seeded, without replacement) from the rest of that
  epoch; the padding images are scored with the batch but their votes and scores are not counted. A data
  set smaller than the batch size is filtered in batches of all ``n`` images (with a warning). At least 2
  images and a batch size of at least 2 are required (the filter compares images within a batch).
* **Phase.** Every batch is filtered in the regular phase (``iteration = cold_start_iters``), so the
  uncertainty takes part as it does for a trained model; restoration (synthesis) plays no role.
* **Randomness.** ``seed`` (default ``cfg.train.seed``) fixes the permutations and the padding; the
  MC-dropout masks of batch ``j`` of epoch ``e`` come from a generator seeded with ``(seed, e, j)``, so
  they do not depend on which batches were filtered before or by which process. The caller's global
  random state is left untouched.
* **Features.** The encoder is frozen and deterministic, so with ``cache_features=True`` each image is
  encoded once and its features reused in later epochs, within a memory budget (the trainer's cache).
  The cache is filled up front in data-set order (chunks of ``batch_size``) until the budget is spent, so
  an image's features never depend on the batch it was first met in.
* **Several processes.** Under ``torchrun`` (an initialised process group of N > 1) every process runs
  the same epoch plan and filters every N-th batch (round robin over all epochs' batches); the per-batch
  results are gathered and summed in the single-process order, so every process ends with the same
  records, identical to a single-process run's. Callers write the outputs from rank 0 only.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import os
import re
import secrets
import shutil
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, LABEL_UNKNOWN, AnomalyDataset, Sample
from ssfilter.data.transforms import build_image_transform
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.io import atomic_write_json, atomic_writer
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.feature_cache import FeatureCache
from ssfilter.runfolder import FILTER_CSV, FILTER_JSON
from ssfilter.runtime import distributed
from ssfilter.runtime.seeding import seed_torch

log = logging.getLogger(__name__)

__all__ = [
    "CSV_FIELDS",
    "MANIFEST_CSV",
    "FilterRecord",
    "FilterRecords",
    "batch_dropout_seed",
    "decide",
    "export_clean",
    "filter_dataset",
    "summarize",
    "write_filter_outputs",
]

Decision = Literal["normal", "anomalous"]
ExportMode = Literal["auto", "symlink", "hardlink", "copy"]

#: Columns of ``filter.csv`` (SPEC §11), in order.
CSV_FIELDS = ["path", "times_seen", "times_kept", "mean_score", "mean_uncertainty", "decision"]
MANIFEST_CSV = "manifest.csv"
#: Where :func:`export_clean` puts the kept images (MVTec / anomalib ``Folder`` normal-image folder).
EXPORT_SUBDIR = Path("train") / "good"


@dataclass
class FilterRecord:
    """The dataset-level filter's verdict on one image.

    Attributes:
        path: Image file.
        times_seen: Epochs in which the image was scored (``epochs``).
        times_kept: How often the in-batch filter kept it.
        mean_score: Mean patch comparison score ``A`` (NaN when patch scoring is off).
        mean_uncertainty: Mean MC-dropout uncertainty ``U`` (NaN when uncertainty scoring is off).
        decision: ``"normal"`` when ``times_kept > min_keep``, else ``"anomalous"``.
        label: True label when known (0 normal, 1 anomalous), -1 otherwise; used for the summary only and
            never written to ``filter.csv``.
    """

    path: str
    times_seen: int
    times_kept: int
    mean_score: float
    mean_uncertainty: float
    decision: Decision
    label: int = LABEL_UNKNOWN


class FilterRecords(list[FilterRecord]):
    """A list of :class:`FilterRecord` that also remembers the filter's parameters (for ``filter.json``)."""

    def __init__(self, records: Sequence[FilterRecord] = (), params: dict[str, Any] | None = None) -> None:
        super().__init__(records)
        self.params: dict[str, Any] = dict(params or {})


def decide(times_kept: int, min_keep: int) -> Decision:
    """Paper §3.6: normal when kept *more than* ``min_keep`` (kappa2) times."""
    return "normal" if times_kept > min_keep else "anomalous"


# -- filtering ----------------------------------------------------------------------------------------

_TAG_FILTER_BATCH = 5


def batch_dropout_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed of the MC-dropout masks of batch ``batch`` of epoch ``epoch`` (independent of sharding).

    Args:
        seed: The filter's seed.
        epoch: 0-based epoch.
        batch: 0-based batch index within the epoch.
    """
    return distributed.derive_seed(seed, _TAG_FILTER_BATCH, epoch, batch)


@dataclass
class _BatchResult:
    """What one filtered batch contributes: its counted indices, keep votes and scores."""

    epoch: int
    batch: int
    ids: np.ndarray
    keep: np.ndarray
    scores: np.ndarray | None
    uncertainty: np.ndarray | None


def _warm_cache(cache: FeatureCache, n: int, chunk: int) -> None:
    """Encode the data set in order, ``chunk`` images at a time, until the cache's budget is spent."""
    if cache.max_bytes <= 0:
        return
    for start in range(0, n, chunk):
        ids = list(range(start, min(start + chunk, n)))
        cache.features_for(ids)
        if not all(i in cache.feats for i in ids):
            return  # full: later images are encoded with their batch, the same in every process


def _epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[tuple[list[int], int]]:
    """One epoch's batches as ``(indices, counted)``: only the first ``counted`` indices' votes count.

    Full batches of a fresh permutation; the remainder is padded to ``batch_size`` with distinct images
    drawn from the rest of the epoch (see the module docstring). ``batch_size`` is clamped to ``n``.
    """
    b = min(batch_size, n)
    perm = torch.randperm(n, generator=generator).tolist()
    full = n // b
    batches = [(perm[k * b : (k + 1) * b], b) for k in range(full)]
    rest = perm[full * b :]
    if rest:
        others = perm[: full * b]
        pick = torch.randperm(len(others), generator=generator)[: b - len(rest)].tolist()
        batches.append((rest + [others[j] for j in pick], len(rest)))
    return batches


def filter_dataset(
    model: DinomalyModel,
    samples: Sequence[Sample],
    cfg: Config,
    *,
    epochs: int | None = None,
    min_keep: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_features: bool = True,
    seed: int | None = None,
    cache_bytes: int = 4 << 30,
) -> FilterRecords:
    """Classify every training image as normal or anomalous with a trained model (paper §3.6).

    Args:
        model: Trained model (moved to ``device``; its train/eval mode is restored afterwards).
        samples: Images to filter (validated; at least 2).
        cfg: The run's configuration (batch size, preprocessing, filter settings).
        epochs: kappa1, random epochs over the data set (default ``cfg.dataset_filter.epochs``).
        min_keep: kappa2; normal when kept more than this many times (default
            ``cfg.dataset_filter.min_keep``).
        device: Where to run.
        progress: Show a progress bar.
        cache_features: Encode each image once and reuse its features across epochs.
        seed: Seed of permutations, padding and dropout masks (default ``cfg.train.seed``).
        cache_bytes: Memory budget of the feature cache; beyond it features are recomputed.

    Returns:
        One record per sample, in the order of ``samples``, with the parameters in ``.params``. Under
        ``torchrun`` the batches are shared out between the processes and every process returns the
        same (merged) records.

    Raises:
        ValueError: Fewer than 2 images, a batch size below 2, or ``epochs`` / ``min_keep`` out of range.
    """
    epochs = cfg.dataset_filter.epochs if epochs is None else int(epochs)
    min_keep = cfg.dataset_filter.min_keep if min_keep is None else int(min_keep)
    seed = cfg.train.seed if seed is None else int(seed)
    samples = list(samples)
    n = len(samples)
    batch_size = cfg.data.batch_size
    if epochs < 1:
        raise ValueError(f"epochs (kappa1) must be at least 1, got {epochs}")
    if not 0 <= min_keep < epochs:
        raise ValueError(
            f"min_keep (kappa2) must be in [0, epochs - 1] = [0, {epochs - 1}] (an image is normal when kept "
            f"more than min_keep times out of {epochs}), got {min_keep}"
        )
    if n < 2:
        raise ValueError(
            f"dataset-level filtering compares images within a batch and needs at least 2 images, got {n}"
        )
    if batch_size < 2:
        raise ValueError(f"dataset-level filtering needs a batch size of at least 2, got {batch_size}")
    if n < batch_size:
        warnings.warn(
            f"the data set has {n} images, fewer than the batch size {batch_size}; "
            f"filtering in batches of {n}",
            stacklevel=2,
        )

    dev = distributed.init_distributed(device)
    rank, world = distributed.rank(), distributed.world_size()
    model.to(dev)
    was_training = model.training
    model.eval()  # the uncertainty passes force the bottleneck dropout on by themselves
    transform = build_image_transform(cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std)
    budget = cache_bytes if cache_features else 0
    cache = FeatureCache(
        AnomalyDataset(samples, transform), model, dev, budget, pin_memory=dev.type == "cuda"
    )
    batch_filter = BatchFilter(cfg.batch_filter, cfg.restoration, max(cfg.train.iters, 1), seed=seed)
    iteration = cfg.batch_filter.cold_start_iters  # regular phase: uncertainty participates
    amp = cfg.train.amp and dev.type == "cuda"
    order = torch.Generator().manual_seed(seed)
    plan = [
        (epoch, j, indices, counted)
        for epoch in range(epochs)
        for j, (indices, counted) in enumerate(_epoch_batches(n, batch_size, order))
    ]
    mine = plan[rank::world]

    results: list[_BatchResult] = []
    bar = tqdm(
        total=len(mine), disable=not progress or rank != 0, desc="filter", unit="batch", dynamic_ncols=True
    )
    rng_devices = [dev.index or 0] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                _warm_cache(cache, n, min(batch_size, n))
            for epoch, j, indices, counted in mine:
                seed_torch(batch_dropout_seed(seed, epoch, j), dev)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                    feats = cache.features_for(indices)
                    sel = batch_filter.select(iteration, model, feats)
                results.append(
                    _BatchResult(
                        epoch,
                        j,
                        np.asarray(indices[:counted]),
                        sel.decision.keep[:counted].cpu().numpy().astype(np.int64),
                        None if sel.scores is None else sel.scores[:counted].float().cpu().numpy(),
                        None
                        if sel.uncertainty is None
                        else sel.uncertainty.uncertainty[:counted].float().cpu().numpy(),
                    )
                )
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:
        results = [r for part in distributed.all_gather_object(results) for r in part]
        results.sort(key=lambda r: (r.epoch, r.batch))

    # Accumulate in the single-process order, so the float sums are bit-identical however it was sharded.
    seen = np.zeros(n, dtype=np.int64)
    kept = np.zeros(n, dtype=np.int64)
    sum_a = np.zeros(n, dtype=np.float64)
    sum_u = np.zeros(n, dtype=np.float64)
    has_a = has_u = False
    for r in results:
        seen[r.ids] += 1
        kept[r.ids] += r.keep
        if r.scores is not None:
            has_a = True
            sum_a[r.ids] += r.scores
        if r.uncertainty is not None:
            has_u = True
            sum_u[r.ids] += r.uncertainty

    records = [
        FilterRecord(
            path=str(s.path),
            times_seen=int(seen[i]),
            times_kept=int(kept[i]),
            mean_score=float(sum_a[i] / seen[i]) if has_a else math.nan,
            mean_uncertainty=float(sum_u[i] / seen[i]) if has_u else math.nan,
            decision=decide(int(kept[i]), min_keep),
            label=int(s.label) if s.label in (LABEL_NORMAL, LABEL_ANOMALOUS) else LABEL_UNKNOWN,
        )
        for i, s in enumerate(samples)
    ]
    params = {"epochs": epochs, "min_keep": min_keep, "batch_size": min(batch_size, n), "seed": seed}
    return FilterRecords(records, params)


# -- summary and outputs ------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def summarize(records: Sequence[FilterRecord]) -> dict[str, Any]:
    """Counts of the filter's decisions and, when every label is known, its quality (paper Fig. 4-5).

    Returns:
        ``n``, ``n_kept`` (normal decisions), ``n_removed``, ``labels_known`` and the label-based figures
        ``noise_rate_before`` (anomalous share of the input), ``noise_rate_after`` (anomalous share of the
        kept images), ``normal_kept`` (share of true normals kept) and ``anomalies_removed`` (share of true
        anomalies removed). The label-based figures are ``None`` when some label is unknown or when their
        denominator is 0 (e.g. nothing kept, or no anomalies at all).
    """
    n = len(records)
    normal = [r.decision == "normal" for r in records]
    n_kept = sum(normal)
    out: dict[str, Any] = {"n": n, "n_kept": n_kept, "n_removed": n - n_kept}
    known = n > 0 and all(r.label in (LABEL_NORMAL, LABEL_ANOMALOUS) for r in records)
    out["labels_known"] = known
    keys = ("noise_rate_before", "noise_rate_after", "normal_kept", "anomalies_removed")
    if not known:
        out.update(dict.fromkeys(keys))
        return out
    anomalous = [r.label == LABEL_ANOMALOUS for r in records]
    n_anom = sum(anomalous)
    anom_kept = sum(a and k for a, k in zip(anomalous, normal, strict=True))
    norm_kept = sum((not a) and k for a, k in zip(anomalous, normal, strict=True))
    out["noise_rate_before"] = _ratio(n_anom, n)
    out["noise_rate_after"] = _ratio(anom_kept, n_kept)
    out["normal_kept"] = _ratio(norm_kept, n - n_anom)
    out["anomalies_removed"] = _ratio(n_anom - anom_kept, n_anom)
    return out


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_filter_outputs(
    records: Sequence[FilterRecord], out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``filter.csv`` (SPEC §11 columns, one row per image) and ``filter.json`` atomically.

    ``filter.json`` holds the :func:`summarize` keys at the top level, ``"params"`` (epochs, min_keep,
    batch_size, seed; taken from a :class:`FilterRecords`, else ``None``) and the keys of ``extra``
    (which may not replace a summary key). Means that were not computed are written ``nan``.

    Returns:
        ``(csv_path, json_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / FILTER_CSV, out / FILTER_JSON
    with atomic_writer(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(CSV_FIELDS) + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        for r in records:
            mean_a, mean_u = _fmt(r.mean_score), _fmt(r.mean_uncertainty)
            writer.writerow([r.path, r.times_seen, r.times_kept, mean_a, mean_u, r.decision])
    params = getattr(records, "params", None) or {}
    doc: dict[str, Any] = summarize(records)
    doc["params"] = {k: params.get(k) for k in ("epochs", "min_keep", "batch_size", "seed")}
    for key, value in (extra or {}).items():
        if key in doc:
            raise ValueError(f"extra key {key!r} would replace a summary field of {FILTER_JSON}")
        doc[key] = value
    atomic_write_json(json_path, doc, default=str)
    return csv_path, json_path


# -- clean export -------------------------------------------------------------------------------------

_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_MAX_STEM = 150


def _safe_part(part: str) -> str:
    """One path component made harmless: no separators or control characters, no leading dot."""
    return _UNSAFE_CHARS.sub("_", part).strip().lstrip(".").rstrip(". ")


def _export_name(path: str, source_root: str | None) -> str:
    """A flat, sanitised file name for ``path`` (uniqueness is handled by the caller).

    Under ``source_root`` the relative sub-path is kept, its leading ``train/good`` dropped and the
    remaining components joined with ``__`` (``test/crack/001.png`` -> ``test__crack__001.png``); anything
    else keeps its base name. The result is one plain component: no separator, never ``.``/``..``, not hidden.
    """
    src = os.path.abspath(path)  # normalises '..' components away
    parts: list[str] = [os.path.basename(src)]
    if source_root is not None:
        try:
            rel = os.path.relpath(src, os.path.abspath(source_root))
        except ValueError:  # another drive (Windows)
            rel = ""
        rel_parts = Path(rel).parts
        if rel and not os.path.isabs(rel) and ".." not in rel_parts:
            if tuple(p.casefold() for p in rel_parts[:2]) == ("train", "good") and len(rel_parts) > 2:
                rel_parts = rel_parts[2:]
            parts = list(rel_parts)
    safe = [p for p in (_safe_part(p) for p in parts) if p]
    name = "__".join(safe) or "image"
    stem, suffix = os.path.splitext(name)
    return stem[:_MAX_STEM] + suffix[:16]


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``stem_1.ext``, ``stem_2.ext``, ... -- unique even on case-insensitive file systems."""
    stem, suffix = os.path.splitext(name)
    candidate, k = name, 0
    while candidate.casefold() in used:
        k += 1
        candidate = f"{stem}_{k}{suffix}"
    used.add(candidate.casefold())
    return candidate


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def export_clean(
    records: Sequence[FilterRecord],
    dest: str | os.PathLike[str],
    *,
    source_root: str | os.PathLike[str] | None = None,
    mode: ExportMode = "auto",
) -> Path:
    """Lay out the images judged normal as a training folder: ``dest/train/good/<name>`` + ``manifest.csv``.

    The folder trains directly with ssfilter (``--data dest``) and anomalib's ``Folder`` datamodule
    (``root=dest, normal_dir="train/good"``). Names are flat and sanitised (see :func:`_export_name`), made
    unique with a ``_<k>`` suffix, so nothing is ever written outside ``dest``. ``manifest.csv`` maps each
    ``source`` (absolute path) to its ``exported`` path (relative to ``dest``). The tree is built in a hidden
    folder beside ``dest`` and renamed into place, so ``dest`` appears complete or not at all.

    Args:
        records: Filter records; those with decision ``"normal"`` are exported.
        dest: Output folder; must not exist or be empty, and must not lie inside a source folder.
        source_root: Folder the images come from (e.g. the MVTec category); keeps their sub-paths in the
            names and is protected like the images' own folders.
        mode: ``"symlink"``, ``"hardlink"`` (shares the file's content with the source), ``"copy"``, or
            ``"auto"`` (symlinks, falling back to copies where links cannot be made).

    Returns:
        ``dest``.

    Raises:
        ValueError: Unknown mode, or ``dest`` inside a source folder.
        FileExistsError: ``dest`` exists and is not an empty folder.
        FileNotFoundError: A kept image no longer exists.
    """
    if mode not in ("auto", "symlink", "hardlink", "copy"):
        raise ValueError(f"unknown export mode {mode!r}; choose auto, symlink, hardlink or copy")
    out = Path(os.path.abspath(dest))
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise FileExistsError(f"'{out}' already exists and is not an empty folder; choose a new destination")
    real_out = Path(os.path.realpath(out))
    protected = {Path(os.path.realpath(os.path.dirname(os.path.abspath(r.path)))) for r in records}
    if source_root is not None:
        protected.add(Path(os.path.realpath(source_root)))
    for folder in sorted(protected):
        if _inside(real_out, folder):
            raise ValueError(f"refusing to export into '{out}': it lies inside the source folder '{folder}'")

    kept = [r for r in records if r.decision == "normal"]
    for r in kept:
        if not os.path.isfile(r.path):
            raise FileNotFoundError(
                f"kept image '{r.path}' does not exist (moved or deleted after filtering?)"
            )
    if not kept:
        warnings.warn("the filter kept no image; the exported folder is empty", stacklevel=2)

    root = None if source_root is None else os.fspath(source_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging(out)
    try:
        good = staging / EXPORT_SUBDIR
        good.mkdir(parents=True)
        used: set[str] = set()
        rows: list[tuple[str, str]] = []
        link = mode in ("auto", "symlink")
        for r in kept:
            src = os.path.abspath(r.path)
            name = _unique(_export_name(src, root), used)
            target = good / name
            if link:
                try:
                    os.symlink(src, target)
                except OSError:
                    if mode == "symlink":
                        raise
                    link = False  # auto: this platform / file system cannot link, copy from now on
            if not link:
                if mode == "hardlink":
                    os.link(src, target)
                else:
                    shutil.copy2(src, target)
            rows.append((src, (EXPORT_SUBDIR / name).as_posix()))
        with atomic_writer(staging / MANIFEST_CSV, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["source", "exported"])
            writer.writerows(rows)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _staging_prefix(out: Path) -> str:
    """Name prefix of this host's staging folders for ``out``: ``.NAME.HOST.`` (then ``PID.RAND.partial``)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f".{out.name}.{host}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (unknown counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its folder
    return True


def _remove_orphaned_staging(out: Path) -> list[Path]:
    """Delete staging folders for ``out`` left by a killed export of this machine; returns them.

    Only folders named by this module for the same destination, on the same host, whose process is gone
    are removed: a concurrent export (live process) or one on another machine sharing the file system
    is left alone.
    """
    prefix = _staging_prefix(out)
    removed = []
    for entry in out.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid_text = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _make_staging(out: Path) -> Path:
    """A new hidden folder beside ``out`` (normal permissions, unlike ``tempfile.mkdtemp``).

    Its name carries host and process id, so a later export to the same destination can remove the
    folder if this process is killed before it finishes.
    """
    for orphan in _remove_orphaned_staging(out):
        log.info("removed '%s', left by an export that was killed", orphan)
    while True:
        candidate = out.parent / f"{_staging_prefix(out)}{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
