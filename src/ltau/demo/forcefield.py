"""The main job, ``ltau demo``: ltau's small MACE trained with error logging, then LTAU fitted,
calibrated, evaluated and reported through :mod:`ltau.atomistic.pipeline` (every choice on a
validation split), on a built-in EMT dataset or on the user's own extxyz files.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from ltau.atomistic.pipeline import (
    VALIDATION_GROUP_KEYS,
    check_in_domain,
    run_pipeline,
    split_validation,
)
from ltau.atomistic.structures import (
    LabelledStructures,
    read_isolated_atom_energies,
    read_structures,
)
from ltau.demo.emt_data import default_splits, isolated_atom_energies, write_extxyz
from ltau.energy import ENERGY_LOG_NAME, energy_recorder
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError
from ltau.integrations.mace import MACESettings, TrainedMACE, evaluate_mace, train_mace
from ltau.recording import ErrorRecorder

EMT_TEST_SETS = ("test_in_domain", "test_shifted")
"""The test sets of the built-in EMT demo: 900 K MD of the trained systems, and unseen
metal/adsorbate pairs."""


@dataclass
class PipelineConfig:
    """What to run. ``in_domain`` names the test set the others are compared with for OOD."""

    epochs: int = 40
    settings: MACESettings = field(default_factory=MACESettings)
    validation_fraction: float = 0.1
    validation_group_keys: tuple[str, ...] = VALIDATION_GROUP_KEYS
    """``atoms.info`` keys naming the run a training frame came from: validation holds out
    whole runs (see :func:`~ltau.atomistic.pipeline.split_validation`)."""
    calibration: str = "isotonic"
    in_domain: str = "test_in_domain"
    seed: int = 0
    n_bins: int = 100
    n_models: int = 1
    """Models trained with seeds ``seed, seed + 1, ...``; their error trajectories are pooled
    per atom, and the first model gives the forces and descriptors."""
    device: str = "cpu"
    """Torch device the models train and run on."""


def run_forcefield_pipeline(
    train: LabelledStructures,
    tests: dict[str, LabelledStructures],
    output_dir: Path,
    config: PipelineConfig,
    *,
    isolated_atom_energies: dict[int, float] | None = None,
    title: str = "LTAU-FF with MACE",
) -> dict:
    """Split off the validation set, train ltau's MACE on the rest with error logging, then
    :func:`~ltau.atomistic.pipeline.run_pipeline`; write ``output_dir`` (report, metrics,
    model, estimator, force log and, with training energies, the energy log and energy
    estimator) and return the metrics dictionary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_in_domain(tests, config.in_domain)
    if config.n_models < 1:
        raise LTAUInputError(f"n_models must be at least 1; got {config.n_models}")
    started = time.perf_counter()
    fit_set, validation = split_validation(
        train, config.validation_fraction, config.seed, config.validation_group_keys
    )
    with contextlib.ExitStack() as logs:
        recorder = logs.enter_context(
            ErrorRecorder(fit_set.n_atoms, log_path=output_dir / "errors.h5", overwrite=True)
        )
        energy_log = None
        if fit_set.energies is not None:
            energy_log = logs.enter_context(
                energy_recorder(len(fit_set.atoms), output_dir / ENERGY_LOG_NAME, overwrite=True)
            )
        members = [
            train_mace(
                fit_set,
                epochs=config.epochs,
                settings=replace(config.settings, seed=config.settings.seed + member),
                isolated_atom_energies=isolated_atom_energies,
                recorder=recorder,
                member=member,
                energy_recorder=energy_log,
                device=config.device,
            )
            for member in range(config.n_models)
        ]
        trained = members[0]
        trained.save(output_dir / "model.pt")
        return run_pipeline(
            lambda structures, progress: evaluate_mace(trained, structures, progress=progress),
            recorder,
            fit_set,
            validation,
            tests,
            output_dir,
            training={
                "epoch_seconds_mean": float(np.mean(trained.epoch_seconds)),
                "logging_overhead": trained.logging_overhead,
                "settings": vars(config.settings),
            },
            in_domain=config.in_domain,
            calibration=config.calibration,
            title=title,
            n_bins=config.n_bins,
            energy_log=energy_log,
            group_keys=config.validation_group_keys,
            started=started,
        )


def load_trained(output_dir: Path) -> tuple[TrainedMACE, LTAUEstimator]:
    """The model and estimator a pipeline run wrote into ``output_dir``."""
    output_dir = Path(output_dir)
    return TrainedMACE.load(output_dir / "model.pt"), LTAUEstimator.load(
        output_dir / "estimator.h5"
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
    tests = {name: labelled[name] for name in EMT_TEST_SETS}
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
