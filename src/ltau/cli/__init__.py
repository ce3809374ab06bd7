"""The ``ltau`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Errors in input, and files the system refuses to read or write, exit with status 2 and one
line on standard error that names the problem.
Progress and results are reported through :mod:`logging` (``-v`` for more, ``-q`` for
warnings only); long work shows a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ltau._version import __version__
from ltau.cli import (
    calibrate,
    demo,
    describe,
    descriptors,
    distributions,
    dynamics,
    fit,
    mace_train,
    predict,
    relax,
    run,
    select,
)
from ltau.exceptions import LTAUFileError, LTAUInputError

SUBCOMMANDS = (
    demo,
    mace_train,
    run,
    descriptors,
    distributions,
    fit,
    calibrate,
    predict,
    describe,
    dynamics,
    relax,
    select,
)
"""Subcommand modules, in the order ``ltau --help`` lists them."""

DESCRIPTION = """\
LTAU: Loss Trajectory Analysis for Uncertainty.

Typical flow (errors recorded during training with ltau.ErrorRecorder):
  ltau distributions errors.h5 -o distributions.h5
  ltau fit --descriptors train_descriptors.npy --distributions distributions.h5 -o estimator.h5
  ltau predict estimator.h5 --descriptors query_descriptors.npy --atol 0.1 -o predictions.csv
  ltau describe estimator.h5
  ltau dynamics errors.h5 -o map.csv --atol 0.1 --groups sizes.npy --figure map.png
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 success, 2 bad input or file)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose - args.quiet)
    try:
        return int(args.handler(args) or 0)
    except (LTAUInputError, LTAUFileError) as exc:
        sys.stderr.write(f"ltau {args.command}: error: {exc}\n")
        return 2
    except OSError as exc:  # the system refused a file operation (permissions, disk full...)
        where = f" {exc.filename}" if exc.filename else ""
        sys.stderr.write(
            f"ltau {args.command}: error: cannot access{where}: {exc.strerror or exc}\n"
        )
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ltau`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ltau", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ltau {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return parser


def configure_logging(verbosity: int) -> None:
    """Report through ltau's loggers: what a command did (info, and debug with ``-v``) on
    standard output, warnings on standard error; ``-q`` keeps only the warnings. Replaces the
    handlers an earlier call installed."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logger = logging.getLogger("ltau")
    for handler in [h for h in logger.handlers if getattr(h, "ltau_cli", False)]:
        logger.removeHandler(handler)
    report = logging.StreamHandler(sys.stdout)
    report.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = logging.StreamHandler(sys.stderr)
    warnings.setLevel(logging.WARNING)
    for handler in (report, warnings):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.ltau_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a trainer's root handlers (mace's) would print it twice


if __name__ == "__main__":
    sys.exit(main())
