"""The single-process pieces behind DDP training: slicing, seeds, the global hard-mining pool, dropout."""

from __future__ import annotations

import math

import pytest
import torch

from ssfilter.models.anomaly_map import point_distance
from ssfilter.models.dinomaly import seeded_dropout
from ssfilter.runtime.distributed import derive_seed, gather_rows, is_main_process, shard_bounds, world_size
from ssfilter.training.checkpoint import build_model
from ssfilter.training.filter_log import merge_filter_rows
from ssfilter.training.losses import hard_cosine_loss
from ssfilter.training.plan import dropout_row_seeds


@pytest.mark.parametrize(("n", "world"), [(8, 2), (7, 2), (32, 3), (5, 5), (4, 1)])
def test_shard_bounds_cover_the_batch_in_order(n: int, world: int) -> None:
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    with pytest.raises(ValueError):
        shard_bounds(n, world, world)


def test_derive_seed_is_stable_distinct_and_in_range() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(s, 2, it, pos) for s in (0, 1) for it in range(20) for pos in range(8)}
    assert len(seeds) == 2 * 20 * 8
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(-1, 0) != derive_seed(1, 0)
    assert dropout_row_seeds(1, 3, [0, 1]) != dropout_row_seeds(1, 3, [0, 1], synthetic=True)


def test_single_process_helpers_are_no_ops() -> None:
    assert world_size() == 1 and is_main_process()
    x = torch.arange(6.0).reshape(2, 3)
    padded = gather_rows(x, 4, fill=-1.0)
    assert padded.shape == (4, 3)
    assert torch.equal(padded[:2], x) and bool((padded[2:] == -1).all())
    with pytest.raises(ValueError, match="do not fit"):
        gather_rows(x, 1)


def _grads(enc: torch.Tensor, dec: torch.Tensor, p: float, split: bool, pooled: bool) -> torch.Tensor:
    leaf = dec.clone().requires_grad_(True)
    if not split:
        hard_cosine_loss([enc], [leaf], p).backward()
        return leaf.grad
    b, ranks = enc.shape[0], 2
    all_dist = point_distance(enc, dec.detach()).flatten()
    total = 0.0
    for r in range(ranks):
        lo, hi = shard_bounds(b, r, ranks)
        pool = (lambda d: (all_dist, b * d.shape[1] * d.shape[2])) if pooled else None
        per_image = hard_cosine_loss([enc[lo:hi]], [leaf[lo:hi]], p, reduction="none", pool=pool)
        total = total + per_image.sum() * (ranks / b)  # what each rank's DDP loss is scaled to
    (total / ranks).backward()  # DDP averages the ranks' gradients
    return leaf.grad


def test_rank_losses_with_the_global_pool_give_the_single_process_gradient() -> None:
    torch.manual_seed(0)
    enc, dec = torch.randn(6, 5, 4, 4), torch.randn(6, 5, 4, 4)
    full = _grads(enc, dec, 0.6, split=False, pooled=False)
    torch.testing.assert_close(_grads(enc, dec, 0.6, split=True, pooled=True), full)
    # Per-rank thresholds would mine other positions: the pool is what makes DDP equal one process.
    assert not torch.allclose(_grads(enc, dec, 0.6, split=True, pooled=False), full)


def test_row_seeded_dropout_does_not_depend_on_the_rest_of_the_batch(tiny_config) -> None:
    model = build_model(tiny_config).train()
    feats = model.encode(torch.randn(3, 3, 64, 64))
    seeds = dropout_row_seeds(1, 0, [0, 1, 2])
    whole = model.decode(feats, row_seeds=seeds)
    first = model.decode(feats.select([0]), row_seeds=seeds[:1])
    last_two = model.decode(feats.select([1, 2]), row_seeds=seeds[1:])
    for g, a, b in zip(whole, first, last_two, strict=True):
        torch.testing.assert_close(g[:1], a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g[1:], b, rtol=1e-4, atol=1e-5)
    other = model.decode(feats.select([0]), row_seeds=dropout_row_seeds(1, 1, [0]))
    assert not torch.allclose(other[0], first[0]), "another seed gives another dropout mask"
    # The masks keep about 1 - p of the values, scaled by 1 / (1 - p), as F.dropout.
    x = torch.ones(2, 500, 40)
    out = seeded_dropout(x, 0.2, [torch.Generator().manual_seed(s) for s in (1, 2)])
    kept = out != 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1.25))
    assert abs(float(kept.float().mean()) - 0.8) < 0.01
    with pytest.raises(ValueError, match="row seeds"):
        model.decode(feats, row_seeds=seeds[:2])


def test_merge_filter_rows_sums_counts_and_averages_statistics() -> None:
    base = {"iteration": 3, "phase": "regular", "batch": 4, "recalled": 0, "material": 1, "synthetic": 1}
    labels = {"anomalies": 1, "anomalies_discarded": 1, "normals": 3, "normals_discarded": 1}
    r0 = {**base, **labels, "kept": 2, "mu1": 0.1, "sigma1": 0.02}
    r1 = {**base, **labels, "kept": 3, "mu1": 0.3, "sigma1": math.nan}
    (row,) = merge_filter_rows([[r0], [r1]])
    assert row["batch"] == 8 and row["kept"] == 5 and row["material"] == 2 and row["synthetic"] == 2
    assert row["anomalies"] == 2 and row["normals_discarded"] == 2
    assert row["mu1"] == pytest.approx(0.2) and row["sigma1"] == pytest.approx(0.02)
    assert merge_filter_rows([[r0]]) == [r0]
    (no_labels,) = merge_filter_rows([[base | {"kept": 2, "mu1": 0.1, "sigma1": 0.0}], [r1]])
    assert "anomalies" not in no_labels
