"""Export a trained run to OpenVINO IR (``.xml`` + ``.bin``), checked against PyTorch before it is written.

The graph is the ONNX export's (:mod:`ssfilter.inference.export`: same input, outputs and metadata keys),
traced to a temporary ONNX file and converted with OpenVINO's ONNX front end (``openvino.convert_model``).
Weights stay float32 (``save_model(..., compress_to_fp16=False)``).

Precision: OpenVINO's CPU plug-in may execute in bf16 or f16 where the CPU supports it, which on a ViT
moved scores by about a third of the score range against ONNX Runtime. The parity gate therefore runs the
converted model compiled with ``INFERENCE_PRECISION_HINT`` = :data:`OPENVINO_PRECISION` (``f32``) and the
same rules as the ONNX gate (:mod:`ssfilter.inference.parity`); the precision is recorded in the file
(``rt_info`` key ``openvino``) and :class:`~ssfilter.inference.onnx_predictor.OpenVinoPredictor` compiles
with it. A lower ``precision`` can be requested; the gate then decides whether it is good enough.

Metadata lives in the IR's ``rt_info`` section ``ssfilter`` (the ONNX file's ``metadata_props`` keys,
plus ``format``, ``openvino`` and ``parity``); read it with
:func:`~ssfilter.inference.onnx_predictor.read_export_metadata`.

Both files are written atomically: into a temporary folder beside the target, then renamed (``.bin``
first, then ``.xml``); on any failure nothing is left and an earlier export is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssfilter.config import Config
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.export import export_metadata, on_cpu_in_eval, resolve_source, trace_graph
from ssfilter.inference.graph import InferenceGraph, graph_map_size
from ssfilter.inference.parity import batches, check_parity, parity_inputs, torch_outputs
from ssfilter.inference.run import LoadedRun
from ssfilter.inference.runtimes import (
    METADATA_SECTION,
    OPENVINO_PRECISION,
    OpenVinoRuntime,
    require_openvino,
)
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["OPENVINO_DEVICE", "export_openvino"]

#: The device the parity gate runs on (and the predictor's default).
OPENVINO_DEVICE = "CPU"


def export_openvino(
    run_dir_or_model: str | Path | LoadedRun | DinomalyModel,
    path: str | Path,
    *,
    opset: int = 17,
    batch_size: int | None = None,
    config: Config | None = None,
    calibration: Calibration | None = None,
    check_images: str | Path | None = None,
    precision: str = OPENVINO_PRECISION,
) -> Path:
    """Export the whole inference graph to OpenVINO IR, refusing to write it unless OpenVINO matches PyTorch.

    Same graph, metadata and parity gate as :func:`~ssfilter.inference.export.export_onnx` (max |diff|
    of calibrated maps and normalised scores <= 1e-4, identical OK/NG labels, on up to 4 real images plus
    2 random inputs), with OpenVINO on the CPU compiled at ``INFERENCE_PRECISION_HINT=precision``.

    Args:
        run_dir_or_model: A run folder (needs its ``calibration.json``), a loaded run, or a model (then
            ``config`` is required).
        path: The ``.xml`` file to write; the weights go to the ``.bin`` of the same name.
        opset: ONNX opset of the intermediate graph.
        batch_size: Fixed batch size; ``None`` (default) for a dynamic batch axis.
        config: The run config, when exporting a model object.
        calibration: Calibration to embed instead of the run's.
        check_images: Folder of images for the parity check instead of the run's training images.
        precision: ``INFERENCE_PRECISION_HINT`` checked and recorded (``f32``; ``bf16``/``f16`` are
            refused by the gate whenever they move the outputs beyond the tolerances).

    Returns:
        The written ``.xml`` path.

    Raises:
        ExportParityError: when the parity check fails (nothing is written).
        FileNotFoundError: when a run folder has no ``calibration.json``.
        MissingExtraError: when openvino is not installed (``pip install 'ssfilter[openvino]'``).
        ValueError: when ``path`` does not end in ``.xml`` or ``batch_size`` is not positive.
    """
    ov = require_openvino()
    target = Path(path)
    if target.suffix.lower() != ".xml":
        raise ValueError(f"an OpenVINO export is an .xml file (with its .bin beside it), got {target}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive or None (dynamic), got {batch_size}")
    src = resolve_source(run_dir_or_model, config, calibration)
    inputs, n_real = parity_inputs(src.config, src.data, check_images)
    with on_cpu_in_eval(src.model), _atomic_ir(target) as tmp_xml:
        _write_checked(ov, src, inputs, n_real, tmp_xml, opset, batch_size, precision)
    return target


def _write_checked(
    ov: Any,
    src: LoadedRun,
    inputs: np.ndarray,
    n_real: int,
    xml: Path,
    opset: int,
    batch_size: int | None,
    precision: str,
) -> None:
    """Trace and convert the graph, check its parity in OpenVINO (raising on failure), save the IR."""
    graph = InferenceGraph(src.model, graph_map_size(src.config.data)).cpu()
    reference = torch_outputs(graph, inputs, batch_size)  # also fills the encoder's per-size constants
    example = torch.from_numpy(next(batches(inputs, batch_size or 2))[0].copy())
    onnx_file = xml.with_suffix(".onnx")
    trace_graph(graph, example, onnx_file, opset, dynamic=batch_size is None)
    model = ov.convert_model(str(onnx_file))
    onnx_file.unlink()
    runtime = OpenVinoRuntime(model=model, device=OPENVINO_DEVICE, precision=precision)
    settings = f"{OPENVINO_DEVICE}, INFERENCE_PRECISION_HINT={precision}"
    report = check_parity(runtime, inputs, reference, src.calibration, n_real, batch_size, settings=settings)
    record = {
        "version": ov.get_version(),
        "device": OPENVINO_DEVICE,
        "inference_precision": precision,
        "weights": "f32 (compress_to_fp16=False)",
    }
    meta = {
        **export_metadata(src, opset, batch_size),
        "format": "openvino",
        "openvino": json.dumps(record),
        "parity": json.dumps(report.to_dict()),
    }
    for key, value in meta.items():
        model.set_rt_info(value, [METADATA_SECTION, key])
    ov.save_model(model, str(xml), compress_to_fp16=False)


@contextlib.contextmanager
def _atomic_ir(target: Path) -> Iterator[Path]:
    """Yield a temporary ``.xml`` path; on success move its ``.xml`` and ``.bin`` over ``target``'s.

    The temporary folder is beside ``target`` (same file system, so the renames are atomic) and is
    removed whatever happens; the ``.bin`` is renamed before the ``.xml`` that names the model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        tmp_xml = folder / target.name
        yield tmp_xml
        tmp_bin = tmp_xml.with_suffix(".bin")
        for file in (tmp_bin, tmp_xml):
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_bin, target.with_suffix(".bin"))
        os.replace(tmp_xml, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
