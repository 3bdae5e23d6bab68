"""Real-IAD: ``realiad_jsons/<category>.json`` lists over an image folder (``realiad_1024/``, ...).

Layout of the release (Wang et al., CVPR 2024): ``ROOT/realiad_<size>/<category>/{OK,NG/<defect>}/S<part>/``
holding one JPEG per camera view (C1-C5) and the NG masks, ``ROOT/realiad_jsons/<category>.json`` with the
``train`` / ``test`` lists, and the FUIAD noisy lists ``ROOT/realiad_jsons_fuiad_{0.0,0.1,0.2,0.4}/``.
One sample is one camera view (one image file), for training, filtering and the image-level metric.
Noise (``--noise ALPHA``) is the FUIAD list of that ratio, reproduced exactly
(:func:`~ssfilter.data.fuiad.realiad_fuiad_split`); there is no SoftPatch injection on Real-IAD.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ssfilter.data.datasets import Sample, realiad_samples
from ssfilter.data.formats.base import Category, DataFormat, find_existing, register_format
from ssfilter.data.fuiad import realiad_fuiad_split
from ssfilter.data.noise import NoiseSplit

__all__ = ["IMAGE_FOLDERS", "JSON_FOLDER", "RealIADFormat"]

log = logging.getLogger(__name__)

#: Image folders of the release, in order of preference (the largest first: the paper's crops are 392 px).
IMAGE_FOLDERS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")
#: The clean split lists, relative to the root.
JSON_FOLDER = "realiad_jsons"


@register_format
class RealIADFormat(DataFormat):
    """Real-IAD (multi-view, per-view samples) with its own clean and FUIAD splits."""

    name = "realiad"
    priority = 10
    citation = "Real-IAD: Wang et al., CVPR 2024; licence: the release's terms (research use)"
    looked_for = (
        f"a Real-IAD root ({JSON_FOLDER}/ next to {' or '.join(f + '/' for f in IMAGE_FOLDERS)}), one image "
        f"folder of it, or one category (realiad_<size>/<category>/ with ../../{JSON_FOLDER}/<category>.json)"
    )

    def root_categories(self, path: Path) -> list[Category] | None:
        """Categories with a JSON list and an image folder; ``path`` is the root or one image folder of it."""
        if (path / JSON_FOLDER).is_dir():
            root, images = path, find_existing([path / f for f in IMAGE_FOLDERS])
        elif path.name.startswith("realiad_") and (path.parent / JSON_FOLDER).is_dir() and path.is_dir():
            root, images = path.parent, path
        else:
            return None
        if images is None:
            return None
        stems = sorted(p.stem for p in (root / JSON_FOLDER).glob("*.json"))
        cats = [self._category(root, images, s) for s in stems if (images / s).is_dir()]
        if cats and path == root:
            log.info("Real-IAD images: %s", images)
        return cats or None

    def category(self, path: Path) -> Category | None:
        """``realiad_<size>/<category>`` with ``../../realiad_jsons/<category>.json``."""
        root = path.parent.parent
        if path.is_dir() and (root / JSON_FOLDER / f"{path.name}.json").is_file():
            return self._category(root, path.parent, path.name)
        return None

    def _category(self, root: Path, images: Path, name: str) -> Category:
        """A category record (its index is the clean JSON list)."""
        return Category(self.name, name, images / name, root, root / JSON_FOLDER / f"{name}.json")

    def samples(self, category: Category, split: str) -> list[Sample]:
        """The JSON's ``train`` or ``test`` list, one sample per camera view (raises when empty)."""
        assert category.index is not None
        samples = realiad_samples(category.index, category.path.parent, split)  # type: ignore[arg-type]
        if not samples:
            raise ValueError(f"'{category.index}' lists no {split} images")
        return samples

    def noisy_split(
        self, category: Category, alpha: float, *, overlap: bool, seed: int
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """The official FUIAD lists at ``alpha`` (``overlap`` and ``seed`` do not apply: nothing is drawn)."""
        if overlap:
            raise ValueError("--overlap does not apply to Real-IAD: its FUIAD lists fix the test set")
        train, test, split = realiad_fuiad_split(category.root, category.path.parent, category.name, alpha)
        log.info(
            "Real-IAD FUIAD split %s: %d training images (%d NG, noise rate %.3f), %d test images",
            split.meta["json"],
            len(train),
            split.meta["n_ng_train"],
            split.meta["noise_rate"],
            len(test),
        )
        return train, test, split

    def split_root(self, category: Category) -> Path:
        """FUIAD splits record paths under the Real-IAD root."""
        return category.root

    def split_pool(self, category: Category, split: NoiseSplit) -> tuple[list[Sample], list[Sample]]:
        """The recorded FUIAD JSON's own lists (its test list differs from the clean one)."""
        json_rel = split.meta.get("json")
        if not json_rel:
            return super().split_pool(category, split)
        json_path = Path(os.path.join(category.root, json_rel))
        images = category.path.parent
        return realiad_samples(json_path, images, "train"), realiad_samples(json_path, images, "test")
