"""PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection"), for comparison.

PatchCore keeps a memory bank of locally aware patch features of the training images, thinned by greedy
coreset selection, and scores a test patch by its distance to the nearest memory entry. It has no notion of
noise: every training patch may end up in the bank, so an anomalous training image that is also in the
test set ("overlap" noisy protocol, SPEC §7) finds itself in memory and scores as normal. That collapse is
what the paper's Table 1 shows and why PatchCore is the comparison here.

Choices of this implementation (the paper leaves them open or the encoders differ from its WideResNet):

* Features are the encoder's own patch descriptors (``Encoder.patch_descriptors``, SPEC §2 / §10), so
  PatchCore sees exactly what SSFilter's comparison scoring sees. "Locally aware" features are a 3x3
  average over the patch grid (``count_include_pad=False``, so border patches are not darkened).
  The CNN descriptors are already pooled that way, so :func:`default_local_pool` returns 1 for CNNs (no
  second pooling) and 3 for ViTs, whose Eq. 1 descriptors are single tokens.
* The greedy coreset runs on a seeded Gaussian random projection to ``projection_dim`` dimensions
  (Johnson-Lindenstrauss, as in the paper); descriptors that are already that narrow are used as they are.
  Only the selection uses the projection: the bank keeps the full descriptors.
* Patch score: Euclidean distance to the nearest memory entry (mean over ``num_neighbors`` nearest; 1 is the
  paper). Image score: the largest patch score, reweighted by the paper's Eq. 7 when ``reweight`` is set.
* Maps: patch scores upsampled bilinearly to the crop and blurred with a Gaussian of sigma 4 (kernel
  ``2 * round(4 sigma) + 1``, as scipy's filter truncates). The blur pads by edge replication before the
  (zero-padded) :func:`~ssfilter.models.anomaly_map.gaussian_blur`, so border values are not pulled towards
  zero by such a wide kernel (the reference implementation's scipy filter reflects, too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssfilter.baselines.coreset import greedy_coreset
from ssfilter.baselines.fitting import fit_on_samples
from ssfilter.baselines.nearest import nearest_distances
from ssfilter.baselines.registry import register_baseline
from ssfilter.config import DataConfig
from ssfilter.data.datasets import Sample
from ssfilter.io import atomic_path
from ssfilter.models.anomaly_map import gaussian_blur
from ssfilter.models.encoders import Encoder

__all__ = ["PatchCore", "PatchCoreConfig", "batch_images", "default_local_pool", "fit_patchcore"]

#: ``format`` entry of the safetensors metadata of a saved PatchCore model.
FILE_FORMAT = "ssfilter-patchcore"
FILE_VERSION = 1


@dataclass
class PatchCoreConfig:
    """PatchCore hyper-parameters (paper defaults).

    Attributes:
        coreset_ratio: Share of the training patches kept in the memory bank (paper: 0.1 or 0.01).
        projection_dim: Random-projection width used only for the coreset's distance computations.
        local_pool: Side of the grid neighbourhood averaged into each patch feature (1 = no pooling). Use
            :func:`default_local_pool`: 1 for CNN descriptors (already pooled), 3 for ViT descriptors.
        num_neighbors: Nearest memory entries averaged into a patch score (paper: 1).
        chunk_size: Query rows per distance chunk; bounds memory to ``chunk_size x bank size`` floats.
        seed: Seed of the random projection and of the coreset's starting point.
        reweight: Reweight the image score with the paper's Eq. 7: the max patch's distance is scaled by
            ``1 - exp(||m_test* - m*||) / sum_{m in N_b(m*)} exp(||m_test* - m||)``, where ``m*`` is its
            nearest memory entry and ``N_b(m*)`` the ``reweight_neighbors`` memory entries nearest to
            ``m*`` (``m*`` included, so the factor is in [0, 1)). A max patch whose memory neighbourhood is
            sparse keeps more of its score than one in a dense region. Skipped when the bank holds fewer
            than 2 entries.
        reweight_neighbors: ``b`` of Eq. 7 (paper: 9).
        blur_sigma: Sigma in crop pixels of the Gaussian blur of the maps (paper: 4).
    """

    coreset_ratio: float = 0.1
    projection_dim: int = 128
    local_pool: int = 3
    num_neighbors: int = 1
    chunk_size: int = 4096
    seed: int = 0
    reweight: bool = True
    reweight_neighbors: int = 9
    blur_sigma: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}")
        if self.local_pool < 1 or self.local_pool % 2 == 0:
            raise ValueError(f"local_pool must be a positive odd number, got {self.local_pool}")
        if self.num_neighbors < 1 or self.reweight_neighbors < 1:
            raise ValueError("num_neighbors and reweight_neighbors must be positive")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PatchCoreConfig:
        """Build a config from a dict, rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown PatchCore config key(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**raw)


def default_local_pool(encoder: Encoder) -> int:
    """Neighbourhood for locally aware features: 1 for CNNs (descriptors already pooled), 3 for ViTs."""
    return 1 if encoder.pooled_descriptors else 3


def batch_images(batch: Tensor | Mapping[str, Any]) -> Tensor:
    """The image tensor of a loader batch (a dict with ``"image"``) or of a plain tensor batch."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    raise TypeError(f"expected an image tensor or a dict with an 'image' tensor, got {type(batch).__name__}")


@register_baseline("patchcore")
class PatchCore(nn.Module):
    """PatchCore on a frozen :class:`~ssfilter.models.encoders.Encoder`.

    Call :meth:`fit` once with the training images, then :meth:`predict`. The encoder and the memory bank
    follow :meth:`to`.

    Args:
        encoder: Frozen encoder; its patch descriptors are the features.
        cfg: Hyper-parameters.
        crop: Input side (the maps come out at this size); must fit the encoder's stride.
    """

    #: Config class (a subclass's config extends PatchCore's).
    config_type: ClassVar[type[PatchCoreConfig]] = PatchCoreConfig
    #: ``format`` entry of the safetensors metadata of a saved model, and the model's name in messages.
    file_format: ClassVar[str] = FILE_FORMAT
    display_name: ClassVar[str] = "PatchCore"

    def __init__(self, encoder: Encoder, cfg: PatchCoreConfig | None = None, crop: int = 224) -> None:
        super().__init__()
        encoder.check_crop(crop)
        self.encoder = encoder
        self.cfg = cfg or self.config_type(local_pool=default_local_pool(encoder))
        self.crop = crop
        self.register_buffer("_bank", torch.empty(0, encoder.descriptor_dim), persistent=False)
        self._bank: Tensor

    @property
    def device(self) -> torch.device:
        """Device of the memory bank (and the encoder)."""
        return self._bank.device

    @property
    def is_fitted(self) -> bool:
        """Whether the memory bank has been built or loaded."""
        return self._bank.shape[0] > 0

    @property
    def memory_bank(self) -> Tensor:
        """The memory bank ``[M, D]``.

        Raises:
            RuntimeError: before :meth:`fit` or :meth:`load`.
        """
        if not self.is_fitted:
            raise RuntimeError(f"{self.display_name} has no memory bank yet; call fit() or load() first")
        return self._bank

    def set_memory_bank(self, bank: Tensor) -> None:
        """Replace the memory bank (``[M, descriptor_dim]``, M >= 1); moved to the model's device."""
        if bank.ndim != 2 or bank.shape[0] == 0 or bank.shape[1] != self.encoder.descriptor_dim:
            raise ValueError(
                f"memory bank must be [M >= 1, {self.encoder.descriptor_dim}], got {tuple(bank.shape)}"
            )
        self._bank = bank.detach().to(device=self.device, dtype=torch.float32).contiguous()

    def train(self, mode: bool = True) -> PatchCore:
        """PatchCore has no trainable state: stay in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Locally aware patch features ``[B, H*W, D]`` of normalised images ``[B, 3, crop, crop]``."""
        images = images.to(self.device, dtype=torch.float32)
        feats = self.encoder(images)
        desc = self.encoder.patch_descriptors(feats).float()
        pool = self.cfg.local_pool
        if pool > 1:
            h, w = feats.grid
            b, n, c = desc.shape
            grid = desc.transpose(1, 2).reshape(b, c, h, w)
            grid = F.avg_pool2d(grid, pool, stride=1, padding=pool // 2, count_include_pad=False)
            desc = grid.flatten(2).transpose(1, 2)
        return desc

    @torch.no_grad()
    def fit(self, images: Iterable[Tensor | Mapping[str, Any]], progress: bool = False) -> PatchCore:
        """Build the memory bank: features of every training patch, then the greedy coreset.

        Args:
            images: Batches ``[B, 3, crop, crop]`` of normalised images, or loader batches with an
                ``"image"`` entry. Labels, if present, are ignored (fully unsupervised).
            progress: Show a progress bar for the coreset selection.

        Returns:
            ``self``, for chaining.
        """
        parts = [self.features(batch_images(batch)) for batch in images]
        if not parts or sum(p.shape[0] for p in parts) == 0:
            raise ValueError(f"{self.display_name}.fit got no training images")
        feats = torch.cat(parts)
        del parts
        self.build_memory(feats, progress=progress)
        return self

    def build_memory(self, feats: Tensor, progress: bool = False) -> None:
        """Fill the memory bank from the training features ``[images, H*W, D]``: their greedy coreset."""
        cfg = self.cfg
        flat = feats.flatten(0, 1)
        index = greedy_coreset(flat, cfg.coreset_ratio, cfg.projection_dim, cfg.seed, progress=progress)
        self._bank = flat[index].contiguous()

    @torch.no_grad()
    def patch_scores(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch scores ``[B, H*W]``, patch features ``[B, H*W, D]`` and nearest entries ``[B, H*W]``."""
        desc = self.features(images)
        patch, nearest = self.patch_distances(desc)
        return patch, desc, nearest

    @torch.no_grad()
    def patch_distances(self, desc: Tensor) -> tuple[Tensor, Tensor]:
        """Patch scores ``[B, N]`` of features ``[B, N, D]`` and their nearest memory entries ``[B, N]``.

        The score is the mean distance to the ``num_neighbors`` nearest memory entries.
        """
        bank = self.memory_bank
        b, n, d = desc.shape
        k = min(self.cfg.num_neighbors, bank.shape[0])
        dist, idx = nearest_distances(desc.reshape(b * n, d), bank, k, self.cfg.chunk_size)
        return dist.mean(dim=1).view(b, n), idx[:, 0].view(b, n)

    @torch.no_grad()
    def score_features(self, desc: Tensor) -> tuple[Tensor, Tensor]:
        """Patch scores ``[B, N]`` and image scores ``[B]`` of patch features ``[B, N, D]``.

        The image score is the largest patch score, reweighted by Eq. 7 when ``cfg.reweight``.
        """
        patch, nearest = self.patch_distances(desc)
        scores, argmax = patch.max(dim=1)
        if self.cfg.reweight:
            scores = self._reweight(scores, desc, argmax, nearest)
        return patch, scores

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid of the crop."""
        return self.encoder.grid_size(self.crop)

    def _reweight(self, scores: Tensor, desc: Tensor, argmax: Tensor, nearest: Tensor) -> Tensor:
        """Paper Eq. 7: scale the max patch score by how isolated its memory neighbourhood is."""
        bank = self.memory_bank
        b_nb = min(self.cfg.reweight_neighbors, bank.shape[0])
        if b_nb < 2:
            return scores
        rows = torch.arange(scores.shape[0], device=scores.device)
        query = desc[rows, argmax]  # [B, D] the max patch of each image
        m_star = bank[nearest[rows, argmax]]  # [B, D] its nearest memory entry
        # [B, b] memory neighbourhood of m*, m* itself (or an identical twin) first
        _, support = nearest_distances(m_star, bank, b_nb, self.cfg.chunk_size)
        dist = (query.unsqueeze(1) - bank[support]).norm(dim=-1)  # [B, b]
        own = (query - m_star).norm(dim=-1)  # ||m_test* - m*||, the numerator
        weight = 1.0 - torch.exp(own - torch.logsumexp(dist, dim=1))
        return weight.clamp_min(0.0) * scores

    @torch.no_grad()
    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps ``[B, crop, crop]`` and image scores ``[B]`` of normalised images.

        Maps: nearest-memory distance per patch, bilinear upsampling to the crop, Gaussian blur (sigma
        ``cfg.blur_sigma``). Scores: the largest patch distance (before upsampling), reweighted by Eq. 7
        when ``cfg.reweight``.
        """
        if images.ndim != 4 or tuple(images.shape[-2:]) != (self.crop, self.crop):
            raise ValueError(f"expected images [B, 3, {self.crop}, {self.crop}], got {tuple(images.shape)}")
        patch, scores = self.score_features(self.features(images))
        h, w = self.grid
        maps = F.interpolate(
            patch.view(-1, 1, h, w), size=(self.crop, self.crop), mode="bilinear", align_corners=False
        )
        return self._blur(maps).squeeze(1), scores

    def _blur(self, maps: Tensor) -> Tensor:
        """Gaussian blur of ``[B, 1, S, S]`` maps with edge-replicated borders."""
        sigma = self.cfg.blur_sigma
        radius = round(4.0 * sigma)
        padded = F.pad(maps, (radius,) * 4, mode="replicate")
        blurred = gaussian_blur(padded, kernel_size=2 * radius + 1, sigma=sigma)
        return blurred[..., radius:-radius, radius:-radius] if radius else blurred

    # -- persistence ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the memory bank and config to a safetensors file, atomically."""
        from safetensors.torch import save_file

        metadata = {
            "format": self.file_format,
            "version": str(FILE_VERSION),
            "config": json.dumps(asdict(self.cfg)),
            "crop": str(self.crop),
            "encoder": self.encoder.name,
        }
        tensors = {name: t.cpu().contiguous() for name, t in self.state_tensors().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    def state_tensors(self) -> dict[str, Tensor]:
        """The fitted state that :meth:`save` writes: the memory bank (a subclass adds its own)."""
        return {"memory_bank": self.memory_bank}

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (the inverse of it)."""
        self.set_memory_bank(tensors["memory_bank"])

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Encoder) -> PatchCore:
        """Rebuild a saved model around ``encoder`` (the same backbone and weights it was fitted with).

        Raises:
            ValueError: the file is not a model of this class, or was fitted with another backbone.
        """
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != cls.file_format:
                raise ValueError(f"{path} is not an ssfilter {cls.display_name} model")
            if int(meta.get("version", "0")) > FILE_VERSION:
                raise ValueError(f"{path} was written by a newer ssfilter; upgrade to load it")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (not a dict)
        if meta.get("encoder") != encoder.name:
            raise ValueError(f"{path} was fitted with encoder {meta.get('encoder')!r}, not {encoder.name!r}")
        model = cls(encoder, cls.config_type.from_dict(json.loads(meta["config"])), int(meta["crop"]))
        device = next(iter(encoder.parameters()), torch.empty(0)).device
        model = model.to(device)
        model.load_state_tensors(tensors)
        return model


def fit_patchcore(
    train_samples: Sequence[Sample],
    encoder: Encoder,
    data_cfg: DataConfig,
    cfg: PatchCoreConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    batch_size: int | None = None,
) -> PatchCore:
    """Fit PatchCore on training samples, preprocessed like SSFilter's (SPEC §1 transforms).

    Args:
        train_samples: Training images (labels are never used).
        encoder: Frozen encoder; its mean/std normalise the images.
        data_cfg: Resize, crop, batch size and loader workers.
        cfg: Hyper-parameters; ``None`` uses the defaults with :func:`default_local_pool`.
        device: Where features and the memory bank live.
        progress: Show progress bars (feature extraction, coreset).
        batch_size: Feature-extraction batch size; ``None`` uses ``data_cfg.batch_size``.
    """
    model = PatchCore(encoder, cfg, data_cfg.crop)
    fit_on_samples(model, train_samples, data_cfg, device=device, progress=progress, batch_size=batch_size)
    return model
