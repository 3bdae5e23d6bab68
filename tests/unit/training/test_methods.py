"""The training-method registry: a method registered here trains through the real Trainer; names, errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file

from ssfilter.cli import METHODS, build_parser
from ssfilter.data.datasets import discover
from ssfilter.errors import SSFilterError
from ssfilter.io import read_csv_rows
from ssfilter.runfolder import FILTER_LOG_FILE, LOG_FILE, MODEL_FILE, STATE_FILE
from ssfilter.training.checkpoint import build_model, load_train_state
from ssfilter.training.losses import hard_cosine_loss
from ssfilter.training.methods import (
    BUILTIN_METHODS,
    MethodState,
    StepBatch,
    StepModel,
    TrainingMethod,
    UnknownMethodError,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from ssfilter.training.plan import BatchPlan
from ssfilter.training.trainer import Trainer

TOY = "toy-test"


class _ToyMethod(TrainingMethod):
    """Dinomaly's loss, fixed dropout seeds; counts its steps (its checkpoint state), records its inputs."""

    instances: ClassVar[list[_ToyMethod]] = []

    def __init__(self, cfg: Any, *, rank: int = 0, world: int = 1, labels: Any = None) -> None:
        super().__init__(cfg, rank=rank, world=world, labels=labels)
        self.steps = 0
        self.seen: list[tuple[int, list[int], bool, tuple[int, int, int]]] = []
        self.restored: list[tuple[MethodState, int]] = []
        _ToyMethod.instances.append(self)

    def step(self, batch: StepBatch, net: StepModel) -> torch.Tensor:
        self.steps += 1
        self.seen.append((batch.iteration, list(batch.indices), batch.images is None, batch.layout))
        dec = net.decode(batch.feats, [0] * len(batch.indices))
        return hard_cosine_loss(net.model.target_groups(batch.feats), dec, batch.p)

    def checkpoint(self, run_dir: Path) -> MethodState:
        return MethodState({"steps": torch.tensor(self.steps)})

    def restore(self, saved: MethodState, path: Path, iteration: int) -> None:
        self.restored.append((saved, iteration))
        self.steps = int(saved.state["steps"])


@pytest.fixture
def toy() -> Iterator[type[_ToyMethod]]:
    _ToyMethod.instances.clear()
    cls = register_method(TOY)(_ToyMethod)
    yield cls
    unregister_method(TOY)


def test_a_registered_method_trains_checkpoints_and_resumes_through_the_trainer(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config, toy: type[_ToyMethod]
) -> None:
    tiny_config.train.method = TOY
    tiny_config.train.iters = 4
    assert TOY in list_methods() and get_method(TOY) is toy and toy.name == TOY
    samples = discover(synthetic_mvtec, "train")
    run = tmp_path / "run"
    Trainer(tiny_config, samples, run, progress=False, stop_after=2).fit()

    (first,) = toy.instances
    plan = BatchPlan(len(samples), tiny_config.data.batch_size, tiny_config.train.seed)
    assert [s[0] for s in first.seen] == [0, 1]
    assert [s[1] for s in first.seen] == [plan.indices(0), plan.indices(1)]
    assert all(s[2] for s in first.seen), "a method without needs_images gets features only"
    assert all(s[3] == (0, 4, 4) for s in first.seen), "one process: the slice is the whole batch"
    state = load_train_state(run / STATE_FILE)
    assert state["iteration"] == 2 and int(state["filter"]["steps"]) == 2 and state["filter_ranks"] is None
    init = build_model(tiny_config).state_dict()
    trained = load_file(str(run / MODEL_FILE))
    moved = [float((trained[k] - v).abs().max()) for k, v in init.items() if not k.startswith("encoder.")]
    assert max(moved) > 0, "the toy's loss trained the model"

    Trainer(tiny_config, samples, run, progress=False).fit(resume=True)
    second = toy.instances[1]
    ((saved, iteration),) = second.restored
    assert iteration == 2 and int(saved.state["steps"]) == 2
    assert [s[0] for s in second.seen] == [2, 3]
    assert int(load_train_state(run / STATE_FILE)["filter"]["steps"]) == 4
    assert [int(r["iteration"]) for r in read_csv_rows(run / LOG_FILE)] == [1, 2, 3, 4]


def test_unknown_method_error_lists_the_known_ones(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    with pytest.raises(UnknownMethodError) as err:
        get_method("magic")
    assert isinstance(err.value, SSFilterError) and isinstance(err.value, ValueError)
    assert str(err.value) == "unknown method 'magic'; choose one of ssfilter, dinomaly"
    tiny_config.train.method = "magic"
    with pytest.raises(UnknownMethodError, match="choose one of ssfilter, dinomaly"):
        Trainer(tiny_config, discover(synthetic_mvtec, "train"), tmp_path / "r", progress=False).fit()
    assert not (tmp_path / "r").exists(), "refused before anything is written"


def test_cli_method_choices_are_the_registry(tmp_path: Path) -> None:
    assert tuple(METHODS) == list_methods() == ("ssfilter", "dinomaly")
    parser = build_parser()
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    for name in list_methods():
        assert parser.parse_args([*base, "--method", name]).method == name
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--method", "magic"])


def test_builtin_methods_resolve_to_their_classes() -> None:
    for name in BUILTIN_METHODS:
        cls = get_method(name)
        assert issubclass(cls, TrainingMethod) and cls.name == name
    assert get_method("ssfilter").needs_images and not get_method("dinomaly").needs_images
    assert FILTER_LOG_FILE in get_method("ssfilter").log_files and get_method("dinomaly").log_files == ()


def test_registration_guards(toy: type[_ToyMethod]) -> None:
    class Other(_ToyMethod):
        pass

    with pytest.raises(ValueError, match="built-in"):
        register_method("dinomaly")(Other)
    with pytest.raises(ValueError, match="already registered"):
        register_method(TOY)(Other)
    with pytest.raises(ValueError, match="non-empty"):
        register_method(" ")
    with pytest.raises(ValueError, match="built-in"):
        unregister_method("ssfilter")
    assert get_method(TOY) is toy and get_method("dinomaly").__name__ == "DinomalyMethod"


def test_a_fresh_run_empties_logs_of_another_method(
    tmp_path: Path, synthetic_mvtec: Path, tiny_config
) -> None:
    """``--overwrite`` keeps the folder: a dinomaly run must not keep an earlier ssfilter run's filter log."""
    run = tmp_path / "run"
    run.mkdir()
    (run / FILTER_LOG_FILE).write_text("iteration,phase\n1,cold\n", encoding="utf-8")
    tiny_config.train.method = "dinomaly"
    tiny_config.train.iters = 2
    Trainer(tiny_config, discover(synthetic_mvtec, "train"), run, progress=False).fit()
    assert (run / FILTER_LOG_FILE).read_text(encoding="utf-8") == ""


def test_listing_methods_does_not_load_torch() -> None:
    """The CLI builds its parser (``--method`` choices) without torch, so ``ssfilter --help`` stays fast."""
    code = (
        "import sys\n"
        "from ssfilter.cli import build_parser\n"
        "from ssfilter.training.methods import list_methods\n"
        "build_parser()\n"
        "print(list(list_methods()), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("]")[-1].strip() == "False", out
