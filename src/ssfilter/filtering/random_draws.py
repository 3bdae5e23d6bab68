"""Single random draws from a caller-owned :class:`torch.Generator`, made on the generator's own device.

Synthesis and the material bank draw every random number through these, so that restoration is reproducible
and resumable from the generator's state alone, whichever device the generator lives on.
"""

from __future__ import annotations

import torch

__all__ = ["draw_index", "draw_uniform"]


def draw_index(high: int, generator: torch.Generator) -> int:
    """One integer in ``[0, high)`` drawn on the generator's own device."""
    return int(torch.randint(high, (1,), generator=generator, device=generator.device).item())


def draw_uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One float in ``[low, high)`` drawn on the generator's own device."""
    u = float(torch.rand((1,), generator=generator, device=generator.device, dtype=torch.float64).item())
    return low + (high - low) * u
