"""Recalibration maps: recovery of known miscalibration, consistency, persistence, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltau import metrics
from ltau.calibration import (
    CALIBRATION_METHODS,
    ErrorScaleCalibrator,
    IsotonicCalibrator,
    calibrator_from_dict,
    make_calibrator,
)
from ltau.exceptions import LTAUInputError, NotFittedError
from ltau.histogram import (
    Bins,
    cdf_at,
    central_interval,
    exceedance_probability,
    expected_value,
    quantiles,
)

BINS = Bins.log(0.01, 20.0, 40)
TRUE_SCALE = 2.5


def predicted_mass(rng: np.random.Generator, n: int, bins: Bins = BINS) -> np.ndarray:
    """Bumps in log-error space of varying location and width, like kNN mixtures."""
    location = rng.uniform(np.log(0.05), np.log(1.0), n)
    width = rng.uniform(0.3, 0.8, n)
    log_centers = np.log(bins.centers)
    weights = np.exp(-0.5 * ((log_centers[None, :] - location[:, None]) / width[:, None]) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def row_quantiles(mass: np.ndarray, bins: Bins, levels: np.ndarray) -> np.ndarray:
    """Each row's quantile at its own level (inverse of the piecewise-linear CDF)."""
    cdf = np.concatenate([np.zeros((mass.shape[0], 1)), np.cumsum(mass, axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    return np.array([np.interp(u, c, bins.edges) for u, c in zip(levels, cdf, strict=True)])


def draw_errors(rng, mass, scale=1.0, power=1.0):
    """True errors whose raw PIT ``F(y / scale)`` has CDF ``p^power`` (uniform for 1)."""
    levels = rng.uniform(size=mass.shape[0]) ** (1.0 / power)
    return scale * row_quantiles(mass, BINS, levels)


@pytest.fixture(scope="module")
def scaled_data():
    rng = np.random.default_rng(0)
    validation = predicted_mass(rng, 3000)
    test = predicted_mass(rng, 3000)
    return (
        validation,
        draw_errors(rng, validation, TRUE_SCALE),
        test,
        draw_errors(rng, test, TRUE_SCALE),
    )


@pytest.fixture(scope="module")
def scale_calibrator(scaled_data):
    validation, observed, _, _ = scaled_data
    return ErrorScaleCalibrator().fit(validation, BINS, observed)


# ------------------------------------------------------------------------ error scale
def test_scale_recovers_the_true_factor(scaled_data, scale_calibrator):
    _, _, test, test_observed = scaled_data
    # 3000 points: the PIT-based estimate is within 4% of the true factor
    assert scale_calibrator.scale == pytest.approx(TRUE_SCALE, rel=0.04)
    assert scale_calibrator.miscalibration_area_before_ > 0.3
    assert scale_calibrator.miscalibration_area_after_ < 0.01
    raw = metrics.miscalibration_area(
        metrics.probability_integral_transform(test, BINS, test_observed)
    )
    calibrated = metrics.miscalibration_area(scale_calibrator.pit(test, BINS, test_observed))
    assert raw > 0.3 and calibrated < 0.02


def test_scale_below_one_is_recovered():
    rng = np.random.default_rng(1)
    mass = predicted_mass(rng, 2000)
    calibrator = ErrorScaleCalibrator().fit(mass, BINS, draw_errors(rng, mass, 0.4))
    assert calibrator.scale == pytest.approx(0.4, rel=0.04)


def test_scale_calibrated_statistics_follow_the_scaled_distribution(scaled_data, scale_calibrator):
    _, _, test, _ = scaled_data
    mass, s = test[:50], scale_calibrator.scale
    levels = np.array([0.05, 0.5, 0.95])
    np.testing.assert_allclose(
        scale_calibrator.expected_error(mass, BINS), s * expected_value(mass, BINS)
    )
    np.testing.assert_allclose(
        scale_calibrator.expected_error_from_raw(expected_value(mass, BINS)),
        s * expected_value(mass, BINS),
    )
    np.testing.assert_allclose(
        scale_calibrator.quantiles(mass, BINS, levels), s * quantiles(mass, BINS, levels)
    )
    np.testing.assert_allclose(
        scale_calibrator.quantiles(mass, BINS, 0.5), s * quantiles(mass, BINS, 0.5)
    )
    for atol in (0.1, 1.0):
        np.testing.assert_allclose(
            scale_calibrator.exceedance(mass, BINS, atol),
            exceedance_probability(mass, BINS, atol / s),
        )
        np.testing.assert_allclose(scale_calibrator.raw_tolerance(atol), atol / s)
    assert scale_calibrator.exceedance(mass, BINS, [0.1, 1.0]).shape == (50, 2)
    values = np.linspace(0.01, 5, 50)
    np.testing.assert_allclose(
        scale_calibrator.cdf(mass, BINS, values), cdf_at(mass, BINS, values / s)
    )
    lower, upper = scale_calibrator.central_interval(mass, BINS, 0.9)
    raw_lower, raw_upper = central_interval(mass, BINS, 0.9)
    np.testing.assert_allclose(lower, s * raw_lower)
    np.testing.assert_allclose(upper, s * raw_upper)
    rebinned, scaled_bins = scale_calibrator.rebinned(mass, BINS)
    np.testing.assert_allclose(rebinned, mass, atol=1e-15)
    np.testing.assert_allclose(scaled_bins.edges, s * BINS.edges)
    assert scaled_bins.spacing == "log"
    # the rebinned distribution gives the same statistics with the library's functions
    np.testing.assert_allclose(
        expected_value(rebinned, scaled_bins), scale_calibrator.expected_error(mass, BINS)
    )


def test_scale_round_trip_through_json(scaled_data, scale_calibrator):
    _, _, test, test_observed = scaled_data
    data = json.loads(json.dumps(scale_calibrator.to_dict()))
    restored = ErrorScaleCalibrator.from_dict(data)
    assert restored.scale == scale_calibrator.scale
    assert isinstance(calibrator_from_dict(data), ErrorScaleCalibrator)
    np.testing.assert_array_equal(
        restored.pit(test, BINS, test_observed), scale_calibrator.pit(test, BINS, test_observed)
    )
    assert restored.to_dict() == scale_calibrator.to_dict()


def test_scale_warns_when_the_optimum_is_on_a_bound(scaled_data):
    validation, observed, _, _ = scaled_data
    with pytest.warns(RuntimeWarning, match="limited by the search bounds"):
        calibrator = ErrorScaleCalibrator(bounds=(0.1, 1.5)).fit(validation, BINS, observed)
    assert calibrator.scale == pytest.approx(1.5, rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    scale=st.floats(0.05, 20.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_scale_cdf_quantile_and_exceedance_agree(scale, seed):
    rng = np.random.default_rng(seed)
    mass = predicted_mass(rng, 5)
    calibrator = ErrorScaleCalibrator.from_dict(
        {
            "kind": "error_scale",
            "format_version": 1,
            "bounds": [1e-3, 1e3],
            "levels": None,
            "scale": scale,
            "miscalibration_area_before": 0.0,
            "miscalibration_area_after": 0.0,
            "n_fit": 1,
        }
    )
    median = calibrator.quantiles(mass, BINS, 0.5)
    np.testing.assert_allclose(calibrator.cdf(mass, BINS, median), 0.5, atol=1e-9)
    np.testing.assert_allclose(
        calibrator.exceedance(mass, BINS, 0.3),
        1 - calibrator.cdf(mass, BINS, 0.3),
        rtol=1e-7,
        atol=1e-12,
    )


# ------------------------------------------------------------------------------ isotonic
@pytest.fixture(scope="module")
def power_data():
    """Shape miscalibration no scale can fix: raw PIT values have CDF p^3."""
    rng = np.random.default_rng(2)
    validation = predicted_mass(rng, 3000)
    test = predicted_mass(rng, 3000)
    return (
        validation,
        draw_errors(rng, validation, power=3.0),
        test,
        draw_errors(rng, test, power=3.0),
    )


@pytest.mark.parametrize("fit_scale", [False, True])
def test_isotonic_uniformizes_validation_and_improves_held_out(power_data, fit_scale):
    validation, observed, test, test_observed = power_data
    calibrator = IsotonicCalibrator(fit_scale=fit_scale).fit(validation, BINS, observed)
    validation_pit = calibrator.pit(validation, BINS, observed)
    assert metrics.miscalibration_area(validation_pit) < 2e-3
    assert calibrator.miscalibration_area_before_ > 0.15
    assert calibrator.miscalibration_area_after_ == pytest.approx(
        metrics.miscalibration_area(validation_pit)
    )
    raw = metrics.miscalibration_area(
        metrics.probability_integral_transform(test, BINS, test_observed)
    )
    calibrated = metrics.miscalibration_area(calibrator.pit(test, BINS, test_observed))
    assert raw > 0.15
    assert calibrated < 0.02
    # the learned level map approximates the true one, p -> p^3
    grid = np.linspace(0.05, 0.95, 19)
    if not fit_scale:
        np.testing.assert_allclose(calibrator.level_map(grid), grid**3, atol=0.03)


def test_isotonic_recovers_a_pure_scale_with_and_without_fitting_it(scaled_data):
    validation, observed, test, test_observed = scaled_data
    for fit_scale in (False, True):
        calibrator = IsotonicCalibrator(fit_scale=fit_scale).fit(validation, BINS, observed)
        assert metrics.miscalibration_area(calibrator.pit(test, BINS, test_observed)) < 0.02
    assert calibrator.scale == pytest.approx(TRUE_SCALE, rel=0.04)


@pytest.fixture(scope="module")
def isotonic_calibrator(power_data):
    validation, observed, _, _ = power_data
    rng = np.random.default_rng(3)
    # rescale the observations so that both a scale and a level map are fitted
    return IsotonicCalibrator().fit(validation, BINS, 1.7 * observed * rng.uniform(0.9, 1.1, 3000))


def test_isotonic_quantiles_invert_the_calibrated_cdf(power_data, isotonic_calibrator):
    _, _, test, _ = power_data
    mass = test[:40]
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    values = isotonic_calibrator.quantiles(mass, BINS, levels)
    assert values.shape == (40, 5)
    assert np.all(np.diff(values, axis=1) > 0)
    for column, level in enumerate(levels):
        np.testing.assert_allclose(
            isotonic_calibrator.cdf(mass, BINS, values[:, column]), level, atol=1e-9
        )
    lower, upper = isotonic_calibrator.central_interval(mass, BINS, 0.9)
    np.testing.assert_allclose(lower, values[:, 0])
    np.testing.assert_allclose(upper, values[:, 4])
    # the estimator's scalar path: raw quantiles at the raw levels, then times s
    raw = quantiles(mass, BINS, isotonic_calibrator.raw_levels(levels))
    np.testing.assert_allclose(isotonic_calibrator.quantiles_from_raw(raw), values)


def test_isotonic_exceedance_is_one_minus_the_calibrated_cdf(power_data, isotonic_calibrator):
    _, _, test, _ = power_data
    mass = test[:40]
    atol = np.array([0.05, 0.3, 2.0])
    exceedance = isotonic_calibrator.exceedance(mass, BINS, atol)
    for column, value in enumerate(atol):
        np.testing.assert_allclose(
            exceedance[:, column], 1 - isotonic_calibrator.cdf(mass, BINS, value), atol=1e-12
        )
    raw = exceedance_probability(mass, BINS, isotonic_calibrator.raw_tolerance(atol))
    np.testing.assert_allclose(isotonic_calibrator.exceedance_from_raw(raw), exceedance)


def test_isotonic_expected_error_matches_numeric_integration(power_data, isotonic_calibrator):
    _, _, test, _ = power_data
    mass = test[:5]
    x = np.linspace(0.0, isotonic_calibrator.scale * BINS.edges[-1], 400_001)
    numeric = [
        np.trapezoid(1 - isotonic_calibrator.cdf(np.repeat(row[None], x.size, 0), BINS, x), x)
        for row in mass
    ]
    np.testing.assert_allclose(isotonic_calibrator.expected_error(mass, BINS), numeric, rtol=1e-5)
    # the rebinned histogram has the exact bin probabilities, hence a close mean
    rebinned, scaled_bins = isotonic_calibrator.rebinned(mass, BINS)
    np.testing.assert_allclose(rebinned.sum(axis=1), 1.0)
    np.testing.assert_allclose(expected_value(rebinned, scaled_bins), numeric, rtol=0.05)


def identity_isotonic(**overrides) -> IsotonicCalibrator:
    data = {
        "kind": "isotonic",
        "format_version": 1,
        "fit_scale": False,
        "scale_bounds": [1e-3, 1e3],
        "levels": None,
        "max_knots": 1000,
        "scale": 1.0,
        "level_knots": [0.0, 1.0],
        "frequency_knots": [0.0, 1.0],
        "miscalibration_area_before": 0.0,
        "miscalibration_area_after": 0.0,
        "n_fit": 1,
    }
    return IsotonicCalibrator.from_dict({**data, **overrides})


def test_identity_isotonic_map_reproduces_raw_statistics():
    rng = np.random.default_rng(4)
    mass = predicted_mass(rng, 30)
    calibrator = identity_isotonic()
    np.testing.assert_allclose(
        calibrator.expected_error(mass, BINS), expected_value(mass, BINS), rtol=1e-12
    )
    np.testing.assert_allclose(
        calibrator.quantiles(mass, BINS, [0.1, 0.9]), quantiles(mass, BINS, [0.1, 0.9])
    )
    np.testing.assert_allclose(
        calibrator.exceedance(mass, BINS, 0.2), exceedance_probability(mass, BINS, 0.2)
    )


def test_flat_parts_of_the_level_map_invert_to_their_left_end():
    calibrator = identity_isotonic(
        level_knots=[0.0, 0.5, 0.7, 1.0], frequency_knots=[0.0, 0.5, 0.5, 1.0]
    )
    np.testing.assert_allclose(calibrator.level_map([0.25, 0.6, 0.85]), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(calibrator.raw_levels([0.25, 0.5, 0.6, 1.0]), [0.25, 0.5, 0.76, 1.0])
    assert calibrator.raw_levels(0.5).shape == ()


def test_pit_values_outside_the_support_keep_the_map_anchored():
    rng = np.random.default_rng(5)
    mass = predicted_mass(rng, 1000)
    observed = draw_errors(rng, mass)
    observed[:100] = 0.0  # below the first edge: PIT 0
    observed[100:150] = 100.0  # above the last edge: PIT 1
    calibrator = IsotonicCalibrator(fit_scale=False).fit(mass, BINS, observed)
    knots, frequencies = calibrator.level_knots_, calibrator.frequency_knots_
    assert (knots[0], frequencies[0], knots[-1], frequencies[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(knots) > 0) and np.all(np.diff(frequencies) >= 0)
    # the first interior knot carries the 10% of observations at PIT 0
    assert frequencies[1] == pytest.approx(0.101)
    assert frequencies[-2] == pytest.approx(0.95)


def test_max_knots_thins_the_map_with_small_change(power_data):
    validation, observed, _, _ = power_data
    full = IsotonicCalibrator(fit_scale=False).fit(validation, BINS, observed)
    thin = IsotonicCalibrator(fit_scale=False, max_knots=20).fit(validation, BINS, observed)
    assert thin.level_knots_.size <= 20
    grid = np.linspace(0, 1, 1001)
    assert np.max(np.abs(thin.level_map(grid) - full.level_map(grid))) < 1.5 / 18


def test_isotonic_round_trip_through_json(power_data, isotonic_calibrator):
    _, _, test, _ = power_data
    data = json.loads(json.dumps(isotonic_calibrator.to_dict()))
    restored = calibrator_from_dict(data)
    assert isinstance(restored, IsotonicCalibrator)
    assert restored.to_dict() == isotonic_calibrator.to_dict()
    np.testing.assert_array_equal(
        restored.quantiles(test, BINS, [0.1, 0.9]),
        isotonic_calibrator.quantiles(test, BINS, [0.1, 0.9]),
    )
    np.testing.assert_array_equal(
        restored.expected_error(test, BINS), isotonic_calibrator.expected_error(test, BINS)
    )


# ------------------------------------------------------------------------------ bad input
MASS = np.full((3, BINS.n_bins), 1.0 / BINS.n_bins)


@pytest.mark.parametrize("make", [ErrorScaleCalibrator, IsotonicCalibrator])
@pytest.mark.parametrize(
    ("mass", "observed", "message"),
    [
        (np.empty((0, BINS.n_bins)), [], "mass is empty"),
        (MASS, [], "observed is empty"),
        (MASS, [0.1, np.nan, 0.2], "NaN"),
        (MASS, [0.1, 0.2], "2 entries but mass has 3 rows"),
        (MASS, [0.1, -0.2, 0.3], "non-negative error magnitudes"),
        (MASS / BINS.widths, [0.1, 0.2, 0.3], "sum to 1"),
        (MASS[:, :5], [0.1, 0.2, 0.3], "shape"),
    ],
)
def test_fit_rejects_bad_input(make, mass, observed, message):
    with pytest.raises(LTAUInputError, match=message):
        make().fit(mass, BINS, observed)


@pytest.mark.parametrize("make", [ErrorScaleCalibrator, IsotonicCalibrator])
def test_unfitted_use_raises(make):
    calibrator = make()
    assert not calibrator.is_fitted
    for call in (
        lambda: calibrator.expected_error(MASS, BINS),
        lambda: calibrator.quantiles(MASS, BINS, 0.5),
        lambda: calibrator.exceedance(MASS, BINS, 0.1),
        lambda: calibrator.cdf(MASS, BINS, 0.1),
        lambda: calibrator.to_dict(),
        lambda: calibrator.scale,
    ):
        with pytest.raises(LTAUInputError, match="not fitted yet"):
            call()


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"bounds": (2.0, 1.0)}, "0 < low < high"),
        ({"bounds": (0.0, 1.0)}, "0 < low < high"),
        ({"bounds": 3.0}, "two numbers"),
        ({"levels": [0.5, 0.2]}, "strictly increasing"),
    ],
)
def test_scale_settings_are_checked(settings_, message):
    with pytest.raises(LTAUInputError, match=message):
        ErrorScaleCalibrator(**settings_).fit(MASS, BINS, [0.1, 0.2, 0.3])


def test_isotonic_settings_are_checked():
    with pytest.raises(LTAUInputError, match="max_knots must be at least 3"):
        IsotonicCalibrator(max_knots=2).fit(MASS, BINS, [0.1, 0.2, 0.3])
    with pytest.raises(LTAUInputError, match="fit_scale must be True or False"):
        IsotonicCalibrator(fit_scale="yes").fit(MASS, BINS, [0.1, 0.2, 0.3])


def test_apply_rejects_bad_input():
    calibrator = identity_isotonic()
    with pytest.raises(LTAUInputError, match="atol must be finite, non-negative"):
        calibrator.exceedance(MASS, BINS, -1.0)
    with pytest.raises(LTAUInputError, match=r"levels must lie in \[0, 1\]"):
        calibrator.quantiles(MASS, BINS, 1.5)
    with pytest.raises(LTAUInputError, match="non-negative error magnitudes"):
        calibrator.cdf(MASS, BINS, -0.5)
    with pytest.raises(LTAUInputError, match="2 entries but mass has 3 rows"):
        calibrator.cdf(MASS, BINS, [0.1, 0.2])
    with pytest.raises(LTAUInputError, match="Bins instance"):
        calibrator.calibrated_bins(BINS.edges)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "platt"}, "unknown calibrator kind"),
        ({"format_version": 99}, "unsupported calibrator format_version"),
        ({"scale": -1.0}, "scale must be a positive"),
        ({"scale": "big"}, "scale must be a positive number"),
        ({"level_knots": [0.0, 0.6, 0.4, 1.0], "frequency_knots": [0, 0.2, 0.3, 1]}, "strictly"),
        ({"level_knots": [0.0, 0.5, 1.0], "frequency_knots": [0.0, 0.6, 0.4]}, "non-decreasing"),
        ({"level_knots": [0.0, 0.5, 1.0], "frequency_knots": [0.0, 0.5, 0.9]}, r"\(1, 1\)"),
        ({"level_knots": [0.0, 1.0], "frequency_knots": [0.0]}, "equal length"),
        ({"level_knots": [0.0, np.nan, 1.0], "frequency_knots": [0.0, 0.5, 1.0]}, "NaN"),
        ({"max_knots": None}, "invalid isotonic calibrator data"),
    ],
)
def test_from_dict_rejects_invalid_data(change, message):
    data = identity_isotonic().to_dict()
    data.update(change)
    with pytest.raises(LTAUInputError, match=message):
        calibrator_from_dict(data)


def test_from_dict_rejects_a_missing_field_and_a_wrong_kind():
    data = identity_isotonic().to_dict()
    with pytest.raises(LTAUInputError, match="not 'error_scale'"):
        ErrorScaleCalibrator.from_dict(data)
    del data["level_knots"]
    with pytest.raises(LTAUInputError, match="level_knots"):
        IsotonicCalibrator.from_dict(data)
    with pytest.raises(LTAUInputError, match="must be a dict"):
        calibrator_from_dict([1, 2])


def test_fitting_is_deterministic_and_warning_free(scaled_data):
    validation, observed, _, _ = scaled_data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = IsotonicCalibrator().fit(validation[:500], BINS, observed[:500]).to_dict()
        second = IsotonicCalibrator().fit(validation[:500], BINS, observed[:500]).to_dict()
    assert first == second


def test_calibration_methods_by_name():
    assert list(CALIBRATION_METHODS) == ["isotonic", "scale"]
    assert isinstance(make_calibrator("isotonic"), IsotonicCalibrator)
    scale = make_calibrator("scale")
    assert isinstance(scale, ErrorScaleCalibrator) and not scale.is_fitted
    for bad in ("Isotonic", "quantile", None):
        with pytest.raises(LTAUInputError, match="unknown calibration method"):
            make_calibrator(bad)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        scale.scale  # noqa: B018
