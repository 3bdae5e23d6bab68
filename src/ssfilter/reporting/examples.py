"""Collect what an evaluation report shows from a trained model: example images with their heat-maps.

:func:`ssfilter.evaluation.evaluate.evaluate_model` keeps only scores and per-image map extremes (a
test set's maps can be gigabytes), so the few example images are run through the model again here, with
the same preprocessing and :func:`~ssfilter.evaluation.evaluate.predict_maps`; the model is in eval
mode, so their maps and scores are those of the evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import denormalize, mask_transform_for, transform_for
from ssfilter.evaluation.evaluate import EvaluationResult
from ssfilter.evaluation.scorers import Scorer, scorer_for
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.reporting.evaluate_page import EvaluateReport, ExampleGroup, ExampleImage, HeatmapScale

__all__ = ["build_evaluate_report", "heatmap_scale", "select_examples"]


def heatmap_scale(result: EvaluationResult, run_dir: str | os.PathLike[str] | None = None) -> HeatmapScale:
    """The one heat-map scale of a report: minimum to maximum over all test maps.

    The range of the test maps themselves (not the run's calibration scale, whose pixel threshold can
    lie above every test value of a weak model and paint everything cold) shows where the model sees
    anomalies relative to the whole test set. The calibrated pixel threshold, when the run has one, is
    marked on the colour bar.

    Args:
        result: The evaluation (its per-image ``map_min`` / ``map_max``).
        run_dir: Run folder that may hold ``calibration.json``.
    """
    threshold = None
    if run_dir is not None and (Path(run_dir) / "calibration.json").is_file():
        from ssfilter.errors import CalibrationError
        from ssfilter.inference.calibration import Calibration

        try:
            threshold = Calibration.load(run_dir).pixel_threshold
        except (CalibrationError, OSError):
            threshold = None
    if not result.map_max:
        return HeatmapScale(0.0, 1.0, "no maps", threshold)
    lo, hi = float(min(result.map_min)), float(max(result.map_max))
    return HeatmapScale(lo, hi, "minimum to maximum over all test maps", threshold)


def select_examples(result: EvaluationResult, per_group: int = 4) -> list[tuple[str, str, list[int]]]:
    """Which test images to show: ``(title, description, indices into result)`` per group.

    Groups: the highest-scored anomalous images (the clearest detections), the lowest-scored anomalous
    images (the hardest, possibly missed defects) and the highest-scored normal images (likely false
    alarms). An image appears in one group only.

    Args:
        result: The evaluation.
        per_group: Images per group.
    """
    scores = np.asarray(result.scores, dtype=np.float64)
    labels = np.asarray(result.labels, dtype=np.int64)
    anomalous = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == 1]
    normal = [int(i) for i in np.argsort(-scores, kind="stable") if labels[i] == 0]
    top = anomalous[:per_group]
    hardest = [i for i in reversed(anomalous) if i not in top][:per_group]
    return [
        ("Top anomalies", "Anomalous test images with the highest scores.", top),
        (
            "Hardest anomalies",
            "Anomalous test images with the lowest scores: the defects most easily missed.",
            hardest,
        ),
        (
            "Highest-scored normal images",
            "Normal test images with the highest scores: likely false alarms.",
            normal[:per_group],
        ),
    ]


def _example(scorer: Scorer, item: dict[str, Any], sample: Sample, size: int) -> ExampleImage:
    """One test image run through the model: its view, raw map and score at the evaluation ``size``.

    Args:
        scorer: The evaluated model's scorer (the model in eval mode).
        item: The sample's :class:`~ssfilter.data.datasets.AnomalyDataset` item (``image``, ``mask``).
        sample: The test sample.
        size: Evaluation size (side of the map and of the shown image).
    """
    maps, scores = scorer(item["image"][None].to(scorer.device))
    view = denormalize(item["image"], scorer.mean, scorer.std)
    view = F.interpolate(view[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0]
    pixels = (view.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    mask = F.interpolate(item["mask"][None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5
    return ExampleImage(
        path=sample.path,
        score=float(scores[0]),
        label=int(sample.label),
        defect_type=sample.defect_type,
        image=pixels,
        anomaly_map=maps[0].float().cpu().numpy(),
        mask=mask.cpu().numpy() if sample.mask_path is not None else None,
    )


@torch.no_grad()
def build_evaluate_report(
    model: DinomalyModel,
    samples: Sequence[Sample],
    cfg: Config,
    result: EvaluationResult,
    *,
    device: torch.device | str = "cpu",
    run_dir: str | os.PathLike[str] | None = None,
    per_group: int = 4,
    context: Sequence[tuple[str, str]] = (),
) -> EvaluateReport:
    """The data of an evaluation report: metrics, curves, scores and heat-maps of selected test images.

    Args:
        model: The evaluated model.
        samples: The test samples ``result`` was computed on.
        cfg: The run's configuration (preprocessing, evaluation size).
        result: :func:`~ssfilter.evaluation.evaluate.evaluate_model`'s result on ``samples``.
        device: Where to run the model.
        run_dir: Run folder (its calibration, when present, sets the heat-map scale).
        per_group: Example images per group.
        context: Extra ``(name, value)`` rows for the report's header.
    """
    by_path = {s.path: s for s in samples}
    groups = select_examples(result, per_group)
    wanted = sorted({i for _, _, idx in groups for i in idx})
    size = cfg.data.eval_size
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    transform = transform_for(cfg, model.encoder)
    dataset = AnomalyDataset(
        [by_path[result.paths[i]] for i in wanted],
        transform,
        mask_transform_for(cfg),
    )
    scorer = scorer_for(model, cfg)
    examples: dict[int, ExampleImage] = {}
    try:
        for k, i in enumerate(wanted):
            examples[i] = _example(scorer, dataset[k], by_path[result.paths[i]], size)
    finally:
        model.train(was_training)
    return EvaluateReport(
        metrics=dict(result.metrics),
        n_test=result.n_test,
        curves=result.curves,
        scores=list(result.scores),
        labels=list(result.labels),
        groups=[ExampleGroup(t, d, [examples[i] for i in idx]) for t, d, idx in groups],
        scale=heatmap_scale(result, run_dir),
        context=list(context),
    )
