"""Every error ssfilter raises on purpose, under one base class.

A caller (the CLI, a service, a script) catches :class:`SSFilterError` to tell "ssfilter refused this
input, here is why" from a bug. Each subclass also keeps the built-in base it had before the common base
existed (``ValueError``, ``RuntimeError``, ...), so ``except ValueError`` around ssfilter calls still works.
The errors that carry data of their own module (``ImageReadError``, ``ExportParityError``) live there
and derive from :class:`SSFilterError` too. This module imports nothing from the package: every layer
may raise these.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "DeviceUnavailableError",
    "RunExistsError",
    "RunFormatError",
    "SSFilterError",
    "WeightsUnavailableError",
]


class SSFilterError(Exception):
    """Base of every error ssfilter raises on purpose; the CLI turns it into exit status 2."""


class WeightsUnavailableError(SSFilterError, RuntimeError):
    """Pretrained encoder weights are neither given as a file nor available offline."""


class DeviceUnavailableError(SSFilterError, RuntimeError):
    """The requested device does not exist on this machine."""


class RunFormatError(SSFilterError, RuntimeError):
    """A run folder is missing, incomplete, from an incompatible version or does not match the model."""


class RunExistsError(SSFilterError, FileExistsError):
    """The output folder already holds a run and neither ``--resume`` nor ``--overwrite`` was given."""


class CalibrationError(SSFilterError, ValueError):
    """A calibration cannot be computed, or a ``calibration.json`` is missing, malformed or too new."""
