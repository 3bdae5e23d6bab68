"""`ssfilter serve` over HTTP on a loopback port: endpoints, bad inputs, concurrency, torch-free ONNX."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from ssfilter.api import Detector  # noqa: E402
from ssfilter.data.datasets import discover  # noqa: E402
from ssfilter.data.images import PIXEL_LIMIT_ENV  # noqa: E402
from ssfilter.inference.backends import load_backend  # noqa: E402
from ssfilter.inference.calibration import Calibration  # noqa: E402
from ssfilter.inference.outputs import RECORD_FIELDS  # noqa: E402
from ssfilter.inference.predictor import Predictor  # noqa: E402
from ssfilter.inference.server import ServeSettings, create_app  # noqa: E402
from ssfilter.version import VERSION  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, synthetic_mvtec: Path, make_tiny_config) -> Path:
    """A tiny trained, calibrated dinomaly run."""
    cfg = make_tiny_config()
    cfg.train.method = "dinomaly"
    cfg.train.checkpoint_every = cfg.train.iters
    out = tmp_path_factory.mktemp("serve") / "run"
    Detector(cfg).fit(synthetic_mvtec, out, progress=False)
    return out


@pytest.fixture(scope="module")
def images(synthetic_mvtec: Path) -> list[Path]:
    """Test images, good and defective."""
    return [Path(s.path) for s in discover(synthetic_mvtec, "test")]


@pytest.fixture(scope="module")
def url(run: Path, loopback_server):
    """The torch back end served with small limits, for the whole module."""
    settings = ServeSettings(max_body_bytes=200_000, max_images=4, queue_size=16)
    with loopback_server(create_app(load_backend("torch", run, device="cpu"), settings)) as base:
        yield base


def request(
    base: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, method: str = ""
) -> tuple[int, dict]:
    """Status and JSON answer of one HTTP request."""
    req = urllib.request.Request(base + path, data=body, headers=headers or {}, method=method or None)
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one ``files`` part per ``(name, bytes)``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_files(base: str, files: list[tuple[str, bytes]], query: str = "") -> tuple[int, dict]:
    body, headers = multipart(files)
    return request(base, "/predict" + query, body, headers)


def png_bytes(size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_alive(base: str) -> None:
    assert request(base, "/health") == (200, {"status": "ok", "queued": 0})


def test_health_and_info(url: str, run: Path) -> None:
    assert_alive(url)
    status, info = request(url, "/info")
    assert status == 200
    cal = Calibration.load(run)
    assert info["version"] == VERSION and info["backend"] == "torch" and info["source"] == str(run)
    assert info["threshold"] == cal.image_threshold and info["calibration"] == cal.to_dict()
    assert info["crop"] == info["config"]["data"]["crop"] == 64 and info["config"]["device"] == "cpu"
    assert info["limits"]["max_body_bytes"] == 200_000 and info["limits"]["max_images"] == 4


def test_predict_matches_the_predictor(url: str, run: Path, images: list[Path]) -> None:
    picked = images[:2] + images[-2:]
    status, answer = post_files(url, [(p.name, p.read_bytes()) for p in picked])
    assert status == 200
    expected, skipped = Predictor.load(run, "cpu").predict(picked)
    assert not skipped and answer["n_images"] == 4 and answer["backend"] == "torch"
    assert answer["n_ng"] == sum(p.label == "NG" for p in expected)
    for record, pred, path in zip(answer["images"], expected, picked, strict=True):
        assert set(record) >= set(RECORD_FIELDS)
        assert record["path"] == path.name and record["overlay"] is None and record["mask"] is None
        assert record["label"] == pred.label and record["threshold"] == pred.threshold
        assert record["raw_score"] == pytest.approx(pred.raw_score, rel=1e-5)
        assert record["score"] == pytest.approx(pred.score, abs=1e-6)
        assert (record["width"], record["height"]) == (pred.width, pred.height)


def test_raw_body_and_overlay(url: str, images: list[Path]) -> None:
    image = Image.open(images[-1]).convert("RGB").resize((90, 50))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    status, answer = request(
        url, "/predict?overlay=1&name=part.jpg", buffer.getvalue(), {"Content-Type": "image/jpeg"}
    )
    assert status == 200 and answer["n_images"] == 1
    record = answer["images"][0]
    assert record["path"] == "part.jpg" and (record["width"], record["height"]) == (90, 50)
    prefix = "data:image/png;base64,"
    assert record["overlay"].startswith(prefix)
    overlay = Image.open(io.BytesIO(base64.b64decode(record["overlay"][len(prefix) :])))
    assert overlay.format == "PNG" and overlay.size == (90, 50)


def test_bad_inputs_get_4xx_and_the_server_keeps_serving(
    url: str, monkeypatch: pytest.MonkeyPatch, images: list[Path]
) -> None:
    good = png_bytes()
    cases = {
        "not an image": (post_files(url, [("notes.png", b"just some text, not a picture")]), 400),
        "truncated": (post_files(url, [("cut.png", good[: len(good) // 2])]), 400),
        "empty file": (post_files(url, [("empty.png", b"")]), 400),
        "oversize body": (post_files(url, [("big.png", b"\0" * 300_000)]), 413),
        "too many images": (post_files(url, [(f"{i}.png", good) for i in range(5)]), 413),
        "no image": (request(url, "/predict", b"", {"Content-Type": "image/png"}), 400),
        "wrong type": (request(url, "/predict", b"{}", {"Content-Type": "application/json"}), 415),
        "bad form": (request(url, "/predict", b"xx", {"Content-Type": "multipart/form-data"}), 400),
        "one bad among good": (post_files(url, [("ok.png", good), ("bad.png", b"GIF89a...")]), 400),
    }
    for what, ((status, answer), expected) in cases.items():
        assert status == expected, (what, answer)
        assert isinstance(answer["error"], str) and "\n" not in answer["error"] and answer["error"], what
        assert_alive(url)
    assert "bad.png" in cases["one bad among good"][0][1]["error"]
    assert "truncated" in cases["truncated"][0][1]["error"]

    monkeypatch.setenv(PIXEL_LIMIT_ENV, "500")  # 40 x 30 = 1200 pixels: over the limit
    status, answer = post_files(url, [("large.png", good)])
    assert status == 413 and "decompression-bomb" in answer["error"]
    monkeypatch.delenv(PIXEL_LIMIT_ENV)
    assert_alive(url)
    assert post_files(url, [("fine.png", good)])[0] == 200
    assert request(url, "/predict", method="GET")[0] == 405
    assert request(url, "/nowhere")[0] == 404


def test_chunked_oversize_body_is_refused(url: str) -> None:
    import http.client

    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    chunks = (b"\0" * 50_000 for _ in range(6))  # 300 kB, no Content-Length
    conn.request("POST", "/predict", body=chunks, headers={"Content-Type": "image/png"}, encode_chunked=True)
    res = conn.getresponse()
    assert res.status == 413 and "exceeds the limit" in json.loads(res.read())["error"]
    conn.close()
    assert_alive(url)


def test_concurrent_requests_equal_sequential_ones(url: str, images: list[Path]) -> None:
    payloads = [[(p.name, p.read_bytes())] for p in images[:8]]
    sequential = [post_files(url, files) for files in payloads]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda files: post_files(url, files), payloads))
    assert all(status == 200 for status, _ in sequential)
    assert concurrent == sequential
    assert_alive(url)


def test_a_full_queue_answers_503_and_one_thread_computes(
    run: Path, images: list[Path], loopback_server
) -> None:
    """A full queue answers 503 at once; the admitted requests all finish."""
    backend = load_backend("torch", run, device="cpu")
    threads: set[str] = set()
    original = backend.predict

    def slow(batch, names):  # noqa: ANN001, ANN202
        import threading

        threads.add(threading.current_thread().name)
        time.sleep(0.3)
        return original(batch, names)

    backend.predict = slow  # type: ignore[method-assign]
    with loopback_server(create_app(backend, ServeSettings(queue_size=2))) as base:
        files = [(images[0].name, images[0].read_bytes())]
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post_files(base, files), range(6)))
        statuses = sorted(status for status, _ in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
        assert all("busy" in a["error"] for s, a in answers if s == 503)
        assert len(threads) == 1 and next(iter(threads)).startswith("ssfilter-infer")
        assert_alive(base)


_TORCH_FREE = 'import sys; sys.modules["torch"] = None; '  # any `import torch` now raises ImportError
_CLI = "from ssfilter.cli import main; sys.exit(main(sys.argv[1:]))"


@contextlib.contextmanager
def cli_server(args: list[str], port: int, prelude: str = "import sys; "):
    """``ssfilter serve ARGS --port PORT`` in its own process group; yields (base URL, output lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", prelude + _CLI, "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    base, output = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if request(base, "/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield base, output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and, with --workers, its worker processes
        output.extend(proc.communicate(timeout=60)[0].splitlines())


def test_onnx_backend_serves_without_torch(
    run: Path, images: list[Path], tmp_path: Path, url: str, loopback_port
) -> None:
    pytest.importorskip("onnxruntime")
    model = Detector.load(run, device="cpu").export(tmp_path / "model.onnx")
    with cli_server(["--onnx", str(model)], loopback_port(), _TORCH_FREE) as (base, output):
        status, info = request(base, "/info")
        assert status == 200 and info["backend"] == "onnx" and info["source"] == str(model)
        assert "calibration" not in info["config"] and info["config"]["crop"] == 64
        files = [(p.name, p.read_bytes()) for p in images[:3]]
        status, onnx = post_files(base, files, "?overlay=1")
        assert status == 200
        _, torch_answer = post_files(url, files, "?overlay=1")
        for a, b in zip(onnx["images"], torch_answer["images"], strict=True):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
            assert a["overlay"].startswith("data:image/png;base64,")
        assert post_files(base, [("x.png", b"not an image")])[0] == 400
        assert_alive(base)
    text = "\n".join(output)
    assert "serving onnx model" in text and "Traceback" not in text, text


@pytest.mark.slow
def test_cli_serves_a_run_with_two_worker_processes(
    run: Path, images: list[Path], url: str, loopback_port
) -> None:
    files = [(p.name, p.read_bytes()) for p in images[:2]]
    _, expected = post_files(url, files)
    with cli_server(["--run", str(run), "--workers", "2", "--device", "cpu"], loopback_port()) as (base, out):
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post_files(base, files), range(4)))
        assert all(status == 200 for status, _ in answers)
        for _, answer in answers:
            assert [r["label"] for r in answer["images"]] == [r["label"] for r in expected["images"]]
            for a, b in zip(answer["images"], expected["images"], strict=True):
                assert a["raw_score"] == pytest.approx(b["raw_score"], rel=1e-5)
    text = "\n".join(out)
    assert "serving torch model" in text and text.count("Application startup complete") == 2, text
