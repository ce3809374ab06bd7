"""Relaxation with per-step uncertainty: the driver, its trajectory, stop rules, the CLI."""

from __future__ import annotations

import csv
import re

import ase.io
import numpy as np
import pytest

pytest.importorskip("mace")

from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from ltau import ErrorRecorder, LTAUEstimator
from ltau.atomistic.relaxation import QUANTITIES, relax
from ltau.atomistic.structures import read_structures
from ltau.cli import main
from ltau.demo.emt_data import make_initial_structures, make_md_dataset, write_extxyz
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.mace import LTAUCalculator, MACESettings, evaluate_mace, train_mace

SETTINGS = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4, seed=2)
SLAB = {"slab_size": (2, 2, 2)}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny MACE model (2 epochs, Cu + H) with its estimator, saved as ltau demo saves them."""
    folder = tmp_path_factory.mktemp("relax")
    frames = make_md_dataset(["Cu"], ["H"], 300.0, 8, seed=3, progress=False, **SLAB)
    train = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    recorder = ErrorRecorder(train.n_atoms, log_path=folder / "errors.h5")
    trained = train_mace(train, epochs=2, settings=SETTINGS, recorder=recorder, progress=False)
    estimator = LTAUEstimator(5).fit(
        evaluate_mace(trained, train).descriptors, recorder.distributions(n_bins=20)
    )
    trained.save(folder / "model.pt")
    estimator.save(folder / "estimator.h5", metadata={"atol_eV_per_A": 0.1})
    return folder, trained, estimator


def initial(n: int = 1, seed: int = 5, **kwargs):
    return make_initial_structures(["Cu"], ["H"], n, seed, rattle_stdev=0.1, **SLAB, **kwargs)


def moving(atoms):
    """Atoms not fixed by the FixAtoms constraint (kept through extxyz)."""
    (constraint,) = atoms.constraints
    free = np.ones(len(atoms), dtype=bool)
    free[constraint.index] = False
    return free


def test_trajectory_holds_every_step_with_uncertainty(model_files, tmp_path):
    _, trained, estimator = model_files
    atoms = initial()[0]
    calculator = LTAUCalculator(trained, estimator, atol=0.1)
    path = tmp_path / "traj.xyz"
    result = relax(atoms, calculator, optimizer="BFGS", fmax=1e-4, steps=4, trajectory=path)
    assert not result.converged and result.n_steps == 4 and result.stopped_by == ()
    frames = ase.io.read(path, ":")
    assert len(frames) == result.n_steps + 1 == result.energies.size
    assert not (tmp_path / "traj.xyz.partial").exists()
    free = moving(frames[0])
    assert free.sum() == 5  # 4 top-layer Cu atoms and the H atom move
    for step, frame in enumerate(frames):
        assert frame.info["relax_step"] == step
        # the recorded values are those of the model at that frame's positions
        check = frame.copy()
        check.calc = LTAUCalculator(trained, estimator, atol=0.1)
        np.testing.assert_allclose(frame.get_forces(), check.get_forces(), atol=1e-4)
        assert frame.get_potential_energy() == pytest.approx(result.energies[step], abs=1e-6)
        for name, key in QUANTITIES.items():
            np.testing.assert_allclose(frame.arrays[key], check.calc.results[key], rtol=1e-4)
            assert result.maximum[name][step] == pytest.approx(frame.arrays[key][free].max())
            assert result.mean[name][step] == pytest.approx(frame.arrays[key][free].mean())
        assert frame.info["relax_fmax"] == pytest.approx(
            np.linalg.norm(frame.get_forces()[free], axis=1).max()
        )
    np.testing.assert_allclose(frames[-1].positions, atoms.positions, atol=1e-7)
    assert not np.allclose(frames[0].positions, frames[-1].positions)


def test_stop_rule_fires_and_is_recorded(model_files, tmp_path):
    _, trained, estimator = model_files
    calculator = LTAUCalculator(trained, estimator, atol=0.1)
    free_run = relax(initial()[0], calculator, fmax=1e-4, steps=4)
    assert free_run.stopped_by == () and free_run.n_steps == 4
    # the first step whose maximum exceeds every earlier one; a threshold at the earlier
    # maximum must stop the relaxation exactly there
    values = free_run.maximum["ood_score"]
    step = next(s for s in range(1, values.size) if values[s] > values[:s].max())
    path = tmp_path / "stopped.xyz"
    result = relax(
        initial()[0],
        calculator,
        fmax=1e-4,
        steps=4,
        trajectory=path,
        stop={"ood_score": float(values[:step].max()), "p_exceed": 1.0},
    )
    assert result.stopped_by == ("ood_score",) and result.stop_step == step
    assert result.n_steps == step and not result.converged
    frames = ase.io.read(path, ":")
    assert len(frames) == step + 1 and frames[-1].info["ltau_stopped_by"] == "ood_score"
    assert all("ltau_stopped_by" not in frame.info for frame in frames[:-1])


def test_stop_rule_below_the_first_step(model_files):
    _, trained, estimator = model_files
    calculator = LTAUCalculator(trained, estimator, atol=0.1)
    probe = relax(initial()[0], calculator, steps=1)
    stop = {"p_exceed": probe.maximum["p_exceed"][0] / 2, "ood_score": 0.0}
    result = relax(initial()[0], calculator, steps=5, stop=stop)
    assert result.stopped_by == ("p_exceed", "ood_score")
    assert result.stop_step == 0 and result.n_steps == 0


def test_crash_keeps_finished_steps_and_the_old_file(model_files, tmp_path):
    _, trained, estimator = model_files

    class Failing(LTAUCalculator):
        calls = 0

        def evaluate_model(self, atoms, compute_stress):
            Failing.calls += 1
            if Failing.calls == 4:
                raise RuntimeError("simulated crash")
            return super().evaluate_model(atoms, compute_stress)

    path = tmp_path / "traj.xyz"
    path.write_text("previous\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        relax(initial()[0], Failing(trained, estimator), fmax=1e-4, steps=10, trajectory=path)
    assert path.read_text() == "previous\n"
    frames = ase.io.read(tmp_path / "traj.xyz.partial", ":", format="extxyz")
    assert [frame.info["relax_step"] for frame in frames] == [0, 1, 2]


def test_relax_bad_inputs(model_files, tmp_path):
    _, trained, estimator = model_files
    calculator = LTAUCalculator(trained, estimator)
    atoms = initial()[0]
    cases = [
        ({"optimizer": "NoSuchOpt"}, "unknown optimizer 'NoSuchOpt'; choose one of .*FIRE"),
        ({"optimizer": 3}, "optimizer must be an ASE optimizer class or name"),
        ({"fmax": 0.0}, "fmax must be a positive number"),
        ({"fmax": float("nan")}, "fmax must be a positive number"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"stop": {"energy": 1.0}}, "unknown stop quantity 'energy'"),
        ({"stop": {"p_exceed": 1.5}}, "p_exceed stop threshold must lie in"),
        ({"stop": {"ood_score": -1.0}}, "ood_score stop threshold must be a non-negative"),
        ({"trajectory": tmp_path / "missing" / "t.xyz"}, "does not exist"),
        ({"optimizer_kwargs": {"nonsense": 1}}, "FIRE rejected its arguments"),
    ]
    for kwargs, message in cases:
        with pytest.raises((LTAUInputError, LTAUFileError), match=message):
            relax(atoms, calculator, **kwargs)
    with pytest.raises(LTAUInputError, match=r"must be an LTAU calculator.*got EMT"):
        relax(atoms, EMT())
    with pytest.raises(LTAUInputError, match=r"non-empty ase\.Atoms"):
        relax(atoms[:0], calculator)
    fixed = initial()[0]
    fixed.set_constraint(FixAtoms(indices=range(len(fixed))))
    with pytest.raises(LTAUInputError, match="every atom is fixed"):
        relax(fixed, calculator)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_relaxes_a_file(model_files, tmp_path, capsys):
    folder, _, _ = model_files
    write_extxyz(initial(3, seed=7), tmp_path / "start.xyz")
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        *("relax", tmp_path / "start.xyz", "--model", folder / "model.pt"),
        *("--estimator", folder / "estimator.h5", "-o", out, "--steps", 3),
        *("--optimizer", "LBFGS", "--fmax", 1e-4, "--stop-ood-score", 1e9),
    )
    assert code == 0, err
    assert "wrote 3 trajectories" in stdout
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trajectory"] for row in rows] == [f"relax_000{i}.xyz" for i in range(3)]
    for row in rows:
        frames = ase.io.read(out / row["trajectory"], ":")
        assert len(frames) == int(row["steps"]) + 1 == 4
        assert row["converged"] == "False" and row["stopped_by"] == ""
        final = frames[-1].arrays["ltau_expected_force_error"][moving(frames[-1])]
        assert float(row["final_max_expected_error"]) == pytest.approx(final.max(), rel=1e-6)
    # p_exceed uses the estimator's stored atol unless --atol is given
    code, _, err = run(
        capsys,
        *("relax", tmp_path / "start.xyz", "--model", folder / "model.pt"),
        *("--estimator", folder / "estimator.h5", "-o", out, "--steps", 2),
        *("--stop-expected-error", 0.0, "--atol", 0.05),
    )
    assert code == 0, err
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert all(row["stopped_by"] == "expected_error" and row["stop_step"] == "0" for row in rows)


def test_cli_bad_inputs(model_files, tmp_path, capsys):
    folder, _, _ = model_files
    write_extxyz(initial(1), tmp_path / "start.xyz")
    LTAUEstimator.load(folder / "estimator.h5").save(folder / "bare.h5")  # no stored atol
    oxygen = make_initial_structures(["Cu"], ["O"], 1, 0, **SLAB)
    write_extxyz(oxygen, tmp_path / "oxygen.xyz")
    (tmp_path / "junk.xyz").write_text("this is not a structure\n")
    model, est = ("--model", folder / "model.pt"), ("--estimator", folder / "estimator.h5")
    out = ("-o", tmp_path / "out")
    cases = [
        ((tmp_path / "start.xyz", *model, *est, *out, "--optimizer", "Nope"), "unknown optimizer"),
        (
            (tmp_path / "start.xyz", *model, *est, *out, "--fmax", -1),
            "fmax must be a positive number",
        ),
        ((tmp_path / "start.xyz", *model, *est, *out, "--steps", 0), "steps must be an integer"),
        ((tmp_path / "start.xyz", *model, *est, *out, "--stop-p-exceed", 2), "must lie in"),
        ((tmp_path / "missing.xyz", *model, *est, *out), "does not exist"),
        ((tmp_path / "junk.xyz", *model, *est, *out), "could not be read as structures"),
        ((tmp_path / "oxygen.xyz", *model, *est, *out), "element\\(s\\) O that the model"),
        ((tmp_path / "start.xyz", "--model", tmp_path / "junk.xyz", *est, *out), "model file"),
        ((tmp_path / "start.xyz", *model, "--estimator", folder / "model.pt", *out), "estimator"),
        ((tmp_path / "start.xyz", *model, "--estimator", folder / "bare.h5", *out), "give --atol"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, "relax", *argv)
        assert code == 2, (argv, err)
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "out" / "summary.csv").exists()
