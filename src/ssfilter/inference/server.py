"""``ssfilter serve``: a trained model behind HTTP (Starlette on uvicorn), with a page at ``/``.

Endpoints of the app that :func:`create_app` builds around one loaded
:class:`~ssfilter.inference.backends.Backend` (no global state: two apps may serve two models):

* ``POST /predict``: one or more images, as ``multipart/form-data`` files (any field name) or as the raw
  body (``Content-Type: image/*`` or ``application/octet-stream``; ``?name=`` names it). Answers
  ``{"backend", "threshold", "n_images", "n_ng", "images": [record, ...]}`` with one record per image,
  in upload order, as in ``predictions.json`` (:func:`prediction_record`); ``?overlay=1`` adds the
  heat-map overlay as a PNG data URI.
* ``GET /health``: ``{"status": "ok", "queued": n}``; ``GET /info``: version, back end, calibration,
  geometry, config and the server's limits.
* ``GET /``: a page to drop or pick images and see the label, score, overlay and defect regions; its
  files ship in the package (``inference/static``) and load nothing from another host.

Inference runs in ONE worker thread behind a bounded queue (:class:`InferenceQueue`): the model is
loaded once, concurrent clients wait their turn instead of multiplying memory, the event loop never
runs a model or a decoder, and a full queue answers 503 at once. Images are decoded in memory by
:func:`ssfilter.data.images.decode_image` (the same rules and pixel limit as ``predict``); nothing is
written to disk. Bad input gets a 4xx and a one-line JSON ``{"error": reason}``: 400 (not an image,
truncated, empty, malformed form), 413 (body over ``max_body_bytes``, more than ``max_images`` images,
or an image over the pixel limit), 415 (another content type), 503 (queue full); a failure of the
model itself answers 500 with its reason and is logged.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, TypeVar

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ssfilter.data.images import ImageReadError, decode_image, pixel_limit
from ssfilter.inference.backends import Backend, load_backend
from ssfilter.inference.prediction import Prediction
from ssfilter.inference.visualize import overlay_image

__all__ = [
    "SERVE_ENV",
    "InferenceQueue",
    "RequestError",
    "ServeSettings",
    "app_from_environment",
    "create_app",
    "prediction_record",
    "serve",
]

logger = logging.getLogger("ssfilter.serve")

#: Environment variable through which ``serve(workers > 1)`` hands the model and settings to each worker.
SERVE_ENV = "SSFILTER_SERVE"
#: The page's files (``inference/static``), served at ``/`` and ``/static/<name>``.
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: The page may load only its own files and images it was given (data:/blob: URIs): nothing external.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_RAW_TYPES = ("application/octet-stream",)
_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
T = TypeVar("T")


@dataclass
class ServeSettings:
    """Limits of a server.

    Attributes:
        max_body_bytes: Largest request body accepted (413 above it). 64 MiB holds a few large camera
            images; the pixel limit (``ssfilter --max-image-pixels``) bounds what one decodes to.
        max_images: Most images in one request (413 above it).
        queue_size: Most requests admitted at once, the one being computed included; more get 503.
            Bounds memory at about ``queue_size x max_body_bytes`` of undecoded uploads plus one
            request's decoded images and maps.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_images: int = 16
    queue_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "queue_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"serve setting {name} must be at least 1, got {getattr(self, name)}")


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = " ".join(reason.split())  # one line


class InferenceQueue:
    """One worker thread for all model work, with a bound on the requests admitted at once.

    Args:
        size: Most jobs admitted at once (running plus waiting); :meth:`run` refuses more with 503.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pending = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssfilter-infer")

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished."""
        return self._pending

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the worker thread without blocking the event loop.

        Raises:
            RequestError: 503 when ``size`` jobs are already admitted.
        """
        with self._lock:
            if self._pending >= self.size:
                raise RequestError(503, f"server busy: {self.size} requests already queued; retry later")
            self._pending += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(job))
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Stop the worker thread once the admitted jobs are done."""
        self._executor.shutdown(wait=True)


def prediction_record(pred: Prediction, overlay: str | None = None) -> dict[str, Any]:
    """The JSON record of one prediction: a ``predictions.json`` ``images`` entry, regions included.

    ``overlay`` is a PNG data URI (or ``None``) instead of a file name, and ``mask`` is ``None`` (no file is
    written).

    Args:
        pred: The prediction.
        overlay: The overlay as a ``data:image/png;base64,...`` URI, when asked for.
    """
    return pred.to_record(overlay=overlay)


def overlay_data_uri(image: Image.Image, pred: Prediction, backend: Backend) -> str:
    """The heat-map overlay of one prediction at the image's original size, as a PNG data URI.

    Args:
        image: The decoded original image.
        pred: Its prediction.
        backend: The back end (its resize and crop map the heat-map back onto the image).
    """
    picture = overlay_image(image, pred.original_map(backend.resize, backend.crop), regions=pred.regions)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def predict_uploads(
    backend: Backend, uploads: Sequence[tuple[str, bytes]], overlay: bool
) -> list[dict[str, Any]]:
    """Decode, predict and describe uploaded images (runs on the worker thread).

    Args:
        backend: The loaded model.
        uploads: ``(name, encoded bytes)`` per image.
        overlay: Add the overlay data URI to each record.

    Raises:
        RequestError: 400 for an undecodable image, 413 for one over the pixel limit.
    """
    images = []
    for name, data in uploads:
        try:
            images.append(decode_image(data, name))
        except ImageReadError as err:
            status = 413 if "decompression-bomb" in err.reason else 400
            raise RequestError(status, f"cannot read image '{name}': {err.reason}") from None
    names = [name for name, _ in uploads]
    preds = backend.predict(images, names)
    return [
        prediction_record(p, overlay_data_uri(im, p, backend) if overlay else None)
        for p, im in zip(preds, images, strict=True)
    ]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; a chunked body is
    counted as it arrives.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _replay(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def parse_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """The uploaded images of a request as ``(name, bytes)``, kept in memory.

    Raises:
        RequestError: 413 (too large, too many images), 415 (content type), 400 (no image, bad form).
    """
    body = await read_body(request, settings.max_body_bytes)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        parser = MultiPartParser(
            Headers(raw=request.headers.raw),
            _replay(body),
            max_files=settings.max_images,
            max_fields=64,
            max_part_size=64 * 1024,
        )
        parser.spool_max_size = settings.max_body_bytes + 1  # uploads stay in memory, never on disk
        try:
            form = await parser.parse()
        except MultiPartException as err:
            status = 413 if "Too many files" in err.message else 400
            raise RequestError(status, f"malformed multipart form: {err.message}") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            uploads = [(f.filename or f"image_{i}", await f.read()) for i, f in enumerate(files, 1)]
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype in _RAW_TYPES or not ctype:
        uploads = [(request.query_params.get("name", "upload"), body)] if body else []
    else:
        raise RequestError(
            415, f"unsupported content type {ctype!r}: send multipart/form-data files or the image bytes"
        )
    if not uploads:
        raise RequestError(400, "no image in the request")
    if len(uploads) > settings.max_images:
        raise RequestError(413, f"{len(uploads)} images in one request; the limit is {settings.max_images}")
    return uploads


def _static_files() -> dict[str, bytes]:
    """The page's files, read once from the package."""
    folder = resources.files("ssfilter.inference").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in _STATIC}


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


async def _refused(request: Request, exc: Exception) -> Response:
    """A :class:`RequestError` as its status and a one-line JSON reason."""
    assert isinstance(exc, RequestError)
    logger.warning("refused %s %s: %d %s", request.method, request.url.path, exc.status, exc.reason)
    return JSONResponse({"error": exc.reason}, status_code=exc.status, headers=_HEADERS)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=_HEADERS)


async def _failed(request: Request, exc: Exception) -> Response:
    """Anything else: 500 with a one-line reason; the traceback goes to the log."""
    logger.error("failed %s %s", request.method, request.url.path, exc_info=exc)
    reason = " ".join(f"internal error: {type(exc).__name__}: {exc}".split())
    return JSONResponse({"error": reason}, status_code=500, headers=_HEADERS)


def create_app(backend: Backend, settings: ServeSettings | None = None) -> Starlette:
    """The ASGI app serving one loaded model.

    Args:
        backend: The model (see :func:`ssfilter.inference.backends.load_backend`).
        settings: Request limits and queue size (defaults: :class:`ServeSettings`).
    """
    settings = settings or ServeSettings()
    queue = InferenceQueue(settings.queue_size)
    static = _static_files()
    headers = _HEADERS

    async def predict(request: Request) -> Response:
        uploads = await parse_uploads(request, settings)
        overlay = _flag(request, "overlay")
        records = await queue.run(lambda: predict_uploads(backend, uploads, overlay))
        logger.info("predicted %d image(s): %s", len(records), ", ".join(r["label"] for r in records))
        return JSONResponse(
            {
                "backend": backend.name,
                "threshold": backend.calibration.image_threshold,
                "n_images": len(records),
                "n_ng": sum(r["label"] == "NG" for r in records),
                "images": records,
            },
            headers=headers,
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": queue.pending}, headers=headers)

    async def info(request: Request) -> Response:
        limits = {**asdict(settings), "max_image_pixels": pixel_limit()}
        return JSONResponse({**backend.info(), "limits": limits}, headers=headers)

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in static:
            raise HTTPException(404)
        extra = {"Content-Security-Policy": _CSP} if name == "index.html" else {}
        return Response(static[name], media_type=_STATIC[name], headers={**headers, **extra})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncGenerator[None, None]:
        logger.info("serving %s model %s", backend.name, backend.source)
        yield
        queue.close()

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/info", info, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
    ]
    handlers = {RequestError: _refused, HTTPException: _http_error, Exception: _failed}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


def app_from_environment() -> Starlette:
    """The app described by :data:`SERVE_ENV` (JSON): how each ``uvicorn`` worker process loads it."""
    spec = json.loads(os.environ[SERVE_ENV])
    backend = load_backend(
        spec["backend"], spec["source"], device=spec["device"], threshold=spec["threshold"]
    )
    return create_app(backend, ServeSettings(**spec["settings"]))


def serve(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    settings: ServeSettings | None = None,
    device: str = "auto",
    threshold: float | None = None,
) -> None:
    """Run the server until interrupted.

    With ``workers > 1``, uvicorn starts that many processes, each loading its own copy of the model
    (memory grows with ``workers``); ``backend`` then only names what they load.

    Args:
        backend: The loaded model.
        host: Address to bind (default loopback only).
        port: TCP port.
        workers: Server processes.
        settings: Request limits.
        device: Device the worker processes load the model on.
        threshold: Threshold override the worker processes apply.
    """
    import uvicorn

    settings = settings or ServeSettings()
    if workers <= 1:
        uvicorn.run(create_app(backend, settings), host=host, port=port, log_level="info")
        return
    os.environ[SERVE_ENV] = json.dumps(
        {
            "backend": backend.name,
            "source": backend.source,
            "device": device,
            "threshold": threshold,
            "settings": asdict(settings),
        }
    )
    uvicorn.run(
        f"{__name__}:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )
