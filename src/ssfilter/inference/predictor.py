"""Apply a trained model to image files: raw maps and scores, OK/NG decisions, and its calibration.

:class:`Predictor` is the one implementation of inference on image files; :class:`ssfilter.Detector`'s
``predict``, ``predict_files`` and ``calibrate`` delegate to it. It reads images with
:func:`ssfilter.data.images.read_image` (unreadable files are skipped and listed), preprocesses them with
the run's transform (:func:`~ssfilter.data.transforms.transform_for`), computes maps and scores with
:func:`ssfilter.evaluation.scorers.scorer_for` (the same code as ``evaluate``), and turns them into
decisions with the run's :class:`~ssfilter.inference.calibration.Calibration`.

Expanding the user's inputs is :func:`ssfilter.inference.inputs.collect_inputs`; writing the output
folder (``predictions.csv``/``.json``, overlays, masks, ``skipped.csv``) is
:class:`ssfilter.inference.outputs.PredictionWriter`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ssfilter.config import Config
from ssfilter.data.datasets import AnomalyDataset, Sample
from ssfilter.data.images import ImageReadError, Skipped, read_image, validate_images
from ssfilter.data.transforms import mask_transform_for, transform_for
from ssfilter.errors import CalibrationError
from ssfilter.evaluation.scorers import score_tensors, scorer_for
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.calibration_rules import calibrate_from_labels, calibrate_unsupervised, map_extrema
from ssfilter.inference.inputs import collect_inputs
from ssfilter.inference.outputs import PredictionReport, PredictionWriter
from ssfilter.inference.prediction import Prediction, decide
from ssfilter.inference.run import load_run_folder
from ssfilter.models.dinomaly import DinomalyModel

__all__ = ["Predictor"]


class Predictor:
    """Inference on image files with a trained model and its calibration.

    Args:
        model: The trained model (its device is used).
        cfg: The run's config (preprocessing sizes, batch size, AMP).
        calibration: Thresholds and scales; needed for decisions, not for :meth:`predict_raw`.
        run_dir: The run folder (recorded in outputs).
        threshold: Raw image threshold overriding the calibrated one.
    """

    def __init__(
        self,
        model: DinomalyModel,
        cfg: Config,
        calibration: Calibration | None = None,
        *,
        run_dir: str | Path | None = None,
        threshold: float | None = None,
    ) -> None:
        self.model = model.eval()
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.transform = transform_for(cfg, model.encoder)
        self.scorer = scorer_for(self.model, cfg)
        if threshold is not None:
            if calibration is None:
                raise CalibrationError("a threshold override needs a calibration for the heat-map scale")
            calibration = calibration.with_threshold(threshold)
        self.calibration = calibration

    @classmethod
    def load(
        cls, run_dir: str | Path, device: str | torch.device = "auto", *, threshold: float | None = None
    ) -> Predictor:
        """Load a run folder and its ``calibration.json``.

        Args:
            run_dir: The run folder.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a device.
            threshold: Raw image threshold overriding the calibrated one.

        Raises:
            FileNotFoundError: when the run has no ``calibration.json`` (run ``ssfilter calibrate``).
        """
        run = load_run_folder(run_dir, device, calibration="required")
        return cls(run.model, run.config, run.calibration, run_dir=run.path, threshold=threshold)

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return next(self.model.parameters()).device

    def _require_calibration(self) -> Calibration:
        if self.calibration is None:
            where = self.run_dir if self.run_dir is not None else "RUN"
            raise CalibrationError(
                f"no calibration for this model: compute it with `ssfilter calibrate --run {where}`"
            )
        return self.calibration

    # -- raw model output -------------------------------------------------------------------------------

    @torch.no_grad()
    def raw_batches(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int | None = None,
        skipped: list[Skipped] | None = None,
        progress: bool = False,
        desc: str = "predict",
    ) -> Iterator[tuple[list[str], list[Image.Image], np.ndarray, np.ndarray]]:
        """Read, preprocess and score images batch by batch.

        Args:
            paths: Image files.
            batch_size: Images per forward pass (default ``data.batch_size``).
            skipped: Unreadable files are appended here and left out; ``None`` raises instead.
            progress: Show a progress bar.
            desc: Progress-bar label.

        Yields:
            ``(paths, images, scores [B], maps [B, S, S])`` for the readable images of each batch; the
            images are the decoded originals (RGB, EXIF orientation applied).
        """
        size = max(1, int(batch_size or self.cfg.data.batch_size))
        files = list(paths)
        bar = tqdm(
            total=len(files), desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False
        )
        try:
            for start in range(0, len(files), size):
                names, images = [], []
                for path in files[start : start + size]:
                    try:
                        image = read_image(path)
                    except ImageReadError as err:
                        if skipped is None:
                            raise
                        skipped.append(Skipped(str(path), err.reason))
                        continue
                    names.append(str(path))
                    images.append(image)
                bar.update(min(size, len(files) - start))
                if not images:
                    continue
                scores, maps = self.score_images(images)
                yield names, images, scores, maps
        finally:
            bar.close()

    @torch.no_grad()
    def score_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``[B]`` and maps ``[B, S, S]`` of decoded RGB images, in one forward pass.

        Args:
            images: Decoded images (as :func:`~ssfilter.data.images.read_image` returns), at least one.
        """
        maps, scores = score_tensors(self.scorer, [self.transform(im) for im in images])
        return scores.float().cpu().numpy(), maps.float().cpu().numpy()

    def predict_raw(
        self, paths: Sequence[str | Path], batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw image scores ``[N]`` and maps ``[N, S, S]``; raises on an unreadable file.

        Args:
            paths: Image files.
            batch_size: Images per forward pass.
        """
        scores, maps = [], []
        for _, _, s, m in self.raw_batches(paths, batch_size=batch_size):
            scores.append(s)
            maps.append(m)
        size = self.cfg.data.eval_size
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, size, size), np.float32)
        return np.concatenate(scores), np.concatenate(maps)

    # -- decisions --------------------------------------------------------------------------------------

    def iter_predictions(
        self,
        paths: Sequence[str | Path],
        *,
        batch_size: int | None = None,
        skipped: list[Skipped] | None = None,
        progress: bool = False,
    ) -> Iterator[tuple[Prediction, Image.Image]]:
        """Predictions with their original images, one at a time (memory bounded by one batch).

        Args:
            paths: Image files.
            batch_size: Images per forward pass.
            skipped: Unreadable files are appended here; ``None`` raises instead.
            progress: Show a progress bar.
        """
        cal = self._require_calibration()
        for names, images, scores, maps in self.raw_batches(
            paths, batch_size=batch_size, skipped=skipped, progress=progress
        ):
            sizes = [image.size for image in images]
            preds = decide(
                cal, names, sizes, scores, maps, resize=self.cfg.data.resize, crop=self.cfg.data.crop
            )
            yield from zip(preds, images, strict=True)

    def predict_images(
        self, images: Sequence[Image.Image], names: Sequence[str], *, batch_size: int | None = None
    ) -> list[Prediction]:
        """Predictions of images already decoded in memory (e.g. uploads to ``ssfilter serve``).

        Args:
            images: Decoded RGB images (see :func:`~ssfilter.data.images.decode_image`).
            names: What each prediction's ``path`` records (e.g. the uploaded file names).
            batch_size: Images per forward pass (default ``data.batch_size``).
        """
        cal = self._require_calibration()
        if len(images) != len(names):
            raise ValueError(f"got {len(images)} images but {len(names)} names")
        size = max(1, int(batch_size or self.cfg.data.batch_size))
        out: list[Prediction] = []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            scores, maps = self.score_images(chunk)
            sizes = [image.size for image in chunk]
            resize, crop = self.cfg.data.resize, self.cfg.data.crop
            out.extend(
                decide(cal, list(names[start : start + size]), sizes, scores, maps, resize=resize, crop=crop)
            )
        return out

    def predict(
        self, inputs: Iterable[str | Path], batch_size: int | None = None, progress: bool = False
    ) -> tuple[list[Prediction], list[Skipped]]:
        """Predict files, folders or glob patterns in memory (maps included); nothing is written.

        Args:
            inputs: Files, folders (recursive) or glob patterns.
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Returns:
            ``(predictions, skipped)``.
        """
        paths, skipped = collect_inputs(inputs)
        preds = [
            p
            for p, _ in self.iter_predictions(
                paths, batch_size=batch_size, skipped=skipped, progress=progress
            )
        ]
        return preds, skipped

    def predict_to_folder(
        self,
        inputs: Iterable[str | Path],
        out: str | Path,
        *,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> PredictionReport:
        """Predict and write predictions, overlays, masks and ``skipped.csv`` into ``out``.

        Args:
            inputs: Files, folders (recursive) or glob patterns.
            out: Output folder (created if needed; existing files of the same names are replaced).
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            ValueError: when the inputs name no file at all.
        """
        cal = self._require_calibration()
        items = list(inputs)
        paths, skipped = collect_inputs(items)
        if not paths:
            listed = ", ".join(str(i) for i in items[:3]) + (" ..." if len(items) > 3 else "")
            raise ValueError(f"no image files found in the inputs: {listed}")
        writer = PredictionWriter(out, paths, self.cfg.data.resize, self.cfg.data.crop)
        for pred, image in self.iter_predictions(
            paths, batch_size=batch_size, skipped=skipped, progress=progress
        ):
            writer.add(pred, image)
        return writer.finish(cal, skipped, self.run_dir)

    # -- calibration ------------------------------------------------------------------------------------

    def calibrate_unlabelled(
        self,
        paths: Sequence[str | Path],
        *,
        k: float | None = None,
        pixel_k: float | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Calibration:
        """Unsupervised calibration from (mostly normal) images, e.g. the training set.

        Only the scores and per-image map extrema are kept, so memory does not grow with the maps.

        Args:
            paths: Image files (unreadable ones are skipped).
            k: Image-threshold multiplier (default ``calibration.k`` of the config).
            pixel_k: Pixel-threshold multiplier (default ``calibration.pixel_k``).
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            CalibrationError: when no image could be read.
        """
        scores, mins, maxs = [], [], []
        skipped: list[Skipped] = []
        for _, _, s, m in self.raw_batches(
            paths, batch_size=batch_size, skipped=skipped, progress=progress, desc="calibrate"
        ):
            lo, hi = map_extrema(m)
            scores.append(s)
            mins.append(lo)
            maxs.append(hi)
        if not scores:
            raise CalibrationError("no readable image to calibrate from")
        cc = self.cfg.calibration
        cal = calibrate_unsupervised(
            np.concatenate(scores),
            np.concatenate(mins),
            np.concatenate(maxs),
            k=cc.k if k is None else k,
            pixel_k=cc.pixel_k if pixel_k is None else pixel_k,
            map_size=self.cfg.data.eval_size,
        )
        self.calibration = cal
        return cal

    @torch.no_grad()
    def calibrate_labelled(
        self, samples: Sequence[Sample], *, batch_size: int | None = None, progress: bool = False
    ) -> Calibration:
        """F1-max calibration on labelled samples (``label`` 0/1, optional ground-truth masks).

        Pixel F1-max is used when every defective image has a mask; otherwise the pixel threshold
        follows the unsupervised rule on the good images' maps.

        Args:
            samples: Labelled samples (e.g. an MVTec ``test`` split); unreadable images are skipped.
            batch_size: Images per forward pass.
            progress: Show a progress bar.

        Raises:
            CalibrationError: when labels are missing or only one class is present.
        """
        if any(s.label not in (0, 1) for s in samples):
            raise CalibrationError("labelled calibration needs images labelled good (0) or defective (1)")
        scores, labels, maps, masks = self._labelled_outputs(samples, batch_size, progress)
        cal = calibrate_from_labels(
            scores,
            labels,
            maps,
            masks,
            pixel_k=self.cfg.calibration.pixel_k,
            map_size=self.cfg.data.eval_size,
        )
        self.calibration = cal
        return cal

    @torch.no_grad()
    def _labelled_outputs(
        self, samples: Sequence[Sample], batch_size: int | None, progress: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Scores, labels, maps and (when every image has one) ground-truth masks of the readable samples.

        Masks go through the image geometry (:func:`~ssfilter.data.transforms.mask_transform_for`),
        like in ``evaluate``.

        Raises:
            CalibrationError: when no sample could be read.
        """
        good, _ = validate_images([Path(s.path) for s in samples])
        keep = {str(p) for p in good}
        usable = [s for s in samples if s.path in keep]
        size = self.cfg.data.eval_size
        dataset = AnomalyDataset(usable, self.transform, mask_transform_for(self.cfg), size)
        step = max(1, int(batch_size or self.cfg.data.batch_size))
        scores, maps, masks, labels, has_mask = [], [], [], [], []
        for start in tqdm(
            range(0, len(dataset), step), desc="calibrate", unit="batch", disable=not progress, leave=False
        ):
            items = [dataset[i] for i in range(start, min(start + step, len(dataset)))]
            m, s = score_tensors(self.scorer, [item["image"] for item in items])
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
            masks.append(np.stack([item["mask"][0].numpy() > 0.5 for item in items]))
            labels.append(np.array([item["label"] for item in items]))
            has_mask.append(np.array([item["has_mask"] for item in items], dtype=bool))
        if not scores:
            raise CalibrationError("no readable labelled image to calibrate from")
        all_masks = np.concatenate(masks) if np.concatenate(has_mask).all() else None
        return np.concatenate(scores), np.concatenate(labels), np.concatenate(maps), all_masks
