"""Synthetic anomalies (paper §3.5, Fig. 3, Eq. 13): materials pasted onto images the in-batch filter kept.

:func:`paste_materials` / :func:`synthesize_batch` paste randomly rotated materials
(:mod:`ssfilter.filtering.materials`) onto the foreground (:mod:`ssfilter.filtering.foreground`) of kept
images. The trainer then computes the restoration loss of Eq. 13, ``D(F(x_clean), F_hat(x_synthetic))``, using
the returned ``source_index``: the reconstruction TARGET is the encoder features of the CLEAN kept image, the
decoder INPUT is the synthetic one, so the decoder learns to restore normal appearance from real anomalies.

Everything here works on normalised image tensors, on any device, and draws all randomness from a caller-owned
:class:`torch.Generator` (sampled on the generator's device), so synthesis is reproducible and resumable.
Project choice (the paper is silent): the number of materials per synthetic image grows in equal stages from
1 to 5 (:func:`materials_per_image`, Table 9); the other rules of Table 9 are in
:mod:`ssfilter.filtering.material_counts`. This is the ``ours`` entry of the synthesis registry
(:mod:`ssfilter.filtering.synthesis_registry`), next to the CutPaste and DRAEM-style baselines of Table 5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ssfilter.filtering.materials import Material
from ssfilter.filtering.random_draws import draw_index, draw_uniform
from ssfilter.filtering.synthesis_registry import SynthesisMethod, SynthesisRequest, register_synthesis

__all__ = [
    "MaterialSynthesis",
    "materials_per_image",
    "paste_materials",
    "rotate_material",
    "synthesize_batch",
]


def materials_per_image(iteration: int, total_iters: int, n_min: int = 1, n_max: int = 5) -> int:
    """Number of materials pasted on one synthetic image at ``iteration`` (Table 9: "from 1 to 5").

    Training is split into ``n_max - n_min + 1`` equal stages, one per value, so the count grows linearly as a
    staircase: ``n_min`` at iteration 0, ``n_max`` at the last iteration (``total_iters - 1``) and beyond.
    """
    if total_iters < 1:
        raise ValueError(f"total_iters must be >= 1, got {total_iters}")
    if not 0 <= n_min <= n_max:
        raise ValueError(f"expected 0 <= n_min <= n_max, got {n_min}, {n_max}")
    iteration = min(max(int(iteration), 0), total_iters - 1)
    if 0 < iteration == total_iters - 1:  # only matters with fewer iterations than stages
        return n_max
    stages = n_max - n_min + 1
    return min(n_min + (stages * iteration) // total_iters, n_max)


def rotate_material(
    material: Material, angle: float, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Rotate a material by ``angle`` degrees (counter-clockwise) without clipping it.

    The material is placed on a zero canvas of odd side larger than its diagonal and rotated about the canvas'
    centre pixel (``torchvision``'s ``expand=True`` rotates even-sized inputs about a point between pixels,
    which drops a row or column of the mask at 90 degrees), then cropped to the rotated mask's bounding box.
    Pixels are rotated bilinearly after a 1-pixel replicate padding (so the region's edge is not blended with
    the fill value), the mask with nearest neighbours. Multiples of 90 degrees are exact.

    Returns:
        ``(pixels [3, h', w'] float32, mask [h', w'] bool)`` on ``device`` (default: the material's).
    """
    device = material.pixels.device if device is None else device
    h, w = material.mask.shape
    side = math.ceil(math.hypot(h + 2, w + 2)) + 2
    side += 1 - side % 2  # odd: the rotation centre is a pixel centre
    top, left = (side - h - 2) // 2, (side - w - 2) // 2
    margins = (left, side - w - 2 - left, top, side - h - 2 - top)
    pixels = F.pad(material.pixels.to(device, torch.float32)[None], (1, 1, 1, 1), mode="replicate")
    pixels = F.pad(pixels, margins)[0]
    mask = F.pad(material.mask.to(device, torch.float32)[None, None], (1, 1, 1, 1))
    mask = F.pad(mask, margins)[0]
    pixels = TF.rotate(pixels, angle, interpolation=InterpolationMode.BILINEAR)
    mask = TF.rotate(mask, angle, interpolation=InterpolationMode.NEAREST)[0] > 0.5
    rows, cols = torch.nonzero(mask, as_tuple=True)
    if rows.numel() == 0:  # an empty material: nothing to paste
        return pixels[:, :0, :0], mask[:0, :0]
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    return pixels[:, r0:r1, c0:c1], mask[r0:r1, c0:c1]


def paste_materials(
    image: Tensor,
    materials: Sequence[Material],
    foreground: Tensor,
    n: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Paste ``n`` randomly rotated materials onto the foreground of ``image`` (paper §3.5, Fig. 3).

    Each of the ``n`` pastes draws, in this order: a material (with replacement), an angle in [-180, 180)
    degrees, and a centre among the foreground pixels (any pixel when ``foreground`` is empty). The rotated
    material is centred there, clipped at the image border, and written only where its rotated mask is True;
    later pastes cover earlier ones.

    Args:
        image: Normalised image ``[3, H, W]`` (not modified).
        materials: Materials to choose from.
        foreground: Bool ``[H, W]`` where centres may fall.
        n: Number of materials to paste.
        generator: Source of all randomness.

    Returns:
        ``(synthetic image [3, H, W], mask [H, W] bool)``: the mask is the union of the pasted pixels.
    """
    if image.dim() != 3 or tuple(foreground.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"expected image [C, H, W] and foreground [H, W], got {tuple(image.shape)}, "
            f"{tuple(foreground.shape)}"
        )
    height, width = image.shape[1:]
    out = image.detach().clone()
    pasted = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    if n <= 0 or len(materials) == 0:
        return out, pasted

    centres = torch.nonzero(foreground.detach().to(image.device).reshape(-1)).flatten()
    if centres.numel() == 0:
        centres = torch.arange(height * width, device=image.device)

    for _ in range(n):
        material = materials[draw_index(len(materials), generator)]
        angle = draw_uniform(-180.0, 180.0, generator)
        centre = int(centres[draw_index(centres.numel(), generator)])
        cy, cx = divmod(centre, width)

        pixels, mask = rotate_material(material, angle, device=image.device)
        h, w = mask.shape
        top, left = cy - h // 2, cx - w // 2
        y0, y1, x0, x1 = max(top, 0), min(top + h, height), max(left, 0), min(left + w, width)
        if y0 >= y1 or x0 >= x1:
            continue
        region = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        patch = pixels[:, y0 - top : y1 - top, x0 - left : x1 - left].to(out.dtype)
        out[:, y0:y1, x0:x1] = torch.where(region, patch, out[:, y0:y1, x0:x1])
        pasted[y0:y1, x0:x1] |= region
    return out, pasted


def synthesize_batch(
    kept_images: Tensor,
    kept_foreground: Tensor,
    materials: Sequence[Material],
    count: int,
    n_per_image: int | Sequence[int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Build ``count`` synthetic anomalies from randomly chosen kept images (paper §3.5, Eq. 13).

    Kept images are drawn with replacement (the paper makes one synthetic image per material candidate of the
    batch), then ``n_per_image`` materials are pasted on each with :func:`paste_materials`.

    Args:
        kept_images: Normalised kept images ``[N, 3, H, W]``.
        kept_foreground: Their foreground masks, bool ``[N, H, W]``.
        materials: Materials to paste.
        count: Number of synthetic images.
        n_per_image: Materials per synthetic image (see :func:`materials_per_image`), or one count per
            synthetic image (``count`` values; see :mod:`ssfilter.filtering.material_counts`).
        generator: Source of all randomness.

    Returns:
        ``(synthetic [count, 3, H, W], source_index [count] long, masks [count, H, W] bool)``;
        ``source_index`` indexes ``kept_images``: the clean image whose encoder features are the restoration
        target. Empty tensors (leading size 0) when there are no materials, no kept images or ``count <= 0``.
    """
    if kept_images.dim() != 4 or tuple(kept_foreground.shape) != (
        kept_images.shape[0],
        *kept_images.shape[2:],
    ):
        raise ValueError(
            f"expected images [N, C, H, W] and foreground [N, H, W], got {tuple(kept_images.shape)}, "
            f"{tuple(kept_foreground.shape)}"
        )
    device = kept_images.device
    n_kept = kept_images.shape[0]
    if count <= 0 or n_kept == 0 or len(materials) == 0:
        return (
            kept_images.new_empty((0, *kept_images.shape[1:])),
            torch.empty(0, dtype=torch.long, device=device),
            torch.empty((0, *kept_images.shape[2:]), dtype=torch.bool, device=device),
        )

    per_image = [n_per_image] * count if isinstance(n_per_image, int) else list(n_per_image)
    if len(per_image) != count:
        raise ValueError(f"expected {count} material counts, got {len(per_image)}")
    sources = [draw_index(n_kept, generator) for _ in range(count)]
    images, masks = [], []
    for i, n in zip(sources, per_image, strict=True):
        synthetic, mask = paste_materials(kept_images[i], materials, kept_foreground[i], n, generator)
        images.append(synthetic)
        masks.append(mask)
    return torch.stack(images), torch.tensor(sources, dtype=torch.long, device=device), torch.stack(masks)


@register_synthesis("ours")
class MaterialSynthesis(SynthesisMethod):
    """The paper's synthesis (Table 5 "ours"): real materials pasted on kept images, one per candidate.

    Makes one synthetic image per material candidate of the batch (paper §3.5) with :func:`synthesize_batch`;
    nothing while the material bank is empty.
    """

    uses_materials = True

    def count(self, n_candidates: int) -> int:
        """One synthetic image per material candidate."""
        return n_candidates

    def synthesize(
        self, request: SynthesisRequest, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Paste ``request.materials_per_image`` materials on randomly chosen kept images."""
        return synthesize_batch(
            request.kept_images,
            request.foreground,
            request.materials,
            request.count,
            request.materials_per_image,
            generator,
        )
