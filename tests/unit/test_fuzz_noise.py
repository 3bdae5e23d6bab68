"""Property tests of the SoftPatch noise protocol's bookkeeping (counts, cap, overlap, seeds, split file)."""

from __future__ import annotations

import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from ssfilter.data.datasets import Sample
from ssfilter.data.noise import NoiseSplit, contamination, inject_anomalies

FUZZ = settings(max_examples=80, deadline=None, derandomize=True)


@st.composite
def splits(draw: st.DrawFn) -> tuple[list[Sample], list[Sample]]:
    """A clean training list and a test list whose anomalies come in several defect types, shuffled."""
    n_train = draw(st.integers(0, 60), label="n_train")
    n_good = draw(st.integers(0, 6), label="n_test_good")
    types = draw(st.lists(st.integers(0, 25), min_size=1, max_size=3), label="anomalies_per_type")
    train = [Sample(f"/d/train/good/{i:03d}.png", 0) for i in range(n_train)]
    test = [Sample(f"/d/test/good/{i:03d}.png", 0) for i in range(n_good)]
    for t, count in enumerate(types):
        test += [
            Sample(f"/d/test/t{t}/{i:03d}.png", 1, f"/d/gt/t{t}/{i:03d}_mask.png", f"t{t}")
            for i in range(count)
        ]
    order = draw(st.permutations(range(len(test))), label="listing_order")
    return train, [test[i] for i in order]


def _inject(train: list[Sample], test: list[Sample], alpha: float, overlap: bool, seed: int):  # noqa: ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cap warning
        return inject_anomalies(train, test, alpha, overlap, seed)


@FUZZ
@given(data=splits(), alpha=st.floats(0.0, 1.0), overlap=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_injection_bookkeeping(
    data: tuple[list[Sample], list[Sample]], alpha: float, overlap: bool, seed: int
) -> None:
    train, test = data
    anomalous = [s for s in test if s.label == 1]
    new_train, new_test, injected = _inject(train, test, alpha, overlap, seed)

    # counts and the cap at half (floor) of the test anomalies
    assert len(injected) == min(int(alpha * len(train)), len(anomalous) // 2)
    assert len(injected) <= len(anomalous) // 2
    # only anomalous test images are injected, with label and mask kept, without duplicates
    assert {s.path for s in injected} <= {s.path for s in anomalous}
    assert all(s.label == 1 and s.mask_path is not None for s in injected)
    assert len({s.path for s in new_train}) == len(new_train)
    assert len({s.path for s in new_test}) == len(new_test)
    assert [s.path for s in injected] == sorted(s.path for s in injected)
    # train = clean train + injected, in that order; test keeps its order
    assert new_train == train + injected
    chosen = {s.path for s in injected}
    if overlap:
        assert new_test == test
    else:
        assert new_test == [s for s in test if s.path not in chosen]
        assert not chosen & {s.path for s in new_test}
    # nothing is lost or invented: train U test is the same set of images before and after
    assert {s.path for s in new_train} | {s.path for s in new_test} == {s.path for s in train + test}
    # the measured contamination of the noisy training set matches the injected count
    if new_train:
        stats = contamination(new_train)
        assert stats["n_anomalous"] == len(injected) and stats["n"] == len(train) + len(injected)
        assert 0.0 <= stats["noise_rate"] <= 0.5  # at most one injected image per clean one


@FUZZ
@given(data=splits(), alpha=st.floats(0.0, 1.0), overlap=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_seed_reproducibility_and_listing_order_independence(
    data: tuple[list[Sample], list[Sample]], alpha: float, overlap: bool, seed: int
) -> None:
    train, test = data
    first = _inject(train, test, alpha, overlap, seed)[2]
    assert _inject(train, test, alpha, overlap, seed)[2] == first
    assert _inject(train, list(reversed(test)), alpha, overlap, seed)[2] == first
    # nested choice: a larger alpha only adds images for the same seed
    larger = _inject(train, test, min(1.0, alpha * 2 + 0.05), overlap, seed)[2]
    assert {s.path for s in first} <= {s.path for s in larger}


@FUZZ
@given(data=splits(), alpha=st.floats(0.0, 1.0), overlap=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_split_record_round_trips(
    data: tuple[list[Sample], list[Sample]], alpha: float, overlap: bool, seed: int
) -> None:
    train, test = data
    new_train, new_test, injected = _inject(train, test, alpha, overlap, seed)
    split = NoiseSplit(
        alpha=alpha,
        overlap=overlap,
        seed=seed,
        injected=[s.path for s in injected],
        test=[s.path for s in new_test],
        train=[s.path for s in new_train],
        source="/d",
    )
    doc = split.to_json()
    assert doc["n_injected"] == len(injected)
    assert NoiseSplit.from_json(doc) == split
