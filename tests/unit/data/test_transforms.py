from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ssfilter.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_image_transform,
    build_mask_transform,
    denormalize,
)


def test_image_transform_shape_dtype_and_normalisation() -> None:
    transform = build_image_transform(64, 56, IMAGENET_MEAN, IMAGENET_STD)
    out = transform(Image.new("RGB", (100, 80), (128, 128, 128)))
    assert out.shape == (3, 56, 56) and out.dtype == torch.float32
    expected = (torch.tensor(128 / 255) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 10, 10], expected, atol=1e-5, rtol=0)


def test_image_transform_centre_crop_geometry() -> None:
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[:8] = 255  # top band removed by the crop (64 -> 48 keeps rows 8..55)
    out = build_image_transform(64, 48, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(Image.fromarray(array))
    assert out.shape == (3, 48, 48)
    assert float(out.max()) == 0.0


def test_denormalize_round_trip_and_clamp() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    plain = build_image_transform(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(image)
    normalised = build_image_transform(32, 32)(image)
    back = denormalize(normalised, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(back, plain, atol=1e-5, rtol=0)
    batch = denormalize(torch.stack([normalised, normalised * 100]))
    assert batch.shape == (2, 3, 32, 32) and batch.min() >= 0 and batch.max() <= 1
    assert not torch.equal(back, normalised)  # input untouched, new tensor returned
    with pytest.raises(ValueError):
        denormalize(torch.zeros(3, 4))


def test_mask_transform_binary_and_keeps_thin_defects() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[50, 50] = True  # a one-pixel defect must survive downsampling (bilinear then > 0)
    out = build_mask_transform(64, 56)(mask)
    assert out.shape == (1, 56, 56) and out.dtype == torch.float32
    assert set(torch.unique(out).tolist()) == {0.0, 1.0}
    empty = build_mask_transform(64, 56)(np.zeros((30, 40), dtype=bool))
    assert empty.shape == (1, 56, 56) and float(empty.sum()) == 0.0


def test_mask_transform_follows_image_geometry() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[:32] = True  # top half
    out = build_mask_transform(64, 48)(mask)[0]
    assert out[:24].all() and not out[24:].any()  # crop keeps rows 8..55: rows 8..31 -> 0..23


def test_mask_transform_accepts_uint8_and_pickles() -> None:
    transform = pickle.loads(pickle.dumps(build_mask_transform(16, 16)))
    out = transform(np.full((8, 8), 255, dtype=np.uint8))
    assert float(out.min()) == 1.0
    with pytest.raises(ValueError):
        transform(np.zeros((2, 2, 3)))


@pytest.mark.parametrize(("resize", "crop"), [(32, 64), (0, 0), (16, -1)])
def test_bad_sizes_rejected(resize: int, crop: int) -> None:
    with pytest.raises(ValueError):
        build_image_transform(resize, crop, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError):
        build_mask_transform(resize, crop)
