"""Clean export and quarantine: the dataset filter's two piles of images, laid out as folders.

Clean export: ``dest/train/good/<name>`` holds links to (or copies of) the images judged normal and
``dest/manifest.csv`` maps each exported file to its source. Quarantine (:func:`export_quarantine`):
``dest/suspects/<rank>_<name>`` holds the images judged anomalous, most suspect first in name order, for a
person to review, and its ``manifest.csv`` adds each one's rank, keep count and reason.

The user's files are only ever read: the destination may not lie inside a source folder, names are flat and
sanitised so nothing is written outside ``dest``, and the tree is built in a hidden staging folder beside
``dest`` and renamed into place, so ``dest`` appears complete or not at all. A staging folder left by a
killed export of this machine is removed by the next export to the same place.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
import secrets
import shutil
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ssfilter.filtering.filter_outputs import FilterRecord, suspicion_order
from ssfilter.io import atomic_writer

log = logging.getLogger(__name__)

__all__ = [
    "EXPORT_SUBDIR",
    "MANIFEST_CSV",
    "QUARANTINE_SUBDIR",
    "ExportMode",
    "export_clean",
    "export_name",
    "export_quarantine",
    "staging_prefix",
]

ExportMode = Literal["auto", "symlink", "hardlink", "copy"]

MANIFEST_CSV = "manifest.csv"
#: Where :func:`export_clean` puts the kept images (MVTec / anomalib ``Folder`` normal-image folder).
EXPORT_SUBDIR = Path("train") / "good"
#: Where :func:`export_quarantine` puts the suspects.
QUARANTINE_SUBDIR = Path("suspects")

_MODES = ("auto", "symlink", "hardlink", "copy")
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_MAX_STEM = 150


# -- names ----------------------------------------------------------------------------------------------


def _safe_part(part: str) -> str:
    """One path component made harmless: no separators or control characters, no leading dot."""
    return _UNSAFE_CHARS.sub("_", part).strip().lstrip(".").rstrip(". ")


def export_name(path: str, source_root: str | None) -> str:
    """A flat, sanitised file name for ``path`` (uniqueness is handled by the caller).

    Under ``source_root`` the relative sub-path is kept, its leading ``train/good`` dropped and the
    remaining components joined with ``__`` (``test/crack/001.png`` -> ``test__crack__001.png``); anything
    else keeps its base name. The result is one plain component: no separator, never ``.``/``..``, not hidden.
    """
    src = os.path.abspath(path)  # normalises '..' components away
    parts: list[str] = [os.path.basename(src)]
    if source_root is not None:
        try:
            rel = os.path.relpath(src, os.path.abspath(source_root))
        except ValueError:  # another drive (Windows)
            rel = ""
        rel_parts = Path(rel).parts
        if rel and not os.path.isabs(rel) and ".." not in rel_parts:
            if tuple(p.casefold() for p in rel_parts[:2]) == ("train", "good") and len(rel_parts) > 2:
                rel_parts = rel_parts[2:]
            parts = list(rel_parts)
    safe = [p for p in (_safe_part(p) for p in parts) if p]
    name = "__".join(safe) or "image"
    stem, suffix = os.path.splitext(name)
    return stem[:_MAX_STEM] + suffix[:16]


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``stem_1.ext``, ``stem_2.ext``, ... -- unique even on case-insensitive file systems."""
    stem, suffix = os.path.splitext(name)
    candidate, k = name, 0
    while candidate.casefold() in used:
        k += 1
        candidate = f"{stem}_{k}{suffix}"
    used.add(candidate.casefold())
    return candidate


# -- export ---------------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_destination(
    out: Path, records: Sequence[FilterRecord], source_root: str | os.PathLike[str] | None
) -> None:
    """Refuse a destination that is not new/empty or that lies inside a folder the images come from."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise FileExistsError(f"'{out}' already exists and is not an empty folder; choose a new destination")
    real_out = Path(os.path.realpath(out))
    protected = {Path(os.path.realpath(os.path.dirname(os.path.abspath(r.path)))) for r in records}
    if source_root is not None:
        protected.add(Path(os.path.realpath(source_root)))
    for folder in sorted(protected):
        if _inside(real_out, folder):
            raise ValueError(f"refusing to export into '{out}': it lies inside the source folder '{folder}'")


def _existing(records: Sequence[FilterRecord], what: str) -> list[FilterRecord]:
    """``records``, each checked to still exist (the export fails before writing anything)."""
    for r in records:
        if not os.path.isfile(r.path):
            raise FileNotFoundError(
                f"{what} image '{r.path}' does not exist (moved or deleted after filtering?)"
            )
    return list(records)


def _lay_out(
    good: Path,
    kept: Sequence[FilterRecord],
    root: str | None,
    mode: ExportMode,
    subdir: Path = EXPORT_SUBDIR,
    ranked: bool = False,
) -> list[tuple[str, str]]:
    """Link or copy every image into ``good``; returns the manifest rows ``(source, exported)``.

    ``auto`` tries symlinks and, at the first failure, copies this and every later image. ``ranked``
    prefixes each name with the record's 4-digit rank.
    """
    used: set[str] = set()
    rows: list[tuple[str, str]] = []
    link = mode in ("auto", "symlink")
    for r in kept:
        src = os.path.abspath(r.path)
        base = export_name(src, root)
        name = _unique(f"{r.rank:04d}_{base}" if ranked else base, used)
        target = good / name
        if link:
            try:
                os.symlink(src, target)
            except OSError:
                if mode == "symlink":
                    raise
                link = False  # auto: this platform / file system cannot link, copy from now on
        if not link:
            if mode == "hardlink":
                os.link(src, target)
            else:
                shutil.copy2(src, target)
        rows.append((src, (subdir / name).as_posix()))
    return rows


def export_clean(
    records: Sequence[FilterRecord],
    dest: str | os.PathLike[str],
    *,
    source_root: str | os.PathLike[str] | None = None,
    mode: ExportMode = "auto",
) -> Path:
    """Lay out the images judged normal as a training folder: ``dest/train/good/<name>`` + ``manifest.csv``.

    The folder trains directly with ssfilter (``--data dest``) and anomalib's ``Folder`` datamodule
    (``root=dest, normal_dir="train/good"``). Names are flat and sanitised (see :func:`export_name`), made
    unique with a ``_<k>`` suffix, so nothing is ever written outside ``dest``. ``manifest.csv`` maps each
    ``source`` (absolute path) to its ``exported`` path (relative to ``dest``). The tree is built in a hidden
    folder beside ``dest`` and renamed into place, so ``dest`` appears complete or not at all.

    Args:
        records: Dataset filter records; those with decision ``"normal"`` are exported.
        dest: Output folder; must not exist or be empty, and must not lie inside a source folder.
        source_root: Folder the images come from (e.g. the MVTec category); keeps their sub-paths in the
            names and is protected like the images' own folders.
        mode: ``"symlink"``, ``"hardlink"`` (shares the file's content with the source), ``"copy"``, or
            ``"auto"`` (symlinks, falling back to copies where links cannot be made).

    Returns:
        ``dest``.

    Raises:
        ValueError: Unknown mode, or ``dest`` inside a source folder.
        FileExistsError: ``dest`` exists and is not an empty folder.
        FileNotFoundError: A kept image no longer exists.
    """
    kept = [r for r in records if r.decision == "normal"]
    return _export(records, kept, dest, source_root, mode, quarantine=False)


def export_quarantine(
    records: Sequence[FilterRecord],
    dest: str | os.PathLike[str],
    *,
    source_root: str | os.PathLike[str] | None = None,
    mode: ExportMode = "auto",
) -> Path:
    """Lay out the images judged anomalous for review: ``dest/suspects/<rank>_<name>`` + ``manifest.csv``.

    Names start with the 4-digit suspicion rank (:func:`~ssfilter.filtering.filter_outputs.suspicion_order`
    is applied to ``records``), so a file browser lists the most suspect image first; ``manifest.csv`` has
    ``source, exported, rank, times_kept, times_seen, reason``. The same guarantees as :func:`export_clean`:
    the sources are only read, ``dest`` must be new or empty and outside the source folders, and it appears
    complete or not at all.

    Raises:
        ValueError: Unknown mode, or ``dest`` inside a source folder.
        FileExistsError: ``dest`` exists and is not an empty folder.
        FileNotFoundError: A quarantined image no longer exists.
    """
    suspects = [r for r in suspicion_order(records) if r.decision == "anomalous"]
    return _export(records, suspects, dest, source_root, mode, quarantine=True)


def _export(
    records: Sequence[FilterRecord],
    chosen: Sequence[FilterRecord],
    dest: str | os.PathLike[str],
    source_root: str | os.PathLike[str] | None,
    mode: ExportMode,
    *,
    quarantine: bool,
) -> Path:
    """Check ``dest``, lay ``chosen`` out in a staging folder with its manifest, rename it into place."""
    if mode not in _MODES:
        raise ValueError(f"unknown export mode {mode!r}; choose auto, symlink, hardlink or copy")
    out = Path(os.path.abspath(dest))
    _check_destination(out, records, source_root)
    chosen = _existing(chosen, "quarantined" if quarantine else "kept")
    if not chosen and not quarantine:
        warnings.warn("the dataset filter kept no image; the exported folder is empty", stacklevel=3)
    subdir = QUARANTINE_SUBDIR if quarantine else EXPORT_SUBDIR
    root = None if source_root is None else os.fspath(source_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _make_staging(out)
    try:
        (staging / subdir).mkdir(parents=True)
        rows = _lay_out(staging / subdir, chosen, root, mode, subdir, ranked=quarantine)
        with atomic_writer(staging / MANIFEST_CSV, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            if quarantine:
                writer.writerow(["source", "exported", "rank", "times_kept", "times_seen", "reason"])
                writer.writerows(
                    (*row, r.rank, r.times_kept, r.times_seen, r.reason)
                    for row, r in zip(rows, chosen, strict=True)
                )
            else:
                writer.writerow(["source", "exported"])
                writer.writerows(rows)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# -- staging folders --------------------------------------------------------------------------------------


def staging_prefix(out: Path) -> str:
    """Name prefix of this host's staging folders for ``out``: ``.NAME.HOST.`` (then ``PID.RAND.partial``)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f".{out.name}.{host}."


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (unknown counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or cannot tell: keep its folder
    return True


def _remove_orphaned_staging(out: Path) -> list[Path]:
    """Delete staging folders for ``out`` left by a killed export of this machine; returns them.

    Only folders named by this module for the same destination, on the same host, whose process is gone
    are removed: a concurrent export (live process) or one on another machine sharing the file system
    is left alone.
    """
    prefix = staging_prefix(out)
    removed = []
    for entry in out.parent.glob(f"{glob.escape(prefix)}*.partial"):
        pid_text = entry.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _make_staging(out: Path) -> Path:
    """A new hidden folder beside ``out`` (normal permissions, unlike ``tempfile.mkdtemp``).

    Its name carries host and process id, so a later export to the same destination can remove the
    folder if this process is killed before it finishes.
    """
    for orphan in _remove_orphaned_staging(out):
        log.info("removed '%s', left by an export that was killed", orphan)
    while True:
        candidate = out.parent / f"{staging_prefix(out)}{os.getpid()}.{secrets.token_hex(4)}.partial"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
