"""The encoder registry: backbone names mapped to builders, filled by the :func:`register_encoder` decorator.

A backbone module declares each backbone once, next to its builder::

    @register_encoder("resnet18", stride=8, small_decoder=(64, 4))
    def resnet18(weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> Encoder:
        ...

and everything that used to branch on backbone names asks the registry instead: :func:`build_encoder`
builds by name, :func:`list_encoders` (and :data:`BACKBONES`) lists the names, :func:`encoder_entry`
tells a backbone's stride and small decoder before anything is built, :func:`identify_weights` finds the
backbone a weights file belongs to. Modules of the ``ssfilter.models.encoders`` package register when the
package is imported (see :func:`import_submodules`), so a new backbone file needs no other edit.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, overload

import torch

from ssfilter.errors import SSFilterError
from ssfilter.models.encoders.base import Encoder
from ssfilter.models.encoders.weights import read_shapes

__all__ = [
    "BACKBONES",
    "EncoderBuilder",
    "EncoderEntry",
    "ShapeTest",
    "UnknownEncoderError",
    "build_encoder",
    "encoder_entry",
    "identify_weights",
    "import_submodules",
    "list_encoders",
    "register_encoder",
    "unregister_encoder",
]

#: Predicate on a state dict's ``{key: shape}``: does the file hold this backbone's weights?
ShapeTest = Callable[[Mapping[str, tuple[int, ...]]], bool]


class EncoderBuilder(Protocol):
    """Builds one registered backbone (called by :func:`build_encoder` under a fixed seed)."""

    def __call__(self, weights: Path | None, *, allow_random: bool, keep_all_blocks: bool) -> Encoder:
        """Build the frozen encoder.

        Args:
            weights: Local weights file, or ``None``.
            allow_random: Random weights are acceptable when ``weights`` is ``None``; otherwise obtain
                pretrained weights or raise :class:`~ssfilter.errors.WeightsUnavailableError`.
            keep_all_blocks: Keep layers after the last target layer (parameter counting only).
        """
        ...


@dataclass(frozen=True)
class EncoderEntry:
    """What the registry knows about one backbone without building it.

    Attributes:
        name: Backbone name (``ModelConfig.backbone``, ``--backbone``).
        builder: Function that builds the encoder.
        stride: Input pixels per grid cell of the built encoder (crops must be multiples of it).
        small_decoder: Decoder ``(width, heads)`` for short CPU runs such as the demo; ``None`` means the
            encoder's natural width.
        recognises: Whether a weights file's ``{key: shape}`` belongs to this backbone; ``None`` for
            backbones that are never detected from a file (e.g. the random test ViT).
    """

    name: str
    builder: EncoderBuilder
    stride: int
    small_decoder: tuple[int, int] | None = None
    recognises: ShapeTest | None = None


_REGISTRY: dict[str, EncoderEntry] = {}


class UnknownEncoderError(SSFilterError, ValueError):
    """No backbone is registered under the requested name."""


def register_encoder(
    name: str,
    *,
    stride: int,
    small_decoder: tuple[int, int] | None = None,
    recognises: ShapeTest | None = None,
) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator that registers a builder under ``name`` (see :class:`EncoderEntry` for the fields).

    The decorated function is returned unchanged, so it can still be called directly.

    Raises:
        ValueError: ``name`` is already registered (two backbones may not share a name), or ``stride``
            is not positive.
    """
    if stride <= 0:
        raise ValueError(f"encoder {name!r}: stride must be positive, got {stride}")

    def decorate(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = EncoderEntry(name, builder, stride, small_decoder, recognises)
        return builder

    return decorate


def unregister_encoder(name: str) -> EncoderEntry:
    """Remove a backbone from the registry and return its entry (for tests and plugins that replace one).

    Raises:
        UnknownEncoderError: ``name`` is not registered.
    """
    entry = encoder_entry(name)
    del _REGISTRY[name]
    return entry


def list_encoders() -> list[str]:
    """Names of every registered backbone, sorted (independent of the order modules were imported)."""
    return sorted(_REGISTRY)


def encoder_entry(name: str) -> EncoderEntry:
    """The registry entry of backbone ``name``.

    Raises:
        UnknownEncoderError: Unknown backbone; the message lists the known ones.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise UnknownEncoderError(f"unknown backbone {name!r}; choose one of {', '.join(list_encoders())}")
    return entry


def build_encoder(
    name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    allow_random: bool = False,
    keep_all_blocks: bool = False,
    seed: int = 0,
) -> Encoder:
    """Build a frozen encoder by name.

    Args:
        name: One of :func:`list_encoders`.
        weights: Local weights file. DINOv2 accepts Meta ``.pth`` and timm ``.safetensors`` files;
            MobileNetV2 a torchvision state dict.
        allow_random: Permit random weights when none are given (tests, ``info``, the offline demo).
            Otherwise a missing file is downloaded when online, and an error says how to supply it.
        keep_all_blocks: Keep ViT blocks after the last target layer (only for parameter counting).
        seed: Seed of random initialisation (tiny ViT and ``allow_random``); the global random state is
            left as it was.

    Raises:
        UnknownEncoderError: for an unknown backbone (a ``ValueError``).
        WeightsUnavailableError: when weights are needed and cannot be obtained.
    """
    entry = encoder_entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        path = None if weights is None else Path(weights)
        return entry.builder(path, allow_random=allow_random, keep_all_blocks=keep_all_blocks)


def identify_weights(path: str | os.PathLike[str]) -> str | None:
    """Name of the first registered backbone that recognises the weights file, or ``None``.

    Only tensor shapes are read (a ``.safetensors`` header, or the pickle's tensors), so this is cheap.
    A file that holds no state dict belongs to no backbone.

    Raises:
        WeightsUnavailableError: The file does not exist.
    """
    shapes = read_shapes(path)
    if shapes is None:
        return None
    for entry in _REGISTRY.values():
        if entry.recognises is not None and entry.recognises(shapes):
            return entry.name
    return None


def import_submodules(package: str) -> list[str]:
    """Import every public (no leading underscore) module of ``package`` so that its backbones register.

    Called by ``ssfilter.models.encoders`` for itself: a new backbone file in that package is found
    without editing any other file. Also usable for a plugin package of one's own.

    Returns:
        The full names of the modules found, imported or already loaded.
    """
    pkg = importlib.import_module(package)
    names = [
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if not info.name.startswith("_")
    ]
    for module in names:
        importlib.import_module(module)
    return names


class _RegisteredNames(Sequence[str]):
    """A read-only, always current view of the registered backbone names."""

    def __len__(self) -> int:
        return len(_REGISTRY)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return list_encoders()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(list_encoders())

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return f"BACKBONES{tuple(list_encoders())!r}"


#: Registered backbone names (sorted), a live view of the registry: ``name in BACKBONES``, iteration, ``len``.
BACKBONES: Sequence[str] = _RegisteredNames()
