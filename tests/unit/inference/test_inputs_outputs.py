"""Expanding the user's inputs (``collect_inputs``) and naming the output files (``output_names``)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ssfilter.inference.inputs import collect_inputs
from ssfilter.inference.outputs import output_names


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)
    return path


def test_collect_inputs_expands_folders_globs_and_drops_duplicates(tmp_path: Path) -> None:
    a = _png(tmp_path / "x" / "a.png")
    b = _png(tmp_path / "x" / "sub" / "b.png")
    c = _png(tmp_path / "y" / "c.png")
    note = tmp_path / "y" / "notes.txt"
    note.write_text("not an image", encoding="utf-8")
    files, missing = collect_inputs(
        [c, tmp_path / "x", str(tmp_path / "y" / "*"), str(tmp_path / "x" / "a.png"), tmp_path / "gone.png"]
        + [str(tmp_path / "z*.png"), note]
    )
    # explicit files first, folders recursively, the glob keeps images only, a and c appear once,
    # an explicit non-image file is kept (reading decides)
    assert files == [c, a, b, note]
    assert [(Path(m.path).name, m.reason) for m in missing] == [
        ("gone.png", "file not found"),
        ("z*.png", "no file matches this pattern"),
    ]


def test_output_names_are_unique_ignoring_case_and_safe() -> None:
    paths = ["a/part.png", "b/part.png", "c/Wide shot.jpg", "d/PART.png", "a/part.jpg", "e/..png"]
    names = output_names(paths)
    assert names == ["a_part", "b_part", "Wide_shot", "d_PART", "a_part_2", "image"]
    assert len({n.lower() for n in names}) == len(names)
