"""The in-batch filter's synergy selection: which images of a batch to keep (paper §3.4, Eq. 5-10; SPEC §4).

Each training batch is split by its ranking scores: the lower half (the most normal-looking images) is kept
for training, images of the upper half are recalled when their uncertainty is at most the normal anchor
``mu1`` ("URecall", Eq. 7), and upper-half images with an extreme uncertainty, ``u >= mu1 + tau*sigma1``,
become material candidates for anomaly synthesis (Eq. 10). The ranking uses the patch scores ``A`` during the
cold start and the synergy score ``(minmax(A) + minmax(U)) / 2`` (Eq. 9) afterwards; ``mu1, sigma1`` always
come from the lower half of the ranking by the ORIGINAL ``A`` ("pre-update", to prevent early leakage).

Choices where the paper is silent (this module's contract):

* Split point ``m = int(n * keep_ratio)`` clamped to ``[1, n]`` (paper: ``n/2``). The lower half is every
  sample with a score ``<= a'_m`` (the m-th smallest): ties at the boundary are ALL kept, so the lower half
  may hold more than ``m`` samples; the upper half is its complement. Decisions therefore depend on values
  only: permuting the batch permutes the decision (index order, a stable sort, plays no role).
* ``mu1, sigma1`` are the mean and the UNBIASED standard deviation (``torch.std``'s default, as SPEC §3 uses
  for ``u_i``; the authors' code was not available to say otherwise) of ``U`` over that lower half. A lower
  half of a single sample has ``sigma1 = 0`` (the unbiased estimate of one value is undefined).
* A sample is never both kept and a material candidate: if ``tau * sigma1 == 0`` (all lower-half
  uncertainties equal, a one-sample lower half, or ``tau = 0``) Eq. 7 and Eq. 10 both select an upper-half
  sample with ``u == mu1``; keeping wins, since its uncertainty is exactly the normal anchor. With
  ``tau * sigma1 > 0`` the two sets are disjoint anyway.
* Batches of fewer than 2 samples cannot be split: everything is kept, nothing is material (phase
  ``"tiny"``). Batches of 2-3 samples use the rules with ``m = 1``.
* Min-max normalisation of a constant vector gives zeros (not NaN). Non-finite scores raise ``ValueError``.

All arithmetic is done in float64 on the CPU (n is a batch size, so this is cheap and makes the boundary
comparisons reproducible); the masks and ranking scores are returned on the input's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["FilterDecision", "Phase", "lower_half_mask", "minmax", "synergy_select"]

Phase = Literal["cold", "regular", "tiny"]


@dataclass(frozen=True)
class FilterDecision:
    """Outcome of :func:`synergy_select` for one batch of ``n`` samples.

    Attributes:
        keep: ``[n]`` bool, ``g`` of Eq. 7: samples trained on as normal.
        material: ``[n]`` bool, ``h`` of Eq. 10: high-confidence anomalies used as synthesis material.
        ranking_scores: ``[n]`` scores the batch was ranked by (``A``, ``U`` or the Eq. 9 synergy score).
        mu1: Mean uncertainty of the pre-update lower half (NaN when no uncertainty is available).
        sigma1: Its unbiased standard deviation (0 for a single sample; NaN without uncertainty).
        phase: ``"cold"``, ``"regular"`` or ``"tiny"`` (fewer than 2 samples, nothing filtered).
        n_kept: ``keep.sum()``.
        n_recalled: Upper-half samples kept by URecall (second term of Eq. 7).
        n_material: ``material.sum()``.
    """

    keep: Tensor
    material: Tensor
    ranking_scores: Tensor
    mu1: float
    sigma1: float
    phase: Phase
    n_kept: int
    n_recalled: int
    n_material: int


def minmax(x: Tensor) -> Tensor:
    """Min-max normalise a 1-D tensor to ``[0, 1]``; a constant (or empty) vector gives zeros, not NaN."""
    if x.numel() == 0:
        return x.clone()
    lo, hi = x.min(), x.max()
    span = hi - lo
    if span <= 0:
        return torch.zeros_like(x)
    return (x - lo) / span


def lower_half_mask(scores: Tensor, m: int) -> Tensor:
    """Samples scoring ``<= s'_m``, the m-th smallest (1-based): the lower half, boundary ties included."""
    if not 1 <= m <= scores.numel():
        raise ValueError(f"split point m must be in [1, {scores.numel()}], got {m}")
    boundary = torch.sort(scores, stable=True).values[m - 1]
    return scores <= boundary


def _as_vector(x: Tensor, name: str) -> Tensor:
    """Check that ``x`` is a 1-D finite real tensor and return it as a detached float64 CPU copy."""
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor of per-sample scores, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real tensor, got {x.dtype}")
    out = x.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} contains non-finite values: {x.tolist()}")
    return out


def _uncertainty_anchor(u: Tensor, lower: Tensor) -> tuple[float, float]:
    """``mu1`` and unbiased ``sigma1`` of ``u`` over the ``lower`` mask (``sigma1 = 0`` for one sample)."""
    vals = torch.sort(u[lower]).values  # fixed summation order: the same result for any batch order
    mu1 = float(vals.mean())
    sigma1 = float(vals.std(correction=1)) if vals.numel() >= 2 else 0.0
    return mu1, sigma1


def _checked_scores(
    a: Tensor | None,
    u: Tensor | None,
    *,
    tau: float,
    keep_ratio: float,
    use_patch_scoring: bool,
    use_uncertainty: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Check :func:`synergy_select`'s arguments; return ``a`` and ``u`` as float64 CPU vectors (or None)."""
    if not use_patch_scoring and not use_uncertainty:
        raise ValueError("at least one of use_patch_scoring and use_uncertainty must be on")
    if use_patch_scoring and a is None:
        raise ValueError("patch scores `a` are required when use_patch_scoring is on")
    if use_uncertainty and u is None:
        raise ValueError("uncertainties `u` are required when use_uncertainty is on")
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite number >= 0, got {tau}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    a64 = _as_vector(a, "a") if a is not None else None
    u64 = _as_vector(u, "u") if u is not None else None
    if a64 is not None and u64 is not None and a64.numel() != u64.numel():
        raise ValueError(f"a and u must have the same length, got {a64.numel()} and {u64.numel()}")
    return a64, u64


def _decision(
    keep: Tensor,
    material: Tensor,
    ranking: Tensor,
    anchor: tuple[float, float],
    phase: Phase,
    n_recalled: int,
    like: Tensor,
) -> FilterDecision:
    """A :class:`FilterDecision` with its masks and ranking on the device of ``like`` (its float dtype)."""
    out_dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    return FilterDecision(
        keep=keep.to(like.device),
        material=material.to(like.device),
        ranking_scores=ranking.to(device=like.device, dtype=out_dtype),
        mu1=anchor[0],
        sigma1=anchor[1],
        phase=phase,
        n_kept=int(keep.sum()),
        n_recalled=n_recalled,
        n_material=int(material.sum()),
    )


def _keep_and_material(
    lower: Tensor, u: Tensor | None, mu1: float, margin: float, use_urecall: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(keep, material, recalled)`` from the lower half of the ranking (Eq. 7 and Eq. 10).

    ``u`` is None when uncertainty is off: keep the lower half, no recall, no material. ``margin`` is
    ``tau * sigma1``.
    """
    upper = ~lower
    zeros = torch.zeros(lower.numel(), dtype=torch.bool)
    if u is None:
        return lower, zeros, zeros
    recalled = upper & (u <= mu1) if use_urecall else zeros  # Eq. 7, second term
    keep = lower | recalled
    material = upper & (u >= mu1 + margin) & ~keep  # Eq. 10; keeping wins when tau*sigma1 == 0
    return keep, material, recalled


def synergy_select(
    a: Tensor | None,
    u: Tensor | None,
    *,
    iteration: int,
    cold_start_iters: int = 1000,
    tau: float = 8.0,
    keep_ratio: float = 0.5,
    use_patch_scoring: bool = True,
    use_uncertainty: bool = True,
    use_urecall: bool = True,
) -> FilterDecision:
    """Select the samples to train on and the material candidates of one batch (Eq. 5-10).

    Args:
        a: ``[n]`` patch comparison scores ``A``
            (:func:`~ssfilter.filtering.patch_scoring.batch_anomaly_scores`); may be ``None`` when
            ``use_patch_scoring`` is off.
        u: ``[n]`` uncertainties ``U`` (§3.3); may be ``None`` when ``use_uncertainty`` is off.
        iteration: Training iteration; ``iteration < cold_start_iters`` is the cold-start phase.
        cold_start_iters: Length of the cold start (paper: 1000).
        tau: Outlier multiplier of Eq. 10 (paper: 8), ``>= 0``.
        keep_ratio: Split point ``m = int(n * keep_ratio)``, clamped to ``[1, n]`` (paper: 0.5).
        use_patch_scoring: Ablation (Table 4). Off: rank by ``U`` alone in every phase, ``mu1, sigma1``
            from the lower half by ``U``.
        use_uncertainty: Ablation. Off: rank by ``A`` in every phase, no URecall, no materials (``u`` is then
            only used, if given, for the reported ``mu1, sigma1``).
        use_urecall: Ablation. Off: drop the second term of Eq. 7 (keep the lower half only).

    Returns:
        The :class:`FilterDecision`; masks and ranking scores on the device of ``a`` (or ``u``).

    Raises:
        ValueError: Both scorings off, a needed score missing, mismatched lengths, non-finite scores or bad
            parameters.
    """
    a64, u64 = _checked_scores(
        a,
        u,
        tau=tau,
        keep_ratio=keep_ratio,
        use_patch_scoring=use_patch_scoring,
        use_uncertainty=use_uncertainty,
    )
    like = a if a is not None else u
    assert like is not None  # guaranteed by the checks above
    # The score the phases agree on: A, or U when patch scoring is ablated.
    base = a64 if use_patch_scoring else u64
    assert base is not None
    n = base.numel()
    if n < 2:  # nothing to compare with: keep everything
        anchor = (float(u64[0]) if u64 is not None and n == 1 else math.nan, 0.0 if n == 1 else math.nan)
        ones, zeros = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
        return _decision(ones, zeros, base.clone(), anchor, "tiny", 0, like)

    phase: Phase = "cold" if iteration < cold_start_iters else "regular"
    m = min(n, max(1, int(n * keep_ratio)))
    if phase == "regular" and use_patch_scoring and use_uncertainty:
        assert a64 is not None and u64 is not None
        ranking = (minmax(a64) + minmax(u64)) / 2.0  # Eq. 9
    else:
        ranking = base.clone()
    # mu1, sigma1 from the lower half by the pre-update score (Eq. 6), in both phases.
    mu1, sigma1 = (
        _uncertainty_anchor(u64, lower_half_mask(base, m)) if u64 is not None else (math.nan, math.nan)
    )
    lower = lower_half_mask(ranking, m)
    u_eff = u64 if use_uncertainty else None
    keep, material, recalled = _keep_and_material(lower, u_eff, mu1, tau * sigma1, use_urecall)
    return _decision(keep, material, ranking, (mu1, sigma1), phase, int(recalled.sum()), like)
