"""Small synthetic data sets in the exact folder, CSV and JSON layouts of MVTec AD, VisA and Real-IAD.

Each category's images come from :func:`~ssfilter.data.synthetic.make_synthetic_category` (so defects have
pixel-exact masks) and are laid out as the public release does, so the format detection, the readers, the
noise protocols and multi-category runs can be tried without downloading anything:

* ``mvtec``: ``ROOT/<cat>/train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``;
* ``visa``: ``ROOT/<cat>/Data/Images/{Normal,Anomaly}/NNNN.JPG``, ``ROOT/<cat>/Data/Masks/Anomaly/NNNN.png``
  and ``ROOT/split_csv/1cls.csv`` (``object,split,label,image,mask``);
* ``realiad``: ``ROOT/realiad_256/<cat>/OK/S<part>/<cat>_<part>_OK_C<view>_<time>.jpg`` and
  ``NG/<defect>/S<part>/...jpg`` + ``.png`` masks, five camera views per part, the lists
  ``ROOT/realiad_jsons/<cat>.json`` and the FUIAD lists ``ROOT/realiad_jsons_fuiad_<alpha>/<cat>.json``
  (NG parts moved from the test list into the training list).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ssfilter.data.synthetic import make_synthetic_category

__all__ = ["REALIAD_VIEWS", "make_synthetic_dataset"]

#: Camera views per Real-IAD part.
REALIAD_VIEWS = 5
_TIME = "20240101000000"


def make_synthetic_dataset(
    root: str | os.PathLike[str],
    layout: Literal["mvtec", "visa", "realiad"],
    categories: Sequence[str] = ("widget", "gadget"),
    *,
    n_train: int = 6,
    n_test_good: int = 2,
    n_test_defect: int = 4,
    size: int = 64,
    seed: int = 0,
    fuiad: Sequence[float] = (0.1, 0.2, 0.4),
) -> Path:
    """Write a synthetic data set of ``categories`` in ``layout`` under ``root``.

    Args:
        root: Output folder; must not exist or be empty.
        layout: ``"mvtec"``, ``"visa"`` or ``"realiad"``.
        categories: Category names (each gets its own seed, ``seed + index``).
        n_train: Normal training images (Real-IAD: parts, each 5 views).
        n_test_good: Normal test images (Real-IAD: parts).
        n_test_defect: Defective test images with masks (Real-IAD: parts).
        size: Image side in pixels.
        seed: Base seed.
        fuiad: Real-IAD only: FUIAD ratios; ``realiad_jsons_fuiad_<alpha>/`` moves ``max(1, int(alpha *
            n_train))`` NG parts (at most half of them) from the test list into the training list.

    Returns:
        ``root``.
    """
    out = Path(root)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"'{out}' exists and is not empty; choose a new folder for the synthetic data")
    if layout not in ("mvtec", "visa", "realiad"):
        raise ValueError(f"layout must be 'mvtec', 'visa' or 'realiad', got {layout!r}")
    views = REALIAD_VIEWS if layout == "realiad" else 1
    counts = {"n_train_good": n_train * views, "n_test_good": n_test_good * views}
    counts["n_test_defect"] = n_test_defect * views
    out.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    for index, name in enumerate(categories):
        if layout == "mvtec":
            make_synthetic_category(out / name, size=size, seed=seed + index, **counts)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            source = make_synthetic_category(Path(tmp) / name, size=size, seed=seed + index, **counts)
            if layout == "visa":
                rows += _visa_category(source, out, name)
            else:
                _realiad_category(source, out, name, n_train, fuiad)
    if layout == "visa":
        _write_csv(out / "split_csv" / "1cls.csv", rows)
    return out


def _mvtec_items(source: Path) -> tuple[list[Path], list[Path], list[tuple[Path, Path, str]]]:
    """Train images, good test images and ``(image, mask, defect)`` of a synthetic MVTec category."""
    train = sorted((source / "train" / "good").glob("*.png"))
    good = sorted((source / "test" / "good").glob("*.png"))
    defects = [
        (p, source / "ground_truth" / p.parent.name / f"{p.stem}_mask.png", p.parent.name)
        for p in sorted((source / "test").glob("*/*.png"))
        if p.parent.name != "good"
    ]
    return train, good, defects


def _jpeg(src: Path, dst: Path) -> None:
    """Re-encode ``src`` as a JPEG at ``dst`` (the releases ship JPEG images)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        image.convert("RGB").save(dst, format="JPEG", quality=95)


def _visa_category(source: Path, out: Path, name: str) -> list[list[str]]:
    """Lay out one VisA object; return its split CSV rows."""
    train, good, defects = _mvtec_items(source)
    rows = []
    for i, src in enumerate([*train, *good]):
        rel = f"{name}/Data/Images/Normal/{i:04d}.JPG"
        _jpeg(src, out / rel)
        rows.append([name, "train" if i < len(train) else "test", "normal", rel, ""])
    for i, (src, mask, _) in enumerate(defects):
        rel, mask_rel = f"{name}/Data/Images/Anomaly/{i:03d}.JPG", f"{name}/Data/Masks/Anomaly/{i:03d}.png"
        _jpeg(src, out / rel)
        _copy(mask, out / mask_rel)
        rows.append([name, "test", "anomaly", rel, mask_rel])
    return rows


def _copy(src: Path, dst: Path) -> None:
    """Copy a file, creating the destination folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    """VisA's split CSV with its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)


def _realiad_category(source: Path, out: Path, name: str, n_train: int, fuiad: Sequence[float]) -> None:
    """Lay out one Real-IAD category (5 views per part) with its clean and FUIAD JSON lists."""
    train, good, defects = _mvtec_items(source)
    folder = out / "realiad_256" / name
    part = 0

    def parts(images: Sequence[Any], normal: bool) -> list[list[dict[str, Any]]]:
        """Groups of 5 views; an NG part takes the defect type of its first view."""
        nonlocal part
        groups = []
        for start in range(0, len(images), REALIAD_VIEWS):
            part += 1
            anomaly = "OK" if normal else images[start][2]
            sub = "OK" if anomaly == "OK" else f"NG/{anomaly}"
            group = []
            for view, item in enumerate(images[start : start + REALIAD_VIEWS], start=1):
                stem = f"{name}_{part:04d}_{'OK' if anomaly == 'OK' else 'NG'}_C{view}_{_TIME}"
                rel = f"{sub}/S{part:04d}/{stem}.jpg"
                src, mask = (item, None) if anomaly == "OK" else (item[0], item[1])
                _jpeg(src, folder / rel)
                entry = {"category": name, "anomaly_class": anomaly, "image_path": rel, "mask_path": None}
                if mask is not None:
                    entry["mask_path"] = rel[:-4] + ".png"
                    _copy(mask, folder / entry["mask_path"])
                group.append(entry)
            groups.append(group)
        return groups

    train_parts, good_parts, ng_parts = parts(train, True), parts(good, True), parts(defects, False)
    _write_list(out / "realiad_jsons" / f"{name}.json", train_parts, good_parts + ng_parts)
    for alpha in fuiad:
        n = min(max(1, math.floor(alpha * n_train)), len(ng_parts) // 2)
        folder_name = f"realiad_jsons_fuiad_{float(alpha)!r}"
        moved, kept = ng_parts[:n], ng_parts[n:]
        _write_list(out / folder_name / f"{name}.json", train_parts + moved, good_parts + kept)


def _write_list(path: Path, train: list[list[dict[str, Any]]], test: list[list[dict[str, Any]]]) -> None:
    """A Real-IAD JSON list (parts flattened to their views)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": {"prefix": "", "normal_class": "OK", "pre_transform": {}},
        "train": [e for group in train for e in group],
        "test": [e for group in test for e in group],
    }
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
