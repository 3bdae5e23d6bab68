"""Tests of reading encoder weight files, the offline switches and the hub fallback."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ssfilter.errors import WeightsUnavailableError
from ssfilter.models.encoders.weights import (
    download_hub_file,
    is_offline,
    read_shapes,
    read_state,
    require_file,
)


class _Gadget:
    """An arbitrary object: a pickle holding one must not be loaded (it could run code)."""


def test_require_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    with pytest.raises(WeightsUnavailableError, match=f"weights file not found: {path}"):
        require_file(path)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        require_file(tmp_path)  # a folder is not a weights file
    path.write_bytes(b"x")
    assert require_file(str(path)) == path


def test_read_state_and_shapes(tmp_path: Path) -> None:
    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(4)}
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(state, str(st))
    torch.save(state, pth)
    for path in (st, pth):
        got = read_state(path)
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
        assert read_shapes(path) == {"a.weight": (2, 3), "b.bias": (4,)}
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    assert read_shapes(tmp_path / "list.pth") is None
    with pytest.raises(WeightsUnavailableError, match="not found"):
        read_state(tmp_path / "missing.safetensors")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"gadget": _Gadget()}, path)
    with pytest.raises(pickle.UnpicklingError):
        read_state(path)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "SSFILTER_OFFLINE"])
def test_offline_switches(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SSFILTER_OFFLINE", raising=False)
    assert not is_offline()
    monkeypatch.setenv(var, "1")
    assert is_offline()
    with pytest.raises(WeightsUnavailableError, match=r"^offline mode is set\. get it by hand$"):
        download_hub_file("timm/none", "model.safetensors", "get it by hand")


def test_hub_failure_is_weights_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("SSFILTER_OFFLINE", raising=False)
    asked: list[tuple[str, str]] = []

    def failing(repo: str, filename: str, **kwargs: object) -> str:
        asked.append((repo, filename))
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(WeightsUnavailableError, match=r"could not download weights \(OSError\)\. hint"):
        download_hub_file("timm/x", "model.safetensors", "hint")
    assert asked == [("timm/x", "model.safetensors")]

    file = tmp_path / "model.safetensors"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, **kw: str(file))
    assert download_hub_file("timm/x", "model.safetensors", "hint") == file
