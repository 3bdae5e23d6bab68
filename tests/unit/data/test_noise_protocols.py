"""The benchmark's noise protocols: the registry, and Table 10's boundary split (training half anomalous)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, Sample
from ssfilter.data.noise import NoiseSplit, apply_split, softpatch_split
from ssfilter.data.noise_protocols import (
    UnknownProtocolError,
    balance_normals,
    boundary_split,
    get_protocol,
    list_protocols,
)


def test_registry() -> None:
    assert list_protocols()[:2] == ("softpatch", "boundary")
    assert get_protocol("softpatch").split is softpatch_split
    assert get_protocol("softpatch").default_alphas == (0.0, 0.1, 0.2, 0.4)
    assert get_protocol("boundary").default_alphas == (0.4,)
    with pytest.raises(UnknownProtocolError, match="unknown noise protocol 'fuiad'; choose one of softpatch"):
        get_protocol("fuiad")


@pytest.mark.parametrize(("alpha", "n_anomalies"), [(0.4, 3), (0.2, 1), (1.0, 3)])
@pytest.mark.filterwarnings("ignore:noise alpha=1 asks for 8")  # the cap of half the test anomalies
def test_boundary_split_sizes(synthetic_mvtec: Path, alpha: float, n_anomalies: int) -> None:
    # synthetic_mvtec: 8 normal training images, 6 defective test images (cap: 3 injected)
    train, test, split = boundary_split(synthetic_mvtec, alpha, overlap=False, seed=0)
    _, soft_test, soft = softpatch_split(synthetic_mvtec, alpha, overlap=False, seed=0)
    labels = [s.label for s in train]
    assert labels.count(LABEL_ANOMALOUS) == n_anomalies == len(split.injected)
    assert labels.count(LABEL_NORMAL) == n_anomalies, "normal images reduced to the number injected"
    assert split.injected == soft.injected and [s.path for s in test] == [s.path for s in soft_test]
    assert split.train == [s.path for s in train] and len(train) == 2 * n_anomalies
    assert split.meta["protocol"] == "boundary" and split.meta["noise_rate"] == 0.5
    assert split.meta["n_train_normal"] == n_anomalies


def test_boundary_split_is_seeded_and_reproducible(synthetic_mvtec: Path, tmp_path: Path) -> None:
    a = boundary_split(synthetic_mvtec, 0.4, overlap=True, seed=3)[2]
    b = boundary_split(synthetic_mvtec, 0.4, overlap=True, seed=3)[2]
    assert a.train == b.train
    others = {tuple(boundary_split(synthetic_mvtec, 0.4, overlap=True, seed=s)[2].train) for s in range(6)}
    assert len(others) > 1, "the seed chooses which normal images stay"
    a.save(tmp_path / "split.json")
    train, test = apply_split(synthetic_mvtec, NoiseSplit.load(tmp_path / "split.json"))
    assert [s.path for s in train] == a.train and [s.path for s in test] == a.test
    assert json.loads((tmp_path / "split.json").read_text())["meta"]["protocol"] == "boundary"


def test_boundary_needs_injected_anomalies(synthetic_mvtec: Path) -> None:
    with pytest.raises(ValueError, match="at least one injected anomaly"):
        boundary_split(synthetic_mvtec, 0.0, overlap=False, seed=0)


def test_balance_normals() -> None:
    samples = [Sample(f"n{i}", LABEL_NORMAL) for i in range(10)] + [Sample(f"a{i}", 1) for i in range(4)]
    kept = balance_normals(samples, seed=0)
    assert sum(s.label == 1 for s in kept) == 4 and sum(s.label == 0 for s in kept) == 4
    assert kept == [s for s in samples if s in kept], "original order"
    few = samples[:2] + samples[10:]
    assert balance_normals(few, 0) == few  # fewer normals than anomalies: all stay
    with pytest.raises(ValueError, match="unlabelled"):
        balance_normals([Sample("x", -1)], 0)
