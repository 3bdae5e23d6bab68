"""VisA: a root with ``split_csv/1cls.csv`` (``object,split,label,image,mask``) and one folder per object.

Reads with :func:`~ssfilter.data.datasets.visa_samples` and injects noise with the SoftPatch protocol
(:func:`~ssfilter.data.noise.visa_noisy_split`) within one object. VisA: Zou et al., ECCV 2022,
CC BY 4.0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ssfilter.data.datasets import Sample, visa_samples
from ssfilter.data.formats.base import Category, DataFormat, register_format
from ssfilter.data.noise import NoiseSplit, visa_noisy_split

__all__ = ["SPLIT_CSV", "VisAFormat", "visa_objects"]

#: The one-class split file of VisA, relative to its root.
SPLIT_CSV = Path("split_csv") / "1cls.csv"


def visa_objects(csv_path: Path) -> list[str]:
    """The ``object`` names of a VisA split CSV, sorted (empty when the column is missing)."""
    with csv_path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        return sorted({(row.get("object") or "").strip() for row in reader} - {""})


@register_format
class VisAFormat(DataFormat):
    """VisA's one-class protocol (``split_csv/1cls.csv``)."""

    name = "visa"
    priority = 20
    citation = "VisA: Zou et al., SPot-the-Difference, ECCV 2022; licence CC BY 4.0"
    looked_for = (
        f"a VisA root ({SPLIT_CSV.as_posix()}) or one of its object folders (listed in "
        f"../{SPLIT_CSV.as_posix()})"
    )

    def root_categories(self, path: Path) -> list[Category] | None:
        """One category per ``object`` of ``path/split_csv/1cls.csv``."""
        csv_path = path / SPLIT_CSV
        if not csv_path.is_file():
            return None
        return [Category(self.name, o, path / o, path, csv_path) for o in visa_objects(csv_path)] or None

    def category(self, path: Path) -> Category | None:
        """``path`` when the parent's split CSV lists it as an object."""
        csv_path = path.parent / SPLIT_CSV
        if path.is_dir() and csv_path.is_file() and path.name in visa_objects(csv_path):
            return Category(self.name, path.name, path, path.parent, csv_path)
        return None

    def samples(self, category: Category, split: str) -> list[Sample]:
        """The object's rows of the split CSV (raises when there are none)."""
        assert category.index is not None
        samples = visa_samples(category.root, category.index, split, category=category.name)  # type: ignore[arg-type]
        if not samples:
            raise ValueError(f"'{category.index}' lists no {split} images of object '{category.name}'")
        return samples

    def noisy_split(
        self, category: Category, alpha: float, *, overlap: bool, seed: int
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """SoftPatch injection within the object (the split's source is the VisA root)."""
        assert category.index is not None
        return visa_noisy_split(
            category.root, category.index, alpha, overlap=overlap, seed=seed, category=category.name
        )

    def split_root(self, category: Category) -> Path:
        """VisA paths are relative to the data set's root."""
        return category.root
