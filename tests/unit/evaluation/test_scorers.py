"""The tiled scorer: stitched maps, the image score of the worst tile window, any inner scorer."""

from __future__ import annotations

import torch

from ssfilter.config import get_preset
from ssfilter.evaluation.scorers import TiledScorer, score_tensors, with_coverage


class _Brightness:
    """Inner scorer whose map is the first channel itself: maps and scores are easy to predict."""

    device = torch.device("cpu")
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        maps = images[:, 0]
        return maps, maps.flatten(1).amax(1)


def test_stitched_map_and_worst_window_score() -> None:
    image = torch.zeros(1, 3, 64, 160)
    image[0, 0, 10:12, 150:152] = 1.0  # a 4-pixel spot in the last tile
    scorer = TiledScorer(_Brightness(32), tile=32, overlap=0.25, eval_size=16, chunk=4)
    full, score = scorer.stitched(image[0])
    assert full.shape == (64, 160) and torch.allclose(full, image[0, 0])
    assert abs(float(score) - 4 / 10) < 1e-6  # top 1% of a 32 x 32 window = 10 pixels, 4 of them at 1
    maps, scores = scorer(image)
    assert maps.shape == (1, 16, 16) and torch.allclose(scores, score[None])
    assert scorer.inner.calls > 1  # tiles went through in chunks


def test_with_coverage_builds_the_inner_scorer_at_the_right_size() -> None:
    cfg = get_preset("cpu-fast")
    cfg.data.crop, cfg.data.eval_size = 32, 64
    cfg.data.coverage = "whole"
    assert with_coverage(_Brightness, cfg.data).size == 64
    cfg.data.coverage = "tiles"
    tiled = with_coverage(_Brightness, cfg.data)
    assert isinstance(tiled, TiledScorer) and tiled.inner.size == 32 and tiled.eval_size == 64


def test_score_tensors_mixes_sizes() -> None:
    scorer = TiledScorer(_Brightness(32), tile=32, overlap=0.25, eval_size=8)
    maps, scores = score_tensors(scorer, [torch.rand(3, 32, 48), torch.rand(3, 40, 32)])
    assert maps.shape == (2, 8, 8) and scores.shape == (2,)
