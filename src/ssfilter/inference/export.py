"""Export a trained run to ONNX: the whole inference graph, checked against PyTorch before it is written.

The exported graph (:class:`~ssfilter.inference.graph.InferenceGraph`) takes what a camera pipeline can
produce without any deep-learning library:

* input ``images``: ``float32 [N, 3, crop, crop]``, RGB, values in [0, 1], already resized to
  ``resize x resize`` (bilinear, antialiased) and centre-cropped to ``crop`` -- the run's training
  transform without its normalisation (:class:`ssfilter.inference.onnx_predictor.OnnxPredictor` does
  this with Pillow and numpy);
* inside the graph: normalisation by the encoder's mean/std, the model and the evaluation maps;
* outputs ``maps``: ``float32 [N, 1, S, S]`` raw anomaly maps (``S = data.eval_size``) and
  ``scores``: ``float32 [N]`` raw image scores -- the numbers ``ssfilter evaluate`` and ``predict`` use.

A tiled run (``data.coverage = "tiles"``) exports the graph of one tile: its inputs are ``crop x crop``
tiles and its maps stay at tile resolution (``tile_map_size``); the torch-free predictors scale, cut and
stitch around it as evaluation does (:mod:`ssfilter.inference.exported_tiles`), from the ``coverage``,
``tile_scale`` and ``tile_overlap`` the metadata records.

The file's ``metadata_props`` hold everything a runtime needs to use it: the ssfilter version, crop,
resize, eval size, mean/std, the run's calibration (OK/NG threshold and fixed heat-map scale, as the
JSON of :meth:`~ssfilter.inference.calibration.Calibration.to_dict`) and the parity figures measured
at export time.

Before the file is written, the parity gate (:mod:`ssfilter.inference.parity`) compares ONNX Runtime
with PyTorch and refuses the export with :class:`ExportParityError` -- leaving no file behind -- when
they differ by more than :data:`MAP_TOLERANCE` / :data:`SCORE_TOLERANCE` or on any OK/NG label.

:func:`export_run` exports in any format of the registry :mod:`ssfilter.inference.formats` (``onnx``
here, ``openvino`` in :mod:`ssfilter.inference.openvino_export`, which reuses this module's tracing and
metadata).

This module knows nothing of :class:`ssfilter.Detector`: it takes a run folder, a loaded run
(:class:`~ssfilter.inference.run.LoadedRun`) or a model with its config.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssfilter.config import Config
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.formats import get_export_format
from ssfilter.inference.graph import INPUT_NAME, OUTPUT_NAMES, InferenceGraph, graph_map_size
from ssfilter.inference.onnx_predictor import EXPORT_FORMAT, read_onnx_metadata
from ssfilter.inference.parity import (
    MAP_TOLERANCE,
    SCORE_TOLERANCE,
    ExportParityError,
    ParityReport,
    batches,
    check_parity,
    parity_inputs,
    torch_outputs,
)
from ssfilter.inference.run import LoadedRun, load_run_folder
from ssfilter.io import atomic_path
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.runfolder import CALIBRATION_FILE
from ssfilter.version import VERSION

__all__ = [
    "EXPORT_FORMAT",
    "INPUT_NAME",
    "MAP_TOLERANCE",
    "OUTPUT_NAMES",
    "SCORE_TOLERANCE",
    "ExportParityError",
    "InferenceGraph",
    "ParityReport",
    "export_calibration",
    "export_metadata",
    "export_onnx",
    "export_run",
    "on_cpu_in_eval",
    "resolve_source",
    "trace_graph",
    "read_onnx_metadata",
]


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


def export_calibration(run_dir: str | Path) -> Calibration:
    """The calibration an export of ``run_dir`` embeds: its ``calibration.json``, which must exist.

    Args:
        run_dir: The run folder.

    Raises:
        FileNotFoundError: when the run has no ``calibration.json`` (the message says how to compute it).
        CalibrationError: when the file is malformed.
    """
    run = Path(run_dir)
    if not (run / CALIBRATION_FILE).is_file():
        raise FileNotFoundError(
            f"{run} has no {CALIBRATION_FILE}; the ONNX file embeds the run's OK/NG threshold and "
            f"heat-map scale, so compute them first with `ssfilter calibrate --run {run}`"
        )
    return Calibration.load(run)


def resolve_source(
    source: str | Path | LoadedRun | DinomalyModel, config: Config | None, calibration: Calibration | None
) -> LoadedRun:
    """What an export needs, from a run folder, a loaded run or a model with its config.

    Args:
        source: A run folder (its ``calibration.json`` is required), a loaded run or a model.
        config: The model's config (required for a model object).
        calibration: Calibration to embed instead of the run's.

    Raises:
        ValueError: when the config's crop is not the model's.
    """
    if isinstance(source, DinomalyModel):
        if config is None:
            raise ValueError("exporting a model object needs its config (config=...): resize and eval size")
        src = LoadedRun(path=None, config=config, model=source, calibration=calibration)
    elif isinstance(source, LoadedRun):
        src = source if calibration is None else replace(source, calibration=calibration)
    elif isinstance(source, (str, Path)):
        cal = calibration if calibration is not None else export_calibration(source)
        src = replace(load_run_folder(source, "cpu", calibration="skip"), calibration=cal)
    else:
        raise TypeError(
            f"cannot export a {type(source).__name__}: pass a run folder, a LoadedRun or a DinomalyModel"
        )
    if src.config.data.crop != src.model.crop:
        raise ValueError(
            f"config crop {src.config.data.crop} does not match the model's crop {src.model.crop}"
        )
    return src


def export_metadata(src: LoadedRun, opset: int, batch_size: int | None) -> dict[str, str]:
    """The metadata every exported file carries (strings; see the module docstring), parity aside."""
    cfg, model = src.config, src.model
    crop, size = cfg.data.crop, graph_map_size(cfg.data)
    tiles = cfg.data.coverage == "tiles"
    return {
        "ssfilter_export_format": str(EXPORT_FORMAT),
        "ssfilter_version": VERSION,
        "backbone": model.encoder.name,
        "crop": str(cfg.data.crop),
        "resize": str(cfg.data.resize),
        "eval_size": str(cfg.data.eval_size),
        "coverage": cfg.data.coverage,
        **(_tile_metadata(cfg) if tiles else {}),
        "mean": json.dumps([float(v) for v in model.encoder.mean]),
        "std": json.dumps([float(v) for v in model.encoder.std]),
        "interpolation": (
            "tiles: bilinear, antialiased (Pillow BILINEAR) resize by tile_scale, aspect kept, then "
            "overlapping crop x crop tiles; tile maps averaged back, top-1% window score, bilinear resize "
            "to eval_size"
            if tiles
            else "bilinear, antialiased (Pillow BILINEAR), then centre crop"
        ),
        "input": f"{INPUT_NAME}: float32 [N, 3, {crop}, {crop}] RGB in [0, 1], not normalised",
        "outputs": f"maps: float32 [N, 1, {size}, {size}] raw; scores: float32 [N] raw",
        "batch_size": "dynamic" if batch_size is None else str(batch_size),
        "opset": str(opset),
        "calibration": json.dumps(src.calibration.to_dict() if src.calibration is not None else None),
        "run": str(src.path) if src.path is not None else "",
    }


def _tile_metadata(cfg: Config) -> dict[str, str]:
    """How a tiled run cuts images (read back by :class:`~ssfilter.inference.exported_tiles.TileSettings`)."""
    return {
        "tile_scale": repr(float(cfg.data.tile_scale)),
        "tile_overlap": repr(float(cfg.data.tile_overlap)),
        "tile_map_size": str(graph_map_size(cfg.data)),
    }


@contextlib.contextmanager
def on_cpu_in_eval(model: DinomalyModel) -> Iterator[None]:
    """Run the block with the model on the CPU in eval mode; restore device and mode afterwards."""
    device = next(model.parameters()).device
    training = model.training
    model.cpu().eval()
    try:
        yield
    finally:
        model.to(device).train(training)


def trace_graph(graph: InferenceGraph, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """Write the traced graph to ``path`` as ONNX (TorchScript exporter, named input and outputs).

    Args:
        graph: The inference graph, on the CPU in eval mode.
        example: An input batch to trace with.
        path: The ``.onnx`` file to write.
        opset: ONNX opset version.
        dynamic: Whether the batch axis is dynamic.
    """
    axes = {INPUT_NAME: {0: "N"}, "maps": {0: "N"}, "scores": {0: "N"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _save_with_metadata(onnx: Any, proto: Any, path: Path, meta: dict[str, str], backbone: str) -> None:
    """Replace the file's ``metadata_props`` by ``meta``, set its doc string and write it to ``path``."""
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"ssfilter {VERSION} anomaly detector ({backbone}); input {meta['input']}; outputs {meta['outputs']}"
    )
    onnx.save(proto, str(path))


def export_onnx(
    run_dir_or_model: str | Path | LoadedRun | DinomalyModel,
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

    Parity gate (:mod:`ssfilter.inference.parity`; ONNX Runtime on the CPU vs PyTorch float32 on up to
    4 real images -- the run's training images or ``check_images`` -- plus 2 random inputs): refused
    with :class:`ExportParityError`, no file written, when the maps normalised by the run's calibration
    differ by more than :data:`MAP_TOLERANCE` (1e-4), the normalised scores by more than
    :data:`SCORE_TOLERANCE` (1e-4), or any OK/NG label differs.

    Args:
        run_dir_or_model: A run folder (needs its ``calibration.json``), a
            :class:`~ssfilter.inference.run.LoadedRun` (its calibration and training data are used), or
            a :class:`~ssfilter.models.dinomaly.DinomalyModel` (then ``config`` is required). A model on
            a GPU is exported from the CPU and moved back.
        path: The ``.onnx`` file to write (atomically: complete or not at all).
        opset: ONNX opset version (17 or newer recommended).
        batch_size: Fixed batch size of the graph; ``None`` (default) makes the batch axis dynamic.
        config: The run config, when exporting a model object.
        calibration: Calibration to embed instead of the run's.
        check_images: Folder of images for the parity check instead of the run's training images.

    Returns:
        The written path.

    Raises:
        ExportParityError: when the parity check fails (nothing is written).
        FileNotFoundError: when a run folder has no ``calibration.json`` (run ``ssfilter calibrate``).
        ImportError: when onnx / onnxruntime are not installed.
    """
    onnx, ort = _require_onnx()
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive or None (dynamic), got {batch_size}")
    src = resolve_source(run_dir_or_model, config, calibration)
    inputs, n_real = parity_inputs(src.config, src.data, check_images)
    target = Path(path)
    with on_cpu_in_eval(src.model), atomic_path(target) as tmp:
        _write_checked(onnx, ort, src, inputs, n_real, tmp, opset, batch_size)
    return target


def _write_checked(
    onnx: Any,
    ort: Any,
    src: LoadedRun,
    inputs: np.ndarray,
    n_real: int,
    path: Path,
    opset: int,
    batch_size: int | None,
) -> None:
    """Trace the graph into ``path``, check its parity (raising on failure) and add the metadata.

    Runs with the model on the CPU in eval mode; ``path`` is the temporary file of the atomic write.
    """
    graph = InferenceGraph(src.model, graph_map_size(src.config.data)).cpu()
    # The PyTorch reference runs before tracing: it also fills the encoder's per-size constants
    # (the ViT position table at this crop), which the trace then records as constants.
    reference = torch_outputs(graph, inputs, batch_size)
    # A dynamic graph is traced with two images, so nothing gets specialised to a batch of one.
    example = torch.from_numpy(next(batches(inputs, batch_size or 2))[0].copy())
    trace_graph(graph, example, path, opset, dynamic=batch_size is None)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    session = _ort_session(ort, proto.SerializeToString())
    report = check_parity(session, inputs, reference, src.calibration, n_real, batch_size)
    meta = {**export_metadata(src, opset, batch_size), "parity": json.dumps(report.to_dict())}
    _save_with_metadata(onnx, proto, path, meta, src.model.encoder.name)


def _ort_session(ort: Any, model: bytes | str) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def export_run(
    run_dir_or_model: str | Path | LoadedRun | DinomalyModel,
    path: str | Path,
    format: str = "onnx",
    **options: Any,
) -> Path:
    """Export in a registered format (:mod:`ssfilter.inference.formats`), parity gate included.

    Args:
        run_dir_or_model: What :func:`export_onnx` takes.
        path: The file to write (``.onnx``; ``.xml`` for OpenVINO, with its ``.bin`` beside it).
        format: A registered format name (``onnx``, ``openvino``).
        **options: The exporter's keyword arguments (``opset``, ``batch_size``, ``check_images``, ...).

    Raises:
        UnknownExportFormatError: for a format no exporter is registered for (the message lists them).
    """
    return get_export_format(format).load()(run_dir_or_model, path, **options)
