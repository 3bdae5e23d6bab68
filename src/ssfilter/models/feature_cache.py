"""An in-memory cache of transformed images and frozen-encoder features, bounded in bytes.

Training and the dataset filter both visit every image many times through a frozen encoder; this is
the one place that remembers what was already computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ssfilter.models.encoders import EncoderFeatures

__all__ = ["FeatureCache", "FeatureSource", "ImageSource"]


class ImageSource(Protocol):
    """Indexable source of transformed images: ``source[i]["image"]`` is a ``[3, S, S]`` tensor."""

    def __getitem__(self, index: int) -> dict[str, Any]: ...


class FeatureSource(Protocol):
    """Anything with a frozen encoder's ``encode(images) -> EncoderFeatures`` (a ``DinomalyModel``)."""

    def encode(self, images: Tensor) -> EncoderFeatures:
        """Encoder features of a batch of normalised images."""
        ...


class FeatureCache:
    """Transformed images and frozen-encoder features kept in memory.

    Preprocessing is deterministic and the encoder is frozen, so each image is decoded and encoded
    once; later epochs only run the decoder. Both caches are bounded by ``max_bytes`` together;
    beyond the budget items are recomputed every time, so memory stays bounded on large data sets.

    Args:
        dataset: Source of the transformed images (``dataset[i]["image"]``), e.g. an ``AnomalyDataset``.
        model: Model whose frozen encoder computes the features (``model.encode``).
        device: Device of the returned batches.
        max_bytes: Memory budget of both caches together.
        channels_last: Feed the encoder channels-last images (faster CNNs on CUDA).
        pin_memory: Stage host batches in pinned memory so the copy to the GPU is asynchronous.
    """

    def __init__(
        self,
        dataset: ImageSource,
        model: FeatureSource,
        device: torch.device,
        max_bytes: int,
        *,
        channels_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.model = model
        self.device = device
        self.max_bytes = max_bytes
        self.channels_last = channels_last
        self.pin_memory = pin_memory
        self.images: dict[int, Tensor] = {}
        self.feats: dict[int, EncoderFeatures] = {}
        self.bytes = 0

    def _fits(self, size: int) -> bool:
        if self.bytes + size > self.max_bytes:
            return False
        self.bytes += size
        return True

    def images_for(self, indices: Sequence[int]) -> Tensor:
        """Normalised images ``[B, 3, S, S]`` on the training device."""
        out = []
        for i in indices:
            item = self.images.get(i)
            if item is None:
                item = self.dataset[i]["image"]
                if self._fits(item.numel() * item.element_size()):
                    self.images[i] = item
            out.append(item)
        return self._to_device(torch.stack(out))

    def _to_device(self, batch: Tensor) -> Tensor:
        if self.pin_memory and self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def encode(self, images: Tensor) -> EncoderFeatures:
        """Frozen-encoder features of a batch on the device (channels-last when configured)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model.encode(images)

    def features_for(self, indices: Sequence[int], images: Tensor | None = None) -> EncoderFeatures:
        """Encoder features of the batch, encoding only the images not cached yet.

        Args:
            indices: Dataset indices of the batch.
            images: The batch's images when the caller has them already; otherwise only the images
                still to be encoded are read (and not kept), so all of the budget goes to features.
        """
        missing = [j for j, i in enumerate(indices) if i not in self.feats]
        fresh_row = {j: row for row, j in enumerate(missing)}
        fresh = None
        if missing:
            if images is None:
                batch = self._to_device(torch.stack([self.dataset[indices[j]]["image"] for j in missing]))
            else:
                batch = images[missing]
            fresh = self.encode(batch)
        parts = []
        for j, i in enumerate(indices):
            if i in self.feats:
                parts.append(self.feats[i])
                continue
            assert fresh is not None
            row = fresh_row[j]
            one = EncoderFeatures(
                [t[row : row + 1].clone() for t in fresh.layers], fresh.grid, fresh.num_prefix
            )
            if self._fits(sum(t.numel() * t.element_size() for t in one.layers)):
                self.feats[i] = one
            parts.append(one)
        return EncoderFeatures.cat(parts)
