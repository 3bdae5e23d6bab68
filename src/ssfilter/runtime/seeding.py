"""Seeding and random-state snapshots, so that runs and resumed runs draw the same numbers."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "seed_everything", "seed_torch", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed the CPU generator and, on CUDA, the generator of ``device`` only (no other GPU is touched)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """CPU torch and Python random states (the part of a checkpoint that restores them).

    Training re-seeds the torch generators from ``(seed, iteration, rank)`` at every iteration, so no GPU
    generator state is needed for an exact resume (and none is read: that would touch every GPU).
    """
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
