"""`ltau demo`: the main job: LTAU end to end on a built-in dataset (or the user's files), with a report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau._checks import positive_int
from ltau.calibration import CALIBRATION_METHODS
from ltau.cli._common import add_test_set_options, pairs, writable_directory
from ltau.cli._models import check_device
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand to ``commands``."""
    parser = commands.add_parser(
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
    parser.add_argument("--task", choices=("forcefield", "tabular"), default="forcefield")
    parser.add_argument("--output-dir", type=Path, default=Path("ltau-demo"))
    parser.add_argument("--epochs", type=int, help="training epochs (forcefield 40, tabular 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=Path, help="training extxyz (default: built-in EMT data)")
    add_test_set_options(parser)
    parser.add_argument("--isolated-atoms", type=Path, help="extxyz of isolated atoms (E0s)")
    parser.add_argument("--calibration", choices=tuple(CALIBRATION_METHODS), default="isotonic")
    parser.add_argument(
        "--group-key",
        action="append",
        metavar="KEY",
        help="info key naming the MD run or relaxation of a training frame; validation holds "
        "out whole runs (repeatable; default: trajectory, relaxation)",
    )
    parser.add_argument(
        "--models", type=int, default=1, help="train M models (seeds) and pool their errors"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (cpu)")
    parser.add_argument(
        "--dataset", choices=("friedman", "diabetes"), default="friedman", help="tabular task only"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Run the demo that ``args`` selects."""
    if args.epochs is not None and args.epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {args.epochs}")
    positive_int(args.models, "--models")
    writable_directory(args.output_dir)
    if args.task == "tabular":
        try:
            from ltau.demo.tabular import run_tabular_demo
        except ImportError as exc:
            raise LTAUInputError(
                f"the tabular demo needs the 'lightning' extra (pip install 'ltau[lightning]'): "
                f"{exc}"
            ) from exc
        run_tabular_demo(
            args.output_dir, dataset=args.dataset, epochs=args.epochs or 300, seed=args.seed
        )
        return
    try:
        from ltau.atomistic.pipeline import VALIDATION_GROUP_KEYS, check_in_domain
        from ltau.demo.forcefield import EMT_TEST_SETS, PipelineConfig, run_emt_demo, run_files
        from ltau.integrations.mace import MACESettings
    except ImportError as exc:
        raise LTAUInputError(
            f"the force-field demo needs the 'mace' extra (pip install 'ltau[mace]'): {exc}"
        ) from exc
    tests = {name: Path(path) for name, path in pairs(args.test).items()}
    if tests and args.train is None:
        raise LTAUInputError("--test needs --train")
    if args.train is not None and not tests:
        raise LTAUInputError("--train needs at least one --test NAME=PATH")
    if args.in_domain is not None:
        check_in_domain(tests or dict.fromkeys(EMT_TEST_SETS), args.in_domain)
    check_device(args.device)
    config = PipelineConfig(
        epochs=args.epochs or 40,
        settings=MACESettings(seed=args.seed),
        calibration=args.calibration,
        seed=args.seed,
        n_models=args.models,
        device=args.device,
        validation_group_keys=tuple(args.group_key or VALIDATION_GROUP_KEYS),
        in_domain=args.in_domain or (next(iter(tests)) if tests else "test_in_domain"),
    )
    if args.train is None:
        run_emt_demo(args.output_dir, config)
        return
    run_files(
        args.output_dir,
        config,
        args.train,
        tests,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        isolated_atoms=args.isolated_atoms,
    )
