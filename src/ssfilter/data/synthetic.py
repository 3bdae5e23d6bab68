"""Small synthetic industrial image sets with pixel-exact defect masks, in the MVTec AD layout.

Used by the test-suite and by ``ssfilter demo``: a category is generated in well under a second, needs no
download, and can be made "noisy" (defective images hidden in ``train/good``) to exercise the filter.

* ``kind="object"``: a shaded disc with a dark ring and a specular highlight (a bottle seen from above, as in
  MVTec ``bottle``) on a plain dark background, with small position, size and colour jitter per image.
* ``kind="texture"``: a woven pattern with fine grain, with per-image phase and tint jitter.
* Defects: ``scratch`` (thin bright or dark line segment), ``dent`` (dark, directionally shaded ellipse),
  ``stain`` (coloured irregular blob). Each lies on the foreground and covers 1-5 % of the image.

Every image has its own random stream derived from ``(seed, split, index)``, so outputs are byte-identical
for a given seed and an image does not change when other counts change.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = ["DEFECT_TYPES", "MANIFEST_NAME", "make_synthetic_category"]

DEFECT_TYPES: tuple[str, ...] = ("scratch", "dent", "stain")
"""Defect folders written under ``test/`` and ``ground_truth/``, assigned round-robin."""

MANIFEST_NAME = "synthetic_manifest.json"
"""File in the category root listing the generation parameters and the truly defective training images."""

_MIN_AREA, _MAX_AREA = 0.01, 0.05
_SPLIT_CODES = {"train": 1, "test_good": 2, "test_defect": 3}


@dataclass(frozen=True)
class _Style:
    """Category-wide appearance, shared by all images of one seed (per-image jitter is added on top)."""

    background: np.ndarray  # RGB in [0, 1]
    colour: np.ndarray  # object or texture tint, RGB
    period: float  # texture period in pixels (fraction of size times size)
    angle: float  # texture orientation, radians


@dataclass(frozen=True)
class _Canvas:
    """A rendered defect-free image and where defects may go."""

    pixels: np.ndarray  # float32 [H, W, 3] in [0, 1]
    foreground: np.ndarray  # bool [H, W]
    centre: tuple[float, float]  # (x, y) of the object, or image centre for textures
    radius: float  # object radius; for textures the half-side of the allowed defect area


def _style(seed: int, kind: str) -> _Style:
    """Draw the category-wide appearance."""
    rng = np.random.default_rng([seed, 0])
    if kind == "object":
        colour = np.array([0.42, 0.55, 0.33]) + rng.uniform(-0.05, 0.05, 3)
    else:
        colour = np.array([0.72, 0.62, 0.48]) + rng.uniform(-0.08, 0.08, 3)
    background = np.full(3, rng.uniform(0.1, 0.18)) + rng.uniform(-0.02, 0.02, 3)
    return _Style(background, colour, period=rng.uniform(0.08, 0.12), angle=rng.uniform(0, np.pi))


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(x, y)`` as float32 arrays ``[size, size]``."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(axis, axis)


def _render_object(rng: np.random.Generator, size: int, style: _Style) -> _Canvas:
    """A shaded disc on a plain background."""
    xx, yy = _grid(size)
    cx = size * (0.5 + rng.uniform(-0.03, 0.03))
    cy = size * (0.5 + rng.uniform(-0.03, 0.03))
    radius = size * rng.uniform(0.34, 0.38)
    cx, cy, radius = np.float32(cx), np.float32(cy), np.float32(radius)
    r = np.hypot(xx - cx, yy - cy)
    background = style.background.astype(np.float32) + np.float32(0.04) * (yy / size - 0.5)[..., None]
    dome = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - (r / radius) ** 2, 0.0, 1.0))
    # Exponents are capped: exp() of very negative float32 values yields slow subnormal numbers.
    ring = 1.0 - 0.35 * np.exp(-np.minimum(((r - 0.5 * radius) / (0.05 * radius)) ** 2, 40.0))
    hx, hy = cx - 0.3 * radius, cy - 0.3 * radius
    highlight = 0.22 * np.exp(
        -np.minimum(((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * (0.12 * radius) ** 2), 40.0)
    )
    colour = (style.colour + rng.uniform(-0.02, 0.02, 3)).astype(np.float32)
    body = colour * (dome * ring)[..., None] + highlight[..., None]
    alpha = np.clip(radius - r + 0.5, 0.0, 1.0)[..., None]
    pixels = alpha * body + (1.0 - alpha) * background
    pixels += np.float32(0.008) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return _Canvas(pixels, r <= radius - 1.0, (float(cx), float(cy)), float(radius))


def _render_texture(rng: np.random.Generator, size: int, style: _Style) -> _Canvas:
    """A woven pattern with fine grain covering the whole image."""
    xx, yy = _grid(size)
    period = style.period * size
    angle = style.angle + rng.uniform(-0.03, 0.03)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    phase_u, phase_v = rng.uniform(0, 2 * np.pi, 2)
    weave_u = np.sin(2 * np.pi * u / period + phase_u)
    weave_v = np.sin(2 * np.pi * v / period + phase_v)
    weave = 0.5 + 0.25 * np.where(weave_u * weave_v > 0, weave_u, weave_v)
    grain = gaussian_filter(rng.normal(0.0, 1.0, (size, size)), sigma=0.8) * 0.08
    colour = style.colour + rng.uniform(-0.02, 0.02, 3)
    pixels = colour * (0.45 + 0.6 * (weave + grain))[..., None]
    foreground = np.ones((size, size), dtype=bool)
    return _Canvas(pixels.astype(np.float32), foreground, (size / 2, size / 2), 0.25 * size)


def _defect_centre(rng: np.random.Generator, canvas: _Canvas, kind: str) -> tuple[float, float]:
    """A random point well inside the foreground."""
    cx, cy = canvas.centre
    if kind == "object":
        rho = 0.3 * canvas.radius * np.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * np.pi)
        return cx + rho * np.cos(phi), cy + rho * np.sin(phi)
    return cx + rng.uniform(-canvas.radius, canvas.radius), cy + rng.uniform(-canvas.radius, canvas.radius)


def _room(canvas: _Canvas, point: tuple[float, float], kind: str) -> float:
    """How far a defect may extend from ``point`` and stay on the foreground (with a 2 px margin)."""
    if kind == "object":
        return canvas.radius - float(np.hypot(point[0] - canvas.centre[0], point[1] - canvas.centre[1])) - 2.0
    size = canvas.pixels.shape[0]
    return min(point[0], point[1], size - point[0], size - point[1]) - 2.0


def _scratch(rng: np.random.Generator, canvas: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Cover weights of a thin line segment, and its colour."""
    size = canvas.pixels.shape[0]
    px, py = _defect_centre(rng, canvas, kind)
    thickness = max(2.0, size / 32)
    half = min(size * rng.uniform(0.17, 0.24), _room(canvas, (px, py), kind) - thickness)
    theta = rng.uniform(0, np.pi)
    dx, dy = np.cos(theta), np.sin(theta)
    xx, yy = _grid(size)
    along = np.clip((xx - px) * dx + (yy - py) * dy, -half, half)
    dist = np.hypot(xx - (px + along * dx), yy - (py + along * dy))
    weight = np.clip(thickness / 2 + 0.5 - dist, 0.0, 1.0)
    colour = np.full(3, 0.95) if rng.uniform() < 0.5 else np.full(3, 0.04)
    return weight, np.broadcast_to(colour, canvas.pixels.shape)


def _dent(rng: np.random.Generator, canvas: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Cover weights of an ellipse, and the darkened, directionally shaded pixels under it."""
    size = canvas.pixels.shape[0]
    px, py = _defect_centre(rng, canvas, kind)
    a = min(size * rng.uniform(0.07, 0.1), _room(canvas, (px, py), kind))
    b = a * rng.uniform(0.55, 0.8)
    theta = rng.uniform(0, np.pi)
    xx, yy = _grid(size)
    u = (xx - px) * np.cos(theta) + (yy - py) * np.sin(theta)
    v = -(xx - px) * np.sin(theta) + (yy - py) * np.cos(theta)
    ellipse = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    weight = np.clip((1.0 - ellipse) * a + 0.5, 0.0, 1.0)
    shade = np.clip(0.42 + 0.2 * u / a, 0.15, 0.7)[..., None]
    return weight, canvas.pixels * shade


def _stain(rng: np.random.Generator, canvas: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Cover weights of an irregular blob (union of discs), and its colour."""
    size = canvas.pixels.shape[0]
    px, py = _defect_centre(rng, canvas, kind)
    base = min(size * rng.uniform(0.05, 0.07), _room(canvas, (px, py), kind) / 1.8)
    xx, yy = _grid(size)
    weight = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(4, 7))):
        ox, oy = np.clip(rng.normal(0.0, 0.45 * base, 2), -0.8 * base, 0.8 * base)
        radius = base * rng.uniform(0.45, 0.85)
        disc = np.clip(radius + 0.5 - np.hypot(xx - px - ox, yy - py - oy), 0.0, 1.0)
        weight = np.maximum(weight, disc)
    palette = np.array([[0.55, 0.27, 0.08], [0.15, 0.25, 0.7], [0.75, 0.12, 0.1]])
    colour = palette[int(rng.integers(len(palette)))]
    return 0.85 * weight, np.broadcast_to(colour, canvas.pixels.shape)


_PAINTERS = {"scratch": _scratch, "dent": _dent, "stain": _stain}


def _add_defect(
    rng: np.random.Generator, canvas: _Canvas, kind: str, defect: str
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of type ``defect``; retry until it covers 1-5 % of the image on the foreground.

    Returns:
        ``(pixels, mask)`` with the defect painted and its boolean ground-truth mask.
    """
    size = canvas.pixels.shape[0]
    for _ in range(50):
        weight, paint = _PAINTERS[defect](rng, canvas, kind)
        weight = weight * canvas.foreground
        mask = weight >= 0.4
        if _MIN_AREA <= mask.mean() <= _MAX_AREA:
            w = weight[..., None]
            return (1.0 - w) * canvas.pixels + w * paint, mask
    raise RuntimeError(f"could not place a {defect} defect covering 1-5% of a {size}px image; use size >= 32")


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Quantise float RGB in [0, 1] to uint8."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically (temporary file in the same folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(array).save(fh, format="PNG", compress_level=1)  # noisy pixels: favour speed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(payload: dict[str, object], path: Path) -> None:
    """Write JSON atomically with stable key order."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_synthetic_category(
    root: str | os.PathLike[str],
    *,
    kind: Literal["object", "texture"] = "object",
    n_train_good: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 10,
    n_train_defect: int = 0,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Generate a synthetic category in the MVTec AD layout.

    Writes ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png`` (values 0/255), plus :data:`MANIFEST_NAME`. Defect types are
    assigned round-robin over :data:`DEFECT_TYPES`.

    Args:
        root: Output folder; must not exist or be empty (existing files are never overwritten).
        kind: ``"object"`` (disc on a background) or ``"texture"`` (woven pattern).
        n_train_good: Normal training images.
        n_test_good: Normal test images.
        n_test_defect: Defective test images (with masks).
        n_train_defect: Defective images hidden among the normal ones in ``train/good`` (no masks, as in
            MVTec), simulating a noisy training set; ``train/good`` then holds ``n_train_good +
            n_train_defect`` images, and the manifest's ``train_defective`` lists them (paths relative to
            ``root``).
        size: Image side in pixels (at least 32).
        seed: Random seed; the same seed gives byte-identical files.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Bad arguments.
        FileExistsError: ``root`` exists and is not empty.
    """
    counts = {"n_train_good": n_train_good, "n_test_good": n_test_good, "n_test_defect": n_test_defect}
    counts["n_train_defect"] = n_train_defect
    _check_arguments(kind, size, counts, seed)
    out = Path(root)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"'{out}' exists and is not empty; choose a new folder for the synthetic data")
    painter = _Painter(seed, kind, size)
    train_defective = _write_train(out, painter, n_train_good, n_train_defect)
    test_good_dir = out / "test" / "good"
    test_good_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n_test_good):
        pixels, _ = painter.image("test_good", i, None)
        _save_png(pixels, test_good_dir / f"{i:03d}.png")
    _write_test_defects(out, painter, n_test_defect)
    _write_json(
        {
            "generator": "ssfilter.data.synthetic",
            "version": 1,
            "kind": kind,
            "seed": seed,
            "size": size,
            "counts": counts,
            "train_defective": sorted(train_defective),
            "train_defect_types": train_defective,
        },
        out / MANIFEST_NAME,
    )
    return out


def _check_arguments(kind: str, size: int, counts: dict[str, int], seed: int) -> None:
    if kind not in ("object", "texture"):
        raise ValueError(f"kind must be 'object' or 'texture', got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"image counts must be non-negative, got {counts}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


class _Painter:
    """Renders image ``index`` of a split, with or without a defect, as a pure function of the seed."""

    def __init__(self, seed: int, kind: Literal["object", "texture"], size: int) -> None:
        self.seed, self.kind, self.size = seed, kind, size
        self.style = _style(seed, kind)
        self.render = _render_object if kind == "object" else _render_texture

    def image(self, split: str, index: int, defect: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(uint8 pixels, defect mask or None)`` of one image."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[split], index])
        canvas = self.render(rng, self.size, self.style)
        if defect is None:
            return _to_uint8(canvas.pixels), None
        pixels, mask = _add_defect(rng, canvas, self.kind, defect)
        return _to_uint8(pixels), mask


def _write_train(out: Path, painter: _Painter, n_good: int, n_defect: int) -> dict[str, str]:
    """Write ``train/good`` with ``n_defect`` defective images hidden among the good ones.

    Returns:
        The hidden defective images (paths relative to ``out``) and their defect types.
    """
    train_dir = out / "train" / "good"
    train_dir.mkdir(parents=True, exist_ok=True)
    n_train = n_good + n_defect
    order = np.random.default_rng([painter.seed, 9]).permutation(n_train)
    hidden = {int(i): DEFECT_TYPES[j % len(DEFECT_TYPES)] for j, i in enumerate(sorted(order[:n_defect]))}
    train_defective: dict[str, str] = {}
    for i in range(n_train):
        pixels, _ = painter.image("train", i, hidden.get(i))
        _save_png(pixels, train_dir / f"{i:03d}.png")
        if i in hidden:
            train_defective[f"train/good/{i:03d}.png"] = hidden[i]
    return train_defective


def _write_test_defects(out: Path, painter: _Painter, n_defect: int) -> None:
    """Write ``test/<defect>/NNN.png`` and ``ground_truth/<defect>/NNN_mask.png``, types round-robin."""
    per_type: dict[str, int] = {}
    for i in range(n_defect):
        defect = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        number = per_type.get(defect, 0)
        per_type[defect] = number + 1
        pixels, mask = painter.image("test_defect", i, defect)
        assert mask is not None
        image_dir, gt_dir = out / "test" / defect, out / "ground_truth" / defect
        image_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        _save_png(pixels, image_dir / f"{number:03d}.png")
        _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{number:03d}_mask.png")
