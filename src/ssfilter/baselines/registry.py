"""The baseline registry: a name -> model-class table that a decorator fills.

A baseline is a frozen-encoder model with ``fit`` (on training-image batches) and ``predict`` (anomaly maps
at the crop and image scores), built as ``cls(encoder, crop=...)``. A module registers its class with
``@register_baseline("name")``; ``ssfilter/baselines/__init__.py`` imports each baseline module once (one
line per baseline), which is what fills the table. The benchmark and the evaluation read the table only,
so a new baseline is one new file plus that one import line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor

from ssfilter.models.encoders import Encoder

__all__ = ["Baseline", "BaselineFactory", "baseline_names", "build_baseline", "register_baseline"]


class Baseline(Protocol):
    """What the evaluation and the benchmark ask of a baseline model."""

    encoder: Encoder
    crop: int

    @property
    def device(self) -> torch.device:
        """Where the model's state lives (images are moved there)."""
        ...

    def fit(self, images: Iterable[Tensor | Mapping[str, Any]], progress: bool = False) -> Any:
        """Learn from batches of normalised training images (labels, if present, are ignored)."""
        ...

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Anomaly maps ``[B, crop, crop]`` and image scores ``[B]`` of normalised images."""
        ...

    def to(self, device: torch.device) -> Any:
        """Move the model (``nn.Module.to``)."""
        ...


#: ``cls(encoder, crop=crop)`` builds a baseline with its default hyper-parameters for that encoder.
BaselineFactory = Callable[..., Baseline]

_T = TypeVar("_T")

BASELINES: dict[str, BaselineFactory] = {}


def register_baseline(name: str) -> Callable[[_T], _T]:
    """Class decorator: make the class available as baseline ``name`` (lower case, no ``+``).

    Raises:
        ValueError: ``name`` is malformed or already taken by another class.
    """
    if not name or name != name.lower() or "+" in name or "," in name:
        raise ValueError(f"baseline names are lower case without '+' or ',', got {name!r}")

    def decorate(cls: _T) -> _T:
        if BASELINES.get(name, cls) is not cls:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = cls  # type: ignore[assignment]
        return cls

    return decorate


def baseline_names() -> list[str]:
    """Registered baseline names, in registration order."""
    return list(BASELINES)


def build_baseline(name: str, encoder: Encoder, crop: int) -> Baseline:
    """Baseline ``name`` with its default hyper-parameters, around ``encoder``, for ``crop`` inputs.

    Raises:
        ValueError: no baseline of that name.
    """
    try:
        factory = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; registered: {', '.join(BASELINES)}") from None
    return factory(encoder, crop=crop)
