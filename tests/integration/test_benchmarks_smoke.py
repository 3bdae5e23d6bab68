"""Smoke tests of the benchmark suite: ``python -m benchmarks --quick`` and ``gpu_check.sh --smoke``.

They check that every section runs and reports a number or ``n/a (reason)``, not the numbers themselves
(those depend on the machine). Both run with one torch thread: on a shared 2-core CI machine, two threads
per process spend most of their time waiting for each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {"patch scoring", "uncertainty", "training", "inference", "dataset filter", "scaling"}
RATIO = re.compile(r"^(\d+\.\d\dx|n/a \(.+\))$")

pytestmark = pytest.mark.slow


def _table_rows(text: str) -> list[list[str]]:
    """Cells of the Markdown table's body rows (escaped ``\\|`` stays inside a cell)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows.append(cells)
    return rows[1:]  # drop the header row


def test_quick_benchmarks_print_one_table_with_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--threads", "1"]
    cmd += ["--out", str(out)]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _table_rows(proc.stdout)
    assert {r[0] for r in rows} == SECTIONS
    # patch scoring 2 cases x (time, memory); uncertainty 3; training 1; inference 2 presets x 3
    # (torch.compile, ONNX Runtime, OpenVINO); dataset filter 2 (cached features; MC passes per image vs
    # per batch); scaling 2
    assert len(rows) == 18, proc.stdout
    for r in rows:
        assert len(r) == 8, r
        assert RATIO.match(r[4]), r
    first_of_section = {r[0]: r for r in reversed(rows)}
    # the cached-features row (the section's first) must not change a decision
    assert "decisions EQUAL" in first_of_section["dataset filter"][7]
    for r in rows:
        if r[0] == "inference":
            assert re.search(r"eager: [\d.]+ img/s", r[3]), r  # eager is always measured
    md = out.read_text(encoding="utf-8")
    assert md == proc.stdout
    for key in ("**date:**", "**machine:**", "**torch:**", "**clock:**"):
        assert key in md


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_smoke_runs_on_cpu_and_prints_fps(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^TRAIN paper-448-392 ssfilter: 2 iterations", proc.stdout, re.M), proc.stdout
    fps = [line for line in proc.stdout.splitlines() if line.startswith("FPS ")]
    assert len(fps) == 2, proc.stdout
    assert fps[0].startswith("FPS paper-256-224") and "638 FPS" in fps[0]
    assert fps[1].startswith("FPS paper-448-392") and "202 FPS" in fps[1]
    for line in fps:
        assert re.search(r": [\d.]+ images/s", line), line
    assert not list(tmp_path.glob("ssfilter_gpu_check.*")), "the work folder is removed"


def test_folder_decision_benchmark_measures_the_cut(synthetic_mvtec: Path, capsys) -> None:
    import json

    from benchmarks.bench_folder_decision import main as bench_main

    assert bench_main(["--data", str(synthetic_mvtec), "--noise", "0.5", "--ks", "2,4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 8 + 3 and out["truth"] == 3 / 11  # 0.5 * 8 = 4 asked, capped at half of 6
    for k in ("k2", "k4"):
        assert 0.0 <= out[k]["removed"] <= 1.0 and 0.0 <= out[k]["kept"] <= 1.0
    assert out["k2"]["share"] >= out["k4"]["share"]  # a lower cut never quarantines fewer images
    assert 0.0 <= out["auroc_mean_a"] <= 1.0


def test_map_upsampling_switch_changes_only_inside_the_block() -> None:
    import torch

    from benchmarks.bench_map_upsampling import align_corners
    from ssfilter.models.anomaly_map import anomaly_map

    torch.manual_seed(0)
    enc, dec = [torch.randn(1, 4, 3, 3)], [torch.randn(1, 4, 3, 3)]
    before = anomaly_map(enc, dec, 8)
    with align_corners():
        inside = anomaly_map(enc, dec, 8)
    after = anomaly_map(enc, dec, 8)
    assert torch.equal(before, after) and not torch.allclose(before, inside)
    # align_corners=True puts the grid's corner values exactly on the map's corners
    grid = anomaly_map(enc, dec, 3)
    assert torch.allclose(inside[0, 0, 0, 0], grid[0, 0, 0, 0]) and torch.allclose(
        inside[0, 0, -1, -1], grid[0, 0, -1, -1]
    )


def test_tiling_benchmark_counts_tiles_and_times_them(tmp_path: Path, capsys) -> None:
    import json

    import numpy as np
    from PIL import Image

    from benchmarks.bench_tiling import main as bench_main

    for i in range(2):
        Image.fromarray(np.full((64, 160, 3), 90 + i, np.uint8)).save(tmp_path / f"{i}.png")
    args = ["--data", str(tmp_path), "--scales", "1.0", "0.01", "--images", "2", "--repeats", "1"]
    assert bench_main([*args, "--crop", "64"]) == 0
    out = json.loads(capsys.readouterr().out)["variants"]
    assert out["whole"]["tiles"] == 1 and out["whole"]["size"] == [64, 64]
    assert out["tiles@1"]["tiles"] == 3 and out["tiles@1"]["size"] == [160, 64]
    assert out["tiles@0.01"]["size"] == [160, 64]  # the short side is already one tile
    assert out["tiles@1"]["seconds_per_image"] > 0 and out["tiles@1"]["ratio_to_whole"] > 0


def test_material_choices_benchmark_compares_regions_and_foregrounds(
    synthetic_mvtec: Path, tmp_path: Path, tiny_config, capsys
) -> None:
    import json

    from benchmarks.bench_material_choices import main as bench_main
    from ssfilter.api import Detector

    tiny_config.train.method, tiny_config.train.iters = "dinomaly", 2
    tiny_config.calibration.after_training = False
    Detector(tiny_config).fit(synthetic_mvtec, tmp_path / "run", progress=False, noise=0.5, overlap=True)
    assert bench_main(["--run", str(tmp_path / "run")]) == 0
    out = json.loads(capsys.readouterr().out)
    regions, fg = out["regions"], out["foreground"]
    assert regions["n"] == 3 and fg["n"] == 8  # 3 injected defects (half of 6), 8 good training images
    assert 0.0 < regions["iou"] <= 1.0 and 0.0 <= regions["identical"] <= 1.0
    assert regions["area_8"] >= regions["area_4"] > 0  # a 4-connected region lies inside the 8-connected one
    assert 0.0 <= regions["purity_8"] <= 1.0 and 0.0 <= regions["purity_4"] <= 1.0
    assert 0.0 <= fg["iou"] <= 1.0 and 0.0 <= fg["whole_image_group0"] <= 1.0


def _last_document(text: str) -> dict:
    """The last of the JSON documents ``bench_filter`` printed (it prints the result after every pool)."""
    import json

    return json.loads(text[text.rindex('{\n "run"') :])


def test_filter_benchmark_compares_per_image_with_a_written_paper_run(
    synthetic_mvtec: Path, tmp_path: Path, tiny_config, capsys
) -> None:

    from benchmarks.bench_filter import main as bench_main
    from ssfilter.api import Detector
    from ssfilter.cli import main as cli_main
    from ssfilter.io import read_csv_rows

    tiny_config.train.iters, tiny_config.train.seed = 2, 0
    tiny_config.calibration.after_training = False
    run = tmp_path / "run"
    Detector(tiny_config).fit(synthetic_mvtec, run, progress=False, noise=0.5, overlap=True)
    # The paper protocol's decisions, written by the CLI (same images, same seed as the benchmark's).
    paper = tmp_path / "paper"
    assert cli_main(["filter", "--run", str(run), "--out", str(paper), "--epochs", "3", "--min-keep", "0",
                     "--decision", "vote", "--dry-run", "-q"]) == 0  # fmt: skip
    common = ["--run", str(run), "--epochs", "3", "--min-keep", "0", "--pools", "3"]
    assert bench_main(common) == 0
    ran = _last_document(capsys.readouterr().out)
    assert ran["per_batch"]["seconds"] > 0 and ran["per_image_pool3"]["speedup"] > 0
    # Read from the CSV instead (the split given explicitly, as for a benchmark's run folder).
    args = [*common, "--data", str(synthetic_mvtec), "--split", str(run / "noise_split.json")]
    assert bench_main([*args, "--paper-csv", str(paper / "filter.csv")]) == 0
    read = _last_document(capsys.readouterr().out)
    assert read["per_batch"]["seconds"] is None and read["per_image_pool3"]["speedup"] is None
    removed = sum(row["decision"] == "anomalous" for row in read_csv_rows(paper / "filter.csv"))
    assert read["per_image_pool3"]["agreement"]["removed_a"] == removed
    # The CLI's run and the benchmark's own paper run are the same computation.
    assert read["per_image_pool3"]["agreement"] == ran["per_image_pool3"]["agreement"]


def test_filter_bounds_read_the_best_cut_of_each_score(tmp_path: Path, capsys) -> None:
    import json

    import numpy as np

    from benchmarks.filter_bounds import best_recall
    from benchmarks.filter_bounds import main as bounds_main
    from ssfilter.data.noise import NoiseSplit

    # 10 good images scored 0..9, 4 defects scored 3.5, 8.5, 20, 30: keeping 90% of the good images cuts
    # above 8 (two defects above it), keeping 100% cuts above 9 (still two).
    good, bad = np.arange(10.0), np.array([3.5, 8.5, 20.0, 30.0])
    scores, labels = np.concatenate([good, bad]), np.array([0] * 10 + [1] * 4)
    assert best_recall(scores, labels, 0.9) == 0.75 and best_recall(scores, labels, 1.0) == 0.5
    assert best_recall(scores, labels, 0.5) == 0.75  # the cut above 4 leaves 3.5 below it
    paths = [tmp_path / f"{i}.png" for i in range(14)]
    lines = ["path,times_seen,times_kept,mean_score,mean_uncertainty,decision,rank,reason"]
    lines += [
        f"{p},20,{20 - int(s) // 2},{s},nan,normal,{i + 1},"
        for i, (p, s) in enumerate(zip(paths, scores, strict=True))
    ]
    (tmp_path / "filter.csv").write_text("\n".join(lines) + "\n")
    NoiseSplit(alpha=0.4, overlap=True, seed=0, injected=[str(p) for p in paths[10:]], test=[]).save(
        tmp_path / "s.json"
    )
    args = ["--csv", str(tmp_path / "filter.csv"), "--split", str(tmp_path / "s.json"), "--kept", "0.9"]
    assert bounds_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["injected"] == 4 and set(out["scores"]) == {"mean A", "keep count"}  # U is NaN: left out
    assert out["scores"]["mean A"]["recall_at_90_kept"] == 0.75
    assert 0.5 < out["scores"]["mean A"]["auroc"] < 1.0


def test_filter_bounds_folder_cuts_remove_far_outliers_and_keep_the_bulk(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.filter_bounds import folder_cuts

    rng = np.random.default_rng(0)
    # 60 good images: log-normal A and U; 5 defects: A far above the bulk, U inside it.
    a = np.concatenate([np.exp(rng.normal(0.0, 0.1, 60)), np.full(5, np.exp(2.0))])
    u = np.exp(rng.normal(0.0, 0.1, 65))
    rows = [
        {"path": str(tmp_path / f"{i}.png"), "mean_score": str(x), "mean_uncertainty": str(y)}
        for i, (x, y) in enumerate(zip(a, u, strict=True))
    ]
    injected = {(tmp_path / f"{i}.png").resolve().as_posix() for i in range(60, 65)}
    cuts = folder_cuts(rows, injected, [4.0])
    assert cuts["mean A"]["k=4"] == {"removed": 1.0, "kept": 1.0}
    assert cuts["mean U"]["k=4"]["removed"] == 0.0
    assert cuts["mean A or mean U"]["k=4"]["removed"] == 1.0
    assert cuts["mean A or mean U"]["k=4"]["kept"] <= cuts["mean U"]["k=4"]["kept"]


def test_filter_bounds_decisions_compare_the_recorded_and_the_estimate_decision(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.filter_bounds import decisions

    rng = np.random.default_rng(1)
    # 90 good images, 10 defects with U in a second mode far above; the recorded decision cut 3 good ones.
    u = np.concatenate([np.exp(rng.normal(0.0, 0.1, 90)), np.exp(rng.normal(1.5, 0.1, 10))])
    rows = [
        {
            "path": str(tmp_path / f"{i}.png"),
            "times_seen": "20",
            "times_kept": "10",
            "mean_score": "nan",
            "mean_uncertainty": str(x),
            "decision": "anomalous" if i < 3 or i >= 90 else "normal",
        }
        for i, x in enumerate(u)
    ]
    injected = {(tmp_path / f"{i}.png").resolve().as_posix() for i in range(90, 100)}
    out = decisions(rows, injected)
    assert out["recorded"] == {"removed": 1.0, "kept": 87 / 90}
    assert out["estimate"]["removed"] == 1.0 and out["estimate"]["kept"] >= 0.97
    assert out["contamination"]["true"] == 0.1 and abs(out["contamination"]["estimate"] - 0.1) <= 0.02


def test_folder_knn_probe_scores_every_image_against_other_images(synthetic_mvtec: Path, capsys) -> None:
    import json

    import torch

    from benchmarks.bench_folder_knn import folder_scores
    from benchmarks.bench_folder_knn import main as bench_main

    torch.manual_seed(0)
    # An image whose patches all differ from the others' scores highest; its own copy is never a match.
    desc = torch.randn(1, 4, 8).repeat(6, 1, 1) + 0.01 * torch.randn(6, 4, 8)
    desc[2] = torch.randn(4, 8)
    scores = folder_scores(desc, references=3)
    for k, v in scores.items():
        assert v.shape == (6,) and int(v.argmax()) == 2, k
    argv = ["--data", str(synthetic_mvtec), "--noise", "0.5", "--references", "4", "--crop", "56"]
    assert bench_main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 8 + 3 and out["references"] == 4
    for k in ("k1", "k3"):
        assert 0.0 <= out[k]["auroc"] <= 1.0 and 0.0 <= out[k]["removed_at_93_kept"] <= 1.0
