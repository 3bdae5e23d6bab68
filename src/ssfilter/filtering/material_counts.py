"""How many materials are pasted on one synthetic image (paper Table 9), as a rule written in the config.

``restoration.material_count`` holds one of these rule strings:

* ``schedule`` -- the paper's default, "from 1 to 5": grows in equal stages over training from
  ``restoration.materials_min`` to ``restoration.materials_max`` (:func:`~ssfilter.filtering.synthesis.
  materials_per_image`); ``schedule:A:B`` gives the bounds in the rule itself (Table 9's "from 1 to 10" is
  ``schedule:1:10``);
* ``fixed:N`` -- always ``N`` (Table 9's "2" is ``fixed:2``);
* ``rand:A:B`` -- an integer drawn uniformly in ``[A, B]`` for every synthetic image, from the in-batch
  filter's generator (Table 9's "rand(1,3)" is ``rand:1:3``).

Each rule kind is one entry of :data:`RULE_KINDS`; :func:`parse_material_count` reads a rule string and
rejects a malformed one with a message that lists the accepted forms.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ssfilter.errors import SSFilterError
from ssfilter.filtering.random_draws import draw_index
from ssfilter.filtering.synthesis import materials_per_image

__all__ = [
    "RULE_FORMS",
    "RULE_KINDS",
    "FixedCount",
    "MaterialCountError",
    "MaterialCountRule",
    "RandomCount",
    "ScheduledCount",
    "parse_material_count",
]

#: The accepted spellings, for error messages and the README.
RULE_FORMS = ("schedule", "schedule:A:B", "fixed:N", "rand:A:B")


class MaterialCountError(SSFilterError, ValueError):
    """A ``restoration.material_count`` rule string is malformed or out of range."""


class MaterialCountRule(ABC):
    """A rule giving the number of materials pasted on each synthetic image of one batch."""

    @abstractmethod
    def counts(
        self, iteration: int, total_iters: int, n_images: int, generator: torch.Generator
    ) -> list[int]:
        """Materials per synthetic image for the ``n_images`` synthetic images of ``iteration``."""


@dataclass(frozen=True)
class ScheduledCount(MaterialCountRule):
    """Grows in equal stages from ``low`` at the first iteration to ``high`` at the last (no random draw)."""

    low: int
    high: int

    def counts(
        self, iteration: int, total_iters: int, n_images: int, generator: torch.Generator
    ) -> list[int]:
        """The same scheduled count for every image of the batch."""
        return [materials_per_image(iteration, total_iters, self.low, self.high)] * n_images


@dataclass(frozen=True)
class FixedCount(MaterialCountRule):
    """Always ``n`` materials."""

    n: int

    def counts(
        self, iteration: int, total_iters: int, n_images: int, generator: torch.Generator
    ) -> list[int]:
        """``n`` for every image."""
        return [self.n] * n_images


@dataclass(frozen=True)
class RandomCount(MaterialCountRule):
    """An integer drawn uniformly in ``[low, high]`` per synthetic image, from the caller's generator."""

    low: int
    high: int

    def counts(
        self, iteration: int, total_iters: int, n_images: int, generator: torch.Generator
    ) -> list[int]:
        """One draw per image, in image order."""
        return [self.low + draw_index(self.high - self.low + 1, generator) for _ in range(n_images)]


def _ints(text: str, args: list[str], expected: int) -> list[int]:
    """``args`` as ``expected`` integers, or a clear error naming the rule string."""
    if len(args) != expected:
        raise MaterialCountError(
            f"material-count rule {text!r} takes {expected} number(s) after its kind; "
            f"use one of {', '.join(RULE_FORMS)}"
        )
    try:
        return [int(a) for a in args]
    except ValueError:
        raise MaterialCountError(
            f"material-count rule {text!r}: expected whole numbers, got {':'.join(args)!r}"
        ) from None


def _range(text: str, low: int, high: int) -> tuple[int, int]:
    if not 1 <= low <= high:
        raise MaterialCountError(f"material-count rule {text!r}: expected 1 <= A <= B, got A={low}, B={high}")
    return low, high


def _schedule(text: str, args: list[str], defaults: tuple[int, int]) -> MaterialCountRule:
    if not args:
        low, high = defaults
        if not 0 <= low <= high:
            raise MaterialCountError(
                f"restoration.materials_min/materials_max must satisfy 0 <= min <= max, got {low}, {high}"
            )
        return ScheduledCount(low, high)
    return ScheduledCount(*_range(text, *_ints(text, args, 2)))


def _fixed(text: str, args: list[str], defaults: tuple[int, int]) -> MaterialCountRule:
    (n,) = _ints(text, args, 1)
    if n < 1:
        raise MaterialCountError(f"material-count rule {text!r}: N must be >= 1, got {n}")
    return FixedCount(n)


def _rand(text: str, args: list[str], defaults: tuple[int, int]) -> MaterialCountRule:
    return RandomCount(*_range(text, *_ints(text, args, 2)))


#: Rule kind -> builder ``(rule text, numbers after the kind, (materials_min, materials_max))``.
RULE_KINDS: dict[str, Callable[[str, list[str], tuple[int, int]], MaterialCountRule]] = {
    "schedule": _schedule,
    "fixed": _fixed,
    "rand": _rand,
}


def parse_material_count(text: str, materials_min: int = 1, materials_max: int = 5) -> MaterialCountRule:
    """Read a ``restoration.material_count`` rule string (see the module docstring).

    Args:
        text: The rule, e.g. ``"schedule"``, ``"fixed:2"``, ``"rand:1:3"`` (spaces around parts ignored).
        materials_min: Lower bound of a bare ``schedule``.
        materials_max: Upper bound of a bare ``schedule``.

    Raises:
        MaterialCountError: Unknown kind, wrong number of values, non-integers or bounds out of range.
    """
    if not isinstance(text, str) or not text.strip():
        raise MaterialCountError(f"material-count rule must be one of {', '.join(RULE_FORMS)}, got {text!r}")
    kind, *args = (part.strip() for part in text.strip().split(":"))
    builder = RULE_KINDS.get(kind.lower())
    if builder is None:
        raise MaterialCountError(f"unknown material-count rule {text!r}; use one of {', '.join(RULE_FORMS)}")
    return builder(text, args, (int(materials_min), int(materials_max)))
