from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssfilter.data.datasets import Sample, discover
from ssfilter.filtering.dataset_filter import (
    BatchVotes,
    DatasetFilter,
    VoteTally,
    decide,
    epoch_batches,
    filter_dataset,
)
from ssfilter.filtering.filter_outputs import CSV_FIELDS, FilterRecords, write_filter_outputs
from ssfilter.training.checkpoint import build_model

EPOCHS = 3
SIZE = 64
#: The decision parameters of the default rule, the paper's kappa_2 vote.
PAPER_VOTE = {"decision": "vote", "outlier_k": None}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run much faster single-threaded (no thread oversubscription on busy machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg():
    """The conftest's ``tiny_config`` (64 px), module-scoped so one model serves every test."""
    from ssfilter.config import get_preset

    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop, cfg.data.batch_size, cfg.data.eval_size = SIZE, SIZE, 4, SIZE
    cfg.model.backbone = "tiny_vit"
    cfg.model.decoder_dim = None
    cfg.model.decoder_heads = None
    cfg.train.device = "cpu"
    cfg.batch_filter.cold_start_iters = 3
    cfg.batch_filter.mc_passes = 3
    cfg.dataset_filter.epochs, cfg.dataset_filter.min_keep = EPOCHS, 1
    cfg.dataset_filter.decision = "vote"  # these tests check the kappa_2 vote itself
    return cfg


@pytest.fixture(scope="module")
def model(cfg):
    return build_model(cfg, allow_random=True)


@pytest.fixture(scope="module")
def samples(synthetic_mvtec: Path) -> list[Sample]:
    # 5 normal training images + 1 defective test image labelled anomalous: 1 full batch + 2 (padded).
    test = [s for s in discover(synthetic_mvtec, "test") if s.label == 1][:1]
    return discover(synthetic_mvtec, "train")[:5] + test


@pytest.fixture(scope="module")
def records(model, cfg, samples) -> FilterRecords:
    return filter_dataset(model, samples, cfg, progress=False, seed=7)


# -- batches ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "bs"), [(10, 4), (8, 4), (3, 8), (5, 2), (2, 2)])
def test_epoch_batches_count_every_image_once(n: int, bs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batches = epoch_batches(n, bs, gen)
        counted = sorted(i for idx, c in batches for i in idx[:c])
        assert counted == list(range(n))
        for idx, _c in batches:
            assert len(idx) == min(bs, n)
            assert len(set(idx)) == len(idx)


# -- filtering ----------------------------------------------------------------------------------------


def test_counts_add_up_and_rule_holds(records: FilterRecords, samples: list[Sample]) -> None:
    assert [r.path for r in records] == [s.path for s in samples]
    assert records.params == {**PAPER_VOTE, "epochs": EPOCHS, "min_keep": 1, "batch_size": 4, "seed": 7}
    for r in records:
        assert r.times_seen == EPOCHS
        assert 0 <= r.times_kept <= r.times_seen
        assert r.decision == ("normal" if r.times_kept > 1 else "anomalous")
        assert math.isfinite(r.mean_score) and math.isfinite(r.mean_uncertainty)
    assert [r.label for r in records] == [s.label for s in samples]
    # The filter keeps about half a batch (plus recalls): some images are kept, not all every time.
    total = sum(r.times_kept for r in records)
    assert 0 < total < EPOCHS * len(records)


def test_decide_boundary() -> None:
    assert decide(5, 5) == "anomalous"
    assert decide(6, 5) == "normal"
    assert decide(0, 0) == "anomalous"


def test_reproducible_cache_invariant_and_boundary(model, cfg, samples, records: FilterRecords) -> None:
    # Same seed, features recomputed every batch: identical counts; the threshold is set to one image's
    # count, which must then be judged anomalous (kept exactly min_keep times is not "more than").
    target = next(r for r in records if r.times_kept < EPOCHS)
    state = torch.get_rng_state()
    again = filter_dataset(
        model, samples, cfg, progress=False, seed=7, cache_features=False, min_keep=target.times_kept
    )
    assert torch.equal(state, torch.get_rng_state()), "the caller's random state must be left alone"
    assert [r.times_kept for r in again] == [r.times_kept for r in records]
    for a, b in zip(again, records, strict=True):
        assert a.mean_score == pytest.approx(b.mean_score, rel=1e-4, abs=1e-6)
        assert a.mean_uncertainty == pytest.approx(b.mean_uncertainty, rel=1e-4, abs=1e-6)
        assert a.decision == decide(a.times_kept, target.times_kept)
    assert next(r for r in again if r.path == target.path).decision == "anomalous"


def test_batch_larger_than_dataset(model, cfg, samples) -> None:
    big = cfg.copy()
    big.data.batch_size = 64
    with pytest.warns(UserWarning, match="fewer than the batch size"):
        out = filter_dataset(model, samples[:3], big, progress=False, epochs=2, min_keep=0)
    assert [r.times_seen for r in out] == [2, 2, 2]
    assert out.params["batch_size"] == 3


def test_invalid_inputs(model, cfg, samples) -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        filter_dataset(model, samples[:1], cfg, progress=False)
    with pytest.raises(ValueError, match="min_keep"):
        filter_dataset(model, samples, cfg, progress=False, epochs=3, min_keep=3)
    with pytest.raises(ValueError, match="epochs"):
        filter_dataset(model, samples, cfg, progress=False, epochs=0, min_keep=0)
    one = cfg.copy()
    one.data.batch_size = 1
    with pytest.raises(ValueError, match="batch size"):
        filter_dataset(model, samples, one, progress=False)


# -- outputs of a real run ----------------------------------------------------------------------------


def test_write_outputs(tmp_path: Path, records: FilterRecords) -> None:
    csv_path, json_path = write_filter_outputs(records, tmp_path / "out", extra={"run": "r1"})
    text = csv_path.read_text(encoding="utf-8")
    # SPEC §11's six columns, then the suspicion rank and the reason; rows most suspect first.
    assert (
        text.splitlines()[0] == "path,times_seen,times_kept,mean_score,mean_uncertainty,decision,rank,reason"
    )
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == len(records)
    by_path = {r.path: r for r in records}
    assert [int(r["times_kept"]) for r in rows] == [by_path[r["path"]].times_kept for r in rows]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(records) + 1))
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc["params"] == {**PAPER_VOTE, "epochs": EPOCHS, "min_keep": 1, "batch_size": 4, "seed": 7}
    assert (
        doc["run"] == "r1" and doc["n"] == len(records) and doc["noise_rate_before"] == pytest.approx(1 / 6)
    )
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no temp files left"
    with pytest.raises(ValueError, match="summary"):
        write_filter_outputs(records, tmp_path / "out2", extra={"n": 1})


# -- the plan and the tally ---------------------------------------------------------------------------


def test_plan_counts_every_image_once_per_epoch_in_order_and_is_seeded(cfg) -> None:
    plan = DatasetFilter(cfg, epochs=3, min_keep=1, seed=5).plan(10)
    assert [(p.epoch, p.batch) for p in plan] == [(e, j) for e in range(3) for j in range(3)]  # 4 + 4 + 2
    for epoch in range(3):
        counted = sorted(i for p in plan if p.epoch == epoch for i in p.indices[: p.counted])
        assert counted == list(range(10))
    assert all(len(p.indices) == cfg.data.batch_size for p in plan)
    assert plan == DatasetFilter(cfg, epochs=3, min_keep=1, seed=5).plan(10)
    assert plan != DatasetFilter(cfg, epochs=3, min_keep=1, seed=6).plan(10)


def test_settings_of_another_decision_warn_and_a_short_filter_needs_no_kappa2(cfg) -> None:
    est, vote = cfg.copy(), cfg.copy()
    est.dataset_filter.decision = "estimate"  # the default
    est.dataset_filter.min_keep = vote.dataset_filter.min_keep = 5  # the paper's kappa_2
    with pytest.warns(UserWarning, match="min_keep only applies to decision='vote'"):
        DatasetFilter(est, epochs=3, min_keep=1)
    with pytest.warns(UserWarning, match="outlier_k only applies to decision='outlier'"):
        DatasetFilter(cfg, epochs=3, min_keep=1, outlier_k=2.0)
    assert DatasetFilter(est, epochs=2).min_keep == 1  # kappa_2 = 5 clamped below kappa_1
    with pytest.raises(ValueError, match="min_keep"):
        DatasetFilter(vote, epochs=2)  # the vote needs kappa_2 < kappa_1


def test_vote_tally_matches_hand_counts() -> None:
    samples = [Sample("a.png", 0), Sample("b.png", 1), Sample("c.png", -1)]
    tally = VoteTally(3)
    # (epoch, batch, counted ids, keep votes, patch scores, no uncertainty)
    tally.add(BatchVotes(0, 0, np.array([0, 1]), np.array([1, 0]), np.array([0.5, 2.0]), None))
    tally.add(BatchVotes(1, 0, np.array([2, 0]), np.array([1, 1]), np.array([1.0, 1.5]), None))
    tally.add(BatchVotes(1, 1, np.array([1, 2]), np.array([0, 1]), np.array([3.0, 0.0]), None))
    recs = tally.records(samples, min_keep=1)
    assert [(r.path, r.times_seen, r.times_kept, r.decision, r.label) for r in recs] == [
        ("a.png", 2, 2, "normal", 0),
        ("b.png", 2, 0, "anomalous", 1),
        ("c.png", 2, 2, "normal", -1),
    ]
    assert [r.mean_score for r in recs] == [1.0, 2.5, 0.5]
    assert all(math.isnan(r.mean_uncertainty) for r in recs)


# -- per-image MC-dropout bank vs the paper's per-batch passes ------------------------------------------


def test_uncertainty_modes_are_recorded_and_differ_only_in_u(model, cfg, samples, records) -> None:
    assert records.settings == {"uncertainty": "per-batch", "pool": None}  # the paper's, the default
    fast = filter_dataset(model, samples, cfg, progress=False, seed=7, uncertainty="per-image")
    assert fast.settings == {"uncertainty": "per-image", "pool": 4 * cfg.batch_filter.mc_passes}
    assert fast.params == records.params
    for a, b in zip(records, fast, strict=True):
        assert a.times_seen == b.times_seen
        # A is recomputed per batch in both modes from the same batches: the same mean patch score.
        assert a.mean_score == pytest.approx(b.mean_score, rel=1e-5, abs=1e-7)
        assert math.isfinite(b.mean_uncertainty) and b.mean_uncertainty >= 0
    k = cfg.batch_filter.mc_passes
    fixed = filter_dataset(model, samples, cfg, progress=False, seed=7, uncertainty="per-image", pool=k)
    assert fixed.settings["pool"] == cfg.batch_filter.mc_passes
    with pytest.raises(ValueError, match="pool"):
        filter_dataset(model, samples, cfg, progress=False, uncertainty="per-image", pool=1)
    with pytest.raises(ValueError, match="uncertainty"):
        filter_dataset(model, samples, cfg, progress=False, uncertainty="per-epoch")
    with pytest.raises(ValueError, match="no effect"):  # a pool only sizes the per-image bank
        filter_dataset(model, samples, cfg, progress=False, pool=6)


def test_uncertainty_mode_and_pool_come_from_the_config(model, cfg, samples) -> None:
    from ssfilter.filtering.dataset_filter import DatasetFilter

    c = cfg.copy()
    c.dataset_filter.uncertainty, c.dataset_filter.pool = "per-image", 2 * c.batch_filter.mc_passes
    from_cfg = DatasetFilter(c)
    assert (from_cfg.uncertainty, from_cfg.pool) == ("per-image", 2 * c.batch_filter.mc_passes)
    # An argument overrides the config (the CLI's --uncertainty / --pool).
    assert DatasetFilter(c, pool=c.batch_filter.mc_passes).pool == c.batch_filter.mc_passes
    assert DatasetFilter(c, uncertainty="per-batch").uncertainty == "per-batch"  # the config's pool is moot
    c.dataset_filter.pool = 1
    DatasetFilter(c, uncertainty="per-batch")  # ... even when it would be too small for the bank
    with pytest.raises(ValueError, match="pool"):
        DatasetFilter(c)
    c.dataset_filter.uncertainty = "per-epoch"
    with pytest.raises(ValueError, match="uncertainty"):
        DatasetFilter(c)


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """60 good images of a synthetic texture, no defect at all."""
    from ssfilter.data.synthetic import make_synthetic_category

    root = tmp_path_factory.mktemp("clean") / "weave"
    make_synthetic_category(root, kind="texture", n_train_good=60, n_test_good=1, n_test_defect=1, size=SIZE)
    return discover(root, "train")


def test_outlier_decision_keeps_a_clean_folder(model, cfg, clean_folder: list[Sample]) -> None:
    vote = filter_dataset(model, clean_folder, cfg, progress=False, decision="vote")
    cut = filter_dataset(model, clean_folder, cfg, progress=False, decision="outlier")
    kept_vote = np.mean([r.decision == "normal" for r in vote])
    kept_cut = np.mean([r.decision == "normal" for r in cut])
    assert kept_cut >= 0.97
    assert kept_vote < kept_cut  # the per-batch vote always loses the least typical images of a batch
    assert cut.params["decision"] == "outlier" and cut.params["outlier_k"] == 4.0
    assert cut.settings["outlier_cut"]["score"] == "mean A"
    # the same scores, only the decision differs
    assert [r.mean_score for r in cut] == [r.mean_score for r in vote]
    with pytest.raises(ValueError, match="decision must be one of vote, outlier"):
        filter_dataset(model, clean_folder, cfg, progress=False, decision="median")
