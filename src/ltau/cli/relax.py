"""`ltau relax`: relax structures with a trained model, recording per-atom uncertainty per step."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from tqdm.auto import tqdm

from ltau._io import atomic_path
from ltau.cli._common import read_structure_file, writable_directory
from ltau.cli._models import add_model_options, load_model
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``relax`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "relax",
        help="relax structures with a trained model, recording per-atom uncertainty per step",
        description="Relax every structure of a file (anything ASE reads; FixAtoms constraints "
        "are kept) with a model (any kind 'ltau run' takes) and its LTAU estimator. Writes one extxyz trajectory per "
        "structure (relax_0000.xyz, ...; every step with the model's energy and forces and "
        "per-atom ltau_expected_force_error, ltau_p_exceed, ltau_ood_score) and summary.csv. "
        "A --stop-* rule ends a relaxation when the largest value over the moving atoms "
        "exceeds its threshold.",
    )
    parser.add_argument("structures", type=Path, help="initial structures (e.g. extxyz)")
    add_model_options(parser)
    parser.add_argument("--estimator", type=Path, required=True, help="estimator.h5")
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    parser.add_argument("--optimizer", default="FIRE", help="ASE optimizer name (FIRE)")
    parser.add_argument("--fmax", type=float, default=0.05, help="force criterion, eV/Å (0.05)")
    parser.add_argument("--steps", type=int, default=200, help="maximum steps (200)")
    parser.add_argument(
        "--atol",
        type=float,
        help="tolerance of ltau_p_exceed, eV/Å (default: the estimator's atol_eV_per_A)",
    )
    for name, unit in (("expected-error", "eV/Å"), ("p-exceed", "in [0, 1]"), ("ood-score", "")):
        parser.add_argument(
            f"--stop-{name}",
            type=float,
            metavar="X",
            help=f"stop when a moving atom's {name.replace('-', ' ')} exceeds X {unit}".rstrip(),
        )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Relax every structure and write trajectories and a summary."""
    try:
        from ltau.atomistic.relaxation import (
            QUANTITIES,
            check_settings,
            check_stop_thresholds,
            relax,
        )
        from ltau.atomistic.structures import check_elements
    except ImportError as exc:
        raise LTAUInputError(
            f"relax needs ASE (the 'mace' extra: pip install 'ltau[mace]'): {exc}"
        ) from exc
    check_settings(args.optimizer, args.fmax, args.steps)
    writable_directory(args.output_dir)
    stop = check_stop_thresholds(
        {
            name: getattr(args, f"stop_{name}")
            for name in QUANTITIES
            if getattr(args, f"stop_{name}") is not None
        }
    )
    forcefield = load_model(args)
    estimator = LTAUEstimator.load(args.estimator)
    atol = args.atol if args.atol is not None else estimator.metadata_.get("atol_eV_per_A")
    if atol is None:
        raise LTAUInputError(f"{args.estimator} stores no atol_eV_per_A: give --atol")
    initial = read_structure_file(args.structures)
    check_elements(initial, forcefield.elements)
    calculator = forcefield.calculator(estimator, atol=float(atol))
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
    logger.info(
        f"wrote {len(rows)} trajectories and {summary}: {n_converged} converged, "
        f"{n_stopped} stopped by an uncertainty rule (atol = {float(atol):.4g} eV/Å)"
    )
