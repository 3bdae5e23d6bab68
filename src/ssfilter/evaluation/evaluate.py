"""Evaluate a trained model on a labelled test split (SPEC §1 maps, §8 metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.transforms import build_image_transform, build_mask_transform
from ssfilter.evaluation.metrics import MetricAccumulator
from ssfilter.models.anomaly_map import evaluation_maps
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["EvaluationResult", "evaluate_model", "predict_maps"]


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


def evaluate_model(
    model: DinomalyModel,
    samples: Sequence[Sample],
    cfg: Config,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Compute all SPEC §8 metrics of ``model`` on labelled ``samples``.

    Masks follow the image through the same resize and crop, are binarised with ``> 0`` at crop size,
    then brought to ``eval_size`` with nearest-neighbour sampling so they stay binary.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    transform = build_image_transform(cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std)
    mask_transform = build_mask_transform(cfg.data.resize, cfg.data.crop)
    dataset = AnomalyDataset(list(samples), transform, mask_transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size or cfg.data.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    acc = MetricAccumulator()
    result = EvaluationResult(metrics={}, n_test=len(dataset))
    size = cfg.data.eval_size
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, dynamic_ncols=True):
        images = batch["image"].to(device, non_blocking=True)
        maps, scores = predict_maps(model, images, size, amp=cfg.train.amp)
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
