"""Several categories in one command: ``benchmark`` / ``train`` over a data-set root, summary with a mean row.

Roots are small replicas generated on the fly (:func:`make_synthetic_dataset`); models are the tiny test
config (a few iterations of a random tiny ViT at 64 px).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssfilter.cli import main
from ssfilter.config import save_config
from ssfilter.data.synthetic_layouts import make_synthetic_dataset
from ssfilter.pipelines.categories import SUMMARY_JSON, SUMMARY_MD, TRAIN_COLUMNS


@pytest.fixture
def cfg_file(tmp_path: Path, tiny_config) -> Path:
    tiny_config.train.iters = 2
    tiny_config.train.checkpoint_every = 1
    path = tmp_path / "tiny.yaml"
    save_config(tiny_config, path)
    return path


def _summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_JSON).read_text(encoding="utf-8"))


def test_benchmark_over_a_root_writes_one_benchmark_per_category_and_the_mean(
    tmp_path: Path, cfg_file: Path, capsys
) -> None:
    root = make_synthetic_dataset(tmp_path / "mvtec", "mvtec", ("screw", "gear", "nut"), n_train=4)
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(root), "--categories", "gear,screw", "--alphas", "0,0.25"]
    argv = [*args, "--methods", "dinomaly", "--config", str(cfg_file), "--out", str(out)]
    assert main(["-q", *argv]) == 0
    summary = _summary(out)
    assert summary["kind"] == "benchmark" and summary["format"] == "mvtec"
    assert [r["category"] for r in summary["rows"]] == ["gear", "screw"]
    cols = summary["columns"]
    assert cols == [f"dinomaly alpha={a} {k}" for a in ("0", "0.25") for k in ("I-AUROC", "P-AUPRO")]
    for row in summary["rows"]:
        results = json.loads((out / row["category"] / "results.json").read_text())
        assert [r["alpha"] for r in results["rows"]] == [0.0, 0.25]
        first = results["rows"][0]["metrics"]["I-AUROC"]
        assert row["values"]["dinomaly alpha=0 I-AUROC"] == pytest.approx(first)
    for col in cols:
        values = [r["values"][col] for r in summary["rows"]]
        assert summary["mean"][col] == pytest.approx(sum(values) / 2)
    md = (out / SUMMARY_MD).read_text(encoding="utf-8")
    assert "| gear |" in md and "| screw |" in md and "| **mean** |" in md and "nut" not in md
    assert "Data:" not in md  # MVTec AD is cited only for its own categories (gear is not one)
    assert "| **mean** |" in capsys.readouterr().out
    # Finished categories are kept with --resume: nothing is retrained, the summary is the same.
    (out / "gear" / "results.json").unlink()  # would be recomputed if gear were not kept
    assert main(["-q", *argv, "--resume"]) == 0
    again = _summary(out)
    assert again["rows"] == summary["rows"] and not (out / "gear" / "results.json").exists()
    assert main(["-q", *argv]) == 2  # an existing summary needs --resume or --overwrite


def test_train_over_a_visa_root_trains_and_evaluates_each_category(tmp_path: Path, cfg_file: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "VisA", "visa", ("candle", "pcb1"), n_train=4)
    out = tmp_path / "runs"
    argv = ["-q", "train", "--data", str(root), "--config", str(cfg_file), "--out", str(out)]
    assert main([*argv, "--noise", "0.25"]) == 0
    summary = _summary(out)
    assert summary["kind"] == "train" and summary["format"] == "visa"
    assert [r["category"] for r in summary["rows"]] == ["candle", "pcb1"]
    assert summary["columns"] == list(TRAIN_COLUMNS)
    for row in summary["rows"]:
        run = out / row["category"]
        assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()
        split = json.loads((run / "noise_split.json").read_text())
        assert split["meta"]["category"] == row["category"] and split["n_injected"] == 1
        data = json.loads((run / "data.json").read_text())
        assert data["format"] == "visa" and data["data"].endswith(row["category"])
        assert all(v is not None for v in row["values"].values())
        # The run's own evaluate honours its noisy split (the injected image is not in its test set).
        evaluated = tmp_path / f"{row['category']}.json"
        assert main(["-q", "evaluate", "--run", str(run), "--out", str(evaluated), "--device", "cpu"]) == 0
        tested = {i["path"] for i in json.loads(evaluated.read_text())["images"]}
        assert tested.isdisjoint(split["injected"]) and len(tested) == len(split["test"])
    assert "| **mean** |" in (out / SUMMARY_MD).read_text(encoding="utf-8")


def test_train_on_one_realiad_category_with_fuiad_noise(tmp_path: Path, cfg_file: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "Real-IAD", "realiad", ("audiojack",), n_train=2)
    category = root / "realiad_256" / "audiojack"
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(category), "--config", str(cfg_file), "--out", str(run)]
    assert main([*argv, "--noise", "0.4"]) == 0
    listed = json.loads((root / "realiad_jsons_fuiad_0.4" / "audiojack.json").read_text())
    split = json.loads((run / "noise_split.json").read_text())
    assert split["meta"]["protocol"] == "fuiad"
    assert split["train"] == [str(category / e["image_path"]) for e in listed["train"]]
    assert split["meta"]["n_ng_train"] == sum(e["anomaly_class"] != "OK" for e in listed["train"]) == 5
    assert main([*argv[:-2], "--out", str(tmp_path / "r2"), "--noise", "0.3"]) == 2  # no fuiad_0.3 folder


def test_unified_trains_one_model_on_the_union_and_evaluates_each_category(
    tmp_path: Path, cfg_file: Path
) -> None:
    root = make_synthetic_dataset(tmp_path / "mvtec", "mvtec", ("bolt", "gear"), n_train=4)
    out = tmp_path / "uni"
    argv = ["-q", "train", "--data", str(root), "--unified", "--config", str(cfg_file), "--out", str(out)]
    assert main([*argv, "--noise", "0.25"]) == 0
    run = out / "unified"
    assert (run / "model.safetensors").is_file() and not (out / "bolt").exists()
    data = json.loads((run / "data.json").read_text())
    assert data["n_train"] == 2 * (4 + 1) and data["format"] == "mvtec"  # both categories, 1 injected each
    summary = _summary(out)
    assert summary["kind"] == "unified" and [r["category"] for r in summary["rows"]] == ["bolt", "gear"]
    for row in summary["rows"]:
        folder = run / "categories" / row["category"]
        split = json.loads((folder / "noise_split.json").read_text())
        tested = {i["path"] for i in json.loads((folder / "metrics.json").read_text())["images"]}
        assert tested == set(split["test"]) and all(f"/{row['category']}/" in p for p in tested)
        assert all(v is not None for v in row["values"].values())
        assert row["abnormal_recall"] is not None  # the noisy union is labelled: the filter is measured
    assert "abnormal recall (in-batch filter)" in (out / SUMMARY_MD).read_text(encoding="utf-8")
    assert main([*argv[:3], str(root / "bolt"), *argv[4:]]) == 2  # --unified needs a root

    # filter: the run's own training set is the union of the categories' noisy training sets
    filtered = tmp_path / "filtered"
    assert (
        main(["-q", "filter", "--run", str(run), "--out", str(filtered), "--epochs", "2", "--min-keep", "0"])
        == 0
    )
    doc = json.loads((filtered / "filter.json").read_text())
    assert doc["n"] == 10 and doc["labels_known"] and doc["noise_rate_before"] == pytest.approx(0.2)
    # evaluate: one category at a time, on that category's noisy test split; the root alone is refused
    one = tmp_path / "bolt.json"
    assert main(["-q", "evaluate", "--run", str(run), "--data", str(root / "bolt"), "--out", str(one)]) == 0
    split = json.loads((run / "categories" / "bolt" / "noise_split.json").read_text())
    assert {i["path"] for i in json.loads(one.read_text())["images"]} == set(split["test"])
    assert main(["-q", "evaluate", "--run", str(run), "--out", str(tmp_path / "all.json")]) == 2


def test_summary_mean_needs_every_category() -> None:
    from ssfilter.pipelines.categories import summary_markdown

    summary = {
        "kind": "train",
        "format": "visa",
        "data": "/data/VisA",
        "citation": "VisA: Zou et al., ECCV 2022; licence CC BY 4.0",
        "columns": ["I-AUROC", "P-AUPRO"],
        "rows": [
            {"category": "a", "values": {"I-AUROC": 0.9, "P-AUPRO": None}, "abnormal_recall": 0.5},
            {"category": "b", "values": {"I-AUROC": 0.7, "P-AUPRO": 0.6}, "abnormal_recall": None},
        ],
        "mean": {"I-AUROC": 0.8, "P-AUPRO": None},
    }
    md = summary_markdown(summary)
    assert "| category | I-AUROC | P-AUPRO | abnormal recall (in-batch filter) |" in md
    assert "| a | 90.0 | - | 50.0 |" in md and "| b | 70.0 | 60.0 | - |" in md
    assert "| **mean** | 80.0 | - |  |" in md and "Data: VisA: Zou et al." in md
