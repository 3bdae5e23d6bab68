from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssfilter.reporting.frame import (
    ASSETS_DIR,
    REPORT_FILE,
    UNDEFINED_HTML,
    ReportAssets,
    escape,
    links_paragraph,
    num,
    pct,
    render_page,
    short_name,
    table,
    write_report,
)

NASTY = "<script>alert('x')</script> & \"q\""


def test_escape_leaves_no_markup() -> None:
    text = escape(NASTY)
    assert not set("<>\"'") & set(text)
    assert text == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"
    assert escape(3.5) == "3.5"


@pytest.mark.parametrize("prefix", ["../x", "a b", "a/b", "", "-", "a.b"])
def test_asset_prefix_must_be_plain(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ValueError, match="alphanumeric"):
        ReportAssets(tmp_path, prefix)


def test_assets_are_pngs_under_generated_names(tmp_path: Path) -> None:
    assets = ReportAssets(tmp_path, "ev-1")
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    grey = np.full((4, 5), 77, np.uint8)
    links = [assets.add_png(rgb), assets.add_png(grey), assets.add_png(Image.new("RGB", (2, 2), (1, 2, 3)))]
    assert links == [
        f"{ASSETS_DIR}/ev-1-0000.png",
        f"{ASSETS_DIR}/ev-1-0001.png",
        f"{ASSETS_DIR}/ev-1-0002.png",
    ]
    assert np.array_equal(np.asarray(Image.open(tmp_path / links[0])), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / links[1])), grey)
    assert sorted(p.name for p in (tmp_path / ASSETS_DIR).iterdir()) == [Path(x).name for x in links]


def test_write_report_removes_only_stale_generated_images(tmp_path: Path) -> None:
    folder = tmp_path / ASSETS_DIR
    folder.mkdir()
    for name in ("p-0000.png", "p-0001.png", "p-0007.png", "p-12.png", "p-extra.png", "q-0005.png"):
        (folder / name).write_bytes(b"old")
    assets = ReportAssets(tmp_path, "p")
    assets.add_png(np.zeros((2, 2, 3), np.uint8))
    path = write_report(tmp_path, "T", ["<section>s</section>"], assets=[assets])
    assert path == tmp_path / REPORT_FILE and path.is_file()
    left = sorted(p.name for p in folder.iterdir())
    assert left == ["p-0000.png", "p-12.png", "p-extra.png", "q-0005.png"]
    assert (folder / "p-0000.png").read_bytes() != b"old"  # rewritten by this report


def test_render_page_escapes_title_and_keeps_sections_in_order() -> None:
    page = render_page(NASTY, ["<section>one</section>", "<section>two</section>"], subtitle=NASTY)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert "<script" not in page and page.count(escape(NASTY)) == 3  # <title>, <h1>, subtitle
    assert page.index("one") < page.index("two")
    assert "<p>" not in render_page("t", [])


def test_number_formats() -> None:
    assert pct(0.875) == "87.5%" and pct(1.0, digits=0) == "100%" and pct(0) == "0.0%"
    assert pct(None) == pct(math.nan) == UNDEFINED_HTML
    assert num(1234.5678) == "1235" and num(0.000123456) == "0.0001235"
    assert num(math.inf) == num(math.nan) == num(None) == "n/a"


def test_short_name_table_and_links() -> None:
    assert short_name("/data/test/scratch/001.png") == "test/scratch/001.png"
    assert short_name("/data/test/scratch/001.png", 2) == "scratch/001.png"
    assert short_name("a.png") == "a.png"
    html = table(["<h>", "b"], [["<i>x</i>", "1"]], "c")
    assert html == (
        '<table class="c"><thead><tr><th>&lt;h&gt;</th><th>b</th></tr></thead>'
        "<tbody><tr><td><i>x</i></td><td>1</td></tr></tbody></table>"
    )
    assert links_paragraph([]) == ""
    assert links_paragraph([("a&b", 'x".csv'), ("c", "d.json")]) == (
        '<p><a href="x&quot;.csv">a&amp;b</a> <a href="d.json">c</a></p>'
    )
