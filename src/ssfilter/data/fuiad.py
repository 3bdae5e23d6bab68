"""Real-IAD's FUIAD protocol: the official ``realiad_jsons_fuiad_<alpha>/<category>.json`` lists as a split.

The paper's main table trains on these lists (Real-IAD's own fully unsupervised split), not on SoftPatch
injection. One Real-IAD sample is one camera view (one image file): a part photographed by 5 cameras is 5
samples for training, for the filters and for the image-level metric, as the paper's image-level metrics are.
Real-IAD: Wang et al., CVPR 2024 (licence: the release's own terms, research use).
"""

from __future__ import annotations

import os
from pathlib import Path

from ssfilter.data.datasets import LABEL_ANOMALOUS, Sample
from ssfilter.data.noise import NoiseSplit, realiad_noisy_split
from ssfilter.errors import SSFilterError

__all__ = ["MissingSplitError", "fuiad_json", "realiad_fuiad_split"]


class MissingSplitError(SSFilterError, FileNotFoundError):
    """A data set's own noisy split file (Real-IAD's FUIAD JSON) is not where the protocol expects it."""


def fuiad_json(root: str | os.PathLike[str], category: str, alpha: float) -> Path:
    """The FUIAD list of ``category`` at ``alpha`` under a Real-IAD root.

    ``realiad_jsons_fuiad_<alpha>/<category>.json`` with ``<alpha>`` written as in the release (``0.1``,
    ``0.0``) or shortest (``0``); at alpha 0 a root without ``realiad_jsons_fuiad_0.0`` falls back to the
    clean ``realiad_jsons`` (no NG training image either way).

    Raises:
        MissingSplitError: No such file; the message names the expected path.
    """
    value = float(alpha)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"noise ratio must be in [0, 1], got {alpha!r}")
    base = Path(root)
    tags = list(dict.fromkeys((repr(value), f"{value:g}")))
    candidates = [base / f"realiad_jsons_fuiad_{tag}" / f"{category}.json" for tag in tags]
    if value == 0.0:
        candidates.append(base / "realiad_jsons" / f"{category}.json")
    for path in candidates:
        if path.is_file():
            return path
    raise MissingSplitError(
        f"--noise {value:g} on Real-IAD uses the official FUIAD split, but '{candidates[0]}' does not exist; "
        f"put the release's realiad_jsons_fuiad_{tags[0]}/ folder next to realiad_jsons/ in '{base}'"
    )


def realiad_fuiad_split(
    root: str | os.PathLike[str], image_root: str | os.PathLike[str], category: str, alpha: float
) -> tuple[list[Sample], list[Sample], NoiseSplit]:
    """Real-IAD's FUIAD protocol for one category: the official JSON's train and test lists, exactly.

    Nothing is drawn: the training list (OK and NG images) and the test list are the file's, in file order,
    so the number of NG training images equals the file's. The split is recorded like a SoftPatch one
    (``injected`` = the NG training images) so ``evaluate`` and ``filter`` rebuild it from the run folder.

    Args:
        root: Real-IAD root (holding ``realiad_jsons*/``).
        image_root: Image folder (``realiad_1024``, ``realiad_256``, ...).
        category: Category (JSON stem).
        alpha: Nominal noise ratio: 0.1, 0.2 or 0.4 in the release (0 and 0.0 also accepted).

    Returns:
        ``(train, test, split)``; ``split.meta`` holds the JSON (relative to ``root``) and the measured noise.

    Raises:
        MissingSplitError: The FUIAD file is missing (the message names the expected path).
    """
    json_path = fuiad_json(root, category, alpha)
    train, test, info = realiad_noisy_split(json_path, image_root)
    base = os.path.abspath(os.fspath(root))
    split = NoiseSplit(
        alpha=float(alpha),
        overlap=False,
        seed=0,
        injected=[s.path for s in train if s.label == LABEL_ANOMALOUS],
        test=[s.path for s in test],
        train=[s.path for s in train],
        source=base,
        meta={
            "protocol": "fuiad",
            "layout": "realiad",
            "category": category,
            "json": os.path.relpath(json_path, base),
            "image_root": os.path.relpath(os.path.abspath(os.fspath(image_root)), base),
            "n_train": info["n"],
            "n_ng_train": info["n_anomalous"],
            "noise_rate": info["noise_rate"],
        },
    )
    return train, test, split
