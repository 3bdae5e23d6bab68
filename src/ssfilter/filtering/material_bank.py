"""The material bank: the most recent materials, kept so synthesis can go on without a new candidate."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

from ssfilter.filtering.materials import Material
from ssfilter.filtering.random_draws import draw_index

__all__ = ["MaterialBank"]


class MaterialBank:
    """FIFO of the most recent materials, so synthesis can go on in batches without a new candidate.

    The paper builds the bank from the current mini-batch only ("For each selected anomaly in the minibatch,
    we construct an anomaly material bank"); keeping materials across iterations is this project's choice,
    since high-confidence candidates (``tau = 8``) are rare. ``capacity = 0`` reproduces the paper: each
    :meth:`add` replaces the content with that batch's materials (an empty list empties the bank), so the
    trainer must call :meth:`add` once per iteration. With ``capacity > 0``, :meth:`add` appends and the
    oldest materials beyond ``capacity`` are dropped.

    Args:
        capacity: Maximum number of materials kept across iterations; 0 means "current batch only".
    """

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._items: deque[Material] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def materials(self) -> list[Material]:
        """The stored materials, oldest first."""
        return list(self._items)

    def add(self, materials: Iterable[Material]) -> None:
        """Add one iteration's materials (see the class docstring for ``capacity = 0``)."""
        new = list(materials)
        if self.capacity == 0:
            self._items = deque(new)
            return
        self._items.extend(new)
        while len(self._items) > self.capacity:
            self._items.popleft()

    def clear(self) -> None:
        """Remove every material."""
        self._items.clear()

    def sample(self, n: int, generator: torch.Generator) -> list[Material]:
        """``n`` materials drawn uniformly with replacement; empty when the bank is empty or ``n <= 0``."""
        if n <= 0 or not self._items:
            return []
        return [self._items[draw_index(len(self._items), generator)] for _ in range(n)]

    def state_dict(self) -> dict[str, Any]:
        """Tensors (on CPU) and plain values only, loadable with ``torch.load(weights_only=True)``."""
        items = list(self._items)
        return {
            "capacity": self.capacity,
            "pixels": [m.pixels.detach().cpu().clone() for m in items],
            "masks": [m.mask.detach().cpu().clone() for m in items],
            "source_index": torch.tensor([m.source_index for m in items], dtype=torch.long),
            "peak": torch.tensor([list(m.peak) for m in items], dtype=torch.long).reshape(-1, 2),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the exact content saved by :meth:`state_dict` (materials stay on CPU until pasted)."""
        pixels, masks = list(state["pixels"]), list(state["masks"])
        source_index, peak = state["source_index"].tolist(), state["peak"].tolist()
        if not len(pixels) == len(masks) == len(source_index) == len(peak):
            raise ValueError("inconsistent material bank state")
        self.capacity = int(state["capacity"])
        self._items = deque(
            Material(pixels=p, mask=m.bool(), source_index=int(s), peak=(int(r), int(c)))
            for p, m, s, (r, c) in zip(pixels, masks, source_index, peak, strict=True)
        )
