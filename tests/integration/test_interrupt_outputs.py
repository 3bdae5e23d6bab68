"""Ctrl-C / kill during ``ssfilter filter`` and its clean export; no silent overwrites (issue 7, item 3).

The subprocesses run the real CLI with one function slowed down (a hook installed before ``main``), so the
signal lands deterministically inside the filtering loop or inside the export.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssfilter.cli import main
from ssfilter.config import save_config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")

# Runs ssfilter's CLI after slowing down one stage; touches MARKER when the stage is entered. Ctrl-C is
# re-armed first: a shell without job control starts background jobs with SIGINT ignored, and Python
# keeps an ignored SIGINT ignored, so a test runner launched that way would never see the interrupt.
HOOKED_CLI = r"""
import os, signal, sys, time, pathlib
signal.signal(signal.SIGINT, signal.default_int_handler)
marker, stage = pathlib.Path(sys.argv[1]), sys.argv[2]
if stage == "filter":
    from ssfilter.filtering import batch_filter
    original = batch_filter.BatchFilter.select
    def slow_select(self, *args, **kwargs):
        marker.touch()
        time.sleep(0.2)
        return original(self, *args, **kwargs)
    batch_filter.BatchFilter.select = slow_select
elif stage == "export":
    original_symlink = os.symlink
    def slow_symlink(*args, **kwargs):
        result = original_symlink(*args, **kwargs)
        marker.touch()
        time.sleep(0.5)
        return result
    os.symlink = slow_symlink
from ssfilter.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config
) -> dict[str, Path]:
    """A tiny SSFilter run on a private copy of the synthetic category (conftest's tiny config)."""
    cfg = make_tiny_config()
    cfg.train.iters, cfg.train.warmup_iters, cfg.train.hard_mining_ramp = 2, 1, 2
    cfg.train.method = "ssfilter"
    cfg.batch_filter.cold_start_iters, cfg.batch_filter.mc_passes = 1, 2
    cfg.calibration.after_training = False
    root = tmp_path_factory.mktemp("interrupt")
    data = root / "data"
    shutil.copytree(synthetic_mvtec, data)
    save_config(cfg, root / "tiny.yaml")
    run = root / "run"
    args = ["-q", "train", "--data", str(data), "--config", str(root / "tiny.yaml"), "--out", str(run)]
    assert main(args) == 0
    return {"root": root, "data": data, "run": run, "cfg": root / "tiny.yaml"}


def _filter_args(trained: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["-q", "filter", "--run", str(trained["run"]), "--out", str(out), "--device", "cpu", *extra]


def _run_and_signal(
    tmp_path: Path, stage: str, argv: list[str], sig: int
) -> subprocess.CompletedProcess[str]:
    """Start the hooked CLI, wait until ``stage`` is running, send ``sig``, return the finished process."""
    marker = tmp_path / f"{stage}.started"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOKED_CLI, str(marker), stage, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), f"the {stage} stage never started: {proc.communicate(timeout=60)}"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_while_filtering_keeps_earlier_results_intact(
    tmp_path: Path, trained: dict[str, Path]
) -> None:
    out = tmp_path / "filtered"
    assert main(_filter_args(trained, out, "--epochs", "1", "--min-keep", "0")) == 0
    before, data_before = _tree(out), _tree(trained["data"])
    assert {"filter.csv", "filter.json", "skipped.csv"} <= set(before)

    argv = _filter_args(trained, out, "--epochs", "50", "--min-keep", "1", "--overwrite")
    done = _run_and_signal(tmp_path, "filter", argv, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert "interrupted before the filter finished" in done.stderr
    assert "Traceback" not in done.stderr
    assert _tree(out) == before  # the earlier finished results: byte-identical, no (hidden) temp files
    assert _tree(trained["data"]) == data_before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_export_leaves_no_clean_folder_and_rerun_completes(
    tmp_path: Path, trained: dict[str, Path], sig: int
) -> None:
    out, clean = tmp_path / "filtered", tmp_path / "clean"
    argv = _filter_args(trained, out, "--epochs", "2", "--min-keep", "0", "--export-clean", str(clean))
    data_before = _tree(trained["data"])
    done = _run_and_signal(tmp_path, "export", argv, sig)
    assert done.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), done.stderr
    assert "Traceback" not in done.stderr
    assert not clean.exists()  # never a half-filled clean folder under the requested name
    assert not out.exists()  # nothing of the filter's results was written
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".clean.")]
    if sig == signal.SIGINT:
        assert leftovers == []  # cleaned up on Ctrl-C
    else:
        assert leftovers and all(name.endswith(".partial") for name in leftovers)  # marked incomplete

    assert main(argv) == 0  # running the same command again completes the export
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".clean.")]  # the killed one's removed
    with (out / "filter.csv").open(encoding="utf-8", newline="") as fh:
        kept = {r["path"] for r in csv.DictReader(fh) if r["decision"] == "normal"}
    with (clean / "manifest.csv").open(encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert {m["source"] for m in manifest} == kept
    assert len(list((clean / "train" / "good").iterdir())) == len(kept)
    assert json.loads((out / "filter.json").read_text(encoding="utf-8"))["export_clean"] == str(
        clean.resolve()
    )
    assert _tree(trained["data"]) == data_before


# --- a finished output is never overwritten silently ------------------------------------------------------


def test_filter_refuses_to_overwrite_before_doing_any_work(
    tmp_path: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "filtered"
    assert main(_filter_args(trained, out, "--epochs", "1", "--min-keep", "0")) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(_filter_args(trained, out, "--epochs", "1", "--min-keep", "0")) == 2
    assert "--overwrite" in capsys.readouterr().err and _tree(out) == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("user data", encoding="utf-8")
    other = tmp_path / "other"
    assert (
        main(_filter_args(trained, other, "--epochs", "1", "--min-keep", "0", "--export-clean", str(busy)))
        == 2
    )
    assert "not an empty folder" in capsys.readouterr().err
    # refused up front: nothing was written to --out (not even skipped.csv), the user's folder is untouched
    assert not other.exists() and (busy / "mine.txt").read_text(encoding="utf-8") == "user data"
    assert main(_filter_args(trained, out, "--epochs", "1", "--min-keep", "0", "--overwrite")) == 0


def test_predict_refuses_to_overwrite_earlier_predictions(
    tmp_path: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    image = sorted((trained["data"] / "test" / "good").glob("*.png"))[0]
    out = tmp_path / "pred"
    argv = ["-q", "predict", "--run", str(trained["run"]), str(image), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err and _tree(out) == before
    assert main([*argv, "--overwrite"]) == 0


def test_benchmark_refuses_an_existing_benchmark_folder(
    tmp_path: Path, trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    (out / "alpha_0.1" / "ssfilter").mkdir(parents=True)
    (out / "results.json").write_text('{"rows": []}', encoding="utf-8")
    before = _tree(out)
    argv = ["-q", "benchmark", "--data", str(trained["data"]), "--alphas", "0.1", "--methods", "dinomaly"]
    argv += ["--config", str(trained["cfg"]), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and _tree(out) == before
    assert main([*argv, "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
