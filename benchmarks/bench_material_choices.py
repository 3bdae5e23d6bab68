"""Two deviations of the restoring step measured on a trained run, without retraining it.

* **Connected regions.** A material is the connected region of the accumulated MC-dropout map around its
  peak (Eq. 11). ssfilter joins diagonal neighbours (8-connectivity); ``scipy.ndimage.label``'s default,
  which the official code gets, joins 4. For every injected (defective) training image of the run, the
  region is cut both ways and compared: identical regions, IoU, area, and the share of the region that
  lies on the ground-truth defect (purity).
* **Foreground.** Materials are pasted on the foreground of kept images: the first principal component
  of the encoder's patch features, Otsu-thresholded. ssfilter uses the first feature group; the SPEC
  reads "the mean of the two groups' layers". For a ViT both groups have one width and are averaged;
  for a CNN (different widths) each group is standardised per channel and the two are concatenated. For
  every normal training image the two masks are compared: IoU, and how often each falls back to the whole
  image (no object found).

Both compare what the training step would have produced; the effect on metrics would need training runs
over seeds. One JSON document is printed.

Example::

    python -m benchmarks.bench_material_choices --run runs/bottle
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssfilter.data.images import read_image, read_mask
from ssfilter.data.transforms import MaskTransform, transform_for
from ssfilter.filtering.foreground import foreground_masks
from ssfilter.filtering.materials import extract_material
from ssfilter.filtering.uncertainty import mc_uncertainty
from ssfilter.inference.run import load_run_folder
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import EncoderFeatures
from ssfilter.pipelines.run_data import run_training_samples

__all__ = ["both_group_features", "main", "region_stats"]


def both_group_features(model: DinomalyModel, feats: EncoderFeatures) -> torch.Tensor:
    """The SPEC's foreground features: the groups averaged (one width) or standardised and joined."""
    groups = [g.float() for g in model.encoder.groups(feats)]
    if len({g.shape[-1] for g in groups}) == 1:
        return torch.stack(groups).mean(0)
    scaled = [(g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True).clamp_min(1e-6) for g in groups]
    return torch.cat(scaled, dim=-1)


def _region(acc_map: torch.Tensor, connectivity: int) -> np.ndarray:
    """The material region of ``acc_map`` ``[H, W]`` as a full-size bool mask (empty without a material).

    :func:`extract_material` returns the region inside its bounding box; cutting it out of an "image"
    whose channels hold the row and column indices tells where that box lies.
    """
    h, w = acc_map.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    where = torch.stack([rows, cols, rows]).float()
    material = extract_material(where, acc_map, connectivity=connectivity)
    out = np.zeros((h, w), dtype=bool)
    if material is None:
        return out
    top, left = int(material.pixels[0, 0, 0]), int(material.pixels[1, 0, 0])
    mask = material.mask.cpu().numpy()
    out[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
    return out


def region_stats(eight: np.ndarray, four: np.ndarray, truth: np.ndarray | None) -> dict[str, float]:
    """IoU and areas of two region masks, and each one's share on the defect (``truth``)."""
    union = (eight | four).sum()
    out = {
        "identical": float(np.array_equal(eight, four)),
        "iou": float((eight & four).sum() / union) if union else 1.0,
        "area_8": float(eight.sum()),
        "area_4": float(four.sum()),
    }
    if truth is not None and truth.any():
        out["purity_8"] = float((eight & truth).sum() / max(1, eight.sum()))
        out["purity_4"] = float((four & truth).sum() / max(1, four.sum()))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both choices on ``--run``; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_material_choices", description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (a noise benchmark run)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--max-normal", type=int, default=200, help="normal images compared for the foreground")
    args = p.parse_args(argv)
    run = load_run_folder(args.run, "cpu", calibration="skip")
    cfg, model = run.config, run.model.eval()
    if cfg.data.coverage == "tiles":
        p.error("a tiled run trains on tiles: this measurement cuts whole crops (use a crop or whole run)")
    samples, _ = run_training_samples(args.run, run.data, None)
    transform = transform_for(cfg, model.encoder)
    masks = MaskTransform(cfg.data.resize, cfg.data.crop)
    size = (cfg.data.crop, cfg.data.crop)
    defective = [s for s in samples if s.label == 1]
    normal = [s for s in samples if s.label == 0][: args.max_normal]
    regions: list[dict[str, float]] = []
    fg: list[tuple[float, bool, bool]] = []
    torch.manual_seed(cfg.train.seed)
    with torch.no_grad():
        for start in range(0, len(defective), args.batch):
            chunk = defective[start : start + args.batch]
            images = torch.stack([transform(read_image(s.path)) for s in chunk])
            acc = mc_uncertainty(model, model.encode(images), cfg.batch_filter.mc_passes).acc_map
            for i, sample in enumerate(chunk):
                truth = masks(read_mask(sample.mask_path))[0].numpy() > 0 if sample.mask_path else None
                eight, four = (_region(acc[i], n) for n in (8, 4))
                regions.append(region_stats(eight, four, truth))
        for start in range(0, len(normal), args.batch):
            images = torch.stack([transform(read_image(s.path)) for s in normal[start : start + args.batch]])
            feats = model.encode(images)
            grid = feats.grid
            ours = foreground_masks(model.encoder.foreground_features(feats), grid, size)
            spec = foreground_masks(both_group_features(model, feats), grid, size)
            for a, b in zip(ours, spec, strict=True):
                union = int((a | b).sum())
                fg.append((float((a & b).sum()) / union if union else 1.0, bool(a.all()), bool(b.all())))
    print(json.dumps(_summary(args.run, regions, fg), indent=1))
    return 0


def _summary(
    run: Path, regions: list[dict[str, float]], fg: list[tuple[float, bool, bool]]
) -> dict[str, Any]:
    """Means over the images of both comparisons."""

    def mean(key: str) -> float | None:
        values = [r[key] for r in regions if key in r]
        return round(float(np.mean(values)), 4) if values else None

    keys = ("identical", "iou", "area_8", "area_4", "purity_8", "purity_4")
    return {
        "run": str(run),
        "regions": {"n": len(regions), **{k: mean(k) for k in keys}},
        "foreground": {
            "n": len(fg),
            "iou": round(float(np.mean([f[0] for f in fg])), 4) if fg else None,
            "whole_image_group0": round(float(np.mean([f[1] for f in fg])), 4) if fg else None,
            "whole_image_both": round(float(np.mean([f[2] for f in fg])), 4) if fg else None,
        },
    }


if __name__ == "__main__":
    sys.exit(main())
