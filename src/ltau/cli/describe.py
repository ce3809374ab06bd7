"""`ltau describe`: describe an ltau file (estimator, distributions or error log) as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ltau._io import file_format
from ltau.distributions import ErrorDistributions, load_distributions
from ltau.estimator import LTAUEstimator
from ltau.sharded_log import ShardedErrorLog, open_error_log


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``describe`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "describe",
        help="describe an ltau file (estimator, distributions or error log)",
        description=(
            "Print what an ltau file holds, as JSON, after checking all of it: its seal, every "
            "digest (of an estimator's separate index file too) and, for an error log, every "
            "epoch row. A damaged file is an error."
        ),
    )
    parser.add_argument("file", type=Path)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Write a JSON summary of ``args.file`` to standard output; raise LTAUFileError if any
    part of it is damaged (the epochs of a log are counted only once each is verified)."""
    kind = file_format(args.file)
    summary: dict[str, object] = {"file": str(args.file), "format": kind}
    if kind == "ltau-estimator":
        estimator = LTAUEstimator.load(args.file, full_check=True)
        index_file = estimator.index_file_
        summary |= {
            "settings": estimator.get_params(),
            "index_params": estimator.index_.params,
            "index_file": None if index_file is None else str(index_file),
            "n_samples": estimator.distributions_.n_samples,
            "descriptor_dim": estimator.n_features_in_,
            "metadata": estimator.metadata_,
        }
        summary |= _describe_distributions(estimator.distributions_)
    elif kind == "ltau-distributions":
        summary |= _describe_distributions(load_distributions(args.file))
    else:
        with open_error_log(args.file) as log:
            # Each row is checked against its SHA-256 (and, sharded, for overlapping samples).
            verified = sum(1 for _ in log.epochs())
            summary |= {
                "n_samples": log.n_samples,
                "n_epochs": verified,
                "epochs_by_member": log.epochs_by_member,
                "error_dtype": log.dtype,
            }
            if isinstance(log, ShardedErrorLog):
                summary["world_size"] = log.world_size
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


def _describe_distributions(distributions: ErrorDistributions) -> dict[str, object]:
    expected = distributions.expected_error()
    return {
        "n_samples": distributions.n_samples,
        "counts_dtype": str(distributions.counts.dtype),
        "compressed": distributions.is_compressed,
        "bins": {
            "n_bins": distributions.bins.n_bins,
            "spacing": distributions.bins.spacing,
            "low": float(distributions.bins.edges[0]),
            "high": float(distributions.bins.edges[-1]),
        },
        "observations_per_sample": {
            "min": int(distributions.n_observations.min()),
            "max": int(distributions.n_observations.max()),
        },
        "clipped_observations": {"below": distributions.n_below, "above": distributions.n_above},
        "expected_error": {
            "min": float(expected.min()),
            "median": float(np.median(expected)),
            "max": float(expected.max()),
        },
    }
