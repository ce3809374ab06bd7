"""Distance widening: the fit recovers known exponents, the estimator's widened outputs equal a
direct computation, it survives save/load, and it fixes calibration when errors grow with the
distance to the training set."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from ltau_reference import reseal

from ltau import Bins, ErrorDistributions, LTAUEstimator, LTAUFileError, LTAUInputError
from ltau._io import sign_attributes
from ltau.calibration import MIN_TOTAL_EXPONENT, DistanceWidening, ErrorScaleCalibrator
from ltau.estimator import _ESTIMATOR_ATTRIBUTES_V1
from ltau.histogram import cdf_at
from ltau.histogram import quantiles as mixture_quantiles
from ltau.metrics import interval_coverage, miscalibration_area


def test_fit_recovers_known_exponents():
    rng = np.random.default_rng(3)
    n_groups, per_group = 400, 12
    groups = np.repeat(np.arange(n_groups), per_group)
    group_level = rng.lognormal(sigma=0.4, size=n_groups)[groups]
    ood = group_level * rng.lognormal(sigma=0.3, size=groups.size)
    group_score = (np.bincount(groups, ood) / np.bincount(groups))[groups]
    expected = rng.lognormal(sigma=0.5, size=groups.size)
    noise = rng.lognormal(sigma=0.2, size=groups.size)
    observed = expected * ood**0.5 * group_score**1.5 * noise
    widening = DistanceWidening.fit(ood, group_score, expected, observed)
    assert widening.exponent == pytest.approx(0.5, abs=0.05)
    assert widening.group_exponent == pytest.approx(1.5, abs=0.08)
    assert widening.reference == pytest.approx(np.median(ood))
    assert widening.lower == pytest.approx(np.quantile(ood, 0.05))
    assert widening.group_lower == pytest.approx(np.quantile(group_score, 0.05))
    factors = widening.factors(ood, group_score)
    direct = (np.maximum(ood, widening.lower) / np.median(ood)) ** widening.exponent * (
        np.maximum(group_score, widening.group_lower) / np.median(group_score)
    ) ** widening.group_exponent
    np.testing.assert_allclose(factors, direct, rtol=1e-12)
    # Below the validation scores' 5% quantile the power law is not extrapolated: a query at
    # distance 0 gets the factor of that quantile, not 0.
    at_zero = widening.factors(np.zeros(1), np.zeros(1))[0]
    assert at_zero == pytest.approx(
        widening.factors(np.r_[widening.lower], np.r_[widening.group_lower])[0]
    )
    assert at_zero > 0.05


def test_score_floor_skips_zero_scores():
    rng = np.random.default_rng(5)
    ood = np.r_[np.zeros(60), rng.uniform(0.5, 2.0, 440)]  # 12% of validation queries at 0
    expected = np.ones(500)
    observed = np.maximum(ood, 0.1) ** 0.5 * rng.lognormal(sigma=0.1, size=500)
    widening = DistanceWidening.fit(ood, None, expected, observed)
    assert widening.lower == pytest.approx(ood[60:].min())
    assert widening.factors(np.zeros(1), None)[0] == pytest.approx(
        (ood[60:].min() / widening.reference) ** widening.exponent
    )


def test_negative_dependence_gives_zero_exponent_and_no_groups_means_one_exponent():
    rng = np.random.default_rng(4)
    ood = rng.lognormal(size=500)
    expected = np.ones(500)
    shrinking = ood**-0.7 * rng.lognormal(sigma=0.1, size=500)
    widening = DistanceWidening.fit(ood, None, expected, shrinking, min_total_exponent=0.0)
    assert widening.exponent == 0.0 and widening.group_exponent == 0.0
    np.testing.assert_array_equal(widening.factors(ood, None), np.ones(500))
    growing = ood**0.8 * rng.lognormal(sigma=0.1, size=500)
    widening = DistanceWidening.fit(ood, None, expected, growing, min_total_exponent=0.0)
    assert widening.exponent == pytest.approx(0.8, abs=0.05)
    assert widening.group_exponent == 0.0
    # By default the total exponent is at least MIN_TOTAL_EXPONENT, whatever validation shows.
    for observed in (shrinking, growing):
        widening = DistanceWidening.fit(ood, None, expected, observed)
        assert widening.exponent == MIN_TOTAL_EXPONENT and widening.group_exponent == 0.0
    steeper = ood**1.6 * rng.lognormal(sigma=0.1, size=500)
    assert DistanceWidening.fit(ood, None, expected, steeper).exponent == pytest.approx(
        1.6, abs=0.05
    )


def test_the_total_exponent_floor_splits_between_atom_and_group_terms():
    """Below the floor, a and b are refitted by least squares on a + b = floor: a planted
    atom-only growth of 0.3 keeps a near 0.3 and gives b the rest; a growth that validation sees
    as none at all still gets the floor in total (the case of the EMT validation structures)."""
    rng = np.random.default_rng(8)
    groups = np.repeat(np.arange(300), 10)
    group_level = rng.lognormal(sigma=0.4, size=300)[groups]
    ood = group_level * rng.lognormal(sigma=0.5, size=groups.size)
    group_score = (np.bincount(groups, ood) / np.bincount(groups))[groups]
    expected = np.ones(groups.size)
    # Errors grow with the atom's own score relative to its structure's only: a + b = 0.3 - 0.3.
    observed = (ood / group_score) ** 0.3 * rng.lognormal(sigma=0.1, size=groups.size)
    plain = DistanceWidening.fit(ood, group_score, expected, observed, min_total_exponent=0.0)
    assert plain.exponent + plain.group_exponent < 0.5  # so the floor binds
    floored = DistanceWidening.fit(ood, group_score, expected, observed)
    assert floored.exponent + floored.group_exponent == pytest.approx(MIN_TOTAL_EXPONENT)
    assert floored.exponent == pytest.approx(0.3, abs=0.1)
    assert floored.group_exponent == pytest.approx(0.7, abs=0.1)
    with pytest.raises(LTAUInputError, match="min_total_exponent"):
        DistanceWidening.fit(ood, group_score, expected, observed, min_total_exponent=-1.0)


def test_widening_round_trips_and_refuses_bad_values():
    widening = DistanceWidening(0.5, 1.0, 0.2, 0.3, lower=0.05, group_lower=0.1)
    assert DistanceWidening.from_dict(widening.to_dict()) == widening
    # A widening stored before the score floors existed loads without them (no floor).
    old = {key: value for key, value in widening.to_dict().items() if "lower" not in key}
    loaded = DistanceWidening.from_dict(old)
    assert (loaded.lower, loaded.group_lower) == (0.0, 0.0)
    assert loaded.factors(np.r_[1e-6], None)[0] == pytest.approx((1e-6 / 0.2) ** 0.5 * 1e-6 / 0.3)
    bad_values = (
        {"exponent": -1.0},
        {"reference": 0.0},
        {"group_exponent": float("nan")},
        {"lower": -0.1},
    )
    for bad in bad_values:
        values = {**widening.to_dict(), **bad}
        with pytest.raises(LTAUInputError):
            DistanceWidening.from_dict(values)
    data = widening.to_dict()
    del data["reference"]
    with pytest.raises(LTAUInputError, match="lacks"):
        DistanceWidening.from_dict(data)
    with pytest.raises(LTAUInputError, match="kind"):
        DistanceWidening.from_dict({**widening.to_dict(), "kind": "isotonic"})
    with pytest.raises(LTAUInputError, match="shape"):
        DistanceWidening.fit(np.ones(5), None, np.ones(4), np.ones(5))
    with pytest.raises(LTAUInputError, match="finite"):
        DistanceWidening.fit(np.r_[np.ones(4), np.nan], None, np.ones(5), np.ones(5))
    with pytest.raises(LTAUInputError, match="3 or more positive"):
        DistanceWidening.fit(np.ones(5), None, np.ones(5), np.zeros(5))


@pytest.fixture(scope="module")
def shifted_problem():
    """Errors grow with |x| beyond what the training trajectories show, and more so for groups
    (structures) lying further out: a held-out set drawn wider than the training set."""
    rng = np.random.default_rng(21)
    dim, n_train = 3, 3000
    train = rng.normal(size=(n_train, dim)).astype(np.float32)
    errors = np.abs(rng.normal(size=(n_train, 30))) * 0.1
    distributions = ErrorDistributions.from_errors(errors, Bins.log(1e-4, 10.0, 80))

    def held_out(n_groups: int, spread: float):
        groups = np.repeat(np.arange(n_groups), 8)
        centre = rng.normal(scale=spread, size=(n_groups, dim))[groups]
        x = (centre + rng.normal(scale=0.3, size=(groups.size, dim))).astype(np.float32)
        radius = np.linalg.norm(centre, axis=1)
        observed = 0.1 * np.abs(rng.normal(size=groups.size)) * (1 + radius**2)
        return x, observed, groups

    return train, distributions, held_out(150, 1.0), held_out(150, 2.0)


def test_widened_predictions_equal_a_direct_computation(shifted_problem, tmp_path):
    train, distributions, (x_val, e_val, g_val), (x_test, e_test, g_test) = shifted_problem
    estimator = LTAUEstimator(20).fit(train, distributions)
    estimator.calibrate(x_val, e_val, groups=g_val)
    widening, calibrator, bins = estimator.widening_, estimator.calibrator_, estimator.bins
    assert widening.group_exponent > 0.3

    raw = estimator.predict(x_test, return_pdf=True, calibrated=False)
    mass = raw.pdf * bins.widths
    group_score = (np.bincount(g_test, raw.ood_score) / np.bincount(g_test))[g_test]
    factors = widening.factors(raw.ood_score, group_score)
    atol = [0.1, 0.5]
    out = estimator.predict(
        x_test, groups=g_test, atol=atol, quantiles=[0.5, 0.9], confidence=0.8, return_pdf=True
    )
    np.testing.assert_allclose(
        out.expected_error, calibrator.expected_error(mass, bins) * factors, rtol=1e-9
    )
    for column, value in enumerate(atol):
        direct = 1 - calibrator.cdf(mass, bins, value / factors)
        np.testing.assert_allclose(out.exceedance[:, column], direct, atol=1e-12)
    raw_levels = calibrator.raw_levels(np.array([0.5, 0.9]))
    direct_quantiles = mixture_quantiles(mass, bins, raw_levels) * calibrator.scale
    np.testing.assert_allclose(out.quantiles, direct_quantiles * factors[:, None], rtol=1e-9)
    lower, upper = calibrator.central_interval(mass, bins, 0.8)
    np.testing.assert_allclose(out.interval_lower, lower * factors, rtol=1e-9)
    np.testing.assert_allclose(out.interval_upper, upper * factors, rtol=1e-9)
    # The PDF is the widened, calibrated distribution binned on the calibrator's bins.
    out_mass = out.pdf * out.bins.widths
    np.testing.assert_allclose(out_mass.sum(axis=1), 1.0, atol=1e-12)
    inner = out.bins.edges[40]
    np.testing.assert_allclose(
        cdf_at(out_mass, out.bins, inner), calibrator.cdf(mass, bins, inner / factors), atol=1e-9
    )
    pit = estimator.probability_integral_transform(x_test, e_test, groups=g_test)
    np.testing.assert_allclose(pit, calibrator.pit(mass, bins, e_test / factors), atol=1e-12)

    # predict_from_neighbors and batching give the same result.
    distances, indices = estimator.kneighbors(x_test)
    again = estimator.predict_from_neighbors(distances, indices, groups=g_test, atol=atol)
    np.testing.assert_allclose(again.exceedance, out.exceedance, atol=1e-12)
    estimator.batch_size = 37
    batched = estimator.predict(x_test, groups=g_test, atol=atol)
    np.testing.assert_allclose(batched.exceedance, out.exceedance, atol=1e-12)
    np.testing.assert_allclose(batched.expected_error, out.expected_error, rtol=1e-12)

    path = tmp_path / "widened.h5"
    estimator.save(path)
    loaded = LTAUEstimator.load(path)
    assert loaded.widening_ == widening and widening.lower > 0 and widening.group_lower > 0
    reloaded = loaded.predict(x_test, groups=g_test, atol=atol)
    np.testing.assert_array_equal(reloaded.exceedance, batched.exceedance)


def test_widening_fixes_calibration_under_shift(shifted_problem):
    train, distributions, (x_val, e_val, g_val), (x_test, e_test, g_test) = shifted_problem
    plain = LTAUEstimator(20).fit(train, distributions).calibrate(x_val, e_val, widen=False)
    widened = LTAUEstimator(20).fit(train, distributions).calibrate(x_val, e_val, groups=g_val)
    results = {}
    for name, estimator in (("plain", plain), ("widened", widened)):
        prediction = estimator.predict(x_test, groups=g_test, confidence=0.9)
        pit = estimator.probability_integral_transform(x_test, e_test, groups=g_test)
        results[name] = (
            interval_coverage(e_test, prediction.interval_lower, prediction.interval_upper),
            miscalibration_area(pit),
        )
    assert results["plain"][0] < 0.75 and results["widened"][0] > 0.85
    assert results["widened"][1] < 0.5 * results["plain"][1]


def test_version_1_files_load_without_widening(small_data, tmp_path):
    estimator = LTAUEstimator(5).fit(small_data["train"], small_data["distributions"])
    path = tmp_path / "v1.h5"
    estimator.save(path)
    with h5py.File(path, "r+") as handle:
        del handle.attrs["widening"]
        handle.attrs["format_version"] = 1
        sign_attributes(handle, _ESTIMATOR_ATTRIBUTES_V1)
    reseal(path)
    loaded = LTAUEstimator.load(path)
    assert loaded.widening_ is None
    np.testing.assert_array_equal(
        loaded.predict(small_data["queries"]).expected_error,
        estimator.predict(small_data["queries"]).expected_error,
    )
    with h5py.File(path, "r+") as handle:
        handle.attrs["format_version"] = 2  # claims v2 but lacks the widening attribute
    reseal(path)
    with pytest.raises(LTAUFileError):
        LTAUEstimator.load(path)


def test_bad_groups_and_widen_flag(small_data):
    estimator = LTAUEstimator(5).fit(small_data["train"], small_data["distributions"])
    queries = small_data["queries"]
    with pytest.raises(LTAUInputError, match="one label per query"):
        estimator.predict(queries, groups=np.zeros(3, dtype=int))
    with pytest.raises(LTAUInputError, match="integer labels"):
        estimator.predict(queries, groups=np.zeros(len(queries)))
    errors = np.abs(queries[:, 0])
    with pytest.raises(LTAUInputError, match="widen must be True or False"):
        estimator.calibrate(queries, errors, widen="yes")
    with pytest.raises(LTAUInputError, match="integer labels"):
        estimator.calibrate(queries, errors, groups=np.zeros(len(queries)))
    distances, indices = estimator.kneighbors(queries)
    with pytest.raises(LTAUInputError, match="one label per query"):
        estimator.predict_from_neighbors(distances, indices, groups=np.zeros(2, dtype=int))


def test_a_query_on_a_training_point_is_not_made_overconfident(shifted_problem):
    """Distance 0 (a query that coincides with a training sample) used to give a widening
    factor of ~0 and an expected error orders of magnitude below anything recorded."""
    train, distributions, (x_val, e_val, g_val), _ = shifted_problem
    estimator = LTAUEstimator(20).fit(train, distributions).calibrate(x_val, e_val, groups=g_val)
    queries = train[:50]
    groups = np.repeat(np.arange(5), 10)
    out = estimator.predict(queries, groups=groups, quantiles=[0.05, 0.5])
    assert np.all(out.ood_score > 0)  # k = 20 neighbours: only one of them is the point itself
    distances, indices = estimator.kneighbors(queries)
    distances[:] = 0.0  # every neighbour coincides with the query
    same = estimator.predict_from_neighbors(distances, indices, groups=groups, quantiles=[0.5])
    assert np.all(same.ood_score == 0)
    floor = estimator.widening_.factors(np.zeros(1), np.zeros(1))[0]
    raw = estimator.predict_from_neighbors(distances, indices, calibrated=False)
    calibrated = estimator.calibrator_.expected_error(
        estimator._mixture(estimator.neighbor_weights(distances), indices), estimator.bins
    )
    np.testing.assert_allclose(same.expected_error, calibrated * floor, rtol=1e-9)
    # Not collapsed: at least what the neighbours' distributions resolve, and not flagged.
    assert np.all(same.expected_error >= same.resolution)
    assert not same.below_resolution.any()
    assert np.all(same.quantiles[:, 0] > 0.1 * raw.expected_error)


def test_resolution_is_the_lowest_recorded_bin_and_flags_overconfidence():
    bins = Bins.log(1e-3, 10.0, 40)
    errors = np.r_[np.full(20, 0.5), np.full(20, 0.02)].reshape(2, 20)
    errors[1, 0] = 0.004
    distributions = ErrorDistributions.from_errors(errors, bins)
    lowest = bins.edges[bins.assign(np.r_[0.5, 0.004])[0]]
    np.testing.assert_array_equal(distributions.resolution(), lowest)
    estimator = LTAUEstimator(2).fit(np.array([[0.0], [1.0]]), distributions)
    out = estimator.predict(np.array([[0.2]]))
    assert out.resolution[0] == lowest[1] and not out.below_resolution[0]
    # Without calibration the mixture's mean is never below its lowest occupied bin; a factor
    # far below 1 on the error axis pushes it there, and the prediction says so.
    estimator.calibrator_ = ErrorScaleCalibrator.from_dict(
        {
            "kind": "error_scale",
            "format_version": 1,
            "bounds": [1e-4, 1.0],
            "levels": None,
            "scale": 1e-3,
            "miscalibration_area_before": 0.0,
            "miscalibration_area_after": 0.0,
            "n_fit": 1,
        }
    )
    squeezed = estimator.predict(np.array([[0.2]]))
    assert squeezed.below_resolution[0]
    assert squeezed.columns()["below_resolution"][0]


def test_the_estimator_passes_its_widening_floor_on(shifted_problem):
    train, distributions, (x_val, e_val, g_val), _ = shifted_problem
    estimator = LTAUEstimator(20).fit(train, distributions)
    raw = estimator.predict(x_val, groups=g_val, calibrated=False)
    group_scores = (np.bincount(g_val, raw.ood_score) / np.bincount(g_val))[g_val]
    for floor in (0.0, 3.0):
        estimator.calibrate(x_val, e_val, groups=g_val, widening_floor=floor)
        direct = DistanceWidening.fit(
            raw.ood_score, group_scores, raw.expected_error, e_val, min_total_exponent=floor
        )
        assert estimator.widening_ == direct
    assert estimator.widening_.exponent + estimator.widening_.group_exponent == pytest.approx(3.0)
    with pytest.raises(LTAUInputError, match="min_total_exponent"):
        estimator.calibrate(x_val, e_val, groups=g_val, widening_floor=-0.5)
