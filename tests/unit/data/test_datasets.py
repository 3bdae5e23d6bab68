from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssfilter.data.datasets import (
    AnomalyDataset,
    Sample,
    discover,
    folder_samples,
    is_mvtec_layout,
    mvtec_samples,
    realiad_samples,
    visa_samples,
)
from ssfilter.data.images import ImageReadError
from ssfilter.data.transforms import build_image_transform, build_mask_transform

REPO_ROOT = Path(__file__).resolve().parents[3]
MVTEC_BOTTLE_CANDIDATES = [
    REPO_ROOT.parent / "shared" / "data" / "mvtec_bottle",
    REPO_ROOT / "shared" / "data" / "mvtec_bottle",
]


def _save(path: Path, size: tuple[int, int] = (32, 32), value: int = 100, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)
    return path


def _copy(synthetic_mvtec: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_mvtec, tmp_path / "copy"))


# --- MVTec layout -------------------------------------------------------------------------------------------


def test_sample_is_frozen_with_defaults() -> None:
    sample = Sample("a.png", 0)
    assert sample.mask_path is None and sample.defect_type == "good"
    with pytest.raises(AttributeError):
        sample.label = 1  # type: ignore[misc]


def test_is_mvtec_layout(synthetic_mvtec: Path, tmp_path: Path) -> None:
    assert is_mvtec_layout(synthetic_mvtec)
    assert not is_mvtec_layout(tmp_path)
    (tmp_path / "test").mkdir()
    assert is_mvtec_layout(tmp_path)


def test_mvtec_train_samples(synthetic_mvtec: Path) -> None:
    samples = mvtec_samples(synthetic_mvtec, "train")
    assert len(samples) == 8
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in samples)
    assert all(Path(s.path).is_absolute() and Path(s.path).parent.name == "good" for s in samples)
    assert [s.path for s in samples] == sorted(s.path for s in samples)


def test_mvtec_test_samples_and_mask_pairing(synthetic_mvtec: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = mvtec_samples(synthetic_mvtec, "test")
    assert len(samples) == 9
    normal = [s for s in samples if s.label == 0]
    anomalous = [s for s in samples if s.label == 1]
    assert len(normal) == 3 and all(s.mask_path is None and s.defect_type == "good" for s in normal)
    assert len(anomalous) == 6
    assert sorted({s.defect_type for s in anomalous}) == ["dent", "scratch", "stain"]
    for s in anomalous:
        assert s.mask_path is not None and Path(s.mask_path).is_file()
        assert Path(s.mask_path).name == f"{Path(s.path).stem}_mask.png"
        assert Path(s.mask_path).parent.name == s.defect_type == Path(s.path).parent.name


def test_mvtec_accepts_mask_named_like_image(synthetic_mvtec: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_mvtec, tmp_path)
    mask = root / "ground_truth" / "dent" / "000_mask.png"
    mask.rename(mask.with_name("000.png"))
    sample = next(s for s in mvtec_samples(root, "test") if s.path.endswith("dent/000.png"))
    assert sample.mask_path is not None and sample.mask_path.endswith("dent/000.png")


def test_mvtec_missing_masks_warn_once(synthetic_mvtec: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_mvtec, tmp_path)
    (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    shutil.rmtree(root / "ground_truth" / "stain")
    with pytest.warns(UserWarning, match=r"3 of 6 anomalous test images") as record:
        samples = mvtec_samples(root, "test")
    assert len([w for w in record if "ground-truth mask" in str(w.message)]) == 1
    missing = [s for s in samples if s.label == 1 and s.mask_path is None]
    assert sorted(s.defect_type for s in missing) == ["scratch", "stain", "stain"]


def test_mvtec_missing_split_folder(tmp_path: Path) -> None:
    (tmp_path / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train/good"):
        mvtec_samples(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        mvtec_samples(tmp_path, "val")  # type: ignore[arg-type]


@pytest.mark.shared_data
def test_real_mvtec_bottle_counts() -> None:
    root = next((p for p in MVTEC_BOTTLE_CANDIDATES if p.is_dir()), None)
    if root is None:
        pytest.skip(f"MVTec bottle data not found at {[str(p) for p in MVTEC_BOTTLE_CANDIDATES]}")
    train = mvtec_samples(root, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = mvtec_samples(root, "test")
    assert len(train) == 209 and all(s.label == 0 for s in train)
    assert len(test) == 83
    masks = [s for s in test if s.mask_path is not None]
    assert len(masks) == 63 and all(s.label == 1 for s in masks)
    assert sum(s.label == 0 for s in test) == 20
    counts = {
        t: sum(s.defect_type == t for s in test) for t in ("broken_large", "broken_small", "contamination")
    }
    assert counts == {"broken_large": 20, "broken_small": 22, "contamination": 21}


# --- plain folders and discover -----------------------------------------------------------------------------


def test_folder_samples_unlabelled(tmp_path: Path) -> None:
    _save(tmp_path / "b.png")
    _save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "readme.txt").write_text("x")
    samples = folder_samples(tmp_path)
    assert [Path(s.path).relative_to(tmp_path).as_posix() for s in samples] == ["b.png", "sub/a.jpg"]
    assert all(s.label == -1 and s.mask_path is None and s.defect_type == "unknown" for s in samples)


def test_discover(synthetic_mvtec: Path, tmp_path: Path) -> None:
    assert discover(synthetic_mvtec, "train") == mvtec_samples(synthetic_mvtec, "train")
    assert len(discover(synthetic_mvtec, "test")) == 9
    plain = tmp_path / "plain"
    _save(plain / "x.png")
    assert [s.label for s in discover(plain, "train")] == [-1]
    with pytest.raises(ValueError, match="test split needs the MVTec layout"):
        discover(plain, "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images found under .*\.png.*\.webp"):
        discover(empty, "train")
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "missing", "train")
    (tmp_path / "mv" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        discover(tmp_path / "mv", "train")


# --- VisA ---------------------------------------------------------------------------------------------------


def _visa(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "visa"
    _save(root / "candle/Data/Images/Normal/0000.JPG")
    _save(root / "candle/Data/Images/Normal/0001.JPG")
    _save(root / "candle/Data/Images/Anomaly/000.JPG")
    _save(root / "candle/Data/Masks/Anomaly/000.png", mode="L", value=255)
    _save(root / "pcb1/Data/Images/Anomaly/001.JPG")
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text(
        "\ufeffobject,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n"
        "pcb1,test,anomaly,pcb1/Data/Images/Anomaly/001.JPG,pcb1/Data/Masks/Anomaly/001.png\n",
        encoding="utf-8",
    )
    return root, csv_path


def test_visa_samples(tmp_path: Path) -> None:
    root, csv_path = _visa(tmp_path)
    train = visa_samples(root, csv_path, "train")
    assert [(Path(s.path).name, s.label) for s in train] == [("0000.JPG", 0)]
    test = visa_samples(root, csv_path, "test", category="candle")
    assert [(s.label, s.defect_type) for s in test] == [(0, "good"), (1, "anomaly")]
    assert test[1].mask_path == str(root / "candle/Data/Masks/Anomaly/000.png")
    with pytest.warns(UserWarning, match="1 of 2 anomalous"):
        everything = visa_samples(root, csv_path, "test")
    assert len(everything) == 3 and everything[2].mask_path is None


def test_visa_bad_csv(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("object,split,image\ncandle,train,a.png\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks columns"):
        visa_samples(tmp_path, bad, "train")
    bad.write_text("object,split,label,image,mask\ncandle,train,weird,a.png,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="normal' or 'anomaly"):
        visa_samples(tmp_path, bad, "train")


# --- Real-IAD -----------------------------------------------------------------------------------------------


def _realiad_json(path: Path, with_category_key: bool = True) -> Path:
    def item(image: str, cls: str, mask: str | None) -> dict[str, object]:
        entry: dict[str, object] = {"anomaly_class": cls, "image_path": image, "mask_path": mask}
        if with_category_key:
            entry["category"] = "audiojack"
        return entry

    payload = {
        "meta": {"prefix": "", "normal_class": "OK", "pre_transform": False},
        "train": [
            item("OK/S0001/a_C1.jpg", "OK", None),
            item("NG/BX/S0002/b_C1.jpg", "BX", "NG/BX/S0002/b_C1.png"),
        ],
        "test": [
            item("OK/S0003/c_C1.jpg", "OK", ""),
            item("NG/AK/S0004/d_C1.jpg", "AK", "NG/AK/S0004/d_C1.png"),
            item("NG/AK/S0005/e_C1.jpg", "AK", None),
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def test_realiad_paths_relative_to_category(tmp_path: Path) -> None:
    root = tmp_path / "realiad_256"
    _save(root / "audiojack" / "OK/S0001/a_C1.jpg")
    json_path = _realiad_json(tmp_path / "jsons" / "audiojack.json", with_category_key=False)
    train = realiad_samples(json_path, root, "train")
    assert [s.label for s in train] == [0, 1]  # noisy training split keeps its true labels
    assert train[0].path == str(root / "audiojack/OK/S0001/a_C1.jpg")
    assert train[1].defect_type == "BX" and train[1].mask_path == str(root / "audiojack/NG/BX/S0002/b_C1.png")
    with pytest.warns(UserWarning, match="1 of 2 anomalous"):
        test = realiad_samples(json_path, root, "test")
    assert [(s.label, s.defect_type, s.mask_path is None) for s in test] == [
        (0, "good", True),
        (1, "AK", False),
        (1, "AK", True),
    ]


def test_realiad_paths_relative_to_root(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _save(root / "OK/S0001/a_C1.jpg")
    json_path = _realiad_json(tmp_path / "audiojack.json")
    train = realiad_samples(json_path, root, "train")
    assert train[0].path == str(root / "OK/S0001/a_C1.jpg")


def test_realiad_no_images_found_warns(tmp_path: Path) -> None:
    json_path = _realiad_json(tmp_path / "audiojack.json")
    with pytest.warns(UserWarning, match="none of the first Real-IAD images"):
        train = realiad_samples(json_path, tmp_path / "nowhere", "train")
    assert "audiojack" in train[0].path
    with pytest.raises(ValueError, match="split must be"):
        realiad_samples(json_path, tmp_path, "val")  # type: ignore[arg-type]
    json_path.write_text(json.dumps({"meta": {}, "train": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="no 'test' list"):
        realiad_samples(json_path, tmp_path, "test")


# --- AnomalyDataset -----------------------------------------------------------------------------------------


def test_dataset_items(synthetic_mvtec: Path) -> None:
    samples = mvtec_samples(synthetic_mvtec, "test")
    dataset = AnomalyDataset(samples, build_image_transform(64, 56), build_mask_transform(64, 56))
    assert len(dataset) == 9
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (3, 56, 56) and item["image"].dtype == torch.float32
        assert item["mask"].shape == (1, 56, 56)
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        assert item["index"] == index and item["path"] == samples[index].path
        assert item["label"] == samples[index].label and item["has_mask"] is True
        assert (float(item["mask"].sum()) > 0) == (item["label"] == 1)


def test_dataset_eval_size_and_collate(synthetic_mvtec: Path) -> None:
    samples = mvtec_samples(synthetic_mvtec, "test")
    dataset = AnomalyDataset(
        samples, build_image_transform(64, 56), build_mask_transform(64, 56), eval_size=32
    )
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 56, 56) and batch["mask"].shape == (4, 1, 32, 32)
    assert batch["has_mask"].dtype == torch.bool and batch["label"].dtype == torch.int64
    assert pickle.loads(pickle.dumps(dataset)).samples == samples


def test_dataset_without_masks(synthetic_mvtec: Path, tmp_path: Path) -> None:
    image = next(s.path for s in mvtec_samples(synthetic_mvtec, "test") if s.label == 1)
    samples = [Sample(image, 1, None, "dent"), Sample(image, -1, None, "unknown")]
    dataset = AnomalyDataset(samples, build_image_transform(64, 48), build_mask_transform(64, 48))
    for item in (dataset[0], dataset[1]):
        assert item["mask"].shape == (1, 48, 48) and float(item["mask"].sum()) == 0.0
        assert item["has_mask"] is False
    no_mask_transform = AnomalyDataset([Sample(image, 0)], build_image_transform(64, 48))
    assert no_mask_transform[0]["has_mask"] is True and no_mask_transform[0]["mask"].shape == (1, 48, 48)


def test_dataset_resizes_mismatched_mask_with_warning(tmp_path: Path) -> None:
    image = _save(tmp_path / "img.png", size=(40, 40))
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[:10] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    dataset = AnomalyDataset(
        [Sample(str(image), 1, str(tmp_path / "mask.png"), "x")],
        build_image_transform(32, 32),
        build_mask_transform(32, 32),
    )
    with pytest.warns(UserWarning, match="resized"):
        item = dataset[0]
    # Top half of the 40x40 image -> rows 0..15 of 32; bilinear + "> 0" may add one boundary row.
    assert item["mask"][0, :16].all() and not item["mask"][0, 17:].any()


def test_dataset_unreadable_file_raises(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.png")
    dataset = AnomalyDataset([Sample(str(path), -1)], build_image_transform(32, 32))
    assert dataset[0]["image"].shape == (3, 32, 32)
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        dataset[0]
    with pytest.raises(ValueError):
        AnomalyDataset([], build_image_transform(32, 32), eval_size=0)
