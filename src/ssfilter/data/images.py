"""Robust image reading: every pixel format a camera or an export tool produces, broken files reported.

Industrial image folders are messy: 16-bit grayscale TIFFs from machine-vision cameras, palette PNGs from
annotation tools, CMYK JPEGs from a print workflow, phone photos with an EXIF rotation flag, half-copied
files.
This module turns all of them into one thing, an 8-bit RGB :class:`PIL.Image.Image`, or one exception,
:class:`ImageReadError`, so that callers can skip bad files (see :func:`validate_images`) and list them in a
``skipped.csv`` instead of crashing half-way through a training run. One job, reading image files
robustly (decoding, sizes, masks, scanning and validating a folder, listing what was skipped), hence the
length.

Decisions (applied by :func:`read_image`):

* **EXIF orientation** is applied (``ImageOps.exif_transpose``): pixels match what an image viewer shows.
* **Alpha is dropped**, not composited: RGBA/LA/PA pixels keep their stored colour. This is what
  ``Image.convert("RGB")`` does and what the reference pipelines (Dinomaly, MVTec loaders) do, so scores match
  theirs; transparent areas in inspection images are rare and their stored colour is usually the background.
* **16-bit** (``I;16*``) data is scaled by its full range: ``round(v * 255 / 65535)``, so 65535 -> 255 and
  32768 -> 128 (no clipping, which would saturate almost every pixel).
* **32-bit integer** (``I``): when every value lies in 0..65535 (how Pillow stores 16-bit data in a 32-bit
  container) it is scaled like 16-bit; otherwise the image's own min..max is stretched to 0..255.
* **32-bit float** (``F``): values in 0..1 are taken as normalised intensities (``v * 255``); anything else is
  stretched min..max to 0..255. NaN and infinities become 0. A constant image maps to 0.
* **1-bit** maps to 0/255; **CMYK**, **YCbCr** and the rest go through Pillow's own conversion.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ssfilter.errors import SSFilterError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MIN_RECOMMENDED_SIDE",
    "PIXEL_LIMIT_ENV",
    "ImageReadError",
    "Skipped",
    "decode_image",
    "image_size",
    "pixel_limit",
    "read_image",
    "read_mask",
    "scan_images",
    "validate_images",
    "write_skipped_csv",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
"""Recognised image file suffixes (lower case, with the dot); matching is case-insensitive."""

MIN_RECOMMENDED_SIDE = 32
"""Images with a side below this many pixels are accepted but trigger a warning in :func:`validate_images`."""

PIXEL_LIMIT_ENV = "SSFILTER_MAX_IMAGE_PIXELS"
"""Environment variable that sets the decompression-bomb limit in pixels (``0``: no limit).

The CLI's ``--max-image-pixels`` sets it, so DataLoader workers and ``torchrun`` ranks inherit it. When it
is unset, Pillow's own ``PIL.Image.MAX_IMAGE_PIXELS`` applies (about 89 Mpx, or what the caller set)."""

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS"})

# Image.open() reports the "warning" level of Pillow's decompression-bomb guard with warnings.warn. Turning
# that warning into an exception needs warnings.catch_warnings, which edits process-wide state, so it is
# serialised here; only the (cheap) header parse runs under the lock, never the pixel decoding.
_OPEN_LOCK = threading.Lock()


class ImageReadError(SSFilterError):
    """A file could not be decoded as an image.

    Attributes:
        path: The file that failed.
        reason: What went wrong, in words (e.g. ``"file is empty (0 bytes)"``).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"cannot read image '{self.path}': {reason}. Re-export or replace the file, or remove it from "
            "the data folder (validation lists every unreadable file in skipped.csv)."
        )

    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
        """Keep the exception picklable (DataLoader workers send exceptions between processes)."""
        return (type(self), (self.path, self.reason))


@dataclass
class Skipped:
    """A file left out of a data set, and why.

    Attributes:
        path: The file.
        reason: Human-readable cause, written to ``skipped.csv``.
    """

    path: str
    reason: str


def _describe(exc: BaseException) -> str:
    """Short reason text for a decoding exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _open_fully(path: Path) -> Image.Image:
    """Open and fully decode ``path``; apply EXIF orientation.

    Raises :class:`ImageReadError` for anything wrong with the file, and ``ValueError`` for a malformed
    :data:`PIXEL_LIMIT_ENV` (a setting, not a file problem: it must stop the command, not skip images).
    """
    limit = pixel_limit()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageReadError(
                path, f"broken symbolic link (target '{os.readlink(path)}' is missing)"
            ) from None
        raise ImageReadError(path, "file not found") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file ({_describe(exc)})") from exc
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below, after the full decode
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({_describe(exc)})") from exc
    try:
        return _decode(fh, path, limit)
    finally:
        fh.close()


def _decode(fh: BinaryIO, path: str | os.PathLike[str], limit: int | None) -> Image.Image:
    """Fully decode an open binary stream; apply EXIF orientation; map every failure to ImageReadError.

    ``path`` names the image in messages (a file, or an upload's name); ``limit`` is the pixel limit.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limit
            try:
                image = Image.open(fh)  # the only place Pillow checks the limit
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        # Decode now: truncated or corrupt pixel data must fail here, not in a DataLoader worker.
        image.load()
        return _exif_transposed(image, Path(path))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            path,
            f"decompression-bomb guard: {exc} If the file is trusted, raise the limit: "
            f"ssfilter --max-image-pixels N (0: none), the {PIXEL_LIMIT_ENV} environment variable, or "
            "PIL.Image.MAX_IMAGE_PIXELS from Python",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageReadError(path, "not a recognised image format (corrupt file or not an image)") from exc
    except MemoryError as exc:
        raise ImageReadError(path, "not enough memory to decode the image") from exc
    except Exception as exc:  # Pillow plug-ins raise OSError, SyntaxError, ValueError, struct.error, ...
        reason = _describe(exc)
        if "truncated" in reason.lower():
            reason = f"file is truncated ({reason})"
        raise ImageReadError(path, f"decoding failed ({reason})") from exc


def _exif_transposed(image: Image.Image, path: Path) -> Image.Image:
    """A detached copy of a loaded image, EXIF orientation applied (kept as stored if EXIF is unreadable)."""
    try:
        # Returns a new Image (not tied to the file) even when there is nothing to rotate.
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # malformed EXIF must not cost a pixel-valid image
        warnings.warn(
            f"{path}: EXIF orientation could not be applied ({_describe(exc)}); using the stored orientation",
            stacklevel=4,
        )
        return image.copy()


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel 16/32-bit or float array to uint8 following the module's documented rules."""
    if mode in _SIXTEEN_BIT_MODES:
        wide = values.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "I":
        wide = values.astype(np.int64)
        if wide.size and wide.min() >= 0 and wide.max() <= 65535:
            return ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return _stretch(wide.astype(np.float64))
    floats = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if floats.size and floats.min() >= 0.0 and floats.max() <= 1.0:
        return np.rint(floats * 255.0).astype(np.uint8)
    return _stretch(floats)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly map the array's min..max to 0..255 (a constant array maps to 0)."""
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = Image.fromarray(_scale_to_uint8(np.asarray(image), mode))  # 2-D uint8 -> "L"
        return gray.convert("RGB")
    try:
        if mode in ("P", "PA"):
            # Through RGBA so palette transparency is handled without Pillow's "convert to RGBA" warning.
            return image.convert("RGBA").convert("RGB")
        if mode in ("LA", "La", "1"):
            return image.convert("L").convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageReadError(path, f"unsupported pixel mode {mode!r} ({_describe(exc)})") from exc


def pixel_limit() -> int | None:
    """The decompression-bomb limit in pixels that :func:`read_image` applies (``None``: no limit).

    Raises:
        ValueError: when :data:`PIXEL_LIMIT_ENV` is set to something other than a non-negative integer.
    """
    raw = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{PIXEL_LIMIT_ENV} must be a non-negative integer (0: no limit), got {raw!r}")
    return value or None


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read an image file as a fully decoded 8-bit RGB image.

    Applies the EXIF orientation and converts every Pillow mode to RGB (rules in the module docstring).

    Args:
        path: Image file.

    Returns:
        A detached RGB image (the file is closed).

    Raises:
        ImageReadError: For missing, empty, truncated, corrupt, oversized or non-image files — never any other
            exception type for a problem with the file.
        ValueError: When :data:`PIXEL_LIMIT_ENV` is malformed (a setting, so the command stops).
    """
    file = Path(path)
    return _to_rgb(_open_fully(file), file)


#: EXIF orientations that turn the image by 90 or 270 degrees (width and height swap).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`read_image` returns it, from the file header only.

    The EXIF orientation is honoured (a 90/270-degree turn swaps the sides), so the size matches the
    decoded image without decoding its pixels (for files :func:`validate_images` already checked); a file
    whose header cannot be read is handed to :func:`read_image`, which raises :class:`ImageReadError`.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112)
    except Exception:  # anything unusual: let the full reader decide (and explain)
        return read_image(path).size
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def decode_image(data: bytes, name: str = "<upload>") -> Image.Image:
    """Decode image bytes held in memory (e.g. an upload) exactly as :func:`read_image` reads a file.

    The same decoder, pixel limit (:func:`pixel_limit`), EXIF rule and RGB conversion apply; nothing
    touches the disk.

    Args:
        data: The encoded image (PNG, JPEG, TIFF, ...).
        name: What error messages call the image (e.g. the uploaded file name).

    Raises:
        ImageReadError: For empty, truncated, corrupt, oversized or non-image data.
        ValueError: When :data:`PIXEL_LIMIT_ENV` is malformed.
    """
    if not data:
        raise ImageReadError(name, "file is empty (0 bytes)")
    return _to_rgb(_decode(io.BytesIO(data), name, pixel_limit()), Path(name))


def read_mask(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as a boolean array (``True`` = defect).

    The file is converted to 8-bit grayscale (``L``) and thresholded at ``> 0``; 16-bit and float masks are
    thresholded on their raw values so a mask storing 1 for "defect" is not lost in the 8-bit scaling.

    Args:
        path: Mask file.
        size: ``(width, height)`` of the image the mask belongs to. When given and different, the mask is
            resized with nearest-neighbour interpolation and a warning says so.

    Returns:
        Boolean array of shape ``(H, W)``.

    Raises:
        ImageReadError: When the mask file cannot be decoded.
    """
    file = Path(path)
    image = _open_fully(file)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        mask = np.nan_to_num(np.asarray(image, dtype=np.float64)) > 0
    else:
        try:
            gray = image.convert("RGBA").convert("L") if image.mode in ("P", "PA") else image.convert("L")
        except (ValueError, OSError) as exc:
            raise ImageReadError(
                file, f"unsupported mask pixel mode {image.mode!r} ({_describe(exc)})"
            ) from exc
        mask = np.asarray(gray) > 0
    if size is not None:
        width, height = int(size[0]), int(size[1])
        if (mask.shape[1], mask.shape[0]) != (width, height):
            warnings.warn(
                f"mask {file} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
                "resized the mask with nearest-neighbour interpolation",
                stacklevel=2,
            )
            resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (width, height), Image.Resampling.NEAREST
            )
            mask = np.asarray(resized) > 0
    return mask


def write_skipped_csv(items: Iterable[Skipped], path: str | os.PathLike[str]) -> Path:
    """Write skipped files to a CSV with header ``path,reason``, atomically.

    The CSV is written to a temporary file in the destination folder and moved into place with ``os.replace``,
    so a reader never sees a half-written file.

    Args:
        items: Skipped files.
        path: Destination CSV (its folder is created if needed).

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    for item in items:
        writer.writerow([item.path, item.reason])
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buffer.getvalue())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _is_image_name(name: str) -> bool:
    """Whether a file name has a recognised image suffix (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_images(root: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the image files under a folder, sorted, deterministically.

    Hidden files and folders (name starting with ``.``) are ignored. Symbolic links to folders are followed,
    but a folder whose real path was already visited is not entered again, so link loops terminate (and a
    folder linked twice is listed once). Unreadable sub-folders are skipped with a warning. A symbolic link
    with an image name whose target is missing (or that loops) is listed, so validation reports it.

    Args:
        root: Folder to scan.
        recursive: Descend into sub-folders.

    Returns:
        Image paths (``root`` joined with the relative path, symlink names kept), sorted by path components.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
    """
    base = Path(root)
    if not base.exists():
        raise FileNotFoundError(f"image folder '{base}' does not exist; check the --data path")
    if not base.is_dir():
        raise NotADirectoryError(f"'{base}' is a file; pass the folder that contains the images")
    found: list[Path] = []
    visited: set[str] = {os.path.realpath(base)}
    stack: list[Path] = [base]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if folder == base:
                raise
            warnings.warn(f"skipping unreadable folder {folder} ({_describe(exc)})", stacklevel=2)
            continue
        subdirs: list[Path] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:  # e.g. a link loop (ELOOP)
                is_dir = is_file = False
            # A link with an image name whose target is gone (or loops) is listed, so validation reports it.
            dangling = not is_dir and not is_file and entry.is_symlink() and not os.path.exists(entry.path)
            if (is_file or dangling) and _is_image_name(entry.name):
                found.append(Path(entry.path))
            elif is_dir and recursive:
                real = os.path.realpath(entry.path)
                if real not in visited:
                    visited.add(real)
                    subdirs.append(Path(entry.path))
        stack.extend(reversed(subdirs))
    return sorted(found)


def _probe(path: Path) -> tuple[int, int] | Skipped:
    """Decode one file; its size on success, a :class:`Skipped` on failure (runs in worker threads)."""
    try:
        with read_image(path) as image:
            return image.size
    except ImageReadError as exc:
        return Skipped(str(path), exc.reason)


def validate_images(
    paths: Sequence[str | os.PathLike[str]], *, min_size: int = 1, workers: int = 2
) -> tuple[list[Path], list[Skipped]]:
    """Decode every file once and split readable images from bad ones, keeping the input order.

    Images with a side below ``min_size`` are skipped; images with a side below
    :data:`MIN_RECOMMENDED_SIDE` (32 px) are kept but reported in one warning, since they carry little detail
    once upsampled to the model's input size.

    Args:
        paths: Files to check.
        min_size: Smallest accepted width and height, in pixels.
        workers: Decoding threads (Pillow releases the GIL while decoding); ``<= 1`` decodes serially.

    Returns:
        ``(good, skipped)``: readable paths in input order, and the skipped files with their reasons.
    """
    files = [Path(p) for p in paths]
    if workers > 1 and len(files) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssfilter-validate") as pool:
            results = list(pool.map(_probe, files))
    else:
        results = [_probe(p) for p in files]
    good: list[Path] = []
    skipped: list[Skipped] = []
    small: list[str] = []
    for file, result in zip(files, results, strict=True):
        if isinstance(result, Skipped):
            skipped.append(result)
            continue
        width, height = result
        if min(width, height) < min_size:
            skipped.append(
                Skipped(str(file), f"image is {width}x{height}, smaller than min_size={min_size} px")
            )
            continue
        if min(width, height) < MIN_RECOMMENDED_SIDE:
            small.append(f"{file} ({width}x{height})")
        good.append(file)
    if small:
        listed = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        warnings.warn(
            f"{len(small)} image(s) have a side below {MIN_RECOMMENDED_SIDE} px and will be heavily "
            f"upsampled: {listed}",
            stacklevel=2,
        )
    return good, skipped
