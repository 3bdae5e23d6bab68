"""Property tests of the image loader: any file either becomes an RGB image or an ImageReadError / Skipped.

Never another exception type, never a non-RGB result, never a non-finite tensor after preprocessing.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from ssfilter.data.images import ImageReadError, Skipped, read_image, validate_images
from ssfilter.data.transforms import build_image_transform

CROP = 16
TRANSFORM = build_image_transform(20, CROP)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# (mode, numpy dtype used to fill it, formats that can store the mode)
MODES: list[tuple[str, str, tuple[str, ...]]] = [
    ("RGB", "uint8", ("png", "jpeg", "bmp", "tiff", "webp")),
    ("L", "uint8", ("png", "jpeg", "bmp", "tiff")),
    ("LA", "uint8", ("png", "tiff")),
    ("RGBA", "uint8", ("png", "tiff", "webp")),
    ("P", "uint8", ("png", "bmp", "tiff")),
    ("1", "bool", ("png", "bmp", "tiff")),
    ("CMYK", "uint8", ("jpeg", "tiff")),
    ("I;16", "uint16", ("png", "tiff")),
    ("I", "int32", ("png", "tiff")),
    ("F", "float32", ("tiff",)),
]
SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "tiff": ".tif", "webp": ".webp"}


def _check_outcome(path: Path) -> None:
    """read_image returns RGB or raises ImageReadError; validate_images agrees; the tensor is finite."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. unreadable EXIF: warned, not raised
            image = read_image(path)
    except ImageReadError as exc:
        assert exc.path == str(path) and exc.reason
        good, skipped = validate_images([path], workers=1)
        assert good == [] and len(skipped) == 1
        assert isinstance(skipped[0], Skipped) and skipped[0].path == str(path) and skipped[0].reason
        return
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape == (image.height, image.width, 3)
    tensor = TRANSFORM(image)
    assert tensor.shape == (3, CROP, CROP) and tensor.dtype == torch.float32
    assert bool(torch.isfinite(tensor).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "side below 32 px" notice
        good, skipped = validate_images([path], workers=1)
    assert good == [path] and skipped == []


def _random_image(data: st.DataObject) -> tuple[Image.Image, str]:
    mode, dtype, formats = data.draw(st.sampled_from(MODES), label="mode")
    fmt = data.draw(st.sampled_from(formats), label="format")
    width = data.draw(st.integers(1, 40), label="width")
    height = data.draw(st.integers(1, 40), label="height")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    if mode == "1":
        image = Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    elif mode in ("I;16", "I", "F"):
        if dtype == "float32":
            scale = data.draw(st.sampled_from([1.0, 1000.0, -5.0]), label="scale")
            array = (rng.random((height, width)) * scale).astype(np.float32)
            if data.draw(st.booleans(), label="nan"):
                array[0, 0] = np.nan
        elif dtype == "uint16":
            array = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        else:
            array = rng.integers(-(2**20), 2**20, (height, width)).astype(np.int32)
        image = Image.fromarray(array)
        if mode == "I;16":
            assert image.mode.startswith("I;16")
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(
            "P", palette=Image.Palette.ADAPTIVE
        )
    else:
        bands = len(mode)
        raw = rng.integers(0, 256, (height, width, bands), dtype=np.uint8)
        image = Image.frombytes(mode, (width, height), raw.tobytes())
    return image, fmt


@FUZZ
@given(data=st.data())
def test_random_pil_images_load_as_rgb(data: st.DataObject) -> None:
    image, fmt = _random_image(data)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt.upper())
    except (OSError, ValueError, KeyError):
        assume(False)  # this Pillow build cannot write the combination; nothing to test
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"img{SUFFIX[fmt]}"
        path.write_bytes(buffer.getvalue())
        _check_outcome(path)
        if fmt in ("png", "bmp", "tiff") or image.mode == "RGB" and fmt == "webp":
            # Lossless formats: the file must load (no false rejections of valid images).
            assert read_image(path).size == image.size


@FUZZ
@given(payload=st.binary(min_size=0, max_size=600), suffix=st.sampled_from(sorted(set(SUFFIX.values()))))
def test_random_bytes_never_raise_anything_but_image_read_error(payload: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(payload)
        _check_outcome(path)


def _valid_bytes(fmt: str) -> bytes:
    rng = np.random.default_rng(3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, format=fmt.upper())
    return buffer.getvalue()


VALID = {fmt: _valid_bytes(fmt) for fmt in ("png", "jpeg", "bmp", "tiff", "webp")}


@FUZZ
@given(
    fmt=st.sampled_from(sorted(VALID)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_truncated_and_corrupted_files(fmt: str, cut: float, flips: list[tuple[float, int]]) -> None:
    raw = bytearray(VALID[fmt])
    for where, value in flips:
        raw[min(int(where * len(raw)), len(raw) - 1)] = value
    raw = raw[: max(0, int(cut * len(raw)))] if cut < 1.0 else raw
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"broken{SUFFIX[fmt]}"
        path.write_bytes(bytes(raw))
        _check_outcome(path)


@pytest.mark.parametrize("fmt", sorted(VALID))
def test_untouched_valid_files_load(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"ok{SUFFIX[fmt]}"
    path.write_bytes(VALID[fmt])
    assert read_image(path).size == (24, 24)
