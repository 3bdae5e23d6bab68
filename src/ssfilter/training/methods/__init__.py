"""Training methods behind one protocol, chosen by name (``cfg.train.method``, the CLI's ``--method``).

A method is a :class:`TrainingMethod` subclass registered with ``@register_method("name")``:

- ``ssfilter`` (:mod:`.ssfilter`): the in-batch filter selects the images to train on and restoration
  adds synthetic anomalies (the paper's method, the default);
- ``dinomaly`` (:mod:`.dinomaly`): plain Dinomaly, every image trained on.

This package imports nothing heavy: listing the names does not load torch.
"""

from __future__ import annotations

from ssfilter.training.methods.base import MethodState, StepBatch, StepModel, TrainingMethod
from ssfilter.training.methods.registry import (
    BUILTIN_METHODS,
    UnknownMethodError,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "BUILTIN_METHODS",
    "MethodState",
    "StepBatch",
    "StepModel",
    "TrainingMethod",
    "UnknownMethodError",
    "get_method",
    "list_methods",
    "register_method",
    "unregister_method",
]
