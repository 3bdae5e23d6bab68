from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssfilter.data.datasets import Sample, mvtec_samples, visa_samples
from ssfilter.data.noise import (
    NoiseSplit,
    apply_split,
    contamination,
    inject_anomalies,
    n_injected,
    realiad_noisy_split,
    softpatch_split,
    visa_noisy_split,
)
from ssfilter.data.synthetic import make_synthetic_category

REPO_ROOT = Path(__file__).resolve().parents[3]
MVTEC_BOTTLE = REPO_ROOT.parent / "shared" / "data" / "mvtec_bottle"
SPEC_KEYS = {"alpha", "overlap", "seed", "injected", "test"}

N_TRAIN, N_TEST_GOOD, N_TEST_DEFECT = 10, 3, 12


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 train, 3 good + 12 defective test images at 32 px. Shared: copy before changing anything."""
    root = tmp_path_factory.mktemp("noise") / "widget"
    return make_synthetic_category(
        root, n_train_good=N_TRAIN, n_test_good=N_TEST_GOOD, n_test_defect=N_TEST_DEFECT, size=32
    )


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _save(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (16, 16), 255 if mode == "L" else (90, 90, 90)).save(path)
    return path


# --- SoftPatch protocol on the MVTec layout -----------------------------------------------------------------


def test_counts_without_cap(category: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test, split = softpatch_split(category, 0.5, overlap=False, seed=0)
    assert len(split.injected) == int(0.5 * N_TRAIN) == 5
    assert len(train) == N_TRAIN + 5 and len(test) == N_TEST_GOOD + N_TEST_DEFECT - 5
    injected = train[N_TRAIN:]
    assert [s.path for s in injected] == split.injected == sorted(split.injected)
    assert all(s.label == 1 and s.mask_path is not None and Path(s.mask_path).is_file() for s in injected)
    assert all(s.label == 0 for s in train[:N_TRAIN])
    assert split.meta["n_requested"] == 5 and not split.meta["capped"]


def test_cap_at_half_of_test_anomalies_warns(category: Path) -> None:
    with pytest.warns(UserWarning, match=r"asks for 8 .* only 6 are allowed .* 12 anomalous"):
        train, _, split = softpatch_split(category, 0.8, overlap=False, seed=0)
    assert len(split.injected) == N_TEST_DEFECT // 2 == 6
    assert len(train) == N_TRAIN + 6
    assert split.meta["n_requested"] == 8 and split.meta["capped"]


@pytest.mark.parametrize("overlap", [False, True])
def test_overlap_semantics(category: Path, overlap: bool) -> None:
    clean_test = mvtec_samples(category, "test")
    _, test, split = softpatch_split(category, 0.3, overlap=overlap, seed=3)
    injected = set(split.injected)
    assert len(injected) == 3
    assert [s for s in test if s.label == 0] == [s for s in clean_test if s.label == 0]
    if overlap:
        assert test == clean_test
    else:
        assert not injected & {s.path for s in test}
        assert test == [s for s in clean_test if s.path not in injected]
    assert split.test == [s.path for s in test]


def test_alpha_zero_injects_nothing(category: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test, split = softpatch_split(category, 0.0, overlap=False)
    assert split.injected == []
    assert train == mvtec_samples(category, "train") and test == mvtec_samples(category, "test")


@pytest.mark.parametrize("alpha", [-0.1, 1.01, float("nan"), float("inf"), True, "0.1", None])
def test_invalid_alpha(category: Path, alpha: object) -> None:
    with pytest.raises(ValueError, match="alpha"):
        softpatch_split(category, alpha, overlap=False)  # type: ignore[arg-type]


def test_alpha_one_is_valid(category: Path) -> None:
    with pytest.warns(UserWarning, match="asks for 10"):
        _, _, split = softpatch_split(category, 1.0, overlap=True)
    assert len(split.injected) == 6


def test_seed_reproducibility(category: Path) -> None:
    first = softpatch_split(category, 0.5, overlap=False, seed=7)[2]
    again = softpatch_split(category, 0.5, overlap=False, seed=7)[2]
    other = softpatch_split(category, 0.5, overlap=False, seed=8)[2]
    assert first.injected == again.injected and first.test == again.test
    assert first.injected != other.injected


def test_choice_is_nested_across_alpha(category: Path) -> None:
    small = softpatch_split(category, 0.2, overlap=False, seed=1)[2]
    large = softpatch_split(category, 0.5, overlap=False, seed=1)[2]
    assert set(small.injected) < set(large.injected)


def test_choice_ignores_listing_order() -> None:
    train = [Sample(f"/t/{i:03d}.png", 0) for i in range(20)]
    test = [Sample(f"/x/{i:03d}.png", 1, f"/m/{i:03d}.png", "d") for i in range(10)]
    a = inject_anomalies(train, test, 0.2, False, 5)[2]
    b = inject_anomalies(train, test[::-1], 0.2, False, 5)[2]
    assert a == b


def test_input_folder_unchanged(category: Path, tmp_path: Path) -> None:
    before = _tree_hash(category)
    for overlap in (False, True):
        with pytest.warns(UserWarning, match="only 6 are allowed"):
            _, _, split = softpatch_split(category, 0.8, overlap=overlap, seed=0)
        split.save(tmp_path / f"split_{overlap}.json")
        apply_split(category, NoiseSplit.load(tmp_path / f"split_{overlap}.json"))
    assert _tree_hash(category) == before


# --- NoiseSplit JSON ----------------------------------------------------------------------------------------


def test_split_json_round_trip(category: Path, tmp_path: Path) -> None:
    _, _, split = softpatch_split(category, 0.3, overlap=True, seed=2)
    path = tmp_path / "run" / "noise_split.json"
    split.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) >= SPEC_KEYS
    assert data["alpha"] == 0.3 and data["overlap"] is True and data["seed"] == 2
    assert data["injected"] == split.injected and data["test"] == split.test
    assert NoiseSplit.load(path) == split
    assert NoiseSplit.from_json(split.to_json()) == split
    assert [p.name for p in path.parent.iterdir()] == ["noise_split.json"]  # no temporary left


def test_split_from_json_errors() -> None:
    with pytest.raises(ValueError, match=r"lacks keys \['test'\]"):
        NoiseSplit.from_json({"alpha": 0.1, "overlap": False, "seed": 0, "injected": []})
    with pytest.raises(ValueError, match="overlap"):
        NoiseSplit.from_json({"alpha": 0.1, "overlap": "no", "seed": 0, "injected": [], "test": []})
    with pytest.raises(ValueError, match="injected"):
        NoiseSplit.from_json({"alpha": 0.1, "overlap": False, "seed": 0, "injected": [1], "test": []})


# --- apply_split --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [False, True])
def test_apply_split_equals_original(category: Path, overlap: bool) -> None:
    train, test, split = softpatch_split(category, 0.4, overlap=overlap, seed=4)
    assert apply_split(category, NoiseSplit.from_json(split.to_json())) == (train, test)
    spec_only = NoiseSplit.from_json({k: v for k, v in split.to_json().items() if k in SPEC_KEYS})
    assert apply_split(category, spec_only) == (train, test)


def test_apply_split_after_folder_moved(category: Path, tmp_path: Path) -> None:
    train, test, split = softpatch_split(category, 0.4, overlap=False, seed=4)
    moved = Path(shutil.copytree(category, tmp_path / "moved"))
    new_train, new_test = apply_split(moved, split)
    assert [s.path for s in new_train] == [str(moved / Path(s.path).relative_to(category)) for s in train]
    assert [(s.label, s.defect_type) for s in new_test] == [(s.label, s.defect_type) for s in test]


def test_apply_split_missing_file(category: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(category, tmp_path / "copy"))
    _, _, split = softpatch_split(copy, 0.3, overlap=False, seed=0)
    Path(split.injected[0]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in the noise split no longer exist"):
        apply_split(copy, split)


def test_apply_split_foreign_file(category: Path, tmp_path: Path) -> None:
    _, _, split = softpatch_split(category, 0.3, overlap=False, seed=0)
    stray = _save(tmp_path / "stray.png")
    split.test.append(str(stray))
    with pytest.raises(ValueError, match="not part of the data set"):
        apply_split(category, split)


# --- contamination ------------------------------------------------------------------------------------------


def test_contamination() -> None:
    samples = [Sample("a", 0), Sample("b", 1), Sample("c", 0), Sample("d", 0)]
    assert contamination(samples) == {"n": 4, "n_anomalous": 1, "n_normal": 3, "noise_rate": 0.25}
    assert contamination([])["noise_rate"] == 0.0
    with pytest.raises(ValueError, match="2 of 3 samples are unlabelled"):
        contamination([Sample("a", -1), Sample("b", 0), Sample("c", -1)])
    with pytest.raises(ValueError, match="0 or 1"):
        contamination([Sample("a", 2)])


def test_contamination_of_softpatch_train(category: Path) -> None:
    train, _, _ = softpatch_split(category, 0.5, overlap=False, seed=0)
    assert contamination(train) == {"n": 15, "n_anomalous": 5, "n_normal": 10, "noise_rate": 5 / 15}


# --- Real-IAD -----------------------------------------------------------------------------------------------


def test_realiad_noisy_split(tmp_path: Path) -> None:
    root = tmp_path / "realiad_256"
    train_items = []
    for i in range(6):
        bad = i in (1, 4)
        rel = f"NG/BX/S{i:04d}/{i}_C1.jpg" if bad else f"OK/S{i:04d}/{i}_C1.jpg"
        _save(root / "audiojack" / rel)
        mask = rel.replace(".jpg", ".png") if bad else None
        if mask:
            _save(root / "audiojack" / mask, mode="L")
        train_items.append({"image_path": rel, "mask_path": mask, "anomaly_class": "BX" if bad else "OK"})
    _save(root / "audiojack" / "NG/AK/S0100/t_C1.jpg")
    _save(root / "audiojack" / "NG/AK/S0100/t_C1.png", mode="L")
    test_items = [
        {"image_path": "NG/AK/S0100/t_C1.jpg", "mask_path": "NG/AK/S0100/t_C1.png", "anomaly_class": "AK"}
    ]
    json_path = tmp_path / "realiad_jsons_fuiad_0.1" / "audiojack.json"
    json_path.parent.mkdir()
    json_path.write_text(
        json.dumps({"meta": {"normal_class": "OK"}, "train": train_items, "test": test_items}),
        encoding="utf-8",
    )
    train, test, info = realiad_noisy_split(json_path, root)
    assert len(train) == 6 and len(test) == 1 and test[0].label == 1
    assert info["n"] == 6 and info["n_anomalous"] == 2 and info["noise_rate"] == pytest.approx(1 / 3)
    assert info["nominal_alpha"] == 0.1 and info["json"] == str(json_path)
    assert [s.label for s in train] == [0, 1, 0, 0, 1, 0]


# --- VisA ---------------------------------------------------------------------------------------------------


def _visa(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(10):
            image = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _save(root / image)
            rows.append(f"{obj},{'train' if i < 8 else 'test'},normal,{image},")
        for i in range(6):
            image, mask = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _save(root / image)
            _save(root / mask, mode="L")
            rows.append(f"{obj},test,anomaly,{image},{mask}")
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root, csv_path


@pytest.mark.parametrize("overlap", [False, True])
def test_visa_noisy_split(tmp_path: Path, overlap: bool) -> None:
    root, csv_path = _visa(tmp_path)
    train, test, split = visa_noisy_split(root, csv_path, 0.25, overlap=overlap, seed=0, category="candle")
    assert len(split.injected) == int(0.25 * 8) == 2
    assert all("/candle/" in p for p in split.injected)
    assert len(train) == 10 and [s.label for s in train] == [0] * 8 + [1, 1]
    assert len(test) == (8 if overlap else 6)
    assert split.meta["category"] == "candle" and split.meta["csv"] == str(csv_path)
    pool = (visa_samples(root, csv_path, "train", "candle"), visa_samples(root, csv_path, "test", "candle"))
    assert apply_split(root, split, pool=pool) == (train, test)
    # Same injection code as the MVTec protocol.
    assert inject_anomalies(*pool, 0.25, overlap, 0) == (train, test, train[8:])


def test_visa_cap_over_all_objects(tmp_path: Path) -> None:
    root, csv_path = _visa(tmp_path)
    with pytest.warns(UserWarning, match=r"asks for 8 .* only 6 .* 12 anomalous"):
        _, _, split = visa_noisy_split(root, csv_path, 0.5, overlap=False, seed=1)
    assert len(split.injected) == 6


# --- Count formula (property) -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n_train=st.integers(0, 300),
    n_anom=st.integers(0, 80),
    n_good=st.integers(0, 5),
    alpha=st.floats(0.0, 1.0, allow_nan=False),
    overlap=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_count_formula_property(
    n_train: int, n_anom: int, n_good: int, alpha: float, overlap: bool, seed: int
) -> None:
    train = [Sample(f"/data/train/good/{i:04d}.png", 0) for i in range(n_train)]
    test = [Sample(f"/data/test/good/{i:04d}.png", 0) for i in range(n_good)]
    test += [
        Sample(f"/data/test/d/{i:04d}.png", 1, f"/data/gt/d/{i:04d}_mask.png", "d") for i in range(n_anom)
    ]
    expected = min(int(alpha * n_train), n_anom // 2)
    assert n_injected(n_train, n_anom, alpha) == (int(alpha * n_train), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new_train, new_test, injected = inject_anomalies(train, test, alpha, overlap, seed)
    assert len(injected) == expected == len({s.path for s in injected})
    assert all(s.label == 1 for s in injected)
    assert new_train == train + injected
    assert len(new_test) == len(test) - (0 if overlap else expected)


# --- Real data ----------------------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.skipif(not MVTEC_BOTTLE.is_dir(), reason=f"real MVTec bottle data absent ({MVTEC_BOTTLE})")
def test_real_bottle_counts() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test, split = softpatch_split(MVTEC_BOTTLE, 0.1, overlap=False, seed=0)
    assert len(split.injected) == 20 and len(train) == 229 and len(test) == 83 - 20
    with pytest.warns(UserWarning, match=r"asks for 41 .* only 31 .* 63 anomalous"):
        train, test, split = softpatch_split(MVTEC_BOTTLE, 0.2, overlap=True, seed=0)
    assert len(split.injected) == 31 and len(train) == 240 and len(test) == 83
