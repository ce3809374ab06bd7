"""`ltau select`: pick the pool structures to label next by LTAU's predicted uncertainty."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ltau._io import atomic_path
from ltau.cli._common import output_file, read_structure_file
from ltau.cli._models import add_model_options, load_model
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)

RULE_HELP = (
    "expected_error: the largest expected force error of a structure's atoms (eV/Å); "
    "p_exceed: the largest P(error > atol) of its atoms; structure_ood: the estimator's "
    "structure-level OOD score (default: expected_error)"
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``select`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "select",
        help="pick the pool structures to label next (active learning)",
        description="Score every structure of a pool (anything ASE reads) with a model (any "
        "kind 'ltau run' takes) and its LTAU estimator, and write the N highest-scoring ones, "
        "best first, as extxyz with ltau_select_score, ltau_select_rank, ltau_select_rule and "
        "ltau_pool_index (the structure's position in the pool) in atoms.info. Label them, "
        "add them to the training set, retrain and select again.",
    )
    parser.add_argument("pool", type=Path, help="candidate structures (e.g. extxyz)")
    add_model_options(parser)
    parser.add_argument("--estimator", type=Path, required=True, help="estimator.h5")
    parser.add_argument("-n", type=int, required=True, help="number of structures to pick")
    parser.add_argument("-o", "--output", type=Path, required=True, help="picked.xyz (extxyz)")
    parser.add_argument(
        "--rule",
        default="expected_error",
        choices=("expected_error", "p_exceed", "structure_ood"),
        help=RULE_HELP,
    )
    parser.add_argument(
        "--atol",
        type=float,
        help="tolerance of p_exceed, eV/Å (default: the estimator's atol_eV_per_A)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Score the pool and write the picked structures."""
    try:
        import ase.io

        from ltau.atomistic.active_learning import select_structures
    except ImportError as exc:
        raise LTAUInputError(
            f"select needs ASE (the 'mace' extra: pip install 'ltau[mace]'): {exc}"
        ) from exc
    output_file(args.output)
    if args.n < 1:
        raise LTAUInputError(f"-n must be a positive integer; got {args.n}")
    pool = read_structure_file(args.pool)
    if args.n > len(pool):
        raise LTAUInputError(f"cannot pick {args.n} structures from a pool of {len(pool)}")
    estimator = LTAUEstimator.load(args.estimator)
    forcefield = load_model(args)
    selection = select_structures(
        estimator, forcefield, pool, args.n, rule=args.rule, atol=args.atol, progress=True
    )
    picked = []
    for rank, (position, score) in enumerate(zip(selection.indices, selection.scores, strict=True)):
        atoms = pool[int(position)].copy()
        atoms.info.update(
            ltau_select_score=float(score),
            ltau_select_rank=rank,
            ltau_select_rule=selection.rule,
            ltau_pool_index=int(position),
        )
        if selection.atol is not None:
            atoms.info["ltau_select_atol"] = selection.atol
        picked.append(atoms)
    with atomic_path(args.output) as temporary:
        ase.io.write(temporary, picked, format="extxyz")
    logger.info(
        f"wrote {args.output}: {len(picked)} of {len(pool)} structures by {selection.rule} "
        f"(pool positions {', '.join(str(int(i)) for i in selection.indices[:10])}"
        f"{', ...' if len(picked) > 10 else ''})"
    )
