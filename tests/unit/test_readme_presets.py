"""The README's table of what ``cpu-fast`` changes from the paper presets matches the preset definitions."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ssfilter.config import get_preset

README = Path(__file__).resolve().parents[2] / "README.md"
PRESETS = ("cpu-fast", "paper-256-224", "paper-448-392")
#: What the README writes for a ``None`` decoder setting (the encoder's own width / heads, ViT-S/14).
ENCODER_DEFAULTS = {"model.decoder_dim": "encoder width (384)", "model.decoder_heads": "encoder heads (6)"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _readme_rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- cpu-fast-diff:start -->(.*?)<!-- cpu-fast-diff:end -->", text, re.S)
    assert block is not None, "README lost its cpu-fast difference table"
    rows = {}
    for line in block.group(1).strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = [c.strip("`") for c in cells[1:4]]
    return rows


def _shown(key: str, value: Any) -> str:
    return ENCODER_DEFAULTS[key] if value is None and key in ENCODER_DEFAULTS else str(value)


def test_readme_lists_exactly_the_settings_that_differ() -> None:
    configs = [_flat(asdict(get_preset(name))) for name in PRESETS]
    differing = {key for key in configs[0] if key != "preset" and len({repr(c[key]) for c in configs}) > 1}
    rows = _readme_rows()
    assert set(rows) == differing
    for key, cells in rows.items():
        assert cells == [_shown(key, c[key]) for c in configs], key
