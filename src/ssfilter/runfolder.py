"""The files of a run folder and of the commands' output folders: their names, in one place.

A run folder (``ssfilter train --out RUN``) holds the deployable model, its config, the resumable
training state and logs, the data record, the calibration and, after ``filter``/``evaluate``, their
outputs. Every module that reads or writes one of these files takes its name from here, so a name
changes in one place; the small records with no other owner (``data.json``) are read and written here.
This module sits at the bottom of the package: it imports only :mod:`ssfilter.io`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssfilter.io import atomic_write_json

__all__ = [
    "CALIBRATION_FILE",
    "CONFIG_FILE",
    "DATA_FILE",
    "FILTER_CSV",
    "FILTER_JSON",
    "FILTER_LOG_FILE",
    "FILTER_RANKS_LOG_FILE",
    "FILTER_SUMMARY_FILE",
    "LOG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "NOISE_SPLIT_FILE",
    "REPORT_FILE",
    "SKIPPED_FILE",
    "STATE_FILE",
    "read_data_format",
    "read_data_root",
    "write_data_record",
]

#: Deployable weights (safetensors) with the config in their metadata.
MODEL_FILE = "model.safetensors"
#: The run's full config (YAML).
CONFIG_FILE = "config.yaml"
#: Resumable training state: optimiser, schedule, filter banks, random states.
STATE_FILE = "train_state.pt"
#: Per-iteration training log (CSV).
LOG_FILE = "train_log.csv"
#: Per-iteration log of SSFilter's in-batch filter (CSV).
FILTER_LOG_FILE = "filter_log.csv"
#: Per-rank rows of a DDP run's in-batch filter (CSV).
FILTER_RANKS_LOG_FILE = "filter_log_ranks.csv"
#: Abnormal recall and normal discard rate of the in-batch filter, per phase (JSON).
FILTER_SUMMARY_FILE = "filter_summary.json"
#: Unsupervised (or labelled) OK/NG and pixel thresholds (JSON).
CALIBRATION_FILE = "calibration.json"
#: Where the training data came from and how many images were used (JSON, see :func:`write_data_record`).
DATA_FILE = "data.json"
#: The train/test lists of a noise-injected run (JSON).
NOISE_SPLIT_FILE = "noise_split.json"
#: Files left out because they could not be read, and why (CSV ``path,reason``).
SKIPPED_FILE = "skipped.csv"
#: The dataset filter's per-image decisions (CSV) and summary (JSON).
FILTER_CSV = "filter.csv"
FILTER_JSON = "filter.json"
#: Metrics written by ``evaluate`` and the demo (JSON).
METRICS_FILE = "metrics.json"
#: The self-contained HTML report of a command.
REPORT_FILE = "report.html"


def write_data_record(
    run_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    n_train: int,
    data_format: str | None = None,
) -> Path:
    """Record which data a run was trained on (``data.json``), so later commands find its test split.

    Args:
        run_dir: The run folder.
        data: The training data's root (stored as an absolute path).
        n_train: Number of training images used.
        data_format: The ``--format`` it was read as, when forced (``None``: detected again when read).

    Returns:
        The written file.
    """
    path = Path(run_dir) / DATA_FILE
    record: dict[str, object] = {"data": str(Path(data).resolve()), "n_train": int(n_train)}
    if data_format is not None:
        record["format"] = data_format
    atomic_write_json(path, record)
    return path


def read_data_format(run_dir: str | os.PathLike[str] | None) -> str | None:
    """The ``--format`` recorded in a run's ``data.json``; ``None`` when absent (detect it again)."""
    path = Path(run_dir) / DATA_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (ValueError, AttributeError, OSError):
        return None
    return value if isinstance(value, str) else None


def read_data_root(run_dir: str | os.PathLike[str] | None) -> Path | None:
    """The data root recorded in a run's ``data.json``; ``None`` when absent or unreadable.

    A missing or malformed record is not an error: commands that need the data then ask for ``--data``.
    """
    if run_dir is None:
        return None
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        return None
    try:
        return Path(json.loads(path.read_text(encoding="utf-8"))["data"])
    except (ValueError, KeyError, TypeError, OSError):
        return None
