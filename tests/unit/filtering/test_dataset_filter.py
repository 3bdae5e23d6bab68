from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from ssfilter.data.datasets import Sample, discover
from ssfilter.filtering.dataset_filter import (
    CSV_FIELDS,
    FilterRecord,
    FilterRecords,
    _epoch_batches,
    _export_name,
    decide,
    export_clean,
    filter_dataset,
    summarize,
    write_filter_outputs,
)
from ssfilter.training.checkpoint import build_model

EPOCHS = 3
SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run much faster single-threaded (no thread oversubscription on busy machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg():
    """The conftest's ``tiny_config`` (64 px), module-scoped so one model serves every test."""
    from ssfilter.config import get_preset

    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop, cfg.data.batch_size, cfg.data.eval_size = SIZE, SIZE, 4, SIZE
    cfg.model.backbone = "tiny_vit"
    cfg.model.decoder_dim = None
    cfg.model.decoder_heads = None
    cfg.train.device = "cpu"
    cfg.batch_filter.cold_start_iters = 3
    cfg.batch_filter.mc_passes = 3
    cfg.dataset_filter.epochs, cfg.dataset_filter.min_keep = EPOCHS, 1
    return cfg


@pytest.fixture(scope="module")
def model(cfg):
    return build_model(cfg, allow_random=True)


@pytest.fixture(scope="module")
def samples(synthetic_mvtec: Path) -> list[Sample]:
    # 5 normal training images + 1 defective test image labelled anomalous: 1 full batch + 2 (padded).
    test = [s for s in discover(synthetic_mvtec, "test") if s.label == 1][:1]
    return discover(synthetic_mvtec, "train")[:5] + test


@pytest.fixture(scope="module")
def records(model, cfg, samples) -> FilterRecords:
    return filter_dataset(model, samples, cfg, progress=False, seed=7)


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- batches ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "bs"), [(10, 4), (8, 4), (3, 8), (5, 2), (2, 2)])
def test_epoch_batches_count_every_image_once(n: int, bs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batches = _epoch_batches(n, bs, gen)
        counted = sorted(i for idx, c in batches for i in idx[:c])
        assert counted == list(range(n))
        for idx, _c in batches:
            assert len(idx) == min(bs, n)
            assert len(set(idx)) == len(idx)


# -- filtering ----------------------------------------------------------------------------------------


def test_counts_add_up_and_rule_holds(records: FilterRecords, samples: list[Sample]) -> None:
    assert [r.path for r in records] == [s.path for s in samples]
    assert records.params == {"epochs": EPOCHS, "min_keep": 1, "batch_size": 4, "seed": 7}
    for r in records:
        assert r.times_seen == EPOCHS
        assert 0 <= r.times_kept <= r.times_seen
        assert r.decision == ("normal" if r.times_kept > 1 else "anomalous")
        assert math.isfinite(r.mean_score) and math.isfinite(r.mean_uncertainty)
    assert [r.label for r in records] == [s.label for s in samples]
    # The filter keeps about half a batch (plus recalls): some images are kept, not all every time.
    total = sum(r.times_kept for r in records)
    assert 0 < total < EPOCHS * len(records)


def test_decide_boundary() -> None:
    assert decide(5, 5) == "anomalous"
    assert decide(6, 5) == "normal"
    assert decide(0, 0) == "anomalous"


def test_reproducible_cache_invariant_and_boundary(model, cfg, samples, records: FilterRecords) -> None:
    # Same seed, features recomputed every batch: identical counts; the threshold is set to one image's
    # count, which must then be judged anomalous (kept exactly min_keep times is not "more than").
    target = next(r for r in records if r.times_kept < EPOCHS)
    state = torch.get_rng_state()
    again = filter_dataset(
        model, samples, cfg, progress=False, seed=7, cache_features=False, min_keep=target.times_kept
    )
    assert torch.equal(state, torch.get_rng_state()), "the caller's random state must be left alone"
    assert [r.times_kept for r in again] == [r.times_kept for r in records]
    for a, b in zip(again, records, strict=True):
        assert a.mean_score == pytest.approx(b.mean_score, rel=1e-4, abs=1e-6)
        assert a.mean_uncertainty == pytest.approx(b.mean_uncertainty, rel=1e-4, abs=1e-6)
        assert a.decision == decide(a.times_kept, target.times_kept)
    assert next(r for r in again if r.path == target.path).decision == "anomalous"


def test_batch_larger_than_dataset(model, cfg, samples) -> None:
    big = cfg.copy()
    big.data.batch_size = 64
    with pytest.warns(UserWarning, match="fewer than the batch size"):
        out = filter_dataset(model, samples[:3], big, progress=False, epochs=2, min_keep=0)
    assert [r.times_seen for r in out] == [2, 2, 2]
    assert out.params["batch_size"] == 3


def test_invalid_inputs(model, cfg, samples) -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        filter_dataset(model, samples[:1], cfg, progress=False)
    with pytest.raises(ValueError, match="min_keep"):
        filter_dataset(model, samples, cfg, progress=False, epochs=3, min_keep=3)
    with pytest.raises(ValueError, match="epochs"):
        filter_dataset(model, samples, cfg, progress=False, epochs=0, min_keep=0)
    one = cfg.copy()
    one.data.batch_size = 1
    with pytest.raises(ValueError, match="batch size"):
        filter_dataset(model, samples, one, progress=False)


# -- summary and outputs ------------------------------------------------------------------------------


def _rec(path: str, kept: bool, label: int = -1) -> FilterRecord:
    return FilterRecord(path, 20, 10 if kept else 2, 0.5, 0.1, "normal" if kept else "anomalous", label)


def test_summary_math() -> None:
    recs = [
        _rec("a", True, 0),
        _rec("b", True, 0),
        _rec("c", True, 0),
        _rec("d", False, 0),
        _rec("e", True, 1),
        _rec("f", False, 1),
        _rec("g", False, 1),
        _rec("h", True, 0),
    ]
    s = summarize(recs)
    assert (s["n"], s["n_kept"], s["n_removed"], s["labels_known"]) == (8, 5, 3, True)
    assert s["noise_rate_before"] == pytest.approx(3 / 8)
    assert s["noise_rate_after"] == pytest.approx(1 / 5)
    assert s["normal_kept"] == pytest.approx(4 / 5)
    assert s["anomalies_removed"] == pytest.approx(2 / 3)


def test_summary_unknown_labels_and_empty_denominators() -> None:
    s = summarize([_rec("a", True), _rec("b", False, 0)])
    assert s["labels_known"] is False and s["noise_rate_before"] is None and s["normal_kept"] is None
    s = summarize([_rec("a", False, 0), _rec("b", False, 0)])
    assert s["noise_rate_before"] == 0.0 and s["normal_kept"] == 0.0
    assert s["noise_rate_after"] is None and s["anomalies_removed"] is None


def test_write_outputs(tmp_path: Path, records: FilterRecords) -> None:
    csv_path, json_path = write_filter_outputs(records, tmp_path / "out", extra={"run": "r1"})
    text = csv_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "path,times_seen,times_kept,mean_score,mean_uncertainty,decision"
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == CSV_FIELDS and len(rows) == len(records)
    assert [int(r["times_kept"]) for r in rows] == [r.times_kept for r in records]
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc["params"] == {"epochs": EPOCHS, "min_keep": 1, "batch_size": 4, "seed": 7}
    assert (
        doc["run"] == "r1" and doc["n"] == len(records) and doc["noise_rate_before"] == pytest.approx(1 / 6)
    )
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "no temp files left"
    with pytest.raises(ValueError, match="summary"):
        write_filter_outputs(records, tmp_path / "out2", extra={"n": 1})


def test_nan_means_written_as_nan(tmp_path: Path) -> None:
    rec = FilterRecord("x.png", 3, 3, math.nan, 0.25, "normal")
    csv_path, _ = write_filter_outputs([rec], tmp_path)
    row = next(csv.DictReader(csv_path.read_text(encoding="utf-8").splitlines()))
    assert math.isnan(float(row["mean_score"])) and float(row["mean_uncertainty"]) == 0.25


# -- export ---------------------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path, synthetic_mvtec: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(synthetic_mvtec, root)
    return root


def _records_for(source: Path) -> list[FilterRecord]:
    train = sorted((source / "train" / "good").glob("*.png"))
    crack = sorted(p for p in (source / "test").rglob("*.png") if p.parent.name != "good")[:2]
    paths = train + crack
    return [
        FilterRecord(str(p), 4, 3 if k % 3 else 0, 0.1, 0.1, "normal" if k % 3 else "anomalous")
        for k, p in enumerate(paths)
    ]


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink", "auto"])
def test_export_clean_layout_and_modes(tmp_path: Path, source: Path, mode: str) -> None:
    recs = _records_for(source)
    before = _tree_hash(source)
    dest = export_clean(recs, tmp_path / "clean", source_root=source, mode=mode)  # type: ignore[arg-type]
    assert _tree_hash(source) == before
    with (dest / "manifest.csv").open(encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    kept = [r for r in recs if r.decision == "normal"]
    assert [m["source"] for m in manifest] == [r.path for r in kept]
    files = sorted(p for p in (dest / "train" / "good").iterdir())
    assert len(files) == len(kept)
    for m in manifest:
        out = dest / m["exported"]
        src = Path(m["source"])
        assert out.parent == dest / "train" / "good"
        assert out.read_bytes() == src.read_bytes()
        if src.parent.name == "good":
            assert out.name == src.name  # train/good/000.png -> dest/train/good/000.png
        else:
            assert out.name == f"test__{src.parent.name}__{src.name}"
        if mode in ("symlink", "auto"):
            assert out.is_symlink() and os.readlink(out) == str(src)
        else:
            assert not out.is_symlink()
        if mode == "hardlink":
            assert out.stat().st_ino == src.stat().st_ino
    removed = {Path(r.path).name for r in recs if r.decision == "anomalous" and "train" in r.path}
    assert removed and not removed & {p.name for p in files}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    # The clean folder is a training set for ssfilter itself.
    assert len(discover(dest, "train")) == len(kept)


def test_export_refuses_non_empty_and_inside_source(tmp_path: Path, source: Path) -> None:
    recs = _records_for(source)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user file", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_clean(recs, busy)
    assert (busy / "keep.txt").read_text(encoding="utf-8") == "user file"
    with pytest.raises(ValueError, match="inside the source folder"):
        export_clean(recs, source / "clean", source_root=source)
    with pytest.raises(ValueError, match="inside the source folder"):
        export_clean(recs, source / "train" / "good" / "clean")
    with pytest.raises(ValueError, match="mode"):
        export_clean(recs, tmp_path / "x", mode="move")  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_clean(recs, empty) == empty.resolve()
    assert (empty / "manifest.csv").is_file()


def test_export_names_are_traversal_safe(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    names = ["a.png", "weird\\name.png", ".hidden.png", "..png"]
    for n in names:
        (root / "sub" / n).write_bytes(n.encode())
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "outside.png").write_bytes(b"outside")
    paths = [str(root / "sub" / n) for n in names]
    paths.append(str(root / "sub" / ".." / ".." / "elsewhere" / "outside.png"))  # escapes the source root
    paths.append(str(root / "sub" / "a.png"))  # same file twice: collision-safe name
    recs = [FilterRecord(p, 1, 1, 0.0, 0.0, "normal") for p in paths]
    dest = export_clean(recs, tmp_path / "clean", source_root=root, mode="copy")
    good = dest / "train" / "good"
    exported = sorted(p.name for p in good.iterdir())
    expected = [
        "sub__a.png",
        "sub__weird_name.png",
        "sub__hidden.png",
        "sub__png",
        "outside.png",
        "sub__a_1.png",
    ]
    assert exported == sorted(expected)
    assert all(".." not in n and "/" not in n and "\\" not in n for n in exported)
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")} == {"data", "elsewhere", "clean"}
    for raw in ["/x/../../etc/passwd", "../../../evil.png", "/a/b/c/..\\..\\x.png"]:
        name = _export_name(raw, "/a/b")
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert (good / name).resolve().parent == good.resolve()


def test_export_removes_staging_folders_of_killed_exports_only(tmp_path: Path, source: Path) -> None:
    """A staging folder whose process is gone is removed; a live process's or another host's is kept."""
    import subprocess
    import sys

    from ssfilter.filtering.dataset_filter import _staging_prefix

    dest = tmp_path / "clean"
    host_prefix = _staging_prefix(dest)  # ".clean.HOST."
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    orphan = tmp_path / f"{host_prefix}{dead_pid}.ab12cd34.partial"
    live = tmp_path / f"{host_prefix}{os.getppid()}.ef56ab78.partial"  # the test runner's parent is alive
    other_host = tmp_path / f".clean.some-other-host.{dead_pid}.0011aabb.partial"
    other_dest = tmp_path / f".cleaner.{host_prefix.split('.', 2)[2]}{dead_pid}.2233ccdd.partial"
    for folder in (orphan, live, other_host, other_dest):
        (folder / "train" / "good").mkdir(parents=True)
        (folder / "train" / "good" / "x.png").write_bytes(b"partial")

    export_clean(_records_for(source), dest, source_root=source, mode="copy")
    assert not orphan.exists()
    assert live.is_dir() and other_host.is_dir() and other_dest.is_dir()
    assert (dest / "manifest.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f"{host_prefix}{os.getpid()}.")]  # renamed
