"""LTAU-FF with MACE on a tiny EMT dataset: logging hook, descriptors, calculator, bad input."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest

pytest.importorskip("mace")

from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT

from ltau import ErrorRecorder, LTAUEstimator
from ltau.atomistic.structures import read_structures
from ltau.exceptions import LTAUInputError
from ltau.integrations.mace import (
    LTAUCalculator,
    MACESettings,
    TrainedMACE,
    evaluate_mace,
    train_mace,
)

SETTINGS = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4, seed=1)


def emt_structures(n: int, seed: int, adsorbate: str = "H"):
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
        add_adsorbate(slab, adsorbate, 1.5, "fcc")
        slab.positions += rng.normal(scale=0.08, size=slab.positions.shape)
        slab.calc = EMT()
        slab.info["REF_energy"] = slab.get_potential_energy()
        slab.arrays["REF_forces"] = slab.get_forces()
        slab.calc = None
        structures.append(slab)
    return structures


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    structures = read_structures(
        emt_structures(8, 0), energy_key="REF_energy", forces_key="REF_forces"
    )
    log = tmp_path_factory.mktemp("mace") / "errors.h5"
    recorder = ErrorRecorder(structures.n_atoms, log_path=log)
    model = train_mace(structures, epochs=2, settings=SETTINGS, recorder=recorder, progress=False)
    return structures, model, recorder


def test_logging_hook_records_every_training_atom_each_epoch(trained):
    structures, model, recorder = trained
    assert recorder.n_epochs == 2
    log = recorder.distributions(n_bins=20)
    assert log.n_samples == structures.n_atoms
    assert np.all(log.n_observations == 2)
    assert len(model.epoch_seconds) == 2 and 0 <= model.logging_overhead < 1


def test_descriptors_match_model_and_forces_match_calculator(trained, tmp_path):
    structures, model, recorder = trained
    evaluation = evaluate_mace(model, structures)
    assert evaluation.descriptors.shape == (structures.n_atoms, 2 * SETTINGS.num_channels)
    expected_errors = np.linalg.norm(evaluation.forces - structures.forces, axis=1)
    np.testing.assert_allclose(evaluation.force_errors, expected_errors)

    estimator = LTAUEstimator(5).fit(evaluation.descriptors, recorder.distributions(n_bins=20))
    atoms = structures.atoms[3].copy()
    atoms.calc = LTAUCalculator(model, estimator, atol=0.2)
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, evaluation.forces[structures.index.ids_of(3)], atol=1e-4)
    direct = estimator.predict(evaluation.descriptors[structures.index.ids_of(3)], atol=0.2)
    results = atoms.calc.results
    np.testing.assert_allclose(
        results["ltau_expected_force_error"], direct.expected_error, rtol=1e-4
    )
    np.testing.assert_allclose(results["ltau_p_exceed"], direct.exceedance[:, 0], atol=1e-4)
    assert np.isfinite(results["energy"]) and results["free_energy"] == results["energy"]
    assert "stress" not in results  # the slab is not periodic along z

    path = tmp_path / "out.xyz"
    ase.io.write(path, atoms, format="extxyz")
    back = ase.io.read(path)
    for name in LTAUCalculator.per_atom_results:
        np.testing.assert_allclose(back.arrays[name], results[name], rtol=1e-5)

    model.save(tmp_path / "model.pt")
    reloaded = TrainedMACE.load(tmp_path / "model.pt")
    np.testing.assert_allclose(evaluate_mace(reloaded, structures).forces, evaluation.forces)


def test_bad_inputs(trained, tmp_path):
    structures, model, recorder = trained
    with pytest.raises(LTAUInputError, match="no forces under the key 'missing'"):
        read_structures(emt_structures(1, 2), energy_key="REF_energy", forces_key="missing")
    evaluation = evaluate_mace(model, structures)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, recorder.distributions(n_bins=10))
    wrong = LTAUEstimator(3).fit(evaluation.descriptors[:, :5], recorder.distributions(n_bins=10))
    with pytest.raises(LTAUInputError, match="fitted on 5-dimensional descriptors"):
        LTAUCalculator(model, wrong)
    oxygen = emt_structures(1, 3, adsorbate="O")[0]
    oxygen.calc = LTAUCalculator(model, estimator)
    with pytest.raises(LTAUInputError, match="does not know element\\(s\\) O"):
        oxygen.get_potential_energy()
    unlabelled = read_structures(
        emt_structures(1, 4), forces_key=None, require_forces=False, energy_key=None
    )
    with pytest.raises(LTAUInputError, match="need reference forces"):
        train_mace(unlabelled, epochs=1, settings=SETTINGS, progress=False)
    with pytest.raises(LTAUInputError, match="recorder has 3 samples"):
        train_mace(
            structures,
            epochs=1,
            settings=SETTINGS,
            recorder=ErrorRecorder(3, bins=None, log_path=tmp_path / "x.h5"),
            progress=False,
        )
    (tmp_path / "foreign.pt").write_bytes(b"nope")
    with pytest.raises(Exception, match="not a readable model file"):
        TrainedMACE.load(tmp_path / "foreign.pt")


def test_stress_for_periodic_cells(trained):
    structures, model, recorder = trained
    evaluation = evaluate_mace(model, structures)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, recorder.distributions(n_bins=10))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    atoms.calc = LTAUCalculator(model, estimator)
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.all(np.isfinite(stress))
    assert atoms.calc.results["ltau_ood_score"].shape == (len(atoms),)


def test_isolated_atom_energies_reader(tmp_path):
    from ase import Atoms

    from ltau.atomistic.structures import read_isolated_atom_energies

    atoms = [Atoms("H", info={"REF_energy": -13.6}), Atoms("O", info={"REF_energy": -2042.0})]
    ase.io.write(tmp_path / "e0s.xyz", atoms, format="extxyz")
    e0s = read_isolated_atom_energies(tmp_path / "e0s.xyz", energy_key="REF_energy")
    assert e0s == pytest.approx({1: -13.6, 8: -2042.0})
    ase.io.write(tmp_path / "pair.xyz", Atoms("OH", info={"REF_energy": -1.0}), format="extxyz")
    with pytest.raises(LTAUInputError, match="single-atom"):
        read_isolated_atom_energies(tmp_path / "pair.xyz", energy_key="REF_energy")


def test_calculator_refuses_what_it_cannot_compute_and_warns_without_fingerprint(
    trained, tmp_path, caplog
):
    structures, model, recorder = trained
    evaluation = evaluate_mace(model, structures)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, recorder.distributions(n_bins=10))
    with caplog.at_level("WARNING", logger="ltau"):
        calculator = LTAUCalculator(model, estimator)
    assert "records no model fingerprint" in caplog.text
    atoms = structures.atoms[0].copy()
    atoms.positions[1, 2] = np.nan
    atoms.calc = calculator
    with pytest.raises(LTAUInputError, match="atom 1 has a non-finite position"):
        atoms.get_potential_energy()
    empty = ase.Atoms()
    empty.calc = calculator
    with pytest.raises(LTAUInputError, match="no atoms"):
        empty.get_potential_energy()
    model.save(tmp_path / "model.pt")
    with pytest.raises(LTAUInputError, match="no head 'absent'"):
        TrainedMACE.from_file(tmp_path / "model.pt", head="absent")
