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
from dataclasses import asdict, dataclass, fields
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
    "HIGH_Z",
    "OutlierCut",
    "PARAM_KEYS",
    "decide",
    "robust_z",
    "suspicion_order",
    "summarize",
    "write_filter_outputs",
]

Decision = Literal["normal", "anomalous"]

#: Columns of ``filter.csv``: SPEC §11's six, then the suspicion ``rank`` (1 = most suspect; the rows are
#: written in this order) and the ``reason`` a quarantined image was quarantined (empty when kept).
CSV_FIELDS = [
    "path",
    "times_seen",
    "times_kept",
    "mean_score",
    "mean_uncertainty",
    "decision",
    "rank",
    "reason",
]

#: Robust z-score (median / MAD over the folder) from which a mean score counts as "high" in a reason.
HIGH_Z = 3.0

#: The dataset filter's parameters written under ``"params"`` in ``filter.json``.
PARAM_KEYS = ("epochs", "min_keep", "batch_size", "seed", "decision", "outlier_k")


def decide(times_kept: int, min_keep: int) -> Decision:
    """Paper §3.6: normal when kept *more than* ``min_keep`` (kappa2) times."""
    return "normal" if times_kept > min_keep else "anomalous"


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
        rank: Suspicion rank in the folder, 1 = most suspect (0 until :func:`suspicion_order` ran).
        reason: Why a quarantined image was quarantined (empty for kept images).
    """

    path: str
    times_seen: int
    times_kept: int
    mean_score: float
    mean_uncertainty: float
    decision: Decision
    label: int = LABEL_UNKNOWN
    rank: int = 0
    reason: str = ""


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


@dataclass(frozen=True)
class OutlierCut:
    """A folder cut (``dataset_filter.decision`` ``"outlier"`` or ``"estimate"``): anomalous when ``z > k``.

    Made by :func:`ssfilter.filtering.folder_decision.outlier_cut` or ``estimate_cut``; recorded in
    ``filter.json`` under ``settings.outlier_cut`` and read back here to rank the records and say why
    each was quarantined.

    Attributes:
        score: Which mean score was cut (``"mean A"`` or ``"mean U"``).
        median: Median of the log-scores.
        scale: ``1.4826 MAD`` of the log-scores (their standard deviation when the MAD is 0).
        k: Robust standard deviations above the median.
        share: Under ``"estimate"``: the estimated contamination whose share of the images ``k`` cuts off
            (None under ``"outlier"``, where ``k`` is given).
    """

    score: str
    median: float
    scale: float
    k: float
    share: float | None = None

    @property
    def field(self) -> str:
        """The :class:`FilterRecord` attribute holding the cut score."""
        return "mean_score" if self.score == "mean A" else "mean_uncertainty"

    def z(self, value: float) -> float:
        """``(log(value) - median) / scale`` (NaN for a missing or non-positive value)."""
        if not math.isfinite(value) or value <= 0:
            return math.nan
        return (math.log(value) - self.median) / self.scale if self.scale > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``filter.json``; ``threshold`` is the cut on the raw mean score."""
        return {**asdict(self), "threshold": math.exp(self.median + self.k * self.scale)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OutlierCut:
        """The cut recorded by :meth:`to_dict` (``threshold`` is derived, so it is not read)."""
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


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


def robust_z(values: Sequence[float]) -> list[float]:
    """``(x - median) / (1.4826 MAD)`` over the finite values (NaN stays NaN).

    When the MAD is 0 (more than half the values equal) the standard deviation is the scale, and when
    that is 0 too every z is 0.
    """
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return [math.nan] * len(values)
    med = _median(finite)
    scale = 1.4826 * _median(sorted(abs(v - med) for v in finite))
    if scale <= 0 and len(finite) > 1:
        mean = sum(finite) / len(finite)
        scale = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    return [math.nan if not math.isfinite(v) else ((v - med) / scale if scale > 0 else 0.0) for v in values]


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2


def _reason(r: FilterRecord, z_a: float, z_u: float, min_keep: int | None) -> str:
    """Why the vote quarantined ``r``: its keep count, and which of its mean scores stands out."""
    need = f" (normal needs more than {min_keep})" if min_keep is not None else ""
    parts = [f"kept {r.times_kept} of {r.times_seen} epochs{need}"]
    high = [f"{name} high (robust z {z:.1f})" for name, z in (("A", z_a), ("U", z_u)) if z >= HIGH_Z]
    if high:
        parts += high
    elif max((z for z in (z_a, z_u) if math.isfinite(z)), default=math.nan) > 0:
        parts.append("ranked in the upper half of its batches by A and U, neither extreme")
    else:
        parts.append("atypical within its batches only (A and U not above the folder's median)")
    return "; ".join(parts)


def _cut_reason(r: FilterRecord, cut: OutlierCut, z: float) -> str:
    """Why the folder's cut quarantined ``r``."""
    where = (
        f"{cut.score} far above the folder's (log robust z {z:.1f} > {cut.k})"
        if cut.share is None
        else f"{cut.score} among the folder's estimated {100 * cut.share:.1f}% most suspect "
        f"(log robust z {z:.1f} > {cut.k:.2f})"
    )
    return f"{where}; kept {r.times_kept} of {r.times_seen} epochs in its batches"


def suspicion_order(records: Sequence[FilterRecord], min_keep: int | None = None) -> list[FilterRecord]:
    """Rank the records by suspicion (sets ``rank`` and ``reason``) and return them most suspect first.

    Under the paper's vote: fewest keeps first; ties by the mean of the robust z-scores of ``A`` and ``U``
    over the folder (higher first), then by path. Under a folder cut (``params["decision"]`` other than
    ``"vote"``, with ``settings["outlier_cut"]``): by the cut's z of the score it cut, highest first,
    then by path. ``reason`` is set on quarantined records only. ``min_keep`` defaults to the records'
    ``params["min_keep"]``.
    """
    params = getattr(records, "params", None) or {}
    if min_keep is None:
        min_keep = params.get("min_keep")
    recorded = (getattr(records, "settings", None) or {}).get("outlier_cut")
    cut = OutlierCut.from_dict(recorded) if params.get("decision", "vote") != "vote" and recorded else None
    z_a = robust_z([r.mean_score for r in records])
    z_u = robust_z([r.mean_uncertainty for r in records])
    z_cut = [cut.z(getattr(r, cut.field)) for r in records] if cut is not None else []

    def combined(i: int) -> float:
        zs = [z_cut[i]] if cut is not None else [z_a[i], z_u[i]]
        zs = [z for z in zs if math.isfinite(z)]
        return sum(zs) / len(zs) if zs else 0.0

    def key(i: int) -> tuple[float, float, str]:
        return (0 if cut is not None else records[i].times_kept, -combined(i), records[i].path)

    order = sorted(range(len(records)), key=key)
    for rank, i in enumerate(order, start=1):
        r = records[i]
        r.rank = rank
        if r.decision != "anomalous":
            r.reason = ""
        elif cut is not None and math.isfinite(z_cut[i]):
            r.reason = _cut_reason(r, cut, z_cut[i])
        else:  # decided by the vote (no cut, or no score for the cut to judge)
            r.reason = _reason(r, z_a[i], z_u[i], min_keep)
    return [records[i] for i in order]


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def write_filter_outputs(
    records: Sequence[FilterRecord], out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``filter.csv`` (one row per image, most suspect first) and ``filter.json`` atomically.

    The rows are ranked by :func:`suspicion_order` (which sets ``rank`` and ``reason`` on the records).

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
        for r in suspicion_order(records):
            mean_a, mean_u = _fmt(r.mean_score), _fmt(r.mean_uncertainty)
            writer.writerow(
                [r.path, r.times_seen, r.times_kept, mean_a, mean_u, r.decision, r.rank, r.reason]
            )
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
