"""`ltau distributions`: build per-sample error distributions from a recorded error log."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau.cli._common import output_file
from ltau.distributions import save_distributions
from ltau.histogram import Bins
from ltau.sharded_log import open_error_log

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``distributions`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "distributions",
        help="build per-sample error distributions from a recorded error log",
        description="Histogram every sample's recorded error trajectory (streaming over epochs).",
    )
    parser.add_argument(
        "log",
        type=Path,
        help="error log written by ltau.ErrorRecorder (HDF5), or a sharded log's manifest",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="distributions file (.h5)")
    parser.add_argument("--bins", type=int, default=100, help="number of bins (default 100)")
    parser.add_argument("--spacing", choices=("log", "linear"), default="log", help="bin spacing")
    parser.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="bin range in error units (default: the observed range; outliers are clipped)",
    )
    parser.add_argument(
        "--members", type=int, nargs="+", help="pool only these models (default: all in the log)"
    )
    parser.add_argument(
        "--skip-epochs",
        type=int,
        default=0,
        help="leave out each model's first N epochs, a burn-in (default 0)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Build the distributions of ``args.log`` and save them."""
    output_file(args.output)
    bins = Bins.from_range(*args.range, args.bins, args.spacing) if args.range else None
    with open_error_log(args.log) as log:
        distributions = log.distributions(
            bins,
            n_bins=args.bins,
            spacing=args.spacing,
            members=args.members,
            skip_epochs=args.skip_epochs,
            progress=True,
        )
    save_distributions(distributions, args.output)
    logger.info(
        f"wrote {args.output}: {distributions.n_samples} samples, {distributions.bins.n_bins} "
        f"{distributions.bins.spacing} bins [{distributions.bins.edges[0]:.4g}, "
        f"{distributions.bins.edges[-1]:.4g}], {distributions.n_below + distributions.n_above} "
        "observations clipped into the end bins"
    )
