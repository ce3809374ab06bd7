"""Selection for active learning: ``select_structures`` and ``ltau select`` on a tiny pool."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest

pytest.importorskip("mace")

from ltau import ErrorDistributions, ErrorRecorder, LTAUEstimator
from ltau.atomistic.active_learning import RULES, select_structures
from ltau.atomistic.structures import LabelledStructures, read_structures
from ltau.cli import main
from ltau.demo.emt_data import make_initial_structures, make_md_dataset, write_extxyz
from ltau.exceptions import LTAUInputError
from ltau.integrations.mace import MACESettings, train_mace
from ltau.integrations.models import load_forcefield

SETTINGS = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4, seed=2)
SLAB = {"slab_size": (2, 2, 2)}
PLANTED = 3


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny MACE model (2 epochs, Cu + H) and its estimator, saved as ltau demo saves them,
    and a pool of 6 structures whose structure 3 is rattled far from anything trained on."""
    folder = tmp_path_factory.mktemp("select")
    frames = make_md_dataset(["Cu"], ["H"], 300.0, 8, seed=3, progress=False, **SLAB)
    train = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    recorder = ErrorRecorder(train.n_atoms, log_path=folder / "errors.h5")
    trained = train_mace(train, epochs=2, settings=SETTINGS, recorder=recorder, progress=False)
    trained.save(folder / "model.pt")
    forcefield = load_forcefield(folder / "model.pt")
    estimator = LTAUEstimator(5).fit(
        forcefield.evaluate(train).descriptors, recorder.distributions(n_bins=20)
    )
    estimator.save(
        folder / "estimator.h5",
        metadata={"atol_eV_per_A": 0.1, "model_sha256": forcefield.fingerprint},
    )
    pool = make_initial_structures(["Cu"], ["H"], 6, 11, rattle_stdev=0.02, **SLAB)
    pool[PLANTED].positions *= 0.75  # compressed: every distance far below the trained ones
    write_extxyz(pool, folder / "pool.xyz")
    return folder, forcefield, LTAUEstimator.load(folder / "estimator.h5"), pool


def planted_estimator(forcefield, pool, noisy: int) -> LTAUEstimator:
    """An estimator whose training atoms are the pool's own atoms, with large recorded errors
    for structure ``noisy`` only (k = 1: each atom inherits its own distribution)."""
    structures = LabelledStructures([atoms.copy() for atoms in pool])
    descriptors = forcefield.evaluate(structures).descriptors
    rng = np.random.default_rng(0)
    scale = np.where(structures.index.configuration_of_atoms == noisy, 1.0, 0.01)
    errors = rng.lognormal(sigma=0.3, size=(scale.size, 12)) * scale[:, None]
    return LTAUEstimator(1).fit(descriptors, ErrorDistributions.from_errors(errors, n_bins=30))


def test_planted_uncertain_structure_is_picked_first(model_files):
    _, forcefield, _, pool = model_files
    for noisy in (1, 4):
        estimator = planted_estimator(forcefield, pool, noisy)
        for rule in ("expected_error", "p_exceed"):
            picked = select_structures(estimator, forcefield, pool, 2, rule=rule, atol=0.1)
            assert picked.indices[0] == noisy, (rule, picked)
            assert picked.scores[0] > picked.scores[1]
            assert picked.pool_scores.shape == (len(pool),)
    assert picked.atol == 0.1 and picked.rule == "p_exceed"


def test_planted_out_of_domain_structure_is_picked_first(model_files):
    _, forcefield, estimator, pool = model_files
    picked = select_structures(estimator, forcefield, pool, 3, rule="structure_ood")
    assert picked.indices[0] == PLANTED
    assert picked.scores[0] > 1.5 * picked.scores[1]
    assert np.all(np.diff(picked.scores) <= 0)
    # the scores are the estimator's own per-structure results
    structures = LabelledStructures([atoms.copy() for atoms in pool])
    groups = structures.index.configuration_of_atoms
    prediction = estimator.predict(forcefield.evaluate(structures).descriptors, groups=groups)
    summary = estimator.per_structure(prediction, groups)
    np.testing.assert_allclose(picked.pool_scores, summary.structure_ood_score)
    everything = select_structures(estimator, forcefield, pool, len(pool))
    np.testing.assert_allclose(everything.pool_scores, summary.max_expected_error)
    assert sorted(everything.indices.tolist()) == list(range(len(pool)))


def test_selection_bad_inputs(model_files):
    _, forcefield, estimator, pool = model_files
    oxygen = make_initial_structures(["Cu"], ["O"], 1, 0, **SLAB)
    foreign = LTAUEstimator(5).fit(
        np.zeros((10, forcefield.evaluate(LabelledStructures(pool[:1])).descriptors.shape[1])),
        ErrorDistributions.from_errors(np.ones((10, 3)), n_bins=5),
    )
    foreign.metadata_ = {"model_sha256": "0" * 64}
    cases = [
        ({"pool": []}, "no structures"),
        ({"n": 7}, "cannot pick 7 structures from a pool of 6"),
        ({"n": 0}, "must be a positive integer"),
        ({"n": 1.5}, "must be a positive integer"),
        ({"pool": [*pool, oxygen[0]]}, "structure 6 has element\\(s\\) O"),
        ({"rule": "biggest"}, "unknown rule"),
        ({"rule": "p_exceed", "atol": -1.0}, "atol"),
        ({"estimator": foreign}, "another model"),
        ({"estimator": "estimator.h5"}, "must be an LTAUEstimator"),
        ({"pool": [pool[0], "x"]}, "pool\\[1\\] is a str"),
    ]
    for change, message in cases:
        args = {"estimator": estimator, "pool": pool, "n": 2, **change}
        options = {k: v for k, v in args.items() if k in ("rule", "atol")}
        with pytest.raises(LTAUInputError, match=message):
            select_structures(args["estimator"], forcefield, args["pool"], args["n"], **options)
    bare = planted_estimator(forcefield, pool, 1)  # no stored atol
    with pytest.raises(LTAUInputError, match="give atol"):
        select_structures(bare, forcefield, pool, 1, rule="p_exceed")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_the_picked_structures(model_files, tmp_path, capsys):
    folder, forcefield, estimator, pool = model_files
    model = ("--model", folder / "model.pt", "--estimator", folder / "estimator.h5")
    for rule in RULES:
        out = tmp_path / f"{rule}.xyz"
        code, stdout, err = run(
            capsys, "select", folder / "pool.xyz", *model, "-n", 3, "-o", out, "--rule", rule
        )
        assert code == 0, err
        assert "wrote" in stdout and "3 of 6 structures" in stdout
        expected = select_structures(estimator, forcefield, pool, 3, rule=rule)
        frames = ase.io.read(out, ":")
        assert [f.info["ltau_pool_index"] for f in frames] == expected.indices.tolist()
        assert [f.info["ltau_select_rank"] for f in frames] == [0, 1, 2]
        np.testing.assert_allclose([f.info["ltau_select_score"] for f in frames], expected.scores)
        for frame in frames:
            original = pool[frame.info["ltau_pool_index"]]
            np.testing.assert_allclose(frame.positions, original.positions, atol=1e-6)
            assert frame.info["ltau_select_rule"] == rule
            assert frame.info.get("ltau_select_atol") == (0.1 if rule == "p_exceed" else None)
    assert ase.io.read(tmp_path / "structure_ood.xyz", 0).info["ltau_pool_index"] == PLANTED


def test_cli_bad_inputs_write_nothing(model_files, tmp_path, capsys):
    folder, _, _, pool = model_files
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "junk.xyz").write_text("this is not a structure\n")
    write_extxyz(make_initial_structures(["Cu"], ["O"], 1, 0, **SLAB), tmp_path / "oxygen.xyz")
    good = folder / "pool.xyz"
    model, est = ("--model", folder / "model.pt"), ("--estimator", folder / "estimator.h5")
    out = tmp_path / "picked.xyz"
    cases = [
        ((tmp_path / "empty.xyz", *model, *est, "-n", 1), "holds no structures|could not be read"),
        ((good, *model, *est, "-n", 7), "cannot pick 7 structures from a pool of 6"),
        ((good, *model, *est, "-n", 0), "-n must be a positive integer"),
        ((tmp_path / "oxygen.xyz", *model, *est, "-n", 1), "element\\(s\\) O that the model"),
        ((tmp_path / "missing.xyz", *model, *est, "-n", 1), "does not exist"),
        ((tmp_path / "junk.xyz", *model, *est, "-n", 1), "could not be read as structures"),
        ((good, *model, "--estimator", tmp_path / "none.h5", "-n", 1), "none.h5"),
        ((good, *model, "--estimator", folder / "model.pt", "-n", 1), "model.pt"),
        ((good, "--model", tmp_path / "junk.xyz", *est, "-n", 1), "model file"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, "select", *argv, "-o", out)
        assert code == 2, (argv, err)
        assert re.search(message, err), (message, err)
    assert not out.exists()
    assert len(pool) == 6
