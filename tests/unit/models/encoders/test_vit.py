"""Tests of the ViT encoders: DINOv2 weight loading (Meta, timm), Eq. 1 features, position tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders import build_encoder
from ssfilter.models.encoders.vit import DINOV2_SPECS


def _meta_state_from_timm(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Write a timm DINOv2-reg state dict with Meta's original key names and layout.

    Meta keeps the CLS position inside ``pos_embed`` (1 + 37*37 rows), calls the registers
    ``register_tokens`` and stores an unused ``mask_token``; timm folds the CLS position into
    ``cls_token``. The inverse mapping is written out by hand here so the test does not rely on the
    converter it checks.
    """
    g = torch.Generator().manual_seed(5)
    dim = timm_state["cls_token"].shape[-1]
    pos_cls = torch.randn(1, 1, dim, generator=g)
    meta = {k: v.clone() for k, v in timm_state.items() if k not in {"cls_token", "reg_token", "pos_embed"}}
    meta["cls_token"] = timm_state["cls_token"] - pos_cls
    meta["pos_embed"] = torch.cat([pos_cls, timm_state["pos_embed"]], dim=1)
    meta["register_tokens"] = timm_state["reg_token"].clone()
    meta["mask_token"] = torch.randn(1, dim, generator=g)
    return meta


@pytest.fixture(scope="module")
def vits_random_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0)
    state = model.state_dict()
    # Random, non-trivial layer scales so that every block matters for the comparison.
    for k in state:
        if k.endswith("gamma"):
            state[k] = torch.rand_like(state[k]) * 0.5 + 0.1
    return state


def test_meta_checkpoint_loads_strictly_and_matches_timm(tmp_path: Path, vits_random_state) -> None:
    import timm

    meta = _meta_state_from_timm(vits_random_state)
    assert meta["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    assert "register_tokens" in meta and "mask_token" in meta
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(meta, path)

    enc = build_encoder("dinov2_vits14_reg", str(path))
    ref = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True
    )
    ref.load_state_dict(vits_random_state, strict=True)
    ref.eval()

    x = torch.randn(2, 3, 112, 112)
    feats = enc(x)
    assert feats.grid == (8, 8) and feats.num_prefix == 5
    with torch.no_grad():
        want = ref.forward_intermediates(
            x,
            indices=[2, 3, 4, 5, 6, 7, 8, 9],
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
    for got, (patches, prefix) in zip(feats.layers, want, strict=True):
        torch.testing.assert_close(got[:, 5:], patches, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[:, :5], prefix, rtol=1e-4, atol=1e-4)


def test_timm_safetensors_loads(tmp_path: Path, vits_random_state) -> None:
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in vits_random_state.items()}, str(path))
    enc = build_encoder("dinov2_vits14_reg", str(path))
    torch.testing.assert_close(
        enc.vit.blocks[0].attn.qkv.weight, vits_random_state["blocks.0.attn.qkv.weight"]
    )


def test_checkpoint_with_wrong_keys_is_rejected(tmp_path: Path, vits_random_state) -> None:
    meta = _meta_state_from_timm(vits_random_state)
    meta.pop("blocks.3.attn.qkv.weight")
    path = tmp_path / "broken.pth"
    torch.save(meta, path)
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        build_encoder("dinov2_vits14_reg", str(path))


def test_offline_without_weights_fails_fast_with_instructions(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        build_encoder("dinov2_vits14_reg")


def test_vit_groups_and_descriptor_follow_spec() -> None:
    enc = build_encoder("tiny_vit", allow_random=True)
    feats = enc(torch.randn(1, 3, 32, 32))
    p = feats.num_prefix
    layers = [t[:, p:] for t in feats.layers]
    g0, g1 = enc.groups(feats)
    torch.testing.assert_close(g0, sum(layers[:4]) / 4)
    torch.testing.assert_close(g1, sum(layers[4:]) / 4)
    desc = enc.patch_descriptors(feats)
    d = layers[0].shape[-1]
    torch.testing.assert_close(desc[..., :d], layers[0])
    torch.testing.assert_close(desc[..., d : 2 * d], layers[3])
    torch.testing.assert_close(desc[..., 2 * d :], (layers[0] + layers[3] + layers[7]) / 3)
    torch.testing.assert_close(enc.bottleneck_input(feats), torch.stack(feats.layers).mean(0))


def test_blocks_after_last_target_are_dropped() -> None:
    enc = build_encoder("dinov2_vits14_reg", allow_random=True)
    assert len(enc.vit.blocks) == 10
    full = build_encoder("dinov2_vits14_reg", allow_random=True, keep_all_blocks=True)
    assert len(full.vit.blocks) == 12


@pytest.mark.parametrize("no_embed_class", [True, False])
@pytest.mark.parametrize("size", [64, 48, 80])
def test_cached_position_table_equals_timm(no_embed_class: bool, size: int) -> None:
    """Positions from the cached table equal timm's own per-call resampling, at native and other sizes."""
    from timm.models.vision_transformer import VisionTransformer

    from ssfilter.models.encoders import ViTEncoder

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=64,
        patch_size=8,
        embed_dim=24,
        depth=8,
        num_heads=2,
        num_classes=0,
        reg_tokens=2,
        dynamic_img_size=True,
        no_embed_class=no_embed_class,
    )
    enc = ViTEncoder("test_vit", vit, tuple(range(8)), 2)
    x = torch.randn(2, 3, size, size)
    patches = vit.patch_embed(x)
    torch.testing.assert_close(enc._add_positions(patches), vit._pos_embed(patches), rtol=0, atol=0)
    assert ((size // 8, size // 8),) == tuple({k[0] for k in enc._pos_tables})


def test_position_table_follows_new_weights() -> None:
    """Loading other weights (or moving the module) must not reuse a table of the old position embedding."""
    enc = build_encoder("tiny_vit", allow_random=True)
    x = torch.randn(1, 3, 48, 48)
    before = enc(x).layers[0].clone()
    state = {k: v.clone() for k, v in enc.vit.state_dict().items()}
    state["pos_embed"] = state["pos_embed"] + 1.0
    enc.vit.load_state_dict(state)
    after = enc(x).layers[0]
    assert not torch.allclose(before, after)
    fresh = build_encoder("tiny_vit", allow_random=True)
    fresh.vit.load_state_dict(state)
    torch.testing.assert_close(after, fresh(x).layers[0], rtol=0, atol=0)
    assert len(enc._pos_tables) == 1, "tables of replaced weights are dropped"


def test_offline_message_names_the_meta_and_hub_files(monkeypatch) -> None:
    monkeypatch.setenv("SSFILTER_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsUnavailableError) as info:
        build_encoder("dinov2_vits14_reg")
    text = str(info.value)
    assert text.startswith("offline mode is set.")
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth" in text
    assert "timm/vit_small_patch14_reg4_dinov2.lvd142m" in text and text.endswith("pass --weights PATH.")
    hint = DINOV2_SPECS["dinov2_vitl14_reg"].hint("dinov2_vitl14_reg")
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth" in hint
    assert "timm/vit_large_patch14_reg4_dinov2.lvd142m (model.safetensors)" in hint


def test_dinov2_sizes() -> None:
    """Widths and target layers of the released DINOv2-reg models (S/B/L: 12/12/24 blocks)."""
    assert {n: (s.dim, s.heads) for n, s in DINOV2_SPECS.items()} == {
        "dinov2_vits14_reg": (384, 6),
        "dinov2_vitb14_reg": (768, 12),
        "dinov2_vitl14_reg": (1024, 16),
    }
    assert DINOV2_SPECS["dinov2_vitl14_reg"].target_layers == (4, 6, 8, 10, 12, 14, 16, 18)
    enc = build_encoder("dinov2_vits14_reg", allow_random=True)
    assert (enc.embed_dim, enc.num_heads, enc.stride, enc.num_prefix) == (384, 6, 14, 5)


def test_tiny_vit_weights_round_trip(tmp_path: Path) -> None:
    first = build_encoder("tiny_vit", allow_random=True, seed=1)
    other = build_encoder("tiny_vit", allow_random=True, seed=2)
    assert not torch.equal(first.vit.pos_embed, other.vit.pos_embed), "the seed sets the random weights"
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in first.vit.state_dict().items()}, str(path))
    loaded = build_encoder("tiny_vit", str(path), seed=2)
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(first(x).layers, loaded(x).layers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    broken = tmp_path / "broken.pth"
    torch.save({"pos_embed": torch.zeros(1, 64, 48)}, broken)
    with pytest.raises(WeightsUnavailableError, match="not a tiny_vit state dict"):
        build_encoder("tiny_vit", str(broken))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_encoder("tiny_vit", str(tmp_path / "missing.pth"))
