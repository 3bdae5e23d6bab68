"""Command-line interface (SPEC §11): parsing and exit codes only; the work happens in :mod:`ssfilter.api`.

:mod:`~ssfilter.cli.parser` defines the options, :mod:`~ssfilter.cli.commands` what each command does;
:func:`main` runs one and maps errors to exit statuses (2: an :class:`~ssfilter.errors.SSFilterError` or a
bad argument, 130: interrupted).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ssfilter.cli import commands
from ssfilter.cli.parser import METHODS, build_parser

__all__ = ["METHODS", "build_parser", "main"]

_COMMANDS = {
    "train": commands.cmd_train,
    "evaluate": commands.cmd_evaluate,
    "filter": commands.cmd_filter,
    "benchmark": commands.cmd_benchmark,
    "info": commands.cmd_info,
    "demo": commands.cmd_demo,
    "predict": commands.cmd_predict,
    "calibrate": commands.cmd_calibrate,
    "export": commands.cmd_export,
    "serve": commands.cmd_serve,
}


#: What Ctrl-C leaves behind, per command (every output file is written atomically).
_INTERRUPTED = {
    "train": "interrupted; the last complete checkpoint is kept (use --resume to continue)",
    "benchmark": "interrupted; finished rows and checkpoints are kept (use --resume to continue)",
    "filter": "interrupted before the filter finished: filter.csv/json and the --export-clean folder "
    "were not written (earlier results are unchanged); run the command again",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ssfilter`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from ssfilter.data.images import PIXEL_LIMIT_ENV
    from ssfilter.errors import SSFilterError

    if args.max_image_pixels is not None:  # through the environment, so workers and ranks see it too
        os.environ[PIXEL_LIMIT_ENV] = str(args.max_image_pixels)

    done = False
    try:
        status = _COMMANDS[args.command](args)
        done = True
        return status
    except KeyboardInterrupt:
        print(_INTERRUPTED.get(args.command, "interrupted; no output was half-written"), file=sys.stderr)
        return 130
    # SSFilterError: every refusal of ssfilter's own (bad weights, run folder, device, an image that
    # became unreadable after validation, ...); the built-in ones come from argument checks.
    except (SSFilterError, FileNotFoundError, NotADirectoryError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if "ssfilter.runtime.distributed" in sys.modules:  # a torchrun launch joined a process group
            sys.modules["ssfilter.runtime.distributed"].cleanup(wait=done)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
