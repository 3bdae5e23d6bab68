"""DDP under torchrun: 2 CPU processes (gloo) against single-process runs on the tiny config.

What must hold (see the trainer's and the dataset filter's module docstrings):

* ``dinomaly``: the DDP run's weights equal a single-process run's (same global batches; per-rank losses
  scaled so DDP's gradient average is the global mean; global hard-mining threshold; dropout masks keyed by
  the image's position in the global batch);
* ``ssfilter``: each rank's in-batch decisions equal a single-process filter applied to that rank's slice
  (same weights, same random seed); one checkpoint holds every rank's filter state, and a resumed DDP run
  equals an uninterrupted one;
* the sharded dataset filter writes the same ``filter.csv`` as a single process.

Process start-up dominates the cost (torch imports in the agent and both workers), so there are two
launches: the CLI (``-m ssfilter -- train``) for dinomaly, and one script for everything else.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from ssfilter.cli import main as cli_main
from ssfilter.config import Config, save_config
from ssfilter.data.datasets import AnomalyDataset, discover
from ssfilter.data.transforms import build_image_transform
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.io import read_csv_rows
from ssfilter.runfolder import FILTER_LOG_FILE, FILTER_RANKS_LOG_FILE, LOG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.runtime.distributed import shard_bounds
from ssfilter.training.checkpoint import build_model, load_model, load_train_state
from ssfilter.training.plan import BatchPlan, iteration_rng_seed
from ssfilter.training.trainer import Trainer

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="torchrun test on POSIX only"),
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
    ),
]

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str, timeout: float = 300) -> None:
    """Run ``python -m torch.distributed.run --nproc_per_node=2 ARGS`` on the CPU and check it succeeded."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def _prepare(cfg: Config, tmp_path: Path, method: str) -> Path:
    cfg.train.method = method
    cfg.model.random_init = True  # recorded in config.yaml: the CLI rebuilds the same tiny random ViT
    if hasattr(cfg, "calibration"):
        cfg.calibration.after_training = False  # not what these tests are about; saves time
    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    return path


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(str(a / MODEL_FILE)), load_file(str(b / MODEL_FILE))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def test_ddp_dinomaly_equals_single_process(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    cfg_file = _prepare(tiny_config, tmp_path, "dinomaly")
    ddp = tmp_path / "ddp"
    train = ["train", "--data", str(synthetic_mvtec), "--config", str(cfg_file), "--out", str(ddp)]
    _torchrun("-m", "ssfilter", "--", "-q", *train)  # "--": torchrun would take --run etc. as its own
    single = tmp_path / "single"
    Trainer(tiny_config, discover(synthetic_mvtec, "train"), single, progress=False).fit()

    _assert_same_weights(ddp, single, atol=1e-5)
    # ... and the runs did train: the weights moved far more than that tolerance.
    init = {k: v for k, v in build_model(tiny_config).state_dict().items() if not k.startswith("encoder.")}
    trained = load_file(str(ddp / MODEL_FILE))
    assert max(float((trained[k] - v).abs().max()) for k, v in init.items()) > 1e-3
    # The log holds the loss of the global batch, equal to the single process's.
    ddp_rows, single_rows = read_csv_rows(ddp / LOG_FILE), read_csv_rows(single / LOG_FILE)
    assert [int(r["iteration"]) for r in ddp_rows] == list(range(1, 7))
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert int(a["batch"]) == int(b["batch"]) == 4
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)
    state = load_train_state(ddp / STATE_FILE)
    assert state["iteration"] == 6 and state["world_size"] == WORLD
    assert not (ddp / FILTER_RANKS_LOG_FILE).exists()
    assert not list(ddp.glob(".*.tmp")), "rank 0 writes atomically; nothing half-written is left"
    load_model(ddp)


def _driver(tmp_path: Path, cfg_file: Path, data: Path) -> Path:
    """A torchrun script: an uninterrupted run, a run stopped after 4 iterations (weights kept), resumed,
    then the sharded dataset filter with the uninterrupted run (one launch: process start-up is the cost)."""
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import shutil
            from pathlib import Path

            from ssfilter.api import Detector
            from ssfilter.config import load_config
            from ssfilter.runtime import distributed

            cfg, data, tmp = load_config({str(cfg_file)!r}), Path({str(data)!r}), Path({str(tmp_path)!r})
            with distributed.session():
                Detector(cfg).fit(data, tmp / "full", progress=False)
                Detector(cfg).fit(data, tmp / "cut", progress=False, stop_after=4)
                if distributed.is_main_process():
                    shutil.copy(tmp / "cut" / "model.safetensors", tmp / "weights_at_4.safetensors")
                distributed.barrier()
                Detector(cfg).fit(data, tmp / "cut", progress=False, resume=True)
                det = Detector.load(tmp / "full", device="cpu")
                det.filter(out=tmp / "filter_ddp", epochs=3, min_keep=1, progress=False)
            """
        ),
        encoding="utf-8",
    )
    return script


def _rank_filter_rows(
    cfg: Config, data: Path, weights: dict[str, torch.Tensor] | None, iteration: int
) -> list[tuple[list[int], int, float]]:
    """Each rank's decision at ``iteration`` recomputed in one process: (discarded indices, kept, mu1)."""
    model = build_model(cfg)
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    samples = discover(data, "train")
    dataset = AnomalyDataset(
        samples, build_image_transform(cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std)
    )
    batch = BatchPlan(len(samples), cfg.data.batch_size, cfg.train.seed).indices(iteration)
    out = []
    for rank in range(WORLD):
        lo, hi = shard_bounds(len(batch), rank, WORLD)
        part = batch[lo:hi]
        images = torch.stack([dataset[i]["image"] for i in part])
        torch.manual_seed(iteration_rng_seed(cfg.train.seed, iteration, rank))
        sel = BatchFilter(cfg.batch_filter, cfg.restoration, cfg.train.iters).select(
            iteration, model, model.encode(images)
        )
        discarded = sorted(part[j] for j in torch.nonzero(~sel.decision.keep).flatten().tolist())
        out.append((discarded, sel.decision.n_kept, sel.decision.mu1))
    return out


def test_ddp_ssfilter_per_rank_filter_resume_and_sharded_dataset_filter(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    tiny_config.data.batch_size = 8  # 4 images per rank
    tiny_config.batch_filter.tau = 0.5  # low, so that restoration occurs in a short run
    cfg_file = _prepare(tiny_config, tmp_path, "ssfilter")
    _torchrun(str(_driver(tmp_path, cfg_file, synthetic_mvtec)))
    full, cut = tmp_path / "full", tmp_path / "cut"

    # Resume: every rank restarts from the one checkpoint and the result equals the uninterrupted run.
    _assert_same_weights(full, cut, atol=1e-6)
    assert read_csv_rows(full / FILTER_LOG_FILE) == read_csv_rows(cut / FILTER_LOG_FILE)
    assert read_csv_rows(full / FILTER_RANKS_LOG_FILE) == read_csv_rows(cut / FILTER_RANKS_LOG_FILE)
    state = load_train_state(full / STATE_FILE)
    assert state["world_size"] == WORLD and len(state["filter_ranks"]) == WORLD
    generators = [s["generator"] for s in state["filter_ranks"]]
    assert not torch.equal(generators[0], generators[1]), "each rank has its own synthesis stream"
    load_model(full)

    # The run's filter log sums the ranks' rows; each rank filtered its own half of the global batch.
    merged, per_rank = read_csv_rows(full / FILTER_LOG_FILE), read_csv_rows(full / FILTER_RANKS_LOG_FILE)
    assert [int(r["iteration"]) for r in merged] == list(range(1, 7))
    assert len(per_rank) == WORLD * 6
    for row in merged:
        mine = [r for r in per_rank if r["iteration"] == row["iteration"]]
        assert [int(r["rank"]) for r in mine] == [0, 1]
        assert [int(r["batch"]) for r in mine] == [4, 4] and int(row["batch"]) == 8
        for key in ("kept", "recalled", "material", "synthetic", "normals_discarded"):
            assert int(row[key]) == sum(int(r[key]) for r in mine), key
        for r in mine:
            assert 2 <= int(r["kept"]) <= 4, "each rank keeps at least the lower half of its own 4 images"
    assert any(int(r["synthetic"]) > 0 for r in merged), "restoration never ran"

    # Each rank's decisions equal a single-process filter applied to that rank's slice (same weights, seed):
    # iteration 1 with the initial weights (cold phase), iteration 5 with the weights saved at 4 (regular).
    for iteration, weights in ((0, None), (4, load_file(str(tmp_path / "weights_at_4.safetensors")))):
        expected = _rank_filter_rows(tiny_config, synthetic_mvtec, weights, iteration)
        logged = [r for r in per_rank if int(r["iteration"]) == iteration + 1]
        for rank, (discarded, n_kept, mu1) in enumerate(expected):
            row = logged[rank]
            assert sorted(int(i) for i in row["discarded"].split()) == discarded
            assert int(row["kept"]) == n_kept
            if iteration >= tiny_config.batch_filter.cold_start_iters:
                assert row["phase"] == "regular"
                assert float(row["mu1"]) == pytest.approx(mu1, rel=1e-4)

    # The sharded dataset filter (8 images in batches of 8 over 3 epochs: 3 batches, 2 on rank 0, 1 on
    # rank 1) writes exactly what a single process writes.
    args = ["-q", "filter", "--run", str(full), "--out", str(tmp_path / "filter_single")]
    assert cli_main([*args, "--epochs", "3", "--min-keep", "1", "--device", "cpu"]) == 0
    sharded = (tmp_path / "filter_ddp" / "filter.csv").read_text(encoding="utf-8")
    assert sharded == (tmp_path / "filter_single" / "filter.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(sharded.splitlines()))
    assert len(rows) == 8 and all(r["times_seen"] == "3" for r in rows)
    assert 0 < sum(int(r["times_kept"]) for r in rows) < 24
