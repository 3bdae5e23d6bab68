"""Interruptions at the worst moment leave every output complete (issue 7, item 3), deterministically.

The subprocess tests (tests/integration/test_interrupt_outputs.py, test_kill_resume.py) hit random moments;
these raise KeyboardInterrupt exactly inside a write.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.data.datasets import discover
from ssfilter.filtering.filter_outputs import FilterRecord, write_filter_outputs
from ssfilter.io import atomic_write_json, atomic_writer
from ssfilter.runfolder import MODEL_FILE, STATE_FILE
from ssfilter.training import trainer as trainer_mod
from ssfilter.training.checkpoint import load_model, load_train_state, read_model_metadata
from ssfilter.training.trainer import Trainer


def test_interrupted_atomic_write_keeps_old_content_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(KeyboardInterrupt), atomic_writer(target, "w", encoding="utf-8") as fh:
        fh.write('{"new": ')
        raise KeyboardInterrupt
    assert target.read_text(encoding="utf-8") == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


class _InterruptingRecords(list[FilterRecord]):
    """A record list whose iteration is interrupted after ``after`` rows (Ctrl-C while writing filter.csv)."""

    def __init__(self, records: list[FilterRecord], after: int) -> None:
        super().__init__(records)
        self.after = after

    def __iter__(self) -> Iterator[FilterRecord]:
        for i, record in enumerate(super().__iter__()):
            if i == self.after:
                raise KeyboardInterrupt
            yield record


def test_interrupted_filter_csv_write_keeps_the_previous_results(tmp_path: Path) -> None:
    old = [FilterRecord(f"/d/{i}.png", 3, 3, 0.1, 0.2, "normal") for i in range(4)]
    csv_path, json_path = write_filter_outputs(old, tmp_path)
    before = (csv_path.read_bytes(), json_path.read_bytes())
    new = [FilterRecord(f"/d/{i}.png", 3, 0, 0.9, 0.9, "anomalous") for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        write_filter_outputs(_InterruptingRecords(new, after=2), tmp_path)
    assert (csv_path.read_bytes(), json_path.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filter.csv", "filter.json"]
    with csv_path.open(encoding="utf-8", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4


def test_kill_between_state_and_model_write_loses_nothing(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint writes the training state, then the model: interrupt between the two, then resume."""
    tiny_config.train.method = "dinomaly"
    tiny_config.train.iters, tiny_config.train.checkpoint_every = 6, 2
    samples = discover(synthetic_mvtec, "train")
    real_save_model = trainer_mod.save_model
    calls = {"n": 0}

    def save_model_then_die(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # state of iteration 4 is on disk, model still at iteration 2
        real_save_model(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_model", save_model_then_die)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny_config, samples, run, progress=False).fit()
    assert int(load_train_state(run / STATE_FILE)["iteration"]) == 4
    assert read_model_metadata(run / MODEL_FILE)["iteration"] == "2"
    load_model(run)  # the deployable model is complete (the older checkpoint)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setattr(trainer_mod, "save_model", real_save_model)
    Trainer(tiny_config, samples, run, progress=False).fit(resume=True)
    ref = tmp_path / "ref"
    Trainer(tiny_config, samples, ref, progress=False).fit()
    resumed, uninterrupted = load_file(str(run / MODEL_FILE)), load_file(str(ref / MODEL_FILE))
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
