from __future__ import annotations

import csv
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssfilter.data import images as images_mod
from ssfilter.data.images import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    Skipped,
    image_size,
    read_image,
    read_mask,
    scan_images,
    validate_images,
    write_skipped_csv,
)

BROKEN = {"empty.png": "empty", "truncated.jpg": "truncated", "not_an_image.jpg": "not a recognised image"}
READABLE = [
    "cmyk.jpg",
    "défaut café 01.png",
    "exif_rotated.jpg",
    "good.png",
    "gray.png",
    "gray16.png",
    "palette.png",
    "rgba.png",
    "tiny.png",
]


def _rgb(path: Path) -> np.ndarray:
    image = read_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


# --- read_image: formats and modes --------------------------------------------------------------------------


def test_extensions_cover_common_formats() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == set(IMAGE_EXTENSIONS)


def test_good_png_is_rgb_and_detached(bad_images_dir: Path) -> None:
    image = read_image(bad_images_dir / "good.png")
    assert image.mode == "RGB" and image.size == (48, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(bad_images_dir / "good.png")))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_image_read_error(bad_images_dir: Path, name: str) -> None:
    path = bad_images_dir / name
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert info.value.path == str(path)
    assert BROKEN[name] in info.value.reason
    assert str(path) in str(info.value) and "skipped.csv" in str(info.value)


def test_missing_file_and_directory_raise_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_image_read_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ImageReadError("a/b.png", "file is empty (0 bytes)")))
    assert (
        isinstance(err, ImageReadError) and err.path == "a/b.png" and err.reason == "file is empty (0 bytes)"
    )


def test_grayscale_is_replicated(bad_images_dir: Path) -> None:
    rgb = _rgb(bad_images_dir / "gray.png")
    gray = np.asarray(Image.open(bad_images_dir / "gray.png"))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)


def test_sixteen_bit_png_scaled_by_full_range(bad_images_dir: Path) -> None:
    assert Image.open(bad_images_dir / "gray16.png").mode.startswith("I")
    rgb = _rgb(bad_images_dir / "gray16.png")
    np.testing.assert_array_equal(rgb[..., 0], [[0, 1, 128, 255]])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 65535), min_size=1, max_size=32))
def test_sixteen_bit_scaling_rounds_to_nearest(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint16)
    out = images_mod._scale_to_uint8(array, "I;16")
    expected = np.floor(array.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_big_endian_sixteen_bit(tmp_path: Path) -> None:
    image = Image.frombytes("I;16B", (3, 1), np.array([0, 32768, 65535], dtype=">u2").tobytes())
    image.save(tmp_path / "be.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "be.tif")[0, :, 1], [0, 128, 255])


def test_thirty_two_bit_int_within_16_bit_range_scaled_like_16_bit(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(_rgb(tmp_path / "i.tif")[0, :, 0], [0, 128, 255])


def test_thirty_two_bit_int_outside_16_bit_range_stretched(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32)).save(tmp_path / "i.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "i.tif")[0, :, 0], [0, 128, 255])


def test_float_images(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "unit.tif")[0, :, 0], [0, 128, 255])
    Image.fromarray(np.array([[10.0, 20.0, 30.0]], dtype=np.float32)).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(_rgb(tmp_path / "wide.tif")[0, :, 0], [0, 128, 255])
    Image.fromarray(np.full((2, 2), 7.0, dtype=np.float32)).save(tmp_path / "flat.tif")
    assert _rgb(tmp_path / "flat.tif").max() == 0


def test_palette_maps_to_palette_colours(bad_images_dir: Path) -> None:
    rgb = _rgb(bad_images_dir / "palette.png")
    assert tuple(rgb[0, 0]) == (200, 30, 40)
    assert tuple(rgb[0, 15]) == (10, 220, 90)


def test_rgba_drops_alpha_keeping_colour(bad_images_dir: Path) -> None:
    rgb = _rgb(bad_images_dir / "rgba.png")
    assert tuple(rgb[0, 0]) == (10, 120, 230)  # alpha 0: colour kept, not composited onto black
    assert tuple(rgb[0, 15]) == (10, 120, 230)


def test_la_and_one_bit(tmp_path: Path) -> None:
    Image.new("LA", (4, 4), (77, 0)).save(tmp_path / "la.png")
    assert tuple(_rgb(tmp_path / "la.png")[0, 0]) == (77, 77, 77)
    Image.new("1", (4, 4), 1).save(tmp_path / "one.png")
    assert tuple(_rgb(tmp_path / "one.png")[0, 0]) == (255, 255, 255)


def test_palette_with_transparency_no_warning(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 50, 60, 70] + [0] * (254 * 3))
    image.save(tmp_path / "pt.png", transparency=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuple(_rgb(tmp_path / "pt.png")[0, 0]) == (50, 60, 70)


def test_cmyk_converted(bad_images_dir: Path) -> None:
    pixel = _rgb(bad_images_dir / "cmyk.jpg")[8, 8].astype(int)
    assert abs(pixel[0] - 255) <= 6 and pixel[1] <= 6 and abs(pixel[2] - 255) <= 6


@pytest.mark.parametrize("name", READABLE)
def test_image_size_from_header_matches_the_decoded_image(bad_images_dir: Path, name: str) -> None:
    # exif_rotated.jpg is stored 40 x 20 and turned by its EXIF tag: the header size must swap too.
    assert image_size(bad_images_dir / name) == read_image(bad_images_dir / name).size


@pytest.mark.parametrize("name", ["empty.png", "not_an_image.jpg"])
def test_image_size_of_a_headerless_file_raises_the_readers_error(bad_images_dir: Path, name: str) -> None:
    with pytest.raises(ImageReadError, match=BROKEN[name]):
        image_size(bad_images_dir / name)


def test_image_size_reads_no_pixels(bad_images_dir: Path) -> None:
    # A truncated JPEG has a whole header: its size is known, its pixels are validate_images' business.
    assert image_size(bad_images_dir / "truncated.jpg") == Image.open(bad_images_dir / "truncated.jpg").size


def test_exif_orientation_applied(bad_images_dir: Path) -> None:
    assert Image.open(bad_images_dir / "exif_rotated.jpg").size == (40, 20)
    rgb = _rgb(bad_images_dir / "exif_rotated.jpg")
    assert rgb.shape == (40, 20, 3)  # width and height swapped
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 2] < 60  # red half now on top
    assert rgb[37, 10, 2] > 200 and rgb[37, 10, 0] < 60


def test_non_ascii_name(bad_images_dir: Path) -> None:
    assert read_image(bad_images_dir / "défaut café 01.png").size == (33, 35)


def test_webp_and_bmp(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.BMP")
    Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.webp", lossless=True)
    assert read_image(tmp_path / "a.BMP").size == (8, 6)
    assert tuple(_rgb(tmp_path / "a.webp")[0, 0]) == (1, 2, 3)


def test_truncated_png_fails(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "f.png"
    )
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "t.png")


def test_truncated_flag_not_set_globally(bad_images_dir: Path) -> None:
    from PIL import ImageFile

    with pytest.raises(ImageReadError):
        read_image(bad_images_dir / "truncated.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "limit", [500, 1500]
)  # 48x40 = 1920 px: above 2x limit (error), above limit (warning)
def test_decompression_bomb_reported(
    bad_images_dir: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match="decompression-bomb") as info:
            read_image(bad_images_dir / "good.png")
    assert "MAX_IMAGE_PIXELS" in info.value.reason


# --- read_mask ----------------------------------------------------------------------------------------------


def test_read_mask_thresholds_first_channel(tmp_path: Path) -> None:
    array = np.zeros((6, 8), dtype=np.uint8)
    array[1:3, 2:5] = 255
    array[5, 7] = 1
    Image.fromarray(array).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == bool and mask.shape == (6, 8)
    assert mask.sum() == 7 and mask[5, 7]


def test_read_mask_rgb_and_16_bit(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_mask(tmp_path / "rgb.png").sum() == 1
    Image.fromarray(np.array([[0, 1], [0, 0]], dtype=np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), [[False, True], [False, False]])


def test_read_mask_resizes_with_warning(tmp_path: Path) -> None:
    array = np.zeros((10, 10), dtype=np.uint8)
    array[:5, :5] = 255
    Image.fromarray(array).save(tmp_path / "m.png")
    with pytest.warns(UserWarning, match="resized"):
        mask = read_mask(tmp_path / "m.png", size=(20, 30))
    assert mask.shape == (30, 20)
    assert mask[:15, :10].all() and not mask[15:, :].any() and not mask[:, 10:].any()


def test_read_mask_same_size_no_warning(tmp_path: Path) -> None:
    Image.new("L", (10, 12), 0).save(tmp_path / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_mask(tmp_path / "m.png", size=(10, 12)).shape == (12, 10)


def test_read_mask_broken_file(bad_images_dir: Path) -> None:
    with pytest.raises(ImageReadError):
        read_mask(bad_images_dir / "not_an_image.jpg")


# --- skipped.csv --------------------------------------------------------------------------------------------


def test_write_skipped_csv_atomic_roundtrip(tmp_path: Path) -> None:
    items = [Skipped("a, b.png", "file is empty (0 bytes)"), Skipped("é/c.jpg", 'bad "quote"')]
    dest = write_skipped_csv(items, tmp_path / "run" / "skipped.csv")
    assert dest == tmp_path / "run" / "skipped.csv"
    with open(dest, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["path", "reason"], ["a, b.png", "file is empty (0 bytes)"], ["é/c.jpg", 'bad "quote"']]
    assert os.listdir(dest.parent) == ["skipped.csv"]  # no temp file left behind
    write_skipped_csv([], dest)
    assert dest.read_text(encoding="utf-8") == "path,reason\n"


# --- scan_images --------------------------------------------------------------------------------------------


def test_scan_images_sorted_and_loop_safe(bad_images_dir: Path) -> None:
    found = scan_images(bad_images_dir)
    names = [p.name for p in found]
    assert names == sorted(list(BROKEN) + READABLE)
    assert found == sorted(found)
    assert all(p.parent == bad_images_dir for p in found)  # nothing listed through the loop link


def test_scan_images_nested_loop_hidden_and_case(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    for rel in ["z.PNG", "b/deep/x.Jpeg", "a/y.tif", ".hidden/h.png", "a/.dot.png", "a/notes.txt"]:
        (root / rel).write_bytes(b"x")
    try:
        os.symlink("..", root / "b" / "deep" / "up", target_is_directory=True)
        os.symlink(root / "a", root / "link_to_a", target_is_directory=True)
        os.symlink(tmp_path / "outside", root / "ext", target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not supported here")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.bmp").write_bytes(b"x")
    found = [p.relative_to(root).as_posix() for p in scan_images(root)]
    assert found == ["a/y.tif", "b/deep/x.Jpeg", "ext/o.bmp", "z.PNG"]
    assert [p.name for p in scan_images(root, recursive=False)] == ["z.PNG"]


def test_scan_images_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_images(tmp_path / "missing")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        scan_images(tmp_path / "f.png")
    assert scan_images(tmp_path) == [tmp_path / "f.png"]


# --- validate_images ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_validate_images_splits_and_keeps_order(bad_images_dir: Path, workers: int) -> None:
    paths = scan_images(bad_images_dir)
    with pytest.warns(UserWarning, match="below 32 px") as record:
        good, skipped = validate_images(paths, workers=workers)
    assert [p.name for p in good] == READABLE
    assert [Path(s.path).name for s in skipped] == sorted(BROKEN)
    for item in skipped:
        assert BROKEN[Path(item.path).name] in item.reason
    # Every readable fixture except good.png (48x40) and the non-ASCII one (33x35) has a side below 32 px.
    assert any(str(w.message).startswith("7 image(s)") for w in record)


def test_validate_images_min_size(bad_images_dir: Path) -> None:
    paths = [bad_images_dir / "good.png", bad_images_dir / "tiny.png"]
    good, skipped = validate_images(paths, min_size=16)
    assert good == [bad_images_dir / "good.png"]
    assert len(skipped) == 1 and "10x10" in skipped[0].reason and "min_size=16" in skipped[0].reason


def test_validate_images_empty_input() -> None:
    assert validate_images([]) == ([], [])


def test_unreadable_exif_keeps_stored_orientation(
    bad_images_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(image: Image.Image) -> Image.Image:
        raise SyntaxError("corrupt EXIF block")

    monkeypatch.setattr(images_mod.ImageOps, "exif_transpose", broken)
    with pytest.warns(UserWarning, match="EXIF orientation could not be applied"):
        image = read_image(bad_images_dir / "exif_rotated.jpg")
    assert image.size == (40, 20) and image.mode == "RGB"


def test_pixel_limit_from_the_environment(bad_images_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SSFILTER_MAX_IMAGE_PIXELS`` overrides Pillow's limit for ssfilter's reads only, both ways."""
    from ssfilter.data.images import PIXEL_LIMIT_ENV, pixel_limit

    good = bad_images_dir / "good.png"  # 48 x 40 = 1920 px
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "500")
    with pytest.raises(ImageReadError, match="decompression-bomb") as info:
        read_image(good)
    assert "--max-image-pixels" in info.value.reason
    assert Image.MAX_IMAGE_PIXELS != 500, "Pillow's global limit is restored after the read"

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "0")  # no limit
    assert pixel_limit() is None
    assert read_image(good).size == (48, 40)
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "5000")
    assert pixel_limit() == 5000 and read_image(good).size == (48, 40)
    assert Image.MAX_IMAGE_PIXELS == 500

    monkeypatch.delenv(PIXEL_LIMIT_ENV)
    assert pixel_limit() == 500  # unset: Pillow's (caller's) own setting
    for bad in ("-1", "lots"):
        monkeypatch.setenv(PIXEL_LIMIT_ENV, bad)
        with pytest.raises(ValueError, match=PIXEL_LIMIT_ENV):
            pixel_limit()
        with pytest.raises(ValueError, match=PIXEL_LIMIT_ENV):  # stops the command, never skips the file
            read_image(good)


def test_cli_max_image_pixels_reaches_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ssfilter --max-image-pixels N CMD`` exports the limit before the command runs (for workers)."""
    import os

    from ssfilter import cli
    from ssfilter.data.images import PIXEL_LIMIT_ENV

    seen: list[str | None] = []
    monkeypatch.delenv(PIXEL_LIMIT_ENV, raising=False)
    monkeypatch.setitem(cli._COMMANDS, "info", lambda args: seen.append(os.environ.get(PIXEL_LIMIT_ENV)) or 0)
    assert cli.main(["--max-image-pixels", "250000000", "info"]) == 0
    assert seen == ["250000000"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--max-image-pixels", "-3", "info"])
    assert exit_info.value.code == 2
