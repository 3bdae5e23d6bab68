"""Tests of the clean export of the images the dataset filter kept (clean_export.py)."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from ssfilter.data.datasets import discover
from ssfilter.filtering.clean_export import export_clean, export_name, export_quarantine
from ssfilter.filtering.filter_outputs import FilterRecord


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
        name = export_name(raw, "/a/b")
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert (good / name).resolve().parent == good.resolve()


def test_export_removes_staging_folders_of_killed_exports_only(tmp_path: Path, source: Path) -> None:
    """A staging folder whose process is gone is removed; a live process's or another host's is kept."""
    import subprocess
    import sys

    from ssfilter.filtering.clean_export import staging_prefix

    dest = tmp_path / "clean"
    host_prefix = staging_prefix(dest)  # ".clean.HOST."
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


def test_quarantine_lays_out_suspects_by_rank_and_never_touches_the_input(
    tmp_path: Path, source: Path
) -> None:
    recs = _records_for(source)
    for r in recs:
        r.times_kept = 2 if r.decision == "anomalous" else r.times_kept
    recs[3].times_kept = 0  # anomalous (k % 3 == 0) and the most suspect
    before = _tree_hash(source)
    dest = export_quarantine(recs, tmp_path / "review", source_root=source, mode="copy")
    assert _tree_hash(source) == before, "the input folder must stay byte-identical"
    with (dest / "manifest.csv").open(encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    suspects = [r for r in recs if r.decision == "anomalous"]
    assert len(manifest) == len(suspects) and list(manifest[0]) == [
        "source",
        "exported",
        "rank",
        "times_kept",
        "times_seen",
        "reason",
    ]
    assert manifest[0]["source"] == recs[3].path and manifest[0]["rank"] == "1"
    assert [int(m["rank"]) for m in manifest] == sorted(int(m["rank"]) for m in manifest)
    files = sorted(p.name for p in (dest / "suspects").iterdir())
    assert files == sorted(Path(m["exported"]).name for m in manifest)
    assert files[0].startswith("0001_") and files[0].endswith(Path(recs[3].path).name)
    for m in manifest:
        assert (dest / m["exported"]).read_bytes() == Path(m["source"]).read_bytes()
        assert m["reason"].startswith(f"kept {m['times_kept']} of 4 epochs")
    assert {m["source"] for m in manifest} == {r.path for r in suspects}  # no kept image among them
    with pytest.raises(FileExistsError):
        export_quarantine(recs, dest, source_root=source)
    with pytest.raises(ValueError, match="inside the source"):
        export_quarantine(recs, source / "review", source_root=source)
