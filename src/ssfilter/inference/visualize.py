"""Heat-map overlays and defect masks at an image's original size (numpy and Pillow only, no torch).

Anomaly maps are computed on the model's input: the image squashed to ``resize x resize`` (aspect ratio
not kept), then centre-cropped to ``crop x crop`` (see
:func:`ssfilter.data.transforms.build_image_transform`), then resized to ``eval_size``.
:func:`map_to_original` undoes that geometry: the map is stretched back onto the rectangle of the
original image that the crop saw; pixels outside it (cut off by the crop) get 0 ("normal"). The colours
come from a fixed colormap (:func:`colorize`) applied to *normalised* maps
(:meth:`ssfilter.inference.calibration.Calibration.normalize_maps`), so the same colour means the same
raw anomaly value in every image of a run; cool colours are below the pixel threshold (0.5), warm ones
above it. Overlays also outline each defect region (:mod:`ssfilter.inference.regions`) with a box in
:data:`BOX_COLOR`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ssfilter.inference.regions import Region, defect_mask

__all__ = [
    "BOX_COLOR",
    "COLORMAP_ANCHORS",
    "box_width",
    "colorize",
    "crop_box",
    "map_to_original",
    "mask_image",
    "overlay_image",
]

#: ``(value, (r, g, b))`` anchors of the heat-map colormap, linearly interpolated: dark blue (normal)
#: through light blue, a switch to yellow at the threshold (0.5), then orange and red.
COLORMAP_ANCHORS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (25, 30, 110)),
    (0.3, (40, 100, 215)),
    (0.45, (80, 185, 215)),
    (0.55, (250, 215, 50)),
    (0.8, (245, 120, 25)),
    (1.0, (200, 15, 15)),
)

#: Outline colour of the region boxes on overlays: pure green, a hue the heat-map never uses.
BOX_COLOR: tuple[int, int, int] = (0, 255, 0)


def crop_box(width: int, height: int, resize: int, crop: int) -> tuple[int, int, int, int]:
    """The rectangle of the original image that the model's centre crop covers.

    Mirrors the preprocessing: ``Resize((resize, resize))`` then ``CenterCrop(crop)``, whose offset is
    ``int(round((resize - crop) / 2))`` (torchvision's rule) in the resized image.

    Args:
        width: Original image width.
        height: Original image height.
        resize: Side of the square resize.
        crop: Side of the centre crop.

    Returns:
        ``(left, top, right, bottom)`` in original pixel coordinates (right/bottom exclusive), at least
        one pixel wide and high.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
    offset = int(round((resize - crop) / 2.0))

    def span(size: int) -> tuple[int, int]:
        lo = int(round(offset * size / resize))
        hi = int(round((offset + crop) * size / resize))
        lo = min(max(lo, 0), size - 1)
        return lo, min(max(hi, lo + 1), size)

    left, right = span(width)
    top, bottom = span(height)
    return left, top, right, bottom


def map_to_original(norm_map: np.ndarray, width: int, height: int, resize: int, crop: int) -> np.ndarray:
    """Place a (normalised) map computed on the crop onto the original image geometry.

    Args:
        norm_map: ``[S, S]`` map covering the model's crop.
        width: Original image width.
        height: Original image height.
        resize: Side of the square resize used by the model.
        crop: Side of the centre crop used by the model.

    Returns:
        ``[height, width]`` float32 map: the map bilinearly stretched onto :func:`crop_box`, 0 elsewhere.
    """
    m = np.ascontiguousarray(norm_map, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {m.shape}")
    left, top, right, bottom = crop_box(width, height, resize, crop)
    stretched = Image.fromarray(m).resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    out = np.zeros((height, width), dtype=np.float32)
    out[top:bottom, left:right] = np.asarray(stretched, dtype=np.float32)
    return out


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN counts as 1) to RGB with :data:`COLORMAP_ANCHORS`.

    Args:
        values: Array of any shape.

    Returns:
        ``uint8`` array of shape ``values.shape + (3,)``.
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=1.0)
    v = np.clip(v, 0.0, 1.0)
    xs = [a[0] for a in COLORMAP_ANCHORS]
    channels = [np.interp(v, xs, [a[1][c] for a in COLORMAP_ANCHORS]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def box_width(width: int, height: int) -> int:
    """Line width in pixels of the region boxes on a ``width x height`` overlay (1 px per 300 px of side).

    Args:
        width: Image width.
        height: Image height.
    """
    return max(1, round(max(width, height) / 300))


def overlay_image(
    image: Image.Image, norm_map: np.ndarray, strength: float = 0.6, regions: Sequence[Region] = ()
) -> Image.Image:
    """Blend the coloured map over the image (hotter pixels more opaquely) and outline the regions.

    The opacity is ``strength * (0.4 + 0.6 * v)``, so normal areas stay readable under a light tint.
    Each region's bounding box is drawn in :data:`BOX_COLOR`, :func:`box_width` pixels wide, inside the
    box (its outermost pixels are the box's first and last rows and columns).

    Args:
        image: The original RGB image.
        norm_map: ``[height, width]`` normalised map (see :func:`map_to_original`).
        strength: Opacity of the hottest pixels, in [0, 1].
        regions: Defect regions to outline, in the image's pixels (see
            :func:`ssfilter.inference.regions.find_regions`).
    """
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    v = np.clip(np.nan_to_num(np.asarray(norm_map, dtype=np.float32), nan=1.0), 0.0, 1.0)
    if v.shape != base.shape[:2]:
        raise ValueError(f"map shape {v.shape} does not match the image {base.shape[:2]}")
    alpha = (strength * (0.4 + 0.6 * v))[..., None]
    blended = (1.0 - alpha) * base + alpha * colorize(v).astype(np.float32)
    out = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if regions:
        draw = ImageDraw.Draw(out)
        line = box_width(out.width, out.height)
        for r in regions:
            draw.rectangle((r.x0, r.y0, r.x1 - 1, r.y1 - 1), outline=BOX_COLOR, width=line)
    return out


def mask_image(norm_map: np.ndarray) -> Image.Image:
    """Binary defect mask as an 8-bit image: 255 where the normalised map is ``>= 0.5``, else 0.

    The rule is :func:`ssfilter.inference.regions.defect_mask`, the one the defect regions use.

    Args:
        norm_map: ``[height, width]`` normalised map.
    """
    return Image.fromarray(np.where(defect_mask(norm_map), 255, 0).astype(np.uint8))
