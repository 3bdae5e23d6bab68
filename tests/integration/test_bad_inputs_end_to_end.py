"""A messy factory folder end to end (issue 7, item 6): train, filter (+ export), predict and evaluate.

The folder mixes good images with every bad input of the robustness issue. Every command must finish, leave
the folder unchanged, and list EXACTLY the unreadable files, with a reason, in its ``skipped.csv``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.cli import main
from ssfilter.config import save_config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX symbolic links")

#: Readable files of conftest's ``bad_images_dir``: converted to RGB and used.
CONVERTED = [
    "good.png",
    "gray.png",
    "gray16.png",
    "palette.png",
    "rgba.png",
    "cmyk.jpg",
    "exif_rotated.jpg",
    "tiny.png",
    "défaut café 01.png",
]
#: Unreadable files of ``bad_images_dir``: skipped.
BROKEN = ["empty.png", "truncated.jpg", "not_an_image.jpg"]


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _snapshot(root: Path) -> dict[str, str]:
    """Content hashes of files and targets of links, without following links (the folder has a loop)."""
    out: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _skipped(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["reason"] for r in rows), rows
    return {r["path"]: r["reason"] for r in rows}


def _column(path: Path, name: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [r[name] for r in csv.DictReader(fh)]


@pytest.fixture
def messy(tmp_path: Path, synthetic_mvtec: Path, bad_images_dir: Path) -> tuple[Path, set[str], set[str]]:
    """``(folder, good image paths, bad image paths)``; paths absolute, symlink names kept."""
    data = tmp_path / "données usine" / "lot 1"
    data.mkdir(parents=True)
    good: list[Path] = []
    for src in sorted((synthetic_mvtec / "train" / "good").glob("*.png")):
        good.append(data / src.name)
        shutil.copy(src, good[-1])
    odd = data / "formats variés"
    odd.mkdir()
    for name in CONVERTED:
        shutil.copy(bad_images_dir / name, odd / name)
        good.append(odd / name)
    big = np.tile(np.linspace(0, 255, 1600, dtype=np.uint8), (1200, 1))
    Image.fromarray(big).save(data / "large scan.png")  # 1600 x 1200 grayscale
    good.append(data / "large scan.png")
    (data / "batch.png").mkdir()  # a folder named like an image: searched, not read
    shutil.copy(good[0], data / "batch.png" / "inner.png")
    good.append(data / "batch.png" / "inner.png")

    broken = data / "cassés"
    broken.mkdir()
    bad = [broken / name for name in BROKEN]
    for name in BROKEN:
        shutil.copy(bad_images_dir / name, broken / name)
    (broken / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    os.symlink(broken / "moved_away.png", broken / "dangling.png")
    os.symlink("self.png", broken / "self.png")
    bad += [broken / "bomb.png", broken / "dangling.png", broken / "self.png"]

    os.symlink(data, data / "loop", target_is_directory=True)  # a folder loop: each image listed once
    (data / "notes.txt").write_text("operator notes\n", encoding="utf-8")  # not an image name: ignored
    (data / ".thumb.png").write_bytes(b"")  # hidden: ignored
    return data, {str(p) for p in good}, {str(p) for p in bad}


@pytest.mark.filterwarnings("ignore")  # small images, skipped files: warned about, checked below instead
def test_messy_folder_train_filter_predict_evaluate(
    tmp_path: Path, messy: tuple[Path, set[str], set[str]], synthetic_mvtec: Path, tiny_config, capsys
) -> None:
    data, good, bad = messy
    before = _snapshot(data)
    tiny_config.train.method = "ssfilter"
    tiny_config.train.iters = 4
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_config, cfg)
    run, filtered, clean, predicted = (tmp_path / n for n in ("run", "filtered", "clean", "predicted"))

    # train: the run's skipped.csv lists exactly the bad files
    assert main(["-q", "train", "--data", str(data), "--config", str(cfg), "--out", str(run)]) == 0
    skipped = _skipped(run / "skipped.csv")
    assert set(skipped) == bad
    assert "empty" in skipped[str(data / "cassés" / "empty.png")]
    assert "truncated" in skipped[str(data / "cassés" / "truncated.jpg")]
    assert "decompression-bomb" in skipped[str(data / "cassés" / "bomb.png")]
    assert "broken symbolic link" in skipped[str(data / "cassés" / "dangling.png")]
    assert json.loads((run / "data.json").read_text(encoding="utf-8"))["n_train"] == len(good)

    # filter with clean export: the same skipped list, every good image judged, the folder untouched
    argv = ["-q", "filter", "--run", str(run), "--out", str(filtered), "--epochs", "2", "--min-keep", "0"]
    assert main([*argv, "--export-clean", str(clean), "--device", "cpu"]) == 0
    assert set(_skipped(filtered / "skipped.csv")) == bad
    assert set(_column(filtered / "filter.csv", "path")) == good
    summary = json.loads((filtered / "filter.json").read_text(encoding="utf-8"))
    assert summary["n_skipped"] == len(bad) and summary["n"] == len(good)
    assert len(list((clean / "train" / "good").iterdir())) == summary["n_kept"]

    # predict on the same folder: the same skipped list, one prediction per good image
    capsys.readouterr()
    assert (
        main(["-q", "predict", "--run", str(run), str(data), "--out", str(predicted), "--device", "cpu"]) == 0
    )
    assert set(_skipped(predicted / "skipped.csv")) == bad
    assert set(_column(predicted / "predictions.csv", "path")) == good
    assert f"{len(bad)} skipped" in capsys.readouterr().out

    # evaluate on a test split with a corrupt image, a missing mask and a mis-sized mask
    mvtec = tmp_path / "mvtec"
    shutil.copytree(synthetic_mvtec, mvtec)
    corrupt = sorted((mvtec / "test" / "good").glob("*.png"))[0]
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    masks = sorted((mvtec / "ground_truth").rglob("*_mask.png"))
    masks[0].unlink()
    with Image.open(masks[1]) as m:
        m.resize((m.width * 2, m.height // 2)).save(masks[1])
    out = tmp_path / "metrics.json"
    assert (
        main(
            ["-q", "evaluate", "--run", str(run), "--data", str(mvtec), "--out", str(out), "--device", "cpu"]
        )
        == 0
    )
    payload = json.loads(out.read_text(encoding="utf-8"))
    assert [s["path"] for s in payload["skipped"]] == [str(corrupt)] and payload["n_test"] == 8
    assert all(payload["metrics"][k] is None for k in ("P-AUROC", "P-AP", "P-AUPRO"))  # a mask is missing
    assert all(0.0 <= payload["metrics"][k] <= 1.0 for k in ("I-AUROC", "I-AP", "I-F1max"))

    assert _snapshot(data) == before  # nothing in the input folder was created, changed or removed


@pytest.mark.filterwarnings("ignore")
def test_benchmark_skips_unreadable_images_per_alpha(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    data = tmp_path / "mvtec"
    shutil.copytree(synthetic_mvtec, data)
    bad_train = sorted((data / "train" / "good").glob("*.png"))[0]
    bad_train.write_bytes(b"")
    bad_test = sorted((data / "test" / "good").glob("*.png"))[0]
    bad_test.write_text("not a PNG", encoding="utf-8")
    cfg = tmp_path / "tiny.yaml"
    save_config(tiny_config, cfg)
    out = tmp_path / "bench"
    argv = ["-q", "benchmark", "--data", str(data), "--alphas", "0", "--methods", "patchcore"]
    assert main([*argv, "--config", str(cfg), "--out", str(out)]) == 0
    assert set(_skipped(out / "alpha_0" / "skipped.csv")) == {str(bad_train), str(bad_test)}
    (row,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert row["n_train"] == 7 and 0.0 <= row["metrics"]["I-AUROC"] <= 1.0
