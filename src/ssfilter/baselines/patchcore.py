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
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.config import DataConfig
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import build_image_transform, build_mask_transform
from ssfilter.evaluation.evaluate import EvaluationResult
from ssfilter.evaluation.metrics import MetricAccumulator
from ssfilter.io import atomic_path
from ssfilter.models.anomaly_map import gaussian_blur
from ssfilter.models.encoders import Encoder

__all__ = [
    "PatchCore",
    "PatchCoreConfig",
    "default_local_pool",
    "evaluate_patchcore",
    "farthest_point_sampling",
    "fit_patchcore",
    "greedy_coreset",
    "nearest_distances",
    "random_projection",
]

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


# ------------------------------------------------------------------------------------------------
# Coreset and nearest neighbours


def random_projection(features: Tensor, dim: int, seed: int) -> Tensor:
    """Seeded Gaussian random projection ``[N, D] -> [N, dim]`` (Johnson-Lindenstrauss).

    Entries are ``N(0, 1/dim)``, so squared distances are preserved in expectation. Features with
    ``D <= dim`` are returned unchanged: projecting them would not make anything cheaper. The matrix is
    drawn on the CPU, so the result does not depend on the device.
    """
    if features.shape[1] <= dim:
        return features
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(features.shape[1], dim, generator=gen, dtype=torch.float32) / math.sqrt(dim)
    return features @ matrix.to(device=features.device, dtype=features.dtype)


def farthest_point_sampling(points: Tensor, num: int, start: int, progress: bool = False) -> Tensor:
    """Greedy k-center selection: ``num`` indices, each the point farthest from those already chosen.

    Starts at ``start`` and keeps every point's squared distance to its nearest chosen point, updated
    with one matrix-vector product per step: O(N * num) time and O(N) extra memory. The loop never
    synchronises with the device. Ties go to the lowest index. Computes in float32 (float64 stays float64).

    Args:
        points: ``[N, D]`` points.
        num: Number of indices to select, ``1 <= num <= N``.
        start: Index of the first selected point.
        progress: Show a progress bar.

    Returns:
        ``[num]`` int64 indices in selection order, on the points' device.
    """
    n = points.shape[0]
    if not 1 <= num <= n:
        raise ValueError(f"num must be in [1, {n}], got {num}")
    if not 0 <= start < n:
        raise ValueError(f"start must be in [0, {n}), got {start}")
    z = points if points.dtype == torch.float64 else points.float()
    sq = (z * z).sum(dim=1)
    selected = torch.empty(num, dtype=torch.long, device=z.device)
    # ``idx`` stays a one-element tensor: indexing with it (unlike with a 0-d tensor or an int taken from
    # the device) needs no host synchronisation, so the loop queues kernels without waiting on a GPU.
    idx = torch.full((1,), start, dtype=torch.long, device=z.device)
    min_dist = torch.full((n,), math.inf, dtype=z.dtype, device=z.device)
    for i in tqdm(range(num), desc="coreset", unit="pt", disable=not progress, dynamic_ncols=True):
        if i:
            idx = torch.argmax(min_dist).view(1)
        selected[i : i + 1] = idx
        # ||z - c||^2 = ||z||^2 + ||c||^2 - 2 z.c, clamped at 0 against cancellation.
        dist = (sq + sq[idx] - 2.0 * (z @ z[idx].squeeze(0))).clamp_min_(0.0)
        torch.minimum(min_dist, dist, out=min_dist)
        min_dist.index_fill_(0, idx, 0.0)  # a chosen point is never chosen again, whatever the rounding
    return selected


def coreset_size(n: int, ratio: float) -> int:
    """Number of coreset points for ``n`` features: ``round(ratio * n)`` clipped to ``[1, n]``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, round(ratio * n)))


def greedy_coreset(
    features: Tensor, ratio: float, projection_dim: int = 128, seed: int = 0, progress: bool = False
) -> Tensor:
    """Indices of a greedy coreset of ``features`` (PatchCore's memory-bank subsampling).

    Farthest-point selection (:func:`farthest_point_sampling`) on the seeded random projection of the
    features (:func:`random_projection`), from a seeded random start.

    Args:
        features: ``[N, D]`` patch features.
        ratio: Share of features kept, in (0, 1]; 1.0 returns every index in order; at least one is kept.
        projection_dim: Projection width for the distance computations.
        seed: Seed of the projection and of the starting point.
        progress: Show a progress bar.

    Returns:
        ``[M]`` int64 indices on the features' device, ``M = round(ratio * N)`` clipped to ``[1, N]``.
    """
    n = features.shape[0]
    if n == 0:
        raise ValueError("cannot select a coreset of zero features")
    num = coreset_size(n, ratio)
    if num == n:
        return torch.arange(n, device=features.device)
    gen = torch.Generator().manual_seed(seed)
    start = int(torch.randint(n, (1,), generator=gen))
    projected = random_projection(features.float(), projection_dim, seed)
    return farthest_point_sampling(projected, num, start, progress=progress)


def nearest_distances(
    queries: Tensor, bank: Tensor, k: int = 1, chunk_size: int = 4096
) -> tuple[Tensor, Tensor]:
    """Euclidean distances and indices of the ``k`` nearest bank rows of every query, in query chunks.

    Each chunk of ``chunk_size`` queries is compared with the whole bank by :func:`torch.cdist`, so memory
    is O(chunk_size * M). The distances of the selected neighbours are then recomputed directly from the
    differences: cdist's matrix-product path loses precision for near-identical vectors, and a training
    patch found in memory should read 0, not 1e-3.

    Args:
        queries: ``[Q, D]``.
        bank: ``[M, D]``.
        k: Neighbours per query, ``1 <= k <= M``.
        chunk_size: Queries per chunk.

    Returns:
        ``(dist [Q, k], idx [Q, k])``, ascending along ``k``.
    """
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected [Q, D] and [M, D], got {tuple(queries.shape)} and {tuple(bank.shape)}")
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be in [1, {bank.shape[0]}] (bank size), got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    dists: list[Tensor] = []
    idxs: list[Tensor] = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]
        _, idx = torch.cdist(q, bank).topk(k, dim=1, largest=False)
        exact = (q.unsqueeze(1) - bank[idx]).norm(dim=-1)
        exact, order = exact.sort(dim=1)
        dists.append(exact)
        idxs.append(idx.gather(1, order))
    if not dists:
        return queries.new_zeros((0, k)), torch.zeros((0, k), dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(idxs)


# ------------------------------------------------------------------------------------------------
# Model


def _batch_images(batch: Tensor | Mapping[str, Any]) -> Tensor:
    """The image tensor of a loader batch (a dict with ``"image"``) or of a plain tensor batch."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and "image" in batch:
        return batch["image"]
    raise TypeError(f"expected an image tensor or a dict with an 'image' tensor, got {type(batch).__name__}")


class PatchCore(nn.Module):
    """PatchCore on a frozen :class:`~ssfilter.models.encoders.Encoder`.

    Call :meth:`fit` once with the training images, then :meth:`predict`. The encoder and the memory bank
    follow :meth:`to`.

    Args:
        encoder: Frozen encoder; its patch descriptors are the features.
        cfg: Hyper-parameters.
        crop: Input side (the maps come out at this size); must fit the encoder's stride.
    """

    def __init__(self, encoder: Encoder, cfg: PatchCoreConfig | None = None, crop: int = 224) -> None:
        super().__init__()
        encoder.check_crop(crop)
        self.encoder = encoder
        self.cfg = cfg or PatchCoreConfig(local_pool=default_local_pool(encoder))
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
            raise RuntimeError("PatchCore has no memory bank yet; call fit() or load() first")
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
        parts = [self.features(_batch_images(batch)).flatten(0, 1) for batch in images]
        if not parts or sum(p.shape[0] for p in parts) == 0:
            raise ValueError("PatchCore.fit got no training images")
        feats = torch.cat(parts)
        del parts
        cfg = self.cfg
        index = greedy_coreset(feats, cfg.coreset_ratio, cfg.projection_dim, cfg.seed, progress=progress)
        self._bank = feats[index].contiguous()
        return self

    @torch.no_grad()
    def patch_scores(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch distances ``[B, H*W]``, patch features ``[B, H*W, D]`` and nearest entries ``[B, H*W]``."""
        bank = self.memory_bank
        desc = self.features(images)
        b, n, d = desc.shape
        k = min(self.cfg.num_neighbors, bank.shape[0])
        dist, idx = nearest_distances(desc.reshape(b * n, d), bank, k, self.cfg.chunk_size)
        return dist.mean(dim=1).view(b, n), desc, idx[:, 0].view(b, n)

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
        patch, desc, nearest = self.patch_scores(images)
        scores, argmax = patch.max(dim=1)
        if self.cfg.reweight:
            scores = self._reweight(scores, desc, argmax, nearest)
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
            "format": FILE_FORMAT,
            "version": str(FILE_VERSION),
            "config": json.dumps(asdict(self.cfg)),
            "crop": str(self.crop),
            "encoder": self.encoder.name,
        }
        with atomic_path(path) as tmp:
            save_file({"memory_bank": self.memory_bank.cpu().contiguous()}, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Encoder) -> PatchCore:
        """Rebuild a saved model around ``encoder`` (the same backbone and weights it was fitted with).

        Raises:
            ValueError: the file is not a PatchCore model, or was fitted with another backbone.
        """
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FILE_FORMAT:
                raise ValueError(f"{path} is not an ssfilter PatchCore model")
            if int(meta.get("version", "0")) > FILE_VERSION:
                raise ValueError(f"{path} was written by a newer ssfilter; upgrade to load it")
            bank = fh.get_tensor("memory_bank")
        if meta.get("encoder") != encoder.name:
            raise ValueError(f"{path} was fitted with encoder {meta.get('encoder')!r}, not {encoder.name!r}")
        model = cls(encoder, PatchCoreConfig.from_dict(json.loads(meta["config"])), int(meta["crop"]))
        device = next(iter(encoder.parameters()), torch.empty(0)).device
        model = model.to(device)
        model.set_memory_bank(bank)
        return model


# ------------------------------------------------------------------------------------------------
# Convenience: fitting and evaluating on sample lists


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
    device = torch.device(device)
    transform = build_image_transform(data_cfg.resize, data_cfg.crop, encoder.mean, encoder.std)
    loader = DataLoader(
        AnomalyDataset(list(train_samples), transform),
        batch_size=batch_size or data_cfg.batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    model = PatchCore(encoder, cfg, data_cfg.crop).to(device)
    batches = tqdm(loader, desc="patchcore features", unit="batch", disable=not progress, dynamic_ncols=True)
    return model.fit(batches, progress=progress)


@torch.no_grad()
def evaluate_patchcore(
    model: PatchCore,
    samples: Sequence[Sample],
    data_cfg: DataConfig,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """All SPEC §8 metrics of a fitted PatchCore on labelled test samples.

    The same pipeline as :func:`ssfilter.evaluation.evaluate.evaluate_model`: maps resized bilinearly from
    the crop to ``eval_size``, masks through the image geometry, binarised, then nearest-resized to
    ``eval_size``. Pixel metrics are undefined when an anomalous image lacks a mask.

    Returns:
        ``{"metrics": {METRIC_KEYS...}, "n_test": int, "images": [{"path", "score", "label"}, ...]}``.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    size = data_cfg.eval_size
    transform = build_image_transform(data_cfg.resize, data_cfg.crop, model.encoder.mean, model.encoder.std)
    mask_transform = build_mask_transform(data_cfg.resize, data_cfg.crop)
    dataset = AnomalyDataset(list(samples), transform, mask_transform, eval_size=size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size or data_cfg.batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    acc = MetricAccumulator()
    result = EvaluationResult(metrics={}, n_test=len(dataset))
    bar = tqdm(loader, desc="evaluate patchcore", unit="batch", disable=not progress, dynamic_ncols=True)
    for batch in bar:
        maps, scores = model.predict(batch["image"].to(device, non_blocking=True))
        if tuple(maps.shape[-2:]) != (size, size):
            maps = F.interpolate(
                maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
            ).squeeze(1)
        labels = batch["label"].numpy().astype(int)
        has_mask = batch["has_mask"].numpy().astype(bool)
        masks = None if ((labels == 1) & ~has_mask).any() else (batch["mask"][:, 0] > 0.5).numpy()
        acc.update(scores.cpu().numpy(), labels, maps.cpu().numpy(), masks)
        result.paths.extend(batch["path"])
        result.scores.extend(float(s) for s in scores.cpu())
        result.labels.extend(int(v) for v in labels)
    result.metrics = acc.compute()
    return result.to_json()
