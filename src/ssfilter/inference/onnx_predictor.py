"""Run an exported ssfilter graph without PyTorch: numpy, Pillow and ONNX Runtime or OpenVINO only.

:class:`ExportedPredictor` does the numpy side over a runtime (:mod:`ssfilter.inference.runtimes`);
:class:`OnnxPredictor` (``.onnx``, ONNX Runtime) and :class:`OpenVinoPredictor` (``.xml``, OpenVINO IR)
open one runtime each, and :func:`load_predictor` picks the runtime from the file's suffix.

Example:
    >>> from ssfilter.inference.onnx_predictor import OnnxPredictor
    >>> pred = OnnxPredictor("model.onnx")                                  # doctest: +SKIP
    >>> results, skipped = pred.predict(["part_0001.png", "more_parts/"])   # doctest: +SKIP
    >>> results[0].label, results[0].score, results[0].map.shape            # doctest: +SKIP
    ('OK', 0.21, (256, 256))

Preprocessing reproduces the run's torchvision transform
(:func:`ssfilter.data.transforms.build_image_transform`) with Pillow and numpy:
``Image.resize((resize, resize), BILINEAR)`` (what torchvision's antialiased bilinear ``Resize`` calls for
a PIL image), the centre crop at ``int(round((side - crop) / 2))`` (torchvision's ``CenterCrop``
offsets), and ``uint8 / 255`` as float32 (``ToTensor``). Normalisation happens inside the graph.
Images are read with :func:`ssfilter.data.images.read_image` (EXIF orientation, any pixel mode to
8-bit RGB), exactly as in training. An export of a tiled run (metadata ``coverage = tiles``) scores tiles:
the image is scaled, cut, and the tiles' maps stitched back in numpy
(:mod:`ssfilter.inference.exported_tiles`), as the run's evaluation does.

Nothing in this module imports torch (a test runs it with torch blocked).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssfilter.data.images import ImageReadError, Skipped, read_image, scan_images
from ssfilter.errors import CalibrationError
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.exported_tiles import TileSettings, image_array, stitched_outputs
from ssfilter.inference.prediction import Prediction, decide
from ssfilter.inference.runtimes import (
    OnnxRuntimeSession,
    OpenVinoRuntime,
    Runtime,
    open_runtime,
    read_metadata,
)

__all__ = [
    "EXPORT_FORMAT",
    "ExportedPredictor",
    "OnnxPredictor",
    "OpenVinoPredictor",
    "decode_metadata",
    "load_predictor",
    "preprocess",
    "read_export_metadata",
    "read_onnx_metadata",
]

#: Version of the exported file's interface (input/output names and metadata keys), written by the
#: exporters and checked by the predictors. 2: tiled runs (``coverage``, ``tile_scale``,
#: ``tile_overlap``, ``tile_map_size``).
EXPORT_FORMAT = 2

_INT_KEYS = ("crop", "resize", "eval_size", "tile_map_size", "opset", "ssfilter_export_format")
_FLOAT_KEYS = ("tile_scale", "tile_overlap")
_JSON_KEYS = ("mean", "std", "calibration", "parity")


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """Decode the string ``metadata_props`` of an exported file.

    Args:
        raw: The ``{key: value}`` strings.

    Returns:
        The same keys; sizes and ``opset`` as ints, tile settings as floats, ``mean``/``std`` as lists,
        ``calibration`` and ``parity`` as dicts (``calibration`` is ``None`` when none was embedded).
    """
    out: dict[str, Any] = dict(raw)
    for key in _INT_KEYS:
        if key in out:
            out[key] = int(out[key])
    for key in _FLOAT_KEYS:
        if key in out:
            out[key] = float(out[key])
    for key in _JSON_KEYS:
        if key in out:
            out[key] = json.loads(out[key])
    return out


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ssfilter metadata of an exported file (see :func:`decode_metadata`).

    Args:
        path: An ``.onnx`` file written by :func:`ssfilter.inference.export.export_onnx`.
    """
    return decode_metadata(OnnxRuntimeSession(path).metadata)


def preprocess(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """The graph input for one RGB image: ``float32 [3, crop, crop]`` in [0, 1].

    Same pixels as torchvision's ``Resize((resize, resize), BILINEAR, antialias=True)``,
    ``CenterCrop(crop)`` and ``ToTensor()`` on a PIL image.

    Args:
        image: An 8-bit RGB image (as :func:`~ssfilter.data.images.read_image` returns).
        resize: Side of the square resize.
        crop: Side of the centre crop (at most ``resize``).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (resize, resize):
        image = image.resize((resize, resize), Image.BILINEAR)
    top = int(round((resize - crop) / 2.0))
    left = int(round((resize - crop) / 2.0))
    return image_array(image.crop((left, top, left + crop, top + crop)))


class ExportedPredictor:
    """Scores, OK/NG labels and heat-maps from an exported graph in any runtime, without PyTorch.

    The numpy side (preprocessing, batching, calibration, decisions) is the same for every runtime;
    the runtime (:mod:`ssfilter.inference.runtimes`) only executes the graph. :func:`load_predictor`
    picks the runtime from the file's suffix.

    Args:
        runtime: The loaded graph (e.g. :class:`~ssfilter.inference.runtimes.OnnxRuntimeSession`).
        path: The exported file (for messages).
        threshold: Raw image threshold overriding the embedded calibration's.

    Raises:
        ValueError: when the file has no ssfilter metadata.
    """

    def __init__(
        self, runtime: Runtime, path: str | os.PathLike[str], *, threshold: float | None = None
    ) -> None:
        self.path = Path(path)
        self.runtime = runtime
        self.metadata = decode_metadata(runtime.metadata)
        missing = [k for k in ("crop", "resize", "eval_size") if k not in self.metadata]
        if missing:
            raise ValueError(f"{self.path} is not an ssfilter export (metadata lacks {', '.join(missing)})")
        version = int(self.metadata.get("ssfilter_export_format", 1))
        if version > EXPORT_FORMAT:
            raise ValueError(
                f"{self.path} was exported by a newer ssfilter (export format {version}, this one reads "
                f"up to {EXPORT_FORMAT}): upgrade ssfilter to run it"
            )
        self.crop: int = self.metadata["crop"]
        self.resize: int = self.metadata["resize"]
        self.eval_size: int = self.metadata["eval_size"]
        #: How a tiled run's images are cut (``None``: the graph scores whole inputs).
        self.tiles: TileSettings | None = TileSettings.from_metadata(self.metadata)
        #: Side of the graph's own maps: the tile's for a tiled run (stitched here), else ``eval_size``.
        self.map_size: int = int(self.metadata.get("tile_map_size", self.eval_size))
        #: Fixed batch size of the graph, or ``None`` when its batch axis is dynamic.
        self.fixed_batch: int | None = runtime.fixed_batch
        raw_cal = self.metadata.get("calibration")
        cal = Calibration.from_dict(raw_cal, where=f"{self.path} metadata") if raw_cal else None
        if threshold is not None:
            if cal is None:
                raise CalibrationError(
                    "a threshold override needs the file's calibration for the heat-map scale"
                )
            cal = cal.with_threshold(threshold)
        self.calibration: Calibration | None = cal

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The graph input for one RGB image (see :func:`preprocess`).

        Args:
            image: An RGB image.
        """
        return preprocess(image, self.resize, self.crop)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's raw scores ``[N]`` and maps ``[N, M, M]`` of ``[N, 3, crop, crop]`` inputs.

        ``M`` is :attr:`map_size` (``eval_size``, or the tile's side for a tiled run, whose inputs are
        tiles: use :meth:`score_images` for whole images).

        Args:
            images: float32 inputs in [0, 1] (see :meth:`preprocess`).
        """
        x = np.ascontiguousarray(images, dtype=np.float32)
        n = len(x)
        if n == 0:
            return np.zeros(0, np.float32), np.zeros((0, self.map_size, self.map_size), np.float32)
        step = self.fixed_batch or n
        scores, maps = [], []
        for start in range(0, n, step):
            chunk = x[start : start + step]
            valid = len(chunk)
            if self.fixed_batch is not None and valid < step:  # pad a fixed-size graph's last batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - valid, axis=0)])
            m, s = self.runtime.run(chunk)
            maps.append(m[:valid, 0])
            scores.append(s[:valid])
        return np.concatenate(scores), np.concatenate(maps)

    def score_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``[B]`` and maps ``[B, S, S]`` (``S = eval_size``) of decoded RGB images.

        A plain export runs the images as one batch; a tiled one scores each image's tiles and stitches
        their maps (:mod:`ssfilter.inference.exported_tiles`).

        Args:
            images: Decoded RGB images.
        """
        if not images:
            return np.zeros(0, np.float32), np.zeros((0, self.eval_size, self.eval_size), np.float32)
        if self.tiles is None:
            return self.run(np.stack([self.preprocess(image) for image in images]))
        scores, maps = [], []
        for image in images:
            grid, tiles = self.tiles.cut(image)
            full_map, score = stitched_outputs(grid, self.run(tiles)[1], self.eval_size)
            scores.append(score)
            maps.append(full_map)
        return np.asarray(scores, dtype=np.float32), np.stack(maps)

    def predict_raw(
        self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 8
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores ``[N]`` and maps ``[N, S, S]`` of image files; raises on an unreadable file.

        Args:
            paths: Image files.
            batch_size: Images per runtime call.
        """
        scores, maps = [], []
        files = list(paths)
        for start in range(0, len(files), max(1, batch_size)):
            s, m = self.score_images([read_image(p) for p in files[start : start + batch_size]])
            scores.append(s)
            maps.append(m)
        if not scores:
            return self.score_images([])
        return np.concatenate(scores), np.concatenate(maps)

    def predict(
        self, inputs: Iterable[str | os.PathLike[str]], batch_size: int = 8
    ) -> tuple[list[Prediction], list[Skipped]]:
        """Predict image files and folders (searched recursively): scores, labels and maps.

        Args:
            inputs: Image files or folders.
            batch_size: Images per runtime call.

        Returns:
            ``(predictions, skipped)``: one :class:`~ssfilter.inference.prediction.Prediction` per
            readable image, and the inputs that could not be read (missing or broken files), with the
            reason.

        Raises:
            CalibrationError: when the file carries no calibration (export it from a calibrated run).
        """
        self._require_calibration()
        files, skipped = _expand(inputs)
        results: list[Prediction] = []
        for start in range(0, len(files), max(1, batch_size)):
            names, images = [], []
            for path in files[start : start + batch_size]:
                try:
                    images.append(read_image(path))
                except ImageReadError as err:
                    skipped.append(Skipped(str(path), err.reason))
                    continue
                names.append(str(path))
            results.extend(self.predict_images(images, names, batch_size=batch_size))
        return results, skipped

    def predict_images(
        self, images: Sequence[Image.Image], names: Sequence[str], *, batch_size: int = 8
    ) -> list[Prediction]:
        """Predictions of images already decoded in memory (e.g. uploads to ``ssfilter serve``).

        Args:
            images: Decoded RGB images (see :func:`~ssfilter.data.images.decode_image`).
            names: What each prediction's ``path`` records (e.g. the uploaded file names).
            batch_size: Images per ONNX Runtime call.

        Raises:
            CalibrationError: when the file carries no calibration.
        """
        cal = self._require_calibration()
        if len(images) != len(names):
            raise ValueError(f"got {len(images)} images but {len(names)} names")
        results: list[Prediction] = []
        step = max(1, batch_size)
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            scores, maps = self.score_images(chunk)
            sizes = [image.size for image in chunk]
            results.extend(
                decide(
                    cal,
                    list(names[start : start + step]),
                    sizes,
                    scores,
                    maps,
                    resize=self.resize,
                    crop=self.crop,
                )
            )
        return results

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            raise CalibrationError(
                f"{self.path} has no embedded calibration: use predict_raw(), or re-export it from a run "
                "with calibration.json (`ssfilter calibrate --run RUN`)"
            )
        return self.calibration


class OnnxPredictor(ExportedPredictor):
    """Scores, OK/NG labels and heat-maps from an exported ``.onnx`` file, without PyTorch.

    Args:
        path: File written by :func:`ssfilter.inference.export.export_onnx` (or ``ssfilter export``).
        providers: ONNX Runtime execution providers (default: CPU).
        threads: Intra-op threads (default: ONNX Runtime's choice).
        threshold: Raw image threshold overriding the embedded calibration's.

    Raises:
        ValueError: when the file has no ssfilter metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        threshold: float | None = None,
    ) -> None:
        runtime = OnnxRuntimeSession(path, providers=providers, threads=threads)
        super().__init__(runtime, path, threshold=threshold)
        #: The ONNX Runtime ``InferenceSession``.
        self.session = runtime.session
        self.input_name: str = runtime.input_name


class OpenVinoPredictor(ExportedPredictor):
    """Scores, OK/NG labels and heat-maps from an OpenVINO IR export (``.xml``), without PyTorch.

    The model is compiled with the ``INFERENCE_PRECISION_HINT`` its export was parity-checked with
    (recorded in the file, ``f32``): OpenVINO's CPU plug-in would otherwise pick bf16/f16 where the CPU
    has it, with score differences far beyond the export's tolerance.

    Args:
        path: The ``.xml`` written by :func:`ssfilter.inference.openvino_export.export_openvino`.
        device: OpenVINO device (default ``CPU``).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).
        threshold: Raw image threshold overriding the embedded calibration's.

    Raises:
        ValueError: when the file has no ssfilter metadata.
        MissingExtraError: when openvino is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "CPU",
        threads: int | None = None,
        threshold: float | None = None,
    ) -> None:
        runtime = OpenVinoRuntime(path, device=device, threads=threads)
        super().__init__(runtime, path, threshold=threshold)
        #: The ``INFERENCE_PRECISION_HINT`` the model was compiled with.
        self.precision: str = runtime.precision


def load_predictor(
    path: str | os.PathLike[str], *, threads: int | None = None, threshold: float | None = None
) -> ExportedPredictor:
    """A torch-free predictor of an exported file, its runtime chosen by suffix (``.onnx``, ``.xml``).

    Args:
        path: The exported file.
        threads: Inference threads (default: the runtime's choice).
        threshold: Raw image threshold overriding the embedded calibration's.

    Raises:
        ValueError: for an unknown suffix or a file without ssfilter metadata.
    """
    return ExportedPredictor(open_runtime(path, threads=threads), path, threshold=threshold)


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded ssfilter metadata of any exported file (``.onnx`` or OpenVINO ``.xml``).

    Args:
        path: The exported file.
    """
    return decode_metadata(read_metadata(path))


def _expand(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Skipped]]:
    """Image files of the inputs (folders searched recursively) and the inputs that do not exist."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(scan_images(path))
        elif path.is_file():
            files.append(path)
        else:
            skipped.append(Skipped(str(path), "file not found"))
    return files, skipped
