"""Apply a trained run to new images: scores, OK/NG decisions, heat-maps and masks (``ssfilter predict``).

:class:`Predictor` is the one implementation of inference on image files; :class:`ssfilter.Detector`'s
``predict`` and ``predict_files`` delegate to it. It reads images with
:func:`ssfilter.data.images.read_image` (unreadable files are skipped and listed in ``skipped.csv``),
preprocesses them with the run's :func:`~ssfilter.data.transforms.build_image_transform`, computes maps
and scores with :func:`ssfilter.evaluation.evaluate.predict_maps` (the same code as ``evaluate``), and
turns them into decisions with the run's :class:`~ssfilter.inference.calibration.Calibration`.

Written into the output folder, each file atomically:

* ``predictions.csv`` / ``predictions.json``: per image ``path, raw_score, score`` (normalised, 0.5 =
  threshold), ``label`` (OK/NG), ``threshold`` (raw), the overlay and mask file names and the original
  ``width, height`` (the JSON also holds the calibration used);
* ``<name>_overlay.png``: the heat-map over the original image and ``<name>_mask.png``: the binary defect
  mask (0/255), both at the image's original size; ``<name>`` is the file stem, prefixed with its parent
  folder (and a counter if needed) when two inputs share a stem;
* ``skipped.csv``: inputs that could not be read, and why.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    Skipped,
    read_image,
    scan_images,
    validate_images,
    write_skipped_csv,
)
from ssfilter.data.transforms import build_image_transform, build_mask_transform
from ssfilter.evaluation.evaluate import predict_maps
from ssfilter.inference.calibration import (
    Calibration,
    CalibrationError,
    calibrate_from_labels,
    calibrate_unsupervised,
    map_extrema,
)
from ssfilter.inference.prediction import Prediction
from ssfilter.inference.visualize import mask_image, overlay_image
from ssfilter.io import atomic_path, atomic_write_json, atomic_write_text
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.runfolder import SKIPPED_FILE

__all__ = [
    "PREDICTIONS_CSV",
    "PREDICTIONS_JSON",
    "Prediction",
    "RECORD_FIELDS",
    "PredictionReport",
    "Predictor",
    "collect_inputs",
    "output_names",
]

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
#: Columns of ``predictions.csv`` (and keys of each ``images`` entry of ``predictions.json``).
RECORD_FIELDS = ("path", "raw_score", "score", "label", "threshold", "overlay", "mask", "width", "height")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_NAME = re.compile(r"[^\w.-]+")


@dataclass
class PredictionReport:
    """What :meth:`Predictor.predict_to_folder` wrote.

    Attributes:
        records: One dict per predicted image (the ``predictions.csv`` row, see :data:`RECORD_FIELDS`).
        skipped: Inputs that could not be read.
        out: The output folder.
        calibration: The calibration used (threshold override applied).
    """

    records: list[dict[str, Any]]
    skipped: list[Skipped]
    out: Path
    calibration: Calibration

    @property
    def n_ng(self) -> int:
        """Number of images labelled NG."""
        return sum(r["label"] == "NG" for r in self.records)


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Expand files, folders (searched recursively) and glob patterns into image files.

    Explicit files are kept whatever their extension (reading decides); folders and glob matches
    contribute files with an image extension only. Duplicates are dropped (first occurrence wins).

    Args:
        inputs: Paths, folders or glob patterns (``**`` recurses).

    Returns:
        ``(files, missing)``: files in input order, and inputs that matched nothing.
    """
    files: list[Path] = []
    missing: list[Skipped] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        # os.path.realpath, not Path.resolve: resolve raises on a symlink loop (Python 3.11); the
        # looping link is then skipped by the reader with a reason instead of crashing here.
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for found in scan_images(path):
                add(found)
        elif path.is_file():
            add(path)
        elif _GLOB_CHARS.search(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            for match in map(Path, matches):
                if match.is_dir():
                    for found in scan_images(match):
                        add(found)
                elif match.is_file() and match.suffix.lower() in IMAGE_EXTENSIONS:
                    add(match)
            if not matches:
                missing.append(Skipped(str(item), "no file matches this pattern"))
        else:
            missing.append(Skipped(str(item), "file not found"))
    return files, missing


def output_names(paths: Sequence[str | Path]) -> list[str]:
    """Unique, file-system-safe output name stems for input images.

    The stem alone when it is unique among the inputs; ``<parent>_<stem>`` when several inputs share a
    stem; a ``_2``, ``_3``... suffix if that still collides. Comparison ignores case, so the names are
    also unique on case-insensitive file systems.

    Args:
        paths: Input image paths.
    """

    def clean(text: str) -> str:
        return _UNSAFE_NAME.sub("_", text).strip("._") or "image"

    stems = [clean(Path(p).stem) for p in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    names: list[str] = []
    used: set[str] = set()
    for path, stem in zip(paths, stems, strict=True):
        name = stem if counts[stem.lower()] == 1 else f"{clean(Path(path).parent.name)}_{stem}"
        candidate, n = name, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate.lower())
        names.append(candidate)
    return names


class Predictor:
    """Inference on image files with a trained model and its calibration.

    Args:
        model: The trained model (its device is used).
        cfg: The run's config (preprocessing sizes, batch size, AMP).
        calibration: Thresholds and scales; needed for decisions, not for :meth:`predict_raw`.
        run_dir: The run folder (recorded in outputs).
        threshold: Raw image threshold overriding the calibrated one.
    """

    def __init__(
        self,
        model: DinomalyModel,
        cfg: Config,
        calibration: Calibration | None = None,
        *,
        run_dir: str | Path | None = None,
        threshold: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.transform = build_image_transform(
            cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std
        )
        if threshold is not None:
            if calibration is None:
                raise CalibrationError("a threshold override needs a calibration for the heat-map scale")
            calibration = calibration.with_threshold(threshold)
        self.calibration = calibration

    @classmethod
    def load(
        cls, run_dir: str | Path, device: str | torch.device = "auto", *, threshold: float | None = None
    ) -> Predictor:
        """Load a run folder and its ``calibration.json``.

        Args:
            run_dir: The run folder.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a device.
            threshold: Raw image threshold overriding the calibrated one.

        Raises:
            FileNotFoundError: when the run has no ``calibration.json`` (run ``ssfilter calibrate``).
        """
        from ssfilter.runtime.device import resolve_device
        from ssfilter.training.checkpoint import load_run

        dev = resolve_device(device) if isinstance(device, str) else device
        cfg, model = load_run(run_dir, dev)
        return cls(model, cfg, Calibration.load(run_dir), run_dir=run_dir, threshold=threshold)

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return next(self.model.parameters()).device

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            where = self.run_dir if self.run_dir is not None else "RUN"
            raise CalibrationError(
                f"no calibration for this model: compute it with `ssfilter calibrate --run {where}`"
            )
        return self.calibration

    # -- raw model output -------------------------------------------------------------------------------

    @torch.no_grad()
    def raw_batches(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int | None = None,
        skipped: list[Skipped] | None = None,
        progress: bool = False,
        desc: str = "predict",
    ) -> Iterator[tuple[list[str], list[Image.Image], np.ndarray, np.ndarray]]:
        """Read, preprocess and score images batch by batch.

        Args:
            paths: Image files.
            batch_size: Images per forward pass (default ``data.batch_size``).
            skipped: Unreadable files are appended here and left out; ``None`` raises instead.
            progress: Show a progress bar.
            desc: Progress-bar label.

        Yields:
            ``(paths, images, scores [B], maps [B, S, S])`` for the readable images of each batch; the
            images are the decoded originals (RGB, EXIF orientation applied).
        """
        size = max(1, int(batch_size or self.cfg.data.batch_size))
        files = list(paths)
        bar = tqdm(
            total=len(files), desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False
        )
        try:
            for start in range(0, len(files), size):
                names, images = [], []
                for path in files[start : start + size]:
                    try:
                        image = read_image(path)
                    except ImageReadError as err:
                        if skipped is None:
                            raise
                        skipped.append(Skipped(str(path), err.reason))
                        continue
                    names.append(str(path))
                    images.append(image)
                bar.update(min(size, len(files) - start))
                if not images:
                    continue
                batch = torch.stack([self.transform(im) for im in images]).to(self.device)
                maps, scores = predict_maps(
                    self.model, batch, self.cfg.data.eval_size, amp=self.cfg.train.amp
                )
                yield names, images, scores.float().cpu().numpy(), maps.float().cpu().numpy()
        finally:
            bar.close()

    def predict_raw(
        self, paths: Sequence[str | Path], batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores ``[N]`` and maps ``[N, S, S]``; raises on an unreadable file.

        Args:
            paths: Image files.
            batch_size: Images per forward pass.
        """
        scores, maps = [], []
        for _, _, s, m in self.raw_batches(paths, batch_size=batch_size):
            scores.append(s)
            maps.append(m)
        size = self.cfg.data.eval_size
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, size, size), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    # -- decisions --------------------------------------------------------------------------------------

    def iter_predictions(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int | None = None,
        skipped: list[Skipped] | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[Prediction, Image.Image]]:
        """Predictions with their original images, one at a time (memory bounded by one batch).

        Args:
            paths: Image files.
            batch_size: Images per forward pass.
            skipped: Unreadable files are appended here; ``None`` raises instead.
            progress: Show a progress bar.
        """
        cal = self._require_calibration()
        for names, images, scores, maps in self.raw_batches(
            paths, batch_size=batch_size, skipped=skipped, progress=progress
        ):
            norm_scores = cal.normalize_scores(scores)
            labels = cal.label(scores)
            norm_maps = cal.normalize_maps(maps)
            for i, (name, image) in enumerate(zip(names, images, strict=True)):
                pred = Prediction(
                    path=name,
                    raw_score=float(scores[i]),
                    score=float(norm_scores[i]),
                    label=labels[i],
                    threshold=cal.image_threshold,
                    width=image.width,
                    height=image.height,
                    raw_map=maps[i],
                    map=norm_maps[i],
                )
                yield pred, image

    def predict(
        self, inputs: Iterable[str | Path], batch_size: int | None = None, progress: bool = False
    ) -> tuple[list[Prediction], list[Skipped]]:
        """Predict files, folders or glob patterns in memory (maps included); nothing is written.

        Args:
            inputs: Files, folders (recursive) or glob patterns.
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Returns:
            ``(predictions, skipped)``.
        """
        paths, skipped = collect_inputs(inputs)
        preds = [
            p
            for p, _ in self.iter_predictions(
                paths, batch_size=batch_size, skipped=skipped, progress=progress
            )
        ]
        return preds, skipped

    def predict_to_folder(
        self,
        inputs: Iterable[str | Path],
        out: str | Path,
        *,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> PredictionReport:
        """Predict and write predictions, overlays, masks and ``skipped.csv`` into ``out``.

        Args:
            inputs: Files, folders (recursive) or glob patterns.
            out: Output folder (created if needed; existing files of the same names are replaced).
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            ValueError: when the inputs name no file at all.
        """
        cal = self._require_calibration()
        items = list(inputs)
        paths, skipped = collect_inputs(items)
        if not paths:
            listed = ", ".join(str(i) for i in items[:3]) + (" ..." if len(items) > 3 else "")
            raise ValueError(f"no image files found in the inputs: {listed}")
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        names = dict(zip(map(str, paths), output_names(paths), strict=True))
        resize, crop = self.cfg.data.resize, self.cfg.data.crop
        records: list[dict[str, Any]] = []
        for pred, image in self.iter_predictions(
            paths, batch_size=batch_size, skipped=skipped, progress=progress
        ):
            full = pred.original_map(resize, crop)
            name = names[pred.path]
            overlay_file, mask_file = f"{name}_overlay.png", f"{name}_mask.png"
            _save_png(overlay_image(image, full), folder / overlay_file)
            _save_png(mask_image(full), folder / mask_file)
            records.append(
                {
                    "path": pred.path,
                    "raw_score": pred.raw_score,
                    "score": pred.score,
                    "label": pred.label,
                    "threshold": pred.threshold,
                    "overlay": overlay_file,
                    "mask": mask_file,
                    "width": pred.width,
                    "height": pred.height,
                }
            )
        _write_records_csv(records, folder / PREDICTIONS_CSV)
        atomic_write_json(
            folder / PREDICTIONS_JSON,
            {
                "run": str(self.run_dir) if self.run_dir is not None else None,
                "n_images": len(records),
                "n_ng": sum(r["label"] == "NG" for r in records),
                "n_skipped": len(skipped),
                "threshold": cal.image_threshold,
                "calibration": cal.to_dict(),
                "images": records,
            },
        )
        write_skipped_csv(skipped, folder / SKIPPED_FILE)
        return PredictionReport(records=records, skipped=skipped, out=folder, calibration=cal)

    # -- calibration ------------------------------------------------------------------------------------

    def calibrate_unlabelled(
        self,
        paths: Sequence[str | Path],
        *,
        k: float | None = None,
        pixel_k: float | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Calibration:
        """Unsupervised calibration from (mostly normal) images, e.g. the training set.

        Only the scores and per-image map extrema are kept, so memory does not grow with the maps.

        Args:
            paths: Image files (unreadable ones are skipped).
            k: Image-threshold multiplier (default ``calibration.k`` of the config).
            pixel_k: Pixel-threshold multiplier (default ``calibration.pixel_k``).
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            CalibrationError: when no image could be read.
        """
        scores, mins, maxs = [], [], []
        skipped: list[Skipped] = []
        for _, _, s, m in self.raw_batches(
            paths, batch_size=batch_size, skipped=skipped, progress=progress, desc="calibrate"
        ):
            lo, hi = map_extrema(m)
            scores.append(s)
            mins.append(lo)
            maxs.append(hi)
        if not scores:
            raise CalibrationError("no readable image to calibrate from")
        cc = self.cfg.calibration
        cal = calibrate_unsupervised(
            np.concatenate(scores),
            np.concatenate(mins),
            np.concatenate(maxs),
            k=cc.k if k is None else k,
            pixel_k=cc.pixel_k if pixel_k is None else pixel_k,
            map_size=self.cfg.data.eval_size,
        )
        self.calibration = cal
        return cal

    @torch.no_grad()
    def calibrate_labelled(
        self, samples: Sequence[Sample], *, batch_size: int | None = None, progress: bool = False
    ) -> Calibration:
        """F1-max calibration on labelled samples (``label`` 0/1, optional ground-truth masks).

        Pixel F1-max is used when every defective image has a mask; otherwise the pixel threshold
        follows the unsupervised rule on the good images' maps.

        Args:
            samples: Labelled samples (e.g. an MVTec ``test`` split); unreadable images are skipped.
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            CalibrationError: when labels are missing or only one class is present.
        """
        if any(s.label not in (0, 1) for s in samples):
            raise CalibrationError("labelled calibration needs images labelled good (0) or defective (1)")
        good, _ = validate_images([Path(s.path) for s in samples])
        keep = {str(p) for p in good}
        usable = [s for s in samples if s.path in keep]
        size = self.cfg.data.eval_size
        dataset = AnomalyDataset(
            usable, self.transform, build_mask_transform(self.cfg.data.resize, self.cfg.data.crop), size
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size or self.cfg.data.batch_size, shuffle=False, num_workers=0
        )
        scores, maps, masks, labels, has_mask = [], [], [], [], []
        for batch in tqdm(loader, desc="calibrate", unit="batch", disable=not progress, leave=False):
            m, s = predict_maps(self.model, batch["image"].to(self.device), size, amp=self.cfg.train.amp)
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
            labels.append(batch["label"].numpy())
            has_mask.append(batch["has_mask"].numpy().astype(bool))
        if not scores:
            raise CalibrationError("no readable labelled image to calibrate from")
        all_masks = np.concatenate(masks) if np.concatenate(has_mask).all() else None
        cal = calibrate_from_labels(
            np.concatenate(scores),
            np.concatenate(labels),
            np.concatenate(maps),
            all_masks,
            pixel_k=self.cfg.calibration.pixel_k,
            map_size=size,
        )
        self.calibration = cal
        return cal


def _save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _write_records_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Write prediction records as CSV (floats at full round-trip precision), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RECORD_FIELDS), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(rec)
    atomic_write_text(path, buffer.getvalue())
