"""``ssfilter demo``: an offline end-to-end run on generated data, for a first look on any machine.

It generates a small industrial-looking image set (parts with scratches, dents and stains, with
masks), hides a few defective images in the training folder (as a factory's "good" folder would),
trains SSFilter on that noisy folder, filters the folder with the trained model, evaluates on the test
split and writes one HTML report with both: the filter's catch (injected defects removed, normal
images kept, thumbnails of the quarantined images) and the detector's metrics, curves and heat-maps.
No data set and no network are needed.

Encoder: DINOv2 ViT-S/14 when its weights are present (``--weights FILE``, ``SSFILTER_DEMO_WEIGHTS``,
or timm's file already in the local Hugging Face cache; never downloaded), MobileNetV2 when a
MobileNetV2 file is given, otherwise a randomly initialised MobileNetV2 with a loud note: enough to
show the pipeline on generated parts, not for real inspection data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ssfilter.config import Config, get_preset
from ssfilter.data.datasets import discover
from ssfilter.data.synthetic import MANIFEST_NAME, make_synthetic_category
from ssfilter.evaluation.evaluate import EvaluationResult, evaluate_model
from ssfilter.filtering.filter_outputs import FilterRecords, summarize
from ssfilter.io import atomic_write_json
from ssfilter.pipelines.filter_run import filter_folder
from ssfilter.pipelines.training_run import fit_run
from ssfilter.reporting.evaluate_page import EvaluateReport
from ssfilter.reporting.examples import build_evaluate_report
from ssfilter.runfolder import METRICS_FILE
from ssfilter.runtime.device import resolve_device
from ssfilter.training.checkpoint import load_run

if TYPE_CHECKING:
    from ssfilter.data.datasets import Sample

__all__ = ["DemoSettings", "demo_config", "detect_backbone", "find_demo_weights", "run_demo"]

_NOTE_LINES = (
    "NOTE: no pretrained encoder weights were found, so this demo uses a RANDOMLY",
    "INITIALISED encoder. That is enough to show the pipeline end to end on generated",
    "parts, but REAL INSPECTION DATA NEEDS PRETRAINED WEIGHTS: pass --weights with a",
    "DINOv2 checkpoint (see README, 'Backbones and weights') or set SSFILTER_DEMO_WEIGHTS,",
    "and run the demo again to see it with DINOv2.",
)
_NOTE_WIDTH = max(map(len, _NOTE_LINES)) + 6
RANDOM_ENCODER_NOTE = "\n".join(
    ["!" * _NOTE_WIDTH, *(f"!! {line:<{_NOTE_WIDTH - 6}} !!" for line in _NOTE_LINES), "!" * _NOTE_WIDTH]
)

#: timm's DINOv2 ViT-S/14 (4 registers) weights on the Hugging Face hub, looked up in the local cache only.
_HF_DINOV2 = ("timm/vit_small_patch14_reg4_dinov2.lvd142m", "model.safetensors")


@dataclass
class DemoSettings:
    """The demo's own knobs: generated data, training length and dataset-filter parameters.

    Attributes:
        size: Side of the generated images in pixels.
        n_train_good: Normal training images.
        n_train_defect: Defective images hidden in ``train/good`` (the noise the filter should catch).
        n_test_good: Normal test images.
        n_test_defect: Defective test images (with masks).
        iters: Training iterations.
        cold_start_iters: Iterations ranked by patch scores only before uncertainty joins in (when on).
        keep_ratio: Share of each batch the in-batch filter keeps by rank (paper: 0.5). The demo's noise
            rate is about 9%, far below half, so keeping the lower 75% loses fewer good parts.
        uncertainty: Use the MC-dropout uncertainty U (synergy ranking, URecall, restoration materials).
            Off by default: the demo's 80 iterations are far shorter than the paper's 1000-iteration cold
            start, during which SSFilter ranks by the patch comparison scores A alone because U needs a
            trained decoder. Measured with the random encoder: after 80 iterations U was lower on the
            hidden defects than on the good parts, so URecall kept the defects (0 of 5 caught), while A
            alone separates them (5 of 5 caught, all good parts kept).
        filter_epochs: Random epochs of the dataset-level filter (kappa_1).
        filter_min_keep: Normal when kept more than this many times (kappa_2).
        seed: Seed of the generated data.
    """

    size: int = 128
    n_train_good: int = 48
    n_train_defect: int = 5
    n_test_good: int = 12
    n_test_defect: int = 18
    iters: int = 80
    cold_start_iters: int = 20
    keep_ratio: float = 0.75
    uncertainty: bool = False
    filter_epochs: int = 10
    filter_min_keep: int = 2
    seed: int = 0


def find_demo_weights(weights: str | os.PathLike[str] | None = None) -> str | None:
    """The encoder weights the demo uses: the given file, ``SSFILTER_DEMO_WEIGHTS``, or a cached DINOv2.

    The local Hugging Face cache is only looked into (``try_to_load_from_cache``); nothing is downloaded.

    Args:
        weights: An explicit weights file (takes precedence).
    """
    if weights is not None:
        return os.fspath(weights)
    env = os.environ.get("SSFILTER_DEMO_WEIGHTS")
    if env:
        return env
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    try:
        cached = try_to_load_from_cache(*_HF_DINOV2)
    except Exception:  # noqa: BLE001 - a broken cache only means "not present"
        return None
    return cached if isinstance(cached, str) and Path(cached).is_file() else None


def detect_backbone(weights: str | os.PathLike[str]) -> str:
    """Which encoder a weights file belongs to: ``mobilenet_v2`` or a DINOv2 ViT (by its width).

    Args:
        weights: A ``.safetensors`` or ``.pth`` state dict (Meta or timm DINOv2, torchvision MobileNetV2).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not one of the supported encoders.
    """
    from ssfilter.models.encoders import identify_weights

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    name = identify_weights(path)
    if name is not None:
        return name
    raise ValueError(
        f"{path} is neither a DINOv2 ViT (S/B/L, Meta or timm keys) nor a torchvision MobileNetV2 state dict"
    )


def demo_config(weights: str | None = None, settings: DemoSettings | None = None) -> Config:
    """The demo's configuration for the encoder its weights belong to (random MobileNetV2 without).

    MobileNetV2 runs at 128 px (16 x 16 grid), DINOv2 at 126 px (9 x 9 grid), both with a narrow decoder.

    Args:
        weights: Encoder weights file, or ``None`` for a random MobileNetV2.
        settings: Training length and filter parameters (default :class:`DemoSettings`).
    """
    from ssfilter.models.encoders import encoder_entry

    s = settings or DemoSettings()
    backbone = detect_backbone(weights) if weights is not None else "mobilenet_v2"
    cfg = get_preset("cpu-fast")
    cfg.preset = "demo"
    entry = encoder_entry(backbone)
    side = 128 // entry.stride * entry.stride
    cfg.data.resize, cfg.data.crop, cfg.data.batch_size, cfg.data.eval_size = side, side, 8, 128
    cfg.model.backbone = backbone
    cfg.model.weights = None if weights is None else os.fspath(Path(weights).resolve())
    cfg.model.random_init = weights is None
    cfg.model.decoder_dim, cfg.model.decoder_heads = entry.small_decoder or (None, None)
    cfg.train.method = "ssfilter"
    cfg.train.iters, cfg.train.warmup_iters, cfg.train.hard_mining_ramp = (
        s.iters,
        max(1, s.iters // 8),
        s.iters,
    )
    cfg.train.checkpoint_every = max(1, s.iters // 2)
    cfg.train.device = "auto"
    cfg.batch_filter.cold_start_iters = s.cold_start_iters
    cfg.batch_filter.keep_ratio = s.keep_ratio
    cfg.batch_filter.uncertainty = s.uncertainty
    cfg.dataset_filter.epochs, cfg.dataset_filter.min_keep = s.filter_epochs, s.filter_min_keep
    # The paper's vote: the default estimate reads mean U, which the demo's 80 iterations cannot train.
    cfg.dataset_filter.decision = "vote"
    return cfg


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def run_demo(
    out: str | Path = "ssfilter_demo",
    *,
    weights: str | None = None,
    progress: bool = True,
    settings: DemoSettings | None = None,
) -> dict[str, Any]:
    """Generate data, train on the noisy folder, filter it, evaluate, write ``out/report.html``.

    Data generation, the three steps (:func:`_run_steps`), labelling, the report and the closing lines
    are helpers below.

    Args:
        out: Output folder (data, run, filter results, metrics, summary and report).
        weights: Encoder weights file (DINOv2 or MobileNetV2); see :func:`find_demo_weights`.
        progress: Show progress bars.
        settings: The demo's data, training and filter settings (default :class:`DemoSettings`).

    Returns:
        The summary written to ``out/summary.json``.
    """
    s = settings or DemoSettings()
    t_start = time.perf_counter()
    out = Path(out)
    data = _demo_data(out, s)
    weights = find_demo_weights(weights)
    cfg = demo_config(weights, s)
    if weights is None:
        print(RANDOM_ENCODER_NOTE, flush=True)
    else:
        print(f"demo encoder: {cfg.model.backbone} with weights {weights}", flush=True)
    for stale in ("run", "filter"):
        if (out / stale).exists():
            shutil.rmtree(out / stale)
    steps = _run_steps(cfg, data, out, progress)
    encoder = f"{cfg.model.backbone}, " + ("RANDOM weights" if weights is None else f"weights {weights}")
    figures = _filter_figures(steps.records)
    counts = ("injected_defects_removed", "injected_defects", "normal_images_kept", "normal_images")
    intro = _intro_section(s, steps.cfg, encoder, weights is None, tuple(figures[k] for k in counts))  # type: ignore[arg-type]
    fsum = summarize(steps.records)
    report = _write_demo_report(out, intro, steps.records, fsum, steps.content, encoder)
    total_s = time.perf_counter() - t_start
    summary = {
        "data": str(data),
        "run": str(out / "run"),
        "report": str(report),
        "backbone": steps.cfg.model.backbone,
        "random_encoder": weights is None,
        "weights": weights,
        "device": str(steps.device),
        "threads": torch.get_num_threads(),
        **{f"{k}_seconds": round(v, 1) for k, v in steps.seconds.items()},
        "total_seconds": round(total_s, 1),
        "filter": {**fsum, **figures},
        "metrics": steps.result.metrics,
        "n_test": steps.result.n_test,
    }
    atomic_write_json(out / "summary.json", summary)
    _print_summary(summary, out, total_s)
    return summary


@dataclass
class _Steps:
    """What the demo's three steps produced (train, filter, evaluate)."""

    cfg: Config
    device: torch.device
    records: FilterRecords
    result: EvaluationResult
    content: EvaluateReport
    seconds: dict[str, float]


def _run_steps(cfg: Config, data: Path, out: Path, progress: bool) -> _Steps:
    """Train SSFilter on the noisy folder, filter that folder, evaluate on the test split (timed)."""
    seconds: dict[str, float] = {}
    # 1. train SSFilter on the noisy training folder (the hidden defects are labelled "good" there)
    run = out / "run"
    t0 = time.perf_counter()
    fit_run(cfg, data, run, progress=progress)
    seconds["train"] = time.perf_counter() - t0
    cfg, model = load_run(run, resolve_device(cfg.train.device))
    device = next(model.parameters()).device
    # 2. filter the training folder; the manifest knows which images were defective (for the figures)
    t0 = time.perf_counter()
    extra = {"run": str(run), "data": str(data)}
    records = filter_folder(
        model, _labelled_train(data), cfg, out / "filter", extra=extra, report=False, progress=progress
    )
    seconds["filter"] = time.perf_counter() - t0
    # 3. evaluate on the test split
    t0 = time.perf_counter()
    test = discover(data, "test")
    result = evaluate_model(model, test, cfg, device=device, progress=progress)
    atomic_write_json(out / METRICS_FILE, result.to_json())
    seconds["evaluate"] = time.perf_counter() - t0
    content = build_evaluate_report(
        model, test, cfg, result, device=device, run_dir=run, context=[("run", str(run)), ("data", str(data))]
    )
    return _Steps(cfg, device, records, result, content, seconds)


def _filter_figures(records: FilterRecords) -> dict[str, Any]:
    """How the dataset filter did on the hidden defects and the normal images (the summary's entries)."""
    from ssfilter.data.datasets import LABEL_ANOMALOUS

    n_anom = sum(1 for r in records if r.label == LABEL_ANOMALOUS)
    return {
        "injected_defects": n_anom,
        "injected_defects_removed": sum(
            1 for r in records if r.label == LABEL_ANOMALOUS and r.decision != "normal"
        ),
        "normal_images": len(records) - n_anom,
        "normal_images_kept": sum(
            1 for r in records if r.label != LABEL_ANOMALOUS and r.decision == "normal"
        ),
        "quarantined": sorted(Path(r.path).name for r in records if r.decision != "normal"),
    }


def _demo_data(out: Path, s: DemoSettings) -> Path:
    """The demo's generated category under ``out/data/widget``, regenerated when its settings changed."""
    data = out / "data" / "widget"
    manifest = data / MANIFEST_NAME
    if data.exists() and manifest.is_file():
        made = json.loads(manifest.read_text(encoding="utf-8"))
        wanted = {
            k: getattr(s, k) for k in ("n_train_good", "n_test_good", "n_test_defect", "n_train_defect")
        }
        if made.get("counts") != wanted or made.get("size") != s.size or made.get("seed") != s.seed:
            shutil.rmtree(data)  # generated by an earlier demo with other settings: regenerate
    if not data.exists():
        make_synthetic_category(
            data,
            kind="object",
            n_train_good=s.n_train_good,
            n_test_good=s.n_test_good,
            n_test_defect=s.n_test_defect,
            n_train_defect=s.n_train_defect,
            size=s.size,
            seed=s.seed,
        )
    return data


def _labelled_train(data: Path) -> list[Sample]:
    """The training folder's samples, the hidden defects (listed in the manifest) labelled as such."""
    from ssfilter.data.datasets import LABEL_ANOMALOUS, discover

    manifest = json.loads((data / MANIFEST_NAME).read_text(encoding="utf-8"))
    hidden = {str((data / p).resolve()) for p in manifest["train_defective"]}
    return [
        dataclasses.replace(x, label=LABEL_ANOMALOUS, defect_type="injected")
        if str(Path(x.path).resolve()) in hidden
        else x
        for x in discover(data, "train")
    ]


def _write_demo_report(
    out: Path, intro: str, records: FilterRecords, fsum: dict[str, Any], content: EvaluateReport, encoder: str
) -> Path:
    """Write ``out/report.html``: the intro, the filter's section and the evaluation's section."""
    from ssfilter.reporting.evaluate_page import evaluate_section
    from ssfilter.reporting.filter_page import filter_section
    from ssfilter.reporting.frame import ReportAssets, write_report

    assets = [ReportAssets(out, "filter"), ReportAssets(out, "eval")]
    sections = [
        intro,
        filter_section(
            records,
            fsum,
            assets[0],
            links=[("filter.csv", "filter/filter.csv"), ("filter.json", "filter/filter.json")],
        ),
        evaluate_section(content, assets[1]),
    ]
    report = write_report(out, "ssfilter demo report", sections, f"generated parts, {encoder}")
    for a in assets:
        a.remove_stale()
    return report


def _print_summary(summary: dict[str, Any], out: Path, total_s: float) -> None:
    """The demo's closing lines: metrics, the filter's catch, where the report is."""
    f = summary["filter"]
    print(json.dumps({k: summary[k] for k in ("backbone", "random_encoder", "metrics", "n_test")}, indent=2))
    print(
        f"filter: quarantined {f['n_removed']} of {f['n']} training images; caught "
        f"{f['injected_defects_removed']} of {f['injected_defects']} injected defects "
        f"({_fmt_pct(f['anomalies_removed'])}), kept {f['normal_images_kept']} of {f['normal_images']} "
        f"normal images ({_fmt_pct(f['normal_kept'])}); noise rate {_fmt_pct(f['noise_rate_before'])} "
        f"-> {_fmt_pct(f['noise_rate_after'])}"
    )
    if summary["random_encoder"]:
        print("(random encoder: see the NOTE above; real data needs pretrained weights)")
    print(f"demo finished in {total_s:.0f}s; report: {summary['report']}  (summary: {out / 'summary.json'})")


def _intro_section(
    s: DemoSettings, cfg: Config, encoder: str, random_encoder: bool, figures: tuple[int, int, int, int]
) -> str:
    """The report's first section: what the demo did and its headline figures.

    Args:
        s: The demo settings.
        cfg: The run's configuration.
        encoder: Encoder description (escaped here).
        random_encoder: Whether the encoder is randomly initialised.
        figures: ``(defects caught, defects hidden, normal images kept, normal images)``.
    """
    from html import escape

    caught, n_anom, kept, n_norm = figures
    n_train = s.n_train_good + s.n_train_defect
    ranking = (
        "synergy of patch comparison scores A and MC-dropout uncertainty U"
        if cfg.batch_filter.uncertainty
        else "patch comparison scores A alone, as in SSFilter's cold start (the uncertainty needs a longer-"
        "trained decoder than 80 iterations)"
    )
    warn = (
        '<p class="warn"><b>Randomly initialised encoder.</b> No pretrained weights were found, so the '
        "features are random: enough for these generated parts, but real inspection data needs pretrained "
        "weights (run <code>ssfilter demo --weights DINOV2_FILE</code>, see the README).</p>"
        if random_encoder
        else ""
    )
    return (
        '<section id="demo"><h2>What the demo did</h2>'
        f"<p>Generated {s.n_train_good} good parts and hid <b>{s.n_train_defect} defective ones</b> among "
        f"them in <code>train/good</code> (noise rate {100 * s.n_train_defect / n_train:.1f}%), trained "
        f"SSFilter for {s.iters} iterations on that noisy folder without any labels (in-batch ranking: "
        f"{escape(ranking)}; the lower {100 * s.keep_ratio:.0f}% of each batch is kept), filtered the "
        f"folder with the trained model ({s.filter_epochs} epochs, normal when kept more than "
        f"{s.filter_min_keep} times) and evaluated on {s.n_test_good} good and {s.n_test_defect} defective "
        f"test parts. Encoder: {escape(encoder)}.</p>{warn}"
        f'<p class="big">The filter caught {caught} of {n_anom} hidden defects and kept {kept} of {n_norm} '
        "good images.</p>"
        '<nav><a href="#filter">filter results</a><a href="#evaluate">test-set evaluation</a>'
        '<a href="metrics.json">metrics.json</a><a href="summary.json">summary.json</a></nav></section>'
    )
