"""Noisy (fully unsupervised) benchmark protocols (SPEC §7): SoftPatch injection and Real-IAD noisy splits.

* SoftPatch protocol (MVTec layout, VisA CSV): ``int(alpha * n_train_good)`` anomalous test images, capped at
  half (floor) of the test anomalies, are moved into the training set. ``overlap=False`` removes them from the
  test set, ``overlap=True`` keeps them there too. The choice is recorded in a :class:`NoiseSplit`
  (``RUN/noise_split.json``) so every run can be reproduced exactly, whatever library versions are installed.
* Real-IAD (FUIAD, the paper's main protocol): the noise is given by the dataset's own
  ``realiad_jsons_fuiad_<alpha>/<category>.json`` lists, reproduced exactly
  (:func:`ssfilter.data.fuiad.realiad_fuiad_split`); the measured contamination of the training list is
  reported. One Real-IAD sample is one camera view (one image file); a part's 5 views are 5 samples for
  training, filtering and the image metric.

Injected training samples keep their true label (1) and mask: the labels are only for measuring filter
quality; training code never reads them. Nothing here writes into the data folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssfilter.data.datasets import (
    LABEL_ANOMALOUS,
    LABEL_NORMAL,
    LABEL_UNKNOWN,
    Sample,
    mvtec_samples,
    realiad_samples,
    visa_samples,
)
from ssfilter.io import atomic_write_json

__all__ = [
    "NoiseSplit",
    "apply_split",
    "contamination",
    "inject_anomalies",
    "n_injected",
    "realiad_noisy_split",
    "softpatch_split",
    "visa_noisy_split",
]

_REQUIRED_KEYS = ("alpha", "overlap", "seed", "injected", "test")


@dataclass
class NoiseSplit:
    """A recorded noisy split: which test images were moved into training and which are evaluated.

    Attributes:
        alpha: Noise ratio (injected images per normal training image, before the cap).
        overlap: Whether the injected images also stay in the test set.
        seed: Seed of the random choice.
        injected: Test image paths moved into the training set (sorted).
        test: Test image paths evaluated, in evaluation order.
        train: All training image paths after injection, in training order.
        source: Data set root (absolute) the paths were taken from.
        meta: Free-form extras (protocol, requested and capped counts, VisA CSV and category, ...).
    """

    alpha: float
    overlap: bool
    seed: int
    injected: list[str]
    test: list[str]
    train: list[str] = field(default_factory=list)
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict with the SPEC §11 keys ``alpha, overlap, seed, injected, test`` and the extras."""
        return {
            "alpha": float(self.alpha),
            "overlap": bool(self.overlap),
            "seed": int(self.seed),
            "injected": list(self.injected),
            "test": list(self.test),
            "train": list(self.train),
            "source": self.source,
            "n_injected": len(self.injected),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NoiseSplit:
        """Inverse of :meth:`to_json`; ``train``, ``source`` and ``meta`` are optional, unknown keys ignored.

        Raises:
            ValueError: A required key is missing or has the wrong type.
        """
        if not isinstance(data, dict):
            raise ValueError(f"noise split must be a JSON object, got {type(data).__name__}")
        missing = [key for key in _REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"noise split lacks keys {missing} (needs {list(_REQUIRED_KEYS)})")
        alpha, overlap, seed = data["alpha"], data["overlap"], data["seed"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ValueError(f"noise split 'alpha' must be a number, got {alpha!r}")
        if not isinstance(overlap, bool):
            raise ValueError(f"noise split 'overlap' must be true or false, got {overlap!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"noise split 'seed' must be an integer, got {seed!r}")
        lists = {key: data.get(key, []) for key in ("injected", "test", "train")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"noise split '{key}' must be a list of path strings")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"noise split 'meta' must be an object, got {type(meta).__name__}")
        return cls(
            alpha=float(alpha),
            overlap=overlap,
            seed=seed,
            injected=list(lists["injected"]),
            test=list(lists["test"]),
            train=list(lists["train"]),
            source=str(data.get("source") or ""),
            meta=dict(meta),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the split as JSON, atomically (the file appears complete or not at all)."""
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NoiseSplit:
        """Read a split written by :meth:`save` (or any JSON with the SPEC §11 keys)."""
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _check_alpha(alpha: float) -> float:
    """Reject non-numeric, non-finite and out-of-range noise ratios."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    value = float(alpha)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    return value


def n_injected(n_train: int, n_anomalous: int, alpha: float) -> tuple[int, int]:
    """Requested and injected counts: ``(int(alpha * n_train), min(that, n_anomalous // 2))``.

    ``int(alpha * n_train)`` is taken literally, as in the SoftPatch code (so floating point decides edge
    cases, e.g. ``int(0.29 * 100) == 28``).
    """
    value = _check_alpha(alpha)
    if n_train < 0 or n_anomalous < 0:
        raise ValueError(f"counts must be non-negative, got n_train={n_train}, n_anomalous={n_anomalous}")
    requested = int(value * n_train)
    return requested, min(requested, n_anomalous // 2)


def inject_anomalies(
    train: Sequence[Sample],
    test: Sequence[Sample],
    alpha: float,
    overlap: bool,
    seed: int,
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """The SoftPatch injection shared by :func:`softpatch_split` and :func:`visa_noisy_split`.

    Candidates are all anomalous test samples (label 1), sorted by path so the choice does not depend on the
    listing order. The choice is plain random (not stratified by defect type), as in SoftPatch: the first
    ``n`` entries of ``numpy.random.default_rng(seed).permutation(n_candidates)``. Using a prefix of one
    permutation makes the injected sets nested: for one seed, a larger alpha adds images to a smaller alpha's
    choice. ``n`` is ``int(alpha * len(train))`` capped at half (floor) of the test anomalies, with a warning
    when the cap applies.

    Args:
        train: Clean training samples (normal images).
        test: Test samples (labels 0 / 1).
        alpha: Noise ratio in [0, 1]; 0 injects nothing.
        overlap: Keep the injected images in the test set too.
        seed: Seed of the choice.

    Returns:
        ``(train + injected, test without injected unless overlap, injected)``; the injected samples keep
        label 1 and their mask, and are appended after the clean training samples, sorted by path.

    Raises:
        ValueError: ``alpha`` outside [0, 1] or not a number.
    """
    value = _check_alpha(alpha)
    candidates = sorted((s for s in test if s.label == LABEL_ANOMALOUS), key=lambda s: s.path)
    requested, n = n_injected(len(train), len(candidates), value)
    if n < requested:
        warnings.warn(
            f"noise alpha={value:g} asks for {requested} injected anomalies (int({value:g} * {len(train)} "
            f"training images)) but only {n} are allowed (half of the {len(candidates)} anomalous test "
            f"images); injecting {n}",
            UserWarning,
            stacklevel=3,
        )
    order = np.random.default_rng(seed).permutation(len(candidates))[:n]
    injected = sorted((candidates[int(i)] for i in order), key=lambda s: s.path)
    chosen = {s.path for s in injected}
    new_train = [*train, *injected]
    new_test = list(test) if overlap else [s for s in test if s.path not in chosen]
    return new_train, new_test, injected


def _make_split(
    root: str | os.PathLike[str],
    clean: tuple[Sequence[Sample], Sequence[Sample]],
    noisy: tuple[list[Sample], list[Sample], list[Sample]],
    alpha: float,
    overlap: bool,
    seed: int,
    meta: dict[str, Any],
) -> NoiseSplit:
    """Record a split made by :func:`inject_anomalies` from ``clean`` (train, test) into ``noisy``."""
    clean_train, clean_test = clean
    train, test, injected = noisy
    n_anomalous = sum(s.label == LABEL_ANOMALOUS for s in clean_test)
    requested, _ = n_injected(len(clean_train), n_anomalous, alpha)
    return NoiseSplit(
        alpha=float(alpha),
        overlap=bool(overlap),
        seed=int(seed),
        injected=[s.path for s in injected],
        test=[s.path for s in test],
        train=[s.path for s in train],
        source=os.path.abspath(os.fspath(root)),
        meta={
            "protocol": "softpatch",
            "n_train_clean": len(clean_train),
            "n_test_anomalous": n_anomalous,
            "n_requested": requested,
            "capped": requested > len(injected),
            **meta,
        },
    )


def softpatch_split(
    root: str | os.PathLike[str], alpha: float, *, overlap: bool, seed: int = 0
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """The SoftPatch noisy protocol (SPEC §7) on an MVTec-layout category folder.

    See :func:`inject_anomalies` for the choice. The folder is only read.

    Args:
        root: MVTec-layout category (``train/good``, ``test/<type>``, ``ground_truth/<type>``).
        alpha: Noise ratio in [0, 1]; e.g. bottle (209 train, 63 test anomalies): 0.1 -> 20 injected,
            0.2 -> 41 requested, capped to 31.
        overlap: Keep the injected images in the test set too (the harder setting).
        seed: Seed of the choice.

    Returns:
        ``(train_samples, test_samples, split)``.

    Raises:
        ValueError: ``alpha`` outside [0, 1].
        FileNotFoundError: ``root`` lacks ``train/good`` or ``test``.
    """
    _check_alpha(alpha)
    clean_train = mvtec_samples(root, "train")
    clean_test = mvtec_samples(root, "test")
    noisy = inject_anomalies(clean_train, clean_test, alpha, overlap, seed)
    split = _make_split(root, (clean_train, clean_test), noisy, alpha, overlap, seed, {"layout": "mvtec"})
    return noisy[0], noisy[1], split


def visa_noisy_split(
    root: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    alpha: float,
    *,
    overlap: bool,
    seed: int = 0,
    category: str | None = None,
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """The SoftPatch protocol on a VisA split CSV (train / test read with :func:`visa_samples`).

    Args:
        root: VisA root folder.
        csv_path: Split CSV (e.g. ``split_csv/1cls.csv``).
        alpha: Noise ratio in [0, 1].
        overlap: Keep the injected images in the test set too.
        seed: Seed of the choice.
        category: Keep only this object; ``None`` uses all rows (injection then draws from all objects).

    Returns:
        ``(train_samples, test_samples, split)``; ``split.meta`` records the CSV and the category.
    """
    _check_alpha(alpha)
    clean_train = visa_samples(root, csv_path, "train", category=category)
    clean_test = visa_samples(root, csv_path, "test", category=category)
    noisy = inject_anomalies(clean_train, clean_test, alpha, overlap, seed)
    meta = {"layout": "visa", "csv": os.path.abspath(os.fspath(csv_path)), "category": category}
    split = _make_split(root, (clean_train, clean_test), noisy, alpha, overlap, seed, meta)
    return noisy[0], noisy[1], split


def apply_split(
    root: str | os.PathLike[str],
    split: NoiseSplit,
    *,
    pool: tuple[Sequence[Sample], Sequence[Sample]] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Rebuild the train / test samples of a recorded split (so ``evaluate`` honours ``noise_split.json``).

    Labels and masks come from a fresh scan of ``root`` (``pool`` overrides it, e.g. for VisA). Paths
    under ``split.source`` are re-rooted onto ``root``, so a data folder that moved still works. A split
    without a ``train`` list (only the SPEC §11 keys) gets the clean training images plus the injected ones.

    Args:
        root: The data set root (MVTec layout unless ``pool`` is given).
        split: The recorded split.
        pool: Clean ``(train, test)`` samples to look paths up in; default: :func:`mvtec_samples` of ``root``
            (for VisA pass the two :func:`visa_samples` lists).

    Returns:
        ``(train_samples, test_samples)`` in the recorded order.

    Raises:
        FileNotFoundError: A listed image no longer exists (the message counts them and names a few).
        ValueError: A listed image exists but is not part of the data set at ``root``.
    """
    base = os.path.abspath(os.fspath(root))
    if pool is None:
        clean_train, clean_test = mvtec_samples(base, "train"), mvtec_samples(base, "test")
    else:
        clean_train, clean_test = list(pool[0]), list(pool[1])
    lookup: dict[str, Sample] = {}
    for sample in [*clean_train, *clean_test]:
        # Test entries overwrite train ones: an injected test image keeps its anomalous label and mask.
        if sample.path not in lookup or sample.label == LABEL_ANOMALOUS:
            lookup[sample.path] = sample
    train_paths = split.train or [*(s.path for s in clean_train), *split.injected]
    located = {p: _reroot(p, split.source, base) for p in [*train_paths, *split.test, *split.injected]}
    _check_located(located, lookup, base)
    train = [lookup[located[p]] for p in train_paths]
    test = [lookup[located[p]] for p in split.test]
    return train, test


def _reroot(path: str, source: str | None, base: str) -> str:
    """``path`` moved from the split's recorded root ``source`` onto ``base`` (when it lay under it)."""
    if source and source != base:
        rel = os.path.relpath(path, source)
        if not rel.startswith(os.pardir + os.sep) and rel != os.pardir and not os.path.isabs(rel):
            return os.path.join(base, rel)
    return os.path.abspath(path)


def _check_located(located: dict[str, str], lookup: dict[str, Sample], base: str) -> None:
    """Refuse a split whose images are gone or lie outside the data set at ``base``."""
    gone = [p for p, q in located.items() if not os.path.exists(q)]
    if gone:
        examples = ", ".join(gone[:3]) + (", ..." if len(gone) > 3 else "")
        raise FileNotFoundError(
            f"{len(gone)} image(s) listed in the noise split no longer exist under '{base}' ({examples}); "
            "restore them or make a new split"
        )
    foreign = [p for p, q in located.items() if q not in lookup]
    if foreign:
        examples = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(
            f"{len(foreign)} image(s) listed in the noise split are not part of the data set at '{base}' "
            f"({examples})"
        )


def contamination(samples: Sequence[Sample]) -> dict[str, Any]:
    """Measured noise of a labelled sample list: ``{"n", "n_anomalous", "n_normal", "noise_rate"}``.

    ``noise_rate`` is ``n_anomalous / n`` (0.0 for an empty list).

    Raises:
        ValueError: Some labels are unknown (-1) or not 0 / 1.
    """
    labels = [s.label for s in samples]
    unknown = sum(label == LABEL_UNKNOWN for label in labels)
    if unknown:
        raise ValueError(
            f"contamination needs known labels; {unknown} of {len(labels)} samples are unlabelled (-1)"
        )
    bad = sorted({label for label in labels if label not in (LABEL_NORMAL, LABEL_ANOMALOUS)})
    if bad:
        raise ValueError(f"labels must be 0 or 1, got {bad}")
    n = len(labels)
    n_anomalous = sum(label == LABEL_ANOMALOUS for label in labels)
    return {
        "n": n,
        "n_anomalous": n_anomalous,
        "n_normal": n - n_anomalous,
        "noise_rate": n_anomalous / n if n else 0.0,
    }


_FUIAD = re.compile(r"fuiad_([0-9]+(?:\.[0-9]+)?)$")


def realiad_noisy_split(
    json_path: str | os.PathLike[str], root: str | os.PathLike[str]
) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """A Real-IAD noisy split (``realiad_jsons_fuiad_<alpha>/<category>.json``) with its measured noise.

    Args:
        json_path: Real-IAD JSON list.
        root: Real-IAD image root (e.g. ``realiad_256``).

    Returns:
        ``(train, test, info)``: ``info`` is :func:`contamination` of the training list plus ``nominal_alpha``
        (from a ``..._fuiad_<alpha>`` parent folder name, else ``None``) and ``json`` (the list's path).
        The paper measured noise rates 0, 0.07, 0.13, 0.26 for nominal 0.0, 0.1, 0.2, 0.4.
    """
    train = realiad_samples(json_path, root, "train")
    test = realiad_samples(json_path, root, "test")
    info = contamination(train)
    match = _FUIAD.search(Path(json_path).parent.name)
    info["nominal_alpha"] = float(match.group(1)) if match else None
    info["json"] = os.path.abspath(os.fspath(json_path))
    return train, test, info
