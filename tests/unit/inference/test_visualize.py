from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ssfilter.inference.regions import find_regions
from ssfilter.inference.visualize import (
    BOX_COLOR,
    box_width,
    colorize,
    crop_box,
    map_to_original,
    mask_image,
    overlay_image,
)


@pytest.mark.parametrize(("width", "height", "resize", "crop"), [(97, 45, 80, 64), (300, 120, 256, 224)])
def test_crop_box_matches_the_model_preprocessing(width: int, height: int, resize: int, crop: int) -> None:
    # Each original pixel stores its own column (red) and row (green): the crop's corners tell which
    # original pixels the model saw.
    xs = np.broadcast_to(np.arange(width)[None, :], (height, width))
    ys = np.broadcast_to(np.arange(height)[:, None], (height, width))
    coded = np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), np.zeros_like(xs)], -1)
    image = Image.fromarray(coded.astype(np.uint8))
    geometry = T.Compose([T.Resize((resize, resize), InterpolationMode.NEAREST), T.CenterCrop(crop)])
    seen = np.asarray(geometry(image)).astype(int)
    left, top, right, bottom = crop_box(width, height, resize, crop)
    col_step, row_step = 255 / (width - 1), 255 / (height - 1)
    assert abs(seen[0, 0, 0] / col_step - left) <= 1.5
    assert abs(seen[-1, -1, 0] / col_step - (right - 1)) <= 1.5
    assert abs(seen[0, 0, 1] / row_step - top) <= 1.5
    assert abs(seen[-1, -1, 1] / row_step - (bottom - 1)) <= 1.5


def test_map_to_original_size_and_zero_outside_crop() -> None:
    full = map_to_original(np.ones((16, 16), np.float32), 97, 45, 80, 64)
    assert full.shape == (45, 97)
    left, top, right, bottom = crop_box(97, 45, 80, 64)
    assert 0 < left < right < 97 and 0 < top < bottom < 45
    inside = np.zeros_like(full, dtype=bool)
    inside[top:bottom, left:right] = True
    assert np.all(full[inside] == 1.0) and np.all(full[~inside] == 0.0)
    # no crop: the map covers the whole image
    assert np.all(map_to_original(np.ones((8, 8), np.float32), 10, 30, 64, 64) == 1.0)


def test_colorize_overlay_and_mask() -> None:
    rgb = colorize(np.array([0.0, 0.49, 0.51, 1.0, np.nan]))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 3)
    assert rgb[0, 2] > rgb[0, 0]  # blue at 0
    assert rgb[3, 0] > rgb[3, 2]  # red at 1
    assert rgb[2, 0] > rgb[1, 0]  # warm above the threshold, cool below
    np.testing.assert_array_equal(rgb[4], rgb[3])  # NaN drawn like the hottest value
    image = Image.new("RGB", (5, 3), (100, 100, 100))
    norm = np.zeros((3, 5), np.float32)
    norm[1, 2] = 0.9
    over = overlay_image(image, norm)
    assert over.size == (5, 3) and over.mode == "RGB"
    assert np.asarray(over)[1, 2, 0] > np.asarray(over)[0, 0, 0]
    mask = np.asarray(mask_image(norm))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255} and mask[1, 2] == 255
    assert mask.sum() == 255
    with pytest.raises(ValueError):
        overlay_image(image, np.zeros((5, 3), np.float32))


def test_overlay_outlines_each_region_inside_its_box() -> None:
    image = Image.new("RGB", (30, 20), (100, 100, 100))
    norm = np.zeros((20, 30), np.float32)
    norm[2:6, 3:10] = 0.9
    norm[12:18, 20:27] = 0.7
    regions = find_regions(norm)
    plain = np.asarray(overlay_image(image, norm))
    boxed = np.asarray(overlay_image(image, norm, regions=regions))
    green = np.all(boxed == BOX_COLOR, axis=-1)
    expected = np.zeros_like(green)
    for r in regions:  # a 1 px outline on the box's first and last rows and columns
        expected[r.y0 : r.y1, [r.x0, r.x1 - 1]] = True
        expected[[r.y0, r.y1 - 1], r.x0 : r.x1] = True
    np.testing.assert_array_equal(green, expected)
    np.testing.assert_array_equal(boxed[~expected], plain[~expected])  # nothing else changes
    assert not np.all(plain == BOX_COLOR, axis=-1).any()
    # thicker lines on big images, still inside the box
    assert [box_width(w, h) for w, h in [(30, 20), (600, 200), (1200, 1000)]] == [1, 2, 4]
    big = np.zeros((300, 600), np.float32)
    big[100:200, 50:150] = 1.0
    out = np.asarray(overlay_image(Image.new("RGB", (600, 300)), big, regions=find_regions(big)))
    green = np.all(out == BOX_COLOR, axis=-1)
    assert green[100:200, 50:52].all() and green[100:102, 50:150].all() and green[198:200, 50:150].all()
    assert not green[:, 49].any() and not green[99, :].any() and not green[102:198, 52:148].any()
