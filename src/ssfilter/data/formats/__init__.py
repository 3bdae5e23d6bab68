"""Data-set formats behind ``--data`` / ``--format``: detection, categories, train/test samples, noise.

- :mod:`~ssfilter.data.formats.base`: :class:`Category`, :class:`DataSet`, the abstract
  :class:`DataFormat`, :func:`register_format`, :func:`resolve_data` (detection) and
  :func:`resolve_category`.
- One module per format, in detection order (their ``priority``): :mod:`.realiad` (Real-IAD, FUIAD
  noise), :mod:`.visa` (``split_csv/1cls.csv``), :mod:`.mvtec` (MVTec AD layout, SoftPatch noise),
  :mod:`.folder` (any folder of images, the fallback).

To add a format, add a module with a :class:`DataFormat` subclass decorated by :func:`register_format`
and import it below; its ``priority`` places it in the detection order (``folder``, which accepts any
folder with images, comes last).
"""

from __future__ import annotations

from ssfilter.data.formats import folder, mvtec, realiad, visa  # noqa: F401 - registers the formats
from ssfilter.data.formats.base import (
    Category,
    DataFormat,
    DataSet,
    UnknownLayoutError,
    get_format,
    list_formats,
    recorded_split,
    register_format,
    resolve_category,
    resolve_data,
)

__all__ = [
    "Category",
    "DataFormat",
    "DataSet",
    "UnknownLayoutError",
    "get_format",
    "list_formats",
    "recorded_split",
    "register_format",
    "resolve_category",
    "resolve_data",
]
