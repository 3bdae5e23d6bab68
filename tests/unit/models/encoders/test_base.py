"""Tests of the encoder interface and of the capabilities callers ask about instead of the encoder's type."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor

import ssfilter
from ssfilter.models.encoders import Encoder, EncoderFeatures, build_encoder


@pytest.mark.parametrize("name", ["tiny_vit", "mobilenet_v2"])
def test_interface_shapes(name: str) -> None:
    enc = build_encoder(name, allow_random=True)
    crop = 64
    feats = enc(torch.randn(2, 3, crop, crop))
    h, w = enc.grid_size(crop)
    assert feats.grid == (h, w)
    assert [t.shape[-1] for t in feats.layers] == enc.layer_dims
    for t in feats.layers:
        assert t.shape == (2, enc.num_prefix + h * w, t.shape[-1])
    groups = enc.groups(feats)
    assert [g.shape for g in groups] == [(2, h * w, d) for d in enc.group_dims]
    assert enc.bottleneck_input(feats).shape == (2, enc.num_prefix + h * w, enc.bottleneck_dim)
    assert enc.patch_descriptors(feats).shape == (2, h * w, enc.descriptor_dim)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training, "a frozen encoder must stay in eval mode"


def test_crop_must_fit_stride() -> None:
    enc = build_encoder("tiny_vit", allow_random=True)
    with pytest.raises(ValueError, match="multiple"):
        enc.check_crop(60)


class _PlainEncoder(Encoder):
    """Identity-ish encoder: one layer, the 2x2-pooled image as tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.name, self.stride, self.num_prefix = "plain", 2, 0

    def extract(self, images: Tensor) -> EncoderFeatures:
        x = torch.nn.functional.avg_pool2d(images, 2)
        return EncoderFeatures([x.flatten(2).transpose(1, 2)], tuple(x.shape[-2:]), 0)

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        return [feats.layers[0]]

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        return feats.layers[0]

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        return feats.layers[0]


def test_encoder_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Encoder()  # type: ignore[abstract]

    class NoDescriptors(Encoder):
        def extract(self, images: Tensor) -> EncoderFeatures:
            raise AssertionError

        def groups(self, feats: EncoderFeatures) -> list[Tensor]:
            raise AssertionError

        def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
            raise AssertionError

    with pytest.raises(TypeError, match="patch_descriptors"):
        NoDescriptors()  # type: ignore[abstract]


def test_base_defaults_and_behaviour() -> None:
    enc = _PlainEncoder()
    assert enc.prefers_channels_last is False and enc.pooled_descriptors is False
    x = torch.randn(1, 3, 4, 6)
    feats = enc(x)
    assert feats.grid == (2, 3) and enc.grid_size(8) == (4, 4)
    torch.testing.assert_close(enc.foreground_features(feats), feats.layers[0])  # first group by default
    enc.train()
    assert not enc.training


def test_capabilities_of_the_built_in_families() -> None:
    cnn = build_encoder("mobilenet_v2", allow_random=True)
    vit = build_encoder("tiny_vit", allow_random=True)
    assert cnn.prefers_channels_last and cnn.pooled_descriptors
    assert not vit.prefers_channels_last and not vit.pooled_descriptors


def _neighbourhood_mean(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean over each cell's 3x3 neighbourhood inside the grid, by explicit loops (reference)."""
    h, w = grid
    cells = x.reshape(x.shape[0], h, w, x.shape[-1])
    out = torch.empty_like(cells)
    for r in range(h):
        for c in range(w):
            out[:, r, c] = cells[:, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2].mean(dim=(1, 2))
    return out.reshape_as(x)


@pytest.mark.parametrize("name", ["mobilenet_v2", "tiny_vit"])
def test_pooled_descriptors_says_what_the_descriptors_are(name: str) -> None:
    """Pooled descriptors average the 3x3 neighbourhood; unpooled ones depend on their own cell only."""
    enc = build_encoder(name, allow_random=True)
    feats = enc(torch.randn(1, 3, 48, 48))
    h, w = feats.grid
    if enc.pooled_descriptors:
        want = _neighbourhood_mean(
            torch.cat([feats.patches(i) for i in range(len(feats.layers))], -1), (h, w)
        )
        torch.testing.assert_close(enc.patch_descriptors(feats), want)
    before = enc.patch_descriptors(feats)
    cell = w + 1  # row 1, column 1: has neighbours on every side
    for t in feats.layers:
        t[:, feats.num_prefix + cell] += 1.0
    changed = (enc.patch_descriptors(feats) - before).abs().amax(-1)[0] > 1e-6
    neighbours = {cell + dr * w + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)}
    expected = neighbours if enc.pooled_descriptors else {cell}
    assert set(torch.nonzero(changed).flatten().tolist()) == expected


def test_channels_last_gives_the_same_features() -> None:
    """What the trainer does for encoders that prefer channels-last must not change the features."""
    enc = build_encoder("mobilenet_v2", allow_random=True)
    x = torch.randn(2, 3, 64, 64)
    want = enc(x)
    enc.to(memory_format=torch.channels_last)
    got = enc(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(got.layers, want.layers, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _source_trees() -> list[tuple[Path, ast.Module]]:
    root = Path(ssfilter.__file__).parent
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(root.rglob("*.py"))]


def _branches_on_backbone_name(node: ast.AST) -> bool:
    """A comparison or ``startswith``/``endswith`` of a backbone name against a string literal."""
    is_test = isinstance(node, ast.Compare) or (
        isinstance(node, ast.Call) and getattr(node.func, "attr", None) in {"startswith", "endswith"}
    )
    if not is_test:
        return False
    literals = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    families = ("dinov2", "mobilenet", "resnet", "tiny_vit")
    return bool(literals) and (
        "backbone" in ast.unparse(node) or any(f in lit for lit in literals for f in families)
    )


def _isinstance_of_encoder_class(node: ast.AST) -> bool:
    """An ``isinstance(x, CNNEncoder)``-style check of an encoder family."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance"):
        return False
    names = {getattr(n, "id", getattr(n, "attr", None)) for n in ast.walk(node.args[1])}
    return bool(names & {"CNNEncoder", "ViTEncoder"})


def test_no_code_branches_on_the_backbone_type() -> None:
    """Callers ask the encoder's capabilities or the registry, never ``isinstance`` or the backbone name."""
    found = []
    for path, tree in _source_trees():
        in_encoders = "encoders" in path.parts
        for node in ast.walk(tree):
            if _branches_on_backbone_name(node) or (_isinstance_of_encoder_class(node) and not in_encoders):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert found == []
