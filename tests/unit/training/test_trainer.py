from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.data.datasets import discover
from ssfilter.io import read_csv_rows
from ssfilter.runfolder import LOG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.training.checkpoint import load_model, read_model_metadata
from ssfilter.training.plan import BatchPlan
from ssfilter.training.trainer import Trainer


def test_batch_plan_is_deterministic_and_drop_last() -> None:
    plan = BatchPlan(10, 4, seed=3)
    assert plan.per_epoch == 2
    batches = [plan.indices(i) for i in range(6)]
    assert all(len(b) == 4 for b in batches)
    assert set(batches[0]).isdisjoint(batches[1])
    again = BatchPlan(10, 4, seed=3)
    assert [again.indices(i) for i in reversed(range(6))] == list(reversed(batches))
    assert (
        BatchPlan(10, 4, seed=4).indices(0) != batches[0] or BatchPlan(10, 4, seed=4).indices(1) != batches[1]
    )


def test_batch_plan_small_dataset_warns() -> None:
    with pytest.warns(UserWarning, match="fewer than the batch size"):
        plan = BatchPlan(3, 8, seed=0)
    assert sorted(plan.indices(0)) == [0, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        BatchPlan(0, 8, seed=0)


def test_training_writes_run_folder(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    samples = discover(synthetic_mvtec, "train")
    result = Trainer(tiny_config, samples, tmp_path / "run", progress=False).fit()
    run = tmp_path / "run"
    assert result.iterations == 6
    for name in (MODEL_FILE, STATE_FILE, LOG_FILE, "config.yaml"):
        assert (run / name).is_file()
    rows = read_csv_rows(run / LOG_FILE)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 7))
    assert float(rows[0]["lr"]) == 0.0 and float(rows[1]["lr"]) > 0
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert read_model_metadata(run / MODEL_FILE)["iteration"] == "6"
    model = load_model(run)
    assert not model.training
    assert not list(run.glob(".*.tmp")), "no temporary files may be left behind"


def test_loss_decreases_on_tiny_model(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    tiny_config.train.iters = 30
    tiny_config.train.checkpoint_every = 30
    Trainer(tiny_config, discover(synthetic_mvtec, "train"), tmp_path / "run", progress=False).fit()
    losses = [float(r["loss"]) for r in read_csv_rows(tmp_path / "run" / LOG_FILE)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_resume_gives_identical_weights(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    samples = discover(synthetic_mvtec, "train")
    Trainer(tiny_config, samples, tmp_path / "full", progress=False).fit()

    # interrupted after iteration 3: the last checkpoint is iteration 2, iteration 3 is lost
    Trainer(tiny_config, samples, tmp_path / "cut", progress=False, stop_after=3).fit()
    assert read_model_metadata(tmp_path / "cut" / MODEL_FILE)["iteration"] == "2"
    Trainer(tiny_config, samples, tmp_path / "cut", progress=False).fit(resume=True)

    a = load_file(str(tmp_path / "full" / MODEL_FILE))
    b = load_file(str(tmp_path / "cut" / MODEL_FILE))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    rows = read_csv_rows(tmp_path / "cut" / LOG_FILE)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 7)), (
        "log rows after the checkpoint are replaced"
    )


def test_resume_with_a_changed_model_is_a_run_format_error(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    from ssfilter.errors import RunFormatError

    samples = discover(synthetic_mvtec, "train")
    tiny_config.train.iters = 4
    tiny_config.train.checkpoint_every = 2
    Trainer(tiny_config, samples, tmp_path / "run", progress=False, stop_after=2).fit()
    assert (tmp_path / "run" / STATE_FILE).is_file()
    changed = tiny_config.copy()
    changed.model.decoder_dim = 2 * (tiny_config.model.decoder_dim or 32)
    with pytest.raises(RunFormatError, match="does not match this model"):
        Trainer(changed, samples, tmp_path / "run", progress=False).fit(resume=True)


def test_training_follows_schedule_fractions_and_warns_about_unreachable_phases(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    import yaml

    from ssfilter.runfolder import CONFIG_FILE

    cfg = tiny_config
    cfg.train.iters = 4
    cfg.train.warmup_iters = cfg.train.hard_mining_ramp = cfg.batch_filter.cold_start_iters = None
    cfg.train.warmup_fraction, cfg.train.hard_mining_ramp_fraction = 0.5, 1.0
    cfg.batch_filter.cold_start_fraction = 1.0  # the whole run in cold start: uncertainty never used
    samples = discover(synthetic_mvtec, "train")
    trainer = Trainer(cfg, samples, tmp_path / "run", progress=False)
    assert (trainer.cfg.train.warmup_iters, trainer.cfg.batch_filter.cold_start_iters) == (2, 4)
    with pytest.warns(UserWarning, match="regular phase .* is never reached"):
        trainer.fit()
    lrs = [float(r["lr"]) for r in read_csv_rows(tmp_path / "run" / LOG_FILE)]
    assert lrs[0] == 0.0 and 0.0 < lrs[1] < lrs[2]  # linear warm-up over the first 2 of 4 iterations
    saved = yaml.safe_load((tmp_path / "run" / CONFIG_FILE).read_text())
    assert saved["train"]["warmup_iters"] is None and saved["train"]["warmup_fraction"] == 0.5
    phases = {r["phase"] for r in read_csv_rows(tmp_path / "run" / "filter_log.csv")}
    assert phases == {"cold"}
