"""The Python API users script against.

Example:
    >>> from ssfilter import Detector
    >>> det = Detector("cpu-fast", backbone="mobilenet_v2", weights="mobilenet_v2_imagenet.safetensors")
    >>> det.fit("mvtec/bottle", out="runs/bottle")            # doctest: +SKIP
    >>> det.evaluate()["metrics"]["I-AUROC"]                  # doctest: +SKIP
    >>> det = Detector.load("runs/bottle")                    # doctest: +SKIP
    >>> scores, maps = det.predict(["new_part.png"])          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssfilter.config import Config, apply_overrides, get_preset, load_config
from ssfilter.data.datasets import Sample, discover, is_mvtec_layout
from ssfilter.data.images import Skipped, read_image, validate_images, write_skipped_csv
from ssfilter.data.transforms import build_image_transform
from ssfilter.io import atomic_write_json
from ssfilter.training.checkpoint import MODEL_FILE, STATE_FILE, build_model, load_run
from ssfilter.training.filter_log import summarize_filter_log
from ssfilter.training.trainer import FILTER_LOG_FILE, Trainer, TrainResult, resolve_device

__all__ = ["Detector", "RunExistsError", "model_info", "prepare_training_samples"]

log = logging.getLogger(__name__)


class RunExistsError(FileExistsError):
    """Raised instead of overwriting a finished run folder."""


def _resolve_config(config: Config | str | Path | None) -> Config:
    if config is None:
        return get_preset("paper-448-392")
    if isinstance(config, Config):
        return config.copy()
    text = str(config)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_config(text)
    return get_preset(text)


NOISE_SPLIT_FILE = "noise_split.json"


def prepare_training_samples(
    data: str | Path,
    run_dir: Path | None = None,
    *,
    noise: float | None = None,
    overlap: bool = False,
    noise_seed: int = 0,
) -> tuple[list[Sample], list[Skipped]]:
    """Training images of a dataset folder with unreadable files removed and reported.

    With ``noise`` (the SoftPatch protocol, SPEC §7) anomalous test images of an MVTec-layout folder
    are injected into the training set and the split is written to ``run_dir/noise_split.json``.
    The skipped files and their reasons go to ``run_dir/skipped.csv`` when a run folder is given.
    """
    if noise is not None:
        from ssfilter.data.noise import softpatch_split

        if not is_mvtec_layout(data):
            raise ValueError(
                f"--noise needs an MVTec-layout folder (train/good, test/<type>); {data} is not one"
            )
        samples, _, split = softpatch_split(data, noise, overlap=overlap, seed=noise_seed)
        if run_dir is not None:
            split.save(Path(run_dir) / NOISE_SPLIT_FILE)
    else:
        samples = discover(data, "train")
    by_path = {s.path: s for s in samples}
    good, skipped = validate_images([Path(s.path) for s in samples])
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable training image(s); see skipped.csv. First: "
            f"{skipped[0].path} ({skipped[0].reason})",
            stacklevel=2,
        )
    if run_dir is not None:
        write_skipped_csv(skipped, Path(run_dir) / "skipped.csv")
    kept = [by_path[str(p)] for p in good]
    if not kept:
        raise ValueError(f"no readable training images under {data}")
    return kept, skipped


class Detector:
    """Train, save, load, evaluate and apply an ssfilter model.

    Args:
        config: A :class:`Config`, a preset name or a YAML file (default ``paper-448-392``).
        **overrides: Shortcuts for common settings (``backbone``, ``weights``, ``iters``,
            ``batch_size``, ``device``, ``method``, ``seed``) or dotted keys (``{"train.lr": 1e-3}``).
    """

    def __init__(self, config: Config | str | Path | None = None, **overrides: Any) -> None:
        self.config = _resolve_config(config)
        apply_overrides(self.config, _shortcut_overrides(overrides))
        self.model = None
        self.run_dir: Path | None = None
        self.data: Path | None = None

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
    ) -> Detector:
        """Train on the images under ``data`` and write the run folder ``out``.

        Args:
            data: An MVTec-layout category (``train/good`` is used) or any folder of images.
            out: Run folder. An existing finished run is never overwritten unless ``overwrite``.
            resume: Continue from the run's last checkpoint.
            overwrite: Allow replacing a finished run.
            progress: Show progress bars.
            stop_after: Stop after this many iterations (tests of interruption).
            noise: Inject this share of anomalous test images into training (SoftPatch protocol).
            overlap: Keep the injected images in the test set too (the hard setting).
            noise_seed: Seed of the injected selection.
        """
        run = Path(out)
        if (run / MODEL_FILE).exists() and not resume and not overwrite:
            raise RunExistsError(
                f"{run} already holds a trained model; "
                "pass --resume to continue it or --overwrite to replace it"
            )
        if overwrite and not resume:
            (run / STATE_FILE).unlink(missing_ok=True)
        if resume and (run / NOISE_SPLIT_FILE).is_file():
            from ssfilter.data.noise import NoiseSplit

            saved = NoiseSplit.load(run / NOISE_SPLIT_FILE)
            noise, overlap, noise_seed = saved.alpha, saved.overlap, saved.seed
        samples, _ = prepare_training_samples(data, run, noise=noise, overlap=overlap, noise_seed=noise_seed)
        trainer = Trainer(self.config, samples, run, progress=progress, stop_after=stop_after)
        result: TrainResult = trainer.fit(resume=resume)
        atomic_write_json(run / "data.json", {"data": str(Path(data).resolve()), "n_train": len(samples)})
        if (run / FILTER_LOG_FILE).is_file() and result.iterations == self.config.train.iters:
            summary = summarize_filter_log(run / FILTER_LOG_FILE)
            atomic_write_json(run / "filter_summary.json", summary)
            if summary["abnormal_recall"] is not None:
                log.info(
                    "abnormal recall in the second half of training: %.3f (normals discarded: %.3f)",
                    summary["abnormal_recall"],
                    summary["normal_discard_rate"],
                )
        log.info("trained %d iterations in %.1fs", result.iterations, result.seconds)
        self.run_dir, self.data = run, Path(data)
        self.model = None
        return self

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto") -> Detector:
        """Load a trained run folder (no network access, no original weights file needed)."""
        cfg, model = load_run(run_dir, resolve_device(device))
        det = cls(cfg)
        det.model = model
        det.run_dir = Path(run_dir)
        data_file = Path(run_dir) / "data.json"
        if data_file.is_file():
            det.data = Path(json.loads(data_file.read_text(encoding="utf-8"))["data"])
        return det

    def _ensure_model(self) -> Any:
        if self.model is None:
            if self.run_dir is None:
                raise RuntimeError("the detector has no trained model: call fit() or Detector.load() first")
            _, self.model = load_run(self.run_dir, resolve_device(self.config.train.device))
        return self.model

    # -- evaluation and inference ---------------------------------------------------------------

    def evaluate(
        self, data: str | Path | None = None, *, out: str | Path | None = None, progress: bool = True
    ) -> dict:
        """Metrics on an MVTec-layout test split (default: the training data folder).

        Returns:
            ``{"metrics": {...}, "n_test": int, "images": [...]}`` (written to ``out`` when given).
        """
        from ssfilter.evaluation.evaluate import evaluate_model

        root = Path(data) if data is not None else self.data
        if root is None:
            raise ValueError(
                "no test data: pass data=... (an MVTec-layout folder with test/ and ground_truth/)"
            )
        if not is_mvtec_layout(root):
            raise ValueError(f"{root} is not an MVTec-layout folder (test/<type>/ with ground_truth/<type>/)")
        model = self._ensure_model()
        samples = self._test_samples(root)
        device = next(model.parameters()).device
        res = evaluate_model(model, samples, self.config, device=device, progress=progress)
        payload = res.to_json()
        if out is not None:
            atomic_write_json(out, payload)
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
    ) -> dict[str, Any]:
        """Filter a whole training set with the trained model (paper §3.6).

        Runs ``epochs`` (kappa_1) random epochs of the in-batch filter and calls an image normal when
        it was kept more than ``min_keep`` (kappa_2) times. Writes ``out/filter.csv`` and
        ``out/filter.json``; with ``export_clean`` also lays the kept images out as a training folder
        (links where possible). The input folder is never modified.

        Args:
            data: Folder to filter; default: the run's training set (with its injected noise, if any).
            out: Output folder for ``filter.csv`` and ``filter.json``.
            epochs: kappa_1 (default ``filter.epochs``, 20).
            min_keep: kappa_2 (default ``filter.min_keep``, 5).
            export_clean: Folder to receive the kept images (must not exist or be empty).
            progress: Show a progress bar.

        Returns:
            The ``filter.json`` summary.
        """
        from ssfilter.filtering.dataset_filter import export_clean as export
        from ssfilter.filtering.dataset_filter import filter_dataset, write_filter_outputs

        model = self._ensure_model()
        samples = self._filter_samples(data)
        device = next(model.parameters()).device
        records = filter_dataset(
            model, samples, self.config, epochs=epochs, min_keep=min_keep, device=device, progress=progress
        )
        extra: dict[str, Any] = {"run": str(self.run_dir) if self.run_dir else None}
        if export_clean is not None:
            source = Path(data) if data is not None else self.data
            dest = export(records, export_clean, source_root=source)
            extra["export_clean"] = str(dest)
        csv_path, json_path = write_filter_outputs(records, out, extra)
        return json.loads(Path(json_path).read_text(encoding="utf-8"))

    def _filter_samples(self, data: str | Path | None) -> list[Sample]:
        """Training images to filter: the given folder, or the run's own (noisy) training set."""
        if data is not None:
            return prepare_training_samples(data)[0]
        split_file = self.run_dir / NOISE_SPLIT_FILE if self.run_dir is not None else None
        if split_file is not None and split_file.is_file() and self.data is not None:
            from ssfilter.data.noise import NoiseSplit, apply_split

            train = apply_split(self.data, NoiseSplit.load(split_file))[0]
            good, _ = validate_images([Path(s.path) for s in train])
            keep = {str(p) for p in good}
            return [s for s in train if s.path in keep]
        if self.data is None:
            raise ValueError("no data to filter: pass data=... (a folder of images)")
        return prepare_training_samples(self.data)[0]

    def _test_samples(self, root: Path) -> list[Sample]:
        """The test split, honouring the run's ``noise_split.json`` when it was trained on ``root``."""
        split_file = self.run_dir / NOISE_SPLIT_FILE if self.run_dir is not None else None
        if split_file is not None and split_file.is_file():
            from ssfilter.data.noise import NoiseSplit, apply_split

            split = NoiseSplit.load(split_file)
            if Path(split.source).resolve() == root.resolve():
                return apply_split(root, split)[1]
        return discover(root, "test")

    @torch.no_grad()
    def predict(self, images: Sequence[str | Path], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Image scores ``[N]`` and anomaly maps ``[N, S, S]`` (S = ``data.eval_size``) for image files."""
        from ssfilter.evaluation.evaluate import predict_maps

        model = self._ensure_model()
        cfg = self.config
        transform = build_image_transform(
            cfg.data.resize, cfg.data.crop, model.encoder.mean, model.encoder.std
        )
        device = next(model.parameters()).device
        scores, maps = [], []
        paths = list(images)
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(read_image(p)) for p in paths[start : start + batch_size]]).to(
                device
            )
            m, s = predict_maps(model, batch, cfg.data.eval_size, amp=cfg.train.amp)
            maps.append(m.cpu().numpy())
            scores.append(s.cpu().numpy())
        if not paths:
            return np.zeros(0, np.float32), np.zeros((0, cfg.data.eval_size, cfg.data.eval_size), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    def info(self) -> dict[str, Any]:
        """Parameter counts and GFLOPs of this configuration (see :func:`model_info`)."""
        return model_info(self.config)


def _shortcut_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    mapping = {
        "backbone": "model.backbone",
        "weights": "model.weights",
        "attention": "model.attention",
        "iters": "train.iters",
        "batch_size": "data.batch_size",
        "device": "train.device",
        "method": "train.method",
        "seed": "train.seed",
        "crop": "data.crop",
        "resize": "data.resize",
    }
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        out[mapping.get(key, key)] = value
    return out


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
