"""The ``ltau`` command: build distributions, fit, predict, describe, and run the demo."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltau import __version__
from ltau._io import atomic_path, check_output_path, file_format
from ltau.distributions import Bins, load_distributions, save_distributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.recording import ErrorLog
from ltau.search import INDEX_DEFAULTS

DESCRIPTION = """\
LTAU: Loss Trajectory Analysis for Uncertainty.

Typical flow (errors recorded during training with ltau.ErrorRecorder):
  ltau distributions errors.h5 -o distributions.h5
  ltau fit --descriptors train_descriptors.npy --distributions distributions.h5 -o estimator.h5
  ltau predict estimator.h5 --descriptors query_descriptors.npy --atol 0.1 -o predictions.csv
  ltau describe estimator.h5
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 success, 2 bad input or file)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (LTAUInputError, LTAUFileError) as exc:
        print(f"ltau {args.command}: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltau", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ltau {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "distributions",
        help="build per-sample error distributions from a recorded error log",
        description="Histogram every sample's recorded error trajectory (streaming over epochs).",
    )
    build.add_argument("log", type=Path, help="error log written by ltau.ErrorRecorder (HDF5)")
    build.add_argument("-o", "--output", type=Path, required=True, help="distributions file (.h5)")
    build.add_argument("--bins", type=int, default=100, help="number of bins (default 100)")
    build.add_argument("--spacing", choices=("log", "linear"), default="log", help="bin spacing")
    build.add_argument(
        "--range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="bin range in error units (default: the observed range; outliers are clipped)",
    )
    build.add_argument(
        "--members", type=int, nargs="+", help="pool only these models (default: all in the log)"
    )
    build.set_defaults(handler=_run_distributions)

    fit = commands.add_parser(
        "fit",
        help="fit an estimator from training descriptors and distributions",
        description="Index training descriptors (row i <-> sample i) and save the estimator.",
    )
    fit.add_argument("--descriptors", type=Path, required=True, help="(n_samples, dim) .npy")
    fit.add_argument("--distributions", type=Path, required=True, help="distributions file")
    fit.add_argument("-o", "--output", type=Path, required=True, help="estimator file (.h5)")
    fit.add_argument("-k", "--neighbors", type=int, default=10, help="neighbours per query (10)")
    fit.add_argument("--weights", choices=("uniform", "distance"), default="uniform")
    fit.add_argument("--index", choices=sorted(INDEX_DEFAULTS), default="exact")
    fit.add_argument(
        "--index-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="index parameter, repeatable; hnsw: M, ef_construction, ef_search; "
        "ivfpq: nlist, m, nbits, nprobe",
    )
    fit.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fact to store with the estimator, repeatable (e.g. unit=eV/A)",
    )
    fit.set_defaults(handler=_run_fit)

    predict = commands.add_parser(
        "predict",
        help="predict error statistics for query descriptors",
        description="Write one row per query: expected error, OOD score (mean Euclidean "
        "distance to the k neighbours), and the requested exceedance probabilities, quantiles "
        "and interval. .csv and .npy (structured array) hold the columns; .npz also the PDF.",
    )
    predict.add_argument("estimator", type=Path, help="estimator file written by 'ltau fit'")
    predict.add_argument("--descriptors", type=Path, required=True, help="(n_queries, dim) .npy")
    predict.add_argument("-o", "--output", type=Path, required=True, help=".csv, .npy or .npz")
    predict.add_argument("--atol", type=float, nargs="+", help="tolerances for P(error > atol)")
    predict.add_argument("--quantiles", type=float, nargs="+", help="quantile levels in [0, 1]")
    predict.add_argument("--confidence", type=float, help="central interval level, e.g. 0.9")
    predict.add_argument("--pdf", action="store_true", help="also write the PDF (.npz only)")
    predict.set_defaults(handler=_run_predict)

    describe = commands.add_parser(
        "describe",
        help="describe an ltau file (estimator, distributions or error log)",
        description="Print what an ltau file holds, as JSON.",
    )
    describe.add_argument("file", type=Path)
    describe.set_defaults(handler=_run_describe)

    demo = commands.add_parser(
        "demo",
        help="run LTAU end to end on a built-in regression task and write a report",
        description="Train a small neural network on a regression dataset shipped with "
        "scikit-learn while recording per-sample errors, fit LTAU on its latent space, and "
        "evaluate it on an in-domain test set and on a held-out shifted region. Writes "
        "report.html, metrics.json, figures, the error log and the estimator.",
    )
    demo.add_argument("--dataset", choices=("friedman", "diabetes"), default="friedman")
    demo.add_argument("--output-dir", type=Path, default=Path("ltau-demo"))
    demo.add_argument("--epochs", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_distributions(args: argparse.Namespace) -> None:
    check_output_path(args.output)
    bins = Bins.from_range(*args.range, args.bins, args.spacing) if args.range else None
    with ErrorLog(args.log) as log:
        distributions = log.distributions(
            bins, n_bins=args.bins, spacing=args.spacing, members=args.members, progress=True
        )
    save_distributions(distributions, args.output)
    print(
        f"wrote {args.output}: {distributions.n_samples} samples, {distributions.bins.n_bins} "
        f"{distributions.bins.spacing} bins [{distributions.bins.edges[0]:.4g}, "
        f"{distributions.bins.edges[-1]:.4g}], {distributions.n_below + distributions.n_above} "
        "observations clipped into the end bins"
    )


def _run_fit(args: argparse.Namespace) -> None:
    check_output_path(args.output)
    descriptors = load_npy(args.descriptors)
    distributions = load_distributions(args.distributions)
    estimator = LTAUEstimator(
        args.neighbors,
        weights=args.weights,
        index=args.index,
        index_params={k: _int_value(k, v) for k, v in _pairs(args.index_param).items()},
    )
    estimator.fit(descriptors, distributions)
    estimator.save(args.output, metadata=_pairs(args.metadata))
    print(f"wrote {args.output}: {estimator!r} on {descriptors.shape[0]} samples")


def _run_predict(args: argparse.Namespace) -> None:
    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".npy", ".npz"):
        raise LTAUInputError(f"output must end in .csv, .npy or .npz; got {args.output.name!r}")
    if args.pdf and suffix != ".npz":
        raise LTAUInputError("--pdf needs an .npz output")
    check_output_path(args.output)
    estimator = LTAUEstimator.load(args.estimator)
    prediction = estimator.predict(
        load_npy(args.descriptors),
        atol=args.atol,
        quantiles=args.quantiles,
        confidence=args.confidence,
        return_pdf=args.pdf,
        progress=True,
    )
    columns = prediction.columns()
    with atomic_path(args.output) as temporary:
        if suffix == ".csv":
            with open(temporary, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows(
                    zip(*(values.tolist() for values in columns.values()), strict=True)
                )
        elif suffix == ".npy":
            table = np.empty(len(prediction.expected_error), [(n, "f8") for n in columns])
            for name, values in columns.items():
                table[name] = values
            with open(temporary, "wb") as handle:
                np.save(handle, table)
        else:
            arrays = dict(columns)
            if prediction.pdf is not None:
                arrays["pdf"] = prediction.pdf
                arrays["bin_edges"] = estimator.bins.edges
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays)
    print(f"wrote {args.output}: {len(prediction.expected_error)} queries, columns {list(columns)}")


def _run_describe(args: argparse.Namespace) -> None:
    kind = file_format(args.file)
    summary: dict[str, object] = {"file": str(args.file), "format": kind}
    if kind == "ltau-estimator":
        estimator = LTAUEstimator.load(args.file)
        summary |= {
            "settings": estimator.get_params(),
            "index_params": estimator.index_.params,
            "n_samples": estimator.distributions_.n_samples,
            "descriptor_dim": estimator.n_features_in_,
            "metadata": estimator.metadata_,
        }
        summary |= _describe_distributions(estimator.distributions_)
    elif kind == "ltau-distributions":
        summary |= _describe_distributions(load_distributions(args.file))
    else:
        with ErrorLog(args.file) as log:
            members, counts = np.unique(log.members, return_counts=True)
            summary |= {
                "n_samples": log.n_samples,
                "n_epochs": log.n_epochs,
                "epochs_by_member": {int(m): int(c) for m, c in zip(members, counts, strict=True)},
            }
    print(json.dumps(summary, indent=2))


def _describe_distributions(distributions) -> dict[str, object]:
    expected = distributions.expected_error()
    return {
        "n_samples": distributions.n_samples,
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


def _run_demo(args: argparse.Namespace) -> None:
    try:
        from ltau.demos.tabular import run_tabular_demo
    except ImportError as exc:
        raise LTAUInputError(
            f"the demo needs the 'demo' extra (pip install 'ltau[demo]'): {exc}"
        ) from exc
    run_tabular_demo(args.output_dir, dataset=args.dataset, epochs=args.epochs, seed=args.seed)


def load_npy(path: Path) -> np.ndarray:
    """Load a numeric .npy array without pickle, with errors that name the file."""
    if not path.exists():
        raise LTAUFileError(f"{path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise LTAUFileError(f"{path} is not a readable .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise LTAUFileError(f"{path} does not hold a numeric array")
    return array


def _pairs(items: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name:
            raise LTAUInputError(f"expected NAME=VALUE; got {item!r}")
        pairs[name] = value
    return pairs


def _int_value(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise LTAUInputError(f"index parameter {name} must be an integer; got {value!r}") from exc


if __name__ == "__main__":
    sys.exit(main())
