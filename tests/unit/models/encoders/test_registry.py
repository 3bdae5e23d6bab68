"""Tests of the encoder registry: registration by decorator, building by name, listing, weight detection."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ssfilter.errors import SSFilterError, WeightsUnavailableError
from ssfilter.models.encoders import (
    BACKBONES,
    Encoder,
    EncoderFeatures,
    UnknownEncoderError,
    build_encoder,
    encoder_entry,
    identify_weights,
    list_encoders,
    register_encoder,
)
from ssfilter.models.encoders.registry import import_submodules, unregister_encoder

BUILT_IN = ["dinov2_vitb14_reg", "dinov2_vitl14_reg", "dinov2_vits14_reg", "mobilenet_v2", "tiny_vit"]


class ToyEncoder(Encoder):
    """One random linear patch embedding (stride 4) as the only target layer."""

    def __init__(self, name: str, weights: Path | None) -> None:
        super().__init__()
        self.name, self.stride, self.num_prefix = name, 4, 0
        self.mean = self.std = (0.5, 0.5, 0.5)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.weights = weights
        self.freeze()

    def extract(self, images: Tensor) -> EncoderFeatures:
        x = self.embed(images)
        return EncoderFeatures([x.flatten(2).transpose(1, 2)], tuple(x.shape[-2:]), 0)

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        return [feats.layers[0]]

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        return feats.layers[0]

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        return feats.layers[0]


@pytest.fixture
def toy() -> Iterator[list[dict[str, object]]]:
    """Register ``toy_net`` for one test; yields the list of calls its builder received."""
    calls: list[dict[str, object]] = []

    @register_encoder("toy_net", stride=4, small_decoder=(16, 2), recognises=lambda s: "embed.weight" in s)
    def toy_net(weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> ToyEncoder:
        calls.append({"weights": weights, "allow_random": allow_random, "keep_all_blocks": keep_all_blocks})
        return ToyEncoder("toy_net", weights)

    yield calls
    unregister_encoder("toy_net")
    assert "toy_net" not in list_encoders()


def test_a_registered_encoder_is_built_by_name(toy: list[dict[str, object]], tmp_path: Path) -> None:
    assert "toy_net" in list_encoders() and "toy_net" in BACKBONES
    enc = build_encoder("toy_net", allow_random=True)
    assert isinstance(enc, ToyEncoder) and enc.name == "toy_net"
    assert toy == [{"weights": None, "allow_random": True, "keep_all_blocks": False}]
    weights = tmp_path / "toy.pth"
    enc = build_encoder("toy_net", str(weights), keep_all_blocks=True)
    assert enc.weights == weights and isinstance(enc.weights, Path)
    assert toy[-1] == {"weights": weights, "allow_random": False, "keep_all_blocks": True}
    entry = encoder_entry("toy_net")
    assert (entry.name, entry.stride, entry.small_decoder) == ("toy_net", 4, (16, 2))
    assert enc(torch.zeros(1, 3, 16, 16)).grid == (4, 4)


def test_build_seeds_the_weights_and_leaves_the_global_generator_alone(toy: list[dict[str, object]]) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_encoder("toy_net", allow_random=True, seed=7)
    assert torch.equal(torch.rand(3), expected_next), "building must not consume the caller's random stream"
    b = build_encoder("toy_net", allow_random=True, seed=7)
    c = build_encoder("toy_net", allow_random=True, seed=8)
    assert torch.equal(a.embed.weight, b.embed.weight)
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_duplicate_names_are_rejected(toy: list[dict[str, object]]) -> None:
    def other(weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> Encoder:
        raise AssertionError("never built")

    for name in ("toy_net", "mobilenet_v2"):
        with pytest.raises(ValueError, match=f"encoder '{name}' is already registered"):
            register_encoder(name, stride=4)(other)
    assert isinstance(build_encoder("toy_net", allow_random=True), ToyEncoder), "the first one stays"


def test_bad_stride_is_rejected() -> None:
    with pytest.raises(ValueError, match="stride must be positive"):
        register_encoder("no_stride", stride=0)
    assert "no_stride" not in BACKBONES


def test_unknown_name_lists_the_known_ones(toy: list[dict[str, object]]) -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'") as info:
        build_encoder("resnet9000")
    assert isinstance(info.value, UnknownEncoderError) and isinstance(info.value, SSFilterError)
    for name in [*BUILT_IN, "toy_net"]:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="unknown backbone"):
        encoder_entry("resnet9000")
    with pytest.raises(ValueError, match="unknown backbone"):
        unregister_encoder("resnet9000")


def test_listing_is_sorted_and_live(toy: list[dict[str, object]]) -> None:
    assert list_encoders() == sorted([*BUILT_IN, "toy_net"])
    assert list(BACKBONES) == list_encoders() and len(BACKBONES) == len(BUILT_IN) + 1
    assert BACKBONES[0] == "dinov2_vitb14_reg" and BACKBONES[-2:] == ["tiny_vit", "toy_net"]
    assert "resnet9000" not in BACKBONES and "toy_net" in repr(BACKBONES)


def test_built_in_entries_match_the_built_encoders() -> None:
    """Stride and small decoder are declared before building; they must agree with the built encoder."""
    for name in ("dinov2_vits14_reg", "mobilenet_v2", "tiny_vit"):
        entry = encoder_entry(name)
        enc = build_encoder(name, allow_random=True)
        assert entry.stride == enc.stride, name
        if entry.small_decoder is not None:
            width, heads = entry.small_decoder
            assert width % heads == 0
    assert {n: encoder_entry(n).stride for n in BUILT_IN} == {
        "dinov2_vitb14_reg": 14,
        "dinov2_vitl14_reg": 14,
        "dinov2_vits14_reg": 14,
        "mobilenet_v2": 8,
        "tiny_vit": 8,
    }


def test_identify_weights(toy: list[dict[str, object]], tmp_path: Path) -> None:
    def write(name: str, state: dict[str, Tensor]) -> Path:
        path = tmp_path / name
        if path.suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, path)
        return path

    vit_b = {
        "patch_embed.proj.weight": torch.zeros(768, 3, 14, 14),
        "blocks.0.norm1.weight": torch.zeros(768),
    }
    assert identify_weights(write("vitb.safetensors", vit_b)) == "dinov2_vitb14_reg"
    vit_l = {"patch_embed.proj.weight": torch.zeros(1024, 3, 14, 14), "blocks.0.norm1.weight": torch.zeros(1)}
    assert identify_weights(write("vitl.pth", vit_l)) == "dinov2_vitl14_reg"
    assert (
        identify_weights(write("mnv2.pth", {"features.0.0.weight": torch.zeros(32, 3, 3, 3)}))
        == "mobilenet_v2"
    )
    assert identify_weights(write("toy.safetensors", {"embed.weight": torch.zeros(8, 3, 4, 4)})) == "toy_net"
    # A ViT of another width, a ViT without blocks, an unrelated network, no state dict at all.
    vit_t = {
        "patch_embed.proj.weight": torch.zeros(192, 3, 16, 16),
        "blocks.0.norm1.weight": torch.zeros(192),
    }
    assert identify_weights(write("vit_tiny.pth", vit_t)) is None
    assert (
        identify_weights(write("stem.pth", {"patch_embed.proj.weight": torch.zeros(384, 3, 14, 14)})) is None
    )
    assert identify_weights(write("fc.safetensors", {"fc.weight": torch.zeros(2, 2)})) is None
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listing)
    assert identify_weights(listing) is None
    with pytest.raises(WeightsUnavailableError, match="not found"):
        identify_weights(tmp_path / "missing.pth")


def test_import_submodules_registers_a_new_backbone_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new module in a package registers its backbone on import; private modules are skipped."""
    pkg = tmp_path / "ssfilter_test_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_private.py").write_text("raise AssertionError('private modules are not imported')\n")
    (pkg / "widenet.py").write_text(
        textwrap.dedent(
            """
            from ssfilter.models.encoders import register_encoder

            @register_encoder("widenet_from_file", stride=16)
            def widenet(weights, *, allow_random, keep_all_blocks):
                raise NotImplementedError
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_submodules("ssfilter_test_plugins") == ["ssfilter_test_plugins.widenet"]
        assert encoder_entry("widenet_from_file").stride == 16
    finally:
        if "widenet_from_file" in BACKBONES:
            unregister_encoder("widenet_from_file")
        for mod in [m for m in sys.modules if m.startswith("ssfilter_test_plugins")]:
            del sys.modules[mod]


def test_the_encoders_package_imports_all_its_modules() -> None:
    names = import_submodules("ssfilter.models.encoders")
    assert {n.rsplit(".", 1)[1] for n in names} >= {"base", "cnn", "registry", "vit", "weights"}


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_encoder("resnet9000")


def test_backbone_list() -> None:
    assert set(BACKBONES) >= {
        "dinov2_vits14_reg",
        "dinov2_vitb14_reg",
        "dinov2_vitl14_reg",
        "mobilenet_v2",
        "tiny_vit",
    }
