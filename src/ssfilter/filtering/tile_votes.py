"""From the tiles' verdicts to one verdict per image, for runs trained on tiles (``data.coverage = "tiles"``).

The dataset filter of a tiled run votes on tiles (a tile is compared with other images' tiles, never with
its own image's). An image is as suspect as its most suspect tile: a defect covers a few tiles at most, so
averaging would dilute it by the number of tiles. Its record therefore takes the fewest keeps, the highest
mean ``A`` and the highest mean ``U`` among its tiles, and the decision follows from those: the kappa_2
vote on the fewest keeps, or the folder's outlier cut on the highest mean ``A`` (see
:mod:`ssfilter.filtering.folder_decision`), which is calibrated over the images' maxima and so stays
calibrated whatever the number of tiles. The vote is per tile and does not correct for that number: on a
clean folder each extra tile is another chance of a discarded vote, so tiled runs should use the outlier
decision (the CLI says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from ssfilter.filtering.filter_outputs import FilterRecord, decide

__all__ = ["merge_tile_records"]


def _nanmax(values: list[float]) -> float:
    """Largest non-NaN value, NaN when all are NaN (a score that was not computed)."""
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def merge_tile_records(
    tiles: Sequence[FilterRecord], groups: torch.Tensor, samples: Sequence[Sample], min_keep: int
) -> list[FilterRecord]:
    """One record per image of ``samples`` from the records of its tiles.

    Args:
        tiles: One record per tile (the tile dataset's order).
        groups: ``[T]`` image index of every tile.
        samples: The images.
        min_keep: kappa_2 of the vote.
    """
    if len(tiles) != len(groups):
        raise ValueError(f"{len(tiles)} tile records for {len(groups)} tiles")
    members: list[list[FilterRecord]] = [[] for _ in samples]
    for record, group in zip(tiles, groups.tolist(), strict=True):
        members[int(group)].append(record)
    out = []
    for sample, own in zip(samples, members, strict=True):
        if not own:
            raise ValueError(f"{sample.path} has no tile records")
        kept = min(r.times_kept for r in own)
        label = int(sample.label) if sample.label in (LABEL_NORMAL, LABEL_ANOMALOUS) else LABEL_UNKNOWN
        out.append(
            FilterRecord(
                path=str(sample.path),
                times_seen=min(r.times_seen for r in own),
                times_kept=kept,
                mean_score=_nanmax([r.mean_score for r in own]),
                mean_uncertainty=_nanmax([r.mean_uncertainty for r in own]),
                decision=decide(kept, min_keep),
                label=label,
            )
        )
    return out
