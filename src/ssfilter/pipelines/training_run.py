"""Train one run folder end to end: samples, training, data record, filter summary, calibration.

This is the wiring behind ``Detector.fit`` at the pipelines layer, so that pipelines (the demo) can train a
run folder without importing the API on top of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ssfilter.config import Config
from ssfilter.coverage import resolve_coverage
from ssfilter.data.datasets import Sample
from ssfilter.data.formats import get_format, resolve_category
from ssfilter.data.validation import prepare_training_samples
from ssfilter.errors import RunExistsError
from ssfilter.runfolder import (
    FILTER_LOG_FILE,
    MODEL_FILE,
    NOISE_SPLIT_FILE,
    STATE_FILE,
    write_data_record,
)
from ssfilter.runtime.distributed import is_main_process
from ssfilter.training.filter_log import write_filter_summary
from ssfilter.training.trainer import Trainer, TrainResult

__all__ = ["fit_run", "fit_samples"]

log = logging.getLogger(__name__)


def fit_run(
    cfg: Config,
    data: str | Path,
    run: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    noise: float | None = None,
    overlap: bool = False,
    noise_seed: int = 0,
    data_format: str | None = None,
) -> TrainResult:
    """Train on the images under ``data`` and write the run folder ``run`` (what ``Detector.fit`` does).

    Args:
        cfg: The run's configuration.
        data: One data-set category (MVTec AD, VisA, Real-IAD; see :mod:`ssfilter.data.formats`) or any
            folder of images.
        run: Run folder. An existing finished run is never overwritten unless ``overwrite``.
        resume: Continue from the run's last checkpoint.
        overwrite: Allow replacing a finished run.
        progress: Show progress bars.
        stop_after: Stop after this many iterations (tests of interruption).
        noise: Noise ratio of the format's protocol: SoftPatch injection of anomalous test images (MVTec AD,
            VisA), the official FUIAD list (Real-IAD).
        overlap: Keep the injected images in the test set too (the hard setting).
        noise_seed: Seed of the injected selection.
        data_format: Read ``data`` as this format (``--format``) instead of detecting it.

    Raises:
        RunExistsError: ``run`` holds a trained model and neither ``resume`` nor ``overwrite`` is set.
    """
    run = Path(run)
    if (run / MODEL_FILE).exists() and not resume and not overwrite:
        raise RunExistsError(
            f"{run} already holds a trained model; pass --resume to continue it or --overwrite to replace it"
        )
    # Under torchrun every process trains; only rank 0 writes run files (is_main_process).
    main = is_main_process()
    if overwrite and not resume and main:
        (run / STATE_FILE).unlink(missing_ok=True)
    if resume and (run / NOISE_SPLIT_FILE).is_file():
        from ssfilter.data.noise import NoiseSplit

        saved = NoiseSplit.load(run / NOISE_SPLIT_FILE)
        noise, overlap, noise_seed = saved.alpha, saved.overlap, saved.seed
    samples, _ = prepare_training_samples(
        data,
        run if main else None,
        noise=noise,
        overlap=overlap,
        noise_seed=noise_seed,
        data_format=data_format,
    )
    return fit_samples(
        cfg,
        samples,
        run,
        data,
        resume=resume,
        progress=progress,
        stop_after=stop_after,
        data_format=data_format,
    )


def fit_samples(
    cfg: Config,
    samples: Sequence[Sample],
    run: Path,
    data: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    data_format: str | None = None,
) -> TrainResult:
    """Train on ready ``samples`` into ``run``; record ``data``, summarise the filter, calibrate.

    The second half of :func:`fit_run`, also used to train one model on the union of several categories
    (``--unified``). ``samples`` are readable already (see
    :func:`~ssfilter.data.validation.prepare_training_samples`).
    """
    # A resumed run keeps the coverage saved with it; "auto" there is a run from before the setting,
    # which was trained with the centre crop.
    cfg = resolve_coverage(cfg, "crop" if resume else _format_coverage(data, data_format))
    if cfg.data.coverage == "whole" and not resume:
        log.info("whole image: resized to %d x %d, no border cropped", cfg.data.crop, cfg.data.crop)
    result = Trainer(cfg, list(samples), run, progress=progress, stop_after=stop_after).fit(resume=resume)
    if not is_main_process():
        return result
    write_data_record(run, data, len(samples), data_format)
    finished = result.iterations == cfg.train.iters
    if (run / FILTER_LOG_FILE).is_file() and finished:
        write_filter_summary(run)
    log.info("trained %d iterations in %.1fs", result.iterations, result.seconds)
    if cfg.calibration.after_training and finished:
        _calibrate(cfg, run, [s.path for s in samples], progress)
    return result


def _format_coverage(data: str | Path, data_format: str | None) -> str:
    """What ``data.coverage = "auto"`` means for ``data``: its format's convention."""
    if data_format is not None:
        return get_format(data_format).coverage
    return resolve_category(data).handler.coverage


def _calibrate(cfg: Config, run: Path, paths: list[str], progress: bool) -> None:
    """Calibrate the finished run on its own (unlabelled) training images; write ``calibration.json``."""
    from ssfilter.inference.predictor import Predictor
    from ssfilter.runtime.device import resolve_device
    from ssfilter.training.checkpoint import load_run

    _, model = load_run(run, resolve_device(cfg.train.device))
    cal = Predictor(model, cfg, None, run_dir=run).calibrate_unlabelled(paths, progress=progress)
    cal.save(run)
    log.info("calibration: %s", cal.rule)
