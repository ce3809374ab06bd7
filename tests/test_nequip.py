"""LTAU-FF with NequIP on a tiny EMT dataset: the logging callback (from Python and from a
nequip-train config, its log tied to the training file), the model files nequip users save
(packaged, checkpoint, compiled TorchScript and AOTInductor) and ltau's own, `ltau run`, the
calculator from each, bad input. Runs in the .venv-nequip env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest

pytest.importorskip("nequip")

import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from hydra.utils import instantiate

import ltau
from ltau import LTAUEstimator
from ltau._io import file_sha256
from ltau.atomistic.pipeline import run_pipeline
from ltau.atomistic.structures import read_structures
from ltau.atomistic.training_log import logged_training
from ltau.cli import main
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations import nequip as nequip_integration
from ltau.integrations.models import load_forcefield
from ltau.integrations.nequip import (
    COMPILE_FOR_LTAU,
    FRAME_ID_KEY,
    LTAUCalculator,
    LTAUErrorLogger,
    NequIPModel,
    NequIPSettings,
    TrainedNequIP,
    evaluate_nequip,
    load_nequip_model,
    train_nequip,
)
from ltau.recording import ErrorLog

SETTINGS = NequIPSettings(r_max=3.5, num_features=8, radial_mlp_width=16, batch_size=3, seed=1)
BIN = Path(sys.executable).parent
N_TRAIN, N_VAL = 15, 5
KEYS = ["--energy-key", "energy", "--forces-key", "forces"]


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


def with_plain_labels(atoms_list: list) -> list:
    """nequip's ASE reader takes ``energy`` / ``forces`` from the extxyz columns."""
    out = []
    for atoms in atoms_list:
        atoms = atoms.copy()
        atoms.info["energy"] = atoms.info.pop("REF_energy")
        atoms.arrays["forces"] = atoms.arrays.pop("REF_forces")
        atoms.info.pop("adsorbate_info", None)
        out.append(atoms)
    return out


def run_tool(*argv: str, cwd: Path) -> None:
    """Run a nequip command line tool in ``cwd``, importing this ltau."""
    source = str(Path(ltau.__file__).resolve().parents[1])
    path = os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    structures = labelled(emt_structures(8, 0))
    log = tmp_path_factory.mktemp("nequip") / "errors.h5"
    model, logger = train_nequip(structures, epochs=2, settings=SETTINGS, log_path=log)
    return structures, model, logger


@pytest.fixture(scope="module")
def nequip_run(tmp_path_factory):
    """A nequip-train run with ltau's callback (the file split into train / val by nequip),
    its checkpoint packaged with nequip-package."""
    folder = tmp_path_factory.mktemp("nequip_train")
    ase.io.write(folder / "data.xyz", with_plain_labels(emt_structures(N_TRAIN + N_VAL, 3)))
    ase.io.write(folder / "test.xyz", with_plain_labels(emt_structures(4, 4)))
    (folder / "config.yaml").write_text(CONFIG)
    run_tool("nequip-train", "-cp", str(folder), "-cn", "config",
             f"hydra.run.dir={folder / 'run'}", cwd=folder)  # fmt: skip
    checkpoint = folder / "ckpt" / "last.ckpt"
    run_tool("nequip-package", "build", str(checkpoint), "model.nequip.zip", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def compiled(nequip_run):
    """The packaged model compiled as nequip-compile does: TorchScript with nequip's own
    save_torchscript_model (nequip-compile refuses --mode torchscript from torch 2.10 on) and
    AOTInductor with nequip-compile and the fields of COMPILE_FOR_LTAU."""
    from nequip.model.inference_models.torchscript import save_torchscript_model
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.utils.global_state import get_latest_global_state, set_global_state

    set_global_state()
    model = load_saved_model(str(nequip_run / "model.nequip.zip"))
    metadata = {**model.metadata, **get_latest_global_state(only_metadata_related=True)}
    metadata = {k: str(int(v)) if isinstance(v, bool) else v for k, v in metadata.items()}
    torchscript = nequip_run / "model.nequip.pth"
    save_torchscript_model(model, metadata, str(torchscript), "cpu")
    argv = COMPILE_FOR_LTAU.replace("MODEL", "model.nequip.zip").replace("OUT", "model")
    run_tool(*argv.split(), cwd=nequip_run)
    return torchscript, nequip_run / "model.nequip.pt2"


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


@pytest.mark.parametrize("train_file", [False, True])
def test_logged_errors_are_each_atoms_own_error_despite_shuffled_batches(tmp_path, train_file):
    """With a zero learning rate the model never changes, so every epoch's logged error of an
    atom must equal that atom's error in a separate evaluation: this fails if ids are mixed up
    between shuffled batches, or if the logged forces are not the training step's. With a
    training file, frames are matched to its configurations by their atoms: those trained on
    (every other one here) are recorded under their atoms in the file, the others never."""
    atoms = emt_structures(9, 5)
    path = tmp_path / "train.xyz"
    ase.io.write(path, atoms)
    every = labelled(ase.io.read(path, ":"))
    chosen = np.arange(0, 9, 2) if train_file else np.arange(9)
    structures = every.subset(chosen)
    frozen = NequIPSettings(**{**vars(SETTINGS), "learning_rate": 0.0})
    model, logger = train_nequip(
        structures, epochs=2, settings=frozen, log_path=tmp_path / "e.h5", progress=False,
        train_file=path if train_file else None,
    )  # fmt: skip
    expected = evaluate_nequip(model, structures).force_errors
    assert np.ptp(expected) > 0.01  # atoms differ, so a permutation would be caught
    with ErrorLog(logger.log_path) as log:
        errors = log.to_array()
        if train_file:
            assert log.provenance["trained_configurations"] == chosen.tolist()
            assert log.provenance["frames_identified_by"] == "atoms"
            np.testing.assert_array_equal(log.samples["configuration"],
                                          every.index.configuration_of_atoms)  # fmt: skip
    if train_file:
        trained_atoms = np.concatenate([every.index.ids_of(int(c)) for c in chosen])
        assert np.all(np.isnan(np.delete(errors, trained_atoms, axis=1)))
        errors = errors[:, trained_atoms]
    np.testing.assert_allclose(errors[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(errors[1], expected, rtol=1e-4, atol=1e-5)


def test_nequip_train_log_carries_the_atom_map_and_nequips_split(nequip_run):
    """The callback as nequip users configure it (a ``_target_`` in ``trainer.callbacks`` of a
    nequip-train run splitting one file into train / val): the log's samples are the file's
    atoms, and its provenance the file and nequip's own random split."""
    data = nequip_run / "data.xyz"
    train = read_structures(data, energy_key="energy", forces_key="forces")
    held_out = torch.utils.data.random_split(
        range(N_TRAIN + N_VAL), [N_TRAIN, N_VAL], generator=torch.Generator().manual_seed(1)
    )[1].indices  # what nequip's split_dataset does with the data seed
    with ErrorLog(nequip_run / "errors.h5") as log:
        facts = log.provenance
        assert facts["train_file"] == str(data.resolve())
        assert facts["train_file_sha256"] == file_sha256(data)
        assert facts["frames_identified_by"] == "dataset indices"
        assert sorted(facts["validation_configurations"]) == sorted(held_out)
        assert sorted(facts["trained_configurations"] + facts["validation_configurations"]) == (
            list(range(N_TRAIN + N_VAL))
        )
        assert facts["members"]["0"]["epochs"] == log.n_epochs == 2
        errors = log.to_array()
        logged = logged_training(log, train, data)
    held_atoms = np.concatenate([train.index.ids_of(c) for c in held_out])
    assert np.all(np.isnan(errors[:, held_atoms]))
    assert np.all(np.isfinite(np.delete(errors, held_atoms, axis=1)))
    assert len(logged.validation.atoms) == N_VAL and len(logged.fit_set.atoms) == N_TRAIN
    assert logged.sample_ids.size == N_TRAIN * 9


def test_ltau_run_on_the_packaged_model(nequip_run, capsys):
    out = nequip_run / "ltau"
    argv = ["run", "--model", str(nequip_run / "model.nequip.zip"), "--log",
            str(nequip_run / "errors.h5"), "--train", str(nequip_run / "data.xyz"), "--test",
            f"md={nequip_run / 'test.xyz'}", "--output-dir", str(out), *KEYS]  # fmt: skip
    assert main(argv) == 2  # a package holds code: refused without --trust-model
    assert "--trust-model" in capsys.readouterr().err
    assert main([*argv, "--trust-model"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "md" in json.dumps(metrics)
    estimator = LTAUEstimator.load(out / "estimator.h5")
    package = load_forcefield(nequip_run / "model.nequip.zip", trusted=True)
    assert estimator.metadata_["model_sha256"] == package.fingerprint
    assert estimator.metadata_["model_kind"] == "nequip"

    relaxed = nequip_run / "relaxed"
    assert main(["relax", str(nequip_run / "test.xyz"), "--model", str(argv[2]), "--trust-model",
                 "--estimator", str(out / "estimator.h5"), "-o", str(relaxed), "--steps", "2"]) == 0  # fmt: skip
    steps = ase.io.read(relaxed / "relax_0000.xyz", ":")
    assert len(steps) >= 2 and "ltau_expected_force_error" in steps[-1].arrays

    other = nequip_run / "other.xyz"  # the log belongs to data.xyz, not to this file
    ase.io.write(other, with_plain_labels(emt_structures(N_TRAIN + N_VAL, 9)))
    assert main([*argv[:5], "--train", str(other), *argv[7:], "--trust-model"]) == 2
    assert "recorded from another training file" in capsys.readouterr().err


def test_calculator_from_each_model_kind(nequip_run, compiled, trained, tmp_path):
    """Every kind of model file gives the same model outputs and a working calculator; the
    estimator of `ltau run` (fitted on the package) fits the package and the checkpoint (same
    weights, same fingerprint) and is refused by a compiled file (its own fingerprint)."""
    test = read_structures(nequip_run / "test.xyz", energy_key="energy", forces_key="forces")
    data = nequip_run / "data.xyz"
    with ErrorLog(nequip_run / "errors.h5") as log:
        logged = logged_training(log, read_structures(data, energy_key=None, forces_key=None,
                                                      require_forces=False), data)  # fmt: skip
        distributions = log.distributions(n_bins=10, samples=logged.sample_ids)
    files = {
        "package": nequip_run / "model.nequip.zip",
        "checkpoint": nequip_run / "ckpt" / "last.ckpt",
        "torchscript": compiled[0],
        "aotinductor": compiled[1],
    }
    forcefields = {kind: load_forcefield(path, trusted=True) for kind, path in files.items()}
    reference = forcefields["package"].evaluate(test)
    assert reference.descriptors.shape == (test.n_atoms, 4)
    from_run = LTAUEstimator.load(nequip_run / "ltau" / "estimator.h5")
    atoms = test.atoms[1].copy()
    for kind, forcefield in forcefields.items():
        assert forcefield.kind == "nequip" and forcefield.model.kind == kind
        assert forcefield.elements == ["H", "Cu"]
        evaluation = forcefield.evaluate(test)
        np.testing.assert_allclose(evaluation.forces, reference.forces, atol=1e-4)
        np.testing.assert_allclose(evaluation.descriptors, reference.descriptors, atol=1e-4)
        if kind in ("package", "checkpoint"):
            estimator = from_run
        else:
            with pytest.raises(LTAUInputError, match="descriptors of another model"):
                forcefield.calculator(from_run)
            own = forcefield.evaluate(logged.fit_set).descriptors
            estimator = LTAUEstimator(3).fit(own, distributions)
        atoms.calc = forcefield.calculator(estimator, atol=0.2)
        np.testing.assert_allclose(atoms.get_forces(), reference.forces[test.index.ids_of(1)],
                                   atol=1e-4)  # fmt: skip
        results = atoms.calc.results
        direct = estimator.predict(
            evaluation.descriptors[test.index.ids_of(1)], groups=np.zeros(9, int), atol=0.2
        )
        np.testing.assert_allclose(results["ltau_ood_score"], direct.ood_score, rtol=1e-4)
        np.testing.assert_allclose(results["ltau_p_exceed"], direct.exceedance[:, 0], rtol=1e-4)

    structures, model, logger = trained  # ltau's own file: no code runs, no trust needed
    model.save(tmp_path / "model.pt")
    own = load_forcefield(tmp_path / "model.pt")
    assert own.model.kind == "ltau" and own.fingerprint == NequIPModel.from_eager(
        model.model, kind="ltau", source="x").fingerprint  # fmt: skip
    evaluation = own.evaluate(structures)
    np.testing.assert_allclose(evaluation.forces, evaluate_nequip(model, structures).forces)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, logger.distributions(n_bins=10))
    atoms = structures.atoms[2].copy()
    atoms.calc = own.calculator(estimator)
    np.testing.assert_allclose(atoms.get_forces(), evaluation.forces[structures.index.ids_of(2)],
                               atol=1e-5)  # fmt: skip

    descriptors = tmp_path / "d.npz"
    assert main(["descriptors", str(nequip_run / "test.xyz"), "--model", str(compiled[0]),
                 "-o", str(descriptors)]) == 0  # fmt: skip
    with np.load(descriptors) as stored:
        np.testing.assert_allclose(stored["descriptors"], reference.descriptors, atol=1e-4)
        assert str(stored["model_sha256"]) == file_sha256(compiled[0])


class _Payload:
    """Unpickling this calls os.system: what a malicious model file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


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


def test_a_file_that_carries_code_is_refused_without_running_it(trained, tmp_path):
    _, model, _ = trained
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "ltau-nequip-model", "payload": _Payload(marker)}, evil)
    pickled = tmp_path / "pickled.pt"  # a whole pickled module, as ltau once saved it
    torch.save({"format": "ltau-nequip-model", "model": model.model}, pickled)
    for path in (evil, pickled):
        with pytest.raises(LTAUFileError, match="--trust-model"):
            load_forcefield(path)
        with pytest.raises(LTAUFileError, match=r"may run code.*--trust-model"):
            TrainedNequIP.load(path)
    assert not marker.exists()


def test_bad_inputs(trained, nequip_run, tmp_path, monkeypatch):
    structures, model, logger = trained
    evaluation = evaluate_nequip(model, structures)
    distributions = logger.distributions(n_bins=10)
    estimator = LTAUEstimator(3).fit(evaluation.descriptors, distributions)
    wrong = LTAUEstimator(3).fit(evaluation.descriptors[:, :5], distributions)
    with pytest.raises(LTAUInputError, match="fitted on 5-dimensional descriptors"):
        LTAUCalculator.from_trained(model, wrong)
    with pytest.raises(LTAUInputError, match="must be a NequIPModel"):
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
    with pytest.raises(LTAUFileError, match=r"training file .* does not exist"):
        LTAUErrorLogger(tmp_path / "e.h5", train_file=tmp_path / "absent.xyz")
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
    with pytest.raises(LTAUInputError, match="give log_path too"):
        train_nequip(structures, epochs=1, settings=SETTINGS, train_file=nequip_run / "data.xyz")
    (tmp_path / "foreign.pt").write_bytes(b"nope")
    with pytest.raises(LTAUFileError, match="not a readable model file"):
        TrainedNequIP.load(tmp_path / "foreign.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "tensors.pt")
    with pytest.raises(LTAUFileError, match="none of the NequIP model files"):
        load_nequip_model(tmp_path / "tensors.pt")
    renamed = tmp_path / "model.zip"
    renamed.write_bytes((nequip_run / "model.nequip.zip").read_bytes())
    with pytest.raises(LTAUFileError, match=r"name ending in .nequip.zip"):
        load_nequip_model(renamed, trusted=True)

    # An AOTInductor file compiled for nequip's ASE target returns no node_features.
    from nequip.model import inference_models

    ase_target = {"nequip_aoti_outputs": "atomic_energy total_energy forces stress",
                  "type_names": ["H", "Cu"], "r_max": 3.5, "allow_tf32": "0"}  # fmt: skip
    monkeypatch.setattr(inference_models, "load_aotinductor_model",
                        lambda path, device: (torch.nn.Identity(), ase_target))  # fmt: skip
    monkeypatch.setattr(nequip_integration, "nequip_file_kind", lambda path: "aotinductor")
    with pytest.raises(LTAUInputError, match=r"compiled to return only atomic_energy.*--output-"):
        load_nequip_model(tmp_path / "tensors.pt", trusted=True)


def test_validation_sets_nequip_does_not_read_from_the_training_file(nequip_run, tmp_path):
    """Validation frames of a dataset not read from a file are matched to the training file by
    their atoms during the first validation pass (not the sanity check); a validation file of
    its own is recorded with its SHA-256."""
    from types import SimpleNamespace

    from nequip.data.dataset import ASEDataset

    data = nequip_run / "data.xyz"
    transforms = nequip_integration._transforms(["H", "Cu"], 3.5)
    held_out = [3, 7]
    frames = ASEDataset(str(data), transforms=transforms)[held_out]
    in_memory = nequip_integration._FramesDataset(frames)
    other = ASEDataset(str(nequip_run / "test.xyz"), transforms=transforms)
    callback = LTAUErrorLogger(tmp_path / "e.h5", train_file=data)
    datamodule = SimpleNamespace(train_dataset=[in_memory], val_dataset=[in_memory, other])
    callback.setup(SimpleNamespace(world_size=1, datamodule=datamodule), None, "fit")
    assert isinstance(datamodule.train_dataset[0], nequip_integration.FrameIndexedDataset)
    batch = nequip_integration.AtomicDataDict.batched_from_list(frames)
    for sanity_checking in (True, False):
        trainer = SimpleNamespace(sanity_checking=sanity_checking)
        callback.on_validation_batch_end(trainer, None, None, batch, 0)
        callback.on_validation_epoch_end(trainer, None)
        if sanity_checking:
            assert callback._provenance()["validation_configurations"] == []
    facts = callback.recorder.provenance
    callback.teardown(None, None, "fit")
    assert facts["validation_configurations"] == held_out
    assert facts["frames_identified_by"] == "atoms"
    assert facts["valid_file"] == str((nequip_run / "test.xyz").resolve())
    assert facts["valid_file_sha256"] == file_sha256(nequip_run / "test.xyz")


def test_compiled_node_features_must_be_invariant(trained):
    """A compiled model does not declare its irreps: columns that rotate are refused."""
    _, model, _ = trained

    class VectorFeatures(torch.nn.Module):
        def forward(self, data):
            output = model.model(data)
            output["node_features"] = torch.cat([output["node_features"], data["pos"]], dim=1)
            return output

    eager = nequip_integration.as_nequip_model(model)
    calculator = nequip_integration.NequIPCalculator(
        VectorFeatures().eval(), device="cpu", transforms=eager.calculator.transforms
    )
    vectors = NequIPModel(calculator, kind="torchscript", source="vectors.nequip.pth",
                          type_names=["H", "Cu"], columns=np.arange(11), fingerprint="",
                          batch_size=1)  # fmt: skip
    with pytest.raises(LTAUFileError, match=r"columns \[8, 9, 10\] change when the structure"):
        nequip_integration._checked_invariant_columns(vectors, 3.5)
    np.testing.assert_array_equal(
        nequip_integration._checked_invariant_columns(eager, 3.5), np.arange(8)
    )


CONFIG = textwrap.dedent(
    f"""
    run: [train]
    cutoff_radius: 3.5
    type_names: [H, Cu]
    data:
      _target_: nequip.data.datamodule.ASEDataModule
      seed: 1
      split_dataset: {{file_path: data.xyz, train: {N_TRAIN}, val: {N_VAL}}}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${{type_names}}
          chemical_species_to_atom_type_map: ${{list_to_identity_dict:${{type_names}}}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${{cutoff_radius}}
      train_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 4, shuffle: true}}
      val_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 4}}
    trainer:
      _target_: lightning.Trainer
      max_epochs: 2
      logger: false
      enable_progress_bar: false
      callbacks:
        - _target_: ltau.integrations.nequip.LTAUErrorLogger
          log_path: errors.h5
        - _target_: lightning.pytorch.callbacks.ModelCheckpoint
          dirpath: ckpt
          save_last: true
    training_module:
      _target_: nequip.train.NequIPLightningModule
      loss: {{_target_: nequip.train.EnergyForceLoss, coeffs: {{total_energy: 1.0, forces: 1.0}}}}
      val_metrics: {{_target_: nequip.train.EnergyForceMetrics}}
      optimizer: {{_target_: torch.optim.Adam, lr: 0.01}}
      model:
        _target_: nequip.model.NequIPGNNModel
        seed: 0
        model_dtype: float32
        type_names: ${{type_names}}
        r_max: ${{cutoff_radius}}
        num_layers: 2
        l_max: 1
        num_features: 4
        radial_mlp_width: 8
        avg_num_neighbors: 8.0
        per_type_energy_shifts: {{H: 0.0, Cu: 0.0}}
        per_type_energy_scales: 1.0
    global_options:
      allow_tf32: false
    """
)
