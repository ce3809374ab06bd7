"""Structure-level OOD scores: aggregation, the choice on validation, persistence, the
calculator's per-structure results and bad input."""

from __future__ import annotations

import json

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms

from ltau import ErrorDistributions, LTAUEstimator, LTAUFileError, LTAUInputError
from ltau.atomistic.calculator import PER_STRUCTURE_RESULTS, LTAUCalculatorBase, ModelOutput
from ltau.structure_scoring import CANDIDATES, StructureScoring

DIM, ATOMS_PER_STRUCTURE = 3, 6


def _structures(rng: np.random.Generator, n_structures: int, spread: float = 1.0):
    """``n_structures`` groups of atoms drawn like the training set, with errors growing with
    the distance from the origin; ``(descriptors, errors, groups)``."""
    groups = np.repeat(np.arange(n_structures), ATOMS_PER_STRUCTURE)
    x = rng.normal(scale=spread, size=(groups.size, DIM))
    errors = (
        0.05 * (1.0 + np.linalg.norm(x, axis=1) ** 2) * rng.lognormal(sigma=0.3, size=x.shape[0])
    )
    return x.astype(np.float32), errors, groups


@pytest.fixture(scope="module")
def calibrated():
    """An estimator fitted on 600 atoms and calibrated on 40 validation structures."""
    rng = np.random.default_rng(3)
    train = rng.normal(size=(600, DIM)).astype(np.float32)
    trajectories = 0.05 * (1.0 + np.linalg.norm(train, axis=1) ** 2)[:, None]
    trajectories = trajectories * rng.lognormal(sigma=0.3, size=(600, 20))
    distributions = ErrorDistributions.from_errors(trajectories, n_bins=40)
    estimator = LTAUEstimator(10).fit(train, distributions)
    descriptors, errors, groups = _structures(rng, 40)
    estimator.calibrate(descriptors, errors, groups=groups)
    return estimator


def _planted(rng: np.random.Generator, n_structures: int, planted: int, far: float, n_far: int = 1):
    """In-domain test structures, ``n_far`` atoms of structure ``planted`` moved ``far`` away."""
    descriptors, _, groups = _structures(rng, n_structures)
    atoms = planted * ATOMS_PER_STRUCTURE + np.arange(n_far)
    descriptors[atoms] = rng.normal(size=(n_far, DIM)) + far / np.sqrt(DIM)
    return descriptors, groups


@pytest.mark.parametrize(("aggregate", "level"), CANDIDATES)
def test_every_aggregate_ranks_a_planted_outlier_first(calibrated, aggregate, level):
    # Half of the planted structure's atoms lie far out: every aggregate must see it (a
    # 0.75 quantile of 6 atoms or a count ignores a single far atom by design).
    estimator, rng = calibrated, np.random.default_rng(101)
    descriptors, groups = _planted(rng, 30, planted=17, far=12.0, n_far=3)
    ood = estimator.predict(descriptors).ood_score
    threshold = None
    if aggregate == "count_above":  # from in-domain atoms drawn apart, as on validation
        threshold = float(np.quantile(estimator.predict(_structures(rng, 30)[0]).ood_score, 0.99))
    scoring = StructureScoring(aggregate, level, threshold)
    ids, scores = scoring.scores(ood, groups)
    np.testing.assert_array_equal(ids, np.arange(30))
    assert int(np.argmax(scores)) == 17
    # Strictly first, not tied with an in-domain structure.
    assert scores[17] > np.delete(scores, 17).max()


def test_the_estimator_s_structure_score_flags_the_planted_outlier(calibrated):
    estimator, rng = calibrated, np.random.default_rng(102)
    scoring = estimator.structure_scoring_
    assert scoring is not None
    names = {
        StructureScoring(a, level, 1.0 if a == "count_above" else None).name
        for a, level in CANDIDATES
    }
    assert set(scoring.validation_spearman) == names
    descriptors, groups = _planted(rng, 30, planted=4, far=12.0)
    prediction = estimator.predict(descriptors, groups=groups, atol=0.2)
    summary = estimator.per_structure(prediction, groups)
    assert summary.structure_scoring == scoring.name
    assert int(np.argmax(summary.structure_ood_score)) == 4
    assert summary.ood_flag[4]
    # The in-domain structures are flagged at about the validated 1% rate, not wholesale.
    assert np.count_nonzero(summary.ood_flag) <= 3
    # The per-group maxima and means are those of the plain summary.
    plain = prediction.per_group(groups)
    np.testing.assert_array_equal(plain.max_expected_error, summary.max_expected_error)
    assert plain.structure_ood_score is None


def test_quantile_and_count_aggregates_by_hand():
    ood = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 0.5, 0.5])
    groups = np.array([5, 5, 5, 5, 5, 9, 9])
    _, q = StructureScoring("quantile", 0.75).scores(ood, groups)
    np.testing.assert_allclose(q, [np.quantile(ood[:5], 0.75), 0.5])
    _, count = StructureScoring("count_above", atom_threshold=2.5).scores(ood, groups)
    np.testing.assert_array_equal(count, [3.0, 0.0])
    _, top = StructureScoring().scores(ood, groups)
    np.testing.assert_array_equal(top, [10.0, 0.5])


def test_the_fit_chooses_the_aggregate_that_ranks_validation_errors():
    # Each structure's largest error sits on its atom with the largest score, and the
    # structure's other atoms are noise: the maximum must win over the mean.
    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(50), 8)
    ood = rng.uniform(0.0, 1.0, size=groups.size)
    peak = rng.uniform(1.0, 5.0, size=50)
    ood[::8] = peak
    errors = np.full(groups.size, 0.01)
    errors[::8] = peak
    scoring = StructureScoring.fit(ood, groups, errors)
    assert scoring.aggregate == "max"
    assert scoring.validation_spearman["max"] == pytest.approx(1.0)
    assert scoring.flag_threshold == pytest.approx(np.quantile(peak, 0.99))


def test_the_saved_scoring_round_trips(calibrated, tmp_path):
    estimator, rng = calibrated, np.random.default_rng(103)
    path = tmp_path / "estimator.h5"
    estimator.save(path)
    loaded = LTAUEstimator.load(path)
    assert loaded.structure_scoring_ == estimator.structure_scoring_
    descriptors, groups = _planted(rng, 10, planted=1, far=8.0)
    before = estimator.per_structure(estimator.predict(descriptors, groups=groups), groups)
    after = loaded.per_structure(loaded.predict(descriptors, groups=groups), groups)
    np.testing.assert_array_equal(before.structure_ood_score, after.structure_ood_score)
    np.testing.assert_array_equal(before.ood_flag, after.ood_flag)
    with h5py.File(path, "r") as handle:  # plain JSON beside the calibration
        stored = json.loads(handle["structure_scoring"].attrs["scoring"])
    assert stored == estimator.structure_scoring_.to_dict()


def test_a_tampered_scoring_is_refused(calibrated, tmp_path):
    estimator = calibrated
    path = tmp_path / "estimator.h5"
    estimator.save(path)
    with h5py.File(path, "r+") as handle:
        data = json.loads(handle["structure_scoring"].attrs["scoring"])
        data["flag_threshold"] = 1e9
        handle["structure_scoring"].attrs["scoring"] = json.dumps(data)
    with pytest.raises(LTAUFileError):
        LTAUEstimator.load(path)


def test_an_estimator_without_validation_structures_uses_the_maximum():
    rng = np.random.default_rng(104)
    train, _, _ = _structures(rng, 50)
    trajectories = rng.lognormal(sigma=0.3, size=(train.shape[0], 10))
    plain = LTAUEstimator(5).fit(train, ErrorDistributions.from_errors(trajectories, n_bins=20))
    descriptors, errors, groups = _structures(rng, 5)
    plain.calibrate(descriptors, errors)  # no groups: no structure scoring
    assert plain.structure_scoring_ is None
    prediction = plain.predict(descriptors)
    summary = plain.per_structure(prediction, groups)
    np.testing.assert_array_equal(summary.structure_ood_score, summary.max_ood_score)
    assert summary.ood_flag is None


def test_bad_groups_and_bad_scorings(calibrated):
    estimator, rng = calibrated, np.random.default_rng(105)
    descriptors, _, groups = _structures(rng, 4)
    prediction = estimator.predict(descriptors)
    with pytest.raises(LTAUInputError, match="one label per query"):
        estimator.per_structure(prediction, groups[:-1])
    with pytest.raises(LTAUInputError, match="integer labels"):
        estimator.per_structure(prediction, groups.astype(float))
    with pytest.raises(LTAUInputError, match="LTAUPrediction"):
        estimator.per_structure(prediction.ood_score, groups)
    with pytest.raises(LTAUInputError, match="StructureScoring"):
        prediction.per_group(groups, {"aggregate": "max"})
    with pytest.raises(LTAUInputError, match="NaN"):
        StructureScoring().scores(np.array([1.0, np.nan]), np.array([0, 0]))
    with pytest.raises(LTAUInputError, match="non-empty"):
        StructureScoring().scores(np.array([]), np.array([], dtype=int))
    with pytest.raises(LTAUInputError, match="at least 3 structures"):
        StructureScoring.fit(np.ones(4), np.array([0, 0, 1, 1]), np.ones(4))
    with pytest.raises(LTAUInputError, match="entries"):
        StructureScoring.fit(np.ones(6), np.arange(6), np.ones(5))
    with pytest.raises(LTAUInputError, match="aggregate must be one of"):
        StructureScoring("median")
    with pytest.raises(LTAUInputError, match="level"):
        StructureScoring("quantile", 1.5)
    with pytest.raises(LTAUInputError, match="atom_threshold"):
        StructureScoring("count_above")
    with pytest.raises(LTAUInputError, match="flag_threshold"):
        StructureScoring(flag_threshold=float("nan"))
    with pytest.raises(LTAUInputError, match="keys"):
        StructureScoring.from_dict({"aggregate": "max"})


class _PositionsCalculator(LTAUCalculatorBase):
    """A stand-in force field whose per-atom descriptors are the atoms' positions."""

    @property
    def descriptor_size(self) -> int:
        return DIM

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        return ModelOutput(0.0, np.zeros((len(atoms), 3)), atoms.positions.astype(np.float32))


def test_the_calculator_reports_per_structure_results(calibrated, tmp_path):
    estimator, rng = calibrated, np.random.default_rng(106)
    inside = Atoms("H6", positions=rng.normal(scale=0.5, size=(ATOMS_PER_STRUCTURE, 3)))
    outside = inside.copy()
    outside.positions[2] = [9.0, 9.0, 9.0]
    results = {}
    for name, atoms in (("inside", inside), ("outside", outside)):
        atoms.calc = _PositionsCalculator(estimator, atol=0.2)
        atoms.get_forces()
        results[name] = dict(atoms.calc.results)
        assert set(PER_STRUCTURE_RESULTS) <= set(results[name])
    assert (
        results["outside"]["ltau_structure_ood_score"]
        > results["inside"]["ltau_structure_ood_score"]
    )
    assert results["outside"]["ltau_structure_ood_flag"] == 1.0
    assert results["inside"]["ltau_structure_ood_flag"] == 0.0
    assert results["outside"]["ltau_structure_max_expected_force_error"] == pytest.approx(
        results["outside"]["ltau_expected_force_error"].max()
    )
    ase.io.write(tmp_path / "out.xyz", outside, format="extxyz")
    read = ase.io.read(tmp_path / "out.xyz")
    assert read.info["ltau_structure_ood_score"] == pytest.approx(
        results["outside"]["ltau_structure_ood_score"]
    )
