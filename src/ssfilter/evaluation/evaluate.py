"""Evaluate an anomaly scorer on a labelled test split (SPEC §1 maps, §8 metrics): one loop for all.

Every method is evaluated by the same loop, :func:`evaluate`, over a :class:`Scorer`: something that turns
a batch of normalised images into anomaly maps at ``eval_size`` and image scores
(``maps, scores = scorer(images)``). :class:`ModelScorer` adapts a trained Dinomaly-family model and
:class:`BaselineScorer` a fitted baseline (PatchCore, SoftPatch); :func:`evaluate_model` and
:func:`evaluate_baseline` are the two one-call entry points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.baselines.registry import Baseline
from ssfilter.config import Config, DataConfig
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import build_mask_transform, transform_for
from ssfilter.evaluation.metrics import MetricAccumulator
from ssfilter.models.anomaly_map import evaluation_maps
from ssfilter.models.dinomaly import DinomalyModel

__all__ = [
    "BaselineScorer",
    "EvaluationResult",
    "ModelScorer",
    "Scorer",
    "evaluate",
    "evaluate_baseline",
    "evaluate_model",
    "predict_maps",
]


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
def predict_maps(
    model: DinomalyModel, images: torch.Tensor, eval_size: int, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred anomaly maps ``[B, S, S]`` at ``eval_size`` and top-1% image scores ``[B]``."""
    device_type = images.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type == "cuda"):
        rec = model(images)
    enc = [t.float() for t in rec.encoder]
    dec = [t.float() for t in rec.decoder]
    return evaluation_maps(enc, dec, model.crop, eval_size)


class Scorer(Protocol):
    """Anomaly maps and image scores of image batches: what :func:`evaluate` needs of a method.

    Attributes:
        device: Where the scorer wants its input images.
        mean: Per-channel mean of the image normalisation the scorer expects.
        std: Per-channel standard deviation of that normalisation.
    """

    device: torch.device
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` at the evaluation size and image scores ``[B]`` of normalised images."""
        ...


class ModelScorer:
    """A trained Dinomaly-family model as a :class:`Scorer` (:func:`predict_maps`).

    Args:
        model: The model, already on its device.
        eval_size: Side of the maps.
        amp: Run the model under bfloat16 autocast on CUDA.
    """

    def __init__(self, model: DinomalyModel, eval_size: int, amp: bool = False) -> None:
        self.model = model.eval()
        self.eval_size = eval_size
        self.amp = amp
        self.device = next(model.parameters()).device
        self.mean, self.std = model.encoder.mean, model.encoder.std

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` and top-1% image scores ``[B]``."""
        return predict_maps(self.model, images, self.eval_size, amp=self.amp)


class BaselineScorer:
    """A fitted baseline (PatchCore, SoftPatch) as a :class:`Scorer`.

    The baseline's maps come at the crop size; they are resized bilinearly to ``eval_size`` (when they
    differ), the image scores are the baseline's own.

    Args:
        model: The fitted baseline, already on its device.
        eval_size: Side of the maps.
    """

    def __init__(self, model: Baseline, eval_size: int) -> None:
        self.model = model
        self.eval_size = eval_size
        self.device = model.device
        self.mean, self.std = model.encoder.mean, model.encoder.std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps ``[B, S, S]`` and image scores ``[B]``."""
        maps, scores = self.model.predict(images)
        size = self.eval_size
        if tuple(maps.shape[-2:]) != (size, size):
            maps = F.interpolate(maps.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
            maps = maps.squeeze(1)
        return maps, scores


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
    ``eval_size`` with nearest-neighbour sampling so they stay binary. Pixel metrics are undefined when
    an anomalous image lacks a mask.

    Args:
        scorer: Maps and scores of image batches.
        samples: Labelled test samples.
        data_cfg: Resize, crop, evaluation size, batch size and loader workers.
        batch_size: Images per batch; ``None`` uses ``data_cfg.batch_size``.
        progress: Show a progress bar.
    """
    device = scorer.device
    transform = transform_for(data_cfg, scorer)
    mask_transform = build_mask_transform(data_cfg.resize, data_cfg.crop)
    dataset = AnomalyDataset(list(samples), transform, mask_transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size or data_cfg.batch_size,
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
    scorer = ModelScorer(model, cfg.data.eval_size, amp=cfg.train.amp)
    return evaluate(scorer, samples, cfg.data, batch_size=batch_size, progress=progress)


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
    scorer = BaselineScorer(model, data_cfg.eval_size)
    return evaluate(scorer, samples, data_cfg, batch_size=batch_size, progress=progress)
