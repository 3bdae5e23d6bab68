"""Device choice with clear errors, shared by training, filtering, inference and the pipelines."""

from __future__ import annotations

import torch

from ssfilter.errors import DeviceUnavailableError
from ssfilter.runtime import distributed

__all__ = ["enable_tf32", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """Map ``auto``/``cpu``/``cuda`` to a device, with a clear error when CUDA is missing.

    Under ``torchrun`` (``WORLD_SIZE > 1``) a plain ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:K``.

    Raises:
        DeviceUnavailableError: ``cuda`` was asked for on a machine without a CUDA GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu"
        )
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and distributed.launched_distributed():
        device = torch.device("cuda", distributed.env_local_rank())
    return device


def enable_tf32(device: torch.device) -> None:
    """Allow TF32 matmuls and convolutions on CUDA (a no-op elsewhere): fp32 accuracy is not needed there."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
