"""The registry of export formats: name -> file suffix, runtime, optional extra and exporter.

The exporters import torch, so the registry holds each exporter as ``"module:function"`` and imports it
only when used: ``ssfilter --help`` and ``ssfilter export --help`` list the formats without loading torch.
Adding a format is one exporter function plus one :func:`register_export_format` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssfilter.errors import SSFilterError

__all__ = [
    "ExportFormat",
    "UnknownExportFormatError",
    "export_format_names",
    "get_export_format",
    "register_export_format",
]


class UnknownExportFormatError(SSFilterError, ValueError):
    """No exporter is registered under the requested format name (the message lists the formats)."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: The ``--format`` name.
        suffix: The suffix of the file the exporter writes (``--out``).
        runtime: The runtime its parity gate checks and its predictor runs.
        extra: The ``ssfilter[extra]`` that installs what it needs.
        exporter: ``"module:function"`` of the exporter, called as ``function(source, path, **options)``.
        description: One line for ``--help``.
    """

    name: str
    suffix: str
    runtime: str
    extra: str
    exporter: str
    description: str

    def load(self) -> Callable[..., Path]:
        """The exporter function (imports its module, and so torch)."""
        module, _, function = self.exporter.partition(":")
        return getattr(importlib.import_module(module), function)


_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(fmt: ExportFormat) -> None:
    """Make ``fmt`` available under ``fmt.name`` (replacing a format of that name)."""
    _FORMATS[fmt.name.lower()] = fmt


def export_format_names() -> list[str]:
    """The registered format names, sorted."""
    return sorted(_FORMATS)


def get_export_format(name: str) -> ExportFormat:
    """The format registered as ``name`` (case-insensitive).

    Raises:
        UnknownExportFormatError: for an unregistered name; the message lists the registered ones.
    """
    fmt = _FORMATS.get(str(name).lower())
    if fmt is None:
        names = [repr(n) for n in export_format_names()]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "is" if len(names) == 1 else "are"
        raise UnknownExportFormatError(f"unsupported export format {name!r}; only {listed} {verb} available")
    return fmt


register_export_format(
    ExportFormat(
        name="onnx",
        suffix=".onnx",
        runtime="ONNX Runtime",
        extra="onnx",
        exporter="ssfilter.inference.export:export_onnx",
        description="one .onnx file; run it with ONNX Runtime (OnnxPredictor)",
    )
)
register_export_format(
    ExportFormat(
        name="openvino",
        suffix=".xml",
        runtime="OpenVINO",
        extra="openvino",
        exporter="ssfilter.inference.openvino_export:export_openvino",
        description="OpenVINO IR (.xml + .bin), float32 weights, run at INFERENCE_PRECISION_HINT=f32 "
        "(OpenVinoPredictor)",
    )
)
