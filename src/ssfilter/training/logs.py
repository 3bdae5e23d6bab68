"""The run's CSV logs: appended at every checkpoint, cut back to the checkpoint on resume.

Every log is rewritten atomically (a kill never leaves half a line) and its first column is the
1-based iteration, so a resume can drop the rows written after the checkpoint it continues from.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from torch import Tensor

from ssfilter.io import atomic_writer

__all__ = ["LOG_FIELDS", "append_log", "truncate_log"]

#: Columns of the training log (``train_log.csv``).
LOG_FIELDS = ["iteration", "loss", "lr", "p", "batch", "seconds"]


def append_log(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Append rows to a CSV log (rewritten atomically so a kill never leaves half a line).

    Args:
        path: The log file (created with a header line when missing or empty).
        rows: Rows to append; missing columns stay empty, tensors are written as floats.
        fields: The log's columns, in order.
    """
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        if not existing:
            fh.write(",".join(fields) + "\n")
        else:
            fh.write(existing)
        writer = csv.writer(fh)
        for row in rows:
            values = [float(v) if isinstance(v, Tensor) else v for v in (row.get(k, "") for k in fields)]
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in values])


def truncate_log(path: Path, iteration: int) -> None:
    """Drop log rows after ``iteration`` (rows logged after the checkpoint a run resumes from).

    Args:
        path: The log file (nothing happens when it does not exist).
        iteration: Last iteration to keep; 0 empties the file.
    """
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= iteration]
    if iteration == 0:
        keep = []
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        fh.writelines(keep)
