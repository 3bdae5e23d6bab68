"""Frozen feature encoders behind one interface (SPEC §10).

Every backbone returns its target-layer features as token sequences ``[B, P + H*W, C_l]`` on one
common ``H x W`` grid (``P`` prefix tokens: CLS and registers for ViTs, none for CNNs). The
backbone-specific ways of combining those layers -- reconstruction groups, bottleneck input, patch
descriptors for SSFilter's comparison scoring -- live here as methods, so the rest of the code never
branches on the backbone type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssfilter.errors import WeightsUnavailableError

__all__ = [
    "BACKBONES",
    "CNNEncoder",
    "Encoder",
    "EncoderFeatures",
    "ViTEncoder",
    "build_encoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderFeatures:
    """Target-layer outputs of a frozen encoder.

    Attributes:
        layers: One tensor ``[B, P + H*W, C_l]`` per target layer, in target-layer order.
        grid: Patch grid ``(H, W)``.
        num_prefix: Number of prefix tokens ``P`` (CLS + registers) before the patch tokens.
    """

    layers: list[Tensor]
    grid: tuple[int, int]
    num_prefix: int

    @property
    def batch_size(self) -> int:
        """Number of images."""
        return self.layers[0].shape[0]

    def patches(self, index: int) -> Tensor:
        """Patch tokens ``[B, H*W, C]`` of target layer ``index``."""
        return self.layers[index][:, self.num_prefix :]

    def select(self, index: Tensor | slice | list[int]) -> EncoderFeatures:
        """Features of a subset of the batch."""
        return EncoderFeatures([t[index] for t in self.layers], self.grid, self.num_prefix)

    def to(self, *args: object, **kwargs: object) -> EncoderFeatures:
        """Move/cast every layer (same arguments as :meth:`torch.Tensor.to`)."""
        return EncoderFeatures([t.to(*args, **kwargs) for t in self.layers], self.grid, self.num_prefix)

    @staticmethod
    def cat(parts: list[EncoderFeatures]) -> EncoderFeatures:
        """Concatenate features of several batches along the batch axis."""
        first = parts[0]
        layers = [torch.cat([p.layers[i] for p in parts]) for i in range(len(first.layers))]
        return EncoderFeatures(layers, first.grid, first.num_prefix)


class Encoder(nn.Module):
    """Base class of frozen encoders.

    Subclasses implement :meth:`extract` and set the describing attributes below. The module is
    always in eval mode and never receives gradients.

    Attributes:
        name: Backbone name as accepted by :func:`build_encoder`.
        mean: Normalisation mean of the input images (0..1 pixel scale).
        std: Normalisation std of the input images.
        layer_dims: Channel width of each target layer.
        group_dims: Channel width of each reconstruction group.
        bottleneck_dim: Channel width of the bottleneck input.
        descriptor_dim: Channel width of the patch descriptors.
        embed_dim: Natural decoder width.
        num_heads: Natural number of decoder attention heads.
        stride: Input pixels per grid cell.
        num_prefix: Prefix tokens (CLS + registers) in every layer.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_dims: list[int]
    group_dims: list[int]
    bottleneck_dim: int
    descriptor_dim: int
    embed_dim: int
    num_heads: int
    stride: int
    num_prefix: int

    def train(self, mode: bool = True) -> Encoder:
        """Keep the frozen encoder in eval mode whatever the caller asks."""
        return super().train(False)

    def freeze(self) -> None:
        """Disable gradients and switch to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def grid_size(self, crop: int) -> tuple[int, int]:
        """Patch grid for a square crop of side ``crop``."""
        return crop // self.stride, crop // self.stride

    def check_crop(self, crop: int) -> None:
        """Raise a clear error when ``crop`` does not fit the encoder's stride."""
        if crop % self.stride:
            raise ValueError(
                f"crop {crop} must be a multiple of the {self.name} stride {self.stride} "
                f"(e.g. {crop - crop % self.stride} or {crop - crop % self.stride + self.stride})"
            )

    @torch.no_grad()
    def forward(self, images: Tensor) -> EncoderFeatures:
        """Target-layer features of normalised images ``[B, 3, S, S]``."""
        return self.extract(images)

    def extract(self, images: Tensor) -> EncoderFeatures:  # pragma: no cover - abstract
        """Compute target-layer features (subclasses)."""
        raise NotImplementedError

    # -- combinations of layers, backbone specific --------------------------------------------

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Reconstruction targets: one ``[B, H*W, C_g]`` tensor per group (patch tokens only)."""
        raise NotImplementedError

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        """Bottleneck input ``[B, P + H*W, bottleneck_dim]``."""
        raise NotImplementedError

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        """Patch descriptors ``[B, H*W, descriptor_dim]`` for comparison scoring (Eq. 1)."""
        raise NotImplementedError

    def foreground_features(self, feats: EncoderFeatures) -> Tensor:
        """Features ``[B, H*W, C]`` whose first principal component separates object from background."""
        return self.groups(feats)[0]


# ------------------------------------------------------------------------------------------------
# ViT (DINOv2 through timm)


@dataclass(frozen=True)
class _ViTSpec:
    timm_name: str
    hf_tag: str
    dim: int
    heads: int
    target_layers: tuple[int, ...]
    pretrained: bool = True


_VIT_SPECS: dict[str, _ViTSpec] = {
    "dinov2_vits14_reg": _ViTSpec(
        "vit_small_patch14_reg4_dinov2", "lvd142m", 384, 6, (2, 3, 4, 5, 6, 7, 8, 9)
    ),
    "dinov2_vitb14_reg": _ViTSpec(
        "vit_base_patch14_reg4_dinov2", "lvd142m", 768, 12, (2, 3, 4, 5, 6, 7, 8, 9)
    ),
    "dinov2_vitl14_reg": _ViTSpec(
        "vit_large_patch14_reg4_dinov2", "lvd142m", 1024, 16, (4, 6, 8, 10, 12, 14, 16, 18)
    ),
}

#: Tiny random ViT for tests: 8 blocks of width 48, patch 8, 4 registers, all blocks are targets.
_TINY_VIT = dict(patch_size=8, embed_dim=48, depth=8, num_heads=2, mlp_ratio=2.0, reg_tokens=4)


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
        a, b, c = feats.patches(0), feats.patches(3), feats.patches(7)
        return torch.cat([a, b, (a + b + c) / 3.0], dim=-1)


def _create_timm_vit(spec: _ViTSpec) -> nn.Module:
    import timm

    # Native 518 px geometry (37x37 position table, as released) interpolated to any crop at run
    # time, exactly like DINOv2 itself; this keeps checkpoints loadable without resampling.
    return timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)


def _load_vit_weights(model: nn.Module, path: Path) -> None:
    """Load a Meta ``.pth`` or timm ``.safetensors``/``.pth`` DINOv2 checkpoint strictly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    state = _read_state(path)
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


def _download_vit_weights(model: nn.Module, spec: _ViTSpec, name: str) -> None:
    """Fetch timm's DINOv2 weights from the Hugging Face hub, failing fast when offline."""
    hint = (
        f"Pretrained weights for {name} are needed. Download them on a machine with internet access, e.g. "
        f"https://dl.fbaipublicfiles.com/dinov2/{name.split('_')[0]}_{name.split('_')[1]}/"
        f"{name.split('_')[0]}_{name.split('_')[1]}_reg4_pretrain.pth (Meta) or the Hugging Face repo "
        f"timm/{spec.timm_name}.{spec.hf_tag} (model.safetensors), then pass --weights PATH."
    )
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("SSFILTER_OFFLINE"):
        raise WeightsUnavailableError(f"offline mode is set. {hint}")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars
    except ImportError as err:  # pragma: no cover - timm depends on huggingface_hub
        raise WeightsUnavailableError(hint) from err
    disable_progress_bars()
    try:
        file = hf_hub_download(f"timm/{spec.timm_name}.{spec.hf_tag}", "model.safetensors", etag_timeout=5)
    except Exception as err:  # noqa: BLE001 - any network/hub failure means "not available"
        raise WeightsUnavailableError(f"could not download weights ({type(err).__name__}). {hint}") from err
    _load_vit_weights(model, Path(file))


# ------------------------------------------------------------------------------------------------
# CNN (torchvision MobileNetV2)

#: MobileNetV2 feature taps (``features[i]`` outputs) for the two groups.
_MOBILENET_GROUPS: tuple[tuple[int, ...], ...] = ((3, 6), (10, 13))
_MOBILENET_DIMS = {3: 24, 6: 32, 10: 64, 13: 96}


class CNNEncoder(Encoder):
    """torchvision MobileNetV2 taps resized to one stride-8 grid.

    Each group is the channel concatenation of its taps, the bottleneck takes all taps, and the patch
    descriptor is all taps after a 3x3 average pool (PatchCore-style local aggregation). Bilinear
    resizing by an exact factor of two averages 2x2 cells, so the 4x-stride tap is pooled, not
    subsampled.
    """

    def __init__(
        self,
        net: nn.Module,
        groups: tuple[tuple[int, ...], ...] = _MOBILENET_GROUPS,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        name: str = "mobilenet_v2",
    ) -> None:
        super().__init__()
        self.name = name
        taps = [t for g in groups for t in g]
        self.taps = taps
        self.group_taps = groups
        self.features = net.features[: max(taps) + 1]
        self.mean, self.std = mean, std
        self.layer_dims = [_MOBILENET_DIMS[t] for t in taps]
        self.group_dims = [sum(_MOBILENET_DIMS[t] for t in g) for g in groups]
        self.bottleneck_dim = sum(self.layer_dims)
        self.descriptor_dim = self.bottleneck_dim
        self.embed_dim = 192
        self.num_heads = 4
        self.stride = 8
        self.num_prefix = 0
        self.freeze()

    def extract(self, images: Tensor) -> EncoderFeatures:
        """Run the feature stages and resize every tap to the stride-8 grid."""
        h, w = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        layers: list[Tensor] = []
        x = images
        for i, stage in enumerate(self.features):
            x = stage(x)
            if i in self.taps:
                y = x if x.shape[-2:] == (h, w) else F.interpolate(x, size=(h, w), mode="bilinear")
                layers.append(y.flatten(2).transpose(1, 2))
        return EncoderFeatures(layers, (h, w), 0)

    def _cat(self, feats: EncoderFeatures, taps: tuple[int, ...]) -> Tensor:
        return torch.cat([feats.layers[self.taps.index(t)] for t in taps], dim=-1)

    def groups(self, feats: EncoderFeatures) -> list[Tensor]:
        """Channel concatenation of each group's taps."""
        return [self._cat(feats, g) for g in self.group_taps]

    def bottleneck_input(self, feats: EncoderFeatures) -> Tensor:
        """All taps concatenated."""
        return torch.cat(feats.layers, dim=-1)

    def foreground_features(self, feats: EncoderFeatures) -> Tensor:
        """The deep group, whose first principal component separates object from background.

        On MobileNetV2 the shallow taps' first component follows edges instead.
        """
        return self.groups(feats)[-1]

    def patch_descriptors(self, feats: EncoderFeatures) -> Tensor:
        """All taps concatenated after a 3x3 average pool on the grid."""
        h, w = feats.grid
        x = torch.cat(feats.layers, dim=-1)
        b, n, c = x.shape
        grid = x.transpose(1, 2).reshape(b, c, h, w)
        pooled = F.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=False)
        return pooled.flatten(2).transpose(1, 2)


def _load_mobilenet(weights: str | None, allow_random: bool) -> nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2()
    if weights is None:
        if not allow_random:
            raise WeightsUnavailableError(
                "mobilenet_v2 needs a local ImageNet weights file (torchvision layout, .safetensors/.pth); "
                "pass --weights PATH, e.g. ../shared/weights/mobilenet_v2_imagenet.safetensors"
            )
        return net
    path = Path(weights)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    state = _read_state(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsUnavailableError(f"{path} is not a torchvision MobileNetV2 state dict: {err}") from err
    return net


# ------------------------------------------------------------------------------------------------

BACKBONES: tuple[str, ...] = (*_VIT_SPECS, "mobilenet_v2", "tiny_vit")


def build_encoder(
    name: str,
    weights: str | None = None,
    *,
    allow_random: bool = False,
    keep_all_blocks: bool = False,
    seed: int = 0,
) -> Encoder:
    """Build a frozen encoder.

    Args:
        name: One of :data:`BACKBONES`.
        weights: Local weights file. DINOv2 accepts Meta ``.pth`` and timm ``.safetensors`` files;
            MobileNetV2 a torchvision state dict.
        allow_random: Permit random weights when none are given (tests, ``info``, the offline demo).
            Otherwise a missing file is downloaded when online, and an error says how to supply it.
        keep_all_blocks: Keep ViT blocks after the last target layer (only for parameter counting).
        seed: Seed of random initialisation (tiny ViT and ``allow_random``).

    Raises:
        ValueError: for an unknown backbone.
        WeightsUnavailableError: when weights are needed and cannot be obtained.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in _VIT_SPECS:
            spec = _VIT_SPECS[name]
            vit = _create_timm_vit(spec)
            if weights is not None:
                _load_vit_weights(vit, Path(weights))
            elif not allow_random:
                _download_vit_weights(vit, spec, name)
            return ViTEncoder(name, vit, spec.target_layers, spec.heads, keep_all_blocks=keep_all_blocks)
        if name == "tiny_vit":
            from timm.models.vision_transformer import VisionTransformer

            vit = VisionTransformer(
                img_size=64,
                num_classes=0,
                dynamic_img_size=True,
                no_embed_class=True,
                init_values=1e-1,
                **_TINY_VIT,
            )
            if weights is not None:
                state = _read_state(Path(weights))
                vit.load_state_dict(state, strict=True)
            return ViTEncoder(
                name, vit, tuple(range(8)), int(_TINY_VIT["num_heads"]), keep_all_blocks=keep_all_blocks
            )
        if name == "mobilenet_v2":
            return CNNEncoder(_load_mobilenet(weights, allow_random))
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _read_state(path: Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors, or a pickle with ``weights_only`` (no arbitrary objects)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)
