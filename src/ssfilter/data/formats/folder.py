"""A plain folder of (mostly good) images: one unlabelled category, training split only."""

from __future__ import annotations

from pathlib import Path

from ssfilter.data.datasets import Sample, folder_samples
from ssfilter.data.formats.base import Category, DataFormat, register_format
from ssfilter.data.images import IMAGE_EXTENSIONS, scan_images
from ssfilter.data.noise import NoiseSplit

__all__ = ["FolderFormat"]


@register_format
class FolderFormat(DataFormat):
    """Every image under a folder, recursively, unlabelled; detected last, as the fallback."""

    name = "folder"
    priority = 100
    coverage = "whole"  # the user's own parts: a defect can sit anywhere, the border included
    looked_for = f"a folder holding images ({', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"

    def root_categories(self, path: Path) -> list[Category] | None:
        """A plain folder is never a root of several categories."""
        return None

    def category(self, path: Path) -> Category | None:
        """``path`` when it is a folder with at least one image file under it."""
        if path.is_dir() and scan_images(path, recursive=True):
            return Category(self.name, path.name, path, path)
        return None

    def samples(self, category: Category, split: str) -> list[Sample]:
        """All images (label -1) for ``train``; a test split is a clear error (no labels)."""
        if split == "test":
            raise ValueError(
                f"'{category.path}' is a plain image folder; a test split needs labels, e.g. the MVTec "
                "layout (test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png)"
            )
        samples = folder_samples(category.path)
        if not samples:
            raise ValueError(
                f"no images found under '{category.path}' "
                f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
            )
        return samples

    def noisy_split(
        self, category: Category, alpha: float, *, overlap: bool, seed: int
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """Refused: injecting anomalies needs labelled anomalous test images."""
        raise ValueError(
            f"--noise needs labelled anomalous test images (an MVTec, VisA or Real-IAD layout); "
            f"'{category.path}' is a plain image folder"
        )
