"""Fit a baseline on a list of samples, preprocessed like SSFilter's training images (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.baselines.registry import Baseline
from ssfilter.config import DataConfig
from ssfilter.data.datasets import Sample
from ssfilter.data.tile_dataset import training_dataset

__all__ = ["fit_on_samples"]


def fit_on_samples(
    model: Baseline,
    train_samples: Sequence[Sample],
    data_cfg: DataConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    batch_size: int | None = None,
) -> Baseline:
    """Move ``model`` to ``device`` and fit it on ``train_samples`` (labels are never used).

    Tiled runs (``data.coverage = "tiles"``) fit on every tile of every image.

    Args:
        model: An unfitted baseline (its encoder's mean/std normalise the images).
        train_samples: Training images.
        data_cfg: Resize, crop, batch size and loader workers.
        device: Where features and the model's state live.
        progress: Show progress bars.
        batch_size: Feature-extraction batch size; ``None`` uses ``data_cfg.batch_size``.

    Returns:
        The fitted model.
    """
    device = torch.device(device)
    encoder = model.encoder
    loader = DataLoader(
        training_dataset(data_cfg, list(train_samples), encoder),
        batch_size=batch_size or data_cfg.batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    model = model.to(device)
    name = type(model).__name__.lower()
    batches = tqdm(loader, desc=f"{name} features", unit="batch", disable=not progress, dynamic_ncols=True)
    model.fit(batches, progress=progress)
    return model
