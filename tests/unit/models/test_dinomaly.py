from __future__ import annotations

import pytest
import torch

from ssfilter.config import ModelConfig
from ssfilter.models.dinomaly import Bottleneck, DinomalyModel, tokens_to_grid
from ssfilter.models.encoders import build_encoder


def _model(attention: str = "mlla", **kw) -> DinomalyModel:
    enc = build_encoder("tiny_vit", allow_random=True)
    return DinomalyModel(enc, ModelConfig(backbone="tiny_vit", attention=attention, **kw), crop=32)


def test_forward_shapes_and_groups() -> None:
    model = _model().eval()
    rec = model(torch.randn(3, 3, 32, 32))
    assert len(rec.encoder) == len(rec.decoder) == 2
    for e, d in zip(rec.encoder, rec.decoder, strict=True):
        assert e.shape == d.shape == (3, 48, 4, 4)
    assert not rec.encoder[0].requires_grad


def test_loose_reconstruction_grouping_reverses_decoder_blocks() -> None:
    model = _model().eval()
    outs: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o)) for blk in model.decoder]
    feats = model.encode(torch.randn(2, 3, 32, 32))
    dec = model.decode(feats)
    for h in hooks:
        h.remove()
    grid = feats.grid
    # decoder blocks 7..4 -> group 0, blocks 3..0 -> group 1
    torch.testing.assert_close(dec[0], tokens_to_grid(torch.stack(outs[4:]).mean(0), grid))
    torch.testing.assert_close(dec[1], tokens_to_grid(torch.stack(outs[:4]).mean(0), grid))


def test_mc_passes_are_batched_and_differ() -> None:
    model = _model().eval()
    feats = model.encode(torch.randn(2, 3, 32, 32))
    dec = model.decode(feats, mc_passes=4)
    assert dec[0].shape[0] == 8
    # dropout forced on although the model is in eval mode: passes differ
    assert not torch.allclose(dec[0][0:2], dec[0][2:4])
    # without MC passes, eval mode is deterministic
    torch.testing.assert_close(model.decode(feats)[0], model.decode(feats)[0])


def test_bottleneck_dropout_three_places() -> None:
    torch.manual_seed(0)
    b = Bottleneck(8, 8, dropout=0.5).eval()
    x = torch.randn(4, 8)
    torch.testing.assert_close(b(x), b(x))
    b.train()
    assert not torch.allclose(b(x), b(x))
    b.p = 0.0
    torch.testing.assert_close(b(x), b.fc2(b.act(b.fc1(x))))


def test_only_decoder_side_is_trainable() -> None:
    model = _model()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and not any(n.startswith("encoder.") for n in names)
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.")
    )


def test_linear_attention_ablation_builds() -> None:
    model = _model("linear").eval()
    rec = model(torch.randn(1, 3, 32, 32))
    assert rec.decoder[0].shape == (1, 48, 4, 4)
    assert type(model.decoder[0]).__name__ != type(_model("mlla").decoder[0]).__name__


def test_heads_project_cnn_groups() -> None:
    enc = build_encoder("mobilenet_v2", allow_random=True)
    model = DinomalyModel(enc, ModelConfig(backbone="mobilenet_v2", decoder_dim=64, decoder_heads=4), crop=64)
    rec = model(torch.randn(1, 3, 64, 64))
    assert [d.shape[1] for d in rec.decoder] == enc.group_dims
    assert [d.shape for d in rec.decoder] == [e.shape for e in rec.encoder]


def test_bad_configs() -> None:
    enc = build_encoder("tiny_vit", allow_random=True)
    with pytest.raises(ValueError, match="multiple of"):
        DinomalyModel(enc, ModelConfig(decoder_depth=7), crop=32)
    with pytest.raises(ValueError, match="divisible"):
        DinomalyModel(enc, ModelConfig(decoder_dim=50, decoder_heads=4), crop=32)
    with pytest.raises(ValueError):
        DinomalyModel(enc, ModelConfig(attention="softmax"), crop=32)


def test_paper_parameter_count() -> None:
    """Paper Table 3: SSFilter with ViT-S has 31.7M parameters."""
    from ssfilter.api import model_info
    from ssfilter.config import get_preset

    info = model_info(get_preset("paper-256-224"))
    assert abs(info["params_total"] - 31.7e6) <= 0.2e6, info["params_total"]
    assert info["grid"] == [16, 16]
