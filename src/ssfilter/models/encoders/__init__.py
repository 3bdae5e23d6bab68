"""Frozen feature encoders behind one interface, chosen by name from a registry (SPEC §10).

- :mod:`~ssfilter.models.encoders.base`: :class:`EncoderFeatures` and the abstract :class:`Encoder`, whose
  methods and attributes (``prefers_channels_last``, ``pooled_descriptors``, ...) answer what callers
  need to know about a backbone.
- :mod:`~ssfilter.models.encoders.registry`: :func:`register_encoder`, :func:`build_encoder`,
  :func:`list_encoders` / :data:`BACKBONES`, :func:`encoder_entry`, :func:`identify_weights`.
- :mod:`~ssfilter.models.encoders.weights`: reading local weight files, offline checks, hub downloads.
- :mod:`~ssfilter.models.encoders.vit`: DINOv2 with registers (S/B/L) and the tiny test ViT.
- :mod:`~ssfilter.models.encoders.cnn`: :class:`CNNEncoder` and MobileNetV2.

To add a backbone, add a module here with a builder decorated by :func:`register_encoder` (or one such
builder in an existing module); this package imports all its modules, so nothing else changes.
"""

from __future__ import annotations

from ssfilter.models.encoders.base import Encoder, EncoderFeatures
from ssfilter.models.encoders.cnn import CNNEncoder
from ssfilter.models.encoders.registry import (
    BACKBONES,
    EncoderEntry,
    UnknownEncoderError,
    build_encoder,
    encoder_entry,
    identify_weights,
    import_submodules,
    list_encoders,
    register_encoder,
)
from ssfilter.models.encoders.vit import ViTEncoder

__all__ = [
    "BACKBONES",
    "CNNEncoder",
    "Encoder",
    "EncoderEntry",
    "EncoderFeatures",
    "UnknownEncoderError",
    "ViTEncoder",
    "build_encoder",
    "encoder_entry",
    "identify_weights",
    "list_encoders",
    "register_encoder",
]

import_submodules(__name__)
