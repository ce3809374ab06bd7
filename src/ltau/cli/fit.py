"""`ltau fit`: fit an estimator from training descriptors and distributions."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau.cli._common import int_value, output_file, pairs, read_descriptors
from ltau.distributions import load_distributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError
from ltau.search import AUTO_EXACT_LIMIT, INDEX_DEFAULTS

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``fit`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "fit",
        help="fit an estimator from training descriptors and distributions",
        description="Index training descriptors (row i <-> sample i) and save the estimator.",
    )
    parser.add_argument(
        "--descriptors",
        type=Path,
        required=True,
        help="(n_samples, dim) .npy, or the .npz of 'ltau descriptors' (the estimator then "
        "records its model's fingerprint, which 'ltau predict' and 'ltau relax' check)",
    )
    parser.add_argument("--distributions", type=Path, required=True, help="distributions file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="estimator file (.h5)")
    parser.add_argument("-k", "--neighbors", type=int, default=10, help="neighbours per query (10)")
    parser.add_argument("--weights", choices=("uniform", "distance"), default="uniform")
    parser.add_argument(
        "--distance-scale",
        choices=("absolute", "local"),
        default="absolute",
        help="'local': distances relative to the training set's local spacing",
    )
    parser.add_argument(
        "--index",
        choices=["auto", *sorted(INDEX_DEFAULTS)],
        default="auto",
        help=f"neighbour search; 'auto' (default): exact up to {AUTO_EXACT_LIMIT} training "
        "samples, hnsw above",
    )
    parser.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="index parameter, repeatable; hnsw: M, ef_construction, ef_search; "
        "ivfpq and opq: nlist, m, nbits, nprobe; ivfsq: nlist, nprobe",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="store the distributions as uint8 counts (ErrorDistributions.compressed(), "
        "half the memory; see docs/scale.md)",
    )
    parser.add_argument(
        "--index-file",
        choices=("auto", "yes", "no"),
        default="auto",
        help="keep the index in its own file OUTPUT.faiss beside the estimator, memory-mapped "
        "at load ('auto': from 1e6 samples)",
    )
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fact to store with the estimator, repeatable (e.g. unit=eV/A)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Fit and save the estimator."""
    output_file(args.output)
    descriptors, model = read_descriptors(args.descriptors)
    metadata = pairs(args.metadata)
    if model is not None:
        if metadata.setdefault("model_sha256", model) != model:
            raise LTAUInputError(
                f"--metadata model_sha256 disagrees with the model {args.descriptors} records"
            )
    distributions = load_distributions(args.distributions)
    if args.compress:
        distributions = distributions.compressed()
    estimator = LTAUEstimator(
        args.neighbors,
        weights=args.weights,
        distance_scale=args.distance_scale,
        index=args.index,
        index_params={k: int_value(k, v) for k, v in pairs(args.index_param).items()},
    )
    estimator.fit(descriptors, distributions)
    index_file = {"auto": None, "yes": True, "no": False}[args.index_file]
    estimator.save(args.output, metadata=metadata, index_file=index_file)
    logger.info(f"wrote {args.output}: {estimator!r} on {descriptors.shape[0]} samples")
