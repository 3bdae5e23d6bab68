"""The benchmark's method registry: what ``--methods`` may name and how each method is run.

A method trains or fits on a training list and returns the SPEC §8 metrics on the test list:

* every other training method (:mod:`ssfilter.training.methods`: ``dinomaly``, ...), trained on the list and
  evaluated with :func:`~ssfilter.evaluation.evaluate.evaluate_model`;
* ``ssfilter``: the SSFilter run that the benchmark trains once per noise level and shares with the
  dataset-level filter; ``ssfilter+filter`` is a second pass: a fresh SSFilter run trained on the images
  that the shared run's filter kept;
* every registered baseline (:mod:`ssfilter.baselines`: ``patchcore``, ``softpatch``, ...), fitted
  with its defaults on the run's encoder and evaluated with
  :func:`~ssfilter.evaluation.evaluate.evaluate_baseline`. A new baseline appears here by itself.

Any method that allows it takes the suffix ``+filter``: the same method, trained on the images that the
shared SSFilter run's dataset-level filter kept (paper §3.6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssfilter.config import Config
from ssfilter.data.datasets import Sample

__all__ = [
    "FILTER_SUFFIX",
    "Method",
    "MethodContext",
    "Metrics",
    "base_method",
    "method_registry",
    "method_names",
    "parse_methods",
    "train_run",
]

#: Suffix of a method trained on the dataset-level filter's kept images.
FILTER_SUFFIX = "+filter"

Metrics = dict[str, float | None]


@dataclass
class MethodContext:
    """What every method of one noise level shares.

    Attributes:
        cfg: Configuration shared by all methods.
        test: Test samples.
        folder: The noise level's folder (one sub-folder per trained run).
        progress: Show progress bars.
        resume: Continue unfinished training runs from their checkpoints.
        ssfilter_model: The shared SSFilter model, once trained (see :class:`Method.needs_ssfilter_run`).
        ssfilter_seconds: Wall time of training it.
        ssfilter_in_batch: Its in-batch filter summary (``filter_summary.json``), once trained.
    """

    cfg: Config
    test: Sequence[Sample]
    folder: Path
    progress: bool = True
    resume: bool = False
    ssfilter_model: Any = field(default=None, repr=False)
    ssfilter_seconds: float = 0.0
    ssfilter_in_batch: dict[str, Any] | None = None


@dataclass(frozen=True)
class Method:
    """One benchmark method.

    Attributes:
        name: The name ``--methods`` uses.
        run: ``run(ctx, train_samples, run_dir) -> metrics``.
        needs_ssfilter_run: The method uses the shared SSFilter run (whose training time its row counts).
        refit: How ``name+filter`` trains on the kept images, where ``run`` does not train (``ssfilter``
            evaluates the shared run); ``None``: ``run`` on the kept images.
    """

    name: str
    run: Callable[[MethodContext, Sequence[Sample], Path], Metrics]
    needs_ssfilter_run: bool = False
    refit: Callable[[MethodContext, Sequence[Sample], Path], Metrics] | None = None

    def runner(self, filtered: bool) -> Callable[[MethodContext, Sequence[Sample], Path], Metrics]:
        """What runs ``name`` (``filtered``: ``name+filter``, on the kept images)."""
        return self.refit if filtered and self.refit is not None else self.run


def train_run(
    cfg: Config, method: str, samples: Sequence[Sample], run: Path, progress: bool, resume: bool
) -> Any:
    """Train ``method`` (``dinomaly`` / ``ssfilter``) on ``samples`` into ``run``; return the model.

    An SSFilter run also gets its ``filter_summary.json``, as ``ssfilter train`` writes it.
    """
    from ssfilter.runfolder import FILTER_LOG_FILE
    from ssfilter.training.checkpoint import load_model
    from ssfilter.training.filter_log import write_filter_summary
    from ssfilter.training.trainer import Trainer

    c = cfg.copy()
    c.train.method = method
    Trainer(c, samples, run, progress=progress).fit(resume=resume)
    if (run / FILTER_LOG_FILE).is_file():
        write_filter_summary(run)
    return load_model(run, c)


def _evaluate_model(model: Any, ctx: MethodContext) -> Metrics:
    from ssfilter.evaluation.evaluate import evaluate_model

    device = next(model.parameters()).device
    return evaluate_model(model, ctx.test, ctx.cfg, device=device, progress=ctx.progress).metrics


def _trained_runner(name: str) -> Callable[[MethodContext, Sequence[Sample], Path], Metrics]:
    """Runner of training method ``name``: train it on the samples in the run folder, evaluate it."""

    def run(ctx: MethodContext, samples: Sequence[Sample], run_dir: Path) -> Metrics:
        return _evaluate_model(train_run(ctx.cfg, name, samples, run_dir, ctx.progress, ctx.resume), ctx)

    return run


def _run_ssfilter(ctx: MethodContext, samples: Sequence[Sample], run: Path) -> Metrics:
    """Evaluate the shared SSFilter run (trained on the unfiltered set before the methods run)."""
    if ctx.ssfilter_model is None:
        raise RuntimeError("the shared SSFilter run has not been trained")
    return _evaluate_model(ctx.ssfilter_model, ctx)


def _baseline_runner(name: str) -> Callable[[MethodContext, Sequence[Sample], Path], Metrics]:
    """Runner of registered baseline ``name``: fit with its defaults on the run's encoder, evaluate."""

    def run(ctx: MethodContext, samples: Sequence[Sample], run_dir: Path) -> Metrics:
        from ssfilter.baselines import build_baseline
        from ssfilter.baselines.fitting import fit_on_samples
        from ssfilter.evaluation.evaluate import evaluate_baseline
        from ssfilter.models.encoders import build_encoder
        from ssfilter.runtime.device import resolve_device

        cfg = ctx.cfg
        device = resolve_device(cfg.train.device)
        encoder = build_encoder(cfg.model.backbone, cfg.model.weights, allow_random=cfg.model.random_init)
        model = build_baseline(name, encoder, cfg.data.crop)
        fit_on_samples(model, samples, cfg.data, device=device, progress=ctx.progress)
        return evaluate_baseline(model, ctx.test, cfg.data, device=device, progress=ctx.progress).metrics

    return run


def method_registry() -> dict[str, Method]:
    """Every benchmark method by name: the trained ones, then every registered baseline."""
    from ssfilter.baselines import baseline_names
    from ssfilter.training.methods import list_methods

    methods = [
        Method("ssfilter", _run_ssfilter, needs_ssfilter_run=True, refit=_trained_runner("ssfilter")),
        *(Method(name, _trained_runner(name)) for name in list_methods() if name != "ssfilter"),
        *(Method(name, _baseline_runner(name)) for name in baseline_names()),
    ]
    return {m.name: m for m in methods}


def method_names() -> list[str]:
    """Every valid ``--methods`` entry: the registered methods, then their ``+filter`` variants."""
    registry = method_registry()
    return [*registry, *(f"{name}{FILTER_SUFFIX}" for name in registry)]


def base_method(name: str) -> str:
    """``name`` without the ``+filter`` suffix."""
    return name.removesuffix(FILTER_SUFFIX)


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """Validate a method list such as ``"dinomaly,ssfilter,patchcore,softpatch+filter"``.

    Raises:
        ValueError: the list is empty or names an unknown method.
    """
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not items:
        raise ValueError("no methods given")
    allowed = method_names()
    for m in items:
        if m not in allowed:
            raise ValueError(f"unknown benchmark method {m!r}; choose from {', '.join(allowed)}")
    return items
