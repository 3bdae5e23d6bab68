"""The registry of training methods: ``@register_method(name)`` fills it, ``get_method(name)`` reads it.

Built-in methods are listed by name and module in :data:`BUILTIN_METHODS` and imported on first use,
so that listing the names (the CLI's ``--method`` choices) does not load torch. A method defined
elsewhere (a plugin, a test) is available once its module has run ``@register_method``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ssfilter.errors import SSFilterError

if TYPE_CHECKING:
    from ssfilter.training.methods.base import TrainingMethod

__all__ = [
    "BUILTIN_METHODS",
    "UnknownMethodError",
    "get_method",
    "list_methods",
    "register_method",
    "unregister_method",
]

_MethodClass = TypeVar("_MethodClass", bound="type[TrainingMethod]")

#: Built-in methods: name -> the module that registers it. Adding one is a new module in this package
#: plus its line here (in the order the CLI lists them).
BUILTIN_METHODS: dict[str, str] = {
    "ssfilter": "ssfilter.training.methods.ssfilter",
    "dinomaly": "ssfilter.training.methods.dinomaly",
}

_REGISTRY: dict[str, type[TrainingMethod]] = {}


class UnknownMethodError(SSFilterError, ValueError):
    """No training method is registered under the requested name."""


def register_method(name: str) -> Callable[[_MethodClass], _MethodClass]:
    """Class decorator: register a :class:`TrainingMethod` subclass as ``name`` (``cfg.train.method``).

    Args:
        name: The method's name; a built-in name may only be registered by its own module.

    Raises:
        ValueError: ``name`` is empty, belongs to a built-in method, or is taken by another class.
    """
    if not name or not name.strip():
        raise ValueError("a training method needs a non-empty name")

    def decorate(cls: _MethodClass) -> _MethodClass:
        module = BUILTIN_METHODS.get(name)
        if module is not None and cls.__module__ != module:
            raise ValueError(f"{name!r} is a built-in training method (defined in {module})")
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(
                f"training method {name!r} is already registered ({old.__module__}.{old.__qualname__})"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (not a built-in); unknown names are ignored."""
    if name in BUILTIN_METHODS:
        raise ValueError(f"{name!r} is a built-in training method and cannot be removed")
    _REGISTRY.pop(name, None)


def list_methods() -> tuple[str, ...]:
    """Names of every training method: the built-in ones first, then those registered since (no imports)."""
    return tuple(dict.fromkeys([*BUILTIN_METHODS, *_REGISTRY]))


def get_method(name: str) -> type[TrainingMethod]:
    """The method class registered as ``name`` (a built-in module is imported on first use).

    Raises:
        UnknownMethodError: No method has that name; the message lists the known ones.
    """
    if name not in _REGISTRY and name in BUILTIN_METHODS:
        importlib.import_module(BUILTIN_METHODS[name])
        if name not in _REGISTRY:
            raise RuntimeError(f"{BUILTIN_METHODS[name]} does not register the training method {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of {', '.join(list_methods())}"
        ) from None
