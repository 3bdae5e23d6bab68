from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssfilter.training.optim import (
    StableAdamW,
    WarmCosineScheduler,
    build_scheduler,
    clip_gradients,
    warm_cosine_lr,
)

# ----------------------------------------------------------------------------------------------------
# StableAdamW


def reference_stable_adamw(
    p0: torch.Tensor,
    grads: list[torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-10,
    wd: float = 1e-4,
    amsgrad: bool = True,
    no_clip_steps: frozenset[int] = frozenset(),
) -> tuple[torch.Tensor, list[float]]:
    """Literal float64 transcription of SPEC §1's StableAdamW; returns final params and per-step RMS."""
    b1, b2 = betas
    p = p0.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    v_max = torch.zeros_like(p)
    rms_values = []
    for t, g in enumerate(grads, start=1):
        g = g.double()
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = torch.maximum(v_max, v) if amsgrad else v
        m_hat = m / (1 - b1**t)
        v_hat = v_max / (1 - b2**t)
        denom = torch.sqrt(v_hat) + eps
        rms = math.sqrt(float(((g / denom) ** 2).mean()))
        rms_values.append(rms)
        p = p - (lr if t in no_clip_steps else lr / max(1.0, rms)) * m_hat / denom
    return p, rms_values


def run_optimizer(
    p0s: list[torch.Tensor], grads: list[list[torch.Tensor]], **kwargs: object
) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(p.clone()) for p in p0s]
    opt = StableAdamW(params, **kwargs)  # type: ignore[arg-type]
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("amsgrad", [True, False])
def test_matches_reference(amsgrad: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (2, 3, 4)]
    p0s = [torch.randn(s, generator=gen) for s in shapes]
    # decreasing gradient scale and a short second-moment memory, so AMSGrad's max differs from the average
    grads = [[torch.randn(s, generator=gen) * (2.0 / (1 + t)) for s in shapes] for t in range(8)]
    kw = {"lr": 1e-2, "betas": (0.9, 0.6)}
    out = run_optimizer(p0s, grads, weight_decay=0.05, amsgrad=amsgrad, **kw)  # type: ignore[arg-type]
    for i, p0 in enumerate(p0s):
        ref, _ = reference_stable_adamw(p0, [g[i] for g in grads], wd=0.05, amsgrad=amsgrad, **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(out[i].double(), ref, atol=1e-6, rtol=0)
    other, _ = reference_stable_adamw(p0s[0], [g[0] for g in grads], wd=0.05, amsgrad=not amsgrad, **kw)  # type: ignore[arg-type]
    assert not torch.allclose(out[0].double(), other, atol=1e-4)


def test_update_clipping_engages_on_gradient_spike() -> None:
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(64, generator=gen, dtype=torch.float64)  # float64: 31 steps without rounding drift
    grads = [torch.randn(64, generator=gen, dtype=torch.float64) * 1e-3 for _ in range(30)]
    grads.append(torch.randn(64, generator=gen, dtype=torch.float64) * 10.0)  # spike
    lr = 1e-2
    ref, rms = reference_stable_adamw(p0, grads, lr=lr)
    assert max(rms[:30]) < 2.0  # steady gradients: (almost) no clipping
    assert rms[30] > 5.0  # the spike makes RMS(g / denom) >> 1

    before = run_optimizer([p0], [[g] for g in grads[:30]], lr=lr)[0].double()
    after = run_optimizer([p0], [[g] for g in grads], lr=lr)[0].double()
    torch.testing.assert_close(after, ref, atol=1e-6, rtol=0)
    # the spike step is the unclipped AMSGrad-AdamW step divided by the RMS
    unclipped, _ = reference_stable_adamw(p0, grads, lr=lr, no_clip_steps=frozenset({31}))
    decayed = before * (1 - lr * 1e-4)
    torch.testing.assert_close((after - decayed) * rms[30], unclipped - decayed, atol=1e-5, rtol=1e-4)
    assert (after - decayed).abs().max() < lr / 2


def test_weight_decay_applied_before_the_step() -> None:
    p0 = torch.tensor([1.0, -2.0, 3.0])
    g = torch.tensor([0.5, 0.1, -0.3])
    lr, wd = 0.1, 0.5
    out = run_optimizer([p0], [[g]], lr=lr, weight_decay=wd)[0].double()
    # first step: m_hat = g, v_hat = g^2, denom = |g| + eps, rms = ~1 -> update = lr * sign(g)
    denom = g.double().abs() + 1e-10
    decay_first = p0.double() * (1 - lr * wd) - lr * g.double() / denom
    decay_after = (p0.double() - lr * g.double() / denom) * (1 - lr * wd)
    torch.testing.assert_close(out, decay_first, atol=1e-6, rtol=0)
    assert not torch.allclose(out, decay_after, atol=1e-3)


def test_amsgrad_keeps_the_maximum() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = StableAdamW([p], lr=1e-3)
    history = []
    for scale in [5.0, 0.1, 0.1, 0.1]:
        p.grad = torch.full((4,), scale)
        opt.step()
        history.append(opt.state[p]["exp_avg_sq"].clone())
    state = opt.state[p]
    torch.testing.assert_close(state["max_exp_avg_sq"], torch.stack(history).amax(0), atol=0, rtol=0)
    assert (state["max_exp_avg_sq"] > state["exp_avg_sq"]).all()

    q = torch.nn.Parameter(torch.zeros(4))
    opt2 = StableAdamW([q], lr=1e-3, amsgrad=False)
    q.grad = torch.ones(4)
    opt2.step()
    assert "max_exp_avg_sq" not in opt2.state[q]


def test_params_without_grad_are_skipped_and_sparse_rejected() -> None:
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(3))
    opt = StableAdamW([a, b], lr=0.1, weight_decay=0.1)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))  # no weight decay either
    assert len(opt.state[b]) == 0 and opt.state[a]["step"] == 1

    e = torch.nn.Embedding(4, 2, sparse=True)
    opt_sparse = StableAdamW(e.parameters())
    e(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt_sparse.step()


def test_invalid_hyperparameters() -> None:
    p = [torch.nn.Parameter(torch.ones(1))]
    for kwargs in ({"lr": -1.0}, {"eps": -1.0}, {"betas": (1.0, 0.9)}, {"weight_decay": -0.1}):
        with pytest.raises(ValueError):
            StableAdamW(p, **kwargs)  # type: ignore[arg-type]


def _make_training(seed: int = 0) -> tuple[torch.nn.Module, StableAdamW, WarmCosineScheduler]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    opt = StableAdamW(model.parameters(), lr=2e-2)
    sched = build_scheduler(opt, total_iters=20, warmup_iters=4, final_lr=2e-3)
    assert isinstance(sched, WarmCosineScheduler)
    return model, opt, sched


def _train_steps(model: torch.nn.Module, opt: StableAdamW, sched: WarmCosineScheduler, steps: range) -> None:
    for it in steps:
        gen = torch.Generator().manual_seed(100 + it)
        x = torch.randn(5, 6, generator=gen)
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        clip_gradients(model.parameters(), 0.1)
        opt.step()
        sched.step()


def test_state_dict_round_trip_resumes_bit_identically() -> None:
    model, opt, sched = _make_training()
    _train_steps(model, opt, sched, range(7))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _train_steps(model, opt, sched, range(7, 12))
    lr_ref = opt.param_groups[0]["lr"]

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, sched2 = _make_training(seed=123)  # different init: all must come from the checkpoint
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups[0]["lr"] == ckpt["opt"]["param_groups"][0]["lr"]
    _train_steps(model2, opt2, sched2, range(7, 12))

    assert opt2.param_groups[0]["lr"] == lr_ref
    for p_ref, p_new in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p_ref, p_new)


# ----------------------------------------------------------------------------------------------------
# Learning-rate schedule


def _collect_lrs(total: int, warmup: int, base: float = 2e-3, final: float = 2e-4) -> list[float]:
    opt = StableAdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = build_scheduler(opt, total_iters=total, warmup_iters=warmup, final_lr=final)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedule_key_values() -> None:
    base, final = 2e-3, 2e-4
    lrs = _collect_lrs(total=301, warmup=100, base=base, final=final)
    assert lrs[0] == 0.0
    assert lrs[50] == pytest.approx(base / 2, rel=1e-12)
    assert lrs[99] == pytest.approx(base * 99 / 100, rel=1e-12)
    assert lrs[100] == pytest.approx(base, rel=1e-12)  # warm-up end = start of the cosine
    assert lrs[200] == pytest.approx((base + final) / 2, rel=1e-12)  # middle of the cosine
    assert lrs[300] == final  # exactly final at the last iteration
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:], strict=False))
    assert lrs == [warm_cosine_lr(i, base, 301, 100, final) for i in range(301)]


def test_schedule_recipe_defaults() -> None:
    lrs = _collect_lrs(total=1000, warmup=100)
    assert lrs[0] == 0.0 and lrs[100] == pytest.approx(2e-3) and lrs[-1] == 2e-4


def test_schedule_edge_cases() -> None:
    base, final = 2e-3, 2e-4
    # warm-up longer than the run: cut short, never reaches base
    assert _collect_lrs(5, 10) == pytest.approx([base * i / 10 for i in range(5)], rel=1e-12)
    # warm-up == total: same rule
    assert _collect_lrs(4, 4) == pytest.approx([0.0, base / 4, base / 2, 3 * base / 4], rel=1e-12)
    # single-iteration cosine phase ends at final
    assert _collect_lrs(4, 3)[-1] == final
    assert _collect_lrs(1, 0) == [final]
    assert _collect_lrs(1, 1) == [0.0]
    # no warm-up: starts at base
    assert _collect_lrs(10, 0)[0] == pytest.approx(base, rel=1e-12)
    # iterations past the end hold the final value
    assert warm_cosine_lr(50, base, 10, 2, final) == final
    with pytest.raises(ValueError):
        _collect_lrs(0, 0)
    with pytest.raises(ValueError):
        _collect_lrs(10, -1)


def test_schedule_state_dict_resume() -> None:
    opt = StableAdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, total_iters=50, warmup_iters=5, final_lr=1e-5)
    for _ in range(17):
        opt.step()
        sched.step()
    state_opt, state_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    expected = []
    for _ in range(10):
        opt.step()
        sched.step()
        expected.append(opt.param_groups[0]["lr"])

    # the other order: optimiser state loaded BEFORE the scheduler is built (which resets lr to iteration 0)
    opt2 = StableAdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    opt2.load_state_dict(state_opt)
    sched2 = build_scheduler(opt2, total_iters=50, warmup_iters=5, final_lr=1e-5)
    assert opt2.param_groups[0]["lr"] == 0.0
    sched2.load_state_dict(state_sched)
    assert opt2.param_groups[0]["lr"] == state_opt["param_groups"][0]["lr"]
    got = []
    for _ in range(10):
        opt2.step()
        sched2.step()
        got.append(opt2.param_groups[0]["lr"])
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(1, 400),
    warmup=st.integers(0, 450),
    base=st.floats(1e-5, 1.0),
    final_frac=st.floats(0.0, 1.0),
)
def test_schedule_properties(total: int, warmup: int, base: float, final_frac: float) -> None:
    final = base * final_frac
    lrs = [warm_cosine_lr(i, base, total, warmup, final) for i in range(total)]
    assert all(0.0 <= lr <= base * (1 + 1e-12) for lr in lrs)
    if warmup < total:
        assert lrs[-1] == final
        assert all(a >= b - 1e-15 for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    if warmup > 0:
        assert lrs[0] == 0.0


# ----------------------------------------------------------------------------------------------------
# Gradient clipping


def test_clip_gradients_returns_tensor_norm_and_clips() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(4))
    c = torch.nn.Parameter(torch.zeros(2))  # no grad: ignored
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_gradients([a, b, c], max_norm=0.1)
    assert isinstance(norm, torch.Tensor)
    assert float(norm) == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm()
    assert float(total) == pytest.approx(0.1, rel=1e-4)

    a.grad = torch.tensor([0.03, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 0.04, 0.0, 0.0])
    value = clip_gradients([a, b], max_norm=0.1, as_float=True)
    assert isinstance(value, float) and value == pytest.approx(0.05)
    assert torch.equal(a.grad, torch.tensor([0.03, 0.0, 0.0]))  # below max_norm: untouched
