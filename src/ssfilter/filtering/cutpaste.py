"""CutPaste synthetic anomalies (Li et al. 2021), the first baseline of the paper's Table 5.

CutPaste cuts a rectangle from a normal image and pastes it back at another place of the same image, so the
defect is made of the image's own (misplaced) content. As the paper's Table 5 describes ("we use the
default configuration, generating two anomalous images per batch and applying a mask to ensure synthesis
occurs in the foreground area"), the pasted rectangle is centred on a foreground pixel and written only on
foreground pixels.

CutPaste's default patch: area in [2%, 15%] of the image, aspect ratio log-uniform in [0.3, 1/0.3], cut
from a uniformly random place, colour-jittered. Deviations, written down here: the colour jitter is a
per-channel contrast gain in [0.9, 1.1] about the patch's mean, applied in the normalised space
(normalisation is affine per channel, so this is the same contrast/colour-balance change in pixel space)
instead of torchvision's brightness/contrast/saturation/hue jitter of 0.1, which needs unnormalised pixels;
the rectangle is clipped at the image border and intersected with the foreground rather than re-drawn. The
"scar" variant is not included.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssfilter.filtering.random_draws import draw_index, draw_uniform
from ssfilter.filtering.synthesis_registry import (
    SynthesisMethod,
    SynthesisRequest,
    empty_synthesis,
    register_synthesis,
)

__all__ = ["AREA_RANGE", "ASPECT_RANGE", "JITTER", "CutPasteSynthesis", "cutpaste"]

#: Patch area as a share of the image (CutPaste's default).
AREA_RANGE = (0.02, 0.15)
#: Patch aspect ratio (height / width), drawn log-uniformly (CutPaste's default).
ASPECT_RANGE = (0.3, 1 / 0.3)
#: Half-width of the per-channel contrast gain around 1.
JITTER = 0.1


def _patch_size(height: int, width: int, generator: torch.Generator) -> tuple[int, int]:
    """Rectangle ``(h, w)`` with CutPaste's area and aspect-ratio draws, 1 pixel or more, inside the image."""
    area = draw_uniform(*AREA_RANGE, generator) * height * width
    aspect = math.exp(draw_uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]), generator))
    h = min(max(round(math.sqrt(area * aspect)), 1), height)
    w = min(max(round(math.sqrt(area / aspect)), 1), width)
    return h, w


def cutpaste(image: Tensor, foreground: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One CutPaste anomaly on ``image``: a jittered rectangle of it pasted onto its foreground.

    Draws, in this order: the patch area and aspect ratio, the cut's top-left corner, three channel gains, and
    the paste centre among the foreground pixels (any pixel when ``foreground`` is empty).

    Args:
        image: Normalised image ``[3, H, W]`` (not modified).
        foreground: Bool ``[H, W]``: where the patch may be written.
        generator: Source of all randomness.

    Returns:
        ``(synthetic [3, H, W], mask [H, W] bool)``; the mask holds the written pixels (never empty: the
        centre pixel is always written).
    """
    height, width = image.shape[1:]
    h, w = _patch_size(height, width, generator)
    y, x = draw_index(height - h + 1, generator), draw_index(width - w + 1, generator)
    patch = image[:, y : y + h, x : x + w].detach()
    gains = torch.tensor([draw_uniform(1 - JITTER, 1 + JITTER, generator) for _ in range(image.shape[0])])
    mean = patch.mean(dim=(1, 2), keepdim=True)
    patch = mean + (patch - mean) * gains.to(patch)[:, None, None]

    region = foreground.detach().to(image.device).bool()
    if not bool(region.any()):
        region = torch.ones_like(region)
    centres = torch.nonzero(region.reshape(-1)).flatten()
    cy, cx = divmod(int(centres[draw_index(centres.numel(), generator)]), width)
    top, left = cy - h // 2, cx - w // 2
    y0, y1, x0, x1 = max(top, 0), min(top + h, height), max(left, 0), min(left + w, width)
    mask = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    mask[y0:y1, x0:x1] = region[y0:y1, x0:x1]
    placed = torch.zeros_like(image)
    placed[:, y0:y1, x0:x1] = patch[:, y0 - top : y1 - top, x0 - left : x1 - left].to(image.dtype)
    return torch.where(mask, placed, image.detach()), mask


@register_synthesis("cutpaste")
class CutPasteSynthesis(SynthesisMethod):
    """Table 5's CutPaste baseline: ``synthetic_per_batch`` kept images (with replacement), one patch each."""

    def synthesize(
        self, request: SynthesisRequest, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw the source images first, then one :func:`cutpaste` each."""
        kept = request.kept_images
        if request.count <= 0 or kept.shape[0] == 0:
            return empty_synthesis(kept)
        sources = [draw_index(kept.shape[0], generator) for _ in range(request.count)]
        pairs = [cutpaste(kept[i], request.foreground[i], generator) for i in sources]
        return (
            torch.stack([p[0] for p in pairs]),
            torch.tensor(sources, dtype=torch.long, device=kept.device),
            torch.stack([p[1] for p in pairs]),
        )
