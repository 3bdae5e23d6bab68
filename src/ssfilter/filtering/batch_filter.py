"""SSFilter's in-batch filter: score, select and prepare restoration material for one mini-batch.

This joins the pieces of paper §3.2-3.5 -- patch comparison scores ``A`` (Algorithm 1), MC-dropout
uncertainty ``U`` (§3.3), the synergy selection (Eq. 5-10) and anomalous material extraction
(Eq. 11) -- behind one object used both by the trainer (every iteration) and by the dataset filter
(§3.6, :mod:`ssfilter.filtering.dataset_filter`, with a trained model). Its random state and material
bank are part of the training state, so resumed runs stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ssfilter.config import BatchFilterConfig, RestorationConfig
from ssfilter.filtering.foreground import foreground_masks
from ssfilter.filtering.material_bank import MaterialBank
from ssfilter.filtering.material_counts import parse_material_count
from ssfilter.filtering.materials import Material, extract_materials
from ssfilter.filtering.patch_scoring import batch_anomaly_scores
from ssfilter.filtering.synergy import FilterDecision, synergy_select
from ssfilter.filtering.synthesis_registry import SynthesisRequest, get_synthesis
from ssfilter.filtering.uncertainty import Uncertainty, mc_uncertainty
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import EncoderFeatures
from ssfilter.schedule import schedule_length

__all__ = ["BatchFilter", "BatchSelection", "Synthesis"]


@dataclass
class BatchSelection:
    """What the in-batch filter decided for one batch.

    Attributes:
        decision: Keep / material vectors and the selection's statistics.
        scores: Patch comparison scores ``A`` ``[B]`` (None when patch scoring is off).
        uncertainty: MC-dropout result (None when uncertainty scoring is off).
        materials: Materials extracted from this batch's candidates.
    """

    decision: FilterDecision
    scores: Tensor | None
    uncertainty: Uncertainty | None
    materials: list[Material] = field(default_factory=list)


@dataclass
class Synthesis:
    """Synthetic anomalies made from kept images, and which clean image each one restores."""

    images: Tensor
    source_index: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


class BatchFilter:
    """The in-batch filter: scores a batch (patch comparison, uncertainty), selects, synthesises anomalies.

    Args:
        cfg: In-batch filter configuration (ablation switches, K, tau, ratios, descriptor layers).
        restoration: Restoration configuration (on/off, synthesis method, material thresholds and counts);
            the synthesis method and material-count rule are checked here, before any training.
        total_iters: Training length (the number of pasted materials grows over it).
        seed: Seed of the synthesis random generator.
        bank_capacity: Materials kept across iterations; 0 = the current batch only (the paper's
            reading: synthesis uses the candidates of the same mini-batch).
    """

    def __init__(
        self,
        cfg: BatchFilterConfig,
        restoration: RestorationConfig,
        total_iters: int,
        seed: int = 0,
        bank_capacity: int = 0,
    ) -> None:
        if not (cfg.patch_scoring or cfg.uncertainty):
            raise ValueError("the in-batch filter needs patch scoring, uncertainty scoring or both")
        self.cfg = cfg
        self.restoration = restoration
        self.cold_start_iters = schedule_length(cfg.cold_start_iters, cfg.cold_start_fraction, total_iters)
        self.total_iters = total_iters
        self.bank = MaterialBank(bank_capacity)
        self.generator = torch.Generator().manual_seed(seed)
        self.synthesis = get_synthesis(restoration.synthesis)(restoration.synthetic_per_batch)
        self.material_count = parse_material_count(
            restoration.material_count, restoration.materials_min, restoration.materials_max
        )
        explicit = cfg.descriptor_layers is not None or cfg.descriptor_mean_layers is not None
        self.descriptor_layers = (
            (list(cfg.descriptor_layers or []), list(cfg.descriptor_mean_layers or [])) if explicit else None
        )

    # -- scoring and selection -------------------------------------------------------------------

    @torch.no_grad()
    def score(
        self,
        model: DinomalyModel,
        feats: EncoderFeatures,
        *,
        mc: bool = True,
        groups: Tensor | None = None,
    ) -> tuple[Tensor | None, Uncertainty | None]:
        """Patch comparison scores ``A`` and MC-dropout uncertainty of a batch (as configured).

        ``mc=False`` skips the MC passes (the caller brings its own uncertainties). ``groups`` ``[B]``:
        the image each tile comes from (tiled runs); tiles are compared only with other images' tiles,
        unless the whole batch comes from one image (then each tile stands for itself).
        """
        cfg = self.cfg
        a = None
        if cfg.patch_scoring and feats.batch_size >= 2:
            desc = self.descriptors(model, feats)
            if groups is not None and len(set(groups.tolist())) < 2:
                groups = None
            a = batch_anomaly_scores(desc, cfg.patch_topk_ratio, cfg.image_topk_ratio, cfg.block_rows, groups)
        unc = None
        if cfg.uncertainty and mc:
            unc = mc_uncertainty(model, feats, cfg.mc_passes, cfg.image_topk_ratio)
        return a, unc

    def descriptors(self, model: DinomalyModel, feats: EncoderFeatures) -> Tensor:
        """Patch descriptors for comparison scoring: the backbone's own, or the configured L1/L2 (Table 8)."""
        if self.descriptor_layers is None:
            return model.encoder.patch_descriptors(feats)
        return model.encoder.layer_descriptors(feats, *self.descriptor_layers)

    @torch.no_grad()
    def select(
        self,
        iteration: int,
        model: DinomalyModel,
        feats: EncoderFeatures,
        images: Tensor | None = None,
        *,
        uncertainty: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> BatchSelection:
        """Score and select one batch; with ``images``, also extract materials of the candidates.

        ``uncertainty`` ``[B]``: precomputed ``U`` (the dataset filter's per-image bank) used instead of
        running the MC passes; the selection then has no :class:`Uncertainty` and extracts no materials.
        ``groups`` ``[B]``: the image of each tile in tiled runs (see :meth:`score`).
        """
        cfg = self.cfg
        a, unc = self.score(model, feats, mc=uncertainty is None, groups=groups)
        b = feats.batch_size
        if b < 2:
            # Small-batch guard: comparison needs other images; a single image is simply kept.
            decision = synergy_select(
                torch.zeros(b), torch.zeros(b), iteration=iteration, cold_start_iters=self.cold_start_iters
            )
            return BatchSelection(decision, a, unc)
        u = unc.uncertainty.cpu() if unc is not None else uncertainty
        if not cfg.uncertainty:
            u = None
        decision = synergy_select(
            a.cpu() if a is not None else None,
            u,
            iteration=iteration,
            cold_start_iters=self.cold_start_iters,
            tau=cfg.tau,
            keep_ratio=cfg.keep_ratio,
            use_patch_scoring=cfg.patch_scoring,
            use_uncertainty=cfg.uncertainty,
            use_urecall=cfg.urecall,
        )
        materials: list[Material] = []
        restore = self.restoration
        wanted = images is not None and restore.enabled and self.synthesis.uses_materials
        if wanted and unc is not None and bool(decision.material.any()):
            materials = extract_materials(
                images,
                unc.acc_map,
                decision.material.to(images.device),
                restore.material_max_ratio,
                restore.material_percentile,
            )
        return BatchSelection(decision, a, unc, materials)

    # -- restoration ------------------------------------------------------------------------------

    @torch.no_grad()
    def synthesize(
        self,
        iteration: int,
        model: DinomalyModel,
        kept_images: Tensor,
        kept_feats: EncoderFeatures,
        selection: BatchSelection,
    ) -> Synthesis | None:
        """Synthetic anomalies from randomly chosen kept images (paper §3.5), by ``restoration.synthesis``.

        The paper's method pastes the bank's materials, one synthetic image per material candidate of
        the batch; the CutPaste and DRAEM baselines (Table 5) make ``restoration.synthetic_per_batch``
        images from the kept images alone. Every method works inside the kept images' foreground.
        Returns None when restoring is off or there is nothing to make.
        """
        if not self.restoration.enabled:
            return None
        method = self.synthesis
        self.bank.add(selection.materials)
        count = method.count(len(selection.materials))
        if count == 0 or kept_images.shape[0] == 0 or (method.uses_materials and len(self.bank) == 0):
            return None
        crop = kept_images.shape[-1]
        fg = foreground_masks(model.encoder.foreground_features(kept_feats), kept_feats.grid, crop)
        request = SynthesisRequest(kept_images, fg.to(kept_images.device), count)
        if method.uses_materials:
            request.materials = self.bank.materials
            request.materials_per_image = self.material_count.counts(
                iteration, self.total_iters, count, self.generator
            )
        images, source, masks = method.synthesize(request, self.generator)
        if images.shape[0] == 0:
            return None
        return Synthesis(images, source, masks)

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Random state and material bank (tensors and plain values only)."""
        return {"generator": self.generator.get_state(), "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.generator.set_state(state["generator"])
        self.bank.load_state_dict(state["bank"])
