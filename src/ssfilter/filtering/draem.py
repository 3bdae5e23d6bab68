"""DRAEM-style synthetic anomalies (Zavrtanik et al. 2021), the second baseline of the paper's Table 5.

DRAEM thresholds 2-D Perlin noise (random scales ``2^0 .. 2^5`` per axis, randomly rotated, threshold 0.5)
into a blob-shaped mask, and blends an external texture into the image there:
``x' = (1 - m) x + (1 - beta) m t + beta m x`` with ``beta ~ U(0, 0.8)``. As the paper's Table 5 describes,
two images are made per batch and the mask is limited to the foreground.

Deviations, written down here: DRAEM's texture source is the DTD data set (with three random imgaug
augmentations); this project does not ship DTD, so the texture is ANOTHER kept image of the batch (the same
one when only one is kept), randomly rotated by a multiple of 90 degrees and possibly flipped so its
structure does not line up with the target. DRAEM also leaves half of its images unchanged; here every
synthetic image holds an anomaly: when the thresholded noise misses the foreground, the threshold drops to
the noise's 90th percentile over the foreground, so the mask is never empty.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from torch import Tensor
from torchvision.transforms import InterpolationMode

from ssfilter.filtering.random_draws import draw_index, draw_uniform
from ssfilter.filtering.synthesis_registry import (
    SynthesisMethod,
    SynthesisRequest,
    empty_synthesis,
    register_synthesis,
)

__all__ = [
    "BETA_MAX",
    "MAX_SCALE_POWER",
    "THRESHOLD",
    "DraemSynthesis",
    "draem_blend",
    "perlin_mask",
    "perlin_noise",
]

#: Perlin scales per axis are ``2^k`` with ``k`` in ``[0, MAX_SCALE_POWER)`` (DRAEM: 6).
MAX_SCALE_POWER = 6
#: Noise threshold of the mask (DRAEM: 0.5).
THRESHOLD = 0.5
#: Upper end of the opacity ``beta`` of the image under the texture (DRAEM: 0.8).
BETA_MAX = 0.8


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(height: int, width: int, res: tuple[int, int], generator: torch.Generator) -> Tensor:
    """2-D gradient (Perlin) noise ``[height, width]`` in about ``[-1, 1]`` with ``res`` cells per axis.

    Random unit gradients sit on the ``(res_y + 1) x (res_x + 1)`` lattice (drawn from ``generator`` on its
    device); each pixel interpolates the four corner dot products with the quintic fade, as in DRAEM's
    ``rand_perlin_2d``. Sizes that ``res`` does not divide are handled by computing a slightly larger
    field and cropping it.
    """
    ry, rx = res
    cell_h, cell_w = math.ceil(height / ry), math.ceil(width / rx)
    angles = 2 * math.pi * torch.rand((ry + 1, rx + 1), generator=generator, device=generator.device)
    grads = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1).cpu().double()
    ys = torch.arange(height, dtype=torch.float64) / cell_h
    xs = torch.arange(width, dtype=torch.float64) / cell_w
    yi, xi = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - yi)[:, None], (xs - xi)[None, :]

    def dot(dy: int, dx: int) -> Tensor:
        g = grads[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    u, v = _fade(fy), _fade(fx)
    top = dot(0, 0) * (1 - v) + dot(0, 1) * v
    bottom = dot(1, 0) * (1 - v) + dot(1, 1) * v
    return (math.sqrt(2) * (top * (1 - u) + bottom * u)).float()


def perlin_mask(foreground: Tensor, generator: torch.Generator) -> Tensor:
    """DRAEM's anomaly mask limited to ``foreground`` (bool ``[H, W]``; all pixels when it is empty).

    Draws the two scale powers, the noise, then a rotation in [-90, 90) degrees; thresholds at
    :data:`THRESHOLD`, falling back to the 90th percentile over the foreground when that leaves nothing.
    """
    height, width = foreground.shape
    res = (2 ** draw_index(MAX_SCALE_POWER, generator), 2 ** draw_index(MAX_SCALE_POWER, generator))
    noise = perlin_noise(height, width, res, generator)
    angle = draw_uniform(-90.0, 90.0, generator)
    noise = TF.rotate(noise[None], angle, interpolation=InterpolationMode.BILINEAR)[0]
    region = foreground.detach().cpu().bool()
    if not bool(region.any()):
        region = torch.ones_like(region)
    mask = (noise > THRESHOLD) & region
    if not bool(mask.any()):
        mask = (noise >= torch.quantile(noise[region], 0.9)) & region
    return mask.to(foreground.device)


def draem_blend(
    image: Tensor, texture: Tensor, foreground: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One DRAEM-style anomaly: ``texture`` blended into ``image`` under a Perlin mask on the foreground.

    Draws the mask (:func:`perlin_mask`), then ``beta``.

    Args:
        image: Normalised image ``[3, H, W]`` (not modified).
        texture: Normalised texture ``[3, H, W]``.
        foreground: Bool ``[H, W]``.
        generator: Source of all randomness.

    Returns:
        ``(synthetic [3, H, W], mask [H, W] bool)``; pixels outside the mask are the image's.
    """
    mask = perlin_mask(foreground, generator)
    beta = draw_uniform(0.0, BETA_MAX, generator)
    blended = (1 - beta) * texture.to(image) + beta * image
    return torch.where(mask, blended, image).detach(), mask


def _texture(kept: Tensor, target: int, generator: torch.Generator) -> Tensor:
    """Another kept image than ``target`` (itself when it is the only one), turned and possibly flipped."""
    n = kept.shape[0]
    other = target if n == 1 else (target + 1 + draw_index(n - 1, generator)) % n
    texture = torch.rot90(kept[other], draw_index(4, generator), dims=(1, 2))
    if draw_index(2, generator):
        texture = texture.flip(-1)
    if texture.shape != kept[target].shape:  # a non-square crop turned by 90 degrees
        texture = torch.rot90(texture, 1, dims=(1, 2))
    return texture


@register_synthesis("draem")
class DraemSynthesis(SynthesisMethod):
    """Table 5's DRAEM baseline: ``synthetic_per_batch`` kept images (with replacement), one blend each."""

    def synthesize(
        self, request: SynthesisRequest, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Draw the source images first, then per image its texture and :func:`draem_blend`."""
        kept = request.kept_images
        if request.count <= 0 or kept.shape[0] == 0:
            return empty_synthesis(kept)
        sources = [draw_index(kept.shape[0], generator) for _ in range(request.count)]
        pairs = [
            draem_blend(kept[i], _texture(kept, i, generator), request.foreground[i], generator)
            for i in sources
        ]
        return (
            torch.stack([p[0] for p in pairs]),
            torch.tensor(sources, dtype=torch.long, device=kept.device),
            torch.stack([p[1] for p in pairs]),
        )
