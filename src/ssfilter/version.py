"""The package version, in a module of its own so that any layer can record it without importing the API."""

from __future__ import annotations

__all__ = ["VERSION"]

#: The one source of the version: pyproject.toml reads it from here.
VERSION = "0.1.0"
