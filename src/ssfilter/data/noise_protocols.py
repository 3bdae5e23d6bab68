"""Noise protocols of ``ssfilter benchmark --protocol``: how each noise level's train and test sets are made.

* ``softpatch`` (default; paper §4.1, SPEC §7): ``int(alpha * n_train)`` anomalous test images, capped at half
  of the test anomalies, join the normal training images (:func:`~ssfilter.data.noise.softpatch_split`).
* ``boundary`` (paper Table 10, "boundary conditions"): the same injection, then the normal training images
  are reduced to as many as were injected, so the training set is half anomalous (a 50% real noise rate). The
  paper runs it at ``alpha = 0.4`` (its default here). Which normal images stay is a seeded random choice,
  recorded in the split like the injected ones.

A protocol is a function ``(root, alpha, *, overlap, seed) -> (train, test, NoiseSplit)`` registered with
:func:`register_protocol`; :func:`get_protocol` looks one up by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, Sample
from ssfilter.data.noise import NoiseSplit, contamination, softpatch_split
from ssfilter.errors import SSFilterError

__all__ = [
    "NoiseProtocol",
    "UnknownProtocolError",
    "balance_normals",
    "balance_split",
    "boundary_split",
    "get_protocol",
    "keep_split",
    "list_protocols",
    "register_protocol",
]

SplitFunction = Callable[..., tuple[list[Sample], list[Sample], NoiseSplit]]
#: ``(train, test, split, seed) -> (train, test, split)``: what a protocol does to a format's own noisy split.
RefineFunction = Callable[
    [list[Sample], list[Sample], NoiseSplit, int], tuple[list[Sample], list[Sample], NoiseSplit]
]


def keep_split(
    train: list[Sample], test: list[Sample], split: NoiseSplit, seed: int
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """The refinement of the ``softpatch`` protocol: a format's noisy split as it is."""
    return train, test, split


class UnknownProtocolError(SSFilterError, ValueError):
    """No noise protocol is registered under the requested name."""


@dataclass(frozen=True)
class NoiseProtocol:
    """A registered noise protocol.

    Attributes:
        name: Its name (``--protocol``).
        split: ``(root, alpha, *, overlap, seed) -> (train, test, NoiseSplit)``.
        default_alphas: Noise levels ``benchmark`` runs when ``--alphas`` is not given.
        summary: One line for help texts.
        refine: What the protocol does to any format's own noisy split (SoftPatch injection for MVTec
            AD / VisA / folders, the FUIAD lists for Real-IAD); ``benchmark`` applies it per category.
    """

    name: str
    split: SplitFunction
    default_alphas: tuple[float, ...]
    summary: str
    refine: RefineFunction = keep_split


_REGISTRY: dict[str, NoiseProtocol] = {}


def register_protocol(
    name: str, *, default_alphas: Sequence[float], summary: str, refine: RefineFunction = keep_split
) -> Callable[[SplitFunction], SplitFunction]:
    """Function decorator: register a split function as the noise protocol ``name``.

    Raises:
        ValueError: ``name`` is empty or already taken by another function.
    """
    if not name or not name.strip():
        raise ValueError("a noise protocol needs a non-empty name")

    def decorate(fn: SplitFunction) -> SplitFunction:
        old = _REGISTRY.get(name)
        if old is not None and old.split is not fn:
            raise ValueError(f"noise protocol {name!r} is already registered")
        _REGISTRY[name] = NoiseProtocol(name, fn, tuple(float(a) for a in default_alphas), summary, refine)
        return fn

    return decorate


def list_protocols() -> tuple[str, ...]:
    """Names of the registered protocols, in registration order."""
    return tuple(_REGISTRY)


def get_protocol(name: str) -> NoiseProtocol:
    """The protocol registered as ``name``.

    Raises:
        UnknownProtocolError: No protocol has that name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownProtocolError(
            f"unknown noise protocol {name!r}; choose one of {', '.join(list_protocols())}"
        ) from None


register_protocol(
    "softpatch",
    default_alphas=(0.0, 0.1, 0.2, 0.4),
    summary="inject int(alpha * n_train) test anomalies (capped at half of them) into training",
)(softpatch_split)


def balance_normals(train: Sequence[Sample], seed: int) -> list[Sample]:
    """Keep every anomalous training sample and as many normal ones: a 50% noise rate (paper Table 10).

    The normal samples kept are the first ``n_anomalous`` of ``numpy.random.default_rng([seed, 1])``'s
    permutation of the normal ones (a stream apart from the injection's ``default_rng(seed)``), in their
    original order; all normal samples stay when there are fewer of them than anomalies.

    Raises:
        ValueError: A label is unknown (the protocol needs labelled samples).
    """
    contamination(train)  # refuses unlabelled samples
    normal = [i for i, s in enumerate(train) if s.label == LABEL_NORMAL]
    n_anomalous = sum(s.label == LABEL_ANOMALOUS for s in train)
    chosen = np.random.default_rng([seed, 1]).permutation(len(normal))[:n_anomalous]
    keep = {normal[int(i)] for i in chosen}
    return [s for i, s in enumerate(train) if s.label == LABEL_ANOMALOUS or i in keep]


def balance_split(
    train: list[Sample], test: list[Sample], split: NoiseSplit, seed: int
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """The refinement of the ``boundary`` protocol: keep as many normal training images as anomalies.

    Raises:
        ValueError: The split injected no anomaly (the training set would be empty).
    """
    if not split.injected:
        raise ValueError(
            f"the boundary protocol needs at least one injected anomaly; alpha={split.alpha:g} injects none "
            f"from {split.source}"
        )
    train = balance_normals(train, seed)
    split.train = [s.path for s in train]
    split.meta = {
        **split.meta,
        "protocol": "boundary",
        "n_train_normal": sum(s.label == LABEL_NORMAL for s in train),
        "noise_rate": contamination(train)["noise_rate"],
    }
    return train, test, split


@register_protocol(
    "boundary",
    default_alphas=(0.4,),
    summary="as softpatch, then normal training images reduced to the number injected (50% noise; Table 10)",
    refine=balance_split,
)
def boundary_split(
    root: str | os.PathLike[str], alpha: float, *, overlap: bool, seed: int = 0
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """Paper Table 10's boundary benchmark on an MVTec-layout category: a training set half anomalous.

    The anomalies and the test set are exactly those of :func:`~ssfilter.data.noise.softpatch_split` with the
    same ``alpha``, ``overlap`` and ``seed``; then :func:`balance_normals` keeps as many normal training
    images as anomalies were injected. E.g. bottle (209 train, 63 test anomalies) at ``alpha = 0.4``: 83
    requested, capped to 31 injected, so 31 normal + 31 anomalous training images.

    Raises:
        ValueError: ``alpha`` is 0 or the category has no test anomaly to inject (the set would be empty).
    """
    return balance_split(*softpatch_split(root, alpha, overlap=overlap, seed=seed), seed)
