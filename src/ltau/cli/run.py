"""`ltau run`: LTAU for a model trained elsewhere, from its trainer's error log."""

from __future__ import annotations

import argparse
from pathlib import Path

from ltau.cli._common import add_test_set_options, pairs, writable_directory
from ltau.cli._models import add_model_options, load_model
from ltau.exceptions import LTAUInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "run",
        help="fit, calibrate and evaluate LTAU for a trained model from its trainer's log",
        description="Build the distributions from LOG (written by 'ltau mace-train' or ltau's "
        "trainer callbacks), the descriptors of the trained-on atoms with MODEL, choose k, the "
        "burn-in and the distance scale and calibrate on the trainer's own validation set, "
        "evaluate the test sets and write what 'ltau demo' writes: report.html, metrics.json "
        "and estimator.h5 (which records the model's fingerprint). A log recorded from "
        "another training file is refused.",
    )
    add_model_options(parser)
    parser.add_argument("--log", type=Path, required=True, help="the trainer's error log (.h5)")
    parser.add_argument("--train", type=Path, required=True, help="the training extxyz file")
    add_test_set_options(parser)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--calibration", choices=("isotonic", "scale"), default="isotonic")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Run LTAU on the trained model and write the report."""
    from ltau.atomistic.structures import read_structures
    from ltau.atomistic.training_log import evaluate_logged_training

    tests = {name: Path(path) for name, path in pairs(args.test).items()}
    if not tests:
        raise LTAUInputError("give at least one --test NAME=PATH")
    writable_directory(args.output_dir)
    forcefield = load_model(args)
    test_sets = {
        name: read_structures(
            path, energy_key=None, forces_key=args.forces_key, require_forces=False
        )
        for name, path in tests.items()
    }
    known = set(forcefield.elements)
    for name, structures in test_sets.items():
        unknown = sorted({s for a in structures.atoms for s in a.get_chemical_symbols()} - known)
        if unknown:
            raise LTAUInputError(
                f"test set {name!r} has element(s) {', '.join(unknown)}; the model does not "
                f"know element(s) outside {', '.join(sorted(known))}"
            )
    evaluate_logged_training(
        forcefield.evaluate,
        args.log,
        args.train,
        test_sets,
        args.output_dir,
        energy_key=args.energy_key,
        forces_key=args.forces_key,
        in_domain=args.in_domain or next(iter(tests)),
        calibration=args.calibration,
        model_facts={
            "model_sha256": forcefield.fingerprint,
            "model_kind": forcefield.kind,
            "model_file": str(args.model.resolve()),
        },
        title=f"LTAU-FF for {args.model.name}",
    )
