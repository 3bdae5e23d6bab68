"""The one loader of a run folder (``load_run_folder``) and the layering of ``ssfilter.inference``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ssfilter.api import Detector
from ssfilter.config import Config, save_config
from ssfilter.errors import CalibrationError, RunFormatError
from ssfilter.inference.calibration import Calibration
from ssfilter.inference.predictor import Predictor
from ssfilter.inference.run import LoadedRun, load_run_folder
from ssfilter.runfolder import CALIBRATION_FILE, CONFIG_FILE, MODEL_FILE, write_data_record
from ssfilter.training.checkpoint import build_model, load_run, save_model

INFERENCE = Path(__file__).resolve().parents[3] / "src" / "ssfilter" / "inference"

CAL = Calibration(
    image_threshold=0.3,
    score_min=0.1,
    score_max=0.5,
    pixel_threshold=0.4,
    map_min=0.0,
    map_max=0.8,
    rule="test",
    source="manual",
    n_images=5,
    map_size=64,
)


def _run(root: Path, cfg: Config, *, calibrated: bool = True) -> Path:
    """A run folder as training leaves it, without training: random weights, config, data record."""
    run = root / "run"
    run.mkdir()
    cfg.train.seed = 7
    save_config(cfg, run / CONFIG_FILE)
    save_model(build_model(cfg, allow_random=True), run / MODEL_FILE, iteration=cfg.train.iters)
    write_data_record(run, root / "data", 12)
    if calibrated:
        CAL.save(run)
    return run


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_run_folder_matches_the_separate_readers(tmp_path: Path, tiny_config: Config) -> None:
    run = _run(tmp_path, tiny_config)
    loaded = load_run_folder(run, "cpu")
    cfg, model = load_run(run, "cpu")
    assert isinstance(loaded, LoadedRun) and loaded.path == run
    assert loaded.config == cfg and loaded.config.train.seed == 7
    assert _same_weights(loaded.model, model) and not loaded.model.training
    assert next(loaded.model.parameters()).device == torch.device("cpu")
    assert loaded.calibration == Calibration.load(run) == CAL
    assert loaded.data == (tmp_path / "data").resolve()


def test_detector_and_predictor_load_through_the_same_loader(tmp_path: Path, tiny_config: Config) -> None:
    run = _run(tmp_path, tiny_config)
    loaded = load_run_folder(run, "cpu")
    det = Detector.load(run, device="cpu")
    pred = Predictor.load(run, device="cpu")
    assert det.config == pred.cfg == loaded.config
    assert _same_weights(det.model, loaded.model) and _same_weights(pred.model, loaded.model)
    assert det.run_dir == pred.run_dir == run and det.data == loaded.data
    assert pred.calibration == CAL
    assert Predictor.load(run, device="cpu", threshold=0.2).calibration.image_threshold == 0.2


def test_calibration_modes(tmp_path: Path, tiny_config: Config) -> None:
    run = _run(tmp_path, tiny_config, calibrated=False)
    assert load_run_folder(run, "cpu").calibration is None
    assert load_run_folder(run, "cpu", calibration="skip").calibration is None
    with pytest.raises(FileNotFoundError, match=f"ssfilter calibrate --run {run}"):
        load_run_folder(run, "cpu", calibration="required")
    with pytest.raises(FileNotFoundError, match="ssfilter calibrate"):
        Predictor.load(run, device="cpu")
    (run / CALIBRATION_FILE).write_text("{broken", encoding="utf-8")
    assert load_run_folder(run, "cpu", calibration="skip").calibration is None
    assert Detector.load(run, device="cpu").run_dir == run  # a bad calibration does not stop loading
    for need in ("optional", "required"):
        with pytest.raises(CalibrationError, match="not valid JSON"):
            load_run_folder(run, "cpu", calibration=need)


def test_missing_or_incomplete_run_folder_is_a_run_format_error(tmp_path: Path, tiny_config: Config) -> None:
    for need in ("required", "optional", "skip"):
        with pytest.raises(RunFormatError, match="run folder not found"):
            load_run_folder(tmp_path / "nowhere", "cpu", calibration=need)
    with pytest.raises(RunFormatError, match="run folder not found"):
        Detector.load(tmp_path / "nowhere", device="cpu")
    with pytest.raises(RunFormatError, match="run folder not found"):
        Predictor.load(tmp_path / "nowhere", device="cpu")
    with pytest.raises(RunFormatError, match=CONFIG_FILE):
        load_run_folder(tmp_path, "cpu")  # a folder, but not a run
    run = _run(tmp_path, tiny_config)
    (run / MODEL_FILE).unlink()
    with pytest.raises(RunFormatError, match=MODEL_FILE):
        load_run_folder(run, "cpu")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, imported names)`` of every import in a file, function-level ones included."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_inference_sits_below_the_api_and_takes_no_private_names() -> None:
    """Nothing in ``ssfilter.inference`` imports the API (or higher layers) or another module's ``_name``."""
    files = sorted(INFERENCE.glob("*.py"))
    assert len(files) >= 10
    higher = ("ssfilter.api", "ssfilter.cli", "ssfilter.pipelines", "ssfilter.reporting")
    for path in files:
        for module, names in _imports(path):
            assert not module.startswith(higher), f"{path.name} imports {module}"
            if module.startswith("ssfilter"):
                assert not [n for n in names if n.startswith("_")], f"{path.name}: {module} {names}"
