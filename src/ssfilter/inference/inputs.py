"""What the user asked to predict, as a list of image files: files, folders and glob patterns expanded.

Torch-free: only the standard library and :mod:`ssfilter.data.images`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ssfilter.data.images import IMAGE_EXTENSIONS, Skipped, scan_images

__all__ = ["collect_inputs"]

_GLOB_CHARS = re.compile(r"[*?\[]")


class _UniqueFiles:
    """Files in first-seen order, each real file once (symlinks and ``..`` spellings collapse)."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self._seen: set[str] = set()

    def add(self, path: Path) -> None:
        """Append ``path`` unless the same file was added before."""
        # os.path.realpath, not Path.resolve: resolve raises on a symlink loop (Python 3.11); the
        # looping link is then skipped by the reader with a reason instead of crashing here.
        key = os.path.realpath(path)
        if key not in self._seen:
            self._seen.add(key)
            self.files.append(path)

    def add_folder(self, folder: Path) -> None:
        """Append the images under ``folder`` (recursively, sorted)."""
        for found in scan_images(folder):
            self.add(found)


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Expand files, folders (searched recursively) and glob patterns into image files.

    Explicit files are kept whatever their extension (reading decides); folders and glob matches
    contribute files with an image extension only. Duplicates are dropped (first occurrence wins).

    Args:
        inputs: Paths, folders or glob patterns (``**`` recurses).

    Returns:
        ``(files, missing)``: files in input order, and inputs that matched nothing.
    """
    found = _UniqueFiles()
    missing: list[Skipped] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.add_folder(path)
        elif path.is_file():
            found.add(path)
        elif _GLOB_CHARS.search(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            for match in map(Path, matches):
                if match.is_dir():
                    found.add_folder(match)
                elif match.is_file() and match.suffix.lower() in IMAGE_EXTENSIONS:
                    found.add(match)
            if not matches:
                missing.append(Skipped(str(item), "no file matches this pattern"))
        else:
            missing.append(Skipped(str(item), "file not found"))
    return found.files, missing
