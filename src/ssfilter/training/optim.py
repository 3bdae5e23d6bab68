"""Optimiser, learning-rate schedule and gradient clipping of the Dinomaly/SSFilter training recipe (SPEC §1).

Recipe: StableAdamW (lr 2e-3, weight decay 1e-4, AMSGrad, eps 1e-10), gradient-norm clipping at 0.1, linear
warm-up over 100 iterations then cosine decay to 2e-4 at the last iteration, all stepped every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["StableAdamW", "WarmCosineScheduler", "build_scheduler", "clip_gradients", "warm_cosine_lr"]


class StableAdamW(torch.optim.Optimizer):
    """AdamW with AMSGrad and StableAdam update clipping (Wortsman et al. 2023), as Dinomaly trains with.

    Written here because no maintained package provides StableAdamW *with AMSGrad* (torch-optimi's
    StableAdamW, for one, has no ``amsgrad``), and the recipe needs it. Per parameter tensor and step ``t``::

        p      <- p * (1 - lr * wd)                       # decoupled weight decay, applied FIRST
        m      <- b1 * m + (1 - b1) * g
        v      <- b2 * v + (1 - b2) * g^2
        v_max  <- max(v_max, v)                           # AMSGrad (v_max := v without it)
        denom  =  sqrt(v_max) / sqrt(1 - b2^t) + eps      # = sqrt(bias-corrected v_max) + eps
        clip   =  max(1, RMS(g / denom))                  # RMS over the tensor's elements
        p      <- p - lr / clip * (m / (1 - b1^t)) / denom

    The clip factor damps a step whose gradient is large compared with its running second moment (a spike),
    instead of clipping the gradient itself. It stays on the device (no host synchronisation).

    Parameters with ``grad is None`` are skipped (their step counter does not advance); sparse gradients are
    rejected. State (``step`` as a Python int, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) goes through
    the standard ``state_dict``/``load_state_dict``, so a resumed run continues bit-identically.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-10,
        weight_decay: float = 1e-4,
        amsgrad: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas: {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr: float = group["lr"]
            weight_decay: float = group["weight_decay"]
            eps: float = group["eps"]
            beta1, beta2 = group["betas"]
            amsgrad: bool = group["amsgrad"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("StableAdamW does not support sparse gradients")

                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if amsgrad:
                        state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step: int = state["step"]
                bias_correction1 = 1.0 - beta1**step
                bias_correction2 = 1.0 - beta2**step

                if weight_decay != 0.0:
                    p.mul_(1.0 - lr * weight_decay)

                exp_avg: Tensor = state["exp_avg"]
                exp_avg_sq: Tensor = state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                if amsgrad:
                    second_moment: Tensor = state["max_exp_avg_sq"]
                    torch.maximum(second_moment, exp_avg_sq, out=second_moment)
                else:
                    second_moment = exp_avg_sq

                denom = (second_moment.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                rms = (grad / denom).square().mean().sqrt()
                clip = rms.clamp(min=1.0)
                p.addcdiv_(exp_avg, denom.mul_(clip), value=-lr / bias_correction1)
        return loss


def warm_cosine_lr(
    iteration: int, base_lr: float, total_iters: int, warmup_iters: int, final_lr: float
) -> float:
    """Learning rate at ``iteration`` (0-based) of a linear warm-up + cosine schedule.

    * ``iteration < warmup_iters``: ``base_lr * iteration / warmup_iters`` (0 at iteration 0).
    * from ``warmup_iters`` to ``total_iters - 1``: cosine from ``base_lr`` down to exactly ``final_lr`` at
      the last iteration ``total_iters - 1``.
    * Edge cases: iterations past the end hold the last value. If ``warmup_iters >= total_iters`` the warm-up
      is cut short and the run ends before reaching ``base_lr`` (as in Dinomaly; a short smoke run should not
      jump to full lr). When the cosine phase is a single iteration (``warmup_iters == total_iters - 1``, or
      ``total_iters == 1`` without warm-up) that iteration gets ``final_lr``.
    """
    it = min(max(iteration, 0), total_iters - 1)
    if it < warmup_iters:
        return base_lr * it / warmup_iters
    span = total_iters - 1 - warmup_iters
    if span <= 0:
        return final_lr
    progress = (it - warmup_iters) / span
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


class WarmCosineScheduler(LRScheduler):
    """Per-iteration warm-up + cosine schedule (:func:`warm_cosine_lr`), built by :func:`build_scheduler`.

    Each parameter group's initial lr is its ``base_lr``; ``final_lr`` is the same absolute value for all
    groups. A closed-form subclass rather than ``LambdaLR``: ``LambdaLR`` scales the base lr by a factor, so
    the last lr would be ``base * (final / base)``, off ``final_lr`` by rounding. The default ``state_dict``
    (everything but the optimiser, including the schedule's parameters) makes it resumable.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int, final_lr: float
    ) -> None:
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if final_lr < 0.0:
            raise ValueError(f"final_lr must be >= 0, got {final_lr}")
        self.total_iters = total_iters
        self.warmup_iters = warmup_iters
        self.final_lr = final_lr
        super().__init__(optimizer)

    def _lrs_at(self, iteration: int) -> list[float]:
        return [
            warm_cosine_lr(iteration, base, self.total_iters, self.warmup_iters, self.final_lr)
            for base in self.base_lrs
        ]

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Learning rates for the current iteration ``self.last_epoch``."""
        return self._lrs_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self._lrs_at(self.last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the schedule and write the restored iteration's lr into the optimiser's groups.

        Building a scheduler sets the groups' lr to the iteration-0 value; re-applying it here makes resume
        independent of whether the optimiser state was loaded before or after the scheduler was built.
        """
        super().load_state_dict(state_dict)
        lrs = self._lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self._last_lr = lrs


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int, final_lr: float
) -> LRScheduler:
    """Warm-up + cosine scheduler of the recipe; call ``step()`` once per iteration, after the optimiser's.

    On resume, build it on the restored optimiser and ``load_state_dict`` the saved scheduler state.
    """
    return WarmCosineScheduler(
        optimizer, total_iters=total_iters, warmup_iters=warmup_iters, final_lr=final_lr
    )


@overload
def clip_gradients(
    params: Iterable[Tensor] | Tensor, max_norm: float, *, as_float: Literal[False] = ...
) -> Tensor: ...
@overload
def clip_gradients(
    params: Iterable[Tensor] | Tensor, max_norm: float, *, as_float: Literal[True]
) -> float: ...
def clip_gradients(
    params: Iterable[Tensor] | Tensor, max_norm: float, *, as_float: bool = False
) -> Tensor | float:
    """Clip the global L2 norm of the gradients to ``max_norm`` in place; returns the norm before clipping.

    The norm comes back as a device tensor so the training loop does not synchronise with the host every
    iteration; ``as_float=True`` converts it (a sync), e.g. on logging iterations. Parameters without gradient
    are ignored.
    """
    total_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0)
    return float(total_norm) if as_float else total_norm
