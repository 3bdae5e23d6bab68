from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from ssfilter.models.anomaly_map import (
    anomaly_map,
    evaluation_maps,
    gaussian_blur,
    gaussian_kernel2d,
    group_distance_maps,
    point_distance,
    topk_mean_score,
)


def _groups(seed: int, shape: tuple[int, ...] = (2, 8, 4, 4), n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(n)]


def _reference_distance(enc: torch.Tensor, dec: torch.Tensor) -> np.ndarray:
    """Point distances ``[B, H, W]`` in float64 numpy: 1 - cosine similarity over the channel axis."""
    e, d = enc.double().numpy(), dec.double().numpy()
    return 1.0 - (e * d).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(d, axis=1))


def _reference_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[B, H, W]`` maps with half-pixel centres (``align_corners=False``), by scipy."""
    zoom = (size[0] / maps.shape[1], size[1] / maps.shape[2])
    return np.stack([ndimage.zoom(m, zoom, order=1, grid_mode=True, mode="nearest") for m in maps])


def _reference_blur(image: np.ndarray) -> np.ndarray:
    """SPEC §1's blur by scipy: 5x5 Gaussian (radius 2), sigma 4, zero padding."""
    return ndimage.gaussian_filter(image, sigma=4.0, radius=2, mode="constant", cval=0.0)


def test_identical_features_give_zero_map_and_score() -> None:
    enc = _groups(0)
    dec = [e.clone() for e in enc]
    maps, scores = evaluation_maps(enc, dec, crop=32, eval_size=24)
    assert maps.shape == (2, 24, 24) and scores.shape == (2,)
    torch.testing.assert_close(maps, torch.zeros_like(maps), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores, torch.zeros(2), atol=1e-6, rtol=0)


def test_opposite_features_give_two() -> None:
    enc = _groups(1)
    dec = [-e for e in enc]
    dist = group_distance_maps(enc, dec)
    assert dist.shape == (2, 2, 4, 4)
    torch.testing.assert_close(dist, torch.full_like(dist, 2.0), atol=1e-6, rtol=0)
    amap = anomaly_map(enc, dec, out_size=16)
    assert amap.shape == (2, 1, 16, 16)
    torch.testing.assert_close(amap, torch.full_like(amap, 2.0), atol=1e-6, rtol=0)
    _, scores = evaluation_maps(enc, dec, crop=16, eval_size=16, blur=False)
    torch.testing.assert_close(scores, torch.full((2,), 2.0), atol=1e-6, rtol=0)


def test_group_distances_and_mean_over_groups() -> None:
    enc, dec = _groups(2), _groups(3)
    dist = group_distance_maps(enc, dec)
    for g in range(2):
        expected = torch.from_numpy(_reference_distance(enc[g], dec[g])).float()
        torch.testing.assert_close(dist[:, g], expected)
    # at the native grid size bilinear resizing is the identity: the map is the mean over groups
    torch.testing.assert_close(anomaly_map(enc, dec, out_size=(4, 4))[:, 0], dist.mean(1))
    up = anomaly_map(enc, dec, out_size=(8, 12))
    assert up.shape == (2, 1, 8, 12)
    per_group = [_reference_resize(_reference_distance(enc[g], dec[g]), (8, 12)) for g in range(2)]
    torch.testing.assert_close(up[:, 0], torch.from_numpy((per_group[0] + per_group[1]) / 2).float())


def test_zero_feature_vectors_give_finite_distance() -> None:
    z = torch.zeros(1, 3, 2, 2)
    assert torch.equal(point_distance(z, z), torch.ones(1, 2, 2))


def test_gaussian_kernel_is_normalised_and_symmetric() -> None:
    k = gaussian_kernel2d(5, 4.0, dtype=torch.float64)
    assert k.shape == (5, 5)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0))
    assert int(k.argmax()) == 12  # centre tap
    with pytest.raises(ValueError):
        gaussian_kernel2d(4, 1.0)
    with pytest.raises(ValueError):
        gaussian_kernel2d(5, 0.0)


def test_blur_keeps_constant_interior_and_darkens_borders() -> None:
    maps = torch.full((2, 1, 12, 12), 3.0)
    out = gaussian_blur(maps)
    assert out.shape == maps.shape
    torch.testing.assert_close(out[..., 2:-2, 2:-2], maps[..., 2:-2, 2:-2], atol=1e-6, rtol=0)
    k = gaussian_kernel2d(5, 4.0)
    # zero padding: a corner only sees the 3x3 quadrant of the kernel
    assert float(out[0, 0, 0, 0]) == pytest.approx(3.0 * float(k[2:, 2:].sum()), rel=1e-6)
    assert float(out[0, 0, 0, 0]) < float(out[0, 0, 0, 5]) < 3.0
    # [B, H, W] input keeps its rank
    assert gaussian_blur(maps[:, 0]).shape == (2, 12, 12)


def test_blur_matches_a_direct_zero_padded_convolution() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 7, 6, generator=gen, dtype=torch.float64)
    taps = np.exp(-(np.arange(-2.0, 3.0) ** 2) / (2 * 4.0**2))  # 1-D Gaussian, sigma 4, by hand
    k = torch.from_numpy(np.outer(taps, taps) / np.outer(taps, taps).sum())
    padded = F.pad(x, (2, 2, 2, 2))
    expected = torch.zeros_like(x)
    for i in range(7):
        for j in range(6):
            expected[0, i, j] = (padded[0, i : i + 5, j : j + 5] * k).sum()
    torch.testing.assert_close(gaussian_blur(x), expected)


def test_topk_mean_score_of_a_known_map() -> None:
    maps = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    maps = torch.cat([maps, maps.flip(-1) * 2])
    torch.testing.assert_close(topk_mean_score(maps, ratio=0.05), torch.tensor([97.0, 194.0]))
    # k = max(1, int(0.01 * 100)) = 1 -> the maximum; a tiny ratio still takes one pixel
    torch.testing.assert_close(topk_mean_score(maps), torch.tensor([99.0, 198.0]))
    torch.testing.assert_close(topk_mean_score(maps, ratio=1e-6), torch.tensor([99.0, 198.0]))
    torch.testing.assert_close(topk_mean_score(maps.unsqueeze(1), ratio=0.05), torch.tensor([97.0, 194.0]))
    with pytest.raises(ValueError):
        topk_mean_score(maps, ratio=0.0)


def test_evaluation_maps_pipeline() -> None:
    enc, dec = _groups(5), _groups(6)
    maps, scores = evaluation_maps(enc, dec, crop=28, eval_size=20)
    # numpy / scipy reference: distances, per-group upsampling to the crop, mean, resize to eval_size
    per_group = [
        _reference_resize(_reference_distance(e, d), (28, 28)) for e, d in zip(enc, dec, strict=True)
    ]
    amap = (per_group[0] + per_group[1]) / 2
    resized = _reference_resize(amap, (20, 20))
    blurred = np.stack([_reference_blur(m) for m in resized])
    torch.testing.assert_close(maps, torch.from_numpy(blurred).float())
    k = max(1, int(0.01 * 400))
    top = np.sort(maps.numpy().reshape(2, -1), axis=1)[:, -k:]
    torch.testing.assert_close(scores, torch.from_numpy(top.mean(1)))
    raw, _ = evaluation_maps(enc, dec, crop=28, eval_size=20, blur=False)
    torch.testing.assert_close(raw, torch.from_numpy(resized).float())
    assert maps.dtype == torch.float32


def test_low_precision_inputs_and_autocast_compute_in_float32() -> None:
    enc, dec = _groups(7), _groups(8)
    enc16, dec16 = [e.bfloat16() for e in enc], [d.bfloat16() for d in dec]
    ref_maps, ref_scores = evaluation_maps([e.float() for e in enc16], [d.float() for d in dec16], crop=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps, scores = evaluation_maps(enc16, dec16, crop=16)
        float_maps, _ = evaluation_maps(enc, dec, crop=16)
    assert maps.dtype == torch.float32 and scores.dtype == torch.float32 and float_maps.dtype == torch.float32
    torch.testing.assert_close(maps, ref_maps)
    torch.testing.assert_close(scores, ref_scores)
    torch.testing.assert_close(float_maps, evaluation_maps(enc, dec, crop=16)[0], atol=0, rtol=0)


def test_shape_mismatch_is_rejected() -> None:
    enc = _groups(9)
    with pytest.raises(ValueError):
        group_distance_maps(enc, enc[:1])
    with pytest.raises(ValueError):
        anomaly_map([enc[0]], [enc[0][:, :4]], out_size=8)
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    enc, dec = _groups(10), _groups(11)
    cpu_maps, cpu_scores = evaluation_maps(enc, dec, crop=32, eval_size=32)
    maps, scores = evaluation_maps([e.cuda() for e in enc], [d.cuda() for d in dec], crop=32, eval_size=32)
    torch.testing.assert_close(maps.cpu(), cpu_maps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.cpu(), cpu_scores, atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_eager() -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Maps(torch.nn.Module):
        def forward(self, e1: torch.Tensor, e2: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> tuple:
            return evaluation_maps([e1, e2], [d1, d2], crop=32, eval_size=24)

    args = tuple(_groups(12, n=4))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks (static shapes are intended)
        torch.onnx.export(Maps(), args, buf, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
    maps, scores = session.run(None, feeds)
    ref_maps, ref_scores = Maps()(*args)
    torch.testing.assert_close(torch.from_numpy(maps), ref_maps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(scores), ref_scores, atol=1e-5, rtol=1e-5)
