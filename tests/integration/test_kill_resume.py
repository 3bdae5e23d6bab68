"""Kill a training process with SIGKILL mid-run, check the checkpoint is always loadable, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.config import save_config
from ssfilter.runfolder import MODEL_FILE, STATE_FILE
from ssfilter.training.checkpoint import load_model, load_train_state

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")


def _train_cmd(data: Path, out: Path, cfg: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ssfilter",
        "-q",
        "train",
        "--data",
        str(data),
        "--config",
        str(cfg),
        "--out",
        str(out),
        *extra,
    ]


def test_sigkill_then_resume_matches_uninterrupted(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    tiny_config.train.method = "dinomaly"
    tiny_config.train.iters = 40
    tiny_config.train.checkpoint_every = 2
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(synthetic_mvtec, run, cfg), env=env)
    seen_iterations: list[int] = []
    deadline = time.monotonic() + 120
    # Poll while it trains: whenever a checkpoint exists it must be complete and loadable.
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / STATE_FILE).is_file() and (run / MODEL_FILE).is_file():
            state = load_train_state(run / STATE_FILE)
            seen_iterations.append(int(state["iteration"]))
            load_model(run)
            if state["iteration"] >= 6:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert seen_iterations, "no checkpoint appeared before the kill"
    killed_at = int(load_train_state(run / STATE_FILE)["iteration"])
    load_model(run)  # the last checkpoint survived the kill intact

    assert subprocess.run(_train_cmd(synthetic_mvtec, run, cfg, "--resume"), env=env).returncode == 0
    ref = tmp_path / "ref"
    assert subprocess.run(_train_cmd(synthetic_mvtec, ref, cfg), env=env).returncode == 0
    a, b = load_file(str(run / MODEL_FILE)), load_file(str(ref / MODEL_FILE))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert killed_at <= 40
