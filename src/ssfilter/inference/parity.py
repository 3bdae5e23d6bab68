"""The parity gate of an export: its runtime must reproduce PyTorch before a file is written.

ONNX Runtime (``CPUExecutionProvider``) -- or OpenVINO (CPU, ``INFERENCE_PRECISION_HINT`` pinned to
``f32``) for an OpenVINO export -- runs the exported graph on a few real training images of the run
(or the user's ``check_images``) plus random inputs (:func:`parity_inputs`), and the results are compared
with PyTorch on the same inputs (:func:`check_parity`). The export is refused with
:class:`ExportParityError` when

* the maps normalised by the run's fixed calibration scale differ by more than :data:`MAP_TOLERANCE`
  (1e-4) anywhere,
* the normalised image scores differ by more than :data:`SCORE_TOLERANCE` (1e-4), or
* any OK/NG label differs.

Without a calibration (a model object exported without one) maps are normalised by the range of
PyTorch's maps on the inputs, scores by the larger of that and their own range, and labels are not
compared.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssfilter.config import Config
from ssfilter.data.images import ImageReadError, read_image, scan_images
from ssfilter.data.transforms import build_image_transform
from ssfilter.errors import SSFilterError
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.exported_tiles import TileSettings
from ssfilter.inference.graph import INPUT_NAME, OUTPUT_NAMES, InferenceGraph
from ssfilter.inference.runtimes import ONNX_RUNTIME, OPENVINO, Runtime

__all__ = [
    "MAP_TOLERANCE",
    "MAX_CHECK_IMAGES",
    "N_RANDOM",
    "SCORE_TOLERANCE",
    "ExportParityError",
    "ParityReport",
    "batches",
    "check_parity",
    "compare_outputs",
    "ort_outputs",
    "runtime_outputs",
    "parity_inputs",
    "torch_outputs",
]

log = logging.getLogger(__name__)

#: Largest allowed |ONNX - PyTorch| of the anomaly maps normalised to [0, 1] by the run's calibration.
MAP_TOLERANCE = 1e-4
#: Largest allowed |ONNX - PyTorch| of the normalised image scores (0.5 = the OK/NG threshold).
SCORE_TOLERANCE = 1e-4
#: Real images (from the run's training set or ``check_images``) of the parity check.
MAX_CHECK_IMAGES = 4
#: Random inputs of the parity check, after the real images.
N_RANDOM = 2

#: The export format each runtime checks, for messages.
_FORMAT_OF_RUNTIME = {ONNX_RUNTIME: "ONNX", OPENVINO: "OpenVINO"}

#: ``(maps [N, 1, S, S], scores [N])`` of one runtime.
Outputs = tuple[np.ndarray, np.ndarray]


class ExportParityError(SSFilterError, RuntimeError):
    """The exported graph does not reproduce PyTorch within the tolerances; nothing was written.

    Attributes:
        report: The measured differences.
    """

    def __init__(self, report: ParityReport) -> None:
        fmt = _FORMAT_OF_RUNTIME.get(report.runtime, report.runtime)
        super().__init__(
            f"{fmt} export refused: {report.runtime} does not reproduce PyTorch within the tolerances "
            f"({report.summary()}); no file was written"
        )
        self.report = report


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on the parity inputs.

    Attributes:
        n_images: Outputs compared (real + random inputs; a dynamic-batch graph also runs the first
            input alone).
        n_real: Of those, real images.
        scale: What the maps and scores were normalised by: ``"calibration"`` (the run's fixed scales)
            or ``"reference range"`` (no calibration: the range of PyTorch's maps/scores on the inputs).
        max_map_diff: Max |Δ| of the normalised maps (tolerance :data:`MAP_TOLERANCE`).
        max_score_diff: Max |Δ| of the normalised scores (tolerance :data:`SCORE_TOLERANCE`).
        max_raw_map_diff: Max |Δ| of the raw maps.
        max_raw_score_diff: Max |Δ| of the raw scores.
        label_mismatches: Inputs whose OK/NG label differs (0 without a calibration).
        map_tolerance: The map tolerance applied.
        score_tolerance: The score tolerance applied.
        runtime: The runtime checked (``"ONNX Runtime"`` or ``"OpenVINO"``).
        settings: How it ran, e.g. ``"CPU, INFERENCE_PRECISION_HINT=f32"`` (empty: the runtime's defaults).
    """

    n_images: int
    n_real: int
    scale: str
    max_map_diff: float
    max_score_diff: float
    max_raw_map_diff: float
    max_raw_score_diff: float
    label_mismatches: int
    map_tolerance: float = MAP_TOLERANCE
    score_tolerance: float = SCORE_TOLERANCE
    runtime: str = ONNX_RUNTIME
    settings: str = ""

    @property
    def ok(self) -> bool:
        """Whether every figure is within its tolerance."""
        return (
            self.max_map_diff <= self.map_tolerance
            and self.max_score_diff <= self.score_tolerance
            and self.label_mismatches == 0
        )

    def summary(self) -> str:
        """The measured figures and tolerances in one line."""
        how = f"{self.runtime} ({self.settings})" if self.settings else self.runtime
        return (
            f"{how} vs PyTorch on {self.n_images} inputs ({self.n_real} real images), "
            f"normalised by {self.scale}: "
            f"max |d map| {self.max_map_diff:.3g} (tolerance {self.map_tolerance:g}), "
            f"max |d score| {self.max_score_diff:.3g} (tolerance {self.score_tolerance:g}), "
            f"OK/NG label mismatches {self.label_mismatches}; raw: max |d map| {self.max_raw_map_diff:.3g}, "
            f"max |d score| {self.max_raw_score_diff:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the export's metadata under ``parity``)."""
        return {**asdict(self), "ok": self.ok}


def parity_inputs(
    cfg: Config, data: str | Path | None, check_images: str | Path | None
) -> tuple[np.ndarray, int]:
    """``[M, 3, crop, crop]`` float32 parity inputs (real images first) and the number of real ones.

    For a tiled run the real inputs are tiles: the first and the last tile of each image (its two
    corners), cut as the torch-free predictor cuts them (:mod:`ssfilter.inference.exported_tiles`).

    Args:
        cfg: The run's config (resize and crop).
        data: The run's training data root, whose ``train`` images are used when ``check_images`` is
            not given (``None`` or missing: random inputs only, with a warning).
        check_images: Folder of images to use instead.

    Raises:
        ValueError: when ``check_images`` holds no readable image.
    """
    candidates: list[Path] = []
    if check_images is not None:
        candidates = scan_images(check_images)
        if not candidates:
            raise ValueError(f"no images found under --check-images {check_images}")
    elif data is not None and Path(data).exists():
        from ssfilter.data.datasets import discover

        with contextlib.suppress(FileNotFoundError, ValueError):
            candidates = [Path(s.path) for s in discover(data, "train")]
    to_inputs = _input_maker(cfg)
    real: list[np.ndarray] = []
    used = 0
    for path in candidates:
        if used >= MAX_CHECK_IMAGES:
            break
        try:
            real.extend(to_inputs(read_image(path)))
        except ImageReadError:
            continue
        used += 1
    if check_images is not None and not real:
        raise ValueError(f"no readable image under --check-images {check_images}")
    if not real:
        log.warning("no training images available for the ONNX parity check: using random inputs only")
    rng = np.random.default_rng(0)
    crop = cfg.data.crop
    noise = rng.random((N_RANDOM, 3, crop, crop), dtype=np.float32)
    return np.concatenate([np.stack(real), noise]) if real else noise, len(real)


def _input_maker(cfg: Config) -> Callable[[Image.Image], list[np.ndarray]]:
    """What turns one image into graph inputs: its crop, or its first and last tile (tiled runs)."""
    data = cfg.data
    if data.coverage == "tiles":
        settings = TileSettings(data.tile_scale, data.tile_overlap, data.crop)

        def corner_tiles(image: Image.Image) -> list[np.ndarray]:
            tiles = settings.cut(image)[1]
            return [tiles[0], tiles[-1]][: len(tiles)]

        return corner_tiles
    # The training transform with an identity normalisation: exactly the graph's input.
    transform = build_image_transform(data.resize, data.crop, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return lambda image: [transform(image).numpy()]


def batches(x: np.ndarray, batch_size: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """``(batch, n_valid)``: the whole array for a dynamic batch, else fixed-size chunks padded at the end.

    Args:
        x: Inputs ``[M, ...]``.
        batch_size: The graph's fixed batch size, or ``None`` (dynamic).
    """
    if batch_size is None:
        yield x, len(x)
        return
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        yield chunk, n


def torch_outputs(graph: InferenceGraph, x: np.ndarray, batch_size: int | None) -> Outputs:
    """PyTorch's maps and scores of the inputs, batched like the exported graph.

    Args:
        graph: The graph to export (on the CPU).
        x: Parity inputs.
        batch_size: The graph's fixed batch size, or ``None``.
    """
    maps, scores = [], []
    with torch.no_grad():
        for batch, n in batches(x, batch_size):
            m, s = graph(torch.from_numpy(batch))
            maps.append(m[:n].numpy())
            scores.append(s[:n].numpy())
    return np.concatenate(maps), np.concatenate(scores)


def ort_outputs(session: Any, x: np.ndarray, batch_size: int | None) -> Outputs:
    """ONNX Runtime's maps and scores of the inputs.

    Args:
        session: An ``onnxruntime.InferenceSession`` of the exported graph.
        x: Parity inputs.
        batch_size: The graph's fixed batch size, or ``None``.
    """
    maps, scores = [], []
    for batch, n in batches(x, batch_size):
        m, s = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        maps.append(m[:n])
        scores.append(s[:n])
    return np.concatenate(maps), np.concatenate(scores)


def runtime_outputs(runtime: Runtime, x: np.ndarray, batch_size: int | None) -> Outputs:
    """A :class:`~ssfilter.inference.runtimes.Runtime`'s maps and scores of the inputs (e.g. OpenVINO's).

    Args:
        runtime: The loaded export.
        x: Parity inputs.
        batch_size: The graph's fixed batch size, or ``None``.
    """
    maps, scores = [], []
    for batch, n in batches(x, batch_size):
        m, s = runtime.run(batch)
        maps.append(m[:n])
        scores.append(s[:n])
    return np.concatenate(maps), np.concatenate(scores)


def compare_outputs(ref: Outputs, got: Outputs, calibration: Calibration | None, n_real: int) -> ParityReport:
    """Measure how far ``got`` (ONNX Runtime) is from ``ref`` (PyTorch), see the module's rules.

    Args:
        ref: PyTorch's ``(maps, scores)``.
        got: ONNX Runtime's ``(maps, scores)``.
        calibration: The run's calibration (``None``: normalise by the reference range).
        n_real: How many of the inputs are real images.

    Raises:
        ExportParityError: when the shapes differ.
    """
    ref_maps, ref_scores = (np.asarray(a, dtype=np.float64) for a in ref)
    got_maps, got_scores = (np.asarray(a, dtype=np.float64) for a in got)
    if got_maps.shape != ref_maps.shape or got_scores.shape != ref_scores.shape:
        raise ExportParityError(
            ParityReport(len(ref_scores), n_real, "shape mismatch", np.inf, np.inf, np.inf, np.inf, 0)
        )
    if calibration is not None:
        scale = "calibration"
        map_diff = np.abs(calibration.normalize_maps(got_maps) - calibration.normalize_maps(ref_maps))
        score_diff = np.abs(
            calibration.normalize_scores(got_scores) - calibration.normalize_scores(ref_scores)
        )
        labels = zip(calibration.label(ref_scores), calibration.label(got_scores), strict=True)
        mismatches = sum(a != b for a, b in labels)
    else:
        scale = "reference range"
        map_span = max(float(np.ptp(ref_maps)), 1e-12)
        # Scores are statistics of the maps, so the maps' range bounds their scale too; the range of
        # a handful of scores alone can be tiny (random inputs score almost alike) and would turn
        # float32 rounding into a failed check.
        score_span = max(float(np.ptp(ref_scores)), map_span)
        map_diff = np.abs(got_maps - ref_maps) / map_span
        score_diff = np.abs(got_scores - ref_scores) / score_span
        mismatches = 0
    return ParityReport(
        n_images=len(ref_scores),
        n_real=n_real,
        scale=scale,
        max_map_diff=_worst(map_diff),
        max_score_diff=_worst(score_diff),
        max_raw_map_diff=_worst(np.abs(got_maps - ref_maps)),
        max_raw_score_diff=_worst(np.abs(got_scores - ref_scores)),
        label_mismatches=int(mismatches),
    )


def _worst(diff: np.ndarray) -> float:
    """The largest difference, NaN counting as infinite."""
    return float(np.nan_to_num(diff, nan=np.inf).max())


def check_parity(
    session: Any,
    inputs: np.ndarray,
    reference: Outputs,
    calibration: Calibration | None,
    n_real: int,
    batch_size: int | None,
    *,
    settings: str = "",
) -> ParityReport:
    """Run the exported graph in its runtime and compare it with PyTorch's ``reference``.

    A dynamic-batch graph is also run on the first input alone (the batch axis at a batch of one).

    Args:
        session: An ``onnxruntime.InferenceSession`` of the exported graph (run by :func:`ort_outputs`),
            or a :class:`~ssfilter.inference.runtimes.Runtime` (run by :func:`runtime_outputs`).
        inputs: The parity inputs (see :func:`parity_inputs`).
        reference: :func:`torch_outputs` of the same inputs.
        calibration: The run's calibration, or ``None``.
        n_real: How many of the inputs are real images.
        batch_size: The graph's fixed batch size, or ``None``.
        settings: How the runtime ran (recorded in the report), e.g. the OpenVINO precision hint.

    Returns:
        The report, when every figure is within its tolerance.

    Raises:
        ExportParityError: otherwise.
    """
    is_runtime = hasattr(session, "metadata")  # a Runtime wrapper, not a bare ONNX Runtime session
    outputs = runtime_outputs if is_runtime else ort_outputs
    name = session.name if is_runtime else ONNX_RUNTIME
    got = outputs(session, inputs, batch_size)
    if batch_size is None:
        single = outputs(session, inputs[:1], None)
        reference = (
            np.concatenate([reference[0], reference[0][:1]]),
            np.concatenate([reference[1], reference[1][:1]]),
        )
        got = (np.concatenate([got[0], single[0]]), np.concatenate([got[1], single[1]]))
    report = replace(compare_outputs(reference, got, calibration, n_real), runtime=name, settings=settings)
    log.info("%s parity: %s", name, report.summary())
    if not report.ok:
        raise ExportParityError(report)
    return report
