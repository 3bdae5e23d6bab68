"""ssfilter: fully unsupervised industrial anomaly detection on noisy data (SSFilter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ssfilter.version import VERSION as __version__

__all__ = ["Config", "Detector", "__version__", "get_preset"]

if TYPE_CHECKING:
    from ssfilter.api import Detector
    from ssfilter.config import Config, get_preset


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import ssfilter` (and the CLI's --help) fast: torch loads only when needed.
    if name == "Detector":
        from ssfilter.api import Detector

        return Detector
    if name in {"Config", "get_preset"}:
        from ssfilter import config

        return getattr(config, name)
    raise AttributeError(f"module 'ssfilter' has no attribute {name!r}")
