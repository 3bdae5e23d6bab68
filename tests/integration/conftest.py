"""Fixtures shared by the integration tests: folders of striped parts with planted defects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: ``mark(image, index)``: plant the defect of the ``index``-th defective test part into ``image``.
Mark = Callable[[np.ndarray, int], None]


def striped_part(seed: int, height: int, width: int) -> np.ndarray:
    """A grey part with vertical stripes of a random phase and pixel noise, ``(H, W, 3)`` float."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[:height, :width][1]
    img = np.full((height, width, 3), 120.0)
    img += 25 * np.sin(xx / 3.0 + rng.uniform(0, 6))[..., None]
    return img + rng.normal(0, 6, img.shape)


def _save(img: np.ndarray, path: Path) -> Path:
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def make_parts() -> Callable[..., tuple[Path, list[Path], list[Path]]]:
    """Factory: ``(root, n_train, height, width, mark) -> (folder, good test parts, defective ones)``.

    ``n_train`` good parts go into ``root/parts``; four good and four marked test parts beside it.
    """

    def make(root: Path, n_train: int, height: int, width: int, mark: Mark) -> tuple[Path, list, list]:
        folder = root / "parts"
        folder.mkdir()
        for i in range(n_train):
            _save(striped_part(i, height, width), folder / f"{i:02d}.png")
        good, bad = [], []
        for i in range(4):
            good.append(_save(striped_part(100 + i, height, width), root / f"good{i}.png"))
            img = striped_part(200 + i, height, width)
            mark(img, i)
            bad.append(_save(img, root / f"bad{i}.png"))
        return folder, good, bad

    return make
