"""One deviation from Dinomaly measured: bilinear map upsampling with ``align_corners=False`` vs ``True``.

ssfilter upsamples the per-group distance maps and resizes them to the evaluation size with
``align_corners=False`` (PyTorch's default, and what its image resizes use); Dinomaly's code passes
``True``. The two place the coarse grid's values half a cell apart at the borders, so they can move pixel
metrics. This evaluates one trained run both ways on its own test split (the model and everything else
unchanged: only :mod:`ssfilter.models.anomaly_map`'s interpolation is switched for the second pass) and
prints the seven metrics of each and their difference as one JSON document.

Example::

    python -m benchmarks.bench_map_upsampling --run runs/bottle
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F

import ssfilter.models.anomaly_map as anomaly_map_module
from ssfilter.api import Detector

__all__ = ["align_corners", "main"]


class _Functional:
    """``torch.nn.functional`` with bilinear interpolation forced to ``align_corners=True``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    @staticmethod
    def interpolate(x: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("mode") == "bilinear":
            kwargs["align_corners"] = True
        return F.interpolate(x, *args, **kwargs)


@contextlib.contextmanager
def align_corners() -> Iterator[None]:
    """Within the block, the anomaly maps are upsampled as Dinomaly does (``align_corners=True``)."""
    saved = anomaly_map_module.F
    anomaly_map_module.F = _Functional()  # type: ignore[assignment]
    try:
        yield
    finally:
        anomaly_map_module.F = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate ``--run`` with both upsamplings; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_map_upsampling", description=__doc__)
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--data", type=Path, default=None, help="test data (default: the run's)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    det = Detector.load(args.run, device=args.device)
    ours = det.evaluate(args.data, progress=False)["metrics"]
    with align_corners():
        theirs = det.evaluate(args.data, progress=False)["metrics"]
    diff = {k: (theirs[k] - v if v is not None and theirs[k] is not None else None) for k, v in ours.items()}
    print(json.dumps({"run": str(args.run), "align_corners_false": ours, "align_corners_true": theirs,
                      "true_minus_false": diff}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
