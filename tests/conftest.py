"""Shared fixtures: a small synthetic MVTec-layout category and a folder of awkward / broken image files."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssfilter.data.synthetic import make_synthetic_category

# The test models are tiny: one thread is fastest and keeps timings stable on a shared 2-core machine.
torch.set_num_threads(1)

# Names written by ``bad_images_dir`` (tests refer to them directly).
GOOD = "good.png"
EMPTY = "empty.png"
TRUNCATED = "truncated.jpg"
TEXT_AS_JPG = "not_an_image.jpg"
GRAY = "gray.png"
GRAY16 = "gray16.png"
PALETTE = "palette.png"
RGBA = "rgba.png"
CMYK = "cmyk.jpg"
EXIF_ROTATED = "exif_rotated.jpg"
TINY = "tiny.png"
NON_ASCII = "défaut café 01.png"
LOOP = "loop"

#: 16-bit test values; read_image must give 0, 1, 128, 255 (scaled by 255/65535, rounded).
GRAY16_VALUES = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)


@pytest.fixture(scope="session")
def synthetic_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic object category in the MVTec layout (64 px; 8 train, 3 good + 6 defective test).

    Session-scoped and shared: tests must not modify it (copy it with ``shutil.copytree`` first).
    """
    root = tmp_path_factory.mktemp("synthetic") / "widget"
    return make_synthetic_category(
        root, kind="object", n_train_good=8, n_test_good=3, n_test_defect=6, size=64
    )


@pytest.fixture
def bad_images_dir(tmp_path: Path) -> Path:
    """A folder of good, odd and broken image files, generated on the fly.

    Files: ``good.png`` (48x40 RGB), ``empty.png`` (0 bytes), ``truncated.jpg`` (first half of a JPEG),
    ``not_an_image.jpg`` (text), ``gray.png`` (L), ``gray16.png`` (I;16, values ``GRAY16_VALUES``),
    ``palette.png`` (P), ``rgba.png`` (RGBA, alpha 0 on the left half), ``cmyk.jpg`` (CMYK),
    ``exif_rotated.jpg`` (stored 40x20, EXIF orientation 6: displayed 20x40, red on top), ``tiny.png``
    (10x10), ``défaut café 01.png`` (non-ASCII name with spaces) and ``loop`` (a symlink to the folder
    itself, when the platform allows symlinks).
    """
    root = tmp_path / "bad_images"
    root.mkdir()
    rng = np.random.default_rng(0)

    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / GOOD)
    (root / EMPTY).write_bytes(b"")

    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, format="JPEG", quality=90)
    (root / TRUNCATED).write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / TEXT_AS_JPG).write_text("this is a text file, not a JPEG\n", encoding="utf-8")

    Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))).save(root / GRAY)
    Image.fromarray(GRAY16_VALUES).save(root / GRAY16)

    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 200, 30, 40, 10, 220, 90] + [0] * (256 * 3 - 9))
    palette.paste(1, (0, 0, 8, 16))
    palette.paste(2, (8, 0, 16, 16))
    palette.save(root / PALETTE)

    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 120, 230)
    rgba[:, 8:, 3] = 255
    Image.fromarray(rgba).save(root / RGBA)

    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(root / CMYK, quality=95)

    rotated = Image.new("RGB", (40, 20), (255, 0, 0))
    rotated.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated.save(root / EXIF_ROTATED, exif=exif, quality=95)

    Image.new("RGB", (10, 10), (90, 90, 90)).save(root / TINY)
    Image.new("RGB", (33, 35), (5, 200, 5)).save(root / NON_ASCII)

    with contextlib.suppress(OSError, NotImplementedError):  # platforms without symlinks: no loop
        os.symlink(root, root / LOOP, target_is_directory=True)
    return root


#: The read-only shared folder beside the checkout (real data and weights); tests skip without it.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def run_script() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python script in a fresh interpreter with ``src`` importable (e.g. without torch)."""
    src = Path(__file__).resolve().parents[1] / "src"

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-c", script, *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    return run


@pytest.fixture(scope="session")
def make_tiny_config():
    """Factory of fresh tiny configs, for fixtures with a wider scope than ``tiny_config``."""

    def make():
        from ssfilter.config import get_preset

        cfg = get_preset("cpu-fast")
        cfg.preset = "tiny-test"
        cfg.data.resize, cfg.data.crop, cfg.data.batch_size, cfg.data.eval_size = 64, 64, 4, 64
        cfg.model.backbone = "tiny_vit"
        cfg.model.decoder_dim = None
        cfg.model.decoder_heads = None
        cfg.train.iters = 6
        cfg.train.warmup_iters = 2
        cfg.train.hard_mining_ramp = 6
        cfg.train.checkpoint_every = 2
        cfg.train.device = "cpu"
        cfg.batch_filter.cold_start_iters = 3
        cfg.batch_filter.mc_passes = 3
        return cfg

    return make


@pytest.fixture
def tiny_config(make_tiny_config):
    """A config for the tiny random ViT at 64 px: trains a few iterations in about a second."""
    return make_tiny_config()


# -- a server on a loopback port and a real headless browser (tests of `ssfilter serve` and the reports) --

#: Debian's package names first; tests needing a browser skip when none is found.
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
#: Chromium switches for a sandbox-less, GPU-less, offline test machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find_chromium() -> str | None:
    """The system Chromium binary, or ``None``."""
    import shutil

    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 30.0):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


@pytest.fixture(scope="module")
def chromium_browser():
    """Headless system Chromium driven by Playwright (no browser download); skips when unavailable.

    Module-scoped: Playwright's sync API runs an asyncio loop in the main thread while it is open, which
    would make ``asyncio.run`` fail in later test modules; closing it after each module ends that loop.
    """
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium binary on PATH (apt-get install chromium; scripts/setup.sh does it as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (dev extra)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser):
    """A fresh page and the list of problems it reports: console errors, page errors, failed loads."""
    context = chromium_browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed", lambda req: problems.append(f"failed to load {req.url}: {req.failure}"))
    page.on(
        "response",
        lambda res: problems.append(f"HTTP {res.status} for {res.url}") if res.status >= 400 else None,
    )
    try:
        yield page, problems
    finally:
        context.close()


@pytest.fixture(scope="session")
def loopback_server():
    """:func:`serve_in_thread`, as a fixture (test modules do not import conftest)."""
    return serve_in_thread


@pytest.fixture(scope="session")
def loopback_port():
    """:func:`free_port`, as a fixture."""
    return free_port
