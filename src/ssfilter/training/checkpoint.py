"""Run folders: model weights, config and resumable training state, all written atomically.

A run folder holds:

- ``config.yaml``: the full :class:`~ssfilter.config.Config` of the run;
- ``model.safetensors``: the whole model (frozen encoder included, so a run is self-contained and
  never needs the original weights file or a download), with metadata (iteration, crop, version);
- ``train_state.pt``: optimiser, scheduler, RNG states, iteration counter and the training method's
  state, loadable with ``torch.load(weights_only=True)``; ``--resume`` continues from it bit-identically;
- ``train_log.csv``: per-iteration loss and learning rate.

Rank 0 alone writes these files; a DDP checkpoint holds every rank's method state.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ssfilter.config import Config, load_config, save_config
from ssfilter.errors import RunFormatError
from ssfilter.io import atomic_path
from ssfilter.models.dinomaly import DinomalyModel
from ssfilter.models.encoders import build_encoder
from ssfilter.runfolder import CONFIG_FILE, MODEL_FILE
from ssfilter.runtime.seeding import rng_state, set_rng_state
from ssfilter.version import VERSION

__all__ = [
    "build_model",
    "load_model",
    "load_run",
    "load_train_state",
    "read_model_metadata",
    "restore_train_state",
    "save_model",
    "save_train_state",
    "train_state",
]

#: On-disk run format; a run written by an incompatible ssfilter gives a clear error.
RUN_FORMAT = 1


def build_model(cfg: Config, *, allow_random: bool = False) -> DinomalyModel:
    """Build the model a config describes (encoder weights from ``cfg.model.weights``)."""
    encoder = build_encoder(
        cfg.model.backbone,
        cfg.model.weights,
        allow_random=allow_random or cfg.model.random_init,
        seed=cfg.train.seed,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return DinomalyModel(encoder, cfg.model, cfg.data.crop)


def save_model(
    model: DinomalyModel, path: str | Path, iteration: int, extra: dict[str, Any] | None = None
) -> None:
    """Write the full model as safetensors with run metadata, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format": str(RUN_FORMAT),
        "ssfilter_version": VERSION,
        "iteration": str(iteration),
        "crop": str(model.crop),
        "backbone": model.encoder.name,
    }
    if extra:
        meta["extra"] = json.dumps(extra)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """Metadata stored in a ``model.safetensors`` file."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def load_model(
    run_dir: str | Path, cfg: Config | None = None, device: str | torch.device = "cpu"
) -> DinomalyModel:
    """Rebuild a run's model from its config and weights, without touching the network.

    Raises:
        RunFormatError: when files are missing or the run comes from an incompatible version.
    """
    run = Path(run_dir)
    cfg = cfg or _load_run_config(run)
    path = run / MODEL_FILE
    if not path.is_file():
        raise RunFormatError(f"{run} has no {MODEL_FILE}: train it first (ssfilter train --out {run})")
    try:
        meta = read_model_metadata(path)
    except Exception as err:  # safetensors raises its own error types for a corrupt or foreign file
        raise RunFormatError(
            f"{path} is not a readable safetensors model ({type(err).__name__}: {err}); retrain the run "
            "(ssfilter train --overwrite) or restore the file"
        ) from err
    if meta.get("format") != str(RUN_FORMAT):
        raise RunFormatError(
            f"{path} has run format {meta.get('format')!r}; ssfilter {VERSION} reads format "
            f"{RUN_FORMAT}. Retrain the model or use the ssfilter version that wrote it "
            f"({meta.get('ssfilter_version')})"
        )
    from safetensors.torch import load_file

    model = build_model(cfg, allow_random=True)
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as err:
        raise RunFormatError(f"{path} does not match its config.yaml: {err}") from err
    return model.to(device).eval()


def _load_run_config(run: Path) -> Config:
    if not run.is_dir():
        raise RunFormatError(f"run folder not found: {run}")
    if not (run / CONFIG_FILE).is_file():
        raise RunFormatError(f"{run} is not an ssfilter run folder (no {CONFIG_FILE})")
    try:
        return load_config(run / CONFIG_FILE)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise RunFormatError(
            f"{run / CONFIG_FILE} cannot be read by ssfilter {VERSION} ({err}); the run was "
            "written by another version or the file was edited"
        ) from err


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Config, DinomalyModel]:
    """Config and model of a finished (or checkpointed) run."""
    cfg = _load_run_config(Path(run_dir))
    return cfg, load_model(run_dir, cfg, device)


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically (tensors and plain Python values only)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True`` (no arbitrary unpickling).

    Args:
        path: A ``train_state.pt`` written by :func:`save_train_state`.

    Raises:
        RunFormatError: The file is not a training state this version can read (corrupt, written by another
            program or version, or a pickle that would run code on loading).
    """
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise RunFormatError(
            f"{path} is not a training state this ssfilter version can load ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); start the run again without --resume "
            "(use --overwrite) or use the ssfilter version that wrote it"
        ) from err
    if not isinstance(state, dict) or "iteration" not in state:
        raise RunFormatError(f"{path} is not an ssfilter training state (no 'iteration' entry)")
    return state


def write_run_config(run_dir: str | Path, cfg: Config) -> None:
    """Write ``config.yaml`` into a run folder."""
    save_config(cfg, Path(run_dir) / CONFIG_FILE)


def train_state(
    iteration: int,
    model: DinomalyModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    method_state: Any,
    method_ranks: list[Any] | None,
    world_size: int,
) -> dict[str, Any]:
    """The content of ``train_state.pt`` after ``iteration`` iterations (read by :func:`restore_train_state`).

    The training method's state is stored under ``"filter"`` and ``"filter_ranks"``: names kept from when
    the in-batch filter was the only method with state, so that older checkpoints still resume.

    Args:
        iteration: Iterations done.
        model: The model (its trainable part is saved; the frozen encoder is rebuilt from the config).
        optimizer: Its optimiser.
        scheduler: Its learning-rate schedule.
        method_state: The method's state on rank 0 (None: a method without state).
        method_ranks: Every rank's method state under DDP, else None.
        world_size: Number of processes that trained.
    """
    return {
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "trainable": {
            k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("encoder.")
        },
        "rng": rng_state(),
        "filter": method_state,
        "filter_ranks": method_ranks,
        "world_size": world_size,
    }


def restore_train_state(
    state: dict[str, Any],
    path: Path,
    model: DinomalyModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load a checkpoint into the model, optimiser, schedule and random states; return its iteration.

    The method's state (``"filter"``, ``"filter_ranks"``) is left to the training method.

    Args:
        state: The content of ``train_state.pt``.
        path: Where it was read (for messages).
        model: The freshly built model.
        optimizer: Its optimiser.
        scheduler: Its learning-rate schedule.

    Raises:
        RunFormatError: The saved weights do not fit this model (the config changed since the run started).
    """
    mismatch = f"{path} does not match this model; was the config changed since the run started?"
    try:
        missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
    except RuntimeError as err:  # tensor shapes differ
        raise RunFormatError(mismatch) from err
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise RunFormatError(mismatch)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["iteration"])
