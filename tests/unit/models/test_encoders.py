from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders import BACKBONES, build_encoder

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet.safetensors"


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


def test_missing_weights_file() -> None:
    with pytest.raises(WeightsUnavailableError, match="not found"):
        build_encoder("mobilenet_v2", "/nonexistent/weights.safetensors")
    with pytest.raises(WeightsUnavailableError, match="--weights"):
        build_encoder("mobilenet_v2")


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_encoder("resnet9000")


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


def test_crop_must_fit_stride() -> None:
    enc = build_encoder("tiny_vit", allow_random=True)
    with pytest.raises(ValueError, match="multiple"):
        enc.check_crop(60)


@pytest.mark.skipif(
    not MOBILENET.is_file(), reason="needs ../shared/weights/mobilenet_v2_imagenet.safetensors"
)
def test_mobilenet_real_weights_load_strictly() -> None:
    enc = build_encoder("mobilenet_v2", str(MOBILENET))
    feats = enc(torch.zeros(1, 3, 224, 224))
    assert feats.grid == (28, 28)
    assert enc.group_dims == [56, 160]


def test_backbone_list() -> None:
    assert set(BACKBONES) >= {
        "dinov2_vits14_reg",
        "dinov2_vitb14_reg",
        "dinov2_vitl14_reg",
        "mobilenet_v2",
        "tiny_vit",
    }


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
