"""Files from elsewhere are data, never code; foreign run folders give clear errors (issue 7, item 4)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from ssfilter.cli import main
from ssfilter.config import load_config, save_config
from ssfilter.filtering.clean_export import export_clean
from ssfilter.filtering.filter_outputs import FilterRecord
from ssfilter.runfolder import CONFIG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.training.checkpoint import RunFormatError, load_model, load_train_state

REPO = Path(__file__).resolve().parents[2]
SCANNED = [REPO / "src", REPO / "benchmarks", REPO / "scripts"]


def _python_files() -> list[Path]:
    return sorted(p for root in SCANNED if root.is_dir() for p in root.rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ``""``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _unsafe_loads(path: Path) -> list[str]:
    """Deserialisation calls that can run code: torch.load without weights_only=True, unsafe YAML, pickle."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "yaml", "pickle", "dill", "joblib"):
            for alias in node.names:
                if alias.name in ("load", "unsafe_load", "full_load", "load_all", "loads", "Loader"):
                    problems.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
        if isinstance(node, ast.Attribute) and _dotted(node) in (
            "yaml.Loader",
            "yaml.UnsafeLoader",
            "yaml.FullLoader",
        ):
            problems.append(f"{path}:{node.lineno}: {_dotted(node)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path}:{node.lineno}: {name}"
        if name == "torch.load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where} without weights_only=True")
        elif name in (
            "yaml.load",
            "yaml.load_all",
            "yaml.unsafe_load",
            "yaml.full_load",
            "yaml.full_load_all",
        ):
            problems.append(f"{where} (use yaml.safe_load)")
        elif name.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") and name.endswith(
            ("load", "loads")
        ):
            problems.append(f"{where} (pickle runs code)")
        elif name in ("np.load", "numpy.load"):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{where} with allow_pickle")
    return problems


def test_source_tree_only_uses_safe_loaders(tmp_path: Path) -> None:
    files = _python_files()
    assert len(files) > 20 and any(p.name == "checkpoint.py" for p in files)
    problems = [problem for path in files for problem in _unsafe_loads(path)]
    assert problems == [], "\n".join(problems)
    # the scanner itself must catch the patterns it is looking for
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import torch, yaml, pickle\n"
        "torch.load('a')\ntorch.load('a', weights_only=False)\nyaml.load(s, Loader=yaml.Loader)\n"
        "pickle.loads(b)\nfrom torch import load\n",
        encoding="utf-8",
    )
    assert len(_unsafe_loads(probe)) == 6


class _Payload:
    """Pickles into a call of ``Path.touch``: what a malicious checkpoint would do with a worse function."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_malicious_training_state_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = tmp_path / STATE_FILE
    torch.save({"iteration": 1, "evil": _Payload(marker)}, state)
    with pytest.raises(RunFormatError, match="not a training state this ssfilter version can load"):
        load_train_state(state)
    assert not marker.exists()
    state.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(RunFormatError):
        load_train_state(state)


@pytest.fixture
def run(tmp_path: Path, synthetic_mvtec: Path, tiny_config) -> Path:
    tiny_config.train.method = "dinomaly"
    tiny_config.train.iters = tiny_config.train.checkpoint_every = 2
    tiny_config.calibration.after_training = False
    save_config(tiny_config, tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    args = [
        "-q",
        "train",
        "--data",
        str(synthetic_mvtec),
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


def _evaluate(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", "evaluate", "--run", str(run), "--out", str(tmp_path / "m.json"), "--device", "cpu"])
    return code, capsys.readouterr().err


def test_run_from_an_incompatible_version_is_a_clear_error(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = load_file(str(run / MODEL_FILE))
    save_file(weights, str(run / MODEL_FILE), metadata={"format": "99", "ssfilter_version": "9.0.0"})
    code, err = _evaluate(run, tmp_path, capsys)
    assert code == 2 and "run format '99'" in err and "9.0.0" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()

    save_file(weights, str(run / MODEL_FILE), metadata={"format": "1"})
    cfg = load_config(run / CONFIG_FILE).to_dict()
    cfg["version"] = 99
    (run / CONFIG_FILE).write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, err = _evaluate(run, tmp_path, capsys)
    assert code == 2 and "newer than this ssfilter" in err

    cfg["version"] = 1
    cfg["model"]["new_option_from_the_future"] = True
    (run / CONFIG_FILE).write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, err = _evaluate(run, tmp_path, capsys)
    assert code == 2 and "new_option_from_the_future" in err


def test_hostile_run_files_are_refused(
    run: Path, tmp_path: Path, synthetic_mvtec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    good_config = (run / CONFIG_FILE).read_text(encoding="utf-8")
    (run / CONFIG_FILE).write_text(f"!!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    code, err = _evaluate(run, tmp_path, capsys)
    assert code == 2 and CONFIG_FILE in err and not marker.exists()

    (run / CONFIG_FILE).write_text(good_config, encoding="utf-8")
    (run / MODEL_FILE).write_bytes(os.urandom(256))
    with pytest.raises(RunFormatError, match="not a readable safetensors model"):
        load_model(run)
    code, err = _evaluate(run, tmp_path, capsys)
    assert code == 2 and "retrain" in err

    torch.save({"iteration": 1, "evil": _Payload(marker)}, run / STATE_FILE)
    capsys.readouterr()
    code = main(
        ["-q", "train", "--data", str(synthetic_mvtec), "--out", str(run), "--resume", "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2 and STATE_FILE in err and "Traceback" not in err
    assert not marker.exists()


def test_exported_names_never_escape_the_clean_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    names = ["..png", "...", "..\\..\\evil.png", "new\nline.png", " .png", "CON.png", "x" * 240 + ".png"]
    paths = []
    for name in names:
        (src / "a" / "b" / name).write_bytes(name.encode())
        paths.append(str(src / "a" / "b" / name))
    paths.append(str(src / "a" / "b" / ".." / ".." / "a" / "b" / "..png"))  # the same file, via '..'
    records = [FilterRecord(p, 1, 1, 0.0, 0.0, "normal") for p in paths]
    outside_before = {p for p in tmp_path.rglob("*")}
    dest = export_clean(records, tmp_path / "clean", source_root=src / "a", mode="copy")
    created = {p for p in tmp_path.rglob("*")} - outside_before
    assert created and all(p == dest or dest in p.parents for p in created)
    good = dest / "train" / "good"
    exported = sorted(good.iterdir())
    assert len(exported) == len(paths)
    for p in exported:
        assert p.parent == good and not p.name.startswith(".") and "\n" not in p.name and len(p.name) < 255
