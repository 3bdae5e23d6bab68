"""What a data-set format is, the registry of formats, and the detection behind ``--data`` / ``--format``.

A *format* (MVTec AD, VisA, Real-IAD, a plain folder) knows how to recognise a data-set root (all its
categories) or one category, how to list the categories of a root, and how to give a category's train and
test samples and its noisy (fully unsupervised) split. Detection tries every registered format's root test,
then every format's category test, in registration order; ``--format NAME`` tries only that format. A
folder nothing recognises is an :class:`UnknownLayoutError` that lists what was looked for.

A :class:`Category` is what one run trains on; its ``path`` (the category folder) is what the run records
as its data, so later commands (``evaluate``, ``filter``) find the same category again.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ssfilter.data.datasets import Sample
from ssfilter.data.noise import NoiseSplit, apply_split
from ssfilter.errors import SSFilterError
from ssfilter.runfolder import NOISE_SPLIT_FILE

__all__ = [
    "Category",
    "DataFormat",
    "DataSet",
    "UnknownLayoutError",
    "find_existing",
    "get_format",
    "list_formats",
    "recorded_split",
    "register_format",
    "resolve_category",
    "resolve_data",
]

log = logging.getLogger(__name__)


class UnknownLayoutError(SSFilterError, ValueError):
    """A ``--data`` folder matches no known data-set layout (or not the one ``--format`` names)."""


@dataclass(frozen=True)
class Category:
    """One category of a data set: what one run trains on and is evaluated on.

    Attributes:
        format: Name of the format (``mvtec``, ``visa``, ``realiad``, ``folder``).
        name: Category name (the folder name; VisA's ``object``; Real-IAD's JSON stem).
        path: The category folder; a run records it as its data.
        root: The data set's root: the folder holding ``split_csv/`` (VisA) or ``realiad_jsons/``
            (Real-IAD); the category folder itself for MVTec AD and plain folders.
        index: The file listing the category's samples (VisA's split CSV, Real-IAD's JSON), if any.
    """

    format: str
    name: str
    path: Path
    root: Path
    index: Path | None = None

    @property
    def handler(self) -> DataFormat:
        """The format object that reads this category."""
        return get_format(self.format)

    def samples(self, split: str) -> list[Sample]:
        """Clean ``"train"`` or ``"test"`` samples of the category (see the format's reader)."""
        return self.handler.samples(self, split)

    def noisy_split(
        self, alpha: float, *, overlap: bool = False, seed: int = 0
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """``(train, test, split)`` of the format's noise protocol at ratio ``alpha``."""
        return self.handler.noisy_split(self, alpha, overlap=overlap, seed=seed)

    def recorded_split(self, split: NoiseSplit) -> tuple[list[Sample], list[Sample]] | None:
        """``(train, test)`` of a recorded split made on this category; ``None`` if made elsewhere."""
        base = self.handler.split_root(self)
        if split.source is None or Path(split.source).resolve() != base.resolve():
            return None
        if split.meta.get("category") not in (None, self.name):
            return None
        return apply_split(base, split, pool=self.handler.split_pool(self, split))


@dataclass(frozen=True)
class DataSet:
    """A resolved ``--data`` folder: its format and categories.

    Attributes:
        format: Name of the detected (or forced) format.
        path: The folder given.
        categories: Its categories, sorted by name (one when ``path`` is a single category).
        is_root: Whether ``path`` is a data-set root (runs then go to ``OUT/<category>/``).
    """

    format: str
    path: Path
    categories: tuple[Category, ...]
    is_root: bool

    @property
    def names(self) -> list[str]:
        """Category names, in order."""
        return [c.name for c in self.categories]

    def select(self, names: Sequence[str] | None) -> DataSet:
        """Only the named categories (in the given order); ``None`` or empty keeps all.

        Raises:
            UnknownLayoutError: A name is not a category of this data set (the message lists them).
        """
        if not names:
            return self
        by_name = {c.name: c for c in self.categories}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UnknownLayoutError(
                f"{', '.join(unknown)}: not a category of the {self.format} data set at '{self.path}' "
                f"(categories: {', '.join(self.names)})"
            )
        return replace(self, categories=tuple(by_name[n] for n in dict.fromkeys(names)))

    def describe(self) -> str:
        """One line for the log: format, root or category, and the category list."""
        kind = "root" if self.is_root else "category"
        return (
            f"data: {self.format} {kind} '{self.path}', {len(self.categories)} "
            f"categor{'y' if len(self.categories) == 1 else 'ies'}: {', '.join(self.names)}"
        )


class DataFormat(ABC):
    """One data-set layout. Subclasses are registered with :func:`register_format`.

    Attributes:
        name: The ``--format`` name.
        looked_for: What detection looks for, for the unknown-layout error.
        priority: Detection order (lower first); the plain-folder fallback comes last.
        citation: The data set's citation and licence, printed in summaries ("" when unknown).
        coverage: What ``data.coverage = "auto"`` means for this format (see
            :func:`ssfilter.config.resolve_coverage`): the benchmark formats keep the paper's centre crop.
    """

    name: str = ""
    looked_for: str = ""
    priority: int = 50
    citation: str = ""
    coverage: str = "crop"

    @abstractmethod
    def root_categories(self, path: Path) -> list[Category] | None:
        """The categories when ``path`` is a root of this format, else ``None``."""

    @abstractmethod
    def category(self, path: Path) -> Category | None:
        """The category when ``path`` is one category of this format, else ``None``."""

    @abstractmethod
    def samples(self, category: Category, split: str) -> list[Sample]:
        """Clean train or test samples of ``category``."""

    @abstractmethod
    def noisy_split(
        self, category: Category, alpha: float, *, overlap: bool, seed: int
    ) -> tuple[list[Sample], list[Sample], NoiseSplit]:
        """The noisy protocol of this format (``NoiseSplit.source`` is :meth:`split_root`)."""

    def citation_for(self, names: Sequence[str]) -> str:
        """The citation to print for a data set with these categories ("" when unknown)."""
        return self.citation

    def split_root(self, category: Category) -> Path:
        """The folder a recorded split's paths are relative to (the one passed to ``apply_split``)."""
        return category.path

    def split_pool(self, category: Category, split: NoiseSplit) -> tuple[list[Sample], list[Sample]]:
        """Clean ``(train, test)`` samples that a recorded split's paths are looked up in."""
        return self.samples(category, "train"), self.samples(category, "test")


_FORMATS: dict[str, DataFormat] = {}


def register_format(cls: type[DataFormat]) -> type[DataFormat]:
    """Class decorator: register a format under ``cls.name`` (detection follows ``cls.priority``)."""
    if not cls.name or cls.name in _FORMATS:
        raise ValueError(f"format name {cls.name!r} is empty or already registered")
    _FORMATS[cls.name] = cls()
    ordered = sorted(_FORMATS.values(), key=lambda f: f.priority)
    _FORMATS.clear()
    _FORMATS.update((f.name, f) for f in ordered)
    return cls


def list_formats() -> list[str]:
    """Registered format names, in detection order."""
    return list(_FORMATS)


def get_format(name: str) -> DataFormat:
    """The registered format ``name``.

    Raises:
        UnknownLayoutError: No such format (the message lists the known ones).
    """
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownLayoutError(
            f"unknown data format {name!r}; known formats: {', '.join(_FORMATS)}"
        ) from None


def resolve_data(path: str | os.PathLike[str], data_format: str | None = None) -> DataSet:
    """Detect what ``path`` is: a root of some format (all its categories) or one category.

    Args:
        path: The ``--data`` folder.
        data_format: Force this format (``--format``); ``None`` detects.

    Returns:
        The data set, its categories sorted by name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnknownLayoutError: No format (or not the forced one) recognises ``path``; the message lists what
            was looked for.
    """
    base = Path(os.path.abspath(os.fspath(path)))
    if not base.exists():
        raise FileNotFoundError(f"data folder '{base}' does not exist")
    formats = [get_format(data_format)] if data_format else list(_FORMATS.values())
    for fmt in formats:
        found = fmt.root_categories(base)
        if found:
            cats = tuple(sorted(found, key=lambda c: c.name))
            return DataSet(fmt.name, base, cats, is_root=True)
    for fmt in formats:
        cat = fmt.category(base)
        if cat is not None:
            return DataSet(fmt.name, base, (cat,), is_root=False)
    wanted = "; ".join(f"{f.name}: {f.looked_for}" for f in formats)
    # The plain-folder format accepts any folder with an image, so reaching here with it means none.
    why = " (no images found under it)" if "folder" in {f.name for f in formats} else ""
    raise UnknownLayoutError(f"'{base}' is not a data set ssfilter recognises{why}; looked for {wanted}")


def resolve_category(path: str | os.PathLike[str], data_format: str | None = None) -> Category:
    """The one category at ``path`` (a root with exactly one category is accepted too).

    Raises:
        UnknownLayoutError: ``path`` is a root of several categories (the message names them) or unknown.
    """
    found = resolve_data(path, data_format)
    if len(found.categories) != 1:
        raise UnknownLayoutError(
            f"'{found.path}' is a {found.format} root of {len(found.categories)} categories "
            f"({', '.join(found.names)}); this command needs one category folder, e.g. "
            f"'{found.categories[0].path}'"
        )
    return found.categories[0]


def recorded_split(
    path: str | os.PathLike[str], run_dir: str | os.PathLike[str] | None, data_format: str | None = None
) -> tuple[list[Sample], list[Sample]] | None:
    """``(train, test)`` of a run's ``noise_split.json`` when it was made on the category at ``path``.

    ``None`` when the run has no split file or its split belongs to another category (then the category's
    clean lists apply). The paths are looked up in the format's own lists (e.g. Real-IAD's FUIAD JSON).
    """
    split_file = Path(run_dir) / NOISE_SPLIT_FILE if run_dir is not None else None
    if split_file is None or not split_file.is_file():
        return None
    return resolve_category(path, data_format).recorded_split(NoiseSplit.load(split_file))


def find_existing(candidates: Sequence[Path], test: Callable[[Path], bool] = Path.is_dir) -> Path | None:
    """The first of ``candidates`` that passes ``test`` (default: is a folder)."""
    return next((c for c in candidates if test(c)), None)
