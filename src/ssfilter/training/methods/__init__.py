"""Training methods behind one protocol, chosen by name (``cfg.train.method``, the CLI's ``--method``).

A method is a :class:`TrainingMethod` subclass registered with ``@register_method("name")``:

- ``ssfilter`` (:mod:`.ssfilter`): the in-batch filter selects the images to train on and restoration
  adds synthetic anomalies (the paper's method, the default);
- ``dinomaly`` (:mod:`.dinomaly`): plain Dinomaly, every image trained on.

Adding a method: a new module here with a :class:`TrainingMethod` subclass decorated with
``@register_method("name")`` (its :meth:`~TrainingMethod.step`, and :meth:`~TrainingMethod.checkpoint` /
:meth:`~TrainingMethod.restore` when it has state or logs), plus its line in
:data:`~ssfilter.training.methods.registry.BUILTIN_METHODS`; the trainer and the CLI pick it up from
there. A method defined outside the package only needs the decorator.

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
