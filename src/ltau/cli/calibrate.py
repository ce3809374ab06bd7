"""`ltau calibrate`: fit the distance widening and the calibration map on validation data."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau.calibration import CALIBRATION_METHODS
from ltau.cli._common import load_npy, output_file
from ltau.estimator import LTAUEstimator

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``calibrate`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "calibrate",
        help="fit the distance widening and calibration map on validation data",
        description="Fit, on a validation split (never a test set), how errors grow with the "
        "distance to the training set (atom and, with --groups, structure OOD scores) and a "
        "recalibration map; write the calibrated estimator.",
    )
    parser.add_argument("estimator", type=Path, help="estimator file written by 'ltau fit'")
    parser.add_argument("--descriptors", type=Path, required=True, help="(n, dim) .npy")
    parser.add_argument("--errors", type=Path, required=True, help="(n,) observed errors .npy")
    parser.add_argument("--groups", type=Path, help="(n,) integer group labels .npy")
    parser.add_argument("--method", choices=tuple(CALIBRATION_METHODS), default="isotonic")
    parser.add_argument(
        "--no-widening", action="store_true", help="calibrate without the distance widening"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="estimator (.h5)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Calibrate a saved estimator on validation data and save the result."""
    output_file(args.output)
    estimator = LTAUEstimator.load(args.estimator)
    estimator.calibrate(
        load_npy(args.descriptors),
        load_npy(args.errors),
        args.method,
        groups=load_npy(args.groups) if args.groups else None,
        widen=not args.no_widening,
    )
    estimator.save(args.output, metadata=estimator.metadata_)
    widening = estimator.widening_
    logger.info(
        f"wrote {args.output}: {args.method} calibration"
        + (
            f", distance widening exponents {widening.exponent:.3g} (atom) and "
            f"{widening.group_exponent:.3g} (group)"
            if widening is not None
            else ", no distance widening"
        )
    )
