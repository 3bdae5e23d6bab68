from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssfilter.cli import main
from ssfilter.config import save_config
from ssfilter.pipelines.benchmark import parse_methods, results_markdown


def test_parse_methods() -> None:
    assert parse_methods("dinomaly, ssfilter,patchcore+filter") == [
        "dinomaly",
        "ssfilter",
        "patchcore+filter",
    ]
    assert parse_methods("ssfilter+filter") == ["ssfilter+filter"]  # the second pass
    for bad in ("", "resnet", "patchcore+clean", "ssfilter+filter+filter"):
        with pytest.raises(ValueError):
            parse_methods(bad)


def test_benchmark_cli_end_to_end(tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys) -> None:
    tiny_config.train.iters = 3
    tiny_config.dataset_filter.epochs = 3
    tiny_config.dataset_filter.min_keep = 1
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    methods = "dinomaly,ssfilter,patchcore,patchcore+filter"
    args = ["-q", "benchmark", "--data", str(synthetic_mvtec), "--alphas", "0,0.25", "--overlap"]
    assert main([*args, "--methods", methods, "--config", str(cfg), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [(r["method"], r["alpha"]) for r in rows] == [
        (m, a) for a in (0.0, 0.25) for m in methods.split(",")
    ]
    for r in rows:
        assert r["overlap"] is True
        assert set(r["metrics"]) >= {"I-AUROC", "P-AUPRO"}
        if r["method"] == "patchcore+filter":
            f = r["filter"]
            assert set(f) >= {"noise_rate_before", "noise_rate_after", "normal_kept"}
            assert f["noise_rate_before"] == (0.0 if r["alpha"] == 0 else 0.2)
            assert r["n_train"] <= 10
        else:
            assert r["filter"] is None
        # The SSFilter row carries its run's in-batch filter summary, as `ssfilter train` writes it.
        summary = out / f"alpha_{r['alpha']:g}" / "ssfilter" / "filter_summary.json"
        if r["method"] == "ssfilter":
            assert r["in_batch_filter"] == json.loads(summary.read_text())
            assert (r["in_batch_filter"]["abnormal_recall"] is None) == (r["alpha"] == 0)
        else:
            assert r["in_batch_filter"] is None
    md = (out / "results.md").read_text()
    assert "alpha=0.25" in md and "patchcore+filter" in md and "noise rate before" in md
    assert "In-batch filter of the SSFilter run" in md
    assert (out / "alpha_0.25" / "noise_split.json").is_file()
    assert "results in" in capsys.readouterr().out
    # The shared run records its data and split: `ssfilter filter` on it filters the same noisy training set.
    run = out / "alpha_0.25" / "ssfilter"
    assert json.loads((run / "noise_split.json").read_text()) == json.loads(
        (out / "alpha_0.25" / "noise_split.json").read_text()
    )
    fargs = ["-q", "filter", "--run", str(run), "--dry-run"]
    assert main([*fargs, "--epochs", "2", "--min-keep", "0", "--out", str(tmp_path / "f")]) == 0
    n_train = next(r["n_train"] for r in rows if r["method"] == "patchcore" and r["alpha"] == 0.25)
    filtered = json.loads((tmp_path / "f" / "filter.json").read_text())
    assert filtered["n"] == n_train and filtered["noise_rate_before"] == 0.2
    page = (out / "report.html").read_text()
    assert "<td>patchcore+filter</td>" in page and "Dataset-level filter (per alpha)" in page


def test_benchmark_second_pass_trains_a_fresh_ssfilter_run_on_the_kept_images(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    from ssfilter.io import read_csv_rows

    tiny_config.train.iters = 2
    tiny_config.dataset_filter.epochs = 2
    tiny_config.dataset_filter.min_keep = 1  # normal only when kept in both epochs
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    args = ["-q", "benchmark", "--data", str(synthetic_mvtec), "--alphas", "0.25", "--overlap"]
    args += ["--methods", "ssfilter,ssfilter+filter", "--config", str(cfg), "--out", str(out)]
    args += ["--set", "dataset_filter.uncertainty=per-image", "--set", "dataset_filter.decision=vote"]
    assert main(args) == 0
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    alpha = out / "alpha_0.25"
    decisions = [r["decision"] for r in read_csv_rows(alpha / "filter" / "filter.csv")]
    # The filter ran with the config's per-image uncertainty; the vote quarantined at least one image.
    settings = json.loads((alpha / "filter" / "filter.json").read_text())["settings"]
    assert settings["uncertainty"] == "per-image"
    assert 0 < decisions.count("normal") < len(decisions)
    assert rows["ssfilter"]["n_train"] == len(decisions)
    assert rows["ssfilter+filter"]["n_train"] == decisions.count("normal")
    assert rows["ssfilter+filter"]["filter"]["noise_rate_before"] == 0.2
    # A second run of its own, next to the shared first pass.
    assert (alpha / "ssfilter+filter" / "model.safetensors").is_file()
    assert (alpha / "ssfilter" / "model.safetensors").is_file()
    assert rows["ssfilter+filter"]["metrics"]["I-AUROC"] is not None


def test_results_markdown_mean_column() -> None:
    rows = [
        {"method": "a", "alpha": 0.0, "metrics": {"I-AUROC": 0.9, "P-AUPRO": 0.8}, "filter": None},
        {"method": "a", "alpha": 0.1, "metrics": {"I-AUROC": 0.7, "P-AUPRO": None}, "filter": None},
    ]
    md = results_markdown(rows)
    assert "| a | 90.0 / 80.0 | 70.0 / - | 80.0 / - |" in md


def test_benchmark_resume_keeps_finished_rows_and_filter(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    tiny_config.train.iters = 2
    tiny_config.dataset_filter.epochs = 2
    tiny_config.dataset_filter.min_keep = 0
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    args = ["-q", "benchmark", "--data", str(synthetic_mvtec), "--alphas", "0.25", "--overlap"]
    args += ["--methods", "ssfilter,patchcore+filter", "--config", str(cfg), "--out", str(out)]
    assert main(args) == 0
    results = out / "results.json"
    full = json.loads(results.read_text())
    filter_csv = out / "alpha_0.25" / "filter" / "filter.csv"
    filter_mtime = filter_csv.stat().st_mtime_ns
    # Simulate an interruption after the first row: only it is on disk.
    results.write_text(json.dumps({"rows": full["rows"][:1], "seconds": 5.0}))
    assert main([*args, "--resume"]) == 0
    resumed = json.loads(results.read_text())
    assert [r["method"] for r in resumed["rows"]] == ["ssfilter", "patchcore+filter"]
    assert resumed["rows"][0] == full["rows"][0]  # the finished row is kept, not recomputed
    assert resumed["rows"][1]["filter"] == full["rows"][1]["filter"]
    assert filter_csv.stat().st_mtime_ns == filter_mtime  # the finished filter was reused
    assert resumed["seconds"] >= 5.0
    # Everything finished: a further resume recomputes nothing.
    assert main([*args, "--resume"]) == 0
    assert json.loads(results.read_text())["rows"] == resumed["rows"]


def test_method_registry_follows_the_baseline_registry() -> None:
    from ssfilter.baselines.registry import BASELINES, register_baseline
    from ssfilter.pipelines.methods import method_names

    names = method_names()
    assert names[:4] == ["ssfilter", "dinomaly", "patchcore", "softpatch"]
    assert {"dinomaly+filter", "patchcore+filter", "softpatch+filter"} <= set(names)
    assert "ssfilter+filter" in names
    assert parse_methods("softpatch, softpatch+filter") == ["softpatch", "softpatch+filter"]
    register_baseline("newbaseline")(type("NewBaseline", (), {}))
    try:  # a registered baseline is a benchmark method, with and without the filter
        assert parse_methods("newbaseline,newbaseline+filter") == ["newbaseline", "newbaseline+filter"]
    finally:
        BASELINES.pop("newbaseline")
    with pytest.raises(ValueError, match="unknown benchmark method"):
        parse_methods("newbaseline")


def test_benchmark_softpatch(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> None:
    tiny_config.train.iters = 2
    tiny_config.dataset_filter.epochs = 2
    tiny_config.dataset_filter.min_keep = 0
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    methods = "patchcore,softpatch,softpatch+filter"
    args = ["-q", "benchmark", "--data", str(synthetic_mvtec), "--alphas", "0.25", "--overlap"]
    assert main([*args, "--methods", methods, "--config", str(cfg), "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == methods.split(",")
    for r in rows:
        assert r["metrics"]["I-AUROC"] is not None and 0.0 <= r["metrics"]["I-AUROC"] <= 1.0
    assert rows[0]["n_train"] == rows[1]["n_train"] == 10  # 8 good + 2 injected
    assert rows[2]["filter"]["noise_rate_before"] == 0.2 and rows[2]["n_train"] <= 10
    assert "| softpatch+filter |" in (out / "results.md").read_text()
