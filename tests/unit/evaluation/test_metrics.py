"""Tests of ssfilter.evaluation.metrics against brute-force references written here."""

from __future__ import annotations

import warnings
from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from ssfilter.evaluation import metrics as M
from ssfilter.evaluation.metrics import (
    METRIC_KEYS,
    MetricAccumulator,
    UndefinedMetricWarning,
    aupro_dinomaly,
    aupro_exact,
    f1_max,
    f1_max_threshold,
    image_metrics,
    pixel_metrics,
)

# --------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------


def regions_8(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected regions of a 2-D mask by breadth-first flood fill (independent of scipy)."""
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    h, w = mask.shape
    for i0, j0 in zip(*np.nonzero(mask), strict=True):
        if seen[i0, j0]:
            continue
        seen[i0, j0] = True
        queue, region = deque([(int(i0), int(j0))]), []
        while queue:
            i, j = queue.popleft()
            region.append((i, j))
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a, b = i + di, j + dj
                    if 0 <= a < h and 0 <= b < w and mask[a, b] and not seen[a, b]:
                        seen[a, b] = True
                        queue.append((a, b))
        out.append(region)
    return out


def all_regions(masks: np.ndarray) -> list[tuple[int, list[tuple[int, int]]]]:
    return [(n, r) for n in range(masks.shape[0]) for r in regions_8(masks[n])]


def mean_overlap(pred: np.ndarray, regions: list[tuple[int, list[tuple[int, int]]]]) -> float:
    return float(np.mean([np.mean([pred[n, i, j] for i, j in r]) for n, r in regions]))


def brute_aupro_exact(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Every distinct threshold, literal per-region overlap and FPR, trapezoid with interpolation."""
    maps = maps.astype(np.float32)
    regions = all_regions(masks)
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        points.append(((pred & normal).sum() / normal.sum(), mean_overlap(pred, regions)))
    points.append((1.0, 1.0))
    area = 0.0
    for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
        if xb <= max_fpr:
            area += (xb - xa) * (ya + yb) / 2
            continue
        if xa < max_fpr:
            y_at = ya + (yb - ya) * (max_fpr - xa) / (xb - xa)
            area += (max_fpr - xa) * (ya + y_at) / 2
        break
    return area / max_fpr


def brute_aupro_dinomaly(maps: np.ndarray, masks: np.ndarray, k: int = 200, max_fpr: float = 0.3) -> float:
    """Literal loop over Dinomaly's grid min + i * (max - min) / k, i < k, binarised with ``>``."""
    maps = maps.astype(np.float32)
    regions = all_regions(masks)
    normal = ~masks
    lo, hi = float(maps.min()), float(maps.max())
    points = []
    for i in range(k):
        th = np.float32(lo + (hi - lo) / k * i)
        pred = maps > th
        points.append(((pred & normal).sum() / normal.sum(), mean_overlap(pred, regions)))
    kept = [(f, p) for f, p in points if f < max_fpr]
    top = max(f for f, _ in kept)
    xs = [f / top for f, _ in kept]
    ys = [p for _, p in kept]
    return sum(abs(xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None].astype(np.float64) - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def sklearn_f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(f1.max())


def random_case(seed: int, n: int = 3, h: int = 8, w: int = 8, levels: int | None = None):
    """Random maps (quantised to ``levels`` values to force ties) with blob masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            a, b = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, a : a + rng.integers(1, 4), b : b + rng.integers(1, 4)] = True
    masks[0, 1, 1] = True  # at least one anomalous pixel
    maps = rng.random((n, h, w)) + 0.7 * masks
    if levels is not None:
        maps = np.round(maps * levels) / levels
    return maps.astype(np.float32), masks


# --------------------------------------------------------------------------------------------------
# Exact AUPRO
# --------------------------------------------------------------------------------------------------


def test_aupro_exact_hand_computed_with_interpolation() -> None:
    # One region of area 2 (scores 1.0, 0.5), 4 normal pixels (0.9, 0.4, 0.3, 0.2).
    # Curve: (0,0) (0,.5) (.25,.5) (.25,1) (.5,1) ... -> area to 0.3 = .25*.5 + .05*1 = 0.175.
    maps = np.array([[[1.0, 0.5, 0.9, 0.4, 0.3, 0.2]]], dtype=np.float32)
    masks = np.array([[[1, 1, 0, 0, 0, 0]]], dtype=bool)
    assert aupro_exact(maps, masks) == pytest.approx(0.175 / 0.3, abs=1e-12)
    assert brute_aupro_exact(maps, masks) == pytest.approx(0.175 / 0.3, abs=1e-12)


def test_aupro_exact_hand_computed_tie_between_region_and_normal() -> None:
    # Region pixel 0.9 ties with a normal pixel: the curve jumps diagonally (0,0) -> (.25,.5).
    # Then (.25,.5) -> (.5,1) crosses 0.3: PRO(0.3) = 0.6, area = .25*.25 + .05*(.5+.6)/2 = 0.0900.
    maps = np.array([[[0.9, 0.5, 0.9, 0.5, 0.3, 0.2]]], dtype=np.float32)
    masks = np.array([[[1, 1, 0, 0, 0, 0]]], dtype=bool)
    expected = (0.25 * 0.25 + 0.05 * (0.5 + 0.6) / 2) / 0.3
    assert aupro_exact(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert brute_aupro_exact(maps, masks) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 5])
def test_aupro_exact_matches_brute_force(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed, levels=levels)
    assert aupro_exact(maps, masks) == pytest.approx(brute_aupro_exact(maps, masks), abs=1e-9)


@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 0.77, 1.0])
def test_aupro_exact_other_limits(max_fpr: float) -> None:
    maps, masks = random_case(11, levels=7)
    assert aupro_exact(maps, masks, max_fpr) == pytest.approx(
        brute_aupro_exact(maps, masks, max_fpr), abs=1e-9
    )


def test_aupro_exact_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = random_case(3, n=4, h=12, w=12, levels=9)
    expected = pixel_metrics(maps, masks)
    monkeypatch.setattr(M, "_BLOCK", 3)  # ties now straddle many block boundaries
    got = pixel_metrics(maps, masks)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12)
    assert got["P-AUPRO"] == pytest.approx(brute_aupro_exact(maps, masks), abs=1e-9)


def test_distinct_blocks_yield_each_value_once() -> None:
    values = np.sort(np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 5, 5], dtype=np.float32))
    for block in (1, 2, 3, 5, 100):
        assert np.concatenate(list(M._distinct_blocks(values, block))).tolist() == [1, 2, 3, 4, 5]


def test_eight_connectivity_merges_diagonal_pixels() -> None:
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 1, 1] = mask[0, 2, 2] = mask[0, 3, 3] = True  # one diagonal region of area 3
    mask[0, 0, 5] = True  # a second region
    assert len(regions_8(mask[0])) == 2
    assert M._prepare_pixels([(np.zeros((1, 6, 6), np.float32), mask)]).n_regions == 2
    rng = np.random.default_rng(0)
    maps = rng.random((1, 6, 6)).astype(np.float32)
    maps[0, 1, 1], maps[0, 2, 2], maps[0, 3, 3], maps[0, 0, 5] = 2.0, -1.0, 1.5, 1.2
    assert aupro_exact(maps, mask) == pytest.approx(brute_aupro_exact(maps, mask), abs=1e-9)
    assert aupro_dinomaly(maps, mask) == pytest.approx(brute_aupro_dinomaly(maps, mask), abs=1e-9)


def test_regions_are_mean_over_all_images() -> None:
    # Small and large regions weigh the same: a found small region and a missed large one -> PRO 0.5.
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 0, 0] = True
    masks[1, 2:8, 2:8] = True
    maps = masks.astype(np.float32) * 0.5
    maps[0, 0, 0] = 1.0
    maps[1][masks[1]] = 0.0
    maps[1, 9, 9] = 0.1  # some normal pixel above the missed region
    assert aupro_exact(maps, masks) == pytest.approx(brute_aupro_exact(maps, masks), abs=1e-12)


def test_perfect_map_gives_one() -> None:
    _, masks = random_case(5)
    perfect = masks.astype(np.float32)
    assert aupro_exact(perfect, masks) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    separated = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.4 * rng.random(masks.shape))
    res = pixel_metrics(separated.astype(np.float32), masks)
    for key in ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO", "P-AUPRO-dinomaly"):
        assert res[key] == pytest.approx(1.0), key


# --------------------------------------------------------------------------------------------------
# Dinomaly AUPRO
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 6])
def test_aupro_dinomaly_matches_brute_force(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed + 100, levels=levels)
    expected = brute_aupro_dinomaly(maps, masks)
    assert aupro_dinomaly(maps, masks) == pytest.approx(expected, abs=1e-9)
    assert aupro_dinomaly(maps, masks, num_thresholds=37, max_fpr=0.5) == pytest.approx(
        brute_aupro_dinomaly(maps, masks, 37, 0.5), abs=1e-9
    )


def test_aupro_dinomaly_degenerate_is_none_with_warning() -> None:
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    with pytest.warns(UndefinedMetricWarning, match="P-AUPRO-dinomaly"):
        assert aupro_dinomaly(masks.astype(np.float32), masks) is None  # every kept FPR is 0
    with pytest.warns(UndefinedMetricWarning, match="all pixel scores are equal"):
        assert aupro_dinomaly(np.ones((1, 4, 4)), masks) is None


# --------------------------------------------------------------------------------------------------
# ROC AUC / AP / F1max
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [None, 4])
def test_pixel_rank_metrics_match_sklearn_and_pairwise(seed: int, levels: int | None) -> None:
    maps, masks = random_case(seed + 200, n=2, h=10, w=10, levels=levels)
    res = pixel_metrics(maps, masks)
    y, s = masks.ravel().astype(int), maps.ravel()
    assert res["P-AUROC"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res["P-AUROC"] == pytest.approx(pairwise_auroc(s, y), abs=1e-12)
    assert res["P-AP"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert res["P-F1max"] == pytest.approx(sklearn_f1max(s, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 40)
    labels[:2] = (0, 1)
    scores = np.round(rng.random(40) + 0.5 * labels, 1)  # rounding forces ties
    res = image_metrics(scores, labels)
    assert res["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert res["I-AUROC"] == pytest.approx(pairwise_auroc(scores, labels), abs=1e-12)
    assert res["I-AP"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert res["I-F1max"] == pytest.approx(sklearn_f1max(scores, labels), abs=1e-12)
    assert f1_max(scores, labels) == res["I-F1max"]


def test_f1_max_threshold_reaches_the_best_f1() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.6 * labels, 2)
    best, thr = f1_max_threshold(scores, labels)
    assert best == pytest.approx(sklearn_f1max(scores, labels), abs=1e-12)
    assert f1_score(labels, (scores >= thr).astype(int)) == pytest.approx(best, abs=1e-12)


def test_f1_hand_computed() -> None:
    # Threshold 0.8 -> TP 2, FP 1, FN 0: F1 = 4/5; threshold 0.9 -> TP 1: F1 = 2/3.
    assert f1_max_threshold([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0]) == pytest.approx((0.8, 0.8))


# --------------------------------------------------------------------------------------------------
# Undefined metrics and invalid input
# --------------------------------------------------------------------------------------------------


def test_single_class_image_metrics_are_none_with_warning() -> None:
    with pytest.warns(UndefinedMetricWarning, match="I-AUROC.*only one class"):
        res = image_metrics([0.1, 0.5, 0.3], [0, 0, 0])
    assert res == {"I-AUROC": None, "I-AP": None, "I-F1max": None}
    with pytest.warns(UndefinedMetricWarning, match="F1max"):
        assert f1_max([0.1, 0.2], [1, 1]) is None


def test_no_anomalous_pixels_gives_none_with_warning() -> None:
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.warns(UndefinedMetricWarning, match="P-AUROC.*no anomalous pixels"):
        res = pixel_metrics(maps, np.zeros((2, 4, 4), dtype=bool))
    assert all(v is None for v in res.values())
    with pytest.warns(UndefinedMetricWarning, match="P-AUPRO"):
        assert aupro_exact(maps, np.zeros((2, 4, 4))) is None


def test_accumulator_without_masks_or_maps() -> None:
    acc = MetricAccumulator()
    acc.update([0.1, 0.9], [0, 1], np.zeros((2, 3, 3)))
    with pytest.warns(UndefinedMetricWarning, match="no ground-truth masks"):
        res = acc.compute()
    assert res["I-AUROC"] == 1.0
    assert all(res[k] is None for k in M.PIXEL_KEYS)
    acc = MetricAccumulator()
    acc.update([0.1, 0.9], [0, 1])
    with pytest.warns(UndefinedMetricWarning, match="no anomaly maps"):
        assert acc.compute()["P-AUROC"] is None


def test_accumulator_missing_masks_of_normal_and_anomalous_images() -> None:
    maps, masks = random_case(9, n=4)
    labels = masks.any(axis=(1, 2)).astype(int)
    labels[3] = 0
    masks[3] = False
    scores = maps.max(axis=(1, 2))
    full = MetricAccumulator()
    full.update(scores, labels, maps, masks)
    mixed = MetricAccumulator()
    mixed.update(scores[:3], labels[:3], maps[:3], masks[:3])
    mixed.update(scores[3:], labels[3:], maps[3:], None)  # normal image without mask -> all zero
    assert mixed.compute() == full.compute()
    bad = MetricAccumulator()
    bad.update(scores[:1], [1], maps[:1], None)
    bad.update(scores[1:], labels[1:], maps[1:], masks[1:])
    with pytest.warns(UndefinedMetricWarning, match="1 anomalous images have no ground-truth mask"):
        assert bad.compute()["P-AUPRO"] is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad: float) -> None:
    name = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(ValueError, match=f"image_scores contain {name}"):
        image_metrics([0.1, bad], [0, 1])
    maps = np.zeros((1, 3, 3), dtype=np.float32)
    maps[0, 1, 1] = bad
    with pytest.raises(ValueError, match=f"maps contain {name}"):
        pixel_metrics(maps, np.eye(3, dtype=bool)[None])
    with pytest.raises(ValueError, match=f"maps contain {name}"):
        MetricAccumulator().update([0.1], [1], torch.from_numpy(maps), np.eye(3)[None])


def test_invalid_labels_and_masks_raise() -> None:
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        image_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="binary"):
        pixel_metrics(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="max_fpr"):
        aupro_exact(np.zeros((1, 2, 2)), np.eye(2)[None], max_fpr=0.0)


# --------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------


def make_test_set(seed: int, n: int = 10, size: int = 16):
    maps, masks = random_case(seed, n=n, h=size, w=size, levels=20)
    masks[n // 2 :] = False  # second half: normal images
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    return scores, labels, maps, masks


def test_accumulator_one_batch_equals_many_batches() -> None:
    scores, labels, maps, masks = make_test_set(1)
    one = MetricAccumulator()
    one.update(scores, labels, maps, masks)
    many = MetricAccumulator()
    for a, b in ((0, 3), (3, 4), (4, 9), (9, 10)):
        many.update(scores[a:b], labels[a:b], maps[a:b], masks[a:b])
    assert one.n_images == many.n_images == 10
    res = one.compute()
    assert set(res) == set(METRIC_KEYS)
    assert res == many.compute()
    assert one.curves() == many.curves()
    assert all(v is not None and 0.0 <= v <= 1.0 for v in res.values())
    assert all(type(v) is float for v in res.values())  # plain floats, not numpy scalars
    expected = {**image_metrics(scores, labels), **pixel_metrics(maps, masks)}
    assert res == expected


def test_accumulator_stores_float32_and_bool_and_copies() -> None:
    scores, labels, maps, masks = make_test_set(2, n=4)
    acc = MetricAccumulator()
    acc.update(scores[:2], labels[:2], maps[:2].astype(np.float64), masks[:2].astype(np.uint8))
    acc.update(
        torch.from_numpy(scores[2:]),
        torch.from_numpy(labels[2:]),
        torch.from_numpy(maps[2:, None]).half(),  # [B,1,H,W] half tensor
        torch.from_numpy(masks[2:]),
    )
    assert all(m.dtype == np.float32 for m in acc._maps)
    assert all(k.dtype == np.bool_ for k in acc._masks)
    buf = maps.copy()
    acc2 = MetricAccumulator()
    acc2.update(scores, labels, buf, masks)
    before = acc2.compute()
    buf[:] = 0.0  # caller reuses its buffer
    acc2.update([0.5], [0], np.zeros((1, 16, 16)), np.zeros((1, 16, 16)))
    assert acc2._maps[0].max() > 0
    assert acc2.compute()["P-AUROC"] == pytest.approx(before["P-AUROC"], abs=0.05)


def test_curves_shapes() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[:2, 10:30, 20:40] = True
    maps = (rng.random((4, 64, 64)) + 0.8 * masks).astype(np.float32)
    labels = np.array([1, 1, 0, 0])
    acc = MetricAccumulator()
    acc.update(maps.reshape(4, -1).max(1), labels, maps, masks)
    res, cur = acc.compute(), acc.curves()
    assert set(cur) == {"image_roc", "pixel_roc", "pro"}
    roc, pro = cur["pixel_roc"], cur["pro"]
    assert 2 < len(roc["fpr"]) == len(roc["tpr"]) <= 1000
    assert 2 < len(pro["fpr"]) == len(pro["pro"]) <= 1000
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert np.all(np.diff(pro["fpr"]) >= 0) and np.all(np.diff(pro["pro"]) >= -1e-12)
    assert pro["fpr"][-1] == 0.3
    # The plotted PRO curve integrates to (almost) the reported AUPRO.
    assert np.trapezoid(pro["pro"], pro["fpr"]) / 0.3 == pytest.approx(res["P-AUPRO"], abs=2e-3)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(res["P-AUROC"], abs=2e-3)
    assert cur["image_roc"]["fpr"][0] == 0.0 and cur["image_roc"]["tpr"][-1] == 1.0


def test_empty_accumulator() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        res = MetricAccumulator().compute()
    assert res == dict.fromkeys(METRIC_KEYS)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@st.composite
def pixel_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 5))
    values = st.sampled_from([0.0, 0.25, 0.5, 1.0, -3.0, 7.5]) | st.floats(-1e3, 1e3, width=32)
    maps = np.array(draw(st.lists(values, min_size=n * h * w, max_size=n * h * w)), dtype=np.float32)
    masks = np.array(draw(st.lists(st.booleans(), min_size=n * h * w, max_size=n * h * w)), dtype=bool)
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    scores = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=np.float64)
    return scores, labels, maps.reshape(n, h, w), masks.reshape(n, h, w)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixel_sets())
def test_metrics_are_in_unit_interval_or_none(data: tuple[np.ndarray, ...]) -> None:
    scores, labels, maps, masks = data
    acc = MetricAccumulator()
    acc.update(scores, labels, maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        res = acc.compute()
        acc.curves()
    for key in METRIC_KEYS:
        assert res[key] is None or 0.0 <= res[key] <= 1.0, (key, res[key])
    if masks.any() and (~masks).any():
        assert res["P-AUPRO"] == pytest.approx(brute_aupro_exact(maps, masks), abs=1e-9)
        assert res["P-AUROC"] == pytest.approx(pairwise_auroc(maps.ravel(), masks.ravel()), abs=1e-12)
