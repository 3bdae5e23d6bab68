from __future__ import annotations

import csv
import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from safetensors.torch import save_file

from ssfilter.cli import main
from ssfilter.config import save_config
from ssfilter.pipelines.demo import DemoSettings, demo_config, detect_backbone, find_demo_weights, run_demo
from ssfilter.reporting.frame import ASSETS_DIR


def assert_links_exist(report: Path) -> list[str]:
    """Every src/href of the report is relative (or an in-page anchor) and names an existing file."""

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.found += [v or "" for k, v in attrs if k in ("src", "href")]

    parser = Links()
    parser.feed(report.read_text(encoding="utf-8"))
    for link in parser.found:
        if link.startswith("#"):
            continue
        assert not urlparse(link).scheme and not link.startswith("/"), link
        target = (report.parent / unquote(urlparse(link).path)).resolve()
        assert report.parent.resolve() in target.parents and target.is_file(), link
    return parser.found


def test_evaluate_and_filter_reports_from_the_cli(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, capsys
) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_mvtec, data)
    tiny_config.train.iters = 4
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config, cfg)
    run = tmp_path / "run"
    args = ["-q", "train", "--data", str(data), "--config", str(cfg), "--out", str(run)]
    assert main([*args, "--noise", "0.25", "--overlap"]) == 0

    rep = tmp_path / "eval_report"
    metrics = tmp_path / "m.json"
    assert main(["-q", "evaluate", "--run", str(run), "--out", str(metrics), "--report", str(rep)]) == 0
    assert f"report: {rep / 'report.html'}" in capsys.readouterr().out
    links = assert_links_exist(rep / "report.html")
    text = (rep / "report.html").read_text(encoding="utf-8")
    payload = json.loads(metrics.read_text())
    # metric table matches metrics.json (undefined ones as "undefined")
    for key, value in payload["metrics"].items():
        row = re.search(rf"<tr><td>{re.escape(key)}</td><td>(.*?)</td>", text)
        assert row is not None, key
        assert (f"{100 * value:.1f}%" if value is not None else "undefined") in row.group(1)
    tiles = [x for x in links if x.startswith(ASSETS_DIR)]
    n_anom = sum(1 for im in payload["images"] if im["label"] == 1)
    n_norm = payload["n_test"] - n_anom
    assert len(tiles) == min(n_anom, 8) + min(n_norm, 4)  # top + hardest anomalies, highest normals
    assert "curve roc" in text and "curve pro" in text

    out = tmp_path / "filtered"
    code = main(
        ["-q", "filter", "--run", str(run), "--out", str(out), "--epochs", "3", "--min-keep", "1"]
        + ["--device", "cpu"]
    )
    assert code == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    links = assert_links_exist(out / "report.html")
    assert {"filter.csv", "filter.json"} <= set(links)
    with (out / "filter.csv").open() as fh:
        removed = [r["path"] for r in csv.DictReader(fh) if r["decision"] == "anomalous"]
    text = (out / "report.html").read_text(encoding="utf-8")
    listed = re.findall(r'<table class="quarantined-list">.*?</table>', text, re.S)
    names = re.findall(r'<tr><td><span class="name">(.*?)</span>', listed[0]) if listed else []
    assert sorted(html.unescape(n) for n in names) == sorted(removed)
    summary = json.loads((out / "filter.json").read_text())
    assert summary["labels_known"] is True  # the noise split knows the injected images
    assert "anomalies removed" in text and "normal images kept" in text


def test_demo_writes_a_report_showing_the_filter(tmp_path: Path, capsys) -> None:
    settings = DemoSettings(
        size=64,
        n_train_good=8,
        n_train_defect=2,
        n_test_good=2,
        n_test_defect=3,
        iters=3,
        cold_start_iters=1,
        filter_epochs=3,
        filter_min_keep=1,
    )
    summary = run_demo(tmp_path / "demo", progress=False, settings=settings)
    printed = capsys.readouterr().out
    report = tmp_path / "demo" / "report.html"
    assert summary["report"] == str(report) and f"report: {report}" in printed
    assert "RANDOMLY" in printed and summary["random_encoder"] is True  # loud note without weights
    assert_links_exist(report)
    f = summary["filter"]
    assert f["injected_defects"] == 2 and f["normal_images"] == 8
    assert f"caught {f['injected_defects_removed']} of 2 injected defects" in printed
    assert f"kept {f['normal_images_kept']} of 8 normal images" in printed
    text = report.read_text(encoding="utf-8")
    assert f"The filter caught {f['injected_defects_removed']} of 2 hidden defects" in text
    assert f"kept {f['normal_images_kept']} of 8" in text
    assert "Randomly initialised encoder" in text
    for section in ('id="demo"', 'id="filter"', 'id="evaluate"'):
        assert section in text
    tiles = re.findall(r'<figure class="tile thumb quarantined".*?</figure>', text, re.S)
    assert len(tiles) == len(f["quarantined"]) == f["n_removed"]
    for name in f["quarantined"]:
        assert f"{html.escape(name)}</span>" in text
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["filter"] == f


def test_demo_weights_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mobilenet = tmp_path / "mnv2.safetensors"
    save_file({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, str(mobilenet))
    vit = tmp_path / "dino.pth"
    torch.save(
        {"patch_embed.proj.weight": torch.zeros(384, 3, 14, 14), "blocks.0.norm1.weight": torch.zeros(384)},
        vit,
    )
    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(other))
    assert detect_backbone(mobilenet) == "mobilenet_v2"
    assert detect_backbone(vit) == "dinov2_vits14_reg"
    with pytest.raises(ValueError, match="neither"):
        detect_backbone(other)
    with pytest.raises(FileNotFoundError):
        detect_backbone(tmp_path / "missing.pth")

    cfg = demo_config(str(vit))
    assert cfg.model.backbone == "dinov2_vits14_reg" and cfg.data.crop % 14 == 0
    assert cfg.model.random_init is False and cfg.model.weights == str(vit.resolve())
    cfg = demo_config(None)
    assert cfg.model.backbone == "mobilenet_v2" and cfg.model.random_init is True
    assert cfg.batch_filter.uncertainty is False

    monkeypatch.setenv("SSFILTER_DEMO_WEIGHTS", str(mobilenet))
    assert find_demo_weights() == str(mobilenet)
    assert find_demo_weights(vit) == str(vit)  # an explicit file wins
    monkeypatch.delenv("SSFILTER_DEMO_WEIGHTS")
    monkeypatch.setattr(
        "ssfilter.pipelines.demo._HF_DINOV2", ("ssfilter-tests/no-such-repo", "model.safetensors")
    )
    assert find_demo_weights() is None
