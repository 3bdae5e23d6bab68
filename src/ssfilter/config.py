"""Configuration dataclasses, named presets and YAML round-tripping.

A :class:`Config` fully describes a run: data preprocessing, model, optimisation, SSFilter's in-batch
filter and restoration, the dataset filter and the calibration. Every saved model carries its config
(``config.yaml``), so a run folder can be rebuilt without the command line that produced it.

One job, the configuration schema, in one file: every section's fields are documented where they are
declared, and the presets, overrides and YAML round trip read those declarations.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import yaml

__all__ = [
    "CONFIG_VERSION",
    "PRESETS",
    "SHORTCUTS",
    "BatchFilterConfig",
    "CalibrationConfig",
    "Config",
    "DataConfig",
    "DatasetFilterConfig",
    "ModelConfig",
    "RestorationConfig",
    "TrainConfig",
    "apply_overrides",
    "get_preset",
    "load_config",
    "save_config",
    "shortcut_overrides",
]

#: Version of the on-disk config schema; bumped on incompatible changes. Version 1 had one ``filter``
#: section for the in-batch filter, restoration and the dataset filter; it is still read (see
#: :data:`LEGACY_FILTER_KEYS`), so runs trained before version 2 still load.
CONFIG_VERSION = 2


@dataclass
class DataConfig:
    """Image preprocessing and loading.

    Attributes:
        resize: Side of the square resize applied first (paper: 448).
        crop: Side of the centre crop after resizing (paper: 392). Must be a multiple of the
            encoder's patch size for ViTs.
        batch_size: Training batch size (paper: 32, drop_last).
        num_workers: DataLoader worker processes (0 = load in the main process).
        eval_size: Side at which maps and masks are compared for metrics (paper: 256).
        coverage: ``"crop"`` (resize, then centre crop: the MVTec benchmark convention), ``"whole"``
            (resize straight to ``crop``: no border lost) or ``"auto"``: whole for a plain folder of the
            user's parts, crop for the benchmark formats; resolved and saved when training starts
            (:func:`ssfilter.coverage.resolve_coverage`). ``"tiles"``: scale the image by
            ``tile_scale`` (aspect kept) and score overlapping ``crop x crop`` tiles, for tiny defects on
            high-resolution parts (:mod:`ssfilter.data.tiling`).
        tile_scale: Resize factor before tiling (1.0 = native resolution); tiled runs only.
        tile_overlap: Least share of a tile its neighbours overlap; tiled runs only.
    """

    resize: int = 448
    crop: int = 392
    batch_size: int = 32
    num_workers: int = 0
    eval_size: int = 256
    coverage: str = "auto"
    tile_scale: float = 1.0
    tile_overlap: float = 0.25


@dataclass
class ModelConfig:
    """Encoder, bottleneck and decoder.

    Attributes:
        backbone: Encoder name (see :data:`ssfilter.models.encoders.BACKBONES`).
        weights: Optional local weights file for the encoder.
        attention: ``"mlla"`` (paper) or ``"linear"`` (plain Dinomaly linear attention, Table 4 row 1).
        decoder_depth: Number of decoder blocks (paper: 8).
        decoder_dim: Decoder width; ``None`` means the encoder's natural width.
        decoder_heads: Attention heads; ``None`` means the encoder's default.
        mlp_ratio: Decoder MLP hidden ratio (paper: 1.0).
        dropout: Bottleneck dropout probability (paper: 0.2).
        ln_eps: LayerNorm epsilon of decoder blocks (paper: 1e-8).
        random_init: Use a randomly initialised encoder when no weights are given. Only for the
            offline demo and tests: real data needs pretrained weights. Recorded in the run's config.
    """

    backbone: str = "dinov2_vits14_reg"
    weights: str | None = None
    attention: str = "mlla"
    decoder_depth: int = 8
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    mlp_ratio: float = 1.0
    dropout: float = 0.2
    ln_eps: float = 1e-8
    random_init: bool = False


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping.

    Attributes:
        method: ``"ssfilter"`` (in-batch synergy filter, the default) or ``"dinomaly"`` (plain
            baseline, every image trained on).
        iters: Training iterations (paper: 1000 for MVTec-size data).
        lr: Peak learning rate (paper: 2e-3).
        final_lr: Learning rate at the last iteration of the cosine decay (paper: 2e-4).
        warmup_iters: Linear warm-up length in iterations; ``None``: ``warmup_fraction`` of ``iters``.
        warmup_fraction: Warm-up length as a share of training (paper: 0.1, i.e. 100 of 1000 iterations).
        weight_decay: StableAdamW decoupled weight decay (paper: 1e-4).
        grad_clip: Gradient-norm clipping (paper: 0.1).
        hard_mining_max: Final hard-mining ratio p of the loss (paper: 0.9).
        hard_mining_ramp: Iterations over which p ramps linearly from 0; ``None``:
            ``hard_mining_ramp_fraction`` of ``iters``.
        hard_mining_ramp_fraction: Ramp length as a share of training (paper: 1.0, 1000 of 1000).
        hard_mining_factor: Gradient factor of the easy positions (paper: 0.1).
        seed: Random seed for everything.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        amp: Use bf16 autocast on CUDA.
        checkpoint_every: Iterations between checkpoints (the last iteration is always saved).
        log_every: Iterations between progress-bar updates of the postfix.
    """

    method: str = "ssfilter"
    iters: int = 1000
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_iters: int | None = None
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    hard_mining_max: float = 0.9
    hard_mining_ramp: int | None = None
    hard_mining_ramp_fraction: float = 1.0
    hard_mining_factor: float = 0.1
    seed: int = 1
    device: str = "auto"
    amp: bool = True
    checkpoint_every: int = 100
    log_every: int = 10


@dataclass
class BatchFilterConfig:
    """SSFilter's in-batch filter: which images of each training batch are trained on (paper §3.2-3.4).

    Attributes:
        patch_scoring: Use patch comparison scores A (Table 4 "PScoring").
        uncertainty: Use MC-dropout uncertainty U (Table 4 "UScoring").
        urecall: Recall upper-half samples with low uncertainty (Table 4 "URecall", Eq. 7 term 2).
        cold_start_iters: Iterations ranked by A alone; ``None``: ``cold_start_fraction`` of ``train.iters``.
        cold_start_fraction: Cold start as a share of training (paper: 1.0, its 1000 of 1000 iterations
            on MVTec AD: the regular phase of Eq. 9 starts only in longer runs).
        mc_passes: Dropout passes K for uncertainty (paper: 10).
        tau: Material-candidate threshold in units of sigma_1 (paper: 8).
        patch_topk_ratio: Share of other patches averaged per patch score (paper: 0.001).
        image_topk_ratio: Share of top patches / pixels averaged per image score (paper: 0.01).
        keep_ratio: Share of the batch ranked as "lower half" (paper: 0.5).
        block_rows: Row-block size of the patch similarity computation (memory bound).
        descriptor_layers: Eq. 1's ``L1`` (Table 8): target layers concatenated into the patch descriptor.
            Both lists ``None``: the backbone's own (ViT: the paper's ``L1 = [0, 3]``, ``L2 = [0, 3, 7]``).
        descriptor_mean_layers: Eq. 1's ``L2``: target layers averaged after ``L1``; ``[]`` or unset: none.
    """

    patch_scoring: bool = True
    uncertainty: bool = True
    urecall: bool = True
    cold_start_iters: int | None = None
    cold_start_fraction: float = 1.0
    mc_passes: int = 10
    tau: float = 8.0
    patch_topk_ratio: float = 0.001
    image_topk_ratio: float = 0.01
    keep_ratio: float = 0.5
    block_rows: int = 4096
    descriptor_layers: list[int] | None = None
    descriptor_mean_layers: list[int] | None = None


@dataclass
class RestorationConfig:
    """Synthetic anomalies built from high-confidence anomalies, for the decoder to restore (§3.5-3.6).

    Attributes:
        enabled: Train on synthetic anomalies built from the material bank (Table 4 "Restoring").
        material_max_ratio: T_p factor of the map's maximum (paper: 0.8).
        material_percentile: T_p percentile cap (paper: 99).
        materials_min: Materials pasted per synthetic image at the start of training.
        materials_max: Materials pasted per synthetic image at the end of training (paper: 5).
        synthesis: Synthetic anomalies (Table 5): ``"ours"`` (paper), ``"cutpaste"``, ``"draem"``.
        material_count: Materials per ``"ours"`` image (Table 9): ``"schedule"`` (paper, materials_min to
            materials_max), ``"schedule:A:B"``, ``"fixed:N"``, ``"rand:A:B"``.
        synthetic_per_batch: Synthetic images per batch of ``cutpaste`` and ``draem`` (paper: 2).
    """

    enabled: bool = True
    material_max_ratio: float = 0.8
    material_percentile: float = 99.0
    materials_min: int = 1
    materials_max: int = 5
    synthesis: str = "ours"
    material_count: str = "schedule"
    synthetic_per_batch: int = 2


@dataclass
class DatasetFilterConfig:
    """The dataset-level filter of a trained model (``ssfilter filter``, paper §3.7).

    Attributes:
        epochs: Random epochs over the data set, kappa_1 (paper: 20).
        min_keep: An image is normal when kept more than this many times, kappa_2 (paper: 5).
        decision: ``"estimate"`` (default: the estimated contamination's share of the folder, most
            suspect first), ``"vote"`` (the paper's kappa_2 vote) or ``"outlier"`` (a cut over the whole
            folder at ``outlier_k`` robust sd); :mod:`ssfilter.filtering.folder_decision`. The default
            since 2026-12-02 (README, "The dataset filter"); runs saved before keep ``"vote"``.
        outlier_k: Robust standard deviations of the ``"outlier"`` cut.
        uncertainty: ``"per-batch"`` (the paper's K fresh MC-dropout passes of every image in every epoch)
            or ``"per-image"`` (``pool`` passes once per image, ``u`` redrawn per batch: about 4x faster on
            a CPU; :mod:`ssfilter.filtering.uncertainty_bank`).
        pool: MC-dropout passes per image of the ``"per-image"`` bank; ``None``: ``4 K``.
    """

    epochs: int = 20
    min_keep: int = 5
    decision: str = "estimate"
    outlier_k: float = 4.0
    uncertainty: str = "per-batch"
    pool: int | None = None


@dataclass
class CalibrationConfig:
    """Unsupervised decision thresholds computed at the end of training (``RUN/calibration.json``).

    Rule (see :mod:`ssfilter.inference.calibration_rules`): over the raw scores ``s`` of the training images,
    ``image_threshold = median(s) + k * 1.4826 * MAD(s)``; over each training image's largest anomaly-map
    value ``m``, ``pixel_threshold = median(m) + pixel_k * 1.4826 * MAD(m)``. Robust to a minority of
    defective training images. ``ssfilter calibrate --val DIR`` replaces it with F1-max thresholds.

    Attributes:
        k: Robust standard deviations above the median training score for an image to be NG.
        pixel_k: Robust standard deviations above the median per-image map maximum for a pixel to be
            marked in the defect mask.
        after_training: Compute ``calibration.json`` when training finishes (one extra inference pass
            over the training images).
    """

    k: float = 4.0
    pixel_k: float = 4.0
    after_training: bool = True


@dataclass
class Config:
    """A complete run description."""

    preset: str = "paper-448-392"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_filter: BatchFilterConfig = field(default_factory=BatchFilterConfig)
    restoration: RestorationConfig = field(default_factory=RestorationConfig)
    dataset_filter: DatasetFilterConfig = field(default_factory=DatasetFilterConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build a config from a nested dict, rejecting unknown keys with a clear message."""
        raw = upgrade_legacy(dict(raw))
        version = int(raw.pop("version", CONFIG_VERSION))
        if version > CONFIG_VERSION:
            raise ValueError(
                f"config version {version} is newer than this ssfilter understands ({CONFIG_VERSION}); "
                "upgrade ssfilter to load it"
            )
        sections = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in sections:
                raise ValueError(f"unknown config section {key!r}; known: {sorted(sections)}")
            if key in _SECTION_TYPES:
                kwargs[key] = _section_from_dict(_SECTION_TYPES[key], value or {}, key)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    def copy(self) -> Config:
        """Deep copy."""
        return Config.from_dict(self.to_dict())


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "batch_filter": BatchFilterConfig,
    "restoration": RestorationConfig,
    "dataset_filter": DatasetFilterConfig,
    "calibration": CalibrationConfig,
}


#: Where each key of the version-1 ``filter`` section lives now (``section.key``).
LEGACY_FILTER_KEYS: dict[str, str] = {
    **{k: f"batch_filter.{k}" for k in (f.name for f in fields(BatchFilterConfig))},
    "restoring": "restoration.enabled",
    **{k: f"restoration.{k}" for k in (f.name for f in fields(RestorationConfig)) if k != "enabled"},
    "epochs": "dataset_filter.epochs",
    "min_keep": "dataset_filter.min_keep",
}


def upgrade_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """Return ``raw`` with a version-1 ``filter`` section spread over its new sections.

    The legacy keys override what the new sections already hold (a file's ``filter:`` section over the
    preset it names).

    Raises:
        ValueError: for a key that no version-1 ``filter`` section had.
    """
    legacy = raw.get("filter")
    if not isinstance(legacy, dict):
        return raw
    unknown = set(legacy) - set(LEGACY_FILTER_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) in config section 'filter': {sorted(unknown)}; "
            f"known: {sorted(LEGACY_FILTER_KEYS)}"
        )
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items() if k != "filter"}
    for key, value in legacy.items():
        section, _, new_key = LEGACY_FILTER_KEYS[key].partition(".")
        out.setdefault(section, {})[new_key] = value
    return out


def _section_from_dict(kind: type, raw: dict[str, Any], name: str) -> Any:
    known = {f.name: f for f in fields(kind)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(
            f"unknown key(s) in config section {name!r}: {sorted(unknown)}; known: {sorted(known)}"
        )
    return kind(**raw)


def _preset_paper_448_392() -> Config:
    return Config(preset="paper-448-392")


def _preset_paper_256_224() -> Config:
    cfg = Config(preset="paper-256-224")
    cfg.data.resize, cfg.data.crop = 256, 224
    return cfg


def _preset_cpu_fast() -> Config:
    """Small enough to train on 2 CPU cores in minutes (MobileNetV2 or tiny ViT)."""
    cfg = Config(preset="cpu-fast")
    cfg.data.resize, cfg.data.crop = 256, 224
    cfg.data.batch_size = 8
    cfg.model.backbone = "mobilenet_v2"
    cfg.model.decoder_dim = 128
    cfg.model.decoder_heads = 4
    cfg.train.iters = 300
    cfg.train.checkpoint_every = 50
    cfg.batch_filter.cold_start_fraction = 0.5
    cfg.batch_filter.mc_passes = 3
    return cfg


PRESETS = {
    "paper-448-392": _preset_paper_448_392,
    "paper-256-224": _preset_paper_256_224,
    "cpu-fast": _preset_cpu_fast,
}


def get_preset(name: str) -> Config:
    """Return a fresh config for a named preset.

    Raises:
        ValueError: if the preset is unknown.
    """
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _coerce(value: str, target: Any) -> Any:
    """Parse a string override into the type of the current value."""
    if isinstance(target, bool):
        low = value.strip().lower()
        if low in {"1", "true", "yes", "on"}:
            return True
        if low in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if isinstance(target, int):
        return int(value)
    if isinstance(target, float):
        return float(value)
    parsed = yaml.safe_load(value)
    return None if parsed in ("null", "None") else parsed


#: Short names of common settings, as the CLI's flags (``--iters``) and ``Detector(**overrides)`` take them.
SHORTCUTS: dict[str, str] = {
    "backbone": "model.backbone",
    "weights": "model.weights",
    "attention": "model.attention",
    "iters": "train.iters",
    "batch_size": "data.batch_size",
    "device": "train.device",
    "method": "train.method",
    "seed": "train.seed",
    "crop": "data.crop",
    "resize": "data.resize",
    "coverage": "data.coverage",
    "tile_scale": "data.tile_scale",
}


def shortcut_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides from short names (see :data:`SHORTCUTS`); ``None`` values are left out.

    Keys that are not short names (e.g. ``"train.lr"``) pass through unchanged.
    """
    return {SHORTCUTS.get(key, key): value for key, value in values.items() if value is not None}


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``["train.iters=50", ...]`` (CLI ``--set``) or ``{"train.iters": 50}`` to ``cfg`` in place.

    Returns ``cfg``, for chaining.

    Raises:
        ValueError: for malformed overrides or unknown keys.
    """
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for dotted, value in items:
        if dotted.startswith("filter."):  # version-1 name of the key
            dotted = LEGACY_FILTER_KEYS.get(dotted.removeprefix("filter."), dotted)
        section, _, key = dotted.partition(".")
        if section not in _SECTION_TYPES or not key:
            raise ValueError(
                f"override {dotted!r} must look like section.key with section in {sorted(_SECTION_TYPES)}"
            )
        obj = getattr(cfg, section)
        if key not in {f.name for f in fields(obj)}:
            known = sorted(f.name for f in fields(obj))
            raise ValueError(f"unknown config key {dotted!r}; known in {section!r}: {known}")
        current = getattr(obj, key)
        optional = "None" in str({f.name: f.type for f in fields(obj)}[key])
        if isinstance(value, str) and value.strip().lower() in _NULLS and optional:
            value = None  # e.g. --set batch_filter.cold_start_iters=null: back to the fraction of training
        elif isinstance(value, str) and current is not None and not isinstance(current, str):
            value = _coerce(value, current)
        elif isinstance(value, str) and current is None:
            value = _coerce(value, None)
        setattr(obj, key, value)
    return cfg


_NULLS = {"null", "none", "~"}


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.key=value")
    key, _, value = item.partition("=")
    return key.strip(), value.strip()


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML atomically (temp file + rename)."""
    from ssfilter.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a YAML config (safe loader); missing keys take their defaults.

    A file may also name a ``preset`` and only list the keys that differ from it.
    """
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level of the config")
    raw = upgrade_legacy(raw)
    preset = raw.get("preset")
    if preset is not None and preset in PRESETS:
        base = get_preset(preset).to_dict()
        for key, value in raw.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key].update(value)
            else:
                base[key] = value
        raw = base
    return Config.from_dict(raw)


def replace(cfg: Config, **sections: Any) -> Config:
    """Return a copy of ``cfg`` with whole sections replaced (helper for tests and the API)."""
    return dataclasses.replace(cfg.copy(), **sections)
