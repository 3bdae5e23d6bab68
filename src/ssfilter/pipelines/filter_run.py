"""Filter one folder with a trained model and write what a user reads: lists, clean folder, report.

The wiring behind ``Detector.filter`` / ``ssfilter filter``, also used by the demo and the benchmark, so
the dataset filter's outputs are written in one place and in one order: the clean folder, the quarantine
folder, ``skipped.csv``, ``filter.csv``/``filter.json``, then ``report.html``. Nothing is written before the
filter has finished, so an interrupted run leaves the output folder as it was. ``dry_run`` writes the lists
and the report only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.images import ImageReadError, Skipped, read_image, write_skipped_csv
from ssfilter.data.transforms import transform_for
from ssfilter.errors import RunExistsError
from ssfilter.evaluation.scorers import score_tensors, scorer_for
from ssfilter.filtering.clean_export import export_clean as export_clean_folder
from ssfilter.filtering.clean_export import export_quarantine
from ssfilter.filtering.contamination import contamination_entry
from ssfilter.filtering.dataset_filter import filter_dataset
from ssfilter.filtering.filter_outputs import (
    FilterRecord,
    FilterRecords,
    summarize,
    suspicion_order,
    write_filter_outputs,
)
from ssfilter.inference.visualize import map_to_original, overlay_image
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.reporting.filter_page import write_filter_report
from ssfilter.runfolder import FILTER_CSV, FILTER_JSON, SKIPPED_FILE
from ssfilter.runtime.distributed import is_main_process

__all__ = ["check_filter_destinations", "filter_folder", "suspect_heatmaps"]

#: Quarantined images shown in the report with a heat-map (most suspect first).
HEATMAP_LIMIT = 48


def check_filter_destinations(
    out: str | os.PathLike[str],
    export_clean: str | os.PathLike[str] | None,
    overwrite: bool,
    quarantine: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse, before any work, outputs that would replace earlier results or a user's folder.

    Raises:
        RunExistsError: ``out`` holds a finished filter and ``overwrite`` is false.
        FileExistsError: ``export_clean`` or ``quarantine`` exists and is not an empty folder.
        ValueError: ``export_clean`` and ``quarantine`` are the same folder.
    """
    out_dir = Path(out)
    done = [name for name in (FILTER_CSV, FILTER_JSON) if (out_dir / name).exists()]
    if done and not overwrite:
        raise RunExistsError(
            f"{out_dir} already holds the results of a filter ({', '.join(done)}); "
            "pass --overwrite to replace them or choose another --out"
        )
    both = export_clean is not None and quarantine is not None
    if both and os.path.abspath(export_clean) == os.path.abspath(quarantine):  # type: ignore[arg-type]
        raise ValueError("--export-clean and --quarantine must be two different folders")
    for option, folder in (("--export-clean", export_clean), ("--quarantine", quarantine)):
        if folder is None:
            continue
        dest = Path(folder)
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            raise FileExistsError(
                f"{option} '{dest}' already exists and is not an empty folder; choose a new "
                "destination (an exported folder is never overwritten)"
            )


def filter_folder(
    model: DinomalyModel,
    samples: Sequence[Sample],
    cfg: Config,
    out: str | os.PathLike[str],
    *,
    skipped: Sequence[Skipped] = (),
    extra: dict[str, Any] | None = None,
    epochs: int | None = None,
    min_keep: int | None = None,
    export_clean: str | os.PathLike[str] | None = None,
    quarantine: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    source_root: str | os.PathLike[str] | None = None,
    report: bool = True,
    progress: bool = True,
    uncertainty: str | None = None,
    pool: int | None = None,
    decision: str | None = None,
    outlier_k: float | None = None,
) -> FilterRecords:
    """Run the dataset filter over ``samples`` and write its outputs into ``out`` (rank 0 only).

    Args:
        model: The trained model (on its device).
        samples: Readable images to filter.
        cfg: The run's configuration.
        out: Output folder of ``filter.csv`` / ``filter.json`` (and ``skipped.csv``, ``report.html``).
        skipped: Unreadable inputs left out before, listed in ``skipped.csv`` when given.
        extra: More entries for ``filter.json`` (run, data, ...).
        epochs: kappa_1 (default ``cfg.dataset_filter.epochs``).
        min_keep: kappa_2 (default ``cfg.dataset_filter.min_keep``).
        export_clean: Folder to receive the kept images (checked by :func:`check_filter_destinations`).
        quarantine: Folder to receive the suspects for review (:func:`export_quarantine`).
        dry_run: Write the lists and the report only: no folder is laid out, even when ``export_clean`` /
            ``quarantine`` are given (``filter.json`` then says how many images each would have held).
        source_root: The data root the kept images' relative layout is taken from.
        report: Also write ``report.html`` (the demo writes a combined page of its own).
        progress: Show a progress bar.
        uncertainty: The paper's ``"per-batch"`` MC passes or ``"per-image"`` ones (fast); default
            ``cfg.dataset_filter.uncertainty``.
        pool: MC passes per image of the ``"per-image"`` bank (default ``cfg.dataset_filter.pool``, else
            ``4 K``).
        decision: ``"vote"``, ``"outlier"`` or ``"estimate"`` (default ``cfg.dataset_filter.decision``).
        outlier_k: The outlier cut's robust sd (default ``cfg.dataset_filter.outlier_k``).

    Returns:
        The per-image records (every process holds them under ``torchrun``; only rank 0 writes).
    """
    device = next(model.parameters()).device
    records = filter_dataset(
        model,
        samples,
        cfg,
        epochs=epochs,
        min_keep=min_keep,
        device=device,
        progress=progress,
        uncertainty=uncertainty,
        pool=pool,
        decision=decision,
        outlier_k=outlier_k,
    )
    if not is_main_process():
        return records
    suspicion_order(records)
    entries = dict(extra or {})
    entries["contamination"] = contamination_entry(records)
    entries["dry_run"] = dry_run
    entries |= _lay_out(records, dry_run, export_clean, quarantine, source_root)
    out_dir = Path(out)
    if skipped or report:
        write_skipped_csv(skipped, out_dir / SKIPPED_FILE)
    write_filter_outputs(records, out_dir, entries)
    if report:
        summary = {**summarize(records), "contamination": entries["contamination"]}
        write_filter_report(out_dir, records, summary, heatmaps=suspect_heatmaps(model, cfg, records))
    return records


def _lay_out(
    records: FilterRecords,
    dry_run: bool,
    export_clean: str | os.PathLike[str] | None,
    quarantine: str | os.PathLike[str] | None,
    source_root: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """Lay out the clean and quarantine folders (or, in a dry run, say what they would hold)."""
    entries: dict[str, Any] = {}
    n_removed = sum(r.decision == "anomalous" for r in records)
    n_kept = len(records) - n_removed
    if dry_run:
        if export_clean is not None:
            entries["export_clean_planned"] = {"folder": str(export_clean), "images": n_kept}
        if quarantine is not None:
            entries["quarantine_planned"] = {"folder": str(quarantine), "images": n_removed}
        return entries
    if export_clean is not None:
        entries["export_clean"] = str(export_clean_folder(records, export_clean, source_root=source_root))
    if quarantine is not None:
        entries["quarantine"] = str(export_quarantine(records, quarantine, source_root=source_root))
    return entries


@torch.no_grad()
def suspect_heatmaps(
    model: DinomalyModel, cfg: Config, records: Sequence[FilterRecord], limit: int = HEATMAP_LIMIT
) -> dict[str, Image.Image]:
    """Heat-map overlays of the ``limit`` most suspect quarantined images, on the original image geometry.

    The maps are the model's reconstruction anomaly maps (as ``predict`` draws them), all on one scale:
    0 at the smallest and 1 at the largest map value among the shown images, so tiles compare.
    """
    suspects = [r for r in records if r.decision == "anomalous" and r.rank > 0]
    suspects = sorted(suspects, key=lambda r: r.rank)[:limit]
    if not suspects:
        return {}
    dataset = AnomalyDataset([Sample(r.path, r.label) for r in suspects], transform_for(cfg, model.encoder))
    was_training = model.training
    scorer = scorer_for(model.eval(), cfg)
    maps = []
    try:
        for start in range(0, len(suspects), cfg.data.batch_size):
            batch = [
                dataset[i]["image"] for i in range(start, min(start + cfg.data.batch_size, len(suspects)))
            ]
            maps.append(score_tensors(scorer, batch)[0].float().cpu())
    finally:
        model.train(was_training)
    all_maps = torch.cat(maps).numpy()
    lo, hi = float(all_maps.min()), float(all_maps.max())
    out = {}
    for r, m in zip(suspects, all_maps, strict=True):
        try:
            image = read_image(r.path)
        except (ImageReadError, OSError, ValueError):
            continue
        norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        placed = map_to_original(norm, image.width, image.height, cfg.data.resize, cfg.data.crop)
        out[r.path] = overlay_image(image, placed)
    return out
