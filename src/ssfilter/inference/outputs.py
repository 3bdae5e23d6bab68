"""What ``ssfilter predict`` writes into its output folder, each file atomically.

* ``predictions.csv`` / ``predictions.json``: per image ``path, raw_score, score`` (normalised, 0.5 =
  threshold), ``label`` (OK/NG), ``threshold`` (raw), the overlay and mask file names, the original
  ``width, height``, ``n_regions`` and ``largest_region_area`` (pixels); the JSON also holds each
  image's ``regions`` (box, area, scores: :meth:`~ssfilter.inference.prediction.Prediction.to_record`)
  and the calibration used;
* ``<name>_overlay.png``: the heat-map over the original image with a box around each defect region,
  and ``<name>_mask.png``: the binary defect mask (0/255), both at the image's original size; ``<name>``
  is the file stem, prefixed with its parent folder (and a counter if needed) when two inputs share a
  stem (:func:`output_names`);
* ``skipped.csv``: inputs that could not be read, and why.

:class:`PredictionWriter` writes them from :class:`~ssfilter.inference.prediction.Prediction` objects;
it does not run a model (numpy and Pillow only).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ssfilter.data.images import Skipped, write_skipped_csv
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.prediction import RECORD_FIELDS, Prediction
from ssfilter.inference.visualize import mask_image, overlay_image
from ssfilter.io import atomic_path, atomic_write_json, atomic_write_text
from ssfilter.runfolder import SKIPPED_FILE

__all__ = [
    "PREDICTIONS_CSV",
    "PREDICTIONS_JSON",
    "RECORD_FIELDS",
    "PredictionReport",
    "PredictionWriter",
    "output_names",
]

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
_UNSAFE_NAME = re.compile(r"[^\w.-]+")


@dataclass
class PredictionReport:
    """What a prediction into a folder wrote.

    Attributes:
        records: One dict per predicted image (:meth:`Prediction.to_record`: the ``predictions.csv`` row,
            see :data:`RECORD_FIELDS`, plus ``regions``).
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

    @property
    def n_regions(self) -> int:
        """Number of defect regions over all images."""
        return sum(r["n_regions"] for r in self.records)


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


class PredictionWriter:
    """Writes one prediction run into a folder: images as they come, the tables at the end.

    Args:
        out: Output folder (created if needed; existing files of the same names are replaced).
        paths: Every input image, in order (their output names are fixed up front, see
            :func:`output_names`).
        resize: The run's ``data.resize`` (to map heat-maps back onto the original image).
        crop: The run's ``data.crop``.
    """

    def __init__(self, out: str | Path, paths: Sequence[str | Path], resize: int, crop: int) -> None:
        self.folder = Path(out)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.resize, self.crop = resize, crop
        self._names = dict(zip(map(str, paths), output_names(paths), strict=True))
        self.records: list[dict[str, Any]] = []

    def add(self, pred: Prediction, image: Image.Image) -> None:
        """Write one image's overlay (with its region boxes) and mask and keep its record.

        Args:
            pred: The prediction (its ``path`` must be one of the writer's ``paths``).
            image: The decoded original image.
        """
        full = pred.original_map(self.resize, self.crop)
        name = self._names[pred.path]
        overlay_file, mask_file = f"{name}_overlay.png", f"{name}_mask.png"
        save_png(overlay_image(image, full, regions=pred.regions), self.folder / overlay_file)
        save_png(mask_image(full), self.folder / mask_file)
        self.records.append(pred.to_record(overlay=overlay_file, mask=mask_file))

    def finish(
        self, calibration: Calibration, skipped: list[Skipped], run_dir: Path | None = None
    ) -> PredictionReport:
        """Write ``predictions.csv``, ``predictions.json`` and ``skipped.csv``; return what was written.

        Args:
            calibration: The calibration the predictions used (recorded in the JSON).
            skipped: Inputs that could not be read.
            run_dir: The run folder (recorded in the JSON).
        """
        records = self.records
        write_records_csv(records, self.folder / PREDICTIONS_CSV)
        atomic_write_json(
            self.folder / PREDICTIONS_JSON,
            {
                "run": str(run_dir) if run_dir is not None else None,
                "n_images": len(records),
                "n_ng": sum(r["label"] == "NG" for r in records),
                "n_skipped": len(skipped),
                "threshold": calibration.image_threshold,
                "calibration": calibration.to_dict(),
                "images": records,
            },
        )
        write_skipped_csv(skipped, self.folder / SKIPPED_FILE)
        return PredictionReport(records=records, skipped=skipped, out=self.folder, calibration=calibration)


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically.

    Args:
        image: The image.
        path: The file to write.
    """
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_records_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    """Write prediction records as CSV (floats at full round-trip precision), atomically.

    Args:
        records: Records with the keys of :data:`RECORD_FIELDS` (other keys, e.g. the nested
            ``regions``, are left out: the CSV stays flat).
        path: The CSV file to write.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(RECORD_FIELDS), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({key: rec[key] for key in RECORD_FIELDS})
    atomic_write_text(path, buffer.getvalue())
