from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssfilter.errors import CalibrationError
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.calibration_rules import (
    MAD_TO_SIGMA,
    calibrate_from_labels,
    calibrate_unsupervised,
    map_extrema,
    robust_threshold,
)
from ssfilter.runfolder import CALIBRATION_FILE


def _cal(**kw: object) -> Calibration:
    base: dict[str, object] = {
        "image_threshold": 2.0,
        "score_min": 1.0,
        "score_max": 4.0,
        "pixel_threshold": 0.3,
        "map_min": 0.1,
        "map_max": 0.5,
        "rule": "test",
        "source": "training",
        "n_images": 3,
    }
    base.update(kw)
    return Calibration(**base)  # type: ignore[arg-type]


def _brute_f1(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = int(np.sum(pred & (labels == 1)))
        fp = int(np.sum(pred & (labels == 0)))
        fn = int(np.sum(~pred & (labels == 1)))
        if tp:
            best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _f1_at(scores: np.ndarray, labels: np.ndarray, t: float) -> float:
    pred = scores >= t
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    return 2 * tp / (2 * tp + fp + fn)


def test_normalize_scores_piecewise_linear_threshold_at_half() -> None:
    cal = _cal()
    out = cal.normalize_scores([1.0, 1.5, 2.0, 3.0, 4.0, 0.0, 10.0])
    np.testing.assert_allclose(out, [0.0, 0.25, 0.5, 0.75, 1.0, 0.0, 1.0])
    assert out[2] == 0.5  # exactly, not approximately
    # just below the threshold stays below 0.5, even where rounding would give 0.5
    below = np.nextafter(2.0, -np.inf)
    assert cal.normalize_scores([below])[0] < 0.5
    assert cal.normalize_scores([np.nan])[0] == 1.0


def test_labels_consistent_with_threshold_and_normalised_score() -> None:
    rng = np.random.default_rng(3)
    cal = _cal(image_threshold=2.0)
    raw = np.concatenate([rng.uniform(0.5, 4.5, 200), [2.0, np.nextafter(2.0, 0.0), np.nextafter(2.0, 9.0)]])
    labels = cal.label(raw)
    norm = cal.normalize_scores(raw)
    assert labels == ["NG" if r >= 2.0 else "OK" for r in raw]
    assert [n >= 0.5 for n in norm] == [lab == "NG" for lab in labels]
    assert labels[-3:] == ["NG", "OK", "NG"]


def test_normalize_maps_fixed_scale_independent_of_batch() -> None:
    rng = np.random.default_rng(0)
    cal = _cal()
    m = rng.uniform(0.0, 0.6, (16, 16)).astype(np.float32)
    other = rng.uniform(5.0, 9.0, (16, 16)).astype(np.float32)  # a very anomalous neighbour
    alone = cal.normalize_maps(m[None])[0]
    together = cal.normalize_maps(np.stack([other, m, other * 0]))[1]
    np.testing.assert_array_equal(alone, together)
    assert alone.dtype == np.float32
    # comparisons are made in float64: the largest float32 below the (float64) threshold maps below 0.5,
    # although 0.5 - 1e-9 would round to 0.5 in float32
    x = np.float32(0.3)
    while np.float64(x) >= 0.3:
        x = np.nextafter(x, np.float32(0.0))
    assert cal.normalize_maps(np.array([x]))[0] < 0.5
    assert cal.normalize_maps(np.array([np.nextafter(x, np.float32(1.0))]))[0] == 0.5
    np.testing.assert_array_equal(cal.mask(m), m.astype(np.float64) >= 0.3)


def test_unsupervised_rule_on_hand_made_scores() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 100.0])  # one gross outlier (a defective training image)
    # median 3.5; |x - 3.5| = 2.5 1.5 .5 .5 1.5 96.5 -> MAD 1.5
    maxima = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 5.0])  # median .75; |x - .75| sorted .05 .05 .15 .15 ...
    minima = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.0])
    cal = calibrate_unsupervised(scores, minima, maxima, k=2.0, pixel_k=3.0, map_size=64)
    expected = 3.5 + 2.0 * MAD_TO_SIGMA * 1.5
    assert cal.image_threshold == pytest.approx(expected)
    assert cal.pixel_threshold == pytest.approx(0.75 + 3.0 * MAD_TO_SIGMA * 0.15)
    assert cal.params["n_kept"] == 5  # 100 is above the threshold, 1..5 are kept
    assert cal.score_min == 1.0
    assert cal.score_max == pytest.approx(2 * expected - 1.0)  # symmetric about the threshold
    assert cal.map_min == pytest.approx(0.3)  # median of the kept images' minima
    assert cal.source == "training" and cal.n_images == 6 and cal.map_size == 64
    assert "median" in cal.rule and "MAD" in cal.rule
    assert cal.label(scores) == ["OK"] * 5 + ["NG"]
    # the outlier cannot drag the threshold up (mean + 2 std would be about 91)
    assert cal.image_threshold < 10.0 < np.mean(scores) + 2 * np.std(scores)


def test_robust_threshold_fallbacks() -> None:
    thr, stats = robust_threshold([2.0, 2.0, 2.0, 2.0, 7.0], k=3)  # MAD 0 -> standard deviation
    assert stats["sigma_from"] == "std"
    assert thr == pytest.approx(2.0 + 3 * np.std([2.0, 2.0, 2.0, 2.0, 7.0]))
    thr, stats = robust_threshold([5.0, 5.0], k=3)
    assert stats["sigma_from"] == "epsilon" and 5.0 < thr < 5.001
    cal = calibrate_unsupervised([5.0, 5.0, 5.0])
    assert cal.label([5.0, 6.0]) == ["OK", "NG"]
    with pytest.raises(CalibrationError):
        robust_threshold([np.nan], k=1)


def test_map_extrema() -> None:
    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    lo, hi = map_extrema(maps)
    np.testing.assert_array_equal(lo, [0, 12])
    np.testing.assert_array_equal(hi, [11, 23])


def test_f1_max_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        labels = rng.integers(0, 2, 25)
        labels[:2] = [0, 1]
        scores = rng.normal(labels * 1.0, 1.0).round(1)  # rounding creates ties
        cal = calibrate_from_labels(scores, labels)
        brute = _brute_f1(scores, labels)
        assert cal.params["image_f1"] == pytest.approx(brute)
        assert _f1_at(scores, labels, cal.image_threshold) == pytest.approx(brute)
        assert cal.source == "validation" and cal.normalize_scores([cal.image_threshold])[0] == 0.5


def test_labelled_pixel_threshold_from_masks_and_from_good_maps() -> None:
    rng = np.random.default_rng(1)
    maps = rng.uniform(0, 1, (4, 6, 6))
    masks = np.zeros((4, 6, 6), dtype=bool)
    masks[2:, 1:3, 1:3] = True
    maps[masks] += 0.8
    scores = np.array([0.1, 0.2, 0.9, 0.8])
    labels = np.array([0, 0, 1, 1])
    cal = calibrate_from_labels(scores, labels, maps, masks)
    brute = _brute_f1(maps.reshape(-1), masks.reshape(-1).astype(int))
    assert cal.params["pixel_f1"] == pytest.approx(brute)
    assert _f1_at(maps.reshape(-1), masks.reshape(-1).astype(int), cal.pixel_threshold) == pytest.approx(
        brute
    )
    assert cal.image_threshold == 0.8  # lowest defective score separates perfectly
    no_masks = calibrate_from_labels(scores, labels, maps, pixel_k=2.0)
    good_max = maps[:2].reshape(2, -1).max(1)
    assert no_masks.pixel_threshold == pytest.approx(robust_threshold(good_max, 2.0)[0])
    with pytest.raises(CalibrationError, match="both"):
        calibrate_from_labels(scores, [0, 0, 0, 0])


def test_with_threshold_override() -> None:
    cal = _cal()
    inside = cal.with_threshold(3.0)
    assert inside.normalize_scores([3.0])[0] == 0.5 and inside.label([2.9, 3.0]) == ["OK", "NG"]
    assert inside.source == "manual" and inside.pixel_threshold == cal.pixel_threshold
    outside = cal.with_threshold(50.0)
    assert outside.score_min < 50.0 < outside.score_max
    assert outside.normalize_scores([50.0])[0] == 0.5
    with pytest.raises(CalibrationError):
        cal.with_threshold(float("nan"))


def test_save_load_round_trip(tmp_path: Path) -> None:
    cal = calibrate_unsupervised(
        [1.0, 1.2, 1.1, 1.3, 4.0], [0, 0, 0, 0, 0], [2, 2.1, 2.2, 2.3, 9], map_size=32
    )
    path = cal.save(tmp_path)
    assert path == tmp_path / CALIBRATION_FILE
    raw = json.loads(path.read_text())
    assert raw["version"] == 1 and raw["source"] == "training"
    back = Calibration.load(tmp_path)
    assert back == cal
    assert Calibration.load(path) == cal  # a file path works too
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"image_threshold": 1.0}', "version"),
        ('{"version": 1, "image_threshold": 1.0}', "missing keys"),
        ('{"version": 99}', "newer"),
    ],
)
def test_malformed_file_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / CALIBRATION_FILE).write_text(content)
    with pytest.raises(CalibrationError, match=message):
        Calibration.load(tmp_path)


def test_invalid_values_rejected(tmp_path: Path) -> None:
    good = _cal().to_dict()
    for key, value, message in [
        ("image_threshold", "high", "number"),
        ("score_max", 1.5, "score_min <= image_threshold <= score_max"),
        ("extra_key", 1, "unknown keys"),
        ("source", "guess", "source"),
        ("n_images", 2.5, "integer"),
    ]:
        bad = {**good, key: value}
        (tmp_path / CALIBRATION_FILE).write_text(json.dumps(bad))
        with pytest.raises(CalibrationError, match=message):
            Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(good).replace("2.0", "NaN", 1))
    with pytest.raises(CalibrationError, match="finite"):
        Calibration.load(tmp_path)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ssfilter calibrate"):
        Calibration.load(tmp_path)


def test_module_does_not_import_torch() -> None:
    code = "import sys, ssfilter.inference.calibration as c; c.Calibration; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
