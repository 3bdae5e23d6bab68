"""Global options (``-q``, ``--max-image-pixels``) work before and after the command, as users type them."""

from __future__ import annotations

import argparse

import pytest

import ssfilter.cli as cli
from ssfilter.cli.parser import build_parser

TRAIN = ["train", "--data", "d", "--out", "o"]


@pytest.mark.parametrize(
    ("argv", "quiet", "pixels"),
    [
        (TRAIN, False, None),
        (["-q", *TRAIN], True, None),
        ([*TRAIN, "-q"], True, None),
        ([*TRAIN, "--quiet"], True, None),
        (["--max-image-pixels", "5", *TRAIN], False, 5),
        ([*TRAIN, "--max-image-pixels", "7"], False, 7),
        (["-q", "--max-image-pixels", "5", *TRAIN, "--max-image-pixels", "9"], True, 9),
        (["train", "-q", "--data", "d", "--out", "o"], True, None),
    ],
)
def test_both_positions(argv: list[str], quiet: bool, pixels: int | None) -> None:
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.max_image_pixels) == (quiet, pixels)


def test_every_command_accepts_them_after_it() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        options = {s for a in command._actions for s in a.option_strings}
        assert {"-q", "--quiet", "--max-image-pixels"} <= options, name


def test_bad_value_after_the_command_is_an_argument_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*TRAIN, "--max-image-pixels", "-3"])
    assert exc.value.code == 2 and "non-negative integer" in capsys.readouterr().err


def test_main_passes_them_to_the_command(monkeypatch) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.setitem(cli._COMMANDS, "train", lambda args: seen.append(args) or 0)
    monkeypatch.setenv("SSFILTER_MAX_IMAGE_PIXELS", "0")  # restored after the test; main() sets it
    assert cli.main([*TRAIN, "-q", "--max-image-pixels", "1000"]) == 0
    assert seen[0].quiet is True and seen[0].max_image_pixels == 1000


def test_top_level_help_is_unchanged_in_substance(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "-q, --quiet" in out and "--max-image-pixels N" in out and "global options" not in out
