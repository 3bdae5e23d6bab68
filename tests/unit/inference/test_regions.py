"""Defect regions: connected components of the mask, mapped to original pixels, in every output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.inference.calibration import Calibration
from ssfilter.inference.outputs import PredictionWriter
from ssfilter.inference.prediction import RECORD_FIELDS, Prediction, decide
from ssfilter.inference.regions import Region, defect_mask, find_regions
from ssfilter.inference.visualize import BOX_COLOR, crop_box, mask_image

#: Normalisation is the identity (thresholds at 0.5 on a [0, 1] scale): raw maps are normalised maps.
IDENTITY = Calibration(
    image_threshold=0.5,
    score_min=0.0,
    score_max=1.0,
    pixel_threshold=0.5,
    map_min=0.0,
    map_max=1.0,
    rule="test",
    source="manual",
    n_images=0,
)


def _two_blobs() -> np.ndarray:
    """A 20 x 30 map: a 4 x 7 rectangle and a block-plus-diagonal blob joined only at pixel corners."""
    m = np.zeros((20, 30), np.float32)
    m[2:6, 3:10] = 0.8  # rows 2..5, columns 3..9: 28 px
    m[3, 4] = 0.95
    m[14:16, 20:22] = 0.6  # 2 x 2 block ...
    m[16, 22] = 0.5  # ... then a diagonal; exactly the threshold counts as defective
    m[17, 23] = 0.7
    m[17, 24] = np.float32(0.49999)  # just below: not part of it
    m[0, 29] = np.nan  # NaN is not defective
    return m


def test_two_blobs_give_two_boxes_with_exact_areas_and_scores() -> None:
    m = _two_blobs()
    big, small = find_regions(m)
    assert (big.x0, big.y0, big.x1, big.y1, big.area) == (3, 2, 10, 6, 28)
    assert big.area_percent == pytest.approx(100 * 28 / 600)
    assert big.peak_score == pytest.approx(0.95)
    assert big.mean_score == pytest.approx((27 * 0.8 + 0.95) / 28)
    # 8-connectivity: the diagonal steps belong to the block (4-connectivity would give three regions)
    assert (small.x0, small.y0, small.x1, small.y1, small.area) == (20, 14, 24, 18, 6)
    assert small.peak_score == pytest.approx(0.7)
    assert small.mean_score == pytest.approx((4 * 0.6 + 0.5 + 0.7) / 6)
    # the regions are exactly the blobs of the mask file
    assert np.asarray(mask_image(m)).sum() // 255 == big.area + small.area == defect_mask(m).sum()
    assert big.to_dict() == {
        "x0": 3,
        "y0": 2,
        "x1": 10,
        "y1": 6,
        "area": 28,
        "area_percent": big.area_percent,
        "peak_score": big.peak_score,
        "mean_score": big.mean_score,
    }


def test_regions_sorted_largest_first_and_empty_or_bad_maps() -> None:
    m = np.zeros((10, 10), np.float32)
    m[0, 0] = 1.0  # 1 px, top-left
    m[5:7, 5:7] = 1.0  # 4 px
    m[9, 9] = 1.0  # 1 px, bottom-right
    assert [(r.area, r.x0, r.y0) for r in find_regions(m)] == [(4, 5, 5), (1, 0, 0), (1, 9, 9)]
    assert find_regions(np.full((4, 6), 0.49, np.float32)) == []
    full = find_regions(np.ones((4, 6), np.float32))
    assert full == [Region(0, 0, 6, 4, 24, 100.0, 1.0, 1.0)]
    for bad in (np.zeros((3, 3, 3)), np.zeros((0, 4)), np.zeros(5)):
        with pytest.raises(ValueError, match="2-D map"):
            find_regions(bad)


def test_region_statistics_match_a_direct_computation_on_a_noisy_map() -> None:
    from scipy import ndimage

    values = (np.random.default_rng(7).random((40, 50)) * 0.7).astype(np.float32)  # 29% defective
    labels, count = ndimage.label(values >= 0.5, structure=np.ones((3, 3)))
    expected = set()
    for k in range(1, count + 1):
        ys, xs = np.nonzero(labels == k)
        inside = values[ys, xs]
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        expected.add((*box, len(ys), float(inside.max()), round(float(inside.mean()), 6)))
    regions = find_regions(values)
    assert len(regions) == count > 20
    got = {(r.x0, r.y0, r.x1, r.y1, r.area, r.peak_score, round(r.mean_score, 6)) for r in regions}
    assert got == expected
    assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)


def _predict(raw_map: np.ndarray, score: float, size: tuple[int, int], resize: int, crop: int) -> Prediction:
    (pred,) = decide(IDENTITY, ["x.png"], [size], np.array([score]), raw_map[None], resize=resize, crop=crop)
    return pred


def test_regions_in_original_pixels_of_a_non_square_image() -> None:
    width, height, resize, crop = 97, 45, 80, 64
    left, top, right, bottom = crop_box(width, height, resize, crop)
    # the whole crop is defective: one region, exactly the part of the image the model saw
    (whole,) = _predict(np.ones((16, 16), np.float32), 0.9, (width, height), resize, crop).regions
    assert (whole.x0, whole.y0, whole.x1, whole.y1) == (left, top, right, bottom)
    assert whole.area == (right - left) * (bottom - top)
    assert whole.area_percent == pytest.approx(100 * whole.area / (width * height))
    # two blocks of the 16 x 16 map land where the geometry puts them (the 0.5 level of the bilinear
    # stretch lies on the source pixels' edges, so within a pixel)
    m = np.zeros((16, 16), np.float32)
    m[4:8, 2:6] = 1.0  # rows 4..7, columns 2..5: the larger block
    m[11:13, 10:15] = 1.0  # rows 11..12, columns 10..14
    pred = _predict(m, 0.9, (width, height), resize, crop)
    assert pred.label == "NG" and len(pred.regions) == 2
    sx, sy = (right - left) / 16, (bottom - top) / 16
    for region, (r0, r1, c0, c1) in zip(pred.regions, [(4, 8, 2, 6), (11, 13, 10, 15)], strict=True):
        expected = (left + c0 * sx, top + r0 * sy, left + c1 * sx, top + r1 * sy)
        got = (region.x0, region.y0, region.x1, region.y1)
        assert np.abs(np.subtract(got, expected)).max() <= 1.0, (got, expected)
        assert 0 <= region.x0 < region.x1 <= width and 0 <= region.y0 < region.y1 <= height
    assert pred.regions[0].area > pred.regions[1].area
    assert all(r.peak_score == pytest.approx(1.0) and 0.5 <= r.mean_score < 1.0 for r in pred.regions)
    full = pred.original_map(resize, crop)
    assert pred.regions == find_regions(full)
    assert sum(r.area for r in pred.regions) == np.asarray(mask_image(full)).sum() // 255


def test_ok_image_has_no_regions_even_with_hot_pixels() -> None:
    pred = _predict(np.ones((16, 16), np.float32), 0.2, (40, 30), 64, 64)
    assert pred.label == "OK" and pred.regions == []
    assert defect_mask(pred.original_map(64, 64)).all()  # its mask still shows the pixels
    rec = pred.to_record()
    assert (rec["n_regions"], rec["largest_region_area"], rec["regions"]) == (0, 0, [])


def test_record_has_the_record_fields_plus_regions() -> None:
    pred = _predict(np.eye(16, dtype=np.float32), 0.7, (16, 16), 64, 64)
    rec = pred.to_record(overlay="x_overlay.png", mask="x_mask.png")
    assert list(rec) == [*RECORD_FIELDS, "regions"]
    assert (rec["overlay"], rec["mask"], rec["label"]) == ("x_overlay.png", "x_mask.png", "NG")
    assert rec["n_regions"] == 1 and rec["largest_region_area"] == 16  # the diagonal is one region
    assert rec["regions"] == [r.to_dict() for r in pred.regions]
    assert json.loads(json.dumps(rec)) == rec
    assert pred.to_record()["overlay"] is None


def test_writer_puts_regions_in_json_csv_and_overlay(tmp_path: Path) -> None:
    width, height, resize, crop = 97, 45, 80, 64
    m = np.zeros((16, 16), np.float32)
    m[4:8, 2:6] = 1.0
    m[11:13, 10:15] = 0.75
    ng = _predict(m, 0.9, (width, height), resize, crop)
    (ok,) = decide(
        IDENTITY, ["ok.png"], [(width, height)], np.array([0.1]), m[None], resize=resize, crop=crop
    )
    writer = PredictionWriter(tmp_path, ["x.png", "ok.png"], resize, crop)
    image = Image.new("RGB", (width, height), (128, 128, 128))
    writer.add(ng, image)
    writer.add(ok, image)
    report = writer.finish(IDENTITY, [])
    assert report.n_regions == 2
    with (tmp_path / "predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(RECORD_FIELDS)  # flat: no regions column
    assert [(r["n_regions"], r["largest_region_area"]) for r in rows] == [
        ("2", str(ng.regions[0].area)),
        ("0", "0"),
    ]
    images = json.loads((tmp_path / "predictions.json").read_text(encoding="utf-8"))["images"]
    assert images[0]["regions"] == [r.to_dict() for r in ng.regions] and images[1]["regions"] == []
    overlay = np.asarray(Image.open(tmp_path / "x_overlay.png"))
    for r in ng.regions:
        for y, x in [(r.y0, r.x0), (r.y0, r.x1 - 1), (r.y1 - 1, r.x0), (r.y1 - 1, r.x1 - 1)]:
            assert tuple(overlay[y, x]) == BOX_COLOR
    assert not np.all(np.asarray(Image.open(tmp_path / "ok_overlay.png")) == BOX_COLOR, axis=-1).any()
