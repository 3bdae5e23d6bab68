"""Evaluate an anomaly scorer on a labelled test split (SPEC §1 maps, §8 metrics): one loop for all.

Every method is evaluated by the same loop, :func:`evaluate`, over a
:class:`~ssfilter.evaluation.scorers.Scorer`: something that turns a batch of normalised images into anomaly
maps at ``eval_size`` and image scores (``maps, scores = scorer(images)``); :func:`evaluate_model` and
:func:`evaluate_baseline` are the two one-call entry points (tiled when the run's coverage is ``"tiles"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.baselines.registry import Baseline
from ssfilter.config import Config, DataConfig
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import mask_transform_for, transform_for
from ssfilter.evaluation.metrics import MetricAccumulator
from ssfilter.evaluation.scorers import BaselineScorer, Scorer, scorer_for, with_coverage
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["EvaluationResult", "evaluate", "evaluate_baseline", "evaluate_model"]


@dataclass
class EvaluationResult:
    """Metrics of one evaluation plus per-image scores (for reports)."""

    metrics: dict[str, float | None]
    n_test: int
    paths: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # Per-image smallest and largest anomaly-map values: a report's one fixed heat-map scale.
    map_min: list[float] = field(default_factory=list)
    map_max: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The ``evaluate`` JSON contract (SPEC §11) plus per-image scores."""
        return {
            "metrics": self.metrics,
            "n_test": self.n_test,
            "images": [
                {"path": p, "score": s, "label": lab}
                for p, s, lab in zip(self.paths, self.scores, self.labels, strict=True)
            ],
        }


@torch.no_grad()
def evaluate(
    scorer: Scorer,
    samples: Sequence[Sample],
    data_cfg: DataConfig,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Compute all SPEC §8 metrics of ``scorer`` on labelled ``samples``: the one evaluation loop.

    Images are preprocessed like the training images with the scorer's normalisation. Masks follow the
    image through the same resize and crop, are binarised with ``> 0`` at crop size, then brought to
    ``eval_size`` with nearest-neighbour sampling so they stay binary. Tiled runs score one whole image at a
    time and compare over the whole image: their masks go straight to ``eval_size``
    (:func:`~ssfilter.data.transforms.mask_transform_for`). Pixel metrics are undefined when an anomalous
    image lacks a mask.

    Args:
        scorer: Maps and scores of image batches.
        samples: Labelled test samples.
        data_cfg: Resize, crop, evaluation size, batch size and loader workers.
        batch_size: Images per batch; ``None`` uses ``data_cfg.batch_size``.
        progress: Show a progress bar.
    """
    device = scorer.device
    transform = transform_for(data_cfg, scorer)
    dataset = AnomalyDataset(list(samples), transform, mask_transform_for(data_cfg))
    tiled = data_cfg.coverage == "tiles"  # whole images of any size, each many tiles: one at a time
    loader = DataLoader(
        dataset,
        batch_size=1 if tiled else batch_size or data_cfg.batch_size,
        shuffle=False,
        num_workers=data_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    acc = MetricAccumulator()
    result = EvaluationResult(metrics={}, n_test=len(dataset))
    size = data_cfg.eval_size
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, dynamic_ncols=True):
        maps, scores = scorer(batch["image"].to(device, non_blocking=True))
        masks = F.interpolate(batch["mask"].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
        has_mask = batch["has_mask"].numpy().astype(bool)
        labels = batch["label"].numpy().astype(int)
        # An anomalous image without a mask has unknown pixels: pass None for the whole batch's masks
        # only when such an image is present, so the accumulator reports pixel metrics as undefined.
        mask_arg = None if np.any((labels == 1) & ~has_mask) else masks.numpy()
        acc.update(scores.cpu().numpy(), labels, maps.cpu().numpy(), mask_arg)
        result.paths.extend(batch["path"])
        result.scores.extend(float(s) for s in scores.cpu())
        result.labels.extend(int(v) for v in labels)
        flat = maps.flatten(1)
        result.map_min.extend(float(v) for v in flat.amin(1).cpu())
        result.map_max.extend(float(v) for v in flat.amax(1).cpu())
    result.metrics = acc.compute()
    result.curves = acc.curves()
    return result


def evaluate_model(
    model: DinomalyModel,
    samples: Sequence[Sample],
    cfg: Config,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Compute all SPEC §8 metrics of a trained model on labelled ``samples`` (see :func:`evaluate`)."""
    model = model.to(torch.device(device)).eval()
    return evaluate(scorer_for(model, cfg), samples, cfg.data, batch_size=batch_size, progress=progress)


def evaluate_baseline(
    model: Baseline,
    samples: Sequence[Sample],
    data_cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Compute all SPEC §8 metrics of a fitted baseline on labelled ``samples`` (see :func:`evaluate`)."""
    model = model.to(torch.device(device))
    scorer = with_coverage(lambda size: BaselineScorer(model, size), data_cfg)
    return evaluate(scorer, samples, data_cfg, batch_size=batch_size, progress=progress)
