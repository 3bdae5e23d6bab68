"""The page frame every report shares: HTML skeleton and CSS, escaping, small HTML pieces, image assets.

A report is one ``report.html`` (inline CSS, charts as inline SVG, no JavaScript) plus the PNG images it
shows, written into a ``report_assets/`` folder beside it and referenced by relative links only, so the
folder can be zipped, copied or opened from a file share. Asset names are generated (``eval-0003.png``),
never derived from user file names; every user-provided string (file names, paths, defect types) goes
through :func:`escape` before it reaches the page. Every file is written atomically.

The pages (:mod:`~ssfilter.reporting.evaluate_page`, :mod:`~ssfilter.reporting.filter_page`,
:mod:`~ssfilter.reporting.benchmark_page`) render ``<section>`` elements with these pieces; a report of
several sections (the demo's) is one :func:`write_report` around them.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ssfilter.io import atomic_path, atomic_write_text
from ssfilter.runfolder import REPORT_FILE

__all__ = [
    "ASSETS_DIR",
    "UNDEFINED_HTML",
    "ReportAssets",
    "escape",
    "figure",
    "links_paragraph",
    "num",
    "pct",
    "render_page",
    "short_name",
    "table",
    "write_report",
]

ASSETS_DIR = "report_assets"

#: How a value that cannot be computed is shown in a page.
UNDEFINED_HTML = '<span class="undefined">undefined</span>'

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a202c;
  background:#f7fafc}
header{background:#1a365d;color:#fff;padding:18px 28px}
header h1{margin:0;font-size:1.5em} header p{margin:4px 0 0;opacity:.85}
main{padding:8px 28px 40px;max-width:1250px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:6px 20px 18px;margin:18px 0}
h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px} h3{margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0} th,td{border:1px solid #e2e8f0;padding:4px 10px;text-align:left}
th{background:#edf2f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
.undefined{color:#718096;font-style:italic}
.charts{display:flex;flex-wrap:wrap;gap:18px} .charts figure{margin:0}
figcaption{font-size:.85em;color:#4a5568;max-width:380px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.tile{border:1px solid #e2e8f0;border-radius:6px;padding:6px;background:#fff;font-size:.82em;max-width:340px}
.tile img{display:block;width:320px;height:auto;image-rendering:auto}
.thumb img{width:112px;height:112px;object-fit:contain;display:block;background:#edf2f7}
.thumb{max-width:150px}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
.big{font-size:1.25em;font-weight:600}
.note{color:#4a5568;font-size:.9em}
.warn{background:#fffbeb;border:1px solid #f6ad55;padding:8px 12px;border-radius:6px}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:4px;vertical-align:middle}
nav a{margin-right:16px}
"""


def escape(value: object) -> str:
    """Escape any value for HTML text and quoted attributes (``<``, ``>``, ``&``, both quotes).

    Args:
        value: Anything; its ``str`` is escaped.
    """
    return html.escape(str(value), quote=True)


class ReportAssets:
    """PNG files of one report, in ``report_assets/`` beside ``report.html``, under generated names.

    Args:
        report_dir: Folder of ``report.html``.
        prefix: Name prefix of this section's files (letters, digits, ``-``), e.g. ``"eval"``.
    """

    def __init__(self, report_dir: str | os.PathLike[str], prefix: str) -> None:
        if not prefix.replace("-", "").isalnum():
            raise ValueError(f"asset prefix must be alphanumeric, got {prefix!r}")
        self.folder = Path(report_dir) / ASSETS_DIR
        self.prefix = prefix
        self.count = 0

    def add_png(self, pixels: np.ndarray | Image.Image) -> str:
        """Write an image atomically and return its link relative to ``report.html``.

        Args:
            pixels: ``uint8`` RGB array ``[H, W, 3]`` (or grey ``[H, W]``) or a Pillow image.
        """
        image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
        name = f"{self.prefix}-{self.count:04d}.png"
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / name) as tmp:
            image.save(tmp, format="PNG")
        return f"{ASSETS_DIR}/{name}"

    def remove_stale(self) -> None:
        """Delete this prefix's images left over from an earlier, larger report in the same folder.

        Call after the new ``report.html`` is written; only generated names (``<prefix>-NNNN.png``) with a
        number at or above this report's count are removed.
        """
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f"{self.prefix}-*.png"):
            number = path.stem[len(self.prefix) + 1 :]
            if len(number) == 4 and number.isdigit() and int(number) >= self.count:
                path.unlink(missing_ok=True)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage, or :data:`UNDEFINED_HTML` for ``None`` and NaN.

    Args:
        value: The fraction (``0.875`` is ``87.5%``).
        digits: Decimals shown.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNDEFINED_HTML
    return f"{100 * value:.{digits}f}%"


def num(value: float | None) -> str:
    """A number with four significant digits, or ``n/a`` for ``None`` and non-finite values."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def short_name(path: str, parts: int = 3) -> str:
    """The last ``parts`` components of a path (enough to tell ``test/scratch/001.png`` apart).

    Args:
        path: A file path.
        parts: How many trailing components to keep.
    """
    pieces = Path(path).parts
    return "/".join(pieces[-parts:]) if pieces else path


def table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    """An HTML table; ``header`` is escaped, row cells are HTML already (callers escape user strings).

    Args:
        header: Column titles (plain text).
        rows: Cells of each row (HTML).
        css_class: Optional class of the ``<table>``.
    """
    cls = f' class="{escape(css_class)}"' if css_class else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(content: str, caption: str) -> str:
    """A ``<figure>`` around a chart (HTML) with its caption (HTML)."""
    return f"<figure>{content}<figcaption>{caption}</figcaption></figure>"


def links_paragraph(links: Sequence[tuple[str, str]]) -> str:
    """A paragraph of ``(text, relative href)`` links (both escaped), or ``""`` when there are none."""
    if not links:
        return ""
    return "<p>" + " ".join(f'<a href="{escape(h)}">{escape(t)}</a>' for t, h in links) + "</p>"


def render_page(title: str, sections: Sequence[str], subtitle: str | None = None) -> str:
    """A complete HTML document around already-rendered sections.

    Args:
        title: Page title (escaped).
        sections: HTML of each ``<section>``.
        subtitle: Optional line under the title (escaped).
    """
    sub = f"<p>{escape(subtitle)}</p>" if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>{sub}</header><main>"
        + "\n".join(sections)
        + "</main></body></html>\n"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    sections: Sequence[str],
    subtitle: str | None = None,
    *,
    assets: Iterable[ReportAssets] = (),
) -> Path:
    """Write ``out_dir/report.html`` atomically around rendered sections; returns its path.

    Args:
        out_dir: Report folder (its ``report_assets/`` must already hold the sections' images).
        title: Page title.
        sections: HTML of each section.
        subtitle: Optional line under the title.
        assets: The sections' assets; once the page is written, their stale images of an earlier report
            are removed (:meth:`ReportAssets.remove_stale`).
    """
    path = Path(out_dir) / REPORT_FILE
    atomic_write_text(path, render_page(title, sections, subtitle))
    for section_assets in assets:
        section_assets.remove_stale()
    return path
