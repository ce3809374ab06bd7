"""`ltau dynamics`: map every sample's training dynamics from a recorded error log."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau.cli._common import load_npy, output_file, write_csv
from ltau.dynamics import DynamicsTable, groups_from_sizes, training_dynamics
from ltau.exceptions import LTAUInputError
from ltau.report import plot_training_dynamics
from ltau.sharded_log import open_error_log

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``dynamics`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "dynamics",
        help="map every sample's training dynamics from a recorded error log",
        description="Per sample, over the kept epochs: mean error, its std over epochs "
        "(variability), fraction of epochs above atol, forgetting events (an epoch at or "
        "below atol followed by one above), last-epoch error, recorded epochs. With --groups, "
        "the same per group, from each group's RMS error per epoch (for per-atom force "
        "errors: each configuration's force RMSE).",
    )
    parser.add_argument("log", type=Path, help="error log written by ltau.ErrorRecorder (HDF5)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="per-sample map (.csv)")
    parser.add_argument(
        "--atol", type=float, required=True, help="tolerance in error units (e.g. eV/Å)"
    )
    parser.add_argument(
        "--skip-epochs", type=int, default=0, help="leave out each model's first N epochs"
    )
    parser.add_argument("--members", type=int, nargs="+", help="models to use (default: all)")
    parser.add_argument(
        "--groups",
        type=Path,
        help="group sizes, .npy of positive integers summing to the number of samples "
        "(e.g. atoms per configuration, in order)",
    )
    parser.add_argument(
        "--group-output",
        type=Path,
        help="per-group map (.csv; default: OUTPUT with suffix .groups.csv)",
    )
    parser.add_argument(
        "--figure", type=Path, help="PNG: mean error vs variability (groups if given)"
    )
    parser.add_argument(
        "--color-by",
        choices=("forgetting_events", "exceed_fraction"),
        default="forgetting_events",
        help="colour of the figure's points",
    )
    parser.add_argument("--unit", default="eV/Å", help="error unit for the figure's axes")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Write the per-sample (and per-group) training-dynamics maps."""
    outputs = [args.output]
    if args.output.suffix.lower() != ".csv":
        raise LTAUInputError(f"output must end in .csv; got {args.output.name!r}")
    sizes = None
    if args.groups is not None:
        sizes = load_npy(args.groups)
        args.group_output = args.group_output or args.output.with_suffix(".groups.csv")
        outputs.append(args.group_output)
    elif args.group_output is not None:
        raise LTAUInputError("--group-output needs --groups")
    if args.figure is not None:
        if args.figure.suffix.lower() != ".png":
            raise LTAUInputError(f"the figure must be a .png; got {args.figure.name!r}")
        outputs.append(args.figure)
    for path in outputs:
        output_file(path)
    with open_error_log(args.log) as log:
        groups = None if sizes is None else groups_from_sizes(sizes, log.n_samples)
        result = training_dynamics(
            log,
            args.atol,
            skip_epochs=args.skip_epochs,
            members=args.members,
            groups=groups,
            progress=True,
        )
    sample_columns = result.samples.columns()
    if groups is not None:
        sample_columns = {"group": groups} | sample_columns
    write_csv(args.output, sample_columns)
    logger.info(
        f"wrote {args.output}: {len(result.samples)} samples, columns {list(sample_columns)}"
    )
    if result.groups is not None:
        write_csv(args.group_output, result.groups.columns())
        logger.info(f"wrote {args.group_output}: {len(result.groups)} groups")
    if args.figure is not None:
        table: DynamicsTable = result.groups if result.groups is not None else result.samples
        try:
            plot_training_dynamics(
                table,
                args.figure,
                atol=result.atol,
                color_by=args.color_by,
                unit=args.unit,
                title=f"training dynamics per {'group' if result.groups is not None else 'sample'}",
            )
        except ImportError as exc:
            raise LTAUInputError(
                f"--figure needs matplotlib (any of the 'lightning', 'mace' or 'nequip' extras): "
                f"{exc}"
            ) from exc
        logger.info(f"wrote {args.figure}")
