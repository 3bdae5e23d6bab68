"""ViT encoders through timm: DINOv2 with registers (S/B/L) and the tiny random ViT of the tests.

:class:`ViTEncoder` wraps any timm ``VisionTransformer``; each backbone is one registered builder below.
A DINOv3 or another timm ViT is one more builder (or one more :data:`DINOV2_SPECS` line for a DINOv2 size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderFeatures
from ssfilter.models.encoders.registry import ShapeTest, register_encoder
from ssfilter.models.encoders.weights import download_hub_file, read_state, require_file

__all__ = [
    "DINOV2_SPECS",
    "VIT_DESCRIPTOR_L1",
    "VIT_DESCRIPTOR_L2",
    "DinoV2Spec",
    "ViTEncoder",
    "load_vit_weights",
    "tiny_vit",
]

#: The paper's patch descriptor layers (Eq. 1, §4.1): ``L1 = {0, 3}``, ``L2 = {0, 3, 7}`` of the target list.
VIT_DESCRIPTOR_L1 = (0, 3)
VIT_DESCRIPTOR_L2 = (0, 3, 7)


class ViTEncoder(Encoder):
    """A timm VisionTransformer (DINOv2 with registers, or the tiny test ViT).

    Groups are the means of the first and second half of the target layers (Dinomaly's loose
    reconstruction), the bottleneck input is the mean of all target layers (all tokens), and the
    patch descriptor is Eq. 1 with ``L1 = {0, 3}``, ``L2 = {0, 3, 7}`` (indices into the target list).
    Blocks after the last target layer are dropped at construction, so they are never run.
    """

    def __init__(
        self,
        name: str,
        vit: nn.Module,
        target_layers: tuple[int, ...],
        num_heads: int,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        keep_all_blocks: bool = False,
    ) -> None:
        super().__init__()
        if len(target_layers) != 8:
            raise ValueError("ViT encoders need exactly 8 target layers (two groups of four)")
        self.name = name
        self.vit = vit
        self.target_layers = tuple(target_layers)
        self._run_blocks = max(target_layers) + 1
        if not keep_all_blocks:
            # Blocks after the last target are never run; dropping them saves memory. Parameter
            # counting for Table 3 keeps them (keep_all_blocks=True).
            vit.blocks = vit.blocks[: self._run_blocks]
        dim = int(vit.embed_dim)
        self.mean, self.std = mean, std
        self.layer_dims = [dim] * len(target_layers)
        self.group_dims = [dim, dim]
        self.bottleneck_dim = dim
        self.descriptor_dim = 3 * dim
        self.embed_dim = dim
        self.num_heads = num_heads
        self.stride = int(vit.patch_embed.patch_size[0])
        self.num_prefix = int(vit.num_prefix_tokens)
        self._pos_tables: dict[tuple[object, ...], Tensor] = {}
        self.freeze()

    def extract(self, images: Tensor) -> EncoderFeatures:
        """Run the blocks up to the last target layer and collect raw block outputs (no final norm)."""
        vit = self.vit
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        x = self._add_positions(vit.patch_embed(images))
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        layers: list[Tensor] = []
        for i in range(self._run_blocks):
            x = vit.blocks[i](x)
            if i in self.target_layers:
                layers.append(x)
        return EncoderFeatures(layers, (h, w), self.num_prefix)

    def position_table(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding resampled to ``grid``, computed once per grid and weights.

        The encoder is frozen, so the resampled table is a constant of the input size. Computing it
        once saves a bicubic resampling per forward pass and, because the export traces a cached
        tensor, keeps timm's antialiased bicubic kernel (no ONNX operator) out of exported graphs.
        The key includes the parameter's storage and version, so loading other weights or moving the
        module recomputes it.
        """
        from timm.layers import resample_abs_pos_embed

        vit = self.vit
        pos = vit.pos_embed
        key = (grid, pos.device, pos.dtype, pos.data_ptr(), pos._version)
        table = self._pos_tables.get(key)
        if table is None:
            with torch.no_grad():
                table = resample_abs_pos_embed(
                    pos,
                    new_size=list(grid),
                    old_size=list(vit.patch_embed.grid_size),
                    num_prefix_tokens=0 if vit.no_embed_class else vit.num_prefix_tokens,
                ).detach()
            self._pos_tables = {k: v for k, v in self._pos_tables.items() if k[1:] == key[1:]}
            self._pos_tables[key] = table
        return table

    def _add_positions(self, x: Tensor) -> Tensor:
        """Prefix tokens and positions for ``[B, H, W, C]`` patch embeddings (timm's ``_pos_embed``).

        Written here rather than calling timm's method because timm resamples the table on every call
        (see :meth:`position_table`); the token order and the two prefix conventions are timm's.
        """
        vit = self.vit
        b, h, w, c = x.shape
        pos = self.position_table((int(h), int(w)))  # plain ints: a traced export fixes the size
        x = x.reshape(b, h * w, c)
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if vit.no_embed_class:
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos
        return vit.pos_drop(x)

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Mean of target layers 0-3 and of 4-7, patch tokens only."""
        p = feats.num_prefix
        first = torch.stack(feats.layers[:4]).mean(0)[:, p:]
        second = torch.stack(feats.layers[4:]).mean(0)[:, p:]
        return [first, second]

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        """Mean of all target layers, all tokens (CLS and registers included, as in Dinomaly)."""
        return torch.stack(feats.layers).mean(0)

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        """Eq. 1: concat(layer 0, layer 3, mean(layers 0, 3, 7)) of the target list, patch tokens."""
        return self.layer_descriptors(feats, VIT_DESCRIPTOR_L1, VIT_DESCRIPTOR_L2)


def load_vit_weights(model: nn.Module, path: Path) -> None:
    """Load a Meta ``.pth`` or timm ``.safetensors``/``.pth`` DINOv2 checkpoint strictly.

    Raises:
        WeightsUnavailableError: The file is missing, holds no state dict or does not fit ``model``.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state(require_file(path))
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path}: expected a state dict, got {type(state).__name__}")
    # timm converts Meta's key names (register_tokens, pos_embed with CLS, mlp.w12/w3) and resamples
    # the position table when its grid differs from the model's.
    state = checkpoint_filter_fn(dict(state), model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsUnavailableError(
            f"{path} does not match the {getattr(model, 'default_cfg', {}).get('architecture')} "
            f"architecture: {err}"
        ) from err


# ------------------------------------------------------------------------------------------------
# DINOv2 with registers


@dataclass(frozen=True)
class DinoV2Spec:
    """One DINOv2-with-registers size.

    Attributes:
        timm_name: timm architecture name.
        meta_name: Meta's short name (``dinov2_vits14``), which also names its release folder.
        hf_tag: Tag of timm's weights on the Hugging Face hub.
        dim: Embedding width.
        heads: Attention heads (the natural decoder's too).
        target_layers: The eight blocks whose outputs are the target layers.
    """

    timm_name: str
    meta_name: str
    hf_tag: str
    dim: int
    heads: int
    target_layers: tuple[int, ...]

    def hint(self, name: str) -> str:
        """How to obtain the weights by hand, for error messages."""
        return (
            f"Pretrained weights for {name} are needed. Download them on a machine with internet access, "
            f"e.g. https://dl.fbaipublicfiles.com/dinov2/{self.meta_name}/{self.meta_name}_reg4_pretrain.pth "
            f"(Meta) or the Hugging Face repo timm/{self.timm_name}.{self.hf_tag} (model.safetensors), "
            "then pass --weights PATH."
        )


#: Backbone name -> DINOv2 size. A new size is one line here.
DINOV2_SPECS: dict[str, DinoV2Spec] = {
    "dinov2_vits14_reg": DinoV2Spec(
        "vit_small_patch14_reg4_dinov2", "dinov2_vits14", "lvd142m", 384, 6, (2, 3, 4, 5, 6, 7, 8, 9)
    ),
    "dinov2_vitb14_reg": DinoV2Spec(
        "vit_base_patch14_reg4_dinov2", "dinov2_vitb14", "lvd142m", 768, 12, (2, 3, 4, 5, 6, 7, 8, 9)
    ),
    "dinov2_vitl14_reg": DinoV2Spec(
        "vit_large_patch14_reg4_dinov2", "dinov2_vitl14", "lvd142m", 1024, 16, (4, 6, 8, 10, 12, 14, 16, 18)
    ),
}


def _is_vit_of_width(dim: int) -> ShapeTest:
    """Shape test: a ViT state dict (Meta or timm keys) with embedding width ``dim``."""

    def test(shapes: Mapping[str, tuple[int, ...]]) -> bool:
        embed = shapes.get("patch_embed.proj.weight")
        return embed is not None and int(embed[0]) == dim and any(k.startswith("blocks.") for k in shapes)

    return test


def build_dinov2(
    name: str, spec: DinoV2Spec, weights: Path | None, *, allow_random: bool, keep_all_blocks: bool
) -> ViTEncoder:
    """Build DINOv2 size ``spec``: weights from ``weights``, else random if allowed, else the hub.

    The model keeps DINOv2's native 518 px geometry (37x37 position table, as released), interpolated
    to any crop at run time exactly like DINOv2 itself; this keeps checkpoints loadable without resampling.
    """
    import timm

    vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)
    if weights is not None:
        load_vit_weights(vit, weights)
    elif not allow_random:
        file = download_hub_file(f"timm/{spec.timm_name}.{spec.hf_tag}", "model.safetensors", spec.hint(name))
        load_vit_weights(vit, file)
    return ViTEncoder(name, vit, spec.target_layers, spec.heads, keep_all_blocks=keep_all_blocks)


def _register_dinov2() -> None:
    """Register every size of :data:`DINOV2_SPECS` (patch 14; demo decoder 192 wide, 6 heads)."""
    for name, spec in DINOV2_SPECS.items():
        register_encoder(name, stride=14, small_decoder=(192, 6), recognises=_is_vit_of_width(spec.dim))(
            partial(build_dinov2, name, spec)
        )


_register_dinov2()


# ------------------------------------------------------------------------------------------------
# Tiny random ViT for tests

#: 8 blocks of width 48, patch 8, 4 registers, all blocks are targets.
TINY_VIT = dict(patch_size=8, embed_dim=48, depth=8, num_heads=2, mlp_ratio=2.0, reg_tokens=4)


@register_encoder("tiny_vit", stride=8)
def tiny_vit(weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> ViTEncoder:
    """A tiny ViT for tests and quick checks: random (seeded) unless a weights file is given.

    Raises:
        WeightsUnavailableError: ``weights`` is missing or does not fit the architecture.
    """
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=64, num_classes=0, dynamic_img_size=True, no_embed_class=True, init_values=1e-1, **TINY_VIT
    )
    if weights is not None:
        state = read_state(weights)
        try:
            vit.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise WeightsUnavailableError(f"{weights} is not a tiny_vit state dict: {err}") from err
    return ViTEncoder(
        "tiny_vit", vit, tuple(range(8)), int(TINY_VIT["num_heads"]), keep_all_blocks=keep_all_blocks
    )
