"""Configs: presets, YAML round trip, overrides, and configs written before the filter section was split."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssfilter.config import (
    CONFIG_VERSION,
    Config,
    apply_overrides,
    get_preset,
    load_config,
    save_config,
)

#: The ``filter`` section exactly as configs of version 1 (ssfilter before the split) wrote it.
V1_FILTER = {
    "patch_scoring": True,
    "uncertainty": False,
    "urecall": True,
    "restoring": False,
    "cold_start_iters": 7,
    "mc_passes": 4,
    "tau": 3.5,
    "patch_topk_ratio": 0.002,
    "image_topk_ratio": 0.02,
    "keep_ratio": 0.75,
    "material_max_ratio": 0.7,
    "material_percentile": 98.0,
    "materials_min": 2,
    "materials_max": 4,
    "block_rows": 512,
    "epochs": 9,
    "min_keep": 3,
}


def _check_v1_values(cfg: Config) -> None:
    bf, rs, df = cfg.batch_filter, cfg.restoration, cfg.dataset_filter
    assert (bf.patch_scoring, bf.uncertainty, bf.urecall) == (True, False, True)
    assert (bf.cold_start_iters, bf.mc_passes, bf.tau, bf.block_rows) == (7, 4, 3.5, 512)
    assert (bf.patch_topk_ratio, bf.image_topk_ratio, bf.keep_ratio) == (0.002, 0.02, 0.75)
    assert rs.enabled is False
    assert (rs.material_max_ratio, rs.material_percentile, rs.materials_min, rs.materials_max) == (
        0.7,
        98.0,
        2,
        4,
    )
    assert (df.epochs, df.min_keep) == (9, 3)


@pytest.mark.parametrize("name", ["paper-448-392", "paper-256-224", "cpu-fast"])
def test_presets_round_trip_through_yaml(tmp_path: Path, name: str) -> None:
    cfg = get_preset(name)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["version"] == CONFIG_VERSION


def test_version1_filter_section_is_spread_over_the_new_sections() -> None:
    raw = get_preset("cpu-fast").to_dict()
    for section in ("batch_filter", "restoration", "dataset_filter"):
        del raw[section]
    raw.update(version=1, filter=dict(V1_FILTER))
    _check_v1_values(Config.from_dict(raw))


def test_version1_file_naming_a_preset_overrides_only_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(
        "preset: cpu-fast\nversion: 1\nfilter:\n  mc_passes: 6\n  restoring: false\n  epochs: 11\n"
    )
    cfg = load_config(path)
    base = get_preset("cpu-fast")
    assert cfg.batch_filter.mc_passes == 6 and cfg.restoration.enabled is False
    assert cfg.dataset_filter.epochs == 11
    # everything else is the preset's
    assert cfg.batch_filter.cold_start_fraction == base.batch_filter.cold_start_fraction == 0.5
    assert cfg.dataset_filter.min_keep == base.dataset_filter.min_keep


def test_full_version1_file_loads(tmp_path: Path) -> None:
    raw = get_preset("cpu-fast").to_dict()
    for section in ("batch_filter", "restoration", "dataset_filter"):
        del raw[section]
    raw.update(version=1, filter=dict(V1_FILTER))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    _check_v1_values(load_config(path))


def test_unknown_key_of_a_version1_filter_section_is_named() -> None:
    with pytest.raises(ValueError, match="bogus"):
        Config.from_dict({"version": 1, "filter": {"bogus": 1}})


def test_overrides_accept_new_and_version1_names() -> None:
    cfg = get_preset("cpu-fast")
    apply_overrides(cfg, ["filter.restoring=false", "filter.mc_passes=5", "filter.min_keep=2"])
    assert cfg.restoration.enabled is False
    assert cfg.batch_filter.mc_passes == 5 and cfg.dataset_filter.min_keep == 2
    apply_overrides(cfg, ["restoration.enabled=true", "batch_filter.tau=2.5", "dataset_filter.epochs=4"])
    assert cfg.restoration.enabled is True
    assert cfg.batch_filter.tau == 2.5 and cfg.dataset_filter.epochs == 4
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(cfg, ["batch_filter.epochs=3"])  # the dataset filter's, not the batch filter's


def test_newer_config_version_is_refused() -> None:
    with pytest.raises(ValueError, match="newer"):
        Config.from_dict({"version": CONFIG_VERSION + 1})


def test_shortcuts_map_short_names_and_drop_missing_values() -> None:
    from ssfilter.config import shortcut_overrides

    out = shortcut_overrides({"iters": 5, "batch_size": None, "seed": 3, "train.lr": 0.01})
    assert out == {"train.iters": 5, "train.seed": 3, "train.lr": 0.01}
    cfg = apply_overrides(get_preset("cpu-fast"), out)
    assert (cfg.train.iters, cfg.train.seed, cfg.train.lr) == (5, 3, 0.01)
    assert cfg.data.batch_size == get_preset("cpu-fast").data.batch_size


def test_schedule_fractions_follow_iters_and_keep_the_paper_numbers() -> None:
    from ssfilter.schedule import resolve_schedule

    paper = resolve_schedule(get_preset("paper-448-392"))
    # the paper's 100 / 1000 / 1000 iterations at its 1000 iterations
    assert (paper.train.warmup_iters, paper.train.hard_mining_ramp) == (100, 1000)
    assert paper.batch_filter.cold_start_iters == 1000
    cfg = get_preset("cpu-fast")
    fast = resolve_schedule(cfg)
    assert (fast.train.warmup_iters, fast.train.hard_mining_ramp, fast.batch_filter.cold_start_iters) == (
        30,
        300,
        150,
    )
    cfg.train.iters = 500
    longer = resolve_schedule(cfg)
    assert (longer.train.warmup_iters, longer.train.hard_mining_ramp) == (50, 500)
    assert longer.batch_filter.cold_start_iters == 250
    # an explicit iteration count wins over the fraction, and the given config is left as it was
    apply_overrides(cfg, ["train.warmup_iters=7", "batch_filter.cold_start_iters=11"])
    fixed = resolve_schedule(cfg)
    assert (fixed.train.warmup_iters, fixed.batch_filter.cold_start_iters) == (7, 11)
    assert cfg.train.hard_mining_ramp is None and fixed.train.hard_mining_ramp == 500
    apply_overrides(cfg, ["batch_filter.cold_start_iters=null"])
    assert resolve_schedule(cfg).batch_filter.cold_start_iters == 250


def test_schedule_notes_warn_about_phases_that_are_never_reached() -> None:
    from ssfilter.schedule import schedule_notes

    cfg = get_preset("cpu-fast")
    summary, notes = schedule_notes(cfg)
    assert notes == []
    assert "cold start (A alone) 0-150" in summary and "regular phase (A and U) 150-300" in summary
    paper = get_preset("paper-448-392")
    _, notes = schedule_notes(paper)
    assert len(notes) == 1 and "regular phase" in notes[0] and "never reached" in notes[0]
    paper.batch_filter.uncertainty = False  # no uncertainty: the regular phase adds nothing, no warning
    assert schedule_notes(paper)[1] == []
    cfg.train.hard_mining_ramp, cfg.train.warmup_iters = 600, 300
    _, notes = schedule_notes(cfg)
    assert any("reaches only 0.45 of 0.9" in n for n in notes)
    assert any("warm-up" in n for n in notes)
    cfg.train.method = "dinomaly"
    assert not any("regular phase" in n for n in schedule_notes(cfg)[1])


def test_schedule_length_rules() -> None:
    from ssfilter.schedule import schedule_length

    assert schedule_length(None, 0.25, 10) == 2  # round half to even, as Python's round
    assert schedule_length(None, 0.0, 10, minimum=1) == 1
    assert schedule_length(5, 0.9, 10) == 5
    with pytest.raises(ValueError, match=">= 0"):
        schedule_length(None, -0.1, 10)


def test_resolve_coverage() -> None:
    from ssfilter.coverage import resolve_coverage

    cfg = get_preset("cpu-fast")
    assert cfg.data.coverage == "auto"
    whole = resolve_coverage(cfg, "whole")
    assert (whole.data.coverage, whole.data.resize, whole.data.crop) == ("whole", 224, 224)
    crop = resolve_coverage(cfg, "crop")
    assert (crop.data.coverage, crop.data.resize, crop.data.crop) == ("crop", 256, 224)
    assert cfg.data.coverage == "auto" and cfg.data.resize == 256  # the input is not changed
    # an explicit choice wins over the format's default, and resolving again changes nothing
    cfg.data.coverage = "crop"
    assert resolve_coverage(cfg, "whole").data.resize == 256
    assert resolve_coverage(whole, "crop").data.coverage == "whole"
    cfg.data.coverage = "everything"
    with pytest.raises(ValueError, match="data.coverage must be one of auto, crop, whole"):
        resolve_coverage(cfg, "whole")
    with pytest.raises(ValueError, match="default coverage must be 'crop' or 'whole'"):
        resolve_coverage(get_preset("cpu-fast"), "auto")


def test_tiles_coverage_is_kept_and_checked() -> None:
    from ssfilter.coverage import resolve_coverage

    cfg = get_preset("cpu-fast")
    cfg.data.coverage = "tiles"
    tiles = resolve_coverage(cfg, "crop")
    assert (tiles.data.coverage, tiles.data.tile_scale, tiles.data.tile_overlap) == ("tiles", 1.0, 0.25)
    cfg.data.tile_overlap = 1.0
    with pytest.raises(ValueError, match="tile_overlap"):
        resolve_coverage(cfg, "crop")
    cfg.data.tile_overlap, cfg.data.tile_scale = 0.25, 0.0
    with pytest.raises(ValueError, match="tile_scale"):
        resolve_coverage(cfg, "crop")


def test_cli_coverage_and_tile_scale_flags() -> None:
    from ssfilter.cli.commands import config_from_args
    from ssfilter.cli.parser import build_parser

    args = build_parser().parse_args(
        [
            "train",
            "--data",
            "x",
            "--out",
            "y",
            "--preset",
            "cpu-fast",
            "--coverage",
            "tiles",
            "--tile-scale",
            "0.5",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.data.coverage, cfg.data.tile_scale) == ("tiles", 0.5)
