"""The registry of anomaly-synthesis methods (paper Table 5), chosen by ``restoration.synthesis``.

A synthesis method turns kept (presumed normal) images of a batch into synthetic anomalies for the
restoration loss (Eq. 13). Built-in methods:

* ``ours`` (:mod:`~ssfilter.filtering.synthesis`) -- the paper's: real anomalous materials from the
  batch's high-confidence candidates pasted onto the foreground; one synthetic image per material candidate;
* ``cutpaste`` (:mod:`~ssfilter.filtering.cutpaste`) -- Li et al. 2021: a rectangle cut from the kept image
  and pasted elsewhere on its foreground; ``restoration.synthetic_per_batch`` images per batch (paper: 2);
* ``draem`` (:mod:`~ssfilter.filtering.draem`) -- Zavrtanik et al. 2021: a Perlin-noise mask blending a
  texture into the foreground; ``restoration.synthetic_per_batch`` images per batch (paper: 2).

Adding a method: a module with a :class:`SynthesisMethod` subclass decorated with
``@register_synthesis("name")`` and its line in :data:`BUILTIN_SYNTHESIS` (imported on first use).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from ssfilter.errors import SSFilterError
from ssfilter.filtering.materials import Material

__all__ = [
    "BUILTIN_SYNTHESIS",
    "SynthesisMethod",
    "SynthesisRequest",
    "UnknownSynthesisError",
    "empty_synthesis",
    "get_synthesis",
    "list_synthesis",
    "register_synthesis",
]

#: Built-in methods: name -> the module that registers it.
BUILTIN_SYNTHESIS: dict[str, str] = {
    "ours": "ssfilter.filtering.synthesis",
    "cutpaste": "ssfilter.filtering.cutpaste",
    "draem": "ssfilter.filtering.draem",
}

_REGISTRY: dict[str, type[SynthesisMethod]] = {}
_Method = TypeVar("_Method", bound="type[SynthesisMethod]")


class UnknownSynthesisError(SSFilterError, ValueError):
    """No synthesis method is registered under the requested name."""


@dataclass
class SynthesisRequest:
    """What one batch offers for synthesis.

    Attributes:
        kept_images: Normalised kept images ``[N, 3, H, W]``.
        foreground: Their foreground masks, bool ``[N, H, W]`` (where anomalies may be placed).
        count: Number of synthetic images to make.
        materials: Material bank content (methods that use materials).
        materials_per_image: Materials per synthetic image, ``count`` values (methods that use materials).
    """

    kept_images: Tensor
    foreground: Tensor
    count: int
    materials: Sequence[Material] = ()
    materials_per_image: Sequence[int] = field(default_factory=list)


class SynthesisMethod(ABC):
    """One way of making synthetic anomalies from kept images.

    Attributes:
        name: Registered name (set by :func:`register_synthesis`).
        uses_materials: Needs the material bank: nothing is synthesised while it is empty, and the number of
            materials per image follows ``restoration.material_count``.
    """

    name: str = ""
    uses_materials: bool = False

    def __init__(self, synthetic_per_batch: int = 2) -> None:
        if synthetic_per_batch < 1:
            raise ValueError(f"restoration.synthetic_per_batch must be >= 1, got {synthetic_per_batch}")
        self.synthetic_per_batch = int(synthetic_per_batch)

    def count(self, n_candidates: int) -> int:
        """Synthetic images of a batch with ``n_candidates`` material candidates (default: a fixed number)."""
        return self.synthetic_per_batch

    @abstractmethod
    def synthesize(
        self, request: SynthesisRequest, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(images [count, 3, H, W], source_index [count] long, masks [count, H, W] bool)``.

        ``source_index`` indexes ``request.kept_images``: the clean image each synthetic one restores. Each
        synthetic image equals its source outside its mask. All randomness comes from ``generator``.
        """


def empty_synthesis(kept_images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The zero-image result, shaped like ``kept_images``."""
    device = kept_images.device
    return (
        kept_images.new_empty((0, *kept_images.shape[1:])),
        torch.empty(0, dtype=torch.long, device=device),
        torch.empty((0, *kept_images.shape[2:]), dtype=torch.bool, device=device),
    )


def register_synthesis(name: str) -> Callable[[_Method], _Method]:
    """Class decorator: register a :class:`SynthesisMethod` subclass as ``name`` (``restoration.synthesis``).

    Raises:
        ValueError: ``name`` is empty, belongs to a built-in method of another module, or is taken.
    """
    if not name or not name.strip():
        raise ValueError("a synthesis method needs a non-empty name")

    def decorate(cls: _Method) -> _Method:
        module = BUILTIN_SYNTHESIS.get(name)
        if module is not None and cls.__module__ != module:
            raise ValueError(f"{name!r} is a built-in synthesis method (defined in {module})")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"synthesis method {name!r} is already registered ({old.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_synthesis() -> tuple[str, ...]:
    """Names of every synthesis method: the built-in ones first (no imports)."""
    return tuple(dict.fromkeys([*BUILTIN_SYNTHESIS, *_REGISTRY]))


def get_synthesis(name: str) -> type[SynthesisMethod]:
    """The class registered as ``name`` (a built-in module is imported on first use).

    Raises:
        UnknownSynthesisError: No method has that name; the message lists the known ones.
    """
    if name not in _REGISTRY and name in BUILTIN_SYNTHESIS:
        importlib.import_module(BUILTIN_SYNTHESIS[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownSynthesisError(
            f"unknown synthesis method {name!r} (restoration.synthesis); choose one of "
            f"{', '.join(list_synthesis())}"
        ) from None
