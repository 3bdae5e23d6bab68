"""The model back ends that ``ssfilter serve`` can run, chosen by name through one registry.

A :class:`Backend` is a loaded predictor seen through the few things a server needs: predictions of
decoded images (:meth:`Backend.predict`), the preprocessing geometry (to map heat-maps back onto the
original image) and what ``GET /info`` reports. Each kind is one :class:`BackendSpec` in
:data:`BACKENDS`: its name, the ``ssfilter serve`` option that selects it and a loader. Adding one (e.g.
an OpenVINO file) is one more :func:`register_backend` call with a loader; the CLI builds its options
from this table and the server never asks which kind it runs.

This module imports neither torch nor a web framework: each loader imports its predictor when called,
so ``serve --onnx`` runs without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ssfilter.version import VERSION

if TYPE_CHECKING:
    from PIL import Image

    from ssfilter.inference.calibration import Calibration
    from ssfilter.inference.prediction import Prediction

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendSpec",
    "ImagePredictor",
    "exported_file_backend",
    "load_backend",
    "register_backend",
]


class ImagePredictor(Protocol):
    """What a back end's predictor offers: decisions on decoded images and its calibration."""

    calibration: Calibration | None

    def predict_images(self, images: Sequence[Image.Image], names: Sequence[str]) -> list[Prediction]:
        """One prediction per image."""
        ...


@dataclass
class Backend:
    """A loaded model, ready to serve.

    Attributes:
        name: The registry name (``"torch"``, ``"onnx"``, ...).
        source: The run folder or model file it was loaded from.
        predictor: The predictor (``predict_images`` and ``calibration``).
        resize: The run's ``data.resize`` (heat-maps back to original geometry).
        crop: The run's ``data.crop``.
        config: What ``/info`` shows of the model's configuration (run config or file metadata).
    """

    name: str
    source: str
    predictor: ImagePredictor
    resize: int
    crop: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> Calibration:
        """The calibration in use (every served back end has one: loaders refuse a model without)."""
        cal = self.predictor.calibration
        assert cal is not None, "loaders refuse uncalibrated models"
        return cal

    def predict(self, images: Sequence[Image.Image], names: Sequence[str]) -> list[Prediction]:
        """One :class:`~ssfilter.inference.prediction.Prediction` per decoded RGB image.

        Args:
            images: Decoded images.
            names: What each prediction's ``path`` records.
        """
        return self.predictor.predict_images(images, names)

    def info(self) -> dict[str, Any]:
        """The JSON of ``GET /info``: back end, source, version, geometry, calibration and config."""
        cal = self.calibration
        return {
            "version": VERSION,
            "backend": self.name,
            "source": self.source,
            "resize": self.resize,
            "crop": self.crop,
            "threshold": cal.image_threshold,
            "pixel_threshold": cal.pixel_threshold,
            "calibration": cal.to_dict(),
            "config": self.config,
        }


#: ``loader(source, device=..., threshold=...)`` returning a :class:`Backend`.
Loader = Callable[..., Backend]


@dataclass(frozen=True)
class BackendSpec:
    """One kind of back end.

    Attributes:
        name: Registry key, also what ``/info`` reports.
        option: The ``ssfilter serve`` option that selects it, e.g. ``"--onnx"``.
        metavar: That option's value in ``--help`` (``RUN``, ``FILE``).
        help: One line for ``--help``.
        load: ``load(source, *, device, threshold)`` -> :class:`Backend`.
    """

    name: str
    option: str
    metavar: str
    help: str
    load: Loader


#: Every known back end by name, in the order ``ssfilter serve --help`` lists them.
BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a back end to :data:`BACKENDS` (a name or option used twice is an error).

    Args:
        spec: The back end's description and loader.
    """
    if spec.name in BACKENDS or any(s.option == spec.option for s in BACKENDS.values()):
        raise ValueError(f"backend {spec.name!r} ({spec.option}) is already registered")
    BACKENDS[spec.name] = spec
    return spec


def load_backend(
    name: str, source: str | Path, *, device: str = "auto", threshold: float | None = None
) -> Backend:
    """Load a model for serving with the named back end.

    Args:
        name: A key of :data:`BACKENDS`.
        source: Run folder or model file.
        device: Device for back ends that choose one (torch: ``auto``, ``cpu``, ``cuda``).
        threshold: Raw image threshold overriding the calibrated one.

    Raises:
        ValueError: for an unknown back end name.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name].load(str(source), device=device, threshold=threshold)


def _load_torch(source: str, *, device: str = "auto", threshold: float | None = None) -> Backend:
    """A run folder through the PyTorch :class:`~ssfilter.inference.predictor.Predictor`."""
    from ssfilter.inference.predictor import Predictor

    predictor = Predictor.load(source, device, threshold=threshold)
    cfg = predictor.cfg
    return Backend(
        "torch",
        str(source),
        predictor,
        cfg.data.resize,
        cfg.data.crop,
        {**cfg.to_dict(), "device": str(predictor.device)},
    )


def exported_file_backend(name: str, source: str, predictor: Any) -> Backend:
    """A :class:`Backend` around a predictor of an exported file (``OnnxPredictor`` and its kin).

    Such predictors carry ``resize``, ``crop``, ``metadata`` and ``calibration``; the metadata (without
    the calibration, which ``/info`` shows on its own) becomes the reported config.

    Args:
        name: The back end's registry name.
        source: The model file.
        predictor: The loaded predictor.

    Raises:
        CalibrationError: when the file carries no calibration (it could not decide OK/NG).
    """
    from ssfilter.errors import CalibrationError

    if predictor.calibration is None:
        raise CalibrationError(
            f"{source} has no embedded calibration; re-export it from a calibrated run "
            "(`ssfilter calibrate --run RUN`, then `ssfilter export`)"
        )
    meta = {k: v for k, v in predictor.metadata.items() if k != "calibration"}
    return Backend(name, str(source), predictor, int(predictor.resize), int(predictor.crop), meta)


def _load_onnx(source: str, *, device: str = "auto", threshold: float | None = None) -> Backend:
    """An exported ``.onnx`` file through the torch-free ONNX Runtime predictor (CPU)."""
    del device  # ONNX Runtime on the CPU provider
    from ssfilter.inference.onnx_predictor import OnnxPredictor

    if not Path(source).is_file():
        raise FileNotFoundError(f"ONNX file '{source}' does not exist")
    return exported_file_backend("onnx", source, OnnxPredictor(source, threshold=threshold))


def _load_openvino(source: str, *, device: str = "auto", threshold: float | None = None) -> Backend:
    """An exported OpenVINO IR (``.xml`` + ``.bin``) through the torch-free OpenVINO predictor (CPU, f32)."""
    del device  # the CPU plug-in, at the precision the export was checked with
    from ssfilter.inference.onnx_predictor import OpenVinoPredictor

    if not Path(source).is_file():
        raise FileNotFoundError(f"OpenVINO file '{source}' does not exist")
    return exported_file_backend("openvino", source, OpenVinoPredictor(source, threshold=threshold))


register_backend(
    BackendSpec("torch", "--run", "RUN", "trained, calibrated run folder (PyTorch)", _load_torch)
)
register_backend(
    BackendSpec(
        "onnx", "--onnx", "FILE", "file from `ssfilter export` (ONNX Runtime, no torch needed)", _load_onnx
    )
)
register_backend(
    BackendSpec(
        "openvino",
        "--openvino",
        "FILE",
        "file from `ssfilter export --format openvino` (.xml; OpenVINO, no torch needed)",
        _load_openvino,
    )
)
