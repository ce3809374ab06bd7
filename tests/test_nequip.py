"""LTAU-FF with NequIP on a tiny EMT dataset: the logging callback (from Python and from a
nequip-train config), descriptors, calculator, bad input. Runs in the .venv-nequip env."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ase.io
import numpy as np
import pytest

pytest.importorskip("nequip")

import torch
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from hydra.utils import instantiate

from ltau import LTAUEstimator
from ltau.atomistic.pipeline import run_pipeline
from ltau.atomistic.structures import read_structures
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.nequip import (
    FRAME_ID_KEY,
    LTAUCalculator,
    LTAUErrorLogger,
    NequIPSettings,
    TrainedNequIP,
    evaluate_nequip,
    train_nequip,
)
from ltau.recording import ErrorLog

SETTINGS = NequIPSettings(r_max=3.5, num_features=8, radial_mlp_width=16, batch_size=3, seed=1)


def emt_structures(n: int, seed: int, adsorbate: str = "H") -> list:
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


def labelled(atoms_list):
    return read_structures(atoms_list, energy_key="REF_energy", forces_key="REF_forces")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    structures = labelled(emt_structures(8, 0))
    log = tmp_path_factory.mktemp("nequip") / "errors.h5"
    model, logger = train_nequip(structures, epochs=2, settings=SETTINGS, log_path=log)
    return structures, model, logger


def test_callback_logs_one_row_per_epoch_and_one_column_per_training_atom(trained):
    structures, model, logger = trained
    with ErrorLog(logger.log_path) as log:
        errors = log.to_array()
    assert errors.shape == (2, structures.n_atoms)
    assert np.all(np.isfinite(errors)) and np.all(errors >= 0)
    assert not np.array_equal(errors[0], errors[1])  # the model changed between epochs
    assert logger.atom_index.n_atoms == structures.n_atoms
    assert len(model.epoch_seconds) == 2 and 0 <= model.logging_overhead < 1
    assert logger.distributions(n_bins=10).n_samples == structures.n_atoms


def test_logged_errors_are_each_atoms_own_error_despite_shuffled_batches(tmp_path):
    """With a zero learning rate the model never changes, so every epoch's logged error of an
    atom must equal that atom's error in a separate evaluation: this fails if ids are mixed up
    between shuffled batches, or if the logged forces are not the training step's."""
    structures = labelled(emt_structures(7, 5))
    frozen = NequIPSettings(**{**vars(SETTINGS), "learning_rate": 0.0})
    model, logger = train_nequip(
        structures, epochs=2, settings=frozen, log_path=tmp_path / "e.h5", progress=False
    )
    with ErrorLog(logger.log_path) as log:
        errors = log.to_array()
    expected = evaluate_nequip(model, structures).force_errors
    np.testing.assert_allclose(errors[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(errors[1], expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(expected) > 0.01  # atoms differ, so a permutation would be caught


def test_descriptors_and_calculator_results_round_trip_through_extxyz(trained, tmp_path):
    structures, model, logger = trained
    evaluation = evaluate_nequip(model, structures)
    assert evaluation.descriptors.shape == (structures.n_atoms, SETTINGS.num_features)
    np.testing.assert_allclose(
        evaluation.force_errors, np.linalg.norm(evaluation.forces - structures.forces, axis=1)
    )
    estimator = LTAUEstimator(5).fit(evaluation.descriptors, logger.distributions(n_bins=20))
    atoms = structures.atoms[3].copy()
    atoms.calc = LTAUCalculator.from_trained(model, estimator, atol=0.2)
    ids = structures.index.ids_of(3)
    np.testing.assert_allclose(atoms.get_forces(), evaluation.forces[ids], atol=1e-5)
    direct = estimator.predict(evaluation.descriptors[ids], atol=0.2)
    results = atoms.calc.results
    np.testing.assert_allclose(results["ltau_expected_force_error"], direct.expected_error)
    np.testing.assert_allclose(results["ltau_p_exceed"], direct.exceedance[:, 0])
    assert results["free_energy"] == results["energy"]
    assert np.isclose(results["energy"], evaluation.energies[3], rtol=1e-6)
    assert "stress" not in results  # the slab is not periodic along z

    path = tmp_path / "out.xyz"
    ase.io.write(path, atoms, format="extxyz")
    back = ase.io.read(path)
    for name in LTAUCalculator.per_atom_results:
        np.testing.assert_allclose(back.arrays[name], results[name], rtol=1e-5)

    model.save(tmp_path / "model.pt")
    reloaded = TrainedNequIP.load(tmp_path / "model.pt")
    np.testing.assert_allclose(evaluate_nequip(reloaded, structures).forces, evaluation.forces)


def test_stress_for_periodic_cells(trained):
    structures, model, logger = trained
    evaluation = evaluate_nequip(model, structures)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, logger.distributions(n_bins=10))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=0)
    atoms.calc = LTAUCalculator.from_trained(model, estimator)
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.all(np.isfinite(stress)) and np.any(stress != 0)
    assert atoms.calc.results["ltau_ood_score"].shape == (len(atoms),)


def test_callback_from_a_nequip_train_config(tmp_path):
    """The callback as nequip users configure it: a ``_target_`` in ``trainer.callbacks`` of a
    nequip-train run on an ASE data module with a random train/val split."""
    ase.io.write(tmp_path / "data.xyz", _with_plain_labels(emt_structures(8, 3)))
    (tmp_path / "config.yaml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "nequip-train"), "-cp", str(tmp_path),
         "-cn", "config", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with ErrorLog(tmp_path / "errors.h5") as log:
        assert log.n_epochs == 2 and log.n_samples == 6 * 9  # 6 training frames of 9 atoms
        assert np.all(np.isfinite(log.to_array()))


def test_model_agnostic_pipeline_runs_on_nequip(trained, tmp_path):
    """run_pipeline, the pipeline the MACE demo uses, serves NequIP as it is: its log, its
    evaluate function, and a report with a per-element breakdown."""
    structures, model, logger = trained
    unlabelled = labelled(emt_structures(2, 9))
    unlabelled.forces = None
    with ErrorLog(logger.log_path) as log:
        report = run_pipeline(
            lambda s, progress: evaluate_nequip(model, s, progress=progress),
            log,
            structures,
            labelled(emt_structures(4, 3)),
            {"in_domain": labelled(emt_structures(3, 4)), "unlabelled": unlabelled},
            tmp_path,
            training={"model": "NequIP"},
            in_domain="in_domain",
            calibration="scale",
        )
    assert report["training"]["model"] == "NequIP"
    assert report["training"]["epochs"] == 2 and report["training"]["n_models_pooled"] == 1
    assert report["training"]["n_fit_atoms"] == structures.n_atoms
    in_domain = report["sets"]["in_domain"]
    assert set(in_domain["per_element"]) == {"Cu", "H"}
    assert in_domain["per_element"]["Cu"]["n_atoms"] == 3 * 8
    assert 0 <= report["sets"]["unlabelled"]["auroc_ood_score_vs_in_domain"] <= 1
    assert (tmp_path / "report.html").stat().st_size > 0
    assert (
        LTAUEstimator.load(tmp_path / "estimator.h5").n_neighbors
        == report["chosen_on_validation"]["k"]
    )


def test_bad_inputs(trained, tmp_path):
    structures, model, logger = trained
    evaluation = evaluate_nequip(model, structures)
    distributions = logger.distributions(n_bins=10)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, distributions)
    wrong = LTAUEstimator(3).fit(evaluation.descriptors[:, :5], distributions)
    with pytest.raises(LTAUInputError, match="fitted on 5-dimensional descriptors"):
        LTAUCalculator.from_trained(model, wrong)
    with pytest.raises(LTAUInputError, match="must be a nequip NequIPCalculator"):
        LTAUCalculator(model, estimator)
    compiled_like = LTAUCalculator.from_trained(model, estimator).nequip
    compiled_like.model = torch.nn.Identity()  # declares no node_features, like a compiled model
    with pytest.raises(LTAUInputError, match="does not declare its node_features"):
        LTAUCalculator(compiled_like, estimator)

    oxygen = emt_structures(1, 3, adsorbate="O")[0]
    oxygen.calc = LTAUCalculator.from_trained(model, estimator)
    with pytest.raises(LTAUInputError, match="does not know element\\(s\\) O; its type names"):
        oxygen.get_potential_energy()
    with pytest.raises(LTAUInputError, match="does not know element\\(s\\) O"):
        evaluate_nequip(model, labelled([oxygen]))

    for bad in (None, 3, ""):
        with pytest.raises(LTAUInputError, match="log_path must be a file path"):
            LTAUErrorLogger(bad)
    with pytest.raises(LTAUInputError, match="folder of log_path"):
        LTAUErrorLogger(tmp_path / "missing" / "errors.h5")
    with pytest.raises(LTAUFileError, match="exists; pass overwrite=True"):
        LTAUErrorLogger(logger.log_path)
    with pytest.raises(Exception, match="overwrite must be true or false"):  # hydra wraps it
        instantiate(
            {"_target_": "ltau.integrations.nequip.LTAUErrorLogger", "log_path": str(tmp_path / "x.h5"), "overwrite": "yes"}
        )  # fmt: skip
    with pytest.raises(Exception, match="unexpected keyword argument 'n_bins'"):
        instantiate({"_target_": "ltau.integrations.nequip.LTAUErrorLogger", "log_path": "a.h5", "n_bins": 3})  # fmt: skip

    callback = LTAUErrorLogger(tmp_path / "unindexed.h5")
    callback.on_train_epoch_start(None, None)
    callback.on_train_batch_start(None, None, {}, 0)
    callback._capture(None, None, {"forces": torch.zeros(2, 3)})
    with pytest.raises(LTAUInputError, match=f"carry no '{FRAME_ID_KEY}'"):
        callback.on_train_batch_end(None, None, None, {"forces": torch.ones(2, 3)}, 0)
    with pytest.raises(LTAUInputError, match="no training epoch has been logged"):
        callback.distributions()

    unlabelled = read_structures(emt_structures(2, 4), energy_key=None, forces_key=None,
                                 require_forces=False)  # fmt: skip
    with pytest.raises(LTAUInputError, match="need reference energies and forces"):
        train_nequip(unlabelled, epochs=1, settings=SETTINGS, progress=False)
    with pytest.raises(LTAUInputError, match="epochs must be a positive integer"):
        train_nequip(structures, epochs=0, settings=SETTINGS, progress=False)
    (tmp_path / "foreign.pt").write_bytes(b"nope")
    with pytest.raises(LTAUFileError, match="not a readable model file"):
        TrainedNequIP.load(tmp_path / "foreign.pt")


def _with_plain_labels(atoms_list: list) -> list:
    """nequip's ASE reader takes ``energy`` / ``forces`` from the extxyz columns."""
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.info["energy"] = atoms.info.pop("REF_energy")
        atoms.arrays["forces"] = atoms.arrays.pop("REF_forces")
        out.append(atoms)
    return out


CONFIG = textwrap.dedent(
    """
    run: [train]
    cutoff_radius: 3.5
    type_names: [H, Cu]
    data:
      _target_: nequip.data.datamodule.ASEDataModule
      seed: 1
      split_dataset: {file_path: data.xyz, train: 6, val: 2}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${type_names}
          chemical_species_to_atom_type_map: ${list_to_identity_dict:${type_names}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
      train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 4, shuffle: true}
      val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 4}
    trainer:
      _target_: lightning.Trainer
      max_epochs: 2
      logger: false
      enable_checkpointing: false
      enable_progress_bar: false
      callbacks:
        - _target_: ltau.integrations.nequip.LTAUErrorLogger
          log_path: errors.h5
    training_module:
      _target_: nequip.train.NequIPLightningModule
      loss: {_target_: nequip.train.EnergyForceLoss, coeffs: {total_energy: 1.0, forces: 1.0}}
      val_metrics: {_target_: nequip.train.EnergyForceMetrics}
      optimizer: {_target_: torch.optim.Adam, lr: 0.01}
      model:
        _target_: nequip.model.NequIPGNNModel
        seed: 0
        model_dtype: float32
        type_names: ${type_names}
        r_max: ${cutoff_radius}
        num_layers: 2
        l_max: 1
        num_features: 4
        radial_mlp_width: 8
        avg_num_neighbors: 8.0
        per_type_energy_shifts: {H: 0.0, Cu: 0.0}
        per_type_energy_scales: 1.0
    global_options:
      allow_tf32: false
    """
)
