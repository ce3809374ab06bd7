"""The ``ltau`` command: build distributions, fit, predict, describe, and run the demo."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ltau import __version__
from ltau._io import atomic_path, check_output_path, file_format
from ltau.distributions import Bins, load_distributions, save_distributions
from ltau.dynamics import DynamicsTable, groups_from_sizes, training_dynamics
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
  ltau dynamics errors.h5 -o map.csv --atol 0.1 --groups sizes.npy --figure map.png
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
    build.add_argument(
        "--skip-epochs",
        type=int,
        default=0,
        help="leave out each model's first N epochs, a burn-in (default 0)",
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
    fit.add_argument(
        "--distance-scale",
        choices=("absolute", "local"),
        default="absolute",
        help="'local': distances relative to the training set's local spacing",
    )
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

    calibrate = commands.add_parser(
        "calibrate",
        help="fit the distance widening and calibration map on validation data",
        description="Fit, on a validation split (never a test set), how errors grow with the "
        "distance to the training set (atom and, with --groups, structure OOD scores) and a "
        "recalibration map; write the calibrated estimator.",
    )
    calibrate.add_argument("estimator", type=Path, help="estimator file written by 'ltau fit'")
    calibrate.add_argument("--descriptors", type=Path, required=True, help="(n, dim) .npy")
    calibrate.add_argument("--errors", type=Path, required=True, help="(n,) observed errors .npy")
    calibrate.add_argument("--groups", type=Path, help="(n,) integer group labels .npy")
    calibrate.add_argument("--method", choices=("isotonic", "scale"), default="isotonic")
    calibrate.add_argument(
        "--no-widening", action="store_true", help="calibrate without the distance widening"
    )
    calibrate.add_argument("-o", "--output", type=Path, required=True, help="estimator (.h5)")
    calibrate.set_defaults(handler=_run_calibrate)

    predict = commands.add_parser(
        "predict",
        help="predict error statistics for query descriptors",
        description="Write one row per query: expected error, OOD score (mean Euclidean "
        "distance to the k neighbours), and the requested exceedance probabilities, quantiles "
        "and interval. .csv and .npy (structured array) hold the columns; .npz also the PDF.",
    )
    predict.add_argument("estimator", type=Path, help="estimator file written by 'ltau fit'")
    predict.add_argument("--descriptors", type=Path, required=True, help="(n_queries, dim) .npy")
    predict.add_argument(
        "--groups", type=Path, help="(n_queries,) integer group labels .npy (e.g. structures)"
    )
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

    dynamics = commands.add_parser(
        "dynamics",
        help="map every sample's training dynamics from a recorded error log",
        description="Per sample, over the kept epochs: mean error, its std over epochs "
        "(variability), fraction of epochs above atol, forgetting events (an epoch at or "
        "below atol followed by one above), last-epoch error, recorded epochs. With --groups, "
        "the same per group, from each group's RMS error per epoch (for per-atom force "
        "errors: each configuration's force RMSE).",
    )
    dynamics.add_argument("log", type=Path, help="error log written by ltau.ErrorRecorder (HDF5)")
    dynamics.add_argument("-o", "--output", type=Path, required=True, help="per-sample map (.csv)")
    dynamics.add_argument(
        "--atol", type=float, required=True, help="tolerance in error units (e.g. eV/Å)"
    )
    dynamics.add_argument(
        "--skip-epochs", type=int, default=0, help="leave out each model's first N epochs"
    )
    dynamics.add_argument("--members", type=int, nargs="+", help="models to use (default: all)")
    dynamics.add_argument(
        "--groups",
        type=Path,
        help="group sizes, .npy of positive integers summing to the number of samples "
        "(e.g. atoms per configuration, in order)",
    )
    dynamics.add_argument(
        "--group-output",
        type=Path,
        help="per-group map (.csv; default: OUTPUT with suffix .groups.csv)",
    )
    dynamics.add_argument(
        "--figure", type=Path, help="PNG: mean error vs variability (groups if given)"
    )
    dynamics.add_argument(
        "--color-by",
        choices=("forgetting_events", "exceed_fraction"),
        default="forgetting_events",
        help="colour of the figure's points",
    )
    dynamics.add_argument("--unit", default="eV/Å", help="error unit for the figure's axes")
    dynamics.set_defaults(handler=_run_dynamics)

    demo = commands.add_parser(
        "demo",
        help="run LTAU end to end (MACE on a built-in EMT dataset, or your files) and report",
        description="Force-field task (default): generate a dataset with ASE's EMT calculator "
        "(metal slabs with adsorbates; 300 K MD for training, 900 K MD and unseen "
        "metal/adsorbate pairs as the shifted test), or read --train/--test extxyz files; "
        "train a small MACE model while recording every atom's force error, fit LTAU on its "
        "descriptors, choose k and calibrate on a validation split of the training data, and "
        "evaluate. Writes report.html with figures, metrics.json, the model, the estimator "
        "and the error log. Tabular task: a PyTorch MLP on a scikit-learn dataset.",
    )
    demo.add_argument("--task", choices=("forcefield", "tabular"), default="forcefield")
    demo.add_argument("--output-dir", type=Path, default=Path("ltau-demo"))
    demo.add_argument("--epochs", type=int, help="training epochs (forcefield 40, tabular 300)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--train", type=Path, help="training extxyz (default: built-in EMT data)")
    demo.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="test extxyz, repeatable; sets without forces get OOD scores only",
    )
    demo.add_argument("--in-domain", help="name of the in-domain test set (default: the first)")
    demo.add_argument("--energy-key", default="REF_energy", help="info key of energies")
    demo.add_argument("--forces-key", default="REF_forces", help="arrays key of forces")
    demo.add_argument("--isolated-atoms", type=Path, help="extxyz of isolated atoms (E0s)")
    demo.add_argument("--calibration", choices=("isotonic", "scale"), default="isotonic")
    demo.add_argument(
        "--group-key",
        action="append",
        metavar="KEY",
        help="info key naming the MD run or relaxation of a training frame; validation holds "
        "out whole runs (repeatable; default: trajectory, relaxation)",
    )
    demo.add_argument(
        "--models", type=int, default=1, help="train M models (seeds) and pool their errors"
    )
    demo.add_argument(
        "--dataset", choices=("friedman", "diabetes"), default="friedman", help="tabular task only"
    )
    demo.set_defaults(handler=_run_demo)

    relax = commands.add_parser(
        "relax",
        help="relax structures with a trained model, recording per-atom uncertainty per step",
        description="Relax every structure of a file (anything ASE reads; FixAtoms constraints "
        "are kept) with a MACE model and its LTAU estimator. Writes one extxyz trajectory per "
        "structure (relax_0000.xyz, ...; every step with the model's energy and forces and "
        "per-atom ltau_expected_force_error, ltau_p_exceed, ltau_ood_score) and summary.csv. "
        "A --stop-* rule ends a relaxation when the largest value over the moving atoms "
        "exceeds its threshold.",
    )
    relax.add_argument("structures", type=Path, help="initial structures (e.g. extxyz)")
    relax.add_argument("--model", type=Path, required=True, help="model.pt (e.g. of ltau demo)")
    relax.add_argument("--estimator", type=Path, required=True, help="estimator.h5")
    relax.add_argument("-o", "--output-dir", type=Path, required=True)
    relax.add_argument("--optimizer", default="FIRE", help="ASE optimizer name (FIRE)")
    relax.add_argument("--fmax", type=float, default=0.05, help="force criterion, eV/Å (0.05)")
    relax.add_argument("--steps", type=int, default=200, help="maximum steps (200)")
    relax.add_argument(
        "--atol",
        type=float,
        help="tolerance of ltau_p_exceed, eV/Å (default: the estimator's atol_eV_per_A)",
    )
    for name, unit in (("expected-error", "eV/Å"), ("p-exceed", "in [0, 1]"), ("ood-score", "")):
        relax.add_argument(
            f"--stop-{name}",
            type=float,
            metavar="X",
            help=f"stop when a moving atom's {name.replace('-', ' ')} exceeds X {unit}".rstrip(),
        )
    relax.set_defaults(handler=_run_relax)
    return parser


def _run_distributions(args: argparse.Namespace) -> None:
    check_output_path(args.output)
    bins = Bins.from_range(*args.range, args.bins, args.spacing) if args.range else None
    with ErrorLog(args.log) as log:
        distributions = log.distributions(
            bins,
            n_bins=args.bins,
            spacing=args.spacing,
            members=args.members,
            skip_epochs=args.skip_epochs,
            progress=True,
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
        distance_scale=args.distance_scale,
        index=args.index,
        index_params={k: _int_value(k, v) for k, v in _pairs(args.index_param).items()},
    )
    estimator.fit(descriptors, distributions)
    estimator.save(args.output, metadata=_pairs(args.metadata))
    print(f"wrote {args.output}: {estimator!r} on {descriptors.shape[0]} samples")


def _run_calibrate(args: argparse.Namespace) -> None:
    check_output_path(args.output)
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
    print(
        f"wrote {args.output}: {args.method} calibration"
        + (
            f", distance widening exponents {widening.exponent:.3g} (atom) and "
            f"{widening.group_exponent:.3g} (group)"
            if widening is not None
            else ", no distance widening"
        )
    )


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
                    arrays["bin_edges"] = estimator.bins.edges
                np.savez(handle, **arrays)
    print(f"wrote {args.output}: {len(prediction.expected_error)} queries, columns {list(columns)}")


def _run_dynamics(args: argparse.Namespace) -> None:
    outputs = [args.output]
    if args.output.suffix.lower() != ".csv":
        raise LTAUInputError(f"output must end in .csv; got {args.output.name!r}")
    groups = None
    if args.groups is not None:
        groups = groups_from_sizes(load_npy(args.groups))
        args.group_output = args.group_output or args.output.with_suffix(".groups.csv")
        outputs.append(args.group_output)
    elif args.group_output is not None:
        raise LTAUInputError("--group-output needs --groups")
    if args.figure is not None:
        if args.figure.suffix.lower() != ".png":
            raise LTAUInputError(f"the figure must be a .png; got {args.figure.name!r}")
        outputs.append(args.figure)
    for path in outputs:
        check_output_path(path)
    with ErrorLog(args.log) as log:
        if groups is not None and groups.size != log.n_samples:
            raise LTAUInputError(
                f"the group sizes in {args.groups} sum to {groups.size} but {args.log} has "
                f"{log.n_samples} samples"
            )
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
    print(f"wrote {args.output}: {len(result.samples)} samples, columns {list(sample_columns)}")
    if result.groups is not None:
        write_csv(args.group_output, result.groups.columns())
        print(f"wrote {args.group_output}: {len(result.groups)} groups")
    if args.figure is not None:
        try:
            from ltau.report import plot_training_dynamics
        except ImportError as exc:
            raise LTAUInputError(f"--figure needs matplotlib (the 'demo' extra): {exc}") from exc
        table: DynamicsTable = result.groups if result.groups is not None else result.samples
        plot_training_dynamics(
            table,
            args.figure,
            atol=result.atol,
            color_by=args.color_by,
            unit=args.unit,
            title=f"training dynamics per {'group' if result.groups is not None else 'sample'}",
        )
        print(f"wrote {args.figure}")


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write named columns of equal length as a CSV file with a header row, atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*(values.tolist() for values in columns.values()), strict=True))


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
            summary |= {
                "n_samples": log.n_samples,
                "n_epochs": log.n_epochs,
                "epochs_by_member": log.epochs_by_member,
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
    if args.epochs is not None and args.epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {args.epochs}")
    try:
        if args.task == "tabular":
            from ltau.demos.tabular import run_tabular_demo

            run_tabular_demo(
                args.output_dir, dataset=args.dataset, epochs=args.epochs or 300, seed=args.seed
            )
            return
        from ltau.applications.forcefield import PipelineConfig
        from ltau.applications.uq_evaluation import VALIDATION_GROUP_KEYS
        from ltau.demos.forcefield import run_emt_demo, run_files
        from ltau.integrations.mace import MACESettings
    except ImportError as exc:
        raise LTAUInputError(
            f"the demo needs the 'demo' and 'mace' extras (pip install 'ltau[demo,mace]'): {exc}"
        ) from exc
    tests = {name: Path(path) for name, path in _pairs(args.test).items()}
    if tests and args.train is None:
        raise LTAUInputError("--test needs --train")
    config = PipelineConfig(
        epochs=args.epochs or 40,
        settings=MACESettings(seed=args.seed),
        calibration=args.calibration,
        seed=args.seed,
        n_models=args.models,
        validation_group_keys=tuple(args.group_key or VALIDATION_GROUP_KEYS),
        in_domain=args.in_domain or (next(iter(tests)) if tests else "test_in_domain"),
    )
    if args.train is None:
        run_emt_demo(args.output_dir, config)
        return
    if not tests:
        raise LTAUInputError("--train needs at least one --test NAME=PATH")
    run_files(
        args.output_dir,
        config,
        args.train,
        tests,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        isolated_atoms=args.isolated_atoms,
    )


def _run_relax(args: argparse.Namespace) -> None:
    try:
        import ase.io
        from ase.data import chemical_symbols

        from ltau.applications.relaxation import (
            QUANTITIES,
            check_settings,
            check_stop_thresholds,
            relax,
        )
        from ltau.integrations.mace import LTAUCalculator, TrainedMACE
    except ImportError as exc:
        raise LTAUInputError(
            f"relax needs the 'mace' extra (pip install 'ltau[mace]'): {exc}"
        ) from exc
    check_settings(args.optimizer, args.fmax, args.steps)
    stop = check_stop_thresholds(
        {
            name: getattr(args, f"stop_{name}")
            for name in QUANTITIES
            if getattr(args, f"stop_{name}") is not None
        }
    )
    trained = TrainedMACE.load(args.model)
    estimator = LTAUEstimator.load(args.estimator)
    atol = args.atol if args.atol is not None else estimator.metadata_.get("atol_eV_per_A")
    if atol is None:
        raise LTAUInputError(f"{args.estimator} stores no atol_eV_per_A: give --atol")
    if not args.structures.exists():
        raise LTAUFileError(f"{args.structures} does not exist")
    try:
        initial = ase.io.read(args.structures, index=":")
    except Exception as exc:
        raise LTAUFileError(f"{args.structures} could not be read as structures: {exc}") from exc
    if not initial:
        raise LTAUInputError(f"{args.structures} holds no structures")
    known = {chemical_symbols[z] for z in trained.atomic_numbers}
    for position, atoms in enumerate(initial):
        unknown = sorted(set(atoms.get_chemical_symbols()) - known)
        if unknown:
            raise LTAUInputError(
                f"structure {position} has element(s) {', '.join(unknown)} that the model was "
                "not trained on"
            )
    calculator = LTAUCalculator(trained, estimator, atol=float(atol))
    if args.output_dir.is_file():
        raise LTAUFileError(f"{args.output_dir} is a file, not a directory")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for position, atoms in enumerate(tqdm(initial, desc="relaxing", unit="structure")):
        name = f"relax_{position:04d}.xyz"
        result = relax(
            atoms,
            calculator,
            optimizer=args.optimizer,
            fmax=args.fmax,
            steps=args.steps,
            trajectory=args.output_dir / name,
            stop=stop,
        )
        rows.append(
            {
                "structure": position,
                "formula": atoms.get_chemical_formula(),
                "trajectory": name,
                "steps": result.n_steps,
                "converged": result.converged,
                "stopped_by": ",".join(result.stopped_by),
                "stop_step": "" if result.stop_step is None else result.stop_step,
                "final_energy_eV": result.energies[-1],
                "final_fmax_eV_per_A": result.fmax[-1],
                **{f"final_max_{q}": result.maximum[q][-1] for q in QUANTITIES},
                **{f"peak_max_{q}": result.maximum[q].max() for q in QUANTITIES},
            }
        )
    summary = args.output_dir / "summary.csv"
    with atomic_path(summary) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    n_converged = sum(row["converged"] for row in rows)
    n_stopped = sum(bool(row["stopped_by"]) for row in rows)
    print(
        f"wrote {len(rows)} trajectories and {summary}: {n_converged} converged, "
        f"{n_stopped} stopped by an uncertainty rule (atol = {float(atol):.4g} eV/Å)"
    )


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
