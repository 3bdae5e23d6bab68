from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssfilter.filtering.synergy import FilterDecision, lower_half_mask, minmax, synergy_select

COLD = 0
REGULAR = 5000


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _mask(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def _check(d: FilterDecision, keep: list[int], material: list[int]) -> None:
    assert d.keep.tolist() == [bool(v) for v in keep]
    assert d.material.tolist() == [bool(v) for v in material]
    assert d.n_kept == sum(keep) and d.n_material == sum(material)


# ----------------------------------------------------------------------------------------------------------
# Cold start, hand-computed (n = 6, m = int(6 * 0.5) = 3)
# ----------------------------------------------------------------------------------------------------------


def test_cold_start_hand_computed_with_boundaries() -> None:
    a = _t([0.5, 0.1, 0.9, 0.3, 0.7, 0.8])
    # sorted A: 0.1 (i1), 0.3 (i3), 0.5 (i0) | 0.7 (i4), 0.8 (i5), 0.9 (i2); a'_3 = 0.5.
    # i0 has a == a'_m exactly and is in the lower half (inclusive): lower = {0, 1, 3}, upper = {2, 4, 5}.
    u = _t([2.0, 0.0, 1.0, 1.0, 9.0, 1.5])
    # U1 = u[{0, 1, 3}] = [2, 0, 1]: mu1 = 1, sigma1 (unbiased) = sqrt(((1)^2 + (-1)^2 + 0^2) / 2) = 1.
    # Material threshold mu1 + tau*sigma1 = 1 + 8*1 = 9.
    # i2: upper, u = 1.0 == mu1      -> recalled (inclusive), not material.
    # i4: upper, u = 9.0 == 9        -> not recalled, material (inclusive).
    # i5: upper, u = 1.5 in (1, 9)   -> dropped, not material.
    d = synergy_select(a, u, iteration=COLD)
    assert d.phase == "cold"
    assert d.mu1 == 1.0 and d.sigma1 == 1.0
    _check(d, keep=[1, 1, 1, 1, 0, 0], material=[0, 0, 0, 0, 1, 0])
    assert d.n_recalled == 1
    torch.testing.assert_close(d.ranking_scores, a)  # cold start ranks by A unchanged


def test_cold_start_ties_at_the_boundary_are_all_kept() -> None:
    a = _t([0.5, 0.1, 0.9, 0.3, 0.5, 0.8])
    # sorted: 0.1 (i1), 0.3 (i3), 0.5 (i0), 0.5 (i4), 0.8 (i5), 0.9 (i2); a'_3 = a'_4 = 0.5.
    # a_i <= a'_3 keeps i4 too: lower = {0, 1, 3, 4} (4 samples), upper = {2, 5}.
    u = _t([0.0, 1.0, 50.0, 2.0, 1.0, 0.5])
    # U1 = u[{0, 1, 3, 4}] = [0, 1, 2, 1]: mu1 = 1, sigma1 = sqrt((1 + 0 + 1 + 0) / 3) = sqrt(2/3) = 0.8165.
    # threshold = 1 + 8 * 0.8165 = 7.532. i2: u = 50 -> material; i5: u = 0.5 <= 1 -> recalled.
    d = synergy_select(a, u, iteration=COLD)
    assert d.mu1 == pytest.approx(1.0) and d.sigma1 == pytest.approx(math.sqrt(2 / 3))
    _check(d, keep=[1, 1, 0, 1, 1, 1], material=[0, 0, 1, 0, 0, 0])
    assert d.n_recalled == 1
    # A tie at the boundary is never a material candidate, however high its uncertainty: it is kept.
    d = synergy_select(a, _t([0.0, 1.0, 0.0, 2.0, 1000.0, 0.5]), iteration=COLD)
    assert bool(d.keep[4]) and not bool(d.material[4])


# ----------------------------------------------------------------------------------------------------------
# Regular phase, hand-computed: the updated ranking differs from the pre-update one
# ----------------------------------------------------------------------------------------------------------

A_REG = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # minmax(A) = A (min 0, max 1)
U_REG = [0.0, 1.0, 2.0, 0.0, 1.0, 9.0]  # minmax(U) = U / 9


def test_regular_phase_hand_computed() -> None:
    # Eq. 9: r = (minmax(A) + minmax(U)) / 2
    #   i0: (0.0 + 0/9) / 2 = 0.0        i3: (0.6 + 0/9) / 2 = 0.3
    #   i1: (0.2 + 1/9) / 2 = 0.1556     i4: (0.8 + 1/9) / 2 = 0.4556
    #   i2: (0.4 + 2/9) / 2 = 0.3111     i5: (1.0 + 9/9) / 2 = 1.0
    # sorted r: i0, i1, i3 | i2, i4, i5 -> lower = {0, 1, 3}, upper = {2, 4, 5}.
    # Pre-update lower half by A = {0, 1, 2}: U1 = [0, 1, 2] -> mu1 = 1, sigma1 = 1, threshold 9.
    # (By the updated ranking, U1 would be [0, 1, 0]: mu1 = 1/3, and i4 would NOT be recalled.)
    #   i2: upper, u = 2 > 1         -> dropped (although it is in the pre-update lower half).
    #   i4: upper, u = 1 == mu1      -> recalled.
    #   i5: upper, u = 9 == 9        -> material.
    d = synergy_select(_t(A_REG), _t(U_REG), iteration=REGULAR)
    assert d.phase == "regular"
    assert d.mu1 == 1.0 and d.sigma1 == 1.0
    _check(d, keep=[1, 1, 0, 1, 1, 0], material=[0, 0, 0, 0, 0, 1])
    assert d.n_recalled == 1
    expected = _t([0.0, (0.2 + 1 / 9) / 2, (0.4 + 2 / 9) / 2, 0.3, (0.8 + 1 / 9) / 2, 1.0])
    torch.testing.assert_close(d.ranking_scores, expected)


def test_same_scores_in_cold_phase_rank_by_a() -> None:
    # Ranking by A: lower = {0, 1, 2}, upper = {3, 4, 5}; mu1 = 1, sigma1 = 1 as above.
    #   i3: u = 0 <= 1 -> recalled; i4: u = 1 == mu1 -> recalled; i5: u = 9 -> material.
    d = synergy_select(_t(A_REG), _t(U_REG), iteration=999, cold_start_iters=1000)
    assert d.phase == "cold"
    _check(d, keep=[1, 1, 1, 1, 1, 0], material=[0, 0, 0, 0, 0, 1])
    assert d.n_recalled == 2
    assert synergy_select(_t(A_REG), _t(U_REG), iteration=1000, cold_start_iters=1000).phase == "regular"


def test_regular_phase_ranking_of_constant_vectors_is_zero_not_nan() -> None:
    d = synergy_select(_t([0.3] * 4), _t([0.2] * 4), iteration=REGULAR)
    torch.testing.assert_close(d.ranking_scores, torch.zeros(4, dtype=torch.float64))
    # All tied: the whole batch is the lower half; mu1 = 0.2, sigma1 = 0.
    assert d.keep.all() and not d.material.any()
    assert d.mu1 == pytest.approx(0.2) and d.sigma1 == 0.0


# ----------------------------------------------------------------------------------------------------------
# Ablation switches (paper Table 4)
# ----------------------------------------------------------------------------------------------------------


def test_without_uncertainty_rank_by_a_in_every_phase() -> None:
    for iteration in (COLD, REGULAR):
        d = synergy_select(_t(A_REG), None, iteration=iteration, use_uncertainty=False)
        _check(d, keep=[1, 1, 1, 0, 0, 0], material=[0] * 6)
        assert d.n_recalled == 0 and math.isnan(d.mu1) and math.isnan(d.sigma1)
        torch.testing.assert_close(d.ranking_scores, _t(A_REG))
    # A given U is ignored for the decision (only reported).
    d = synergy_select(_t(A_REG), _t(U_REG), iteration=REGULAR, use_uncertainty=False)
    _check(d, keep=[1, 1, 1, 0, 0, 0], material=[0] * 6)
    assert d.mu1 == 1.0


def test_without_urecall_keep_only_the_lower_half() -> None:
    # Regular-phase case above minus the recall of i4; i5 is still material.
    d = synergy_select(_t(A_REG), _t(U_REG), iteration=REGULAR, use_urecall=False)
    _check(d, keep=[1, 1, 0, 1, 0, 0], material=[0, 0, 0, 0, 0, 1])
    assert d.n_recalled == 0
    d = synergy_select(_t(A_REG), _t(U_REG), iteration=COLD, use_urecall=False)
    _check(d, keep=[1, 1, 1, 0, 0, 0], material=[0, 0, 0, 0, 0, 1])


def test_without_patch_scoring_rank_by_u() -> None:
    # sorted U: 0 (i0), 0 (i3), 1 (i1), 1 (i4), 2 (i2), 9 (i5); u'_3 = u'_4 = 1 -> lower = {0, 1, 3, 4}.
    # U1 = [0, 1, 0, 1]: mu1 = 0.5, sigma1 = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5774; threshold = 5.119.
    # upper = {2, 5}: none has u <= 0.5 (no recall possible), i5 (u = 9) is material.
    for iteration in (COLD, REGULAR):
        for a in (None, _t(A_REG)):  # A is ignored
            d = synergy_select(a, _t(U_REG), iteration=iteration, use_patch_scoring=False)
            _check(d, keep=[1, 1, 0, 1, 1, 0], material=[0, 0, 0, 0, 0, 1])
            assert d.mu1 == pytest.approx(0.5) and d.sigma1 == pytest.approx(math.sqrt(1 / 3))
            torch.testing.assert_close(d.ranking_scores, _t(U_REG))


def test_both_scorings_off_or_missing_scores_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        synergy_select(_t(A_REG), _t(U_REG), iteration=0, use_patch_scoring=False, use_uncertainty=False)
    with pytest.raises(ValueError, match="`u` are required"):
        synergy_select(_t(A_REG), None, iteration=0)
    with pytest.raises(ValueError, match="`a` are required"):
        synergy_select(None, _t(U_REG), iteration=0)


@pytest.mark.parametrize(
    ("a", "u", "kwargs"),
    [
        ([0.1, 0.2], [0.1], {}),
        ([0.1, math.nan], [0.1, 0.2], {}),
        ([0.1, 0.2], [math.inf, 0.2], {}),
        ([0.1, 0.2], [0.1, 0.2], {"tau": -1.0}),
        ([0.1, 0.2], [0.1, 0.2], {"tau": math.nan}),
        ([0.1, 0.2], [0.1, 0.2], {"keep_ratio": 0.0}),
        ([0.1, 0.2], [0.1, 0.2], {"keep_ratio": 1.5}),
    ],
)
def test_bad_inputs_raise(a: list[float], u: list[float], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        synergy_select(_t(a), _t(u), iteration=0, **kwargs)


def test_two_dimensional_scores_raise() -> None:
    with pytest.raises(ValueError, match="1-D"):
        synergy_select(torch.rand(2, 2), torch.rand(2, 2), iteration=0)


# ----------------------------------------------------------------------------------------------------------
# Degenerate statistics and tiny batches
# ----------------------------------------------------------------------------------------------------------


def test_zero_sigma_keep_wins_over_material() -> None:
    # n = 4, m = 2: lower = {0, 1}, U1 = [5, 5] -> mu1 = 5, sigma1 = 0, threshold = 5 + 8*0 = 5.
    # i2 (u = 5): Eq. 7 recalls it (5 <= 5) and Eq. 10 would also pick it (5 >= 5): keeping wins.
    # i3 (u = 7): not recalled, material.
    d = synergy_select(_t([0.0, 1.0, 2.0, 3.0]), _t([5.0, 5.0, 5.0, 7.0]), iteration=COLD)
    assert d.sigma1 == 0.0
    _check(d, keep=[1, 1, 1, 0], material=[0, 0, 0, 1])
    # Without URecall the same sample is not kept, so it is material.
    d = synergy_select(_t([0.0, 1.0, 2.0, 3.0]), _t([5.0, 5.0, 5.0, 7.0]), iteration=COLD, use_urecall=False)
    _check(d, keep=[1, 1, 0, 0], material=[0, 0, 1, 1])


def test_single_sample_batch_keeps_everything() -> None:
    for iteration in (COLD, REGULAR):
        d = synergy_select(_t([0.7]), _t([0.3]), iteration=iteration)
        assert d.phase == "tiny"
        _check(d, keep=[1], material=[0])
        assert d.mu1 == pytest.approx(0.3) and d.sigma1 == 0.0
        assert d.n_recalled == 0
    d = synergy_select(torch.zeros(0), torch.zeros(0), iteration=COLD)
    assert d.phase == "tiny" and d.keep.numel() == 0 and d.n_kept == 0


@pytest.mark.parametrize("iteration", [COLD, REGULAR])
def test_two_and_three_samples_never_nan(iteration: int) -> None:
    # n = 2, m = 1: lower = {i1} (a = 0.1), mu1 = u1 = 0.5, sigma1 = 0 (one value).
    # i0 (upper, u = 0.3 <= 0.5): recalled. Regular ranking: r = ([1, 0] + [0, 1]) / 2 = [0.5, 0.5]: a tie
    # at the boundary, so both are in the lower half.
    d = synergy_select(_t([0.2, 0.1]), _t([0.3, 0.5]), iteration=iteration)
    assert d.phase in ("cold", "regular") and d.mu1 == 0.5 and d.sigma1 == 0.0
    _check(d, keep=[1, 1], material=[0, 0])
    # n = 3, m = 1; constant vectors and a high-uncertainty sample.
    d = synergy_select(_t([0.4, 0.4, 0.4]), _t([1.0, 1.0, 1.0]), iteration=iteration)
    assert d.keep.all() and torch.isfinite(d.ranking_scores).all()
    d = synergy_select(_t([0.1, 0.2, 0.3]), _t([0.1, 0.1, 0.6]), iteration=iteration)
    # lower = {0} (cold: a; regular: r = [0, 0.5, 1]): mu1 = 0.1, sigma1 = 0, threshold 0.1.
    # i1: u = 0.1 == mu1 -> recalled; i2: u = 0.6 >= 0.1 -> material.
    assert (d.mu1, d.sigma1) == (pytest.approx(0.1), 0.0)
    _check(d, keep=[1, 1, 0], material=[0, 0, 1])


def test_helpers() -> None:
    torch.testing.assert_close(minmax(_t([2.0, 4.0, 3.0])), _t([0.0, 1.0, 0.5]))
    torch.testing.assert_close(minmax(_t([3.0, 3.0])), _t([0.0, 0.0]))
    assert lower_half_mask(_t([3.0, 1.0, 2.0, 1.0]), 1).tolist() == [False, True, False, True]
    with pytest.raises(ValueError):
        lower_half_mask(_t([1.0]), 0)


def test_outputs_follow_input_dtype_and_device() -> None:
    d = synergy_select(torch.rand(8), torch.rand(8), iteration=REGULAR)
    assert d.ranking_scores.dtype == torch.float32
    assert d.keep.dtype == torch.bool and d.material.dtype == torch.bool
    d = synergy_select(torch.rand(8, dtype=torch.bfloat16), torch.rand(8), iteration=COLD)
    assert d.ranking_scores.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------

# Scores from a small grid so ties (at the boundary and elsewhere) are frequent.
_score = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 10.0, allow_nan=False))


@st.composite
def _batches(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    n = draw(st.integers(2, 12))
    return draw(st.lists(_score, min_size=n, max_size=n)), draw(st.lists(_score, min_size=n, max_size=n))


@settings(max_examples=150, deadline=None)
@given(
    batch=_batches(),
    iteration=st.sampled_from([COLD, REGULAR]),
    tau=st.one_of(st.just(0.0), st.floats(0.0, 10.0)),
    keep_ratio=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    switches=st.sampled_from(
        [(True, True, True), (True, True, False), (True, False, True), (False, True, True)]
    ),
    perm_seed=st.integers(0, 1000),
)
def test_properties(
    batch: tuple[list[float], list[float]],
    iteration: int,
    tau: float,
    keep_ratio: float,
    switches: tuple[bool, bool, bool],
    perm_seed: int,
) -> None:
    a, u = _t(batch[0]), _t(batch[1])
    use_ps, use_unc, use_rec = switches
    kwargs = {
        "tau": tau,
        "keep_ratio": keep_ratio,
        "use_patch_scoring": use_ps,
        "use_uncertainty": use_unc,
        "use_urecall": use_rec,
    }
    d = synergy_select(a, u, iteration=iteration, **kwargs)
    n = a.numel()
    m = min(n, max(1, int(n * keep_ratio)))
    lower = lower_half_mask(d.ranking_scores, m)  # the lower half of the ranking actually used
    upper = ~lower

    assert torch.isfinite(d.ranking_scores).all()
    assert not math.isnan(d.mu1) and not math.isnan(d.sigma1) and d.sigma1 >= 0
    assert int(lower.sum()) >= m
    # keep is a superset of the lower half, material a subset of the upper half.
    assert bool((d.keep | ~lower).all())
    assert not bool((d.material & lower).any())
    # material and keep are disjoint (always: keeping wins in the degenerate tau*sigma1 == 0 case).
    assert not bool((d.material & d.keep).any())
    # Kept = lower half + recalled upper-half samples.
    assert d.n_kept == int(lower.sum()) + d.n_recalled
    # Eq. 10 as written: identical to the decision whenever tau*sigma1 > 0 (the sets are disjoint then) ...
    raw_material = upper & (u >= d.mu1 + tau * d.sigma1) if use_unc else torch.zeros(n, dtype=torch.bool)
    recalled = upper & (u <= d.mu1) if (use_unc and use_rec) else torch.zeros(n, dtype=torch.bool)
    if tau * d.sigma1 > 0:
        assert torch.equal(d.material, raw_material)
        assert not bool((raw_material & recalled).any())
    # ... and in general it differs exactly by the recalled samples with u == mu1.
    assert torch.equal(d.material, raw_material & ~recalled)
    if (raw_material & recalled).any():
        assert tau * d.sigma1 == 0 and bool((u[raw_material & recalled] == d.mu1).all())

    # Decisions depend on values, not on the order of the batch.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    dp = synergy_select(a[perm], u[perm], iteration=iteration, **kwargs)
    assert torch.equal(dp.keep, d.keep[perm]) and torch.equal(dp.material, d.material[perm])
    assert dp.mu1 == pytest.approx(d.mu1) and dp.sigma1 == pytest.approx(d.sigma1)
