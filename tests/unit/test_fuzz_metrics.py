"""Property tests of the metrics: fractions or None, invariance to monotone maps, perfect separation -> 1."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssfilter.evaluation.metrics import (
    IMAGE_KEYS,
    METRIC_KEYS,
    MetricAccumulator,
    UndefinedMetricWarning,
    aupro_exact,
    image_metrics,
    pixel_metrics,
)

FUZZ = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
# Pixel metrics invariant under any strictly increasing transform (the Dinomaly AUPRO uses evenly spaced
# thresholds, so it is only invariant under affine maps; checked separately).
RANK_PIXEL_KEYS = ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO")


def _quiet(fn, *args):  # noqa: ANN001, ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return fn(*args)


@st.composite
def labelled_levels(draw: st.DrawFn, min_size: int = 1, max_size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Integer score levels (ties likely) and 0/1 labels (one class possible)."""
    n = draw(st.integers(min_size, max_size))
    levels = np.array(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), dtype=np.int64)
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    return levels, labels


@st.composite
def increasing_maps(draw: st.DrawFn) -> np.ndarray:
    """A strictly increasing lookup table level -> value, exact in float32 (integer steps < 2**24)."""
    steps = draw(st.lists(st.integers(1, 1000), min_size=13, max_size=13))
    offset = draw(st.integers(-5000, 5000))
    return offset + np.cumsum(steps).astype(np.float64)


@FUZZ
@given(data=labelled_levels(), table=increasing_maps())
def test_image_metrics_fractions_or_none_and_rank_invariant(
    data: tuple[np.ndarray, np.ndarray], table: np.ndarray
) -> None:
    levels, labels = data
    base = _quiet(image_metrics, levels.astype(np.float64), labels)
    moved = _quiet(image_metrics, table[levels], labels)
    one_class = labels.min() == labels.max()
    for key in IMAGE_KEYS:
        assert (base[key] is None) == one_class, key
        if base[key] is not None:
            assert 0.0 <= base[key] <= 1.0
            assert moved[key] == pytest.approx(base[key], abs=1e-12), key
    if not one_class and len(np.unique(levels)) == 1:
        assert base["I-AUROC"] == pytest.approx(0.5)  # all-equal scores: chance, not NaN
        assert base["I-AP"] == pytest.approx(labels.mean())


@FUZZ
@given(
    n_normal=st.integers(1, 20),
    n_anomalous=st.integers(1, 20),
    low=st.floats(-1e3, 1e3),
    gap=st.floats(1e-3, 1e3),
    seed=st.integers(0, 1000),
)
def test_perfect_image_separation_gives_one(
    n_normal: int, n_anomalous: int, low: float, gap: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    normal = low - rng.random(n_normal) * 10
    anomalous = low + gap + rng.random(n_anomalous) * 10
    scores = np.concatenate([normal, anomalous])
    labels = np.array([0] * n_normal + [1] * n_anomalous)
    perm = rng.permutation(scores.size)
    res = image_metrics(scores[perm], labels[perm])
    for key in IMAGE_KEYS:
        assert res[key] == pytest.approx(1.0, abs=1e-12), key  # sklearn's AP sums recall steps


@st.composite
def pixel_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Integer-level maps [N,H,W] and masks with random blobs (possibly empty or full)."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 8)), draw(st.integers(2, 8))
    size = n * h * w
    levels = np.array(draw(st.lists(st.integers(0, 12), min_size=size, max_size=size))).reshape(n, h, w)
    masks = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(n, h, w)
    return levels, masks


@FUZZ
@given(
    data=pixel_problems(), table=increasing_maps(), scale=st.floats(0.01, 100.0), shift=st.floats(-100, 100)
)
def test_pixel_metrics_fractions_or_none_and_rank_invariant(
    data: tuple[np.ndarray, np.ndarray], table: np.ndarray, scale: float, shift: float
) -> None:
    levels, masks = data
    base = _quiet(pixel_metrics, levels.astype(np.float32), masks)
    moved = _quiet(pixel_metrics, table[levels].astype(np.float32), masks)
    undefined = not masks.any() or masks.all()
    for key, value in base.items():
        if undefined:
            assert value is None, key
        else:
            assert value is None or 0.0 <= value <= 1.0, (key, value)
    if undefined:
        return
    for key in RANK_PIXEL_KEYS:
        assert moved[key] == pytest.approx(base[key], abs=1e-9), key
    # Dinomaly's AUPRO: invariant under positive affine maps of the scores (its thresholds move along).
    affine = _quiet(pixel_metrics, (levels * np.float32(scale) + np.float32(shift)).astype(np.float32), masks)
    if base["P-AUPRO-dinomaly"] is None:
        assert affine["P-AUPRO-dinomaly"] is None
    else:
        assert affine["P-AUPRO-dinomaly"] == pytest.approx(base["P-AUPRO-dinomaly"], abs=0.02)


@FUZZ
@given(data=pixel_problems(), gap=st.integers(1, 5))
def test_perfect_pixel_separation_gives_one(data: tuple[np.ndarray, np.ndarray], gap: int) -> None:
    levels, masks = data
    if not masks.any() or masks.all():
        return
    maps = np.where(masks, 20 + gap + levels, levels).astype(
        np.float32
    )  # every defect pixel above every normal one
    res = _quiet(pixel_metrics, maps, masks)  # Dinomaly's AUPRO is undefined here (its FPR range is 0)
    for key in ("P-AUROC", "P-AP", "P-F1max", "P-AUPRO"):
        assert res[key] == pytest.approx(1.0, abs=1e-12), key
    assert aupro_exact(maps, masks, max_fpr=0.05) == pytest.approx(1.0, abs=1e-12)


@FUZZ
@given(n=st.integers(1, 12), value=st.floats(-1e3, 1e3), label=st.integers(0, 1), h=st.integers(1, 6))
def test_single_class_and_constant_scores_are_none_not_nan(n: int, value: float, label: int, h: int) -> None:
    """A test set with one class and constant maps: every metric is None (with a warning), never NaN/0/0.5."""
    acc = MetricAccumulator()
    maps = np.full((n, h, h), value, dtype=np.float32)
    masks = np.zeros((n, h, h), dtype=bool) if label == 0 else np.ones((n, h, h), dtype=bool)
    acc.update(np.full(n, value), np.full(n, label), maps, masks)
    with pytest.warns(UndefinedMetricWarning):
        res = acc.compute()
    assert set(res) == set(METRIC_KEYS)
    assert all(v is None for v in res.values()), res
