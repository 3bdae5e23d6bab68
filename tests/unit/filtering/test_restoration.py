"""Tests of restoration (paper §3.5): material extraction, foreground masks, synthesis, the material bank."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssfilter.filtering.foreground import foreground_masks
from ssfilter.filtering.material_bank import MaterialBank
from ssfilter.filtering.materials import Material, extract_material, extract_materials
from ssfilter.filtering.synthesis import (
    materials_per_image,
    paste_materials,
    rotate_material,
    synthesize_batch,
)

S = 32


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(seed: int = 0, size: int = S) -> torch.Tensor:
    return torch.randn(3, size, size, generator=_gen(seed))


def _material(h: int = 5, w: int = 5, colour: float | None = None, seed: int = 1) -> Material:
    pixels = (
        torch.full((3, h, w), colour) if colour is not None else torch.rand(3, h, w, generator=_gen(seed))
    )
    return Material(pixels=pixels, mask=torch.ones(h, w, dtype=torch.bool), source_index=0, peak=(0, 0))


def _disc(size: int, radius: float, inside: float, outside: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 < radius**2
    return torch.where(disc, inside, outside).expand(3, size, size).clone(), disc


def _patch_features(image: torch.Tensor, patch: int) -> torch.Tensor:
    """Raw pixel patches as features ``[1, H*W, 3*patch*patch]``, row-major grid."""
    c, h, w = image.shape
    cells = image.unfold(1, patch, patch).unfold(2, patch, patch)  # [C, gh, gw, p, p]
    return cells.permute(1, 2, 0, 3, 4).reshape(1, (h // patch) * (w // patch), c * patch * patch)


# ------------------------------------------------------------------------------------------------
# extract_material


def test_extract_picks_peak_region_not_larger_lower_region() -> None:
    acc = torch.zeros(S, S)
    acc[4:7, 5:8] = 1.0  # small blob holding the peak
    acc[18:26, 16:28] = 0.9  # larger blob, above T_p too, but lower
    image = _image()
    material = extract_material(image, acc, source_index=3)
    assert material is not None
    assert material.mask.shape == (3, 3) and bool(material.mask.all())
    assert material.peak == (4, 5)  # first arg-max
    assert material.source_index == 3
    assert torch.equal(material.pixels, image[:, 4:7, 5:8])


def test_threshold_is_percentile_when_below_max_ratio() -> None:
    # 400 pixels: 391 zeros, 8 x 0.5 around one 1.0 peak. 99th percentile (linear) = 0.5 < 0.8 -> T_p = 0.5.
    acc = torch.zeros(20, 20)
    acc[9:12, 9:12] = 0.5
    acc[10, 10] = 1.0
    material = extract_material(_image(size=20), acc * 3.0 + 5.0)  # min-max normalisation: affine invariant
    assert material is not None and int(material.mask.sum()) == 9
    # with the percentile at 100 the 0.8 * max term binds: only the peak pixel
    material = extract_material(_image(size=20), acc, percentile=100.0)
    assert material is not None and material.mask.shape == (1, 1)
    # a lower max_ratio binds again
    material = extract_material(_image(size=20), acc, max_ratio=0.3, percentile=100.0)
    assert material is not None and int(material.mask.sum()) == 9


def test_eight_connectivity_joins_diagonal_pixels() -> None:
    acc = torch.zeros(S, S)
    acc[5, 5], acc[6, 6], acc[7, 7] = 1.0, 0.9, 0.9
    material = extract_material(_image(), acc, percentile=100.0)
    assert material is not None
    assert torch.equal(material.mask, torch.eye(3, dtype=torch.bool))
    four = extract_material(_image(), acc, percentile=100.0, connectivity=4)  # scipy's default
    assert four is not None and torch.equal(four.mask, torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="connectivity"):
        extract_material(_image(), acc, connectivity=6)


def test_crop_is_a_copy_of_the_source_pixels() -> None:
    acc = torch.zeros(S, S)
    acc[10:14, 20:23] = 1.0
    acc[14, 23] = 1.0  # diagonal tail extends the bounding box
    image = _image()
    material = extract_material(image, acc, percentile=100.0)
    assert material is not None
    assert torch.equal(material.pixels, image[:, 10:15, 20:24])
    assert int(material.mask.sum()) == 13 and not bool(material.mask[4, 0])
    image.zero_()
    assert material.pixels.abs().sum() > 0


@pytest.mark.parametrize("fill", [0.0, 7.5, float("nan")])
def test_degenerate_maps_give_none(fill: float) -> None:
    assert extract_material(_image(), torch.full((S, S), fill)) is None


def test_non_finite_values_are_ignored() -> None:
    acc = torch.zeros(S, S)
    acc[3, 3] = float("nan")
    acc[20, 20] = 1.0
    material = extract_material(_image(), acc, percentile=100.0)
    assert material is not None and material.peak == (20, 20)


def test_extract_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        extract_material(_image(), torch.zeros(S, S + 1))


def test_extract_materials_uses_candidates_only() -> None:
    images = torch.randn(4, 3, S, S, generator=_gen(2))
    maps = torch.zeros(4, S, S)
    maps[1, 2, 2] = 1.0
    maps[3, 9, 9] = 1.0
    candidates = torch.tensor([False, True, True, True])  # candidate 2 has a constant map
    materials = extract_materials(images, maps, candidates)
    assert [m.source_index for m in materials] == [1, 3]
    assert [m.peak for m in materials] == [(2, 2), (9, 9)]


# ------------------------------------------------------------------------------------------------
# foreground_masks


@pytest.mark.parametrize(("inside", "outside"), [(0.9, 0.1), (0.1, 0.9)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_foreground_finds_minority_disc(inside: float, outside: float, sign: float) -> None:
    # The principal component's sign is arbitrary; flipping the features' sign forces the other branch of
    # the border-inversion rule, and both must give the disc.
    image, disc = _disc(S, radius=9.0, inside=inside, outside=outside)
    image = image + 0.01 * torch.randn(3, S, S, generator=_gen(4))
    mask = foreground_masks(sign * _patch_features(image, 4), (8, 8), S)
    assert mask.shape == (1, S, S) and mask.dtype == torch.bool
    iou = (mask[0] & disc).sum() / (mask[0] | disc).sum()
    assert iou > 0.7
    assert bool(mask[0, S // 2, S // 2]) and not bool(mask[0, 0, 0])


def test_texture_and_constant_features_fall_back_to_whole_image() -> None:
    noise = torch.rand(3, S, S, generator=_gen(5))
    disc, _ = _disc(S, radius=9.0, inside=0.9, outside=0.1)
    features = torch.cat([_patch_features(noise, 4), torch.ones(1, 64, 48), _patch_features(disc, 4)])
    masks = foreground_masks(features, (8, 8), (S, S + 8))
    assert masks.shape == (3, S, S + 8)
    assert bool(masks[0].all()) and bool(masks[1].all())
    assert not bool(masks[2].all())  # batch entries are independent


def test_foreground_rejects_grid_mismatch() -> None:
    with pytest.raises(ValueError):
        foreground_masks(torch.randn(1, 63, 4), (8, 8), S)


# ------------------------------------------------------------------------------------------------
# rotate_material / paste_materials


def test_rotate_material_right_angles_are_exact() -> None:
    material = _material(2, 3)
    pixels, mask = rotate_material(material, 0.0)
    assert torch.allclose(pixels, material.pixels) and bool(mask.all())
    pixels, mask = rotate_material(material, 90.0)  # counter-clockwise
    assert mask.shape == (3, 2) and bool(mask.all())
    assert torch.allclose(pixels, torch.rot90(material.pixels, 1, (1, 2)), atol=1e-5)


def test_paste_changes_only_masked_pixels_with_material_content() -> None:
    image = _image()
    original = image.clone()
    foreground = torch.zeros(S, S, dtype=torch.bool)
    foreground[12:20, 12:20] = True
    out, mask = paste_materials(image, [_material(colour=4.0)], foreground, 3, _gen(7))
    assert torch.equal(image, original)  # input untouched
    assert mask.any()
    assert torch.equal(out[:, ~mask], original[:, ~mask])
    assert torch.allclose(out[:, mask], torch.full_like(out[:, mask], 4.0))  # fully inside: material colour


def test_pasted_values_come_from_the_material() -> None:
    material = _material(6, 4)
    out, mask = paste_materials(_image(), [material], torch.ones(S, S, dtype=torch.bool), 2, _gen(8))
    inside = out[:, mask]
    low = material.pixels.flatten(1).min(1).values[:, None] - 1e-5
    high = material.pixels.flatten(1).max(1).values[:, None] + 1e-5
    assert bool(((inside >= low) & (inside <= high)).all())  # bilinear: convex combinations


def test_paste_centres_on_foreground() -> None:
    foreground = torch.zeros(S, S, dtype=torch.bool)
    foreground[21, 9] = True
    for seed in range(5):
        _, mask = paste_materials(_image(), [_material(5, 5)], foreground, 1, _gen(seed))
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert abs(rows.float().mean() - 21) <= 1.0 and abs(cols.float().mean() - 9) <= 1.0


def test_paste_clips_at_the_border() -> None:
    foreground = torch.zeros(S, S, dtype=torch.bool)
    foreground[0, S - 1] = True
    out, mask = paste_materials(_image(), [_material(11, 11, colour=2.0)], foreground, 1, _gen(9))
    assert out.shape == (3, S, S) and bool(mask[0, S - 1])
    assert int(mask.sum()) < 11 * 11


def test_paste_is_reproducible() -> None:
    materials = [_material(5, 3, seed=1), _material(4, 7, seed=2)]
    foreground = torch.ones(S, S, dtype=torch.bool)
    a = paste_materials(_image(), materials, foreground, 3, _gen(11))
    b = paste_materials(_image(), materials, foreground, 3, _gen(11))
    c = paste_materials(_image(), materials, foreground, 3, _gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_paste_without_materials_returns_a_copy() -> None:
    image = _image()
    out, mask = paste_materials(image, [], torch.ones(S, S, dtype=torch.bool), 3, _gen())
    assert torch.equal(out, image) and out is not image and not mask.any()


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 4),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
)
def test_paste_invariants(seed: int, n: int, h: int, w: int) -> None:
    image = _image(seed % 7, size=24)
    foreground = torch.rand(24, 24, generator=_gen(seed)) > 0.5
    out, mask = paste_materials(image, [_material(h, w, seed=seed)], foreground, n, _gen(seed))
    assert out.shape == image.shape and mask.shape == (24, 24)
    assert torch.equal(out[:, ~mask], image[:, ~mask])
    assert mask.any() == (n > 0)


# ------------------------------------------------------------------------------------------------
# materials_per_image / synthesize_batch


def test_materials_per_image_schedule() -> None:
    total = 1000
    values = [materials_per_image(i, total) for i in range(total)]
    assert values[0] == 1 and values[-1] == 5
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert set(values) == {1, 2, 3, 4, 5}
    assert [values.count(v) for v in range(1, 6)] == [200] * 5  # equal stages
    assert materials_per_image(5000, total) == 5 and materials_per_image(0, 1) == 1
    assert materials_per_image(1, 2, n_min=1, n_max=10) == 10
    with pytest.raises(ValueError):
        materials_per_image(0, 0)


def test_synthesize_batch_shapes_and_sources() -> None:
    kept = torch.randn(3, 3, S, S, generator=_gen(13))
    foreground = torch.ones(3, S, S, dtype=torch.bool)
    synthetic, source, masks = synthesize_batch(kept, foreground, [_material(colour=3.0)], 5, 2, _gen(14))
    assert synthetic.shape == (5, 3, S, S) and masks.shape == (5, S, S) and masks.dtype == torch.bool
    assert source.dtype == torch.long and source.shape == (5,)
    assert bool(((source >= 0) & (source < 3)).all())
    for i in range(5):
        assert masks[i].any()
        assert torch.equal(synthetic[i][:, ~masks[i]], kept[source[i]][:, ~masks[i]])


@pytest.mark.parametrize(("n_kept", "n_materials", "count"), [(3, 0, 2), (0, 1, 2), (3, 1, 0)])
def test_synthesize_batch_empty_cases(n_kept: int, n_materials: int, count: int) -> None:
    kept = torch.randn(n_kept, 3, S, S)
    foreground = torch.ones(n_kept, S, S, dtype=torch.bool)
    synthetic, source, masks = synthesize_batch(
        kept, foreground, [_material()] * n_materials, count, 1, _gen()
    )
    assert synthetic.shape == (0, 3, S, S) and source.shape == (0,) and masks.shape == (0, S, S)
    assert source.dtype == torch.long and masks.dtype == torch.bool


# ------------------------------------------------------------------------------------------------
# MaterialBank


def _tagged(i: int) -> Material:
    return Material(
        torch.full((3, 2, i + 1), float(i)), torch.ones(2, i + 1, dtype=torch.bool), i, (i, 2 * i)
    )


def test_bank_is_a_fifo_with_capacity() -> None:
    bank = MaterialBank(capacity=3)
    bank.add([_tagged(0), _tagged(1)])
    bank.add([])
    bank.add([_tagged(2), _tagged(3), _tagged(4)])
    assert len(bank) == 3 and [m.source_index for m in bank.materials] == [2, 3, 4]
    picks = bank.sample(10, _gen(15))
    assert len(picks) == 10 and {m.source_index for m in picks} <= {2, 3, 4}
    assert MaterialBank().sample(4, _gen()) == []


def test_bank_capacity_zero_keeps_current_batch_only() -> None:
    bank = MaterialBank(capacity=0)
    bank.add([_tagged(0), _tagged(1)])
    assert len(bank) == 2
    bank.add([_tagged(2)])
    assert [m.source_index for m in bank.materials] == [2]
    bank.add([])
    assert len(bank) == 0


@pytest.mark.parametrize("n", [0, 3])
def test_bank_state_dict_round_trip(n: int) -> None:
    bank = MaterialBank(capacity=5)
    bank.add([_tagged(i) for i in range(n)])
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    restored = MaterialBank(capacity=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.capacity == 5 and len(restored) == n
    for a, b in zip(bank.materials, restored.materials, strict=True):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.mask, b.mask)
        assert a.mask.dtype == b.mask.dtype and a.source_index == b.source_index and a.peak == b.peak
    sampled = [m.source_index for m in bank.sample(6, _gen(16))]
    assert [m.source_index for m in restored.sample(6, _gen(16))] == sampled


def test_foreground_is_unaffected_by_autocast_and_tiny_grids() -> None:
    disc, _ = _disc(S, radius=9.0, inside=0.9, outside=0.1)
    features = _patch_features(disc, 4)
    expected = foreground_masks(features, (8, 8), S)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(foreground_masks(features, (8, 8), S), expected)
    assert bool(foreground_masks(torch.randn(2, 1, 5), (1, 1), 8).all())
    assert foreground_masks(torch.randn(0, 4, 5), (2, 2), 8).shape == (0, 8, 8)
