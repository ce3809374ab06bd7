"""Helpers shared by the benchmarks (not part of the library)."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np


def headline_metrics(
    report: dict, in_domain: str, shifted: str, ood_only: tuple[str, ...] = ()
) -> dict:
    """The flat summary a benchmark prints from the ``report`` of
    :func:`~ltau.atomistic.pipeline.run_pipeline`: per-atom metrics of the ``in_domain`` and
    ``shifted`` sets, OOD-score AUROCs (also of the unlabelled ``ood_only`` sets, keyed by their
    lower-cased names), choices and timings."""
    sets = report["sets"]
    summary = {}
    for metric in ("spearman", "miscalibration_area", "coverage90"):
        summary[f"{metric}_in_domain"] = sets[in_domain][metric]
        summary[f"{metric}_shifted"] = sets[shifted][metric]
    summary["auroc_ood_score_shifted"] = sets[shifted]["auroc_ood_score_vs_in_domain"]
    for name in ood_only:
        summary[f"auroc_ood_score_{name.lower()}"] = sets[name]["auroc_ood_score_vs_in_domain"]
    summary["auroc_error_flag_in_domain"] = sets[in_domain]["auroc_error_flag"]
    summary["auroc_error_flag_shifted"] = sets[shifted]["auroc_error_flag"]
    summary["logging_overhead"] = report["training"]["logging_overhead"]
    summary["force_rmse_in_domain"] = sets[in_domain]["force_rmse"]
    summary["force_rmse_shifted"] = sets[shifted]["force_rmse"]
    summary["k"] = report["chosen_on_validation"]["k"]
    summary["skip_epochs"] = report["chosen_on_validation"]["skip_epochs"]
    summary["distance_scale"] = report["chosen_on_validation"]["distance_scale"]
    summary["atol"] = report["chosen_on_validation"]["atol_eV_per_A"]
    summary["epochs"] = report["training"]["epochs"]
    summary["epoch_seconds_mean"] = report["training"]["epoch_seconds_mean"]
    summary["wall_seconds"] = report["wall_seconds"]
    return summary


def positions_only(atoms: ase.Atoms) -> ase.Atoms:
    """A copy of ``atoms`` with its positions, cell and info but no reference labels."""
    copy = ase.Atoms(atoms.get_chemical_symbols(), atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.info.update(atoms.info)
    return copy


def radicals(path: Path, seed: int) -> list[ase.Atoms]:
    """Every frame of ``path`` with one randomly chosen H atom removed (unlabelled)."""
    rng = np.random.default_rng(seed)
    frames = []
    for atoms in ase.io.read(path, ":"):
        hydrogens = [i for i, symbol in enumerate(atoms.get_chemical_symbols()) if symbol == "H"]
        radical = positions_only(atoms)
        del radical[int(rng.choice(hydrogens))]
        radical.info["config_type"] = "radical"
        frames.append(radical)
    return frames
