"""Comparison baselines (PatchCore, SoftPatch), one module each, found by name in a registry.

Each import line below registers one baseline (its class carries ``@register_baseline("name")``); adding a
baseline is its module plus one line here. Look baselines up with :func:`build_baseline` /
:func:`baseline_names`.
"""

from ssfilter.baselines import patchcore as patchcore  # registers "patchcore"
from ssfilter.baselines import softpatch as softpatch  # registers "softpatch"
from ssfilter.baselines.registry import Baseline, baseline_names, build_baseline, register_baseline

__all__ = ["Baseline", "baseline_names", "build_baseline", "register_baseline"]
