from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.data.datasets import mvtec_samples
from ssfilter.data.synthetic import DEFECT_TYPES, MANIFEST_NAME, make_synthetic_category


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts(synthetic_mvtec: Path) -> None:
    assert len(list((synthetic_mvtec / "train" / "good").glob("*.png"))) == 8
    assert len(list((synthetic_mvtec / "test" / "good").glob("*.png"))) == 3
    for defect in DEFECT_TYPES:
        images = sorted(p.stem for p in (synthetic_mvtec / "test" / defect).glob("*.png"))
        masks = sorted(p.name for p in (synthetic_mvtec / "ground_truth" / defect).glob("*.png"))
        assert images == ["000", "001"] and masks == ["000_mask.png", "001_mask.png"]
    manifest = json.loads((synthetic_mvtec / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["train_defective"] == [] and manifest["size"] == 64 and manifest["kind"] == "object"
    with Image.open(synthetic_mvtec / "train" / "good" / "000.png") as image:
        assert image.mode == "RGB" and image.size == (64, 64)


def test_masks_binary_small_and_on_the_object(synthetic_mvtec: Path) -> None:
    for sample in mvtec_samples(synthetic_mvtec, "test"):
        if sample.label == 0:
            continue
        assert sample.mask_path is not None
        mask = np.asarray(Image.open(sample.mask_path))
        assert mask.shape == (64, 64) and set(np.unique(mask).tolist()) == {0, 255}
        assert 0.01 <= (mask > 0).mean() <= 0.05
        ys, xs = np.nonzero(mask)
        # On the disc: well inside the image, within the object radius (at most 0.41 * size from the centre).
        assert np.hypot(xs + 0.5 - 32, ys + 0.5 - 32).max() < 0.41 * 64
        image = np.asarray(Image.open(sample.path)).astype(float)
        good = np.asarray(Image.open(synthetic_mvtec / "test" / "good" / "000.png")).astype(float)
        assert np.abs(image - good)[mask > 0].mean() > 3 * np.abs(image - good)[mask == 0].mean()


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kwargs = {"n_train_good": 3, "n_test_good": 1, "n_test_defect": 3, "n_train_defect": 2, "size": 48}
    a = _files(make_synthetic_category(tmp_path / "a", seed=7, **kwargs))
    b = _files(make_synthetic_category(tmp_path / "b", seed=7, **kwargs))
    c = _files(make_synthetic_category(tmp_path / "c", seed=8, **kwargs))
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_noisy_training_set_and_manifest(tmp_path: Path) -> None:
    root = make_synthetic_category(
        tmp_path / "noisy",
        kind="texture",
        n_train_good=5,
        n_test_good=1,
        n_test_defect=3,
        n_train_defect=3,
        size=48,
    )
    train = sorted(p.relative_to(root).as_posix() for p in (root / "train" / "good").glob("*.png"))
    assert len(train) == 8
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    defective = manifest["train_defective"]
    assert len(defective) == 3 and set(defective) <= set(train)
    assert sorted(manifest["train_defect_types"].values()) == sorted(DEFECT_TYPES)
    assert not (root / "ground_truth" / "train").exists()
    assert not list(root.rglob(".*.tmp"))  # atomic writes leave no temporary files


def test_texture_masks_inside_image(tmp_path: Path) -> None:
    root = make_synthetic_category(
        tmp_path / "tex", kind="texture", n_train_good=1, n_test_good=1, n_test_defect=3
    )
    for defect in DEFECT_TYPES:
        mask = np.asarray(Image.open(root / "ground_truth" / defect / "000_mask.png")) > 0
        assert 0.01 <= mask.mean() <= 0.05
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()


def test_refuses_non_empty_root_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "user_file.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError):
        make_synthetic_category(tmp_path, n_train_good=1)
    assert (tmp_path / "user_file.txt").read_text(encoding="utf-8") == "keep me"
    with pytest.raises(ValueError):
        make_synthetic_category(tmp_path / "k", kind="metal")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_synthetic_category(tmp_path / "s", size=16)
    with pytest.raises(ValueError):
        make_synthetic_category(tmp_path / "n", n_test_good=-1)
