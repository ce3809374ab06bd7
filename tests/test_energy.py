"""Energy uncertainty: the per-configuration energy log, the structure estimator, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ltau import ErrorDistributions, ErrorRecorder
from ltau.energy import (
    ENERGY_CENTRINGS,
    ENERGY_LOG_NAME,
    ENERGY_UNIT,
    EnergyRecorder,
    centred_energy_errors,
    energy_errors,
    energy_log_path,
    energy_recorder,
    fit_energy_estimator,
    open_energy_log,
    structure_descriptors,
)
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.metrics import spearman


@pytest.mark.parametrize("centring", ENERGY_CENTRINGS)
def test_energy_errors_are_recorded_centred_and_reloaded_exactly(tmp_path, centring):
    rng = np.random.default_rng(3)
    # Signed errors with a large shared offset per epoch, as a drifting model's are.
    signed = rng.normal(size=(4, 7)) * 0.05 + rng.normal(size=(4, 1)) * 2.0
    expected = np.empty((4, 7), dtype=np.float32)
    offsets = []
    path = tmp_path / "energy_errors.h5"
    with energy_recorder(7, path, centring=centring, provenance={"run": "test"}) as recorder:
        for member, row in enumerate(signed):
            steps = np.array_split(rng.permutation(7), 2)
            for step in steps:
                recorder.record(step, row[step])
            recorder.end_epoch(member % 2)
            if centring == "batch_mean":
                for step in steps:
                    expected[member, step] = np.abs(row[step] - np.mean(row[step]))
                offsets.append(np.mean([np.mean(row[step]) for step in steps]))
            else:
                statistic = {"none": lambda r: 0.0, "epoch_mean": np.mean}.get(centring, np.median)
                offsets.append(statistic(row))
                expected[member] = np.abs(row - offsets[-1])
    with open_energy_log(path) as log:
        np.testing.assert_array_equal(log.to_array(), expected)
        facts = log.provenance
        assert facts["unit"] == ENERGY_UNIT and facts["run"] == "test"
        assert facts["centring"] == centring
        assert facts["epoch_offsets"] == [[m % 2, float(o)] for m, o in enumerate(offsets)]
        np.testing.assert_array_equal(log.samples["configuration"], np.arange(7))
        assert log.epochs_by_member == {0: 2, 1: 2}
    if centring == "epoch_mean":
        # The shared offset is gone: the logged errors are the configurations' own.
        assert expected.max() < 0.5 < np.abs(signed).mean()
    # Resumed, the log keeps its centring; a partial epoch is centred over what it recorded.
    with EnergyRecorder.resume(path) as again:
        assert again.centring == centring
        again.record(np.array([1, 4]), np.array([1.0, 3.0]))
        again.end_epoch(0, allow_missing=True)
    with open_energy_log(path) as log:
        last = log.to_array()[-1]
    shift = 0.0 if centring == "none" else 2.0
    np.testing.assert_array_equal(last[[1, 4]], np.abs(np.array([1.0, 3.0]) - shift))
    assert np.isnan(np.delete(last, [1, 4])).all()


def test_centring_rule_and_its_bad_input():
    centred, offset = centred_energy_errors(np.array([1.0, 2.0, 6.0]), "epoch_median")
    assert offset == 2.0
    np.testing.assert_array_equal(centred, [1.0, 0.0, 4.0])
    with pytest.raises(LTAUInputError, match="centring must be one of"):
        centred_energy_errors(np.ones(2), "per_batch")
    with pytest.raises(LTAUInputError, match="finite"):
        centred_energy_errors(np.array([1.0, np.nan]), "epoch_mean")
    with pytest.raises(LTAUInputError, match="at least one"):
        centred_energy_errors(np.array([]), "epoch_mean")


def test_energy_log_path_is_beside_the_force_log(tmp_path):
    assert energy_log_path(tmp_path / "errors.h5") == tmp_path / ENERGY_LOG_NAME
    assert energy_log_path("run/member3.h5") == Path("run/energy_member3.h5")


def test_a_force_log_is_not_taken_for_an_energy_log(tmp_path):
    path = tmp_path / "errors.h5"
    with ErrorRecorder(5, log_path=path) as recorder:
        recorder.record_epoch(np.ones(5))
    with pytest.raises(LTAUFileError, match="not an energy-error log"):
        open_energy_log(path)


def test_structure_descriptor_is_the_mean_of_its_atoms():
    descriptors = np.array([[0.0, 2.0], [2.0, 4.0], [5.0, 5.0]])
    np.testing.assert_allclose(
        structure_descriptors(descriptors, np.array([0, 0, 1])), [[1.0, 3.0], [5.0, 5.0]]
    )


def planted(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structures of 4 atoms in 3-D whose energy error scale grows with the first
    coordinate of their mean descriptor: (atom descriptors, atom groups, error scale)."""
    centres = rng.uniform(0.0, 10.0, size=(n, 3))
    atoms = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.2, size=(4 * n, 3))
    groups = np.repeat(np.arange(n), 4)
    return atoms, groups, 0.01 * np.exp(0.5 * centres[:, 0])


def test_energy_estimator_ranks_and_covers_a_planted_error_scale():
    rng = np.random.default_rng(0)
    atoms, groups, scale = planted(rng, 300)
    trajectories = np.abs(rng.normal(size=(300, 40))) * scale[:, None]
    distributions = ErrorDistributions.from_errors(trajectories, n_bins=60)
    train = structure_descriptors(atoms, groups)
    valid_atoms, valid_groups, valid_scale = planted(rng, 150)
    valid_errors = np.abs(rng.normal(size=150)) * valid_scale
    estimator, choice = fit_energy_estimator(
        train, distributions, structure_descriptors(valid_atoms, valid_groups), valid_errors
    )
    test_atoms, test_groups, test_scale = planted(rng, 200)
    test_errors = np.abs(rng.normal(size=200)) * test_scale
    prediction = estimator.predict(structure_descriptors(test_atoms, test_groups), confidence=0.9)
    # The expected |N(0, s)| is s * sqrt(2 / pi): the prediction follows the planted scale.
    assert spearman(prediction.expected_error, test_scale) > 0.95
    np.testing.assert_allclose(
        np.median(prediction.expected_error / (test_scale * np.sqrt(2 / np.pi))), 1.0, atol=0.2
    )
    inside = (test_errors >= prediction.interval_lower) & (test_errors <= prediction.interval_upper)
    assert 0.8 <= inside.mean() <= 0.97
    assert choice["k"] in (3, 5, 10, 20)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(LTAUInputError, match="no reference energies"):
        energy_errors(np.zeros(3), None)
    with pytest.raises(LTAUInputError, match="3 predicted energies but 2 reference"):
        energy_errors(np.zeros(3), np.zeros(2))
    with pytest.raises(LTAUInputError, match="finite"):
        energy_errors(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(LTAUInputError, match="one label per atom"):
        structure_descriptors(np.zeros((4, 2)), np.array([0, 0, 1]))
    with pytest.raises(LTAUInputError, match="structure 1 has no atoms"):
        structure_descriptors(np.zeros((3, 2)), np.array([0, 2, 2]))
    rng = np.random.default_rng(1)
    distributions = ErrorDistributions.from_errors(rng.random((10, 5)), n_bins=10)
    with pytest.raises(LTAUInputError, match="9 training structures but 10"):
        fit_energy_estimator(np.zeros((9, 2)), distributions, np.zeros((3, 2)), np.ones(3))
    with pytest.raises(LTAUInputError, match="3 validation structures but 2 energy errors"):
        fit_energy_estimator(rng.random((10, 2)), distributions, np.zeros((3, 2)), np.ones(2))
    with energy_recorder(3, tmp_path / "e.h5") as recorder:
        with pytest.raises(LTAUInputError, match="needs 3 signed energy errors"):
            recorder.record_epoch(np.ones(4))
        with pytest.raises(LTAUInputError, match="finite"):
            recorder.record([0, 1], [0.1, np.inf])
        with pytest.raises(LTAUInputError, match="2 ids but 1 errors"):
            recorder.record([0, 1], [0.1])
        with pytest.raises(LTAUInputError, match="recorded twice"):
            recorder.record([2, 2], [0.1, -0.1])
    with pytest.raises(LTAUInputError, match="centring must be one of"):
        energy_recorder(3, tmp_path / "e2.h5", centring="mean")
    with ErrorRecorder(5, log_path=tmp_path / "forces.h5") as forces:
        forces.record_epoch(np.ones(5))
    with pytest.raises(LTAUFileError, match="not an energy-error log"):
        EnergyRecorder.resume(tmp_path / "forces.h5")


def test_pipeline_refuses_an_energy_log_that_does_not_fit(tmp_path):
    from ase.build import molecule
    from ase.calculators.emt import EMT

    from ltau.atomistic.pipeline import run_pipeline
    from ltau.atomistic.structures import read_structures

    frames = []
    for shift in range(4):
        atoms = molecule("CH4")
        atoms.positions[0] += 0.01 * shift
        atoms.calc = EMT()
        atoms.info["e"], atoms.arrays["f"] = atoms.get_potential_energy(), atoms.get_forces()
        frames.append(atoms)
    fit_set = read_structures(frames[:3], energy_key="e", forces_key="f")
    validation = read_structures(frames[3:], energy_key="e", forces_key="f")
    forces = ErrorRecorder(fit_set.n_atoms, log_path=tmp_path / "errors.h5")
    forces.record_epoch(np.ones(fit_set.n_atoms))

    def never(structures, progress):
        raise AssertionError("the energy log must be refused before the model runs")

    def run(energy_log):
        run_pipeline(
            never,
            forces,
            fit_set,
            validation,
            {"t": validation},
            tmp_path / "out",
            training={},
            in_domain="t",
            energy_log=energy_log,
        )

    with energy_recorder(4, tmp_path / "energy_errors.h5") as wrong_length:
        with pytest.raises(LTAUInputError, match="has 4 configurations but the training"):
            run(wrong_length)
    with pytest.raises(LTAUFileError, match="not an energy-error log"):
        run(forces)
    unlabelled = read_structures(frames[:3], energy_key=None, forces_key="f")
    with energy_recorder(3, tmp_path / "e3.h5") as energies:
        with pytest.raises(LTAUInputError, match="needs reference energies"):
            run_pipeline(
                never,
                forces,
                unlabelled,
                validation,
                {"t": validation},
                tmp_path / "out",
                training={},
                in_domain="t",
                energy_log=energies,
            )
    forces.close()
