"""Property tests of the dataset-level filter's bookkeeping: decisions, batches, summary, export names."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssfilter.filtering.clean_export import export_name
from ssfilter.filtering.dataset_filter import epoch_batches
from ssfilter.filtering.filter_outputs import FilterRecord, decide, summarize

FUZZ = settings(max_examples=80, deadline=None, derandomize=True)
RATIOS = ("noise_rate_before", "noise_rate_after", "normal_kept", "anomalies_removed")


@FUZZ
@given(times_kept=st.integers(0, 50), min_keep=st.integers(0, 50))
def test_decide_is_strictly_more_than_min_keep(times_kept: int, min_keep: int) -> None:
    assert decide(times_kept, min_keep) == ("normal" if times_kept > min_keep else "anomalous")


@FUZZ
@given(
    n=st.integers(1, 40), batch_size=st.integers(1, 12), seed=st.integers(0, 1000), epochs=st.integers(1, 3)
)
def test_every_image_counted_once_per_epoch(n: int, batch_size: int, seed: int, epochs: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        batches = epoch_batches(n, batch_size, gen)
        counted = sorted(i for indices, c in batches for i in indices[:c])
        assert counted == list(range(n))
        for indices, c in batches:
            assert len(indices) == min(batch_size, n) and 1 <= c <= len(indices)
            assert len(set(indices)) == len(indices) and all(0 <= i < n for i in indices)


@st.composite
def record_lists(draw: st.DrawFn) -> list[FilterRecord]:
    n = draw(st.integers(0, 30))
    epochs = draw(st.integers(1, 10))
    min_keep = draw(st.integers(0, epochs - 1))
    label_pool = draw(st.sampled_from([(0, 1), (0,), (1,), (-1, 0, 1)]))
    records = []
    for i in range(n):
        kept = draw(st.integers(0, epochs))
        label = draw(st.sampled_from(label_pool))
        records.append(FilterRecord(f"/d/{i}.png", epochs, kept, 0.1, 0.2, decide(kept, min_keep), label))
    return records


@FUZZ
@given(records=record_lists())
def test_summary_counts_add_up_and_ratios_are_fractions_or_none(records: list[FilterRecord]) -> None:
    out = summarize(records)
    n = len(records)
    assert out["n"] == n and out["n_kept"] + out["n_removed"] == n
    assert out["n_kept"] == sum(r.decision == "normal" for r in records)
    known = n > 0 and all(r.label in (0, 1) for r in records)
    assert out["labels_known"] is known
    for key in RATIOS:
        value = out[key]
        assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (key, value)
    if not known:
        assert all(out[key] is None for key in RATIOS)
        return
    anomalous = [r for r in records if r.label == 1]
    normal = [r for r in records if r.label == 0]
    kept = [r for r in records if r.decision == "normal"]
    # None exactly when the denominator is zero
    assert (out["noise_rate_after"] is None) == (not kept)
    assert (out["normal_kept"] is None) == (not normal)
    assert (out["anomalies_removed"] is None) == (not anomalous)
    assert out["noise_rate_before"] == len(anomalous) / n
    if kept:
        assert out["noise_rate_after"] == sum(r.label == 1 for r in kept) / len(kept)
    if normal and anomalous:
        # kept normals + kept anomalies = n_kept
        kept_normal = round(out["normal_kept"] * len(normal))
        removed_anom = round(out["anomalies_removed"] * len(anomalous))
        assert kept_normal + (len(anomalous) - removed_anom) == out["n_kept"]


PATH_PART = st.text(
    alphabet=st.sampled_from(list('ab.é /\\:*?"<>|\x00\x1f~')), max_size=12
) | st.sampled_from(["..", ".", "train", "good", "Train", "", "..."])


@FUZZ
@given(
    parts=st.lists(PATH_PART, min_size=1, max_size=6),
    absolute=st.booleans(),
    root=st.sampled_from([None, "/a/b"]),
)
def test_export_names_are_one_safe_component(parts: list[str], absolute: bool, root: str | None) -> None:
    raw = ("/" if absolute else "") + "/".join(parts)
    name = export_name(raw, root)
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".")
    dest = PurePosixPath("/out/train/good")
    assert PurePosixPath(os.path.normpath(dest / name)).parent == dest
