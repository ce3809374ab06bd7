"""Choosing k, the burn-in and the distance scale on validation data (``ltau.selection``)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from ltau import ErrorDistributions, ErrorLog, ErrorRecorder, LTAUEstimator, metrics
from ltau.atomistic.pipeline import run_groups, split_validation
from ltau.atomistic.structures import LabelledStructures
from ltau.exceptions import LTAUInputError
from ltau.selection import (
    CV_FOLDS,
    CV_REPEATS,
    CV_SEED,
    burn_in_candidates,
    choose_configuration,
)

N_EPOCHS = 8


def error_scale(x: np.ndarray) -> np.ndarray:
    return np.exp(1.5 * x[:, 0])


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Training samples whose first half of epochs is noise unrelated to their error scale,
    logged by two models; validation errors follow the scale; structures of 10 samples."""
    rng = np.random.default_rng(4)
    x_train = rng.uniform(-1, 1, (400, 2)).astype(np.float32)
    path = tmp_path_factory.mktemp("selection") / "log.h5"
    recorder = ErrorRecorder(400, log_path=path)
    for epoch in range(N_EPOCHS):
        for member in (0, 1):
            if epoch < N_EPOCHS // 2:
                errors = np.exp(rng.uniform(-2, 2, 400)) * np.abs(rng.normal(size=400))
            else:
                errors = error_scale(x_train) * np.abs(rng.normal(size=400))
            recorder.record_epoch(errors + 1e-6, member=member)
    x_val = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
    val_errors = error_scale(x_val) * np.abs(rng.normal(size=200))
    groups = np.repeat(np.arange(20), 10)
    return recorder, path, x_train, x_val, val_errors, groups


def test_burn_in_candidates_share_the_bins_of_the_whole_log(problem):
    recorder, path, *_ = problem
    with ErrorLog(path) as log:
        candidates = burn_in_candidates(log, n_bins=40)
        errors, members = log.to_array(), log.members
    assert sorted(candidates) == [0, 2, 4, 6]  # 0, 25, 50, 75% of 8 epochs per model
    bins = candidates[0].bins
    epoch = np.array([np.count_nonzero(members[:row] == members[row]) for row in range(16)])
    for skip, distributions in candidates.items():
        assert distributions.bins == bins
        want = ErrorDistributions.from_errors(errors[epoch >= skip].T, bins)
        np.testing.assert_array_equal(distributions.counts, want.counts)
    with ErrorLog(path) as log:
        one_model = burn_in_candidates(log, n_bins=40, members=[1])
    mine = members == 1
    assert one_model[0].bins == ErrorDistributions.from_errors(errors[mine].T, n_bins=40).bins
    for skip, distributions in one_model.items():
        want = ErrorDistributions.from_errors(errors[mine & (epoch >= skip)].T, one_model[0].bins)
        np.testing.assert_array_equal(distributions.counts, want.counts)
    from_recorder = burn_in_candidates(recorder, n_bins=40)
    for skip in candidates:
        np.testing.assert_array_equal(from_recorder[skip].counts, candidates[skip].counts)


def test_the_cross_validated_crps_is_scored_on_held_out_structures(problem):
    _, path, x_train, x_val, val_errors, groups = problem
    with ErrorLog(path) as log:
        candidates = burn_in_candidates(log, n_bins=40)
    chosen = choose_configuration(
        x_train, candidates, x_val, val_errors, groups, k_candidates=(5, 20)
    )
    assert set(chosen["cv_crps"]) == {
        f"skip_epochs={s},k={k},distance_scale={d}"
        for s in (0, 2, 4, 6)
        for k in (5, 20)
        for d in ("absolute", "local")
    }
    best = min(chosen["cv_crps"], key=chosen["cv_crps"].get)
    assert best == (
        f"skip_epochs={chosen['skip_epochs']},k={chosen['k']},"
        f"distance_scale={chosen['distance_scale']}"
    )
    # The noise epochs carry no information about the validation errors: a burn-in wins.
    assert chosen["skip_epochs"] >= 4
    scores = chosen["cv_crps"]
    assert (
        scores["skip_epochs=4,k=20,distance_scale=absolute"]
        < (scores["skip_epochs=0,k=20,distance_scale=absolute"])
    )

    # Direct recomputation of one entry: folds are whole structures.
    for scale in ("absolute", "local"):
        score = _cv_crps(x_train, candidates[2], 5, x_val, val_errors, groups, groups, scale)
        key = f"skip_epochs=2,k=5,distance_scale={scale}"
        assert scores[key] == pytest.approx(score, rel=1e-12)


def test_folds_keep_whole_runs_when_given(problem):
    _, path, x_train, x_val, val_errors, groups = problem
    runs = groups // 4  # 5 runs of 4 structures
    with ErrorLog(path) as log:
        candidates = {0: log.distributions(n_bins=40)}
    chosen = choose_configuration(
        x_train, candidates, x_val, val_errors, groups, k_candidates=(10,), fold_groups=runs
    )
    score = _cv_crps(x_train, candidates[0], 10, x_val, val_errors, groups, runs, "local")
    key = "skip_epochs=0,k=10,distance_scale=local"
    assert chosen["cv_crps"][key] == pytest.approx(score, rel=1e-12)
    # Fewer runs than folds: folds of structures, as without runs.
    one_run = choose_configuration(
        x_train, candidates, x_val, val_errors, groups, k_candidates=(10,), fold_groups=0 * runs
    )
    plain = choose_configuration(x_train, candidates, x_val, val_errors, groups, k_candidates=(10,))
    assert one_run["cv_crps"] == plain["cv_crps"]
    with pytest.raises(LTAUInputError, match="group"):
        choose_configuration(x_train, candidates, x_val, val_errors, groups, fold_groups=runs[:5])


def _cv_crps(x_train, distributions, k, x_val, errors, groups, units, scale) -> float:
    """CV-CRPS computed directly: folds of whole ``units``, reshuffled CV_REPEATS times from
    CV_SEED; the mean over all held-out atoms of all repeats (``scale``: distance scale)."""
    rng = np.random.default_rng(CV_SEED)
    total = 0.0
    for _ in range(CV_REPEATS):
        order = rng.permutation(np.unique(units))
        fold_of = {u: i % CV_FOLDS for i, u in enumerate(order)}
        folds = np.array([fold_of[u] for u in units])
        for fold in range(CV_FOLDS):
            held = folds == fold
            assert np.intersect1d(units[held], units[~held]).size == 0
            estimator = LTAUEstimator(k, distance_scale=scale).fit(x_train, distributions)
            estimator.calibrate(x_val[~held], errors[~held], groups=groups[~held])
            prediction = estimator.predict(x_val[held], groups=groups[held], return_pdf=True)
            mass = prediction.pdf * prediction.bins.widths
            total += metrics.crps_histogram(mass, prediction.bins, errors[held]) * held.sum()
    return total / (errors.size * CV_REPEATS)


def test_choosing_needs_two_samples_and_a_k_that_fits(problem):
    _, path, x_train, x_val, val_errors, groups = problem
    with ErrorLog(path) as log:
        candidates = {0: log.distributions(n_bins=40)}
    with pytest.raises(LTAUInputError, match="at least 2 validation samples; got 1"):
        choose_configuration(x_train, candidates, x_val[:1], val_errors[:1], None)
    # One structure only: folds of single atoms, the same as without groups.
    one = choose_configuration(x_train, candidates, x_val, val_errors, np.zeros(200, int))
    none = choose_configuration(x_train, candidates, x_val, val_errors, None)
    assert (one["k"], one["skip_epochs"]) == (none["k"], none["skip_epochs"])
    only_local = choose_configuration(
        x_train, candidates, x_val, val_errors, groups, distance_scales=("local",)
    )
    assert only_local["distance_scale"] == "local"
    assert all(key.endswith("distance_scale=local") for key in only_local["cv_crps"])
    for scales in ("local", ()):
        with pytest.raises(LTAUInputError, match="distance_scales must be a non-empty tuple"):
            choose_configuration(
                x_train, candidates, x_val, val_errors, groups, distance_scales=scales
            )
    with pytest.raises(LTAUInputError, match="distance_scale must be 'absolute' or 'local'"):
        choose_configuration(
            x_train, candidates, x_val, val_errors, groups, distance_scales=("relative",)
        )
    with pytest.raises(LTAUInputError, match="no k among"):
        choose_configuration(x_train, candidates, x_val, val_errors, groups, k_candidates=(500,))
    with pytest.raises(LTAUInputError, match="group"):
        choose_configuration(x_train, candidates, x_val, val_errors, groups[:10])
    with pytest.raises(LTAUInputError):
        choose_configuration(x_train, candidates, x_val, np.full(200, np.nan), groups)
    # Without groups the folds are made of single samples.
    chosen = choose_configuration(x_train, candidates, x_val, val_errors, None, k_candidates=(20,))
    assert chosen["k"] == 20 and chosen["skip_epochs"] == 0


def test_burn_in_candidates_need_a_logged_epoch(tmp_path):
    recorder = ErrorRecorder(5, log_path=tmp_path / "log.h5")
    with pytest.raises(LTAUInputError, match="no completed epoch for these models"):
        burn_in_candidates(recorder)


def _frames(infos: list[dict]) -> LabelledStructures:
    atoms = []
    for position, info in enumerate(infos):
        frame = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * position]])
        frame.info.update(info)
        atoms.append(frame)
    return LabelledStructures(atoms)


def _positions(structures: LabelledStructures) -> list[float]:
    """Each frame's bond length, which identifies it (see :func:`_frames`)."""
    return [round(float(a.get_distance(0, 1)), 2) for a in structures.atoms]


def test_without_group_keys_the_split_is_by_configuration():
    structures = _frames([{"config_type": "md"}] * 40)
    fit, validation = split_validation(structures, 0.1, seed=3)
    assert len(validation.atoms) == 4 and len(fit.atoms) == 36
    # The held-out configurations are the first four of the seeded permutation.
    held = np.sort(np.random.default_rng(3).permutation(40)[:4])
    assert _positions(validation) == [round(0.7 + 0.01 * i, 2) for i in held]
    assert sorted(_positions(fit) + _positions(validation)) == _positions(structures)


def test_frames_of_one_run_stay_on_one_side_of_the_split():
    infos = [{"config_type": "md", "trajectory": i // 4} for i in range(40)]
    infos += [{"config_type": "relaxation", "relaxation": i // 5} for i in range(20)]
    # Same trajectory number, other config_type: another run.
    infos += [{"config_type": "hot_md", "trajectory": 0} for _ in range(4)]
    structures = _frames(infos)
    groups = run_groups(structures)
    assert groups.max() + 1 == 10 + 4 + 1
    np.testing.assert_array_equal(groups[:8], [0, 0, 0, 0, 1, 1, 1, 1])
    assert groups[-1] != groups[0]
    for seed in range(5):
        fit, validation = split_validation(structures, 0.2, seed=seed)
        fit_runs = {tuple(sorted(a.info.items())) for a in fit.atoms}
        validation_runs = {tuple(sorted(a.info.items())) for a in validation.atoms}
        assert not fit_runs & validation_runs
        assert len(fit.atoms) + len(validation.atoms) == 64
        # Whole groups are added until 20% is reached, and not one more.
        wanted = round(0.2 * 64)
        assert wanted <= len(validation.atoms) < wanted + 5


def test_bad_validation_splits_are_refused():
    structures = _frames([{"trajectory": 0}] * 10)
    with pytest.raises(LTAUInputError, match="1 groups"):
        split_validation(structures, 0.1, seed=0)
    for fraction in (0, 1, -0.5, float("nan")):
        with pytest.raises(LTAUInputError, match="validation_fraction"):
            split_validation(_frames([{}] * 10), fraction, seed=0)
    with pytest.raises(LTAUInputError, match="group_keys"):
        split_validation(_frames([{}] * 10), 0.1, seed=0, group_keys="trajectory")


def test_the_splitter_is_injectable_and_checked():
    from sklearn.model_selection import GroupKFold

    from ltau.selection import RepeatedGroupFolds

    groups = np.repeat(np.arange(6), 2)
    splits = list(RepeatedGroupFolds(n_folds=3, n_repeats=2, seed=1).split(groups, None, groups))
    assert len(splits) == 6
    for train, test in splits:  # a group never straddles a split; every sample is used once
        assert not set(groups[train]) & set(groups[test])
        assert sorted(np.r_[train, test]) == list(range(12))
    with pytest.raises(LTAUInputError, match="at least 2"):
        RepeatedGroupFolds(n_folds=1)
    with pytest.raises(LTAUInputError, match="at least 3 groups"):
        list(RepeatedGroupFolds(n_folds=3).split(np.arange(4), None, np.repeat([0, 1], 2)))
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 3)).astype(np.float32)
    candidates = {0: ErrorDistributions.from_errors(rng.uniform(0.01, 1, (60, 6)), n_bins=10)}
    validation = rng.normal(size=(20, 3)).astype(np.float32)
    errors = rng.uniform(0.01, 1.0, 20)
    chosen = choose_configuration(
        train, candidates, validation, errors, None, k_candidates=(5,),
        distance_scales=("absolute",), cv=GroupKFold(n_splits=2),
    )  # fmt: skip
    assert chosen["k"] == 5 and len(chosen["cv_crps"]) == 1
    with pytest.raises(LTAUInputError, match="split"):
        choose_configuration(train, candidates, validation, errors, None, cv=object())


def test_the_shared_search_gives_the_per_setting_scores_and_choice(problem):
    """One search at the largest k, sliced for every setting and fold, scores every setting
    as its own search, fit and calibration do, and so chooses the same configuration."""
    _, path, x_train, x_val, val_errors, groups = problem
    with ErrorLog(path) as log:
        candidates = burn_in_candidates(log, n_bins=40)
    chosen = choose_configuration(
        x_train, candidates, x_val, val_errors, groups, k_candidates=(5, 20, 1000)
    )
    reference = {
        f"skip_epochs={skip},k={k},distance_scale={scale}": _cv_crps(
            x_train, distributions, k, x_val, val_errors, groups, groups, scale
        )
        for skip, distributions in sorted(candidates.items())
        for k in (5, 20)
        for scale in ("absolute", "local")
    }
    assert chosen["cv_crps"].keys() == reference.keys()
    for key, score in reference.items():
        assert chosen["cv_crps"][key] == pytest.approx(score, rel=1e-12), key
    best = min(reference, key=reference.get)
    assert best == (
        f"skip_epochs={chosen['skip_epochs']},k={chosen['k']},"
        f"distance_scale={chosen['distance_scale']}"
    )
