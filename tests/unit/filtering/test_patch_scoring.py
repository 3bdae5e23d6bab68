from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ssfilter.filtering.patch_scoring import (
    batch_anomaly_scores,
    full_patch_scores,
    image_scores,
    neighbour_count,
    patch_scores,
)


def _reference(desc: torch.Tensor, topk_ratio: float) -> torch.Tensor:
    """Brute force in float64: loop over patches, skip same-image ones, explicit sort for the top-k."""
    b, hw, d = desc.shape
    z = desc.double()
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    flat = z.reshape(b * hw, d)
    n = b * hw
    k = min(max(1, int(n * topk_ratio)), (b - 1) * hw)
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        sims = [float(flat[i] @ flat[j]) for j in range(n) if j // hw != i // hw]
        top = sorted(sims, reverse=True)[:k]
        out[i] = 1.0 - sum(top) / k
    return out.view(b, hw)


def _case(b: int, hw: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(b, hw, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("b", [2, 3, 5])
@pytest.mark.parametrize("hw", [1, 4, 7])
@pytest.mark.parametrize("topk_ratio", [0.001, 0.15])
def test_blocked_matches_brute_force_for_every_block_size(b: int, hw: int, topk_ratio: float) -> None:
    desc = _case(b, hw, 6, seed=b * 100 + hw)
    expected = _reference(desc, topk_ratio)
    n = b * hw
    # smaller than, non-dividing, equal to and larger than B*HW
    for block_rows in sorted({1, 2, 3, max(1, n - 1), n, n + 5, 4096}):
        got = patch_scores(desc, topk_ratio=topk_ratio, block_rows=block_rows)
        assert got.shape == (b, hw) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0, msg=f"block_rows={block_rows}")
        got64 = patch_scores(desc.double(), topk_ratio=topk_ratio, block_rows=block_rows)
        torch.testing.assert_close(got64, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(full_patch_scores(desc.double(), topk_ratio), expected, atol=1e-12, rtol=0)


def test_blocked_equals_full_on_larger_batch() -> None:
    desc = _case(4, 49, 16, seed=7)
    full = full_patch_scores(desc, 0.01)
    for block_rows in (13, 64, 196):
        torch.testing.assert_close(patch_scores(desc, 0.01, block_rows), full, atol=1e-6, rtol=0)


class _LargestTensor(TorchFunctionMode):
    """Records the element count of the largest tensor any torch op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_intermediate_exceeds_one_block_or_the_kept_values() -> None:
    b, hw, d, block_rows = 4, 25, 3, 10
    n = b * hw
    k = neighbour_count(b, hw, 0.05)
    desc = _case(b, hw, d, seed=3)
    with _LargestTensor() as mode:
        patch_scores(desc, 0.05, block_rows=block_rows)
    # One image pair's block (hw x hw = 625 here) or the kept top-k per (patch, partner) (b*hw*b*k = 2000),
    # never the n x n matrix (10 000 elements).
    assert mode.largest <= max(block_rows * n, hw * hw, b * hw * b * min(k, hw)) < n * n
    with _LargestTensor() as mode:
        full_patch_scores(desc, 0.05)
    assert mode.largest == n * n


def test_same_image_pairs_are_excluded_not_zero_filled() -> None:
    # Every image is HW copies of one vector: within an image all similarities are 1, so any same-image pair
    # would give every patch a perfect match (score 0). Images 0 and 1 share vector e0; image 2 is -e0 and
    # image 3 is e1 (orthogonal to everything).
    e0, e1 = torch.eye(2)
    hw = 5
    desc = torch.stack([e0.expand(hw, 2), e0.expand(hw, 2), -e0.expand(hw, 2), e1.expand(hw, 2)])
    scores = patch_scores(desc, topk_ratio=0.001, block_rows=3)  # k = 1
    # image 0 matches image 1 (sim 1 -> score 0) and vice versa.
    torch.testing.assert_close(scores[:2], torch.zeros(2, hw))
    # image 2: best other-image match is e1 (sim 0): score 1.
    torch.testing.assert_close(scores[2], torch.ones(hw))
    # image 3: best match is 0 (orthogonal to e0 and -e0): score 1, despite its HW identical copies.
    torch.testing.assert_close(scores[3], torch.ones(hw))

    # Only anti-aligned images: all other-image similarities are -1. Excluded same-image pairs give 2; a
    # zero-filled diagonal block (the paper's pseudocode) would have picked 0 and given 1.
    desc = torch.stack([e0.expand(hw, 2), -e0.expand(hw, 2)])
    torch.testing.assert_close(patch_scores(desc, 0.001, block_rows=4), torch.full((2, hw), 2.0))
    torch.testing.assert_close(full_patch_scores(desc, 0.001), torch.full((2, hw), 2.0))


def test_image_with_unique_outlier_patch_scores_highest() -> None:
    gen = torch.Generator().manual_seed(0)
    b, hw, d = 6, 16, 32
    prototypes = torch.randn(4, d, generator=gen)
    idx = torch.randint(0, 4, (b, hw), generator=gen)
    desc = prototypes[idx] + 0.05 * torch.randn(b, hw, d, generator=gen)
    desc[3, 7] = torch.randn(d, generator=gen) * 3.0  # a patch unlike anything else in the batch
    ps = patch_scores(desc, topk_ratio=0.01, block_rows=20)
    assert int(ps.flatten().argmax()) == 3 * hw + 7
    a = batch_anomaly_scores(desc, patch_topk_ratio=0.01, image_topk_ratio=0.01, block_rows=20)
    assert a.shape == (b,)
    assert int(a.argmax()) == 3
    assert float(a[3]) > float(a[torch.arange(b) != 3].max()) + 0.3


def test_bf16_input_is_scored_in_float32() -> None:
    desc = _case(3, 9, 8, seed=11).bfloat16()
    got = patch_scores(desc, 0.05, block_rows=5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, patch_scores(desc.float(), 0.05, block_rows=5), atol=0, rtol=0)
    assert full_patch_scores(desc, 0.05).dtype == torch.float32


def test_autocast_does_not_lower_precision() -> None:
    desc = _case(3, 9, 8, seed=12)
    plain = patch_scores(desc, 0.05, block_rows=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = patch_scores(desc, 0.05, block_rows=4)
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, atol=0, rtol=0)


def test_zero_descriptors_give_no_nan() -> None:
    desc = _case(3, 4, 5, seed=13).clone()
    desc[1, 2] = 0.0
    scores = patch_scores(desc, 0.1, block_rows=5)
    assert torch.isfinite(scores).all()
    assert float(scores[1, 2]) == pytest.approx(1.0)  # a zero vector has similarity 0 to everything
    zeros = patch_scores(torch.zeros(2, 3, 4), 0.001)
    torch.testing.assert_close(zeros, torch.ones(2, 3))
    assert torch.isfinite(batch_anomaly_scores(torch.zeros(2, 3, 4))).all()


def test_single_image_batch_raises() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        patch_scores(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="at least 2 images"):
        full_patch_scores(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="at least 2 images"):
        batch_anomaly_scores(torch.randn(1, 4, 3))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"desc": torch.randn(2, 3)}, ValueError),
        ({"desc": torch.randn(2, 0, 3)}, ValueError),
        ({"desc": torch.ones(2, 3, 4, dtype=torch.int64)}, TypeError),
        ({"desc": torch.randn(2, 3, 4), "block_rows": 0}, ValueError),
        ({"desc": torch.randn(2, 3, 4), "topk_ratio": -0.1}, ValueError),
        ({"desc": torch.randn(2, 3, 4), "topk_ratio": math.nan}, ValueError),
        ({"desc": torch.randn(2, 3, 4), "topk_ratio": 1.5}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        patch_scores(**kwargs)


def test_k_is_clamped_to_other_image_patches() -> None:
    assert neighbour_count(32, 784, 0.001) == 25  # int(25088 * 0.001), the paper default at crop 392
    assert neighbour_count(2, 3, 0.001) == 1  # max(1, .)
    assert neighbour_count(2, 3, 1.0) == 3  # int(6 * 1.0) = 6 clamped to (B-1)*HW = 3
    assert neighbour_count(4, 3, 0.5) == 6  # int(12 * 0.5) = 6 <= 9
    desc = _case(2, 3, 4, seed=14)
    got = patch_scores(desc, topk_ratio=1.0, block_rows=2)
    # k = every other-image patch: 1 - mean similarity to the other image's patches.
    z = torch.nn.functional.normalize(desc.double(), dim=-1)
    expected = torch.stack([1 - (z[0] @ z[1].T).mean(1), 1 - (z[1] @ z[0].T).mean(1)])
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.double(), _reference(desc, 1.0), atol=1e-6, rtol=0)


def test_image_scores_top_share_mean() -> None:
    ps = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.2, 0.2, 0.2, 0.2]])
    torch.testing.assert_close(image_scores(ps, 0.01), torch.tensor([0.9, 0.2]))  # k = max(1, int(0.04)) = 1
    torch.testing.assert_close(image_scores(ps, 0.5), torch.tensor([0.7, 0.2]))  # k = 2: (0.9 + 0.5) / 2
    torch.testing.assert_close(image_scores(ps, 1.0), torch.tensor([0.45, 0.2]))  # k = 4: mean
    with pytest.raises(ValueError):
        image_scores(torch.rand(4), 0.01)


def test_batch_anomaly_scores_composes_both_steps() -> None:
    desc = _case(5, 7, 6, seed=15)
    k = max(1, int(0.3 * 7))  # image score: mean of each image's top 30% (k = 2) brute-force patch scores
    expected = torch.sort(_reference(desc, 0.15), dim=1, descending=True).values[:, :k].mean(1).float()
    got = batch_anomaly_scores(desc, patch_topk_ratio=0.15, image_topk_ratio=0.3, block_rows=6)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_no_autograd_graph() -> None:
    desc = _case(2, 4, 3, seed=16).clone().requires_grad_(True)
    assert not patch_scores(desc).requires_grad
    assert not batch_anomaly_scores(desc).requires_grad


def test_groups_exclude_the_other_tiles_of_the_same_image() -> None:
    # Tiles 0 and 1 come from one image and share an odd patch (their overlap); the others are plain.
    torch.manual_seed(0)
    desc = torch.randn(1, 8, 16).repeat(4, 1, 1) + 0.01 * torch.randn(4, 8, 16)
    odd = torch.randn(16)
    desc[0, 3] = odd
    desc[1, 5] = odd
    alone = patch_scores(desc, topk_ratio=0.0)
    grouped = patch_scores(desc, topk_ratio=0.0, groups=torch.tensor([7, 7, 8, 9]))
    assert float(alone[0, 3]) < 1e-5  # matched by its twin in the other tile
    assert float(grouped[0, 3]) > 0.5  # compared with other images only: the odd patch stands out
    reference = full_patch_scores(desc, topk_ratio=0.0, groups=torch.tensor([7, 7, 8, 9]))
    assert torch.allclose(grouped, reference, atol=1e-6)  # float32 rounding of the sums only
    for rows in (1, 5, 32):
        blocked = patch_scores(desc, topk_ratio=0.1, block_rows=rows, groups=torch.tensor([7, 7, 8, 9]))
        assert torch.allclose(blocked, full_patch_scores(desc, 0.1, torch.tensor([7, 7, 8, 9])), atol=1e-6)


def test_groups_need_two_images() -> None:
    with pytest.raises(ValueError, match="2 groups"):
        patch_scores(torch.randn(3, 4, 8), groups=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="one id per image"):
        patch_scores(torch.randn(3, 4, 8), groups=torch.tensor([1, 2]))
