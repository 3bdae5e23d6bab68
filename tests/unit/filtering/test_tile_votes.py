"""A tiled run's dataset filter: an image is as suspect as its most suspect tile."""

from __future__ import annotations

import math

import pytest
import torch

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, LABEL_UNKNOWN, Sample
from ssfilter.filtering.filter_outputs import FilterRecord
from ssfilter.filtering.tile_votes import merge_tile_records


def _tile(kept: int, a: float, u: float = math.nan) -> FilterRecord:
    return FilterRecord("t", 10, kept, a, u, "normal")


def test_fewest_keeps_and_highest_scores_decide() -> None:
    samples = [Sample("a.png", LABEL_NORMAL), Sample("b.png", LABEL_ANOMALOUS), Sample("c.png", -1)]
    tiles = [_tile(9, 0.1), _tile(8, 0.2), _tile(10, 0.1), _tile(2, 0.9), _tile(7, 0.3), _tile(6, 0.4)]
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    out = merge_tile_records(tiles, groups, samples, min_keep=5)
    assert [r.path for r in out] == ["a.png", "b.png", "c.png"]
    assert [r.times_kept for r in out] == [8, 2, 6]
    assert [r.mean_score for r in out] == [0.2, 0.9, 0.4]
    assert [r.decision for r in out] == ["normal", "anomalous", "normal"]
    assert [r.label for r in out] == [LABEL_NORMAL, LABEL_ANOMALOUS, LABEL_UNKNOWN]
    assert all(math.isnan(r.mean_uncertainty) for r in out)


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError, match="tile records"):
        merge_tile_records([_tile(1, 0.1)], torch.tensor([0, 0]), [Sample("a", 0)], 5)
    with pytest.raises(ValueError, match="no tile records"):
        merge_tile_records([_tile(1, 0.1)], torch.tensor([0]), [Sample("a", 0), Sample("b", 0)], 5)
