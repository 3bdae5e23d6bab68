"""Encoder weight files: reading local state dicts safely, offline checks and the hub fallback.

Every backbone module loads its pretrained weights through these helpers, so the rules are the same for
all of them: a file that is named must exist (:class:`~ssfilter.errors.WeightsUnavailableError`
otherwise), pickles are read with ``weights_only`` (no arbitrary objects), and nothing is downloaded
when ``HF_HUB_OFFLINE`` or ``SSFILTER_OFFLINE`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ssfilter.errors import WeightsUnavailableError

__all__ = ["download_hub_file", "is_offline", "read_shapes", "read_state", "require_file"]


def require_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path` after checking that the file exists.

    Raises:
        WeightsUnavailableError: There is no such file.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsUnavailableError(f"weights file not found: {file}")
    return file


def read_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from safetensors, or a pickle with ``weights_only`` (no arbitrary objects).

    Raises:
        WeightsUnavailableError: The file does not exist.
    """
    file = require_file(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(str(file), map_location="cpu", weights_only=True)


def read_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes by key of a weights file, or ``None`` when it holds no state dict.

    A ``.safetensors`` file is read from its header only (no tensor is loaded), so looking at a large
    checkpoint is cheap.

    Raises:
        WeightsUnavailableError: The file does not exist.
    """
    file = require_file(path)
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        return None
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def is_offline() -> bool:
    """Whether downloads are forbidden (``HF_HUB_OFFLINE`` or ``SSFILTER_OFFLINE`` is set)."""
    return bool(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("SSFILTER_OFFLINE"))


def download_hub_file(repo: str, filename: str, hint: str) -> Path:
    """Fetch one file from the Hugging Face hub, failing fast when offline.

    Args:
        repo: Hub repository, e.g. ``timm/vit_small_patch14_reg4_dinov2.lvd142m``.
        filename: File inside the repository.
        hint: How to obtain the weights by hand; ends every error message.

    Raises:
        WeightsUnavailableError: Offline mode is set, or the download failed for any reason.
    """
    if is_offline():
        raise WeightsUnavailableError(f"offline mode is set. {hint}")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars
    except ImportError as err:  # pragma: no cover - timm depends on huggingface_hub
        raise WeightsUnavailableError(hint) from err
    disable_progress_bars()
    try:
        return Path(hf_hub_download(repo, filename, etag_timeout=5))
    except Exception as err:  # noqa: BLE001 - any network/hub failure means "not available"
        raise WeightsUnavailableError(f"could not download weights ({type(err).__name__}). {hint}") from err
