"""The main job: LTAU-FF on a built-in EMT dataset, or on the user's own extxyz files."""

from __future__ import annotations

from pathlib import Path

from ase.data import atomic_numbers

from ltau.applications.forcefield import PipelineConfig, run_forcefield_pipeline
from ltau.atomistic.oracle import default_splits, isolated_atom_energies, write_extxyz
from ltau.atomistic.structures import (
    LabelledStructures,
    read_isolated_atom_energies,
    read_structures,
)


def run_emt_demo(output_dir: Path, config: PipelineConfig) -> dict:
    """Generate the EMT dataset (metal slabs with adsorbates; MD at 300 K for training and
    in-domain test, 900 K and unseen metal/adsorbate pairs for the shifted test), then run the
    pipeline. The generated data is written next to the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = default_splits(seed=config.seed)
    labelled = {}
    for name, atoms_list in splits.items():
        write_extxyz(atoms_list, output_dir / f"{name}.xyz")
        labelled[name] = read_structures(
            atoms_list, energy_key="REF_energy", forces_key="REF_forces"
        )
    elements = sorted({s for atoms in splits["train"] for s in atoms.get_chemical_symbols()})
    e0s = {atomic_numbers[e]: v for e, v in isolated_atom_energies(elements).items()}
    tests = {name: labelled[name] for name in ("test_in_domain", "test_shifted")}
    return run_forcefield_pipeline(
        labelled["train"],
        tests,
        output_dir,
        config,
        isolated_atom_energies=e0s,
        title="LTAU-FF demo: MACE on EMT metal slabs with adsorbates",
    )


def run_files(
    output_dir: Path,
    config: PipelineConfig,
    train_path: Path,
    test_paths: dict[str, Path],
    *,
    energy_key: str,
    forces_key: str,
    isolated_atoms: Path | None,
) -> dict:
    """The pipeline on the user's extxyz files. Test sets without forces get OOD scores only."""
    train = read_structures(train_path, energy_key=energy_key, forces_key=forces_key)
    tests: dict[str, LabelledStructures] = {}
    for name, path in test_paths.items():
        tests[name] = read_structures(
            path, energy_key=None, forces_key=forces_key, require_forces=False
        )
    e0s = None
    if isolated_atoms is not None:
        e0s = read_isolated_atom_energies(isolated_atoms, energy_key=energy_key)
    return run_forcefield_pipeline(train, tests, output_dir, config, isolated_atom_energies=e0s)
