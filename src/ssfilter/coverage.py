"""Whole image or centre crop: what ``data.coverage = "auto"`` becomes for the data being trained on.

The MVTec benchmark convention (resize to a square, centre crop) cuts 12.5% off every border at 448/392;
on a user's own parts a defect can sit anywhere, the border included. The data format says which
convention applies (``DataFormat.coverage``); this module turns the config's choice into sizes.
"""

from __future__ import annotations

from ssfilter.config import Config

__all__ = ["COVERAGES", "resolve_coverage"]

#: Values of ``data.coverage``.
COVERAGES = ("auto", "crop", "whole", "tiles")


def resolve_coverage(cfg: Config, default: str) -> Config:
    """A copy of ``cfg`` whose ``data.coverage`` is ``"crop"``, ``"whole"`` or ``"tiles"``, sizes to match.

    ``"auto"`` becomes ``default`` (the data format's convention: ``"whole"`` for a plain folder,
    ``"crop"`` for a labelled benchmark format). ``"whole"`` sets ``resize = crop``: the image is resized
    straight to the model's input size, so nothing is cut off and the model and its cost are unchanged.
    ``"tiles"`` is kept as chosen (never the default: it multiplies the cost by the number of tiles).

    Raises:
        ValueError: ``data.coverage`` or ``default`` is not one of :data:`COVERAGES`.
    """
    for name, value in (("data.coverage", cfg.data.coverage), ("default coverage", default)):
        if value not in COVERAGES:
            raise ValueError(f"{name} must be one of {', '.join(COVERAGES)}, got {value!r}")
    out = cfg.copy()
    coverage = default if out.data.coverage == "auto" else out.data.coverage
    if coverage == "auto":
        raise ValueError("the default coverage must be 'crop' or 'whole', not 'auto'")
    out.data.coverage = coverage
    if coverage == "tiles":
        if not out.data.tile_scale > 0:
            raise ValueError(f"data.tile_scale must be positive, got {out.data.tile_scale}")
        if not 0.0 <= out.data.tile_overlap < 1.0:
            raise ValueError(f"data.tile_overlap must be in [0, 1), got {out.data.tile_overlap}")
    if coverage in ("whole", "tiles"):  # tiles: resize is unused, the image is scaled by tile_scale
        out.data.resize = out.data.crop
    return out
