"""`ltau predict`: predict error statistics for query descriptors."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ltau._io import atomic_path
from ltau.cli._common import load_descriptors, load_npy, output_file, write_csv
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "predict",
        help="predict error statistics for query descriptors",
        description="Write one row per query: expected error, OOD score (mean Euclidean "
        "distance to the k neighbours), whether the expected error is below the neighbours' "
        "resolution, and the requested exceedance probabilities, quantiles and interval. .csv and .npy (structured array) hold the columns; .npz also the PDF.",
    )
    parser.add_argument("estimator", type=Path, help="estimator file written by 'ltau fit'")
    parser.add_argument(
        "--descriptors",
        type=Path,
        required=True,
        help="(n_queries, dim) .npy, or the .npz of 'ltau descriptors' (its model fingerprint "
        "is checked against the estimator's)",
    )
    parser.add_argument(
        "--groups", type=Path, help="(n_queries,) integer group labels .npy (e.g. structures)"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help=".csv, .npy or .npz")
    parser.add_argument("--atol", type=float, nargs="+", help="tolerances for P(error > atol)")
    parser.add_argument("--quantiles", type=float, nargs="+", help="quantile levels in [0, 1]")
    parser.add_argument("--confidence", type=float, help="central interval level, e.g. 0.9")
    parser.add_argument("--pdf", action="store_true", help="also write the PDF (.npz only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Predict for the query descriptors and write the table."""
    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".npy", ".npz"):
        raise LTAUInputError(f"output must end in .csv, .npy or .npz; got {args.output.name!r}")
    if args.pdf and suffix != ".npz":
        raise LTAUInputError("--pdf needs an .npz output")
    output_file(args.output)
    estimator = LTAUEstimator.load(args.estimator)
    prediction = estimator.predict(
        load_descriptors(args.descriptors, estimator.metadata_.get("model_sha256")),
        groups=load_npy(args.groups) if args.groups else None,
        atol=args.atol,
        quantiles=args.quantiles,
        confidence=args.confidence,
        return_pdf=args.pdf,
        progress=True,
    )
    columns = prediction.columns()
    if suffix == ".csv":
        write_csv(args.output, columns)
    else:
        with atomic_path(args.output) as temporary, open(temporary, "wb") as handle:
            if suffix == ".npy":
                table = np.empty(len(prediction.expected_error), [(n, "f8") for n in columns])
                for name, values in columns.items():
                    table[name] = values
                np.save(handle, table)
            else:
                arrays = dict(columns)
                if prediction.pdf is not None:
                    arrays["pdf"] = prediction.pdf
                    arrays["bin_edges"] = prediction.bins.edges
                np.savez(handle, **arrays)
    logger.info(
        f"wrote {args.output}: {len(prediction.expected_error)} queries, columns {list(columns)}"
    )
