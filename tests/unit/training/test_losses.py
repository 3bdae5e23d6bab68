from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssfilter.training.losses import hard_cosine_loss, hard_mining_p


def _groups(seed: int, shape: tuple[int, ...] = (3, 4, 3, 3), n_groups: int = 2) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    enc = [torch.randn(shape, generator=gen) for _ in range(n_groups)]
    dec = [torch.randn(shape, generator=gen) for _ in range(n_groups)]
    return enc, dec


def _grads(
    enc: list[torch.Tensor],
    dec: list[torch.Tensor],
    p: float,
    factor: float,
    subset: list[int] | None = None,
) -> list[torch.Tensor]:
    leaves = [d.clone().requires_grad_(True) for d in dec]
    outs = [leaf * 1.0 for leaf in leaves]  # non-leaf decoder outputs, as in the model
    if subset is None:
        loss = hard_cosine_loss(enc, outs, p=p, factor=factor)
    else:
        loss = hard_cosine_loss(enc, outs, p=p, factor=factor, reduction="none")[subset].sum()
    loss.backward()
    return [leaf.grad for leaf in leaves]  # type: ignore[misc]


def _distance(enc: torch.Tensor, dec: torch.Tensor) -> np.ndarray:
    """Reference point distance ``[B, H, W]`` in float64 numpy: 1 - cosine over the channel axis."""
    e, d = enc.double().numpy(), dec.double().numpy()
    return 1.0 - (e * d).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(d, axis=1))


def _easy_mask(enc: torch.Tensor, dec: torch.Tensor, p: float) -> torch.Tensor:
    """Reference mask ``[B, C, H, W]``: the positions outside the batch's ``k`` hardest.

    ``k = max(1, int(n * (1 - p)))`` of the ``n`` positions are hard. The numpy distances are ranked with
    ``argsort`` (random data has no ties), independently of the loss's threshold-and-compare selection.
    """
    d = _distance(enc, dec)
    k = max(1, int(d.size * (1 - p)))
    hard = np.zeros(d.size, dtype=bool)
    hard[np.argsort(-d, axis=None, kind="stable")[:k]] = True
    easy = torch.from_numpy(~hard.reshape(d.shape))
    return easy.unsqueeze(1).expand_as(enc)


def test_hard_mining_p_ramp() -> None:
    assert hard_mining_p(0) == 0.0
    assert hard_mining_p(500) == pytest.approx(0.45)
    assert hard_mining_p(1000) == pytest.approx(0.9)
    assert hard_mining_p(5000) == 0.9
    assert hard_mining_p(50, p_max=0.5, ramp_iters=100) == pytest.approx(0.25)
    assert hard_mining_p(3, ramp_iters=0) == 0.9
    assert hard_mining_p(-5) == 0.0


def test_value_matches_hand_computation() -> None:
    # B=2, C=2, H=1, W=2
    a = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 2.0]], [[3.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]], [[[-1.0, 2.0]], [[3.0, 0.0]]]])
    per_image = []
    for i in range(2):
        x, y = a[i].flatten().tolist(), b[i].flatten().tolist()
        dot = sum(u * v for u, v in zip(x, y, strict=True))
        cos = dot / (math.sqrt(sum(u * u for u in x)) * math.sqrt(sum(v * v for v in y)))
        per_image.append(1 - cos)
    none = hard_cosine_loss([a], [b], p=0.5, reduction="none")
    torch.testing.assert_close(none, torch.tensor(per_image), atol=1e-6, rtol=0)
    mean = hard_cosine_loss([a, a], [b, a], p=0.5)  # second group is a perfect reconstruction
    assert float(mean) == pytest.approx(sum(per_image) / 2 / 2, abs=1e-6)
    assert none.dtype == torch.float32 and mean.ndim == 0


def test_easy_positions_get_exactly_factor_times_the_gradient() -> None:
    enc, dec = _groups(0)
    p, factor = 0.5, 0.1
    plain = _grads(enc, dec, p=p, factor=1.0)
    mined = _grads(enc, dec, p=p, factor=factor)
    for e, d, g1, g2 in zip(enc, dec, plain, mined, strict=True):
        easy = _easy_mask(e, d, p)
        n_pos = e.shape[0] * e.shape[2] * e.shape[3]
        assert int(easy[:, 0].sum()) == n_pos - int(n_pos * (1 - p))  # no ties with random data
        assert torch.equal(g2[easy], g1[easy] * factor)
        assert torch.equal(g2[~easy], g1[~easy])


def test_p_zero_leaves_gradients_untouched() -> None:
    enc, dec = _groups(1)
    for g1, g2 in zip(_grads(enc, dec, 0.0, 1.0), _grads(enc, dec, 0.0, 0.1), strict=True):
        assert torch.equal(g1, g2)


def test_p_one_keeps_only_the_hardest_position() -> None:
    enc, dec = _groups(2, n_groups=1)
    g1, g2 = _grads(enc, dec, 1.0, 1.0)[0], _grads(enc, dec, 1.0, 0.1)[0]
    unchanged = (g1 == g2).all(dim=1)  # [B, H, W]
    assert int(unchanged.sum()) == 1
    assert unchanged.flatten().nonzero().item() == int(np.argmax(_distance(enc[0], dec[0])))


def test_threshold_is_over_the_whole_batch_not_per_image() -> None:
    gen = torch.Generator().manual_seed(3)
    enc = torch.randn(2, 4, 3, 3, generator=gen)
    dec = enc.clone()
    dec[0] = -enc[0] + 0.1 * torch.randn(4, 3, 3, generator=gen)  # image 0: all positions far (hard)
    dec[1] = enc[1] + 0.1 * torch.randn(4, 3, 3, generator=gen)  # image 1: all positions close (easy)
    g1, g2 = _grads([enc], [dec], 0.5, 1.0)[0], _grads([enc], [dec], 0.5, 0.1)[0]
    assert torch.equal(g1[0], g2[0])  # per-image thresholds would have scaled half of image 0
    scaled = (g2[1] != g1[1]).any(dim=0)
    assert int(scaled.sum()) == 9  # 18 positions, k = 9 hard ones: all of image 0; all of image 1 is easy


def test_hook_acts_correctly_when_only_a_subset_is_summed() -> None:
    enc, dec = _groups(4, shape=(4, 3, 2, 3))
    subset = [0, 2]
    plain = _grads(enc, dec, 0.6, 1.0, subset=subset)
    mined = _grads(enc, dec, 0.6, 0.1, subset=subset)
    for e, d, g1, g2 in zip(enc, dec, plain, mined, strict=True):
        assert torch.count_nonzero(g2[[1, 3]]) == 0  # images left out get no gradient
        easy = _easy_mask(e, d, 0.6)  # threshold from the WHOLE batch, not the subset
        assert torch.equal(g2[easy], g1[easy] * 0.1)
        assert torch.equal(g2[~easy], g1[~easy])
    # kept + synthetic weighting of Eq. 12-14: (sum_kept + sum_synth) / (n1 + n2) == mean over the batch
    outs = [d.clone().requires_grad_(True) for d in dec]
    none = hard_cosine_loss(enc, outs, p=0.6, reduction="none")
    eq14 = (none[[0, 1]].sum() + none[[2, 3]].sum()) / 4
    torch.testing.assert_close(eq14, hard_cosine_loss(enc, dec, p=0.6), atol=1e-7, rtol=0)


def test_reduction_none_and_mean_are_consistent() -> None:
    enc, dec = _groups(5)
    none = hard_cosine_loss(enc, dec, p=0.3, reduction="none")
    assert none.shape == (3,)
    torch.testing.assert_close(none.mean(), hard_cosine_loss(enc, dec, p=0.3), atol=1e-7, rtol=0)
    per_group = torch.stack(
        [hard_cosine_loss([e], [d], p=0.3, reduction="none") for e, d in zip(enc, dec, strict=True)]
    )
    torch.testing.assert_close(none, per_group.mean(0), atol=1e-7, rtol=0)


def test_zero_vectors_give_no_nan() -> None:
    enc = [torch.zeros(2, 3, 2, 2)]
    leaf = torch.zeros(2, 3, 2, 2, requires_grad=True)
    loss = hard_cosine_loss(enc, [leaf * 1.0], p=0.9)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.0)
    assert torch.isfinite(leaf.grad).all()  # type: ignore[arg-type]


def test_encoder_is_detached_and_no_hook_without_grad() -> None:
    enc, dec = _groups(6, n_groups=1)
    e = enc[0].clone().requires_grad_(True)
    leaf = dec[0].clone().requires_grad_(True)
    hard_cosine_loss([e], [leaf * 1.0], p=0.5).backward()
    assert e.grad is None and leaf.grad is not None
    with torch.no_grad():
        value = hard_cosine_loss(enc, dec, p=0.5)  # plain tensors, no grad: no hook, no error
    assert torch.isfinite(value)


def test_bf16_inputs_and_autocast_select_in_float32() -> None:
    enc, dec = _groups(7)
    enc16 = [e.bfloat16() for e in enc]
    leaves = [d.bfloat16().requires_grad_(True) for d in dec]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = hard_cosine_loss(enc16, [leaf * 1.0 for leaf in leaves], p=0.5, factor=0.0)
    assert loss.dtype == torch.float32
    ref = hard_cosine_loss([e.float() for e in enc16], [leaf.detach().float() for leaf in leaves], p=0.5)
    assert float(loss.detach()) == pytest.approx(float(ref), abs=1e-6)
    loss.backward()
    for e, leaf in zip(enc16, leaves, strict=True):
        assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16
        easy = _easy_mask(e.float(), leaf.detach().float(), 0.5)  # float32 selection on the bf16 values
        assert torch.count_nonzero(leaf.grad[easy]) == 0  # factor 0: easy positions get no gradient
        assert torch.count_nonzero(leaf.grad[~easy]) > 0


def test_invalid_arguments() -> None:
    enc, dec = _groups(8)
    with pytest.raises(ValueError):
        hard_cosine_loss(enc, dec[:1], p=0.5)
    with pytest.raises(ValueError):
        hard_cosine_loss([], [], p=0.5)
    with pytest.raises(ValueError):
        hard_cosine_loss(enc, dec, p=1.5)
    with pytest.raises(ValueError):
        hard_cosine_loss(enc, dec, p=0.5, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hard_cosine_loss([enc[0]], [dec[0][:, :2]], p=0.5)
