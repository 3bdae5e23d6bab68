"""MVTec AD: a root of category folders, each ``train/good``, ``test/<type>``, ``ground_truth/<type>``.

Reads with :func:`~ssfilter.data.datasets.discover` (an MVTec category) and injects noise with the SoftPatch
protocol (:func:`~ssfilter.data.noise.softpatch_split`). MVTec AD: Bergmann et al., CVPR 2019 / IJCV 2021,
CC BY-NC-SA 4.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssfilter.data.datasets import Sample, discover, is_mvtec_layout
from ssfilter.data.formats.base import Category, DataFormat, register_format
from ssfilter.data.noise import NoiseSplit, softpatch_split

__all__ = ["MVTEC_AD_CATEGORIES", "MVTecFormat"]

#: The 15 categories of MVTec AD (a folder in its layout with other names is another data set).
MVTEC_AD_CATEGORIES = frozenset(
    ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw")
    + ("tile", "toothbrush", "transistor", "wood", "zipper")
)


@register_format
class MVTecFormat(DataFormat):
    """MVTec AD (and any folder in its layout, e.g. a factory's own labelled test set)."""

    name = "mvtec"
    priority = 30
    citation = "MVTec AD: Bergmann et al., CVPR 2019 / IJCV 2021; licence CC BY-NC-SA 4.0"
    looked_for = (
        "an MVTec AD category (train/good/ or test/<type>/) or a root whose sub-folders are such categories"
    )

    def citation_for(self, names: Sequence[str]) -> str:
        """MVTec AD's citation only for its own categories: the layout is also used for other data."""
        return self.citation if names and set(names) <= MVTEC_AD_CATEGORIES else ""

    def root_categories(self, path: Path) -> list[Category] | None:
        """Sub-folders in the MVTec layout, when ``path`` is not a category itself."""
        if is_mvtec_layout(path) or not path.is_dir():
            return None
        cats = [
            c
            for sub in sorted(path.iterdir())
            if not sub.name.startswith(".") and (c := self.category(sub)) is not None
        ]
        return cats or None

    def category(self, path: Path) -> Category | None:
        """``path`` when it has ``train/good/`` or ``test/``."""
        if path.is_dir() and is_mvtec_layout(path):
            return Category(self.name, path.name, path, path)
        return None

    def samples(self, category: Category, split: str) -> list[Sample]:
        """``train/good`` or ``test/<type>`` with masks (raises on an empty split)."""
        return discover(category.path, split)  # type: ignore[arg-type]

    def noisy_split(
        self, category: Category, alpha: float, *, overlap: bool, seed: int
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """SoftPatch injection of anomalous test images into ``train/good``."""
        return softpatch_split(category.path, alpha, overlap=overlap, seed=seed)
