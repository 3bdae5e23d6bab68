from __future__ import annotations

import itertools

import pytest
import torch

from ssfilter.filtering.uncertainty_bank import UncertaintyBank, bank_chunk_seed


def _bank(pool: int, passes: int, n: int = 5) -> UncertaintyBank:
    scores = torch.arange(n * pool, dtype=torch.float64).reshape(n, pool) ** 1.5 / 10
    return UncertaintyBank(scores, passes)


def test_pool_equal_to_passes_gives_the_std_of_all_passes_every_time() -> None:
    bank = _bank(3, 3)
    want = bank.pass_scores.std(dim=1, correction=1)
    for s in range(3):
        got = bank.draw([0, 1, 2, 3, 4], torch.Generator().manual_seed(s))
        assert torch.equal(got, want)


def test_draws_are_k_subsets_seeded_and_vary() -> None:
    bank = _bank(6, 3)
    ids = [4, 0, 2]
    a = bank.draw(ids, torch.Generator().manual_seed(1))
    assert torch.equal(a, bank.draw(ids, torch.Generator().manual_seed(1)))
    for i, value in zip(ids, a.tolist(), strict=True):
        stds = [
            float(bank.pass_scores[i, list(c)].std(correction=1)) for c in itertools.combinations(range(6), 3)
        ]
        assert min(abs(value - s) for s in stds) < 1e-12
    draws = {tuple(bank.draw(ids, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(draws) > 1, "a pool larger than K must give fresh draws per batch"


def test_single_pass_and_bad_arguments() -> None:
    assert torch.equal(_bank(1, 1).draw([0, 1], torch.Generator()), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="pool"):
        _bank(2, 3)
    assert bank_chunk_seed(0, 1) != bank_chunk_seed(0, 2) and bank_chunk_seed(0, 1) == bank_chunk_seed(0, 1)
