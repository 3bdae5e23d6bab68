from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ssfilter.cli import main
from ssfilter.config import save_config


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_train_noisy_then_filter_and_export(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_mvtec, data)
    before = _tree_hash(data)
    tiny_config.train.method = "ssfilter"
    tiny_config.data.batch_size = 4
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    run = tmp_path / "run"
    args = ["-q", "train", "--data", str(data), "--config", str(cfg), "--out", str(run)]
    assert main([*args, "--noise", "0.25", "--overlap"]) == 0
    split = json.loads((run / "noise_split.json").read_text())
    assert {"alpha", "overlap", "seed", "injected", "test"} <= set(split)
    assert len(split["injected"]) == 2 and split["overlap"] is True
    summary = json.loads((run / "filter_summary.json").read_text())
    assert summary["anomalies_seen"] is not None

    out = tmp_path / "filtered"
    clean = tmp_path / "clean"
    capsys.readouterr()
    code = main(
        [
            "-q",
            "filter",
            "--run",
            str(run),
            "--out",
            str(out),
            "--epochs",
            "4",
            "--min-keep",
            "1",
            "--decision",
            "vote",
            "--export-clean",
            str(clean),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    with (out / "filter.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:6] == [
        "path",
        "times_seen",
        "times_kept",
        "mean_score",
        "mean_uncertainty",
        "decision",
    ]
    assert list(rows[0])[6:] == ["rank", "reason"]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == 8 + 2  # the run's training set: clean images + injected anomalies
    assert all(int(r["times_seen"]) == 4 for r in rows)
    for r in rows:
        assert r["decision"] == ("normal" if int(r["times_kept"]) > 1 else "anomalous")
    report = json.loads((out / "filter.json").read_text())
    assert report["noise_rate_before"] == 0.2
    kept = [r for r in rows if r["decision"] == "normal"]
    exported = list((clean / "train" / "good").iterdir())
    assert len(exported) == len(kept)
    assert _tree_hash(data) == before, "the input folder must never change"

    # --dry-run: the lists and the report only, even with --export-clean / --quarantine given
    dry, planned_clean, planned_review = tmp_path / "dry", tmp_path / "clean2", tmp_path / "review2"
    base = ["-q", "filter", "--run", str(run), "--epochs", "4", "--device", "cpu"]
    dry_args = ["--out", str(dry), "--export-clean", str(planned_clean), "--quarantine", str(planned_review)]
    assert main([*base, *dry_args, "--dry-run"]) == 0
    assert not planned_clean.exists() and not planned_review.exists()
    written = {p.name for p in dry.iterdir()}
    assert written <= {"filter.csv", "filter.json", "report.html", "report_assets", "skipped.csv"}
    assert {"filter.csv", "filter.json", "report.html"} <= written
    doc = json.loads((dry / "filter.json").read_text())
    assert doc["dry_run"] is True and "export_clean" not in doc and "quarantine" not in doc
    assert doc["params"]["decision"] == "estimate"  # the default, with no --min-keep needed at 4 epochs
    assert doc["export_clean_planned"]["images"] == doc["n_kept"]
    assert doc["quarantine_planned"]["images"] == doc["n_removed"]
    est = doc["contamination"]
    assert est["low"] <= est["estimate"] <= est["high"] and est["true"] == doc["noise_rate_before"]
    assert "estimated share of defective images" in (dry / "report.html").read_text(encoding="utf-8")

    # --quarantine: the suspects, most suspect first, for review
    review = tmp_path / "review"
    strict = [*base, "--decision", "vote", "--min-keep", "3"]  # kept in all 4 epochs: some suspects
    assert main([*strict, "--out", str(tmp_path / "q"), "--quarantine", str(review)]) == 0
    with (tmp_path / "q" / "filter.csv").open() as fh:
        q_rows = list(csv.DictReader(fh))
    suspects = [r for r in q_rows if r["decision"] == "anomalous"]
    with (review / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert [m["source"] for m in manifest] == [str(Path(r["path"]).resolve()) for r in suspects]
    assert [m["reason"] for m in manifest] == [r["reason"] for r in suspects] and all(
        m["reason"] for m in manifest
    )
    assert len(list((review / "suspects").iterdir())) == len(suspects)
    page = (tmp_path / "q" / "report.html").read_text(encoding="utf-8")
    assert page.count('class="heatmap"') == len(suspects) > 0  # each suspect's heat-map beside it
    assert _tree_hash(data) == before, "the input folder must stay byte-identical"

    # --decision outlier: the folder's cut on mean A decides; the lists and the report say so
    cut_args = ["--out", str(tmp_path / "cut"), "--decision", "outlier", "--outlier-k", "1.5", "--dry-run"]
    assert main([*base, *cut_args]) == 0
    doc = json.loads((tmp_path / "cut" / "filter.json").read_text())
    assert doc["params"]["decision"] == "outlier" and doc["params"]["outlier_k"] == 1.5
    cut = doc["settings"]["outlier_cut"]
    with (tmp_path / "cut" / "filter.csv").open() as fh:
        c_rows = list(csv.DictReader(fh))
    for r in c_rows:  # the decision is the cut on the raw mean A
        assert r["decision"] == ("anomalous" if float(r["mean_score"]) > cut["threshold"] else "normal")
    assert all("robust z" in r["reason"] for r in c_rows if r["decision"] == "anomalous")
    assert "robust standard deviations" in (tmp_path / "cut" / "report.html").read_text(encoding="utf-8")

    # --decision estimate: the estimated share of the folder goes, highest mean U first
    assert main([*base, "--out", str(tmp_path / "est"), "--decision", "estimate", "--dry-run"]) == 0
    doc = json.loads((tmp_path / "est" / "filter.json").read_text())
    est_cut, est = doc["settings"]["outlier_cut"], doc["contamination"]
    assert doc["params"]["decision"] == "estimate" and est_cut["score"] == est["score"] == "mean U"
    assert est_cut["share"] == pytest.approx(est["estimate"])
    assert doc["n_removed"] == round(est["estimate"] * doc["n"])
    with (tmp_path / "est" / "filter.csv").open() as fh:
        e_rows = list(csv.DictReader(fh))
    for r in e_rows:
        assert r["decision"] == (
            "anomalous" if float(r["mean_uncertainty"]) > est_cut["threshold"] else "normal"
        )
    assert "estimated share of defective images" in (tmp_path / "est" / "report.html").read_text(
        encoding="utf-8"
    )

    # --uncertainty per-image --pool N: the bank's size reaches the filter and filter.json
    pool_args = ["--out", str(tmp_path / "pool"), "--uncertainty", "per-image", "--pool", "5", "--dry-run"]
    assert main([*base, *pool_args]) == 0
    settings = json.loads((tmp_path / "pool" / "filter.json").read_text())["settings"]
    assert settings["uncertainty"] == "per-image" and settings["pool"] == 5
    assert main([*base, "--out", str(tmp_path / "pool2"), "--pool", "5", "--dry-run"]) != 0  # per-batch
    assert not (tmp_path / "pool2" / "filter.json").exists()

    # the exported folder is itself a valid ssfilter training folder
    assert (
        main(
            [
                "-q",
                "train",
                "--data",
                str(clean),
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "r2"),
                "--iters",
                "2",
                "--method",
                "dinomaly",
            ]
        )
        == 0
    )
