"""Pieces of ``ssfilter serve`` without a model: in-memory decoding, the queue, records, the registry."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")

from ssfilter.cli.parser import build_parser  # noqa: E402
from ssfilter.data.images import PIXEL_LIMIT_ENV, ImageReadError, decode_image, read_image  # noqa: E402
from ssfilter.inference import backends  # noqa: E402
from ssfilter.inference.backends import BACKENDS, BackendSpec, load_backend, register_backend  # noqa: E402
from ssfilter.inference.outputs import RECORD_FIELDS  # noqa: E402
from ssfilter.inference.prediction import Prediction  # noqa: E402
from ssfilter.inference.server import (  # noqa: E402
    InferenceQueue,
    RequestError,
    ServeSettings,
    prediction_record,
)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_decode_image_equals_read_image(bad_images_dir) -> None:
    for path in sorted(bad_images_dir.iterdir()):
        if not path.is_file():
            continue
        try:
            expected = read_image(path)
        except ImageReadError as err:
            with pytest.raises(ImageReadError) as got:
                decode_image(path.read_bytes(), path.name)
            assert got.value.reason == err.reason and got.value.path == path.name
            continue
        got = decode_image(path.read_bytes(), path.name)
        assert got.mode == "RGB" and got.size == expected.size, path.name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_decode_image_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    png = _encode(Image.new("RGB", (40, 30), (9, 80, 200)), "PNG")
    with pytest.raises(ImageReadError, match="empty"):
        decode_image(b"", "a.png")
    with pytest.raises(ImageReadError, match="not a recognised image"):
        decode_image(b"hello", "a.png")
    with pytest.raises(ImageReadError, match="truncated"):
        decode_image(png[: len(png) // 2], "a.png")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "1000")
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        decode_image(png, "a.png")
    monkeypatch.setenv(PIXEL_LIMIT_ENV, "1200")
    assert decode_image(png).size == (40, 30)


def test_queue_runs_jobs_on_one_thread_and_refuses_when_full() -> None:
    queue = InferenceQueue(2)
    release = threading.Event()
    names: list[str] = []

    def job(i: int) -> int:
        names.append(threading.current_thread().name)
        release.wait(10)
        return i

    async def scenario() -> list[object]:
        tasks = [asyncio.create_task(queue.run(lambda i=i: job(i))) for i in range(2)]
        await asyncio.sleep(0.05)
        assert queue.pending == 2
        with pytest.raises(RequestError) as busy:
            await queue.run(lambda: job(9))
        assert busy.value.status == 503
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [0, 1]
    assert queue.pending == 0 and len(set(names)) == 1
    queue.close()


def test_queue_keeps_the_event_loop_free() -> None:
    queue = InferenceQueue(1)

    async def scenario() -> float:
        start = time.perf_counter()
        task = asyncio.create_task(queue.run(lambda: time.sleep(0.5)))
        await asyncio.sleep(0.01)  # the loop still runs while the job sleeps on the worker
        ticked = time.perf_counter() - start
        await task
        return ticked

    assert asyncio.run(scenario()) < 0.3
    queue.close()


def test_queue_failure_frees_its_place() -> None:
    queue = InferenceQueue(1)

    def boom() -> None:
        raise RuntimeError("model failed")

    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            await queue.run(boom)
        assert await queue.run(lambda: 5) == 5

    asyncio.run(scenario())
    queue.close()


def test_prediction_record_has_the_predictions_json_keys() -> None:
    pred = Prediction("a.png", 1.5, 0.7, "NG", 1.2, 30, 20, np.zeros((4, 4)), np.zeros((4, 4)))
    record = prediction_record(pred, "data:image/png;base64,xx")
    assert tuple(record)[: len(RECORD_FIELDS)] == RECORD_FIELDS
    assert record["label"] == "NG" and record["overlay"].startswith("data:") and record["mask"] is None
    assert prediction_record(pred)["overlay"] is None


def test_request_error_is_one_line() -> None:
    err = RequestError(400, "cannot read\nimage  'x'")
    assert err.reason == "cannot read image 'x'" and err.status == 400


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        ServeSettings(queue_size=0)
    assert ServeSettings().max_body_bytes == 64 * 1024 * 1024


def test_backend_registry_builds_the_cli_options(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(BACKENDS)[:2] == ["torch", "onnx"]
    with pytest.raises(ValueError, match="already registered"):
        register_backend(BackendSpec("torch", "--other", "X", "dup", lambda s, **kw: None))
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("nope", "x")
    seen = {}

    def fake(source: str, **kw):  # noqa: ANN202
        seen.update(kw, source=source)
        return "loaded"

    monkeypatch.setitem(BACKENDS, "fake", BackendSpec("fake", "--fake", "FILE", "a test backend", fake))
    assert backends.load_backend("fake", "m.bin", threshold=0.3) == "loaded"
    assert seen == {"source": "m.bin", "device": "auto", "threshold": 0.3}
    args = build_parser().parse_args(["serve", "--fake", "m.bin", "--port", "9001"])
    assert args.backend_fake == "m.bin" and args.backend_torch is None and args.port == 9001
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--run", "r", "--onnx", "m.onnx"])  # exactly one model
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve"])


def test_serve_refuses_a_missing_model_before_binding(tmp_path, capsys) -> None:
    from ssfilter.cli import main

    assert main(["serve", "--run", str(tmp_path / "no_run")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["serve", "--onnx", str(tmp_path / "no.onnx")]) == 2
    assert "no.onnx' does not exist" in capsys.readouterr().err
    assert main(["serve", "--onnx", "x.onnx", "--max-body-mb", "0"]) == 2
    assert "--max-body-mb must be positive" in capsys.readouterr().err


def test_a_model_failure_answers_500_and_serving_goes_on(loopback_server) -> None:
    import json
    import urllib.error
    import urllib.request

    from ssfilter.inference.backends import Backend
    from ssfilter.inference.calibration import Calibration
    from ssfilter.inference.server import create_app

    class Failing:
        calibration = Calibration(1.0, 0.0, 2.0, 1.0, 0.0, 2.0, rule="test", source="manual", n_images=1)

        def predict_images(self, images, names):  # noqa: ANN001, ANN202
            raise RuntimeError("out of memory\non the device")

    app = create_app(Backend("failing", "nowhere", Failing(), 64, 64))
    png = _encode(Image.new("RGB", (8, 8)), "PNG")
    with loopback_server(app) as base:
        req = urllib.request.Request(base + "/predict", data=png, headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 500
        body = json.loads(err.value.read())
        assert body == {"error": "internal error: RuntimeError: out of memory on the device"}
        with urllib.request.urlopen(base + "/health", timeout=30) as res:
            assert json.loads(res.read()) == {"status": "ok", "queued": 0}
