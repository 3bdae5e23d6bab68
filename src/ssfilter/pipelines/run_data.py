"""Which images a trained run's commands use when they are not told: its training set, its test split.

A run records its data (``data.json``) and, when it was trained with injected noise, the split
(``noise_split.json``). ``filter`` then defaults to the run's own (noisy) training set and ``evaluate`` to the
test split of that noise protocol, so that an image trained on is never counted as unseen. A ``--unified``
run (one model over several categories) records the data-set root; each category's split sits under
``RUN/categories/<category>/``, so its training set is the union of the categories' and each category is
evaluated on its own split.
"""

from __future__ import annotations

from pathlib import Path

from ssfilter.data.datasets import Sample
from ssfilter.data.formats import recorded_split, resolve_category, resolve_data
from ssfilter.data.images import Skipped
from ssfilter.data.validation import prepare_training_samples, validate_samples

__all__ = ["UNIFIED_CATEGORIES", "run_test_samples", "run_training_samples", "split_folder"]

#: Sub-folder of a ``--unified`` run holding one folder per category (its split, skipped files, metrics).
UNIFIED_CATEGORIES = "categories"


def split_folder(run: Path | None, category: Path) -> Path | None:
    """The folder holding a run's split of ``category``: a unified run's ``RUN/categories/<name>/``."""
    if run is None:
        return None
    per_category = Path(run) / UNIFIED_CATEGORIES / Path(category).name
    return per_category if per_category.is_dir() else Path(run)


def run_training_samples(
    run: Path | None, data: Path | None, data_format: str | None, given: str | Path | None = None
) -> tuple[list[Sample], list[Skipped]]:
    """Images to filter and the unreadable ones left out: ``given``, else the run's (noisy) training set.

    Raises:
        ValueError: No data at all, or no readable training image in the run's split.
    """
    if given is not None:
        return prepare_training_samples(given)
    if data is None:
        raise ValueError("no data to filter: pass data=... (a folder of images)")
    if run is not None and (Path(run) / UNIFIED_CATEGORIES).is_dir():
        dataset = resolve_data(data, data_format)
        union: list[Sample] = []
        for category in dataset.categories:
            recorded = recorded_split(category.path, split_folder(run, category.path), dataset.format)
            union += recorded[0] if recorded is not None else category.samples("train")
        return validate_samples(union, what="training image")
    recorded = recorded_split(data, run, data_format)
    if recorded is not None:
        kept, skipped = validate_samples(recorded[0], what="training image")
        if not kept:
            raise ValueError(f"no readable training images in the noise split of {run}")
        return kept, skipped
    return prepare_training_samples(data, data_format=data_format)


def run_test_samples(
    run: Path | None, data: Path | None, data_format: str | None, root: Path
) -> list[Sample]:
    """The test split of ``root``, honouring the split the run made of it (``noise_split.json``).

    Raises:
        ValueError: ``root`` is the data-set root of a unified run (evaluate one category at a time).
    """
    if run is not None and (Path(run) / UNIFIED_CATEGORIES).is_dir() and root == data:
        names = ", ".join(c.name for c in resolve_data(root, data_format).categories)
        raise ValueError(
            f"{run} is one model over several categories ({names}); evaluate one at a time with "
            f"--data {root}/<category> (its noise split is honoured)"
        )
    fmt = data_format if root == data or (data is not None and Path(root).parent == data) else None
    recorded = recorded_split(root, split_folder(run, root), fmt)
    return recorded[1] if recorded is not None else resolve_category(root, fmt).samples("test")
