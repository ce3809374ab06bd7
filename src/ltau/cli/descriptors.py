"""`ltau descriptors`: a model's per-atom invariant descriptors of structures, for the
lower-level `fit` and `predict`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ltau._io import atomic_path
from ltau.cli._common import output_file
from ltau.cli._models import add_model_options, load_model
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``descriptors`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "descriptors",
        help="write a model's per-atom descriptors of structures (.npy or .npz)",
        description="Run MODEL on every structure of STRUCTURES and write the per-atom "
        "invariant descriptors, atoms in file order: .npy (float32, (n_atoms, d)) or .npz "
        "(descriptors, the structure of each atom, the model's fingerprint; 'ltau predict' "
        "then checks the fingerprint against the estimator's).",
    )
    parser.add_argument("structures", type=Path, help="structures (anything ASE reads)")
    add_model_options(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, help=".npy or .npz")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Write the descriptors."""
    from ltau.atomistic.structures import read_structures

    suffix = args.output.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise LTAUInputError(f"output must end in .npy or .npz; got {args.output.name!r}")
    output_file(args.output)
    structures = read_structures(
        args.structures, energy_key=None, forces_key=None, require_forces=False
    )
    forcefield = load_model(args)
    descriptors = forcefield.evaluate(structures, True).descriptors
    with atomic_path(args.output) as temporary, open(temporary, "wb") as handle:
        if suffix == ".npy":
            np.save(handle, descriptors)
        else:
            np.savez(
                handle,
                descriptors=descriptors,
                structure=structures.index.configuration_of_atoms,
                model_sha256=np.array(forcefield.fingerprint),
            )
    logger.info(
        "wrote %s: %d atoms x %d descriptors (%s model)",
        args.output,
        descriptors.shape[0],
        descriptors.shape[1],
        forcefield.kind,
    )
