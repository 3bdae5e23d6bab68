"""Load a trained run folder: its config, model, calibration and data root, in one place.

Every command that applies a finished run (``Detector.load``, :meth:`Predictor.load
<ssfilter.inference.predictor.Predictor.load>`, ONNX export) goes through :func:`load_run_folder`, so a
run folder is read one way. The weights and config come from
:func:`ssfilter.training.checkpoint.load_run`, the calibration from ``calibration.json``
(:class:`~ssfilter.inference.calibration.Calibration`), the data root from ``data.json``
(:func:`ssfilter.runfolder.read_data_root`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ssfilter.config import Config
from ssfilter.inference.calibration import Calibration
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.runfolder import CALIBRATION_FILE, read_data_root
from ssfilter.runtime.device import resolve_device
from ssfilter.training.checkpoint import load_run

__all__ = ["CalibrationNeed", "LoadedRun", "load_run_folder"]

#: How :func:`load_run_folder` treats ``calibration.json``: ``"required"`` (missing is an error),
#: ``"optional"`` (read when present) or ``"skip"`` (not read; a caller that reads it later).
CalibrationNeed = Literal["required", "optional", "skip"]


@dataclass
class LoadedRun:
    """A trained model with what applying it needs.

    Attributes:
        path: The run folder (``None`` for a model that was never saved).
        config: The run's config.
        model: The trained model, in eval mode.
        data: The training data root recorded in ``data.json`` (``None`` when unknown).
        calibration: The run's calibration (``None`` when absent or not read).
    """

    path: Path | None
    config: Config
    model: DinomalyModel
    data: Path | None = None
    calibration: Calibration | None = None


def load_run_folder(
    run_dir: str | Path, device: str | torch.device = "cpu", *, calibration: CalibrationNeed = "optional"
) -> LoadedRun:
    """Read a run folder: config, model (on ``device``), data root and calibration.

    Needs no network and no original weights file: the run's ``model.safetensors`` holds the whole
    model.

    Args:
        run_dir: The run folder.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (resolved by
            :func:`~ssfilter.runtime.device.resolve_device`) or a device.
        calibration: Whether ``calibration.json`` must exist, is read when present, or is skipped.

    Raises:
        RunFormatError: when the folder, its config or its model is missing or unreadable.
        FileNotFoundError: when ``calibration="required"`` and the run has no ``calibration.json``
            (the message says how to compute it).
        CalibrationError: when a ``calibration.json`` that is read is malformed.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    cfg, model = load_run(run_dir, dev)
    run = Path(run_dir)
    cal = None
    if calibration == "required" or (calibration == "optional" and (run / CALIBRATION_FILE).is_file()):
        cal = Calibration.load(run)
    return LoadedRun(path=run, config=cfg, model=model, data=read_data_root(run), calibration=cal)
