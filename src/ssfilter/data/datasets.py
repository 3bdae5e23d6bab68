"""Dataset layouts (MVTec AD, plain folders, VisA CSV, Real-IAD JSON) as lists of :class:`Sample`.

Every layout is reduced to the same flat list so the rest of the library (noise protocols, training,
filtering, evaluation) never needs to know where the images came from. Paths in samples are absolute (symlink
names kept), so a run folder that records them stays valid whatever the working directory.

Labels: ``0`` normal, ``1`` anomalous, ``-1`` unknown (unlabelled training images). Labels of training images
are ground truth when the layout provides it (e.g. Real-IAD's noisy splits contain ``NG`` training images):
they are for measuring contamination, and training code must not use them.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ssfilter.data.images import IMAGE_EXTENSIONS, read_image, read_mask, scan_images

__all__ = [
    "LABEL_ANOMALOUS",
    "LABEL_NORMAL",
    "LABEL_UNKNOWN",
    "AnomalyDataset",
    "Sample",
    "discover",
    "folder_samples",
    "is_mvtec_layout",
    "mvtec_samples",
    "realiad_samples",
    "visa_samples",
]

LABEL_NORMAL = 0
LABEL_ANOMALOUS = 1
LABEL_UNKNOWN = -1

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    Attributes:
        path: Image file.
        label: 0 normal, 1 anomalous, -1 unknown (unlabelled).
        mask_path: Ground-truth mask file, or ``None`` (normal image, or anomalous image without a mask).
        defect_type: ``"good"`` for normal images, the defect folder / class for anomalous ones,
            ``"unknown"`` for unlabelled images.
    """

    path: str
    label: int
    mask_path: str | None = None
    defect_type: str = "good"


def _abs(path: str | os.PathLike[str]) -> str:
    """Absolute, normalised path string without resolving symlinks."""
    return os.path.abspath(os.fspath(path))


def _check_split(split: str) -> None:
    """Reject anything but ``train`` / ``test``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _warn_missing_masks(missing: list[str], total: int, where: str) -> None:
    """One warning for all anomalous images lacking a mask."""
    if not missing:
        return
    examples = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    warnings.warn(
        f"{len(missing)} of {total} anomalous test images under {where} have no ground-truth mask "
        f"({examples}); pixel-level metrics will be undefined",
        stacklevel=3,
    )


def is_mvtec_layout(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` looks like an MVTec AD category (has ``train/good`` or ``test/``)."""
    base = Path(root)
    return (base / "train" / "good").is_dir() or (base / "test").is_dir()


def _find_mask(gt_files: dict[str, Path], stem: str) -> Path | None:
    """Mask for an image stem: ``<stem>_mask.png``, then ``<stem>.png``, then the other image suffixes."""
    suffixes = [".png"] + sorted(IMAGE_EXTENSIONS - {".png"})
    for name in (f"{stem}_mask", stem):
        for suffix in suffixes:
            hit = gt_files.get(f"{name}{suffix}".lower())
            if hit is not None:
                return hit
    return None


def mvtec_samples(root: str | os.PathLike[str], split: Split) -> list[Sample]:
    """Samples of an MVTec AD category folder.

    ``train``: the images in ``train/good`` (label 0). ``test``: the images in every ``test/<type>`` folder,
    label 0 for ``good`` and 1 otherwise, with the mask ``ground_truth/<type>/<stem>_mask.png``
    (``<stem>.png`` is also accepted). Anomalous images without a mask get ``mask_path=None`` and one warning
    counts them. Folders are not searched recursively, as in MVTec AD.

    Args:
        root: Category folder.
        split: ``"train"`` or ``"test"``.

    Returns:
        Samples sorted by defect type, then file name.

    Raises:
        FileNotFoundError: The split's folder does not exist.
    """
    _check_split(split)
    base = Path(root)
    if split == "train":
        good = base / "train" / "good"
        if not good.is_dir():
            raise FileNotFoundError(
                f"'{base}' has no train/good folder; the MVTec layout needs root/train/good/"
            )
        return [Sample(_abs(p), LABEL_NORMAL) for p in scan_images(good, recursive=False)]
    test = base / "test"
    if not test.is_dir():
        raise FileNotFoundError(f"'{base}' has no test folder; the MVTec layout needs root/test/<type>/")
    samples: list[Sample] = []
    missing: list[str] = []
    n_anomalous = 0
    type_dirs = sorted(d for d in test.iterdir() if d.is_dir() and not d.name.startswith("."))
    for type_dir in type_dirs:
        images = scan_images(type_dir, recursive=False)
        if type_dir.name == "good":
            samples.extend(Sample(_abs(p), LABEL_NORMAL) for p in images)
            continue
        gt_dir = base / "ground_truth" / type_dir.name
        gt_files = {p.name.lower(): p for p in gt_dir.iterdir() if p.is_file()} if gt_dir.is_dir() else {}
        for image in images:
            n_anomalous += 1
            mask = _find_mask(gt_files, image.stem)
            if mask is None:
                missing.append(f"{type_dir.name}/{image.name}")
            samples.append(
                Sample(_abs(image), LABEL_ANOMALOUS, None if mask is None else _abs(mask), type_dir.name)
            )
    _warn_missing_masks(missing, n_anomalous, str(test))
    return samples


def folder_samples(root: str | os.PathLike[str]) -> list[Sample]:
    """Every image under ``root`` (recursively), unlabelled (label -1, ``defect_type="unknown"``)."""
    return [Sample(_abs(p), LABEL_UNKNOWN, None, "unknown") for p in scan_images(root, recursive=True)]


def visa_samples(
    root: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    split: Split,
    category: str | None = None,
) -> list[Sample]:
    """Samples from a VisA split CSV (e.g. ``split_csv/1cls.csv``).

    Columns ``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; ``image`` and ``mask``
    are relative to ``root``. VisA gives no defect classes, so anomalous samples have
    ``defect_type="anomaly"``. A mask listed in the CSV but absent on disk is treated as missing (warning).

    Args:
        root: VisA root folder (the one holding the category folders).
        csv_path: Split CSV.
        split: ``"train"`` or ``"test"``.
        category: Keep only this ``object``; ``None`` keeps all.

    Returns:
        Samples in CSV order.

    Raises:
        ValueError: Missing columns or an unknown label.
    """
    _check_split(split)
    base = Path(root)
    required = {"object", "split", "label", "image", "mask"}
    samples: list[Sample] = []
    missing: list[str] = []
    n_anomalous = 0
    with open(csv_path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip() for c in (reader.fieldnames or [])}
        if not required <= columns:
            raise ValueError(f"VisA CSV '{csv_path}' lacks columns {sorted(required - columns)}")
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if row["split"] != split or (category is not None and row["object"] != category):
                continue
            label_text = row["label"].lower()
            if label_text == "normal":
                samples.append(Sample(_abs(base / row["image"]), LABEL_NORMAL))
                continue
            if label_text != "anomaly":
                raise ValueError(
                    f"{csv_path}:{line}: label must be 'normal' or 'anomaly', got {row['label']!r}"
                )
            n_anomalous += 1
            mask: str | None = None
            if row["mask"]:
                candidate = base / row["mask"]
                if candidate.is_file():
                    mask = _abs(candidate)
            if mask is None and split == "test":
                missing.append(row["image"])
            samples.append(Sample(_abs(base / row["image"]), LABEL_ANOMALOUS, mask, "anomaly"))
    _warn_missing_masks(missing, n_anomalous, str(base))
    return samples


def realiad_samples(
    json_path: str | os.PathLike[str], root: str | os.PathLike[str], split: Split
) -> list[Sample]:
    """Samples from a Real-IAD JSON split file (``realiad_jsons*/<category>.json``).

    The file is ``{"meta": {...}, "train": [...], "test": [...]}``; each item has ``image_path``,
    ``mask_path`` (null or empty when absent) and ``anomaly_class``, where the normal class
    (``meta["normal_class"]``, default ``"OK"``) means normal and anything else is the defect type.

    Path rule: item paths are relative to ``root/<category>/`` in the official release (category from the
    item's ``category`` key, else the JSON file's stem) and to ``root`` in some re-packagings. The base is
    detected once per file, from the first item (among the first 50 of each split) whose image exists under
    either candidate, ``root/<category>/`` tried first; if none exists, ``root/<category>/`` is used and a
    warning is raised. Mask paths use the same base.

    Args:
        json_path: Real-IAD JSON file.
        root: Real-IAD image root (e.g. ``realiad_256``).
        split: ``"train"`` or ``"test"``.

    Returns:
        Samples in file order; training items keep their true labels (for measuring contamination).
    """
    _check_split(split)
    base = Path(root)
    with open(json_path, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    if not isinstance(data, dict) or split not in data:
        raise ValueError(f"Real-IAD JSON '{json_path}' has no '{split}' list")
    meta = data.get("meta") or {}
    normal_class = str(meta.get("normal_class") or "OK")
    items: list[dict[str, Any]] = data[split]
    default_category = Path(json_path).stem

    def category_of(item: dict[str, Any]) -> str:
        return str(item.get("category") or default_category)

    # Detect the base on this split first, then the others (all splits of one file share it).
    probe = items[:50] + [x for key in ("train", "test") if key != split for x in (data.get(key) or [])[:50]]
    prefix = _realiad_base(base, probe, category_of)
    samples: list[Sample] = []
    missing: list[str] = []
    n_anomalous = 0
    for item in items:
        folder = base / category_of(item) if prefix == "category" else base
        image = _abs(folder / str(item["image_path"]))
        anomaly_class = str(item.get("anomaly_class") or normal_class)
        if anomaly_class == normal_class:
            samples.append(Sample(image, LABEL_NORMAL))
            continue
        n_anomalous += 1
        mask_rel = item.get("mask_path")
        mask = _abs(folder / str(mask_rel)) if mask_rel else None
        if mask is None and split == "test":
            missing.append(str(item["image_path"]))
        samples.append(Sample(image, LABEL_ANOMALOUS, mask, anomaly_class))
    _warn_missing_masks(missing, n_anomalous, str(json_path))
    return samples


def _realiad_base(
    base: Path, items: Sequence[dict[str, Any]], category_of: Callable[[dict[str, Any]], str]
) -> Literal["category", "root"]:
    """Decide whether Real-IAD item paths are relative to ``root/<category>`` or to ``root``."""
    for item in items:
        rel = str(item["image_path"])
        if (base / category_of(item) / rel).is_file():
            return "category"
        if (base / rel).is_file():
            return "root"
    if items:
        warnings.warn(
            f"none of the first Real-IAD images was found under '{base}/<category>/' or '{base}/'; "
            "assuming paths relative to root/<category>/",
            stacklevel=3,
        )
    return "category"


def discover(root: str | os.PathLike[str], split: Split) -> list[Sample]:
    """Samples of a ``--data`` folder: an MVTec-layout category if detected, else a plain image folder.

    A plain folder only provides a training split (unlabelled, label -1).

    Raises:
        FileNotFoundError: ``root`` (or the split folder of an MVTec layout) does not exist.
        ValueError: Test split requested on a plain folder, or no images found.
    """
    _check_split(split)
    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"data folder '{base}' does not exist")
    if is_mvtec_layout(base):
        samples = mvtec_samples(base, split)
    elif split == "test":
        raise ValueError(
            f"'{base}' is a plain image folder; a test split needs the MVTec layout "
            "(test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png)"
        )
    else:
        samples = folder_samples(base)
    if not samples:
        where = base / "train" / "good" if is_mvtec_layout(base) and split == "train" else base
        raise ValueError(
            f"no images found under '{where}' (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
        )
    return samples


class AnomalyDataset(Dataset[dict[str, Any]]):
    """A map-style dataset over :class:`Sample` lists.

    Item: ``{"image": [3, C, C], "mask": [1, C, C] (zeros without a mask), "label": int, "index": int,
    "path": str, "has_mask": bool}``. ``has_mask`` is True when the pixel ground truth is known: a mask was
    loaded (needs ``mask_transform``) or the image is labelled normal (its mask is all zeros by definition);
    it is False for unlabelled images and for anomalous images without a mask file.

    Validate training images with :func:`~ssfilter.data.images.validate_images` first; a file that became
    unreadable afterwards raises :class:`~ssfilter.data.images.ImageReadError` here.

    Args:
        samples: The samples.
        image_transform: PIL image -> ``[3, C, C]`` tensor (see :func:`build_image_transform`).
        mask_transform: Boolean mask -> ``[1, C, C]`` tensor; ``None`` skips reading masks.
        eval_size: If set, the mask is resized (nearest neighbour, as Dinomaly's evaluation does) to
            ``eval_size x eval_size``, the resolution at which metrics are computed (SPEC §1: 256).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_transform: Callable[[Image.Image], torch.Tensor],
        mask_transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        eval_size: int | None = None,
    ) -> None:
        if eval_size is not None and eval_size <= 0:
            raise ValueError(f"eval_size must be positive, got {eval_size}")
        self.samples = list(samples)
        self.image_transform = image_transform
        self.mask_transform = mask_transform
        self.eval_size = eval_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = read_image(sample.path)
        tensor = self.image_transform(image)
        loaded = sample.mask_path is not None and self.mask_transform is not None
        if loaded:
            assert self.mask_transform is not None and sample.mask_path is not None
            mask = self.mask_transform(read_mask(sample.mask_path, size=image.size)).to(torch.float32)
            if mask.ndim == 2:
                mask = mask.unsqueeze(0)
        else:
            mask = torch.zeros((1, *tensor.shape[-2:]), dtype=torch.float32)
        if self.eval_size is not None and tuple(mask.shape[-2:]) != (self.eval_size, self.eval_size):
            mask = F.interpolate(mask[None], size=(self.eval_size, self.eval_size), mode="nearest")[0]
        return {
            "image": tensor,
            "mask": mask,
            "label": int(sample.label),
            "index": int(index),
            "path": sample.path,
            "has_mask": bool(loaded or sample.label == LABEL_NORMAL),
        }
