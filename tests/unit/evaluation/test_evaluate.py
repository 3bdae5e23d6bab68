from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import roc_auc_score

from ssfilter.config import DataConfig
from ssfilter.data.datasets import mvtec_samples
from ssfilter.evaluation.evaluate import evaluate
from ssfilter.evaluation.scorers import BaselineScorer


class _RecordingScorer:
    """A scorer whose image score is the image's mean value; it records what it returned."""

    device = torch.device("cpu")
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: list[float] = []

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = images.mean(dim=(1, 2, 3))
        self.seen += scores.tolist()
        maps = scores[:, None, None].expand(-1, self.size, self.size).clone()
        maps[:, 0, 0] = -1.0  # a known smallest value
        return maps, scores


def test_evaluate_runs_any_scorer(synthetic_mvtec: Path) -> None:
    samples = mvtec_samples(synthetic_mvtec, "test")
    data_cfg = DataConfig(resize=32, crop=32, batch_size=4, eval_size=16)
    scorer = _RecordingScorer(16)
    result = evaluate(scorer, samples, data_cfg, progress=False)
    labels = [s.label for s in samples]
    assert result.n_test == 9 and result.labels == labels
    assert result.paths == [s.path for s in samples]
    assert result.scores == pytest.approx(scorer.seen)
    assert result.metrics["I-AUROC"] == pytest.approx(roc_auc_score(labels, scorer.seen))
    assert result.map_min == [-1.0] * 9 and result.map_max == pytest.approx(scorer.seen)


class _FakeBaseline:
    """Maps at the crop (a left-right ramp), image score 7."""

    device = torch.device("cpu")
    crop = 8

    class encoder:  # noqa: N801 (stands in for an Encoder attribute)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ramp = torch.linspace(0.0, 1.0, self.crop).expand(images.shape[0], self.crop, -1)
        return ramp.clone(), torch.full((images.shape[0],), 7.0)


def test_baseline_scorer_resizes_maps_to_the_evaluation_size() -> None:
    scorer = BaselineScorer(_FakeBaseline(), eval_size=16)  # type: ignore[arg-type]
    assert scorer.mean == (0.5, 0.5, 0.5) and scorer.std == (0.25, 0.25, 0.25)
    maps, scores = scorer(torch.zeros(2, 3, 8, 8))
    assert maps.shape == (2, 16, 16) and scores.tolist() == [7.0, 7.0]
    # Bilinear, half-pixel centres: the ramp stays a ramp, its ends clamp to the crop's end values.
    assert bool((maps[:, :, 1:] >= maps[:, :, :-1]).all())
    assert float(maps[0, 0, 0]) == 0.0 and float(maps[0, 0, -1]) == 1.0
    same = BaselineScorer(_FakeBaseline(), eval_size=8)  # type: ignore[arg-type]
    assert torch.equal(same(torch.zeros(1, 3, 8, 8))[0][0], torch.linspace(0.0, 1.0, 8).expand(8, -1))
