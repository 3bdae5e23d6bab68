"""The dataset filter's result: a record per image, its summary, and ``filter.csv`` / ``filter.json``.

The records are what :mod:`ssfilter.filtering.dataset_filter` (the kappa1/kappa2 vote) returns and what
:mod:`ssfilter.filtering.clean_export` and the filter report read; this module needs no model, so
summarising and writing the dataset filter's result does not load the filtering machinery.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ssfilter.data.datasets import LABEL_ANOMALOUS, LABEL_NORMAL, LABEL_UNKNOWN
from ssfilter.io import atomic_write_json, atomic_writer
from ssfilter.runfolder import FILTER_CSV, FILTER_JSON

__all__ = [
    "CSV_FIELDS",
    "Decision",
    "FilterRecord",
    "FilterRecords",
    "PARAM_KEYS",
    "summarize",
    "write_filter_outputs",
]

Decision = Literal["normal", "anomalous"]

#: Columns of ``filter.csv`` (SPEC §11), in order.
CSV_FIELDS = ["path", "times_seen", "times_kept", "mean_score", "mean_uncertainty", "decision"]

#: The dataset filter's parameters written under ``"params"`` in ``filter.json``.
PARAM_KEYS = ("epochs", "min_keep", "batch_size", "seed")


@dataclass
class FilterRecord:
    """The dataset filter's verdict on one image.

    Attributes:
        path: Image file.
        times_seen: Epochs in which the image was scored (``epochs``).
        times_kept: How often the in-batch filter kept it.
        mean_score: Mean patch comparison score ``A`` (NaN when patch scoring is off).
        mean_uncertainty: Mean MC-dropout uncertainty ``U`` (NaN when uncertainty scoring is off).
        decision: ``"normal"`` when ``times_kept > min_keep``, else ``"anomalous"``.
        label: True label when known (0 normal, 1 anomalous), -1 otherwise; used for the summary only and
            never written to ``filter.csv``.
    """

    path: str
    times_seen: int
    times_kept: int
    mean_score: float
    mean_uncertainty: float
    decision: Decision
    label: int = LABEL_UNKNOWN


class FilterRecords(list[FilterRecord]):
    """A list of :class:`FilterRecord` with the dataset filter's parameters (for ``filter.json``).

    ``params`` holds the vote's parameters (:data:`PARAM_KEYS`); ``settings`` how the scores were obtained
    (e.g. ``uncertainty`` mode and ``pool``), written under ``"settings"``.
    """

    def __init__(
        self,
        records: Sequence[FilterRecord] = (),
        params: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(records)
        self.params: dict[str, Any] = dict(params or {})
        self.settings: dict[str, Any] = dict(settings or {})


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def summarize(records: Sequence[FilterRecord]) -> dict[str, Any]:
    """Counts of the dataset filter's decisions and, when every label is known, its quality (paper Fig. 4-5).

    Returns:
        ``n``, ``n_kept`` (normal decisions), ``n_removed``, ``labels_known`` and the label-based figures
        ``noise_rate_before`` (anomalous share of the input), ``noise_rate_after`` (anomalous share of the
        kept images), ``normal_kept`` (share of true normals kept) and ``anomalies_removed`` (share of true
        anomalies removed). The label-based figures are ``None`` when some label is unknown or when their
        denominator is 0 (e.g. nothing kept, or no anomalies at all).
    """
    n = len(records)
    normal = [r.decision == "normal" for r in records]
    n_kept = sum(normal)
    out: dict[str, Any] = {"n": n, "n_kept": n_kept, "n_removed": n - n_kept}
    known = n > 0 and all(r.label in (LABEL_NORMAL, LABEL_ANOMALOUS) for r in records)
    out["labels_known"] = known
    keys = ("noise_rate_before", "noise_rate_after", "normal_kept", "anomalies_removed")
    if not known:
        out.update(dict.fromkeys(keys))
        return out
    anomalous = [r.label == LABEL_ANOMALOUS for r in records]
    n_anom = sum(anomalous)
    anom_kept = sum(a and k for a, k in zip(anomalous, normal, strict=True))
    norm_kept = sum((not a) and k for a, k in zip(anomalous, normal, strict=True))
    out["noise_rate_before"] = _ratio(n_anom, n)
    out["noise_rate_after"] = _ratio(anom_kept, n_kept)
    out["normal_kept"] = _ratio(norm_kept, n - n_anom)
    out["anomalies_removed"] = _ratio(n_anom - anom_kept, n_anom)
    return out


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_filter_outputs(
    records: Sequence[FilterRecord], out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``filter.csv`` (SPEC §11 columns, one row per image) and ``filter.json`` atomically.

    ``filter.json`` holds the :func:`summarize` keys at the top level, ``"params"`` (epochs, min_keep,
    batch_size, seed; taken from a :class:`FilterRecords`, else ``None``) and the keys of ``extra``
    (which may not replace a summary key). Means that were not computed are written ``nan``.

    Returns:
        ``(csv_path, json_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / FILTER_CSV, out / FILTER_JSON
    with atomic_writer(csv_path, "w", encoding="utf-8", newline="") as fh:
        fh.write(",".join(CSV_FIELDS) + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        for r in records:
            mean_a, mean_u = _fmt(r.mean_score), _fmt(r.mean_uncertainty)
            writer.writerow([r.path, r.times_seen, r.times_kept, mean_a, mean_u, r.decision])
    params = getattr(records, "params", None) or {}
    doc: dict[str, Any] = summarize(records)
    doc["params"] = {k: params.get(k) for k in PARAM_KEYS}
    doc["settings"] = dict(getattr(records, "settings", None) or {})
    for key, value in (extra or {}).items():
        if key in doc:
            raise ValueError(f"extra key {key!r} would replace a summary field of {FILTER_JSON}")
        doc[key] = value
    atomic_write_json(json_path, doc, default=str)
    return csv_path, json_path
