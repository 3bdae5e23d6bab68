"""The Python API users script against.

Example:
    >>> from ssfilter import Detector
    >>> det = Detector("cpu-fast", backbone="mobilenet_v2", weights="mobilenet_v2_imagenet.safetensors")
    >>> det.fit("mvtec/bottle", out="runs/bottle")            # doctest: +SKIP
    >>> det.evaluate()["metrics"]["I-AUROC"]                  # doctest: +SKIP
    >>> det = Detector.load("runs/bottle")                    # doctest: +SKIP
    >>> scores, maps = det.predict(["new_part.png"])          # doctest: +SKIP
    >>> det.predict_files(["new_parts/"], out="pred").n_ng    # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ssfilter.config import Config, apply_overrides, get_preset, load_config, shortcut_overrides
from ssfilter.data.datasets import Sample
from ssfilter.data.formats import resolve_category
from ssfilter.data.images import Skipped
from ssfilter.data.validation import validate_samples
from ssfilter.errors import RunExistsError
from ssfilter.filtering.filter_outputs import summarize
from ssfilter.inference.run import load_run_folder
from ssfilter.io import atomic_write_json
from ssfilter.pipelines.filter_run import check_filter_destinations, filter_folder
from ssfilter.pipelines.run_data import run_test_samples, run_training_samples
from ssfilter.pipelines.training_run import fit_run
from ssfilter.runfolder import CALIBRATION_FILE, CONFIG_FILE, FILTER_JSON, read_data_format
from ssfilter.runtime.distributed import is_main_process
from ssfilter.training.checkpoint import build_model

if TYPE_CHECKING:
    from ssfilter.inference.calibration import Calibration
    from ssfilter.inference.outputs import PredictionReport
    from ssfilter.inference.predictor import Predictor

__all__ = [
    "Detector",
    "model_info",
]

log = logging.getLogger(__name__)


def _resolve_config(config: Config | str | Path | None) -> Config:
    if config is None:
        return get_preset("paper-448-392")
    if isinstance(config, Config):
        return config.copy()
    text = str(config)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_config(text)
    return get_preset(text)


class Detector:
    """Train, save, load, evaluate and apply an ssfilter model.

    Args:
        config: A :class:`Config`, a preset name or a YAML file (default ``paper-448-392``).
        **overrides: Shortcuts for common settings (``backbone``, ``weights``, ``iters``, ``batch_size``,
            ``device``, ``method``, ``seed``, ``coverage``) or dotted keys (``{"train.lr": 1e-3}``).
    """

    def __init__(self, config: Config | str | Path | None = None, **overrides: Any) -> None:
        self.config = _resolve_config(config)
        apply_overrides(self.config, shortcut_overrides(overrides))
        self.model = None
        self.run_dir: Path | None = None
        self.data: Path | None = None
        self.data_format: str | None = None

    # -- training -------------------------------------------------------------------------------

    def fit(
        self,
        data: str | Path,
        out: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        stop_after: int | None = None,
        noise: float | None = None,
        overlap: bool = False,
        noise_seed: int = 0,
        data_format: str | None = None,
    ) -> Detector:
        """Train on the images under ``data`` and write the run folder ``out``.

        Args:
            data: One category of an MVTec AD, VisA or Real-IAD data set, or any folder of images
                (detected, see :mod:`ssfilter.data.formats`).
            out: Run folder. An existing finished run is never overwritten unless ``overwrite``.
            resume: Continue from the run's last checkpoint.
            overwrite: Allow replacing a finished run.
            progress: Show progress bars.
            stop_after: Stop after this many iterations (tests of interruption).
            noise: Noise ratio: SoftPatch injection of anomalous test images (MVTec AD, VisA) or the
                official FUIAD list of that ratio (Real-IAD: 0.1, 0.2, 0.4).
            overlap: Keep the injected images in the test set too (the hard setting).
            noise_seed: Seed of the injected selection.
            data_format: Read ``data`` as this format (``mvtec``, ``visa``, ``realiad``, ``folder``).
        """
        fit_run(
            self.config,
            data,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            stop_after=stop_after,
            noise=noise,
            overlap=overlap,
            noise_seed=noise_seed,
            data_format=data_format,
        )
        self.run_dir, self.data, self.data_format = Path(out), Path(data), data_format
        self.model = None
        if (self.run_dir / CONFIG_FILE).is_file():  # the run's own config (data.coverage resolved)
            self.config = load_config(self.run_dir / CONFIG_FILE)
        return self

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> Detector:
        """Load a trained run folder (no network access, no original weights file needed).

        Its ``calibration.json`` is read when a command needs it (``predict_files``, ``export``).
        """
        run = load_run_folder(run_dir, device, calibration="skip")
        det = cls(run.config)
        det.model = run.model
        det.run_dir = run.path
        det.data = run.data
        det.data_format = read_data_format(run.path)
        return det

    def _ensure_model(self) -> Any:
        if self.model is None:
            if self.run_dir is None:
                raise RuntimeError("the detector has no trained model: call fit() or Detector.load() first")
            run = load_run_folder(self.run_dir, self.config.train.device, calibration="skip")
            self.model = run.model
        return self.model

    # -- evaluation and inference ---------------------------------------------------------------

    def evaluate(
        self,
        data: str | Path | None = None,
        *,
        out: str | Path | None = None,
        progress: bool = True,
        report: str | Path | None = None,
    ) -> dict:
        """Metrics on a labelled test split (default: the run's training category).

        Test images that cannot be decoded, or whose mask cannot be, are left out with a warning and
        listed under ``"skipped"`` (``[{"path", "reason"}]``); the metrics cover the other images.

        Args:
            data: A labelled category (MVTec AD, VisA, Real-IAD; default: the run's training category).
            out: JSON file to write the result to (atomically).
            progress: Show a progress bar.
            report: Folder to write an HTML report to (``report.html`` + ``report_assets/``): metric
                table, ROC and PRO curves, heat-maps of the best and worst test images.

        Returns:
            ``{"metrics": {...}, "n_test": int, "images": [...], "skipped": [...]}``.
        """
        from ssfilter.evaluation.evaluate import evaluate_model

        root = Path(data) if data is not None else self.data
        if root is None:
            raise ValueError(
                "no test data: pass data=... (an MVTec-layout folder with test/ and ground_truth/)"
            )
        model = self._ensure_model()
        samples, skipped = validate_samples(
            run_test_samples(self.run_dir, self.data, self.data_format, root), masks=True, what="test image"
        )
        if not samples:
            raise ValueError(f"no readable test images under {root} ({len(skipped)} skipped)")
        device = next(model.parameters()).device
        res = evaluate_model(model, samples, self.config, device=device, progress=progress)
        payload = res.to_json()
        payload["skipped"] = [{"path": s.path, "reason": s.reason} for s in skipped]
        if out is not None:
            atomic_write_json(out, payload)
        if report is not None:
            from ssfilter.reporting.evaluate_page import write_evaluate_report
            from ssfilter.reporting.examples import build_evaluate_report

            context = [(k, str(v)) for k, v in (("run", self.run_dir), ("test data", root)) if v is not None]
            content = build_evaluate_report(
                model, samples, self.config, res, device=device, run_dir=self.run_dir, context=context
            )
            log.info("report: %s", write_evaluate_report(report, content))
        return payload

    def filter(
        self,
        data: str | Path | None = None,
        out: str | Path = "filter_out",
        *,
        epochs: int | None = None,
        min_keep: int | None = None,
        export_clean: str | Path | None = None,
        progress: bool = True,
        overwrite: bool = False,
        quarantine: str | Path | None = None,
        dry_run: bool = False,
        uncertainty: str | None = None,
        pool: int | None = None,
        decision: str | None = None,
        outlier_k: float | None = None,
    ) -> dict[str, Any]:
        """Filter a whole training set with the trained model (paper §3.6).

        ``epochs`` (kappa_1) random epochs of the in-batch filter score every image; by default the
        estimated share of defective images is quarantined, highest mean ``U`` first (``decision``). The
        outputs, their order and guarantees are those of
        :func:`~ssfilter.pipelines.filter_run.filter_folder`; the input folder is never modified.

        Args:
            data: Folder to filter; default: the run's training set (with its injected noise, if any).
            out: Output folder for ``filter.csv`` and ``filter.json``.
            epochs: kappa_1 (default ``dataset_filter.epochs``, 20).
            min_keep: kappa_2 of ``decision="vote"`` (default ``dataset_filter.min_keep``, 5).
            export_clean: Folder to receive the kept images (must not exist or be empty).
            progress: Show a progress bar.
            overwrite: Replace the results of an earlier filter in ``out``.
            quarantine: Folder to receive the suspects for review (must not exist or be empty).
            dry_run: Write the lists and the report only, no folder.
            uncertainty: The paper's ``"per-batch"`` MC-dropout passes or ``"per-image"`` (fast); default
                ``dataset_filter.uncertainty`` (``"per-batch"``).
            pool: MC passes per image of the ``"per-image"`` bank (default ``dataset_filter.pool``, else
                ``4 K``; more passes come closer to the paper's decisions, see the README).
            decision: ``"estimate"`` (the estimated contamination's share), ``"vote"`` (the paper's
                kappa_2 vote) or ``"outlier"`` (a cut over the whole folder); default from
                ``dataset_filter.decision`` (``"estimate"`` for runs trained since 2026-12-02).
            outlier_k: Robust sd of the outlier cut (default ``dataset_filter.outlier_k``).

        Returns:
            The ``filter.json`` summary.

        Raises:
            RunExistsError, FileExistsError: a destination is taken (``check_filter_destinations``).
        """
        check_filter_destinations(out, export_clean, overwrite, quarantine)
        opts = {"quarantine": quarantine, "dry_run": dry_run, "uncertainty": uncertainty, "pool": pool}
        opts |= {"decision": decision, "outlier_k": outlier_k}
        model = self._ensure_model()
        samples, skipped = self._filter_samples_and_skipped(data)
        records = filter_folder(
            model,
            samples,
            self.config,
            out,
            skipped=skipped,
            extra={"run": str(self.run_dir) if self.run_dir else None, "n_skipped": len(skipped)},
            epochs=epochs,
            min_keep=min_keep,
            export_clean=export_clean,
            source_root=Path(data) if data is not None else self.data,
            progress=progress,
            **opts,
        )
        if not is_main_process():  # torchrun: every process holds the merged records, rank 0 writes
            return summarize(records)
        return json.loads((Path(out) / FILTER_JSON).read_text(encoding="utf-8"))

    def _filter_samples_and_skipped(self, data: str | Path | None) -> tuple[list[Sample], list[Skipped]]:
        """Images to filter (the given folder, else the run's noisy training set) and the unreadable ones."""
        return run_training_samples(self.run_dir, self.data, self.data_format, data)

    def predict(self, images: Sequence[str | Path], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores ``[N]`` and anomaly maps ``[N, S, S]`` (S = ``data.eval_size``) for image files.

        Raises :class:`~ssfilter.data.images.ImageReadError` on an unreadable file; for decisions,
        heat-maps and lenient handling of bad files use :meth:`predict_files`.
        """
        return self.predictor().predict_raw(list(images), batch_size=batch_size)

    def predict_files(
        self,
        inputs: Sequence[str | Path] | str | Path,
        out: str | Path,
        *,
        batch_size: int | None = None,
        threshold: float | None = None,
        progress: bool = True,
        overwrite: bool = False,
    ) -> PredictionReport:
        """Predict images, folders or glob patterns and write the results into ``out``.

        Writes ``predictions.csv``/``predictions.json`` (raw and normalised score, OK/NG, threshold),
        ``<name>_overlay.png`` and ``<name>_mask.png`` at each image's original size, and
        ``skipped.csv`` (see :mod:`ssfilter.inference.outputs`). Uses the run's ``calibration.json``;
        a run without one is calibrated on its training data first (and the file saved).

        Args:
            inputs: Image files, folders (searched recursively) or glob patterns.
            out: Output folder.
            batch_size: Images per forward pass (default ``data.batch_size``).
            threshold: Raw image threshold overriding the calibrated one.
            progress: Show progress bars.
            overwrite: Write into an ``out`` that holds earlier predictions (files of the same names are
                replaced; other files stay).

        Raises:
            RunExistsError: ``out`` holds earlier predictions and ``overwrite`` is false.
        """
        from ssfilter.inference.outputs import PREDICTIONS_CSV, PREDICTIONS_JSON

        done = [name for name in (PREDICTIONS_CSV, PREDICTIONS_JSON) if (Path(out) / name).exists()]
        if done and not overwrite:
            raise RunExistsError(
                f"{out} already holds predictions ({', '.join(done)}); pass --overwrite to replace them "
                "or choose another --out"
            )
        items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        predictor = self.predictor(calibration=self._calibration(progress=progress), threshold=threshold)
        return predictor.predict_to_folder(items, out, batch_size=batch_size, progress=progress)

    def calibrate(
        self,
        data: str | Path | None = None,
        *,
        val: str | Path | None = None,
        progress: bool = True,
        save: bool = True,
    ) -> Calibration:
        """(Re)compute the run's decision thresholds and save them as ``RUN/calibration.json``.

        Without ``val``: the unsupervised rule (``calibration.k`` / ``calibration.pixel_k``, see
        :mod:`ssfilter.inference.calibration_rules`) on the run's training images, or on the images under
        ``data``. With ``val``: F1-max thresholds on the test split of a labelled category (MVTec AD, VisA or
        Real-IAD layout; pixel F1-max when it has masks).

        Args:
            data: Unlabelled images to use instead of the run's training set.
            val: A labelled category (its test split is used).
            progress: Show a progress bar.
            save: Write ``calibration.json`` into the run folder.
        """
        predictor = self.predictor()
        if val is not None:
            # any labelled category (MVTec AD, VisA, Real-IAD); a plain folder is refused: no labels
            cal = predictor.calibrate_labelled(resolve_category(val).samples("test"), progress=progress)
        else:
            samples = self._filter_samples_and_skipped(data)[0]
            cal = predictor.calibrate_unlabelled([s.path for s in samples], progress=progress)
        if save:
            if self.run_dir is None:
                raise RuntimeError("no run folder to save the calibration in: call fit() or Detector.load()")
            cal.save(self.run_dir)
        return cal

    def _calibration(self, progress: bool = True) -> Calibration:
        """The run's saved calibration; computed from its training data when the file is missing."""
        from ssfilter.inference.calibration import Calibration

        if self.run_dir is not None and (self.run_dir / CALIBRATION_FILE).is_file():
            return Calibration.load(self.run_dir)
        where = self.run_dir if self.run_dir is not None else "RUN"
        if self.data is None or not Path(self.data).exists():
            raise FileNotFoundError(
                f"{where} has no {CALIBRATION_FILE} and its training data is not available to compute one; "
                f"run `ssfilter calibrate --run {where} --data DIR` (unlabelled, mostly good images) or "
                f"`--val DIR` (a labelled MVTec-layout folder)"
            )
        log.warning(
            "%s has no %s: computing it from the training data %s", where, CALIBRATION_FILE, self.data
        )
        cal = self.calibrate(progress=progress, save=False)
        try:
            if self.run_dir is not None:
                cal.save(self.run_dir)
        except OSError as err:
            log.warning(
                "could not save %s in %s (%s); it will be recomputed next time", CALIBRATION_FILE, where, err
            )
        return cal

    def predictor(self, calibration: Calibration | None = None, threshold: float | None = None) -> Predictor:
        """A :class:`~ssfilter.inference.predictor.Predictor` on this detector's model.

        The one implementation of inference on image files, for finer control than :meth:`predict`
        (e.g. ``det.predictor().calibrate_unlabelled(paths)`` without saving).

        Args:
            calibration: Thresholds and scales for decisions (``None``: raw outputs and calibration only).
            threshold: Raw image threshold overriding the calibrated one.
        """
        from ssfilter.inference.predictor import Predictor

        return Predictor(
            self._ensure_model(), self.config, calibration, run_dir=self.run_dir, threshold=threshold
        )

    def export(
        self,
        path: str | Path,
        format: str = "onnx",
        *,
        opset: int = 17,
        batch_size: int | None = None,
        check_images: str | Path | None = None,
    ) -> Path:
        """Export the whole inference graph (preprocessed image in, raw maps and scores out) to a file.

        ``format="onnx"`` (default) or ``"openvino"`` (an ``.xml`` IR, see
        :func:`ssfilter.inference.openvino_export.export_openvino`): see
        :func:`ssfilter.inference.export.export_onnx` for the graph's
        input and outputs, the embedded metadata (calibration included) and the parity gate that
        refuses the export (:class:`~ssfilter.inference.export.ExportParityError`, no file written)
        when ONNX Runtime and PyTorch differ by more than 1e-4 on the calibrated maps or scores, or on
        any OK/NG label. Run the file without torch with
        :class:`~ssfilter.inference.onnx_predictor.OnnxPredictor`.

        Args:
            path: Output file.
            format: A format of :mod:`ssfilter.inference.formats` (``"onnx"``, ``"openvino"``); another
                name raises :class:`~ssfilter.inference.formats.UnknownExportFormatError` (a ValueError).
            opset: ONNX opset version.
            batch_size: Fixed batch size; ``None`` (default) for a dynamic batch axis.
            check_images: Folder of images for the parity check (default: the run's training images).
        """
        from ssfilter.inference.export import export_calibration, export_run
        from ssfilter.inference.run import LoadedRun

        model = self._ensure_model()
        cal = export_calibration(self.run_dir) if self.run_dir is not None else None
        run = LoadedRun(path=self.run_dir, config=self.config, model=model, data=self.data, calibration=cal)
        return export_run(run, path, format, opset=opset, batch_size=batch_size, check_images=check_images)

    def info(self) -> dict[str, Any]:
        """Parameter counts and GFLOPs of this configuration (see :func:`model_info`)."""
        return model_info(self.config)


def model_info(cfg: Config) -> dict[str, Any]:
    """Parameter count and compute of a configuration, built offline with random weights.

    ``params_total`` counts every encoder block (as released), like the paper's Table 3;
    ``gflops`` counts one multiply-add as one FLOP (the fvcore convention the paper's table uses) for
    the blocks actually run at inference, and ``gflops_strict`` counts it as two.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ssfilter.models.encoders import build_encoder

    full = build_encoder(cfg.model.backbone, None, allow_random=True, keep_all_blocks=True)
    model = build_model(_with_random_weights(cfg), allow_random=True).eval()
    enc_total = sum(p.numel() for p in full.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    x = torch.zeros(1, 3, cfg.data.crop, cfg.data.crop)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    flops = counter.get_total_flops()
    return {
        "backbone": cfg.model.backbone,
        "preset": cfg.preset,
        "attention": cfg.model.attention,
        "params_total": enc_total + trainable,
        "params_encoder": enc_total,
        "params_trainable": trainable,
        "gflops": round(flops / 2 / 1e9, 3),
        "gflops_strict": round(flops / 1e9, 3),
        "grid": list(model.grid),
        "crop": cfg.data.crop,
        "resize": cfg.data.resize,
    }


def _with_random_weights(cfg: Config) -> Config:
    out = cfg.copy()
    out.model.weights = None
    return out
