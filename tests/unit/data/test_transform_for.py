"""``transform_for``: the run's image transform from its config and its encoder's statistics."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from ssfilter.config import get_preset
from ssfilter.data.transforms import transform_for


def test_transform_for_uses_the_data_sizes_and_the_encoder_statistics() -> None:
    cfg = get_preset("cpu-fast")
    cfg.data.resize, cfg.data.crop = 40, 32
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.125)
    encoder = SimpleNamespace(mean=mean, std=std)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = transform_for(cfg, encoder)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    # independent reference: Pillow's bilinear resize, torchvision's centre-crop offset, then (x - m) / s
    resized = np.asarray(image.resize((40, 40), Image.BILINEAR), dtype=np.float32) / 255.0
    off = int(round((40 - 32) / 2.0))
    crop = resized[off : off + 32, off : off + 32].transpose(2, 0, 1)
    expected = (crop - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    # the data section alone works too
    assert torch.equal(transform_for(cfg.data, encoder)(image), out)
