from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from ssfilter.evaluation.metrics import METRIC_KEYS, MetricAccumulator
from ssfilter.filtering.filter_outputs import FilterRecord, FilterRecords, summarize, write_filter_outputs
from ssfilter.pipelines.benchmark import results_markdown
from ssfilter.reporting.benchmark_page import write_benchmark_report
from ssfilter.reporting.benchmark_tables import results_tables
from ssfilter.reporting.evaluate_page import (
    EvaluateReport,
    ExampleGroup,
    ExampleImage,
    HeatmapScale,
    write_evaluate_report,
)
from ssfilter.reporting.filter_page import write_filter_report
from ssfilter.reporting.frame import ASSETS_DIR, REPORT_FILE

NASTY = "<script>alert('x')</script> & \"q\".png"
NASTY_FILE = "<script>alert('x') & \"q\".png"  # a file name cannot hold "/"


class _Collector(HTMLParser):
    """Collects every src/href attribute, tag counts, and elements by class."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: dict[str, int] = {}
        self.polylines: dict[str, str] = {}
        self.classes: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key) is not None:
                self.links.append(a[key] or "")
        if tag == "polyline" and a.get("class"):
            self.polylines[a["class"] or ""] = a.get("points") or ""
        if a.get("class"):
            self.classes.append((tag, a["class"] or ""))


def _parse(path: Path) -> _Collector:
    c = _Collector()
    c.feed(path.read_text(encoding="utf-8"))
    c.close()
    return c


def assert_links_exist(report: Path) -> list[str]:
    """Every src/href of the report is relative (or an in-page anchor) and names an existing file."""
    links = _parse(report).links
    for link in links:
        if link.startswith("#"):
            continue
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc, f"absolute link {link!r}"
        assert not link.startswith("/"), f"absolute path {link!r}"
        target = (report.parent / unquote(parsed.path)).resolve()
        assert report.parent.resolve() in target.parents, f"{link!r} leaves the report folder"
        assert target.is_file(), f"{link!r} does not exist"
    return links


def _curves() -> tuple[dict[str, float | None], dict[str, dict[str, list[float]]]]:
    rng = np.random.default_rng(0)
    acc = MetricAccumulator()
    labels = np.array([0, 0, 0, 1, 1, 1])
    maps = rng.random((6, 16, 16)).astype(np.float32)
    masks = np.zeros((6, 16, 16), bool)
    masks[3:, 4:9, 4:9] = True
    maps[masks] += 0.5
    acc.update(maps.reshape(6, -1).max(1) + labels * 0.1 * rng.random(6), labels, maps, masks)
    return acc.compute(), acc.curves()


def _example(path: str, value: float, label: int, peak: float | None = None) -> ExampleImage:
    m = np.full((32, 32), value, np.float32)
    if peak is not None:
        m[0, 0] = peak
    mask = None
    if label:
        mask = np.zeros((32, 32), bool)
        mask[10:20, 10:20] = True
    image = np.full((32, 32, 3), 120, np.uint8)
    return ExampleImage(path, float(m.max()), label, "scratch" if label else "good", image, m, mask)


def _eval_report(metrics: dict[str, float | None] | None = None) -> EvaluateReport:
    base_metrics, curves = _curves()
    examples = [
        _example(f"/data/test/scratch/{NASTY}", 0.2, 1, peak=0.0),
        _example("/data/test/good/000.png", 0.2, 0, peak=1.0),
    ]
    return EvaluateReport(
        metrics=base_metrics if metrics is None else metrics,
        n_test=6,
        curves=curves,
        scores=[0.1, 0.2, 0.3, 0.7, 0.8, 0.9],
        labels=[0, 0, 0, 1, 1, 1],
        groups=[ExampleGroup("Top anomalies", "highest", examples)],
        scale=HeatmapScale(0.0, 1.0, "test maps", threshold=0.4),
        context=[("run", f"/runs/{NASTY}")],
    )


def test_evaluate_report_links_curves_escaping(tmp_path: Path) -> None:
    report = write_evaluate_report(tmp_path / "rep", _eval_report())
    assert report == tmp_path / "rep" / REPORT_FILE
    links = assert_links_exist(report)
    assert len([x for x in links if x.startswith(f"{ASSETS_DIR}/")]) == 2  # one tile per example
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()  # the nasty name is escaped everywhere
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;.png" in text
    parsed = _parse(report)
    assert parsed.tags.get("svg", 0) >= 3  # ROC, PRO, score histogram (+ colour bar)
    roc = parsed.polylines["curve roc"]
    pts = [tuple(map(float, p.split(","))) for p in roc.split()]
    assert len(pts) >= 3
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    assert xs == sorted(xs), "ROC FPR must not decrease"
    assert ys == sorted(ys, reverse=True), "ROC TPR must not decrease (SVG y grows downwards)"
    assert xs[0] < xs[-1] and ys[0] > ys[-1]
    assert "curve pro" in parsed.polylines and parsed.polylines["curve pro"].count(",") > 2
    for key in METRIC_KEYS:
        assert f"<td>{key}</td>" in text


def test_undefined_metrics_are_rendered_as_undefined(tmp_path: Path) -> None:
    metrics: dict[str, float | None] = dict.fromkeys(METRIC_KEYS)
    metrics["I-AUROC"] = 0.875
    rep = _eval_report(metrics)
    rep.curves = {"image_roc": {"fpr": [], "tpr": []}, "pro": {"fpr": [], "pro": []}}
    text = write_evaluate_report(tmp_path, rep).read_text(encoding="utf-8")
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(.*?)</td>", text)
    values = {k: v for k, v in rows if k in METRIC_KEYS}
    assert "87.5%" in values["I-AUROC"]
    for key in METRIC_KEYS[1:]:
        assert "undefined" in values[key] and "%" not in values[key], key
    assert "ROC curve undefined" in text and "PRO curve undefined" in text


def _png_pixels(report: Path) -> list[np.ndarray]:
    srcs = [x for x in _parse(report).links if x.startswith(ASSETS_DIR)]
    return [np.asarray(Image.open(report.parent / s).convert("RGB")) for s in srcs]


def test_heatmaps_share_one_fixed_scale(tmp_path: Path) -> None:
    # Both maps hold the raw value 0.2 almost everywhere; one also has a 0.0 pixel, the other a 1.0 pixel.
    # A per-image min-max would paint 0.2 as hot in the first and cool in the second; one fixed scale
    # gives both the same colour.
    report = write_evaluate_report(tmp_path, _eval_report())
    first, second = _png_pixels(report)
    w = 32 + 4  # the overlay panel starts after the image panel and a 4 px gap
    assert np.array_equal(first[25, w + 25], second[25, w + 25])
    assert not np.array_equal(first[25, w + 25], first[25, 25])  # the overlay is tinted
    # ground-truth outline (magenta) on the anomalous example only
    magenta = np.all(first == (255, 0, 255), axis=-1)
    assert magenta[10, 12] and magenta[:, :32].sum() == 36
    assert not np.all(second == (255, 0, 255), axis=-1).any()


def test_heatmap_scale_is_linear_and_marks_the_threshold(tmp_path: Path) -> None:
    s = HeatmapScale(1.0, 5.0, "x")
    np.testing.assert_allclose(
        s.normalize(np.array([0.0, 1.0, 2.0, 4.0, 5.0, 9.0])), [0, 0, 0.25, 0.75, 1, 1]
    )
    assert not HeatmapScale(1.0, 1.0).normalize(np.ones(3)).any()
    text = write_evaluate_report(tmp_path / "a", _eval_report()).read_text(encoding="utf-8")
    assert (
        'class="threshold"' in text
        and "pixel threshold 0.4" in text
        and "is marked on the colour bar" in text
    )
    rep = _eval_report()
    rep.scale = HeatmapScale(0.0, 1.0, "test maps", threshold=3.0)
    text = write_evaluate_report(tmp_path / "b", rep).read_text(encoding="utf-8")
    assert 'class="threshold"' not in text and "no test pixel would be masked" in text


def _records(tmp_path: Path) -> FilterRecords:
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a.png", NASTY_FILE, "c.png", "d.png", "broken.png"]
    rng = np.random.default_rng(1)
    for name in names[:-1]:
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not a png")
    kept = [8, 1, 7, 0, 2]
    labels = [0, 1, 0, 0, 1]
    recs = [
        FilterRecord(
            str(folder / n),
            10,
            k,
            0.1 * i,
            math.nan if i == 2 else 0.01 * i,
            "normal" if k > 3 else "anomalous",
            lab,
        )
        for i, (n, k, lab) in enumerate(zip(names, kept, labels, strict=True))
    ]
    return FilterRecords(recs, {"epochs": 10, "min_keep": 3, "batch_size": 4, "seed": 0})


def test_filter_report_lists_exactly_the_quarantined_images(tmp_path: Path) -> None:
    records = _records(tmp_path)
    out = tmp_path / "filter"
    write_filter_outputs(records, out)
    report = write_filter_report(out, records)
    links = assert_links_exist(report)
    assert "filter.csv" in links and "filter.json" in links
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    quarantined = [r for r in records if r.decision == "anomalous"]
    tiles = re.findall(r'<figure class="tile thumb quarantined".*?</figure>', text, re.S)
    assert len(tiles) == len(quarantined) == 3
    listed = re.findall(r'<table class="quarantined-list">.*?</table>', text, re.S)[0]
    rows = re.findall(r'<tr><td><span class="name">(.*?)</span>', listed)
    import html

    assert sorted(html.unescape(r) for r in rows) == sorted(r.path for r in quarantined)
    # ordered by how often they were kept: d (0), the nasty one (1), broken (2)
    assert [Path(html.unescape(r)).name for r in rows] == ["d.png", NASTY_FILE, "broken.png"]
    assert sum("unreadable" in t for t in tiles) == 1  # broken.png has no thumbnail
    assert len([x for x in links if x.startswith(ASSETS_DIR)]) == 2
    s = summarize(records)
    assert "2 of 2" in text  # both true anomalies removed
    assert f"{s['n_kept']}</span>" in text
    # scatter: one marker per record with finite A and U (record 2 has U = NaN)
    svg = re.findall(r'<svg[^>]*class="chart filter-scatter".*?</svg>', text, re.S)[0]
    assert svg.count("<circle") + svg.count("<path") == 4
    assert svg.count("<path") == 2  # true anomalies as diamonds


def test_filter_report_with_one_score_shows_its_histogram(tmp_path: Path) -> None:
    records = _records(tmp_path)
    for r in records:
        r.mean_uncertainty = math.nan  # uncertainty switched off
    text = write_filter_report(tmp_path / "f", records).read_text(encoding="utf-8")
    assert "filter-scatter" not in text
    svg = re.findall(r'<svg[^>]*class="histogram filter-scores".*?</svg>', text, re.S)[0]
    counts = [int(c) for c in re.findall(r"<title>(?:kept|quarantined): (\d+)</title>", svg)]
    assert sum(counts) == len(records)


def test_filter_report_without_labels_or_quarantine(tmp_path: Path) -> None:
    records = _records(tmp_path)
    write_filter_report(tmp_path / "f", records)
    assert len(list((tmp_path / "f" / ASSETS_DIR).glob("filter-*.png"))) == 2
    for r in records:
        r.label, r.decision = -1, "normal"
    text = write_filter_report(tmp_path / "f", records).read_text(encoding="utf-8")
    assert not list((tmp_path / "f" / ASSETS_DIR).glob("filter-*.png"))  # stale thumbnails removed
    assert "quarantined no image" in text and "true labels" in text
    assert "anomalies removed" not in text


def test_benchmark_report_tables(tmp_path: Path) -> None:
    rows = [
        {"method": "ssfilter", "alpha": 0.0, "metrics": {"I-AUROC": 0.9, "P-AUPRO": 0.8}, "filter": None},
        {"method": "ssfilter", "alpha": 0.1, "metrics": {"I-AUROC": 0.7, "P-AUPRO": None}, "filter": None},
        {
            "method": "patchcore+filter",
            "alpha": 0.1,
            "metrics": {"I-AUROC": 0.95, "P-AUPRO": 0.85},
            "filter": {
                "noise_rate_before": 0.1,
                "noise_rate_after": 0.0,
                "normal_kept": 0.9,
                "anomalies_removed": 1.0,
            },
        },
    ]
    (tmp_path / "results.md").write_text(results_markdown(rows))
    report = write_benchmark_report(tmp_path, rows, subtitle=f"data: {NASTY}")
    assert assert_links_exist(report) == ["results.md"]
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    tables = results_tables(rows)
    assert [t["title"] for t in tables] == ["I-AUROC / P-AUPRO (%)", "Dataset-level filter (per alpha)"]
    assert tables[0]["rows"][0] == ["ssfilter", "90.0 / 80.0", "70.0 / -", "80.0 / -"]
    assert "<td>90.0 / 80.0</td>" in text
    assert '70.0 / <span class="undefined">undefined</span>' in text
    assert "<td>100.0</td>" in text  # anomalies removed


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "firefox"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium/firefox) installed")
def test_report_loads_in_headless_browser(tmp_path: Path) -> None:
    report = write_evaluate_report(tmp_path, _eval_report())
    browser = _browser()
    assert browser is not None
    if "firefox" in browser:
        cmd = [browser, "--headless", "--screenshot", str(tmp_path / "shot.png"), report.as_uri()]
        subprocess.run(cmd, check=True, timeout=60, capture_output=True)
        assert (tmp_path / "shot.png").stat().st_size > 0
    else:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", report.as_uri()]
        dom = subprocess.run(cmd, check=True, timeout=60, capture_output=True, text=True).stdout
        assert "Evaluation on the test set" in dom and "<svg" in dom
