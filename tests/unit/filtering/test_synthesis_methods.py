"""The synthesis registry (paper Table 5: ours, CutPaste, DRAEM-style) and material-count rules (Table 9)."""

from __future__ import annotations

import pytest
import torch

from ssfilter.config import BatchFilterConfig, RestorationConfig
from ssfilter.filtering.batch_filter import BatchFilter
from ssfilter.filtering.cutpaste import cutpaste
from ssfilter.filtering.draem import draem_blend, perlin_mask, perlin_noise
from ssfilter.filtering.material_counts import (
    FixedCount,
    MaterialCountError,
    RandomCount,
    ScheduledCount,
    parse_material_count,
)
from ssfilter.filtering.materials import Material
from ssfilter.filtering.synthesis import materials_per_image
from ssfilter.filtering.synthesis_registry import (
    SynthesisRequest,
    UnknownSynthesisError,
    get_synthesis,
    list_synthesis,
)

S = 48
METHODS = ("ours", "cutpaste", "draem")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _request(count: int = 4, foreground: torch.Tensor | None = None) -> SynthesisRequest:
    kept = torch.randn(3, 3, S, S, generator=_gen(5))
    fg = foreground if foreground is not None else torch.ones(3, S, S, dtype=torch.bool)
    material = Material(torch.full((3, 6, 4), 4.0), torch.ones(6, 4, dtype=torch.bool), 0, (0, 0))
    return SynthesisRequest(kept, fg, count, [material], [2] * count)


def _run(name: str, seed: int, request: SynthesisRequest) -> tuple[torch.Tensor, ...]:
    return get_synthesis(name)(2).synthesize(request, _gen(seed))


def test_registry_lists_the_paper_methods() -> None:
    assert list_synthesis()[:3] == METHODS
    with pytest.raises(
        UnknownSynthesisError, match="unknown synthesis method 'magic'.*ours, cutpaste, draem"
    ):
        get_synthesis("magic")
    assert get_synthesis("ours").uses_materials and not get_synthesis("cutpaste").uses_materials
    with pytest.raises(ValueError, match="synthetic_per_batch"):
        get_synthesis("draem")(0)


@pytest.mark.parametrize("name", METHODS)
def test_synthesis_changes_only_inside_a_non_empty_mask(name: str) -> None:
    request = _request()
    images, source, masks = _run(name, 3, request)
    assert images.shape == (4, 3, S, S) and masks.shape == (4, S, S) and masks.dtype == torch.bool
    assert source.dtype == torch.long and bool(((source >= 0) & (source < 3)).all())
    for i in range(4):
        clean = request.kept_images[source[i]]
        assert masks[i].any(), "every synthetic image holds an anomaly"
        assert torch.equal(images[i][:, ~masks[i]], clean[:, ~masks[i]])
        assert not torch.equal(images[i], clean)


@pytest.mark.parametrize("name", METHODS)
def test_synthesis_is_deterministic_for_a_seed(name: str) -> None:
    first, second, other = (_run(name, seed, _request()) for seed in (7, 7, 8))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("name", ["cutpaste", "draem"])
def test_baselines_stay_in_the_foreground(name: str) -> None:
    fg = torch.zeros(3, S, S, dtype=torch.bool)
    fg[:, 10:30, 12:40] = True
    _, _, masks = _run(name, 2, _request(count=6, foreground=fg))
    assert bool(masks.any(dim=(1, 2)).all()) and not bool((masks & ~fg[0]).any())


def test_cutpaste_pastes_the_images_own_content() -> None:
    image = torch.arange(3 * S * S, dtype=torch.float32).reshape(3, S, S)
    out, mask = cutpaste(image, torch.ones(S, S, dtype=torch.bool), _gen(1))
    # contrast jitter about the patch mean keeps the patch's mean: pasted values come from the image's range
    assert mask.any() and out[:, mask].min() >= image.min() - 0.2 * image.max()
    assert not torch.equal(out, image)


def test_perlin_noise_and_mask() -> None:
    noise = perlin_noise(50, 70, (4, 8), _gen(0))
    assert noise.shape == (50, 70) and noise.abs().max() <= 1.5 and noise.std() > 0.05
    assert torch.equal(noise, perlin_noise(50, 70, (4, 8), _gen(0)))
    small = torch.zeros(S, S, dtype=torch.bool)
    small[20:23, 20:23] = True  # a tiny foreground the 0.5 threshold usually misses
    for seed in range(10):
        mask = perlin_mask(small, _gen(seed))
        assert mask.any() and not bool((mask & ~small).any())


def test_draem_blend_keeps_the_image_outside_the_mask() -> None:
    image, texture = torch.zeros(3, S, S), torch.ones(3, S, S)
    out, mask = draem_blend(image, texture, torch.ones(S, S, dtype=torch.bool), _gen(4))
    assert mask.any() and torch.all(out[:, ~mask] == 0)
    assert torch.all(out[:, mask] > 0.19)  # (1 - beta) * texture with beta < 0.8


# ------------------------------------------------------------------------------------------------
# material-count rules


def test_material_count_rules_parse() -> None:
    assert parse_material_count("schedule") == ScheduledCount(1, 5)
    assert parse_material_count("schedule", 2, 10) == ScheduledCount(2, 10)
    assert parse_material_count(" schedule:1:10 ") == ScheduledCount(1, 10)
    assert parse_material_count("fixed:2") == FixedCount(2)
    assert parse_material_count("RAND:1:3") == RandomCount(1, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be one of"),
        ("linear", "unknown material-count rule"),
        ("fixed", "takes 1 number"),
        ("fixed:0", "N must be >= 1"),
        ("fixed:two", "whole numbers"),
        ("rand:3:1", "1 <= A <= B"),
        ("rand:0:2", "1 <= A <= B"),
        ("rand:1", "takes 2 number"),
        ("schedule:1:2:3", "takes 2 number"),
    ],
)
def test_material_count_rule_errors(text: str, message: str) -> None:
    with pytest.raises(MaterialCountError, match=message):
        parse_material_count(text)


def test_material_count_rule_values() -> None:
    gen = _gen(0)
    assert ScheduledCount(1, 5).counts(999, 1000, 3, gen) == [5, 5, 5]
    assert ScheduledCount(1, 5).counts(0, 1000, 2, gen) == [materials_per_image(0, 1000)] * 2
    assert FixedCount(2).counts(0, 10, 4, gen) == [2, 2, 2, 2]
    draws = RandomCount(1, 3).counts(0, 10, 300, gen)
    assert set(draws) == {1, 2, 3}
    assert RandomCount(1, 3).counts(0, 10, 50, _gen(9)) == RandomCount(1, 3).counts(0, 10, 50, _gen(9))


def test_batch_filter_rejects_bad_settings_before_training() -> None:
    with pytest.raises(UnknownSynthesisError):
        BatchFilter(BatchFilterConfig(), RestorationConfig(synthesis="poisson"), 10)
    with pytest.raises(MaterialCountError):
        BatchFilter(BatchFilterConfig(), RestorationConfig(material_count="rand:2"), 10)
    with pytest.raises(MaterialCountError, match="materials_min"):
        BatchFilter(BatchFilterConfig(), RestorationConfig(materials_min=4, materials_max=2), 10)
