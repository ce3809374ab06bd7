"""LTAU-FF with MACE on a tiny EMT dataset: logging hook, descriptors, calculator, bad input."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest

pytest.importorskip("mace")

from dataclasses import replace

from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT

from ltau import ErrorDistributions, ErrorRecorder, LTAUEstimator
from ltau.atomistic.structures import read_structures
from ltau.energy import energy_recorder, open_energy_log, structure_descriptors
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


def _tampered(path, out, change):
    """A copy of an ltau MACE file whose stored architecture ``change`` has edited."""
    import json

    import torch

    payload = torch.load(path, weights_only=True)
    architecture = json.loads(payload["architecture"])
    change(architecture["arguments"])
    payload["architecture"] = json.dumps(architecture)
    torch.save(payload, out)
    return out


def test_model_file_is_plain_data_and_rebuilds_the_same_model(trained, tmp_path):
    import torch

    structures, model, _ = trained
    model.save(tmp_path / "model.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "model.pt") == []
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # no allowlist needed
    assert payload["format_version"] == 2 and "model" not in payload
    reloaded = TrainedMACE.load(tmp_path / "model.pt")
    assert reloaded.fingerprint == model.fingerprint
    assert reloaded.settings == model.settings and reloaded.epoch_seconds == model.epoch_seconds
    np.testing.assert_array_equal(
        evaluate_mace(reloaded, structures).forces, evaluate_mace(model, structures).forces
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]  # no temporary file left


def test_first_format_files_still_load(trained, tmp_path):
    from dataclasses import asdict

    import torch

    _, model, _ = trained
    stored = asdict(model)
    stored.pop("model")
    torch.save(
        {"model": model.model, "settings": stored, "format": "ltau-mace-model"}, tmp_path / "v1.pt"
    )
    reloaded = TrainedMACE.load(tmp_path / "v1.pt")
    assert reloaded.fingerprint == model.fingerprint


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(interaction_cls={"class": "os.system"}), "not a mace module class"),
        (lambda a: a.update(readout_cls={"class": "mace.modules.blocks.np"}), "not a mace module"),
        (lambda a: a.update(gate={"function": "builtins.eval"}), "ltau does not build"),
        (lambda a: a.update(hidden_irreps={"irreps": "8x0q"}), "'hidden_irreps' is malformed"),
        (lambda a: a.update(atomic_energies={"array": [1], "dtype": "object"}), "ltau does not"),
        (lambda a: a.update(surprise=1), "does not build a ScaleShiftMACE"),
        (lambda a: a.update(num_interactions=3), "weights do not fit its architecture"),
    ],
)
def test_tampered_architecture_is_refused(trained, tmp_path, change, message):
    from ltau.exceptions import LTAUFileError

    _, model, _ = trained
    model.save(tmp_path / "model.pt")
    tampered = _tampered(tmp_path / "model.pt", tmp_path / "bad.pt", change)
    with pytest.raises(LTAUFileError, match=message):
        TrainedMACE.load(tampered)


def test_tampered_payload_is_refused(trained, tmp_path):
    import torch

    from ltau.exceptions import LTAUFileError

    _, model, _ = trained
    model.save(tmp_path / "model.pt")
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    for key, value, message in [
        ("format_version", 7, "format version 7"),
        ("settings", "{}", "settings are incomplete"),
        ("architecture", "[1]", "architecture is malformed"),
    ]:
        torch.save({**payload, key: value}, tmp_path / "bad.pt")
        with pytest.raises(LTAUFileError, match=message):
            TrainedMACE.load(tmp_path / "bad.pt")
    state = dict(payload["state_dict"])
    state.pop(next(iter(state)))
    torch.save({**payload, "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(LTAUFileError, match="weights do not fit"):
        TrainedMACE.load(tmp_path / "bad.pt")


def test_a_class_imported_into_an_allowed_package_is_refused(tmp_path):
    """sympy's Poly, imported by e3nn, evaluates a string given to its constructor: a file that
    names it under e3nn's module must be refused, and the code in the string must not run."""
    import io
    import zipfile

    import sympy
    import torch

    from ltau.exceptions import LTAUFileError
    from ltau.integrations.model_files import load_pickled_model

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return sympy.Poly, (f"__import__('pathlib').Path({str(marker)!r}).touch() or x",)

    buffer = io.BytesIO()
    torch.save({"model": Payload()}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(tmp_path / "evil.model", "w") as out:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename.endswith("data.pkl"):
                data = data.replace(
                    b"sympy.polys.polytools\nPoly\n",
                    b"e3nn.o3._angular_spherical_harmonics\nPoly\n",
                )
                assert b"e3nn.o3._angular_spherical_harmonics" in data
            out.writestr(entry.filename, data)
    with pytest.raises(
        LTAUFileError, match=r"sympy\.polys\.polytools\.Poly imported into an allowed"
    ):
        load_pickled_model(tmp_path / "evil.model")
    assert not marker.exists()


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


def test_energy_hook_records_each_configurations_energy_error(tmp_path):
    """With a zero learning rate the weights never change, so the logged energy errors must be
    the evaluated model's |E_pred - E_ref| of the same configuration (batches are shuffled)."""
    structures = read_structures(
        emt_structures(6, 5), energy_key="REF_energy", forces_key="REF_forces"
    )
    frozen = replace(SETTINGS, learning_rate=0.0, dtype="float64")
    # centring="none": the log then holds |E_pred - E_ref| of the step's forward itself.
    with energy_recorder(6, tmp_path / "energy_errors.h5", centring="none") as recorder:
        model = train_mace(
            structures, epochs=2, settings=frozen, energy_recorder=recorder, progress=False
        )
    evaluation = evaluate_mace(model, structures)
    expected = np.abs(evaluation.energies - structures.energies)
    with open_energy_log(tmp_path / "energy_errors.h5") as log:
        logged = log.to_array()
    assert logged.shape == (2, 6) and np.ptp(expected) > 1e-3
    np.testing.assert_allclose(logged, np.broadcast_to(expected, (2, 6)), rtol=1e-5, atol=1e-6)

    estimator = LTAUEstimator(2).fit(
        structure_descriptors(evaluation.descriptors, structures.index.configuration_of_atoms),
        ErrorDistributions.from_errors(logged.T.astype(np.float64) + 1e-6, n_bins=10),
    )
    atoms = structures.atoms[2].copy()
    forces_estimator = LTAUEstimator(3).fit(
        evaluation.descriptors, ErrorDistributions.from_errors(np.ones((structures.n_atoms, 2)))
    )
    atoms.calc = LTAUCalculator(model, forces_estimator, energy_estimator=estimator)
    atoms.get_potential_energy()
    direct = estimator.predict(
        structure_descriptors(
            evaluation.descriptors[structures.index.ids_of(2)], np.zeros(len(atoms), int)
        )
    )
    assert atoms.calc.results["ltau_expected_energy_error"] == pytest.approx(
        direct.expected_error[0], rel=1e-4
    )
    assert (
        atoms.info["ltau_expected_energy_error"] == atoms.calc.results["ltau_expected_energy_error"]
    )
    assert atoms.calc.results["ltau_energy_ood_score"] == pytest.approx(direct.ood_score[0])
    narrow = LTAUEstimator(2).fit(
        np.zeros((6, 3), np.float32) + np.arange(6)[:, None], estimator.distributions_
    )
    with pytest.raises(LTAUInputError, match="the energy estimator was fitted on 3-dim"):
        LTAUCalculator(model, forces_estimator, energy_estimator=narrow)


def test_energy_hook_bad_inputs(tmp_path):
    structures = read_structures(
        emt_structures(3, 6), energy_key="REF_energy", forces_key="REF_forces"
    )
    with energy_recorder(4, tmp_path / "e.h5") as recorder:
        with pytest.raises(LTAUInputError, match="4 samples but the training set has 3"):
            train_mace(structures, epochs=1, settings=SETTINGS, energy_recorder=recorder)
    no_energies = read_structures(emt_structures(3, 6), energy_key=None, forces_key="REF_forces")
    with energy_recorder(3, tmp_path / "e3.h5") as recorder:
        with pytest.raises(LTAUInputError, match="needs reference training energies"):
            train_mace(
                no_energies,
                epochs=1,
                settings=SETTINGS,
                isolated_atom_energies={1: 0.0, 29: 0.0},
                energy_recorder=recorder,
            )
