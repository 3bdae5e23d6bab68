from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.data.datasets import discover
from ssfilter.filtering.batch_filter import BatchFilter, BatchSelection, Synthesis
from ssfilter.filtering.synergy import synergy_select
from ssfilter.io import read_csv_rows
from ssfilter.runfolder import FILTER_LOG_FILE, MODEL_FILE
from ssfilter.training.checkpoint import build_model
from ssfilter.training.filter_log import FILTER_FIELDS
from ssfilter.training.losses import hard_cosine_loss
from ssfilter.training.methods import StepBatch, StepModel
from ssfilter.training.methods.ssfilter import SSFilterMethod
from ssfilter.training.trainer import Trainer


def test_ssfilter_training_writes_filter_log(tmp_path: Path, synthetic_mvtec: Path, ssf_config) -> None:
    Trainer(ssf_config, discover(synthetic_mvtec, "train"), tmp_path / "run", progress=False).fit()
    rows = read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE)
    assert list(rows[0]) == FILTER_FIELDS
    assert [r["phase"] for r in rows] == ["cold"] * 3 + ["regular"] * 3
    for r in rows:
        assert int(r["batch"]) == 6
        assert 3 <= int(r["kept"]) <= 6, "the lower half is always kept"
        assert int(r["kept"]) + int(r["material"]) <= 6
        assert int(r["normals"]) == 6 and int(r["anomalies"]) == 0  # MVTec train/good is labelled normal
        assert int(r["normals_discarded"]) == 6 - int(r["kept"])
    assert any(int(r["synthetic"]) > 0 for r in rows), "restoration never ran"


def test_ssfilter_resume_is_identical(tmp_path: Path, synthetic_mvtec: Path, ssf_config) -> None:
    samples = discover(synthetic_mvtec, "train")
    Trainer(ssf_config, samples, tmp_path / "full", progress=False).fit()
    Trainer(ssf_config, samples, tmp_path / "cut", progress=False, stop_after=5).fit()
    Trainer(ssf_config, samples, tmp_path / "cut", progress=False).fit(resume=True)
    a, b = load_file(str(tmp_path / "full" / MODEL_FILE)), load_file(str(tmp_path / "cut" / MODEL_FILE))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert read_csv_rows(tmp_path / "full" / FILTER_LOG_FILE) == read_csv_rows(
        tmp_path / "cut" / FILTER_LOG_FILE
    )


def test_ablation_without_uncertainty_and_restoring(
    tmp_path: Path, synthetic_mvtec: Path, ssf_config
) -> None:
    ssf_config.batch_filter.uncertainty = False
    ssf_config.restoration.enabled = False
    Trainer(ssf_config, discover(synthetic_mvtec, "train"), tmp_path / "run", progress=False).fit()
    rows = read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE)
    assert all(int(r["kept"]) == 3 and int(r["synthetic"]) == 0 and int(r["recalled"]) == 0 for r in rows)


class _FixedFilter(BatchFilter):
    """Keeps everything and returns a fixed synthetic batch built from kept image 1."""

    def __init__(self, cfg, restoration, synthetic: Synthesis) -> None:
        super().__init__(cfg, restoration, total_iters=10)
        self.synthetic = synthetic

    def select(self, iteration, model, feats, images=None, *, groups=None) -> BatchSelection:
        b = feats.batch_size
        decision = synergy_select(
            torch.arange(b, dtype=torch.float32), None, iteration=0, use_uncertainty=False
        )
        decision = type(decision)(
            keep=torch.ones(b, dtype=torch.bool),
            material=torch.zeros(b, dtype=torch.bool),
            ranking_scores=decision.ranking_scores,
            mu1=float("nan"),
            sigma1=float("nan"),
            phase="cold",
            n_kept=b,
            n_recalled=0,
            n_material=0,
        )
        return BatchSelection(decision, None, None)

    def synthesize(self, iteration, model, kept_images, kept_feats, selection) -> Synthesis:
        return self.synthetic


def test_restoration_target_is_the_clean_image(tmp_path: Path, ssf_config) -> None:
    torch.manual_seed(0)
    model = build_model(ssf_config).eval()  # eval: no dropout, so every decode is deterministic
    images = torch.randn(3, 3, 64, 64)
    synthetic_images = images[[1]] + 2.0 * torch.randn(1, 3, 64, 64)
    syn = Synthesis(synthetic_images, torch.tensor([1]), torch.ones(1, 64, 64, dtype=torch.bool))
    method = SSFilterMethod(
        ssf_config,
        labels=torch.zeros(3, dtype=torch.long),
        batch_filter=_FixedFilter(ssf_config.batch_filter, ssf_config.restoration, syn),
    )
    feats = model.encode(images)
    loss = method.step(StepBatch(0, [0, 1, 2], feats, images, 0.0), StepModel.plain(model))
    (row,) = method.pending_rows
    assert row["synthetic"] == 1

    enc = model.target_groups(feats)
    rec = hard_cosine_loss(enc, model.decode(feats), 0.0, reduction="none")
    syn_feats = model.encode(synthetic_images)
    dec_syn = model.decode(syn_feats)
    clean_target = hard_cosine_loss([g[[1]] for g in enc], dec_syn, 0.0, reduction="none")
    synthetic_target = hard_cosine_loss(model.target_groups(syn_feats), dec_syn, 0.0, reduction="none")
    expected = (rec.sum() + clean_target.sum()) / 4  # normalised by n1 + n2
    torch.testing.assert_close(loss, expected)
    wrong = (rec.sum() + synthetic_target.sum()) / 4
    assert not torch.allclose(loss, wrong), "the restoration target must be the clean image's features"


def test_default_method_is_ssfilter() -> None:
    from ssfilter.config import Config

    assert Config().train.method == "ssfilter"


def test_unknown_method_rejected(tmp_path: Path, synthetic_mvtec: Path, ssf_config) -> None:
    ssf_config.train.method = "magic"
    with pytest.raises(ValueError, match="unknown method"):
        Trainer(ssf_config, discover(synthetic_mvtec, "train"), tmp_path / "r", progress=False).fit()


def test_noise_injection_labels_reach_the_filter_log(
    tmp_path: Path, synthetic_mvtec: Path, ssf_config
) -> None:
    from ssfilter.api import Detector

    data = tmp_path / "data"
    shutil.copytree(synthetic_mvtec, data)
    Detector(ssf_config).fit(data, tmp_path / "run", progress=False, noise=0.3, overlap=True, noise_seed=1)
    split = (tmp_path / "run" / "noise_split.json").read_text()
    assert '"alpha": 0.3' in split
    rows = read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE)
    assert sum(int(r["anomalies"]) for r in rows) > 0


def test_filter_log_summary(tmp_path: Path) -> None:
    from ssfilter.training.filter_log import summarize_filter_log

    path = tmp_path / "filter_log.csv"
    lines = [",".join(FILTER_FIELDS)]
    # iterations 1-2 are ignored (first half); 3: 2 anomalies, 1 discarded; 4: 1 anomaly, 1 discarded
    lines.append("1,cold,4,2,0,0,0,0,0,4,4,0,0")
    lines.append("2,cold,4,2,0,0,0,0,0,0,0,4,2")
    lines.append("3,cold,4,3,1,0,0,0,0,2,1,2,0")
    lines.append("4,regular,4,2,0,1,1,0,0,1,1,3,1")
    path.write_text("\n".join(lines) + "\n")
    s = summarize_filter_log(path)
    assert s["iterations"] == 2
    assert s["abnormal_recall"] == pytest.approx(2 / 3)
    assert s["abnormal_recall_batch_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["normal_discard_rate"] == pytest.approx(1 / 5)
    assert s["mean_kept"] == pytest.approx(2.5)
    assert s["synthetic_total"] == 1
    # per phase, over all its iterations: cold = 1-3 (6 anomalies, 5 discarded; 6 normals, 2 discarded)
    cold, regular = s["phases"]["cold"], s["phases"]["regular"]
    assert list(s["phases"]) == ["cold", "regular"]
    assert (cold["first_iteration"], cold["last_iteration"], cold["iterations"]) == (1, 3, 3)
    assert cold["abnormal_recall"] == pytest.approx(5 / 6)
    assert cold["normal_discard_rate"] == pytest.approx(2 / 6)
    assert cold["abnormal_recall_batch_mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert (regular["first_iteration"], regular["abnormal_recall"]) == (4, 1.0)
    assert regular["normal_discard_rate"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("n_images", [1, 2, 3])
def test_tiny_training_sets_never_give_nan(
    tmp_path: Path, synthetic_mvtec: Path, ssf_config, n_images: int
) -> None:
    samples = discover(synthetic_mvtec, "train")[:n_images]
    ssf_config.train.iters = 4
    with pytest.warns(UserWarning, match="fewer than the batch size"):
        Trainer(ssf_config, samples, tmp_path / "run", progress=False).fit()
    losses = [float(r["loss"]) for r in read_csv_rows(tmp_path / "run" / "train_log.csv")]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    rows = read_csv_rows(tmp_path / "run" / FILTER_LOG_FILE)
    assert all(int(r["batch"]) == n_images for r in rows)
    if n_images == 1:
        assert {r["phase"] for r in rows} == {"tiny"} and all(int(r["kept"]) == 1 for r in rows)
