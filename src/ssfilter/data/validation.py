"""Sample validation: decode every image once before a command uses it, and say what was left out.

A folder handed over by a factory may hold corrupt, truncated or unreadable files; every command
(train, filter, evaluate, benchmark) drops them here with a warning and lists them with their reasons
in ``skipped.csv`` instead of failing half-way.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from ssfilter.data.datasets import Sample
from ssfilter.data.images import ImageReadError, Skipped, read_mask, validate_images, write_skipped_csv
from ssfilter.runfolder import NOISE_SPLIT_FILE, SKIPPED_FILE

__all__ = ["prepare_training_samples", "validate_samples"]

log = logging.getLogger(__name__)

_LISTED = 10  # skipped files named in the warning; skipped.csv lists all of them


def prepare_training_samples(
    data: str | Path,
    run_dir: Path | None = None,
    *,
    noise: float | None = None,
    overlap: bool = False,
    noise_seed: int = 0,
    data_format: str | None = None,
) -> tuple[list[Sample], list[Skipped]]:
    """Training images of one data-set category with unreadable files removed and reported.

    ``data`` is detected (or read as ``data_format``) by :func:`~ssfilter.data.formats.resolve_category`:
    an MVTec AD, VisA or Real-IAD category, or a plain folder. With ``noise`` the format's noise protocol
    builds the training set (SoftPatch injection for MVTec AD and VisA, the official FUIAD list for
    Real-IAD) and the split is written to ``run_dir/noise_split.json``. The skipped files and their
    reasons go to ``run_dir/skipped.csv`` when a run folder is given.
    """
    from ssfilter.data.formats import resolve_category

    category = resolve_category(data, data_format)
    log.info("data: %s category '%s' (%s)", category.format, category.name, category.path)
    if noise is not None:
        samples, _, split = category.noisy_split(noise, overlap=overlap, seed=noise_seed)
        if run_dir is not None:
            split.save(Path(run_dir) / NOISE_SPLIT_FILE)
    else:
        samples = category.samples("train")
    kept, skipped = validate_samples(samples, what="training image")
    if run_dir is not None:
        write_skipped_csv(skipped, Path(run_dir) / SKIPPED_FILE)
    if not kept:
        raise ValueError(
            f"no readable training images under {data}: all {len(skipped)} image file(s) were skipped"
            + (f" (listed with reasons in {Path(run_dir) / SKIPPED_FILE})" if run_dir is not None else "")
        )
    return kept, skipped


def validate_samples(
    samples: Sequence[Sample], *, masks: bool = False, what: str = "image"
) -> tuple[list[Sample], list[Skipped]]:
    """Decode every sample once; drop unreadable ones, warn once and list each with its reason.

    Args:
        samples: Samples to check, in order.
        masks: Also decode each sample's ground-truth mask; a sample whose mask cannot be read is
            skipped (its pixel ground truth would be wrong), with the mask named in the reason.
        what: Noun for the warning (``"training image"``, ``"test image"``, ...).

    Returns:
        ``(kept, skipped)``: the readable samples in input order, the skipped files with their reasons.
    """
    good, skipped = validate_images([Path(s.path) for s in samples])
    readable = {str(p) for p in good}
    kept: list[Sample] = []
    for sample in samples:
        if sample.path not in readable:
            continue
        if masks and sample.mask_path is not None:
            try:
                read_mask(sample.mask_path)
            except ImageReadError as err:
                skipped.append(
                    Skipped(sample.path, f"its mask {sample.mask_path} is unreadable: {err.reason}")
                )
                continue
        kept.append(sample)
    if skipped:
        listed = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:_LISTED])
        more = f"; and {len(skipped) - _LISTED} more" if len(skipped) > _LISTED else ""
        warnings.warn(
            f"skipped {len(skipped)} unreadable {what}(s) (listed in {SKIPPED_FILE}): {listed}{more}",
            stacklevel=3,
        )
    return kept, skipped
