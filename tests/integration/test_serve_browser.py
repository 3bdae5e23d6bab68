"""In real headless Chromium: the page of ``ssfilter serve`` and every HTML report load cleanly.

The browser is Debian's ``chromium`` driven by Playwright (``chromium_browser`` / ``browser_page`` in
conftest); these tests skip with the reason when either is missing. Pages must load every image and log
no console error, page error or failed request.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from ssfilter.api import Detector  # noqa: E402
from ssfilter.cli import main  # noqa: E402
from ssfilter.config import save_config  # noqa: E402
from ssfilter.data.datasets import discover  # noqa: E402
from ssfilter.inference.backends import load_backend  # noqa: E402
from ssfilter.inference.predictor import Predictor  # noqa: E402
from ssfilter.inference.server import create_app  # noqa: E402
from ssfilter.pipelines.demo import DemoSettings, run_demo  # noqa: E402

#: Images of a page that did not load (not complete, or no pixels).
_BROKEN_IMAGES = """() => Array.from(document.images)
    .filter((img) => !img.complete || img.naturalWidth === 0)
    .map((img) => img.getAttribute("src"))"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config) -> Path:
    """A tiny trained, calibrated dinomaly run."""
    cfg = make_tiny_config()
    cfg.train.method = "dinomaly"
    cfg.train.checkpoint_every = cfg.train.iters
    out = tmp_path_factory.mktemp("browser") / "run"
    Detector(cfg).fit(synthetic_mvtec, out, progress=False)
    return out


@pytest.fixture(scope="module")
def threshold(run: Path, synthetic_mvtec: Path) -> float:
    """A raw threshold at the test images' median score, so the page shows both OK and NG."""
    scores, _ = Predictor.load(run, "cpu").predict_raw([s.path for s in discover(synthetic_mvtec, "test")])
    return float(np.median(scores))


@pytest.fixture(scope="module")
def served(run: Path, threshold: float, loopback_server):
    """The page's server on a loopback port."""
    backend = load_backend("torch", run, device="cpu", threshold=threshold)
    with loopback_server(create_app(backend)) as base:
        yield base


def test_page_inspects_uploaded_images(
    browser_page, served: str, run: Path, threshold: float, synthetic_mvtec: Path
) -> None:
    page, problems = browser_page
    files = [s.path for s in discover(synthetic_mvtec, "test")]
    page.goto(served + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('backend torch')")
    with page.expect_response(lambda r: "/predict" in r.url) as response:
        page.set_input_files("#pick", files)
    answer = response.value.json()
    page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    cards = page.locator("#results .card")
    assert cards.count() == len(files)
    shown = [cards.nth(i).locator(".label").inner_text() for i in range(len(files))]
    names = [cards.nth(i).locator(".name").inner_text() for i in range(len(files))]
    expected, _ = Predictor.load(run, "cpu", threshold=threshold).predict(files)
    assert names == [Path(f).name for f in files]
    assert shown == [p.label for p in expected] and "OK" in shown and "NG" in shown
    n_ng = shown.count("NG")
    assert page.locator("#status").inner_text() == f"{len(files)} image(s): {n_ng} NG, {len(files) - n_ng} OK"
    page.wait_for_function("Array.from(document.images).every((img) => img.complete)")
    widths = page.eval_on_selector_all("#results img.overlay", "imgs => imgs.map((i) => i.naturalWidth)")
    assert widths == [p.width for p in expected] and all(w > 0 for w in widths)
    assert page.evaluate(_BROKEN_IMAGES) == []
    assert shown == [r["label"] for r in answer["images"]]
    for i, record in enumerate(answer["images"]):  # one table row per defect region, when reported
        rows = cards.nth(i).locator(".regions tbody tr").count()
        assert rows == len(record.get("regions") or [])
    assert problems == []


def test_page_shows_a_refusal(browser_page, served: str, tmp_path: Path) -> None:
    page, problems = browser_page
    bad = tmp_path / "not_an_image.png"
    bad.write_text("plain text, not a picture", encoding="utf-8")
    page.goto(served + "/")
    page.set_input_files("#pick", [str(bad)])
    page.wait_for_selector("#status[data-state=error]", timeout=60_000)
    assert page.locator("#status").inner_text().startswith("Refused: cannot read image 'not_an_image.png'")
    # the only complaints are the refused request itself (HTTP 400 and the console line about it)
    assert problems and all("400" in p for p in problems), problems


@pytest.fixture(scope="module")
def reports(
    tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config
) -> dict[str, Path]:
    """The HTML report of each command that writes one: evaluate --report, filter, benchmark, demo."""
    root = tmp_path_factory.mktemp("reports")
    data = root / "data"
    shutil.copytree(synthetic_mvtec, data)
    cfg = make_tiny_config()
    cfg.train.iters = 4
    cfg.dataset_filter.epochs = 3
    cfg.dataset_filter.min_keep = 1
    save_config(cfg, root / "cfg.yaml")
    run = root / "run"
    config = ["--config", str(root / "cfg.yaml")]
    assert main(["-q", "train", "--data", str(data), *config, "--out", str(run), "--noise", "0.25"]) == 0
    out = {"evaluate": root / "eval_report", "filter": root / "filtered", "benchmark": root / "bench"}
    assert (
        main(
            ["-q", "evaluate", "--run", str(run), "--out", str(root / "m.json")]
            + ["--report", str(out["evaluate"])]
        )
        == 0
    )
    assert main(["-q", "filter", "--run", str(run), "--out", str(out["filter"]), "--device", "cpu"]) == 0
    bench = [
        "-q",
        "benchmark",
        "--data",
        str(data),
        "--alphas",
        "0,0.25",
        "--methods",
        "dinomaly,patchcore+filter",
    ]
    assert main([*bench, *config, "--out", str(out["benchmark"])]) == 0
    settings = DemoSettings(
        size=64,
        n_train_good=8,
        n_train_defect=2,
        n_test_good=2,
        n_test_defect=3,
        iters=3,
        cold_start_iters=1,
        filter_epochs=3,
        filter_min_keep=1,
    )
    run_demo(root / "demo", progress=False, settings=settings)
    out["demo"] = root / "demo"
    return {name: folder / "report.html" for name, folder in out.items()}


@pytest.mark.parametrize("name", ["evaluate", "filter", "benchmark", "demo"])
def test_report_loads_in_chromium(browser_page, reports: dict[str, Path], name: str) -> None:
    page, problems = browser_page
    page.goto(reports[name].as_uri(), wait_until="load")
    assert page.evaluate(_BROKEN_IMAGES) == []
    n_images = page.evaluate("document.images.length")
    assert n_images == reports[name].read_text(encoding="utf-8").count("<img ")
    if name in ("evaluate", "demo"):  # heat-map tiles; filter pages show thumbnails of removed images only
        assert n_images > 0
    assert problems == []


def test_page_tables_the_defect_regions(
    browser_page, run: Path, synthetic_mvtec: Path, loopback_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The region table shows each region of a record (records given fixed regions here)."""
    from ssfilter.inference import server

    regions = [
        {
            "x0": 3,
            "y0": 4,
            "x1": 20,
            "y1": 14,
            "area": 120,
            "area_percent": 2.93,
            "peak_score": 0.91,
            "mean_score": 0.66,
        },
        {
            "x0": 40,
            "y0": 41,
            "x1": 44,
            "y1": 47,
            "area": 18,
            "area_percent": 0.44,
            "peak_score": 0.58,
            "mean_score": 0.53,
        },
    ]
    plain = server.prediction_record
    monkeypatch.setattr(server, "prediction_record", lambda p, o=None: {**plain(p, o), "regions": regions})
    page, problems = browser_page
    with loopback_server(create_app(load_backend("torch", run, device="cpu"))) as base:
        page.goto(base + "/")
        page.set_input_files("#pick", [s.path for s in discover(synthetic_mvtec, "test")][:1])
        page.wait_for_selector("#status[data-state=done]", timeout=60_000)
    rows = page.eval_on_selector_all(
        ".card .regions tbody tr", "rows => rows.map((r) => Array.from(r.cells, (c) => c.textContent))"
    )
    assert rows == [
        ["1", "(3, 4)-(20, 14)", "120", "2.93", "0.910", "0.660"],
        ["2", "(40, 41)-(44, 47)", "18", "0.44", "0.580", "0.530"],
    ]
    assert problems == []
