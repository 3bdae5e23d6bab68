"""The runtimes that execute an exported graph without torch, chosen by the file's suffix.

A runtime loads an exported file (``.onnx`` for ONNX Runtime, ``.xml`` for an OpenVINO IR) and offers what
:class:`~ssfilter.inference.onnx_predictor.ExportedPredictor` needs: the file's ssfilter metadata (raw
strings), its fixed batch size (``None`` when dynamic) and ``run(images) -> (maps [N, 1, S, S], scores
[N])``. Adding a runtime is one class plus one :func:`register_runtime` line.

OpenVINO's CPU plug-in may execute in a lower precision than the graph's float32 (bf16 or f16 where the CPU
has it) unless ``INFERENCE_PRECISION_HINT`` says otherwise; :class:`OpenVinoRuntime` compiles with the
precision recorded in the file (what its export's parity gate checked, ``f32``) and verifies the
compiled model reports it.

Nothing in this module imports torch.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ssfilter.errors import SSFilterError

__all__ = [
    "METADATA_SECTION",
    "ONNX_RUNTIME",
    "OPENVINO",
    "OPENVINO_PRECISION",
    "MissingExtraError",
    "OnnxRuntimeSession",
    "OpenVinoRuntime",
    "Runtime",
    "open_runtime",
    "read_metadata",
    "register_runtime",
    "require_onnxruntime",
    "require_openvino",
    "runtime_suffixes",
]

#: Display names of the runtimes (also stored as ``runtime`` in the parity figures).
ONNX_RUNTIME = "ONNX Runtime"
OPENVINO = "OpenVINO"
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` that exports are checked and run with.
OPENVINO_PRECISION = "f32"
#: The OpenVINO IR ``rt_info`` section holding the ssfilter metadata.
METADATA_SECTION = "ssfilter"


class MissingExtraError(SSFilterError, ImportError):
    """An optional dependency is not installed; the message names the ``ssfilter[extra]`` to install."""


class Runtime(Protocol):
    """An exported graph loaded by one runtime."""

    #: Display name, e.g. ``"ONNX Runtime"``.
    name: str
    #: The file's ssfilter metadata, as stored (strings).
    metadata: dict[str, str]
    #: The graph's fixed batch size, or ``None`` when its batch axis is dynamic.
    fixed_batch: int | None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(maps [N, 1, S, S], scores [N])`` of float32 inputs ``[N, 3, crop, crop]``."""
        ...


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`MissingExtraError` naming the ``onnx`` extra."""
    try:
        import onnxruntime
    except ImportError as err:
        raise MissingExtraError(
            f"running an ONNX export needs onnxruntime ({err}); "
            "install it with `pip install 'ssfilter[onnx]'`"
        ) from err
    return onnxruntime


def require_openvino() -> Any:
    """The ``openvino`` module, or :class:`MissingExtraError` naming the ``openvino`` extra."""
    try:
        import openvino
    except ImportError as err:
        raise MissingExtraError(
            f"OpenVINO export and inference need the openvino package ({err}); install it with "
            "`pip install 'ssfilter[openvino]'`"
        ) from err
    return openvino


class OnnxRuntimeSession:
    """An ``.onnx`` export in an ONNX Runtime session.

    Args:
        model: The file, or its serialised bytes.
        providers: Execution providers (default: CPU).
        threads: Intra-op threads (default: ONNX Runtime's choice).
    """

    name = ONNX_RUNTIME

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source, options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        batch = inp.shape[0]
        self.fixed_batch: int | None = batch if isinstance(batch, int) else None

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(maps, scores)`` of one batch (see :class:`Runtime`)."""
        maps, scores = self.session.run(["maps", "scores"], {self.input_name: images})
        return maps, scores


class OpenVinoRuntime:
    """An OpenVINO IR export (``.xml`` + ``.bin``) compiled for a device at a pinned precision.

    Args:
        path: The ``.xml`` file (its ``.bin`` beside it).
        device: OpenVINO device (default ``CPU``).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).
        precision: ``INFERENCE_PRECISION_HINT``; default: the precision recorded in the file's metadata
            (what its parity gate checked), else :data:`OPENVINO_PRECISION`.
        model: An ``openvino.Model`` already in memory (the exporter's gate), instead of reading ``path``.

    Raises:
        MissingExtraError: when openvino is not installed.
        SSFilterError: when the compiled model does not report the requested precision.
    """

    name = OPENVINO

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str = "CPU",
        threads: int | None = None,
        precision: str | None = None,
        model: Any = None,
    ) -> None:
        ov = require_openvino()
        core = ov.Core()
        if model is None:
            if path is None:
                raise ValueError("OpenVinoRuntime needs a path or a model")
            model = core.read_model(str(path))
        self.metadata = _rt_metadata(model)
        recorded = json.loads(self.metadata.get("openvino", "{}")).get("inference_precision")
        #: The ``INFERENCE_PRECISION_HINT`` the model is compiled with.
        self.precision: str = precision or recorded or OPENVINO_PRECISION
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, device, config)
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        got_name = got.to_string() if hasattr(got, "to_string") else str(got)
        if got_name != self.precision:
            raise SSFilterError(
                f"OpenVINO compiled the model at {got_name}, not the requested {self.precision}; "
                "its outputs would not be the ones the export's parity check measured"
            )
        self.device = device
        shape = model.inputs[0].get_partial_shape()
        self.fixed_batch: int | None = shape[0].get_length() if shape[0].is_static else None
        self._maps = self.compiled.output("maps")
        self._scores = self.compiled.output("scores")
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(maps, scores)`` of one batch (see :class:`Runtime`).

        One infer request, used synchronously and by one thread at a time (a lock: a server may call from
        several); the outputs are copied, as the request reuses its buffers.
        """
        x = np.ascontiguousarray(images, dtype=np.float32)
        with self._lock:
            out = self._request.infer({0: x})
            return np.array(out[self._maps], np.float32), np.array(out[self._scores], np.float32)


def _rt_metadata(model: Any) -> dict[str, str]:
    """The ssfilter section of an OpenVINO model's ``rt_info`` as strings (empty when absent)."""
    if not model.has_rt_info([METADATA_SECTION]):
        return {}
    section = model.get_rt_info()[METADATA_SECTION]
    return {str(key): model.get_rt_info([METADATA_SECTION, key]).astype(str) for key in section}


def _onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ``.onnx`` file."""
    return OnnxRuntimeSession(path).metadata


def _openvino_metadata(path: Path) -> dict[str, str]:
    """The ssfilter ``rt_info`` of an OpenVINO IR, read without compiling it."""
    return _rt_metadata(require_openvino().Core().read_model(str(path)))


#: File suffix -> (how to open it, how to read its metadata).
_RUNTIMES: dict[str, tuple[Callable[..., Runtime], Callable[[Path], dict[str, str]]]] = {}


def register_runtime(
    suffix: str, opener: Callable[..., Runtime], metadata: Callable[[Path], dict[str, str]]
) -> None:
    """Open files ending in ``suffix`` (e.g. ``".onnx"``) with ``opener(path, threads=...)``.

    Args:
        suffix: The file suffix, with its dot.
        opener: Builds the :class:`Runtime` of a file.
        metadata: Reads a file's raw ssfilter metadata (cheaper than opening it).
    """
    _RUNTIMES[suffix.lower()] = (opener, metadata)


def runtime_suffixes() -> list[str]:
    """The file suffixes a runtime is registered for."""
    return sorted(_RUNTIMES)


def open_runtime(path: str | os.PathLike[str], *, threads: int | None = None) -> Runtime:
    """Load an exported file with the runtime registered for its suffix.

    Args:
        path: An ``.onnx`` file or an OpenVINO ``.xml`` file.
        threads: Inference threads (default: the runtime's choice).

    Raises:
        ValueError: for a suffix no runtime is registered for.
        FileNotFoundError: when the file does not exist.
    """
    file = _existing(path)
    return _RUNTIMES[file.suffix.lower()][0](file, threads=threads)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw ssfilter metadata of an exported file, by the reader registered for its suffix.

    Raises:
        ValueError: for a suffix no runtime is registered for.
        FileNotFoundError: when the file does not exist.
    """
    file = _existing(path)
    return _RUNTIMES[file.suffix.lower()][1](file)


def _existing(path: str | os.PathLike[str]) -> Path:
    """``path`` when a runtime is registered for its suffix and it exists; else the error saying why."""
    file = Path(path)
    if file.suffix.lower() not in _RUNTIMES:
        raise ValueError(
            f"no runtime for {file.name!r}: exported files end in {', '.join(runtime_suffixes())}"
        )
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist")
    return file


register_runtime(".onnx", OnnxRuntimeSession, _onnx_metadata)
register_runtime(".xml", OpenVinoRuntime, _openvino_metadata)
