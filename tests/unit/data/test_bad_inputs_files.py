"""Bad input files (issue 7, item 1) not covered by test_images.py: links, sizes, paths, empty folders.

Every case has a defined outcome: converted, skipped with a reason (``skipped.csv``) or a clear error that
names the file or folder and the fix -- never a traceback.
"""

from __future__ import annotations

import csv
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssfilter.data.datasets import AnomalyDataset, Sample, discover, folder_samples
from ssfilter.data.images import ImageReadError, read_image, scan_images, validate_images
from ssfilter.data.transforms import build_image_transform
from ssfilter.data.validation import prepare_training_samples
from ssfilter.runfolder import SKIPPED_FILE

needs_symlinks = pytest.mark.skipif(os.name != "posix", reason="needs POSIX symbolic links")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with (almost) no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def _save(path: Path, size: tuple[int, int] = (64, 48), value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def _rows(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(fh)}


# --- symbolic links ---------------------------------------------------------------------------------------


@needs_symlinks
def test_dangling_symlink_is_listed_and_skipped_with_reason(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    assert scan_images(tmp_path) == [tmp_path / "dangling.png", good]
    with pytest.raises(ImageReadError, match="broken symbolic link") as info:
        read_image(tmp_path / "dangling.png")
    assert "gone.png" in info.value.reason
    kept, skipped = validate_images(scan_images(tmp_path))
    assert kept == [good] and [Path(s.path).name for s in skipped] == ["dangling.png"]


@needs_symlinks
def test_self_referencing_image_link_is_skipped_not_followed(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.png")
    os.symlink("loop.png", tmp_path / "loop.png")  # ELOOP
    kept, skipped = validate_images(scan_images(tmp_path))
    assert kept == [good]
    assert [Path(s.path).name for s in skipped] == ["loop.png"] and "symbolic links" in skipped[0].reason


@needs_symlinks
def test_folder_link_loops_terminate_and_list_each_image_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _save(root / "a" / "x.png")
    os.symlink(root, root / "a" / "back_to_root", target_is_directory=True)
    os.symlink(root / "a", root / "a_again", target_is_directory=True)
    found = folder_samples(root)
    assert [Path(s.path).relative_to(root).as_posix() for s in found] == ["a/x.png"]


def test_folder_named_like_an_image_is_searched_not_read(tmp_path: Path) -> None:
    _save(tmp_path / "batch.png" / "inner.png")
    assert [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)] == ["batch.png/inner.png"]


# --- sizes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (3, 200), (10, 10)])
def test_images_smaller_than_the_crop_are_upsampled(tmp_path: Path, size: tuple[int, int]) -> None:
    path = _save(tmp_path / "small.png", size=size)
    with pytest.warns(UserWarning, match="below 32 px"):
        kept, skipped = validate_images([path])
    assert kept == [path] and skipped == []
    tensor = build_image_transform(72, 64)(read_image(path))
    assert tensor.shape == (3, 64, 64) and bool(torch.isfinite(tensor).all())


def test_very_large_image_is_read_and_resized(tmp_path: Path) -> None:
    path = tmp_path / "line_scan.png"
    array = np.tile(np.arange(4000, dtype=np.uint16) % 256, (2500, 1)).astype(np.uint8)
    Image.fromarray(array).save(path)  # 4000 x 2500 = 10 Mpx grayscale
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (4000, 2500)
    assert build_image_transform(64, 64)(image).shape == (3, 64, 64)


def test_image_beyond_the_pixel_limit_is_skipped_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(30000, 30000))  # 900 Mpx claimed, 100 bytes on disk
    kept, skipped = validate_images([path])
    assert kept == [] and len(skipped) == 1
    assert "decompression-bomb" in skipped[0].reason and "MAX_IMAGE_PIXELS" in skipped[0].reason


def test_mixed_sizes_and_modes_batch_together(tmp_path: Path) -> None:
    paths = [
        _save(tmp_path / "wide.png", size=(120, 20)),
        _save(tmp_path / "tall.png", size=(20, 90)),
        _save(tmp_path / "square.png", size=(64, 64)),
    ]
    Image.new("L", (50, 33), 77).save(tmp_path / "gray.png")
    Image.fromarray(np.full((17, 45), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    paths += [tmp_path / "gray.png", tmp_path / "deep.png"]
    dataset = AnomalyDataset([Sample(str(p), -1) for p in paths], build_image_transform(48, 40))
    batch = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert batch.shape == (5, 3, 40, 40) and bool(torch.isfinite(batch).all())


# --- paths ------------------------------------------------------------------------------------------------


def test_non_ascii_and_space_paths_round_trip_into_skipped_csv(tmp_path: Path) -> None:
    folder = tmp_path / "usine données" / "lot 1 – été"
    good = _save(folder / "pièce n°1.png")
    broken = folder / "défaut ½.jpg"
    broken.write_bytes(b"\xff\xd8\xff")  # a JPEG that stops after its first marker
    run = tmp_path / "run é"
    with pytest.warns(UserWarning, match="skipped 1 unreadable training image"):
        kept, skipped = prepare_training_samples(folder, run)
    assert [s.path for s in kept] == [str(good)]
    with (run / SKIPPED_FILE).open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(broken)] and rows[0]["reason"]


# --- empty and all-bad folders ------------------------------------------------------------------------------


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image", encoding="utf-8")
    with pytest.raises(ValueError, match="no images found under .*empty.*extensions"):
        discover(tmp_path / "empty", "train")
    (tmp_path / "mvtec" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no images found under .*train[/\\]good"):
        discover(tmp_path / "mvtec", "train")


def test_folder_of_only_bad_files_is_a_clear_error_and_lists_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"")
    (data / "b.jpg").write_text("text", encoding="utf-8")
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable training images .*: all 2 image file.*skipped.csv"):
            prepare_training_samples(data, run)
    assert set(_rows(run / SKIPPED_FILE)) == {"a.png", "b.jpg"}


def test_every_skipped_file_is_named_in_the_warning(tmp_path: Path) -> None:
    _save(tmp_path / "ok.png")
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"")
    with pytest.warns(UserWarning) as record:
        prepare_training_samples(tmp_path)
    text = " ".join(str(w.message) for w in record)
    assert all(f"bad{i}.png (file is empty (0 bytes))" in text for i in range(3))
