"""Section "uncertainty": MC-dropout uncertainty as one batched K-pass vs K sequential passes (paper §3.3).

Three ways to get the K dropout reconstructions of a batch of B images, all ending in the same per-pass
maps and scores (:func:`ssfilter.filtering.uncertainty.mc_uncertainty`):

* **batched** (what ssfilter does): the encoder runs once, the bottleneck + decoder once on a batch of K*B;
* **K sequential full passes** (textbook MC dropout): K forward passes of the whole model, encoder included;
* **K sequential decoder passes**: the encoder once, then K separate bottleneck + decoder passes of B.

"Batched" is :func:`~ssfilter.filtering.uncertainty.mc_uncertainty` as the filter calls it: on a CPU
it runs the K*B image-passes in cache-sized slices (:func:`~ssfilter.filtering.uncertainty.auto_slices`);
the third row compares it with one unsliced pass of K*B.

The issue's threshold (batched at least 2x faster than K sequential passes) is checked against the
textbook version. The second row isolates what batching alone buys: on a CPU the MLLA decoder is bound by
memory traffic (element-wise ops, depth-wise convolutions, RoPE), so a K-times larger batch does about
K times the work and the gain is small; on a GPU the larger batch also fills the device.
"""

from __future__ import annotations

import torch

from benchmarks.common import Context, Row, random_config, random_model, time_interleaved
from ssfilter.filtering.uncertainty import auto_slices, mc_uncertainty

__all__ = ["run"]

SECTION = "uncertainty"

#: (preset, overrides, batch, K) -- the paper's ViT-S at 224 with K = 10, and the CPU preset.
FULL_SETTINGS: list[tuple[str, dict[str, object], int, int]] = [
    ("paper-256-224", {}, 2, 10),
    ("cpu-fast", {}, 8, 3),
]
QUICK_SETTINGS: list[tuple[str, dict[str, object], int, int]] = [
    ("cpu-fast", {"data.resize": 72, "data.crop": 64}, 2, 3),
]


def _setting(preset: str, overrides: dict[str, object], b: int, k: int, ctx: Context) -> list[Row]:
    cfg = random_config(preset, overrides)
    model = random_model(cfg, ctx.device)
    crop = cfg.data.crop
    images = torch.randn(b, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    setting = f"{preset} ({cfg.model.backbone}, crop {crop}), B {b}, K {k}"
    ctx.log(f"[{SECTION}] {setting}")

    def batched() -> object:
        return mc_uncertainty(model, model.encode(images), k)

    def one_pass() -> object:
        return mc_uncertainty(model, model.encode(images), k, chunk=None)

    def sequential_full() -> object:
        return [mc_uncertainty(model, model.encode(images), 1) for _ in range(k)]

    def sequential_decoder() -> object:
        feats = model.encode(images)
        return [mc_uncertainty(model, feats, 1) for _ in range(k)]

    def encode() -> object:
        return model.encode(images)

    with torch.no_grad():
        # Warm-up with every shape the variants use (encoder on B, decoder on B and on K*B): the first
        # call of a shape pays one-off costs (oneDNN kernel generation, RoPE tables, page faults).
        feats = model.encode(images)
        mc_uncertainty(model, feats, k)
        mc_uncertainty(model, feats, k, chunk=None)
        mc_uncertainty(model, feats, 1)
        repeats = 1 if ctx.quick else 2
        t = time_interleaved(
            {
                "batched": batched,
                "full": sequential_full,
                "decoder": sequential_decoder,
                "one pass": one_pass,
                "encode": encode,
            },
            ctx.device,
            repeats,
        )
    enc_share = t["encode"] / max(t["full"] / k, 1e-12)
    n_img, n_pass = auto_slices(model, model.encode(images), k)
    sliced = (
        "one pass of K*B"
        if (n_img, n_pass) == (b, k)
        else f"slices of {n_img} image(s) x {n_pass} pass(es) (auto_slices)"
    )
    return [
        Row(
            SECTION,
            setting,
            f"{k} sequential full passes",
            t["full"],
            "batched",
            t["batched"],
            "s",
            target=">= 2x",
            met=t["full"] / t["batched"] >= 2.0,
            notes=(
                f"median of {repeats}, interleaved; batched = encoder once + bottleneck/decoder on K*B "
                f"images in {sliced}; "
                f"the encoder is {100 * enc_share:.0f}% of one full pass ({t['encode']:.3g} s per batch)"
            ),
        ),
        Row(
            SECTION,
            setting,
            f"{k} sequential decoder passes",
            t["decoder"],
            "batched",
            t["batched"],
            "s",
            notes=(
                "encoder once in both: the gain of batching alone (the decoder is memory-bound on a CPU, "
                "so K*B images cost about K times B)"
            ),
        ),
        Row(
            SECTION,
            setting,
            "one pass of K*B",
            t["one pass"],
            "batched",
            t["batched"],
            "s",
            notes=f"batched runs in {sliced}; the same when that is one pass (a GPU always is)",
        ),
    ]


def run(ctx: Context) -> list[Row]:
    """Measure every setting of this section.

    Args:
        ctx: The run's context (``quick`` picks one tiny setting).

    Returns:
        Three rows per setting: K full passes vs batched (the issue's threshold), K decoder passes vs
        batched, and one unsliced K*B pass vs batched.
    """
    rows: list[Row] = []
    for preset, overrides, b, k in QUICK_SETTINGS if ctx.quick else FULL_SETTINGS:
        rows += _setting(preset, overrides, b, k, ctx)
    return rows
