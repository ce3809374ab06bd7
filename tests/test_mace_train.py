"""`ltau mace-train` under mace's own trainer, `ltau run` on the `.model` file mace wrote, the
calculator from model files, and bad input (acac DFT slices, a tiny MACE, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

pytest.importorskip("mace")

from ltau import ErrorLog, LTAUEstimator
from ltau._io import file_sha256
from ltau.cli import main
from ltau.energy import DEFAULT_CENTRING, ENERGY_CENTRINGS, open_energy_log
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.mace import TrainedMACE
from ltau.integrations.mace_train import ConfigurationMatcher, MACETrainingLogger
from ltau.integrations.model_files import check_fx_source, load_pickled_model
from ltau.integrations.models import load_forcefield

ACAC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
E0S = "{1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}"
N_TRAIN, N_VALID = 36, 9  # --valid_fraction 0.25; 27 trained on = 3 full batches of 9
PLANTED = (6, 3, 10.0)
"""Configuration, atom and eV/Å added to one reference force: the log must show it there."""
MACE_SMALL = [
    *("--model", "MACE", "--num_channels", "8", "--max_L", "0", "--r_max", "4.0"),
    *("--batch_size", "9", "--valid_batch_size", "9", "--device", "cpu", "--seed", "1"),
    *("--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", E0S),
    *("--default_dtype", "float64"),
]

pytestmark = pytest.mark.skipif(not ACAC.is_dir(), reason="the acac data is not beside the repo")


def write_slice(source: str, path: Path, stop: int, plant: tuple | None = None) -> Path:
    frames = ase.io.read(ACAC / f"{source}.xyz", f":{stop}")
    for index, atoms in enumerate(frames):
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        forces = atoms.get_forces().copy()
        if plant is not None and index == plant[0]:
            forces[plant[1]] += plant[2]
        atoms.arrays["REF_forces"] = forces
        atoms.calc = None
    ase.io.write(path, frames, format="extxyz")
    return path


def mace_train(work: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`ltau mace-train` in its own process (mace sets torch's default dtype and logging)."""
    return subprocess.run(
        [sys.executable, "-m", "ltau.cli", "mace-train", *arguments],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("mace_train")
    train = write_slice("train_300K", work / "train.xyz", N_TRAIN, plant=PLANTED)
    write_slice("test_MD_300K", work / "test.xyz", 10)
    result = mace_train(
        work,
        *("--log", "errors.h5", "--", "--name", "tiny", "--train_file", str(train)),
        *("--valid_fraction", "0.25", "--max_num_epochs", "3", *MACE_SMALL),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_log_maps_every_atom_to_the_training_file(run):
    train = ase.io.read(run / "train.xyz", ":")
    with ErrorLog(run / "errors.h5") as log:
        errors = log.to_array()
        samples, provenance = log.samples, log.provenance
    sizes = [len(atoms) for atoms in train]
    np.testing.assert_array_equal(samples["configuration"], np.repeat(np.arange(N_TRAIN), sizes))
    np.testing.assert_array_equal(samples["atom"], np.concatenate([np.arange(n) for n in sizes]))
    assert provenance["train_file_sha256"] == file_sha256(run / "train.xyz")
    held_out = provenance["validation_configurations"]
    assert len(held_out) == N_VALID
    assert sorted(held_out + provenance["trained_configurations"]) == list(range(N_TRAIN))
    # Every trained-on atom in every epoch, no held-out atom ever.
    assert errors.shape == (3, sum(sizes))
    held = np.isin(samples["configuration"], held_out)
    assert np.isnan(errors[:, held]).all() and np.isfinite(errors[:, ~held]).all()
    # The planted force error shows up at its configuration and atom, and only there.
    config, atom, offset = PLANTED
    assert config not in held_out
    planted = np.flatnonzero((samples["configuration"] == config) & (samples["atom"] == atom))
    assert np.all(errors[:, planted[0]] > 0.8 * offset)
    others = np.delete(errors, planted, axis=1)
    assert np.nanmax(others) < 0.5 * offset
    member = provenance["members"]["0"]
    assert member["epochs"] == 3 and member["unmatched_graphs"] == 0
    assert any(path.endswith("tiny.model") for path in member["model_files"])


def test_energy_log_beside_the_force_log(run):
    """mace's real batches reach the energy hook: every trained-on configuration has an energy
    error in every epoch, the held-out ones none, centred by the default rule."""
    with ErrorLog(run / "errors.h5") as forces:
        held_out = forces.provenance["validation_configurations"]
    with open_energy_log(run / "energy_errors.h5") as log:
        errors, facts = log.to_array(), log.provenance
    assert errors.shape == (3, N_TRAIN)
    assert np.isnan(errors[:, held_out]).all()
    assert np.isfinite(np.delete(errors, held_out, axis=1)).all()
    assert facts["train_file_sha256"] == file_sha256(run / "train.xyz")
    assert facts["centring"] == DEFAULT_CENTRING and len(facts["epoch_offsets"]) == 3


class _Table(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("atomic_numbers", torch.tensor([1, 6, 8]))


def _batch(frames: list, configs: list[int], rng: np.random.Generator, energy_weights: list[float]):
    """mace-like (pred, ref) of ``configs`` of ``frames``, random predictions."""
    chosen = [frames[c] for c in configs]
    numbers = np.concatenate([a.numbers for a in chosen])
    one_hot = torch.nn.functional.one_hot(
        torch.as_tensor(np.searchsorted([1, 6, 8], numbers)), 3
    ).double()
    ref = {
        "ptr": torch.as_tensor(np.concatenate([[0], np.cumsum([len(a) for a in chosen])])),
        "node_attrs": one_hot,
        "positions": torch.as_tensor(np.concatenate([a.positions for a in chosen])),
        "forces": torch.as_tensor(np.concatenate([a.arrays["REF_forces"] for a in chosen])),
        "forces_weight": torch.ones(len(chosen), dtype=torch.float64),
        "energy": torch.as_tensor([a.info["REF_energy"] for a in chosen]),
        "energy_weight": torch.as_tensor(energy_weights, dtype=torch.float64),
    }
    pred = {
        "forces": ref["forces"] + torch.as_tensor(rng.normal(size=ref["forces"].shape)),
        "energy": ref["energy"] + torch.as_tensor(rng.normal(size=len(chosen)) + 5.0),
    }
    return pred, ref


@pytest.mark.parametrize("centring", ENERGY_CENTRINGS)
def test_energy_hook_logs_each_steps_own_energy_errors(tmp_path, centring):
    """What the hook logs is |E_pred - E_ref| of the forward pass mace hands the loss, at the
    right configuration, minus the epoch's offset; unfitted energies are not logged."""
    train = write_slice("train_300K", tmp_path / "train.xyz", 6)
    frames = ase.io.read(train, ":")
    logger = MACETrainingLogger(train, tmp_path / "errors.h5", energy_centring=centring)
    rng = np.random.default_rng(4)
    loss = logger.wrap_loss(lambda pred, ref: torch.zeros(()), _Table())
    signed, steps = np.full(6, np.nan), []
    for configs, weights in (([3, 0, 2], [1.0, 1.0, 0.0]), ([5, 1, 4], [1.0, 1.0, 1.0])):
        pred, ref = _batch(frames, configs, rng, weights)
        loss(pred, ref)
        kept = np.array(weights) > 0
        steps.append(np.array(configs)[kept])
        signed[steps[-1]] = (pred["energy"] - ref["energy"]).numpy()[kept]
    logger.wrap_train_one_epoch(lambda: None)()
    logger.finish({})
    fitted = np.isfinite(signed)
    expected = np.abs(signed)
    if centring == "batch_mean":
        for step in steps:
            expected[step] = np.abs(signed[step] - np.mean(signed[step]))
        offset = np.mean([np.mean(signed[step]) for step in steps])
    else:
        offset = {"none": 0.0, "epoch_mean": np.mean(signed[fitted])}.get(centring)
        if offset is None:
            offset = np.median(signed[fitted])
        expected = np.abs(signed - offset)
    with open_energy_log(tmp_path / "energy_errors.h5") as log:
        logged, facts = log.to_array()[0], log.provenance
    np.testing.assert_array_equal(logged[fitted], expected[fitted].astype(np.float32))
    assert np.isnan(logged[2])
    assert facts["centring"] == centring and facts["trainer"] == "mace_run_train"
    assert facts["epoch_offsets"] == [[0, float(offset)]]


def test_ltau_run_on_the_model_mace_wrote(run, capsys):
    code = main(
        [
            *("run", "--model", str(run / "tiny.model"), "--log", str(run / "errors.h5")),
            *("--train", str(run / "train.xyz"), "--test", f"in_domain={run / 'test.xyz'}"),
            *("--output-dir", str(run / "out")),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads((run / "out" / "metrics.json").read_text())
    assert report["training"]["n_validation_configs"] == N_VALID
    assert report["training"]["trainer"] == "mace_run_train"
    assert 0 <= report["sets"]["in_domain"]["coverage90"] <= 1
    estimator = LTAUEstimator.load(run / "out" / "estimator.h5")
    model = TrainedMACE.from_file(run / "tiny.model")
    assert estimator.metadata_["model_sha256"] == model.fingerprint
    assert estimator.metadata_["model_kind"] == "mace"


def test_relax_takes_the_model_mace_wrote(run, tmp_path, capsys):
    structures = tmp_path / "initial.xyz"
    ase.io.write(structures, ase.io.read(run / "test.xyz", ":2"), format="extxyz")
    code = main(
        [
            *("relax", str(structures), "--model", str(run / "tiny.model")),
            *("--estimator", str(run / "out" / "estimator.h5"), "-o", str(tmp_path / "relaxed")),
            *("--steps", "3"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    frames = ase.io.read(tmp_path / "relaxed" / "relax_0000.xyz", ":")
    assert 1 <= len(frames) <= 4 and "ltau_expected_force_error" in frames[-1].arrays
    assert (tmp_path / "relaxed" / "summary.csv").read_text().count("\n") == 3


def test_calculator_from_mace_and_ltau_model_files(run, tmp_path):
    from mace.calculators import MACECalculator

    estimator = LTAUEstimator.load(run / "out" / "estimator.h5")
    atoms = ase.io.read(run / "test.xyz", 0)
    reference = MACECalculator(
        model_paths=str(run / "tiny.model"), device="cpu", default_dtype="float64"
    )
    expected_forces = reference.get_forces(atoms.copy())
    expected_descriptors = reference.get_descriptors(atoms.copy())
    mace_file = load_forcefield(run / "tiny.model")
    TrainedMACE.from_file(run / "tiny.model").save(tmp_path / "ltau.pt")
    ltau_file = load_forcefield(tmp_path / "ltau.pt")
    assert mace_file.kind == ltau_file.kind == "mace"
    assert mace_file.fingerprint == ltau_file.fingerprint
    for forcefield in (mace_file, ltau_file):
        atoms.calc = forcefield.calculator(estimator, atol=0.2)
        np.testing.assert_allclose(atoms.get_forces(), expected_forces, atol=1e-10)
        assert atoms.calc.results["ltau_expected_force_error"].shape == (len(atoms),)
        descriptors = forcefield.evaluate(_structures(run / "test.xyz"), False).descriptors[
            : len(atoms)
        ]
        np.testing.assert_allclose(descriptors, expected_descriptors, rtol=1e-6, atol=1e-7)


def _structures(path: Path):
    from ltau.atomistic.structures import read_structures

    return read_structures(path, energy_key="REF_energy", forces_key="REF_forces")


def test_fine_tuning_from_a_local_foundation_model(run):
    """The model trained above stands in for a foundation model."""
    result = mace_train(
        run,
        *("--log", "finetune.h5", "--", "--name", "finetuned"),
        *("--train_file", str(run / "train.xyz"), "--valid_fraction", "0.25"),
        *("--foundation_model", str(run / "tiny.model"), "--multiheads_finetuning", "False"),
        *("--max_num_epochs", "2", *MACE_SMALL),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with ErrorLog(run / "finetune.h5") as log:
        assert log.n_epochs == 2
        assert log.provenance["members"]["0"]["foundation_model"] == str(run / "tiny.model")
    tuned = TrainedMACE.from_file(run / "finetuned.model")
    assert tuned.fingerprint != TrainedMACE.from_file(run / "tiny.model").fingerprint
    estimator = LTAUEstimator.load(run / "out" / "estimator.h5")
    with pytest.raises(LTAUInputError, match="another model"):
        load_forcefield(run / "finetuned.model").calculator(estimator)


def test_multihead_fine_tuning_records_only_the_users_configurations(run):
    """mace's replay data (--pt_train_file, a local file here) is trained on too, under its own
    head: those graphs match no configuration of the training file and are not recorded."""
    replay = write_slice("test_MD_600K", run / "replay.xyz", 12)
    result = mace_train(
        run,
        *("--log", "multihead.h5", "--", "--name", "multihead"),
        *("--train_file", str(run / "train.xyz"), "--valid_fraction", "0.25"),
        *("--foundation_model", str(run / "tiny.model"), "--multiheads_finetuning", "True"),
        *("--pt_train_file", str(replay), "--max_num_epochs", "2", *MACE_SMALL),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with ErrorLog(run / "multihead.h5") as log:
        provenance, errors = log.provenance, log.to_array()
    assert provenance["members"]["0"]["unmatched_graphs"] > 0
    assert len(provenance["trained_configurations"]) == N_TRAIN - N_VALID
    assert np.isfinite(errors).sum(axis=1).min() > 0
    tuned = TrainedMACE.from_file(run / "multihead.model")
    assert "pt_head" in tuned.heads and tuned.head != "pt_head"


def test_descriptors_and_predict_check_the_model(run, capsys):
    """`ltau descriptors` then `ltau predict`: the estimator's model passes, another fails."""
    for name in ("tiny", "finetuned"):
        code = main(["descriptors", str(run / "test.xyz"), "--model", str(run / f"{name}.model"),
                     "-o", str(run / f"{name}.npz")])  # fmt: skip
        assert code == 0, capsys.readouterr().err
    with np.load(run / "tiny.npz") as archive:
        expected = load_forcefield(run / "tiny.model").evaluate(_structures(run / "test.xyz"))
        np.testing.assert_array_equal(archive["descriptors"], expected.descriptors)
    estimator = str(run / "out" / "estimator.h5")
    assert main(["predict", estimator, "--descriptors", str(run / "tiny.npz"),
                 "-o", str(run / "p.csv")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["predict", estimator, "--descriptors", str(run / "finetuned.npz"),
                 "-o", str(run / "q.csv")]) == 2  # fmt: skip
    assert "descriptors of another model" in capsys.readouterr().err
    assert not (run / "q.csv").exists()


class Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/ltau-test-payload-ran")


def test_a_model_file_with_a_pickle_payload_is_refused(tmp_path, capsys):
    import torch

    MARKER.unlink(missing_ok=True)
    torch.save({"model": Payload()}, tmp_path / "evil.model")
    with pytest.raises(LTAUFileError, match="trust-model"):
        load_pickled_model(tmp_path / "evil.model")
    code = main(
        [
            "descriptors",
            str(ACAC / "test_dihedral.xyz"),
            "--model",
            str(tmp_path / "evil.model"),
            "-o",
            str(tmp_path / "d.npy"),
        ]
    )
    assert code == 2 and "not among the classes" in capsys.readouterr().err
    assert not MARKER.exists() and not (tmp_path / "d.npy").exists()


@pytest.mark.parametrize(
    ("source", "verdict"),
    [
        ("def forward(self, x):\n    return torch.functional.einsum('ab->a', x)", None),
        ("def forward(self, x):\n    y = x.permute(1, 0)\n    return y", None),
        ("def forward(self, x):\n    return torch.save(x, 'f')", "torch.save"),
        ("def forward(self, x):\n    return x.__class__", "private attribute"),
        ("def forward(self, x):\n    import os\n    return x", "Import"),
        ("def forward(self, x):\n    return __import__('os')", "calls __import__"),
        ("def forward(self, x):\n    return (lambda: x)()", "Lambda"),
        ("def helper():\n    pass\ndef forward(self, x):\n    return x", "more than one"),
    ],
)
def test_fx_source_check(source, verdict):
    if verdict is None:
        check_fx_source(source, "import torch")
    else:
        with pytest.raises(LTAUFileError, match=verdict):
            check_fx_source(source, "import torch")


def test_fx_import_lines_outside_torch_fx_are_refused():
    with pytest.raises(LTAUFileError, match="imports 'import os'"):
        check_fx_source("def forward(self, x):\n    return x", "import torch\nimport os")


def test_matcher_finds_configurations_and_hands_out_duplicates_once():
    rng = np.random.default_rng(0)
    positions = rng.normal(scale=3.0, size=(12, 3))
    numbers = np.array([1, 6, 8, 1] * 3)
    # Configurations 0 and 2 are identical; 1 differs.
    positions[8:] = positions[:4]
    matcher = ConfigurationMatcher(numbers, positions, np.array([4, 4, 4]))
    jitter = rng.uniform(-5e-5, 5e-5, size=(4, 3))
    assert matcher.match(numbers[4:8], positions[4:8] + jitter) == 1
    assert [matcher.match(numbers[:4], positions[:4]) for _ in range(2)] == [0, 2]
    assert matcher.match(numbers[:4], positions[:4] + 1.0) == -1
    assert matcher.match(np.array([1, 6, 8, 8]), positions[:4]) == -1
    matcher.new_epoch()
    assert matcher.match(numbers[:4], positions[:4]) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--log", "x.h5", "--"], "give mace_run_train's arguments"),
        (
            ["--log", "x.h5", "--", "--name", "a", "--train_file", "t.xyz", "--distributed"],
            "does not support --distributed",
        ),
        (
            ["--log", "x.h5", "--", "--name", "a", "--train_file", "t.xyz", "--lbfgs"],
            "does not support --lbfgs",
        ),
        (
            [
                "--log",
                "x.h5",
                "--",
                "--name",
                "a",
                "--train_file",
                "t.xyz",
                "--foundation_model",
                "medium",
            ],
            "downloads nothing",
        ),
        (["--log", "x.h5", "--", "--name", "a", "--train_file", "absent.xyz"], "does not exist"),
    ],
)
def test_mace_train_refuses_bad_input(tmp_path, arguments, message):
    (tmp_path / "t.xyz").write_text("")
    result = mace_train(tmp_path, *arguments)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("other_train", "recorded from another training file"),
        ("not_a_model", "not a model file"),
        ("energy_key", "REF_energy"),
        ("unknown_element", "does not know element"),
    ],
)
def test_ltau_run_refuses_bad_input(run, tmp_path, capsys, change, message):
    train, model, test = run / "train.xyz", run / "tiny.model", run / "test.xyz"
    extra: list[str] = []
    if change == "other_train":
        train = write_slice("train_300K", tmp_path / "other.xyz", N_TRAIN)
    elif change == "not_a_model":
        model = train
    elif change == "energy_key":
        extra = ["--energy-key", "no_such_key"]
    elif change == "unknown_element":
        atoms = ase.io.read(test, 0)
        atoms.symbols[0] = "Pt"
        atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
        test = tmp_path / "platinum.xyz"
        ase.io.write(test, atoms, format="extxyz")
    code = main(
        [
            *("run", "--model", str(model), "--log", str(run / "errors.h5")),
            *("--train", str(train), "--test", f"t={test}", "--output-dir", str(tmp_path / "o")),
            *extra,
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "estimator.h5").exists()
