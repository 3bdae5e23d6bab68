from __future__ import annotations

import pytest
import torch
from scipy import stats

from ssfilter.filtering.uncertainty_bank import UncertaintyBank, bank_chunk_seed


def _bank(pool: int, passes: int, n: int = 5) -> UncertaintyBank:
    scores = torch.arange(n * pool, dtype=torch.float64).reshape(n, pool) ** 1.5 / 10
    return UncertaintyBank(scores, passes)


def test_spread_is_the_unbiased_std_of_the_pool() -> None:
    bank = _bank(6, 3)
    torch.testing.assert_close(bank.spread, bank.pass_scores.std(dim=1, correction=1))


def test_draws_are_seeded_fresh_per_batch_and_scale_with_the_spread() -> None:
    bank = _bank(6, 3)
    ids = [4, 0, 2]
    a = bank.draw(ids, torch.Generator().manual_seed(1))
    assert torch.equal(a, bank.draw(ids, torch.Generator().manual_seed(1)))
    draws = {tuple(bank.draw(ids, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) == 20, "every batch must get a fresh draw"
    # One generator state, two images: their u differ only by their spreads' ratio when drawn alone.
    u4 = bank.draw([4], torch.Generator().manual_seed(3))
    u0 = bank.draw([0], torch.Generator().manual_seed(3))
    torch.testing.assert_close(u4 / u0, bank.spread[[4]] / bank.spread[[0]])


@pytest.mark.parametrize("k", [2, 3, 10])
def test_draws_follow_the_std_of_k_fresh_normal_passes(k: int) -> None:
    # The paper draws u_i as the std of K fresh pass scores; for normal scores with spread s that is
    # s * sqrt(chi2_{K-1} / (K-1)). Compare 4000 bank draws with 4000 stds of K simulated passes.
    s = 0.3
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(1, 4000, generator=gen, dtype=torch.float64) * s  # a large pool: s_i ~ s
    bank = UncertaintyBank(pool, k)
    drawn = torch.cat([bank.draw([0] * 400, torch.Generator().manual_seed(b)) for b in range(10)])
    fresh = (torch.randn(4000, k, generator=gen, dtype=torch.float64) * s).std(dim=1, correction=1)
    assert stats.ks_2samp(drawn.numpy(), fresh.numpy()).pvalue > 0.01
    assert (drawn.square().mean() / s**2).item() == pytest.approx(1.0, abs=0.06)  # E[S^2] = s^2


def test_single_pass_and_bad_arguments() -> None:
    assert torch.equal(_bank(1, 1).draw([0, 1], torch.Generator()), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(_bank(4, 1).draw([0, 1], torch.Generator()), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="pool"):
        _bank(2, 3)
    assert bank_chunk_seed(0, 1) != bank_chunk_seed(0, 2) and bank_chunk_seed(0, 1) == bank_chunk_seed(0, 1)
