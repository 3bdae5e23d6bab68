"""Export a trained run to ONNX: the whole inference graph, checked against PyTorch before it is written.

The exported graph takes what a camera pipeline can produce without any deep-learning library:

* input ``images``: ``float32 [N, 3, crop, crop]``, RGB, values in [0, 1], already resized to
  ``resize x resize`` (bilinear, antialiased) and centre-cropped to ``crop`` -- the run's training
  transform without its normalisation (:class:`ssfilter.inference.onnx_predictor.OnnxPredictor` does
  this with Pillow and numpy);
* inside the graph: normalisation by the encoder's mean/std, the frozen encoder, the bottleneck in
  eval mode (no dropout), the decoder, ``1 - cos`` per group, bilinear upsampling, resizing to
  ``data.eval_size``, the 5x5 / sigma 4 zero-padded Gaussian blur and the top-1% image score;
* outputs ``maps``: ``float32 [N, 1, S, S]`` raw anomaly maps (``S = data.eval_size``) and
  ``scores``: ``float32 [N]`` raw image scores -- the numbers ``ssfilter evaluate`` and ``predict`` use.

The file's ``metadata_props`` hold everything a runtime needs to use it: the ssfilter version, crop,
resize, eval size, mean/std, the run's calibration (OK/NG threshold and fixed heat-map scale, as the
JSON of :meth:`~ssfilter.inference.calibration.Calibration.to_dict`) and the parity figures measured
at export time.

**Parity gate.** Before the file is written, ONNX Runtime (``CPUExecutionProvider``) runs the exported
graph on a few real training images of the run (or ``check_images``) plus random inputs, and the
results are compared with PyTorch on the same inputs. The export is refused with
:class:`ExportParityError` -- and no file is left behind -- when

* the maps normalised by the run's fixed calibration scale differ by more than :data:`MAP_TOLERANCE`
  (1e-4) anywhere,
* the normalised image scores differ by more than :data:`SCORE_TOLERANCE` (1e-4), or
* any OK/NG label differs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ssfilter.config import Config
from ssfilter.data.images import ImageReadError, read_image, scan_images
from ssfilter.data.transforms import build_image_transform
from ssfilter.errors import SSFilterError
from ssfilter.inference.onnx_predictor import read_onnx_metadata
from ssfilter.io import atomic_path
from ssfilter.models.anomaly_map import evaluation_maps
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.runfolder import read_data_root
from ssfilter.version import VERSION

if TYPE_CHECKING:
    from ssfilter.api import Detector
    from ssfilter.inference.calibration import Calibration

__all__ = [
    "EXPORT_FORMAT",
    "INPUT_NAME",
    "MAP_TOLERANCE",
    "OUTPUT_NAMES",
    "SCORE_TOLERANCE",
    "ExportParityError",
    "InferenceGraph",
    "ParityReport",
    "export_onnx",
    "read_onnx_metadata",
]

log = logging.getLogger(__name__)

#: Largest allowed |ONNX - PyTorch| of the anomaly maps normalised to [0, 1] by the run's calibration.
MAP_TOLERANCE = 1e-4
#: Largest allowed |ONNX - PyTorch| of the normalised image scores (0.5 = the OK/NG threshold).
SCORE_TOLERANCE = 1e-4
#: Version of the exported file's interface (input/output names and metadata keys).
EXPORT_FORMAT = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("maps", "scores")
#: Real images (from the run's training set or ``check_images``) and random inputs of the parity check.
_MAX_CHECK_IMAGES = 4
_N_RANDOM = 2


class ExportParityError(SSFilterError, RuntimeError):
    """The exported graph does not reproduce PyTorch within the tolerances; nothing was written.

    Attributes:
        report: The measured differences.
    """

    def __init__(self, report: ParityReport) -> None:
        super().__init__(
            "ONNX export refused: ONNX Runtime does not reproduce PyTorch within the tolerances "
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
        return (
            f"{self.n_images} inputs ({self.n_real} real images), normalised by {self.scale}: "
            f"max |d map| {self.max_map_diff:.3g} (tolerance {self.map_tolerance:g}), "
            f"max |d score| {self.max_score_diff:.3g} (tolerance {self.score_tolerance:g}), "
            f"OK/NG label mismatches {self.label_mismatches}; raw: max |d map| {self.max_raw_map_diff:.3g}, "
            f"max |d score| {self.max_raw_score_diff:.3g}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in the ONNX metadata under ``parity``)."""
        return {**asdict(self), "ok": self.ok}


class InferenceGraph(nn.Module):
    """The exported computation: ``[0, 1]`` RGB crops in, raw maps and scores out.

    Args:
        model: A trained model (used in eval mode: no bottleneck dropout).
        eval_size: Side of the output maps (``data.eval_size``).
    """

    def __init__(self, model: DinomalyModel, eval_size: int) -> None:
        super().__init__()
        self.model = model
        self.eval_size = int(eval_size)
        self.register_buffer("mean", torch.tensor(model.encoder.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(model.encoder.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.eval()

    def train(self, mode: bool = True) -> InferenceGraph:
        """Stay in eval mode whatever the caller asks (no bottleneck dropout, ever).

        The exporter sets eval mode for tracing and then restores the wrapper's previous mode on the
        whole module tree; a wrapper in training mode would switch the model's dropout back on.

        Args:
            mode: Ignored.
        """
        return super().train(False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Maps ``[N, 1, S, S]`` and scores ``[N]`` of ``[N, 3, crop, crop]`` images in [0, 1]."""
        # The same two operations as torchvision's Normalize (subtract, then divide), so the numbers match.
        rec = self.model((images - self.mean) / self.std)
        maps, scores = evaluation_maps(rec.encoder, rec.decoder, self.model.crop, self.eval_size)
        return maps.unsqueeze(1), scores


@dataclass
class _Source:
    """What an export needs, resolved from a run folder, a Detector or a model."""

    model: DinomalyModel
    cfg: Config
    calibration: Calibration | None
    run_dir: Path | None
    data: Path | None
    backbone: str


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs the onnx and onnxruntime packages ({err}); install them with "
            "`pip install 'ssfilter[onnx]'`"
        ) from err
    return onnx, onnxruntime


def _run_calibration(run_dir: Path) -> Calibration:
    from ssfilter.inference.calibration import Calibration
    from ssfilter.runfolder import CALIBRATION_FILE

    if not (run_dir / CALIBRATION_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {CALIBRATION_FILE}; the ONNX file embeds the run's OK/NG threshold and "
            f"heat-map scale, so compute them first with `ssfilter calibrate --run {run_dir}`"
        )
    return Calibration.load(run_dir)


def _resolve(
    source: str | Path | DinomalyModel | Detector, config: Config | None, calibration: Calibration | None
) -> _Source:
    if isinstance(source, DinomalyModel):
        if config is None:
            raise ValueError("exporting a model object needs its config (config=...): resize and eval size")
        return _Source(source, config, calibration, None, None, source.encoder.name)
    if isinstance(source, (str, Path)):
        from ssfilter.training.checkpoint import load_run

        run = Path(source)
        cal = calibration if calibration is not None else _run_calibration(run)
        cfg, model = load_run(run, "cpu")
        return _Source(model, cfg, cal, run, read_data_root(run), model.encoder.name)
    from ssfilter.api import Detector

    if isinstance(source, Detector):
        model = source._ensure_model()
        run = source.run_dir
        cal = calibration
        if cal is None and run is not None:
            cal = _run_calibration(run)
        return _Source(model, source.config, cal, run, source.data, model.encoder.name)
    raise TypeError(
        f"cannot export a {type(source).__name__}: pass a run folder, a Detector or a DinomalyModel"
    )


def _check_inputs(src: _Source, check_images: str | Path | None) -> tuple[np.ndarray, int]:
    """``[M, 3, crop, crop]`` float32 parity inputs (real images first) and the number of real ones."""
    cfg = src.cfg
    # The training transform with an identity normalisation: exactly the graph's input.
    transform = build_image_transform(cfg.data.resize, cfg.data.crop, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    candidates: list[Path] = []
    if check_images is not None:
        candidates = scan_images(check_images)
        if not candidates:
            raise ValueError(f"no images found under --check-images {check_images}")
    elif src.data is not None and Path(src.data).exists():
        from ssfilter.data.datasets import discover

        with contextlib.suppress(FileNotFoundError, ValueError):
            candidates = [Path(s.path) for s in discover(src.data, "train")]
    real: list[np.ndarray] = []
    for path in candidates:
        if len(real) >= _MAX_CHECK_IMAGES:
            break
        try:
            real.append(transform(read_image(path)).numpy())
        except ImageReadError:
            continue
    if check_images is not None and not real:
        raise ValueError(f"no readable image under --check-images {check_images}")
    if not real:
        log.warning("no training images available for the ONNX parity check: using random inputs only")
    rng = np.random.default_rng(0)
    crop = cfg.data.crop
    noise = rng.random((_N_RANDOM, 3, crop, crop), dtype=np.float32)
    return np.concatenate([np.stack(real), noise]) if real else noise, len(real)


def _batches(x: np.ndarray, batch_size: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """``(batch, n_valid)``: the whole array for a dynamic batch, else fixed-size chunks padded at the end."""
    if batch_size is None:
        yield x, len(x)
        return
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        yield chunk, n


def _torch_outputs(graph: InferenceGraph, x: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, ...]:
    maps, scores = [], []
    with torch.no_grad():
        for batch, n in _batches(x, batch_size):
            m, s = graph(torch.from_numpy(batch))
            maps.append(m[:n].numpy())
            scores.append(s[:n].numpy())
    return np.concatenate(maps), np.concatenate(scores)


def _ort_outputs(session: Any, x: np.ndarray, batch_size: int | None) -> tuple[np.ndarray, ...]:
    maps, scores = [], []
    for batch, n in _batches(x, batch_size):
        m, s = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        maps.append(m[:n])
        scores.append(s[:n])
    return np.concatenate(maps), np.concatenate(scores)


def _compare(
    ref: tuple[np.ndarray, np.ndarray],
    got: tuple[np.ndarray, np.ndarray],
    calibration: Calibration | None,
    n_real: int,
) -> ParityReport:
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
        max_map_diff=float(np.nan_to_num(map_diff, nan=np.inf).max()),
        max_score_diff=float(np.nan_to_num(score_diff, nan=np.inf).max()),
        max_raw_map_diff=float(np.nan_to_num(np.abs(got_maps - ref_maps), nan=np.inf).max()),
        max_raw_score_diff=float(np.nan_to_num(np.abs(got_scores - ref_scores), nan=np.inf).max()),
        label_mismatches=int(mismatches),
    )


def _metadata(src: _Source, opset: int, batch_size: int | None) -> dict[str, str]:
    cfg, model = src.cfg, src.model
    crop, size = cfg.data.crop, cfg.data.eval_size
    return {
        "ssfilter_export_format": str(EXPORT_FORMAT),
        "ssfilter_version": VERSION,
        "backbone": src.backbone,
        "crop": str(cfg.data.crop),
        "resize": str(cfg.data.resize),
        "eval_size": str(cfg.data.eval_size),
        "mean": json.dumps([float(v) for v in model.encoder.mean]),
        "std": json.dumps([float(v) for v in model.encoder.std]),
        "interpolation": "bilinear, antialiased (Pillow BILINEAR), then centre crop",
        "input": f"{INPUT_NAME}: float32 [N, 3, {crop}, {crop}] RGB in [0, 1], not normalised",
        "outputs": f"maps: float32 [N, 1, {size}, {size}] raw; scores: float32 [N] raw",
        "batch_size": "dynamic" if batch_size is None else str(batch_size),
        "opset": str(opset),
        "calibration": json.dumps(src.calibration.to_dict() if src.calibration is not None else None),
        "run": str(src.run_dir) if src.run_dir is not None else "",
    }


@contextlib.contextmanager
def _on_cpu_in_eval(model: DinomalyModel) -> Iterator[None]:
    """Run the block with the model on the CPU in eval mode; restore device and mode afterwards."""
    device = next(model.parameters()).device
    training = model.training
    model.cpu().eval()
    try:
        yield
    finally:
        model.to(device).train(training)


def export_onnx(
    run_dir_or_model: str | Path | DinomalyModel | Detector,
    path: str | Path,
    *,
    opset: int = 17,
    batch_size: int | None = None,
    config: Config | None = None,
    calibration: Calibration | None = None,
    check_images: str | Path | None = None,
) -> Path:
    """Export the whole inference graph to ONNX, refusing to write it unless ONNX Runtime matches PyTorch.

    The input is ``images``: float32 ``[N, 3, crop, crop]`` RGB in [0, 1], resized and centre-cropped
    like the training transform but NOT normalised (the graph normalises by the encoder's mean/std).
    The outputs are ``maps`` ``[N, 1, S, S]`` (``S = data.eval_size``) and ``scores`` ``[N]``, raw.
    Metadata (``metadata_props``): ssfilter version, crop, resize, eval size, mean/std, calibration
    JSON and the measured parity figures.

    Parity gate (ONNX Runtime, CPUExecutionProvider, vs PyTorch float32 on the CPU, on up to 4 real
    images -- the run's training images or ``check_images`` -- plus 2 random inputs): the export is
    refused with :class:`ExportParityError` and no file is written when max |Δ| of the maps normalised
    by the run's calibration exceeds 1e-4 (:data:`MAP_TOLERANCE`), max |Δ| of the normalised scores
    exceeds 1e-4 (:data:`SCORE_TOLERANCE`), or any OK/NG label differs. Without a calibration (a
    model object exported without ``calibration``) maps are normalised by the range of PyTorch's
    maps on the inputs, scores by the larger of that and their own range, and labels are not compared.

    Args:
        run_dir_or_model: A run folder (needs its ``calibration.json``), a loaded
            :class:`~ssfilter.api.Detector`, or a :class:`~ssfilter.models.dinomaly.DinomalyModel`
            (then ``config`` is required). A model on a GPU is exported from the CPU and moved back.
        path: The ``.onnx`` file to write (atomically: complete or not at all).
        opset: ONNX opset version (17 or newer recommended).
        batch_size: Fixed batch size of the graph; ``None`` (default) makes the batch axis dynamic.
        config: The run config, when exporting a model object.
        calibration: Calibration to embed instead of the run's ``calibration.json``.
        check_images: Folder of images for the parity check instead of the run's training images.

    Returns:
        The written path.

    Raises:
        ExportParityError: when the parity check fails (nothing is written).
        FileNotFoundError: when a run has no ``calibration.json`` (run ``ssfilter calibrate``).
        ImportError: when onnx / onnxruntime are not installed.
    """
    onnx, ort = _require_onnx()
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive or None (dynamic), got {batch_size}")
    src = _resolve(run_dir_or_model, config, calibration)
    if src.cfg.data.crop != src.model.crop:
        raise ValueError(f"config crop {src.cfg.data.crop} does not match the model's crop {src.model.crop}")
    inputs, n_real = _check_inputs(src, check_images)
    target = Path(path)
    with _on_cpu_in_eval(src.model), atomic_path(target) as tmp:
        graph = InferenceGraph(src.model, src.cfg.data.eval_size).cpu()
        # The PyTorch reference runs before tracing: it also fills the encoder's per-size constants
        # (the ViT position table at this crop), which the trace then records as constants.
        reference = _torch_outputs(graph, inputs, batch_size)
        # A dynamic graph is traced with two images, so nothing gets specialised to a batch of one.
        example = torch.from_numpy(next(_batches(inputs, batch_size or 2))[0].copy())
        dynamic = (
            None if batch_size is not None else {INPUT_NAME: {0: "N"}, "maps": {0: "N"}, "scores": {0: "N"}}
        )
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        onnx.checker.check_model(proto)
        session = _ort_session(ort, proto.SerializeToString())
        got = _ort_outputs(session, inputs, batch_size)
        if batch_size is None:  # the dynamic batch axis at a batch of one, too
            single = _ort_outputs(session, inputs[:1], None)
            reference = tuple(np.concatenate([r, r[:1]]) for r in reference)
            got = tuple(np.concatenate([g, o]) for g, o in zip(got, single, strict=True))
        report = _compare(reference, got, src.calibration, n_real)
        log.info("ONNX parity: %s", report.summary())
        if not report.ok:
            raise ExportParityError(report)
        meta = {**_metadata(src, opset, batch_size), "parity": json.dumps(report.to_dict())}
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = (
            f"ssfilter {VERSION} anomaly detector ({src.backbone}); input {meta['input']}; "
            f"outputs {meta['outputs']}"
        )
        onnx.save(proto, str(tmp))
    return target


def _ort_session(ort: Any, model: bytes | str) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
