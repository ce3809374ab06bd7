"""Uncertainty metrics: hand-computed cases and direct numeric computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltau import metrics
from ltau.exceptions import LTAUInputError
from ltau.histogram import (
    Bins,
    cdf_at,
    central_interval,
    density_at,
    exceedance_probability,
    expected_value,
    quantiles,
)

LOG_BINS = Bins.log(0.01, 10.0, 12)


def random_mass(rng: np.random.Generator, n: int, n_bins: int, sparse: bool = True) -> np.ndarray:
    mass = rng.dirichlet(np.full(n_bins, 0.7), size=n)
    if sparse:  # some empty bins, as in real histograms
        mass[rng.uniform(size=mass.shape) < 0.3] = 0.0
        mass[:, rng.integers(n_bins)] += 0.01
    return mass / mass.sum(axis=1, keepdims=True)


def numeric_crps(mass_row: np.ndarray, bins: Bins, y: float, points: int = 200_001) -> float:
    """integral (F(x) - 1{x >= y})^2 dx by the trapezoid rule, split at y, over a range that
    covers the support and y (outside it the integrand is 0)."""
    low, high = min(0.0, y), max(bins.edges[-1], y) + 1.0

    def piece(a: float, b: float, step: float) -> float:
        if b <= a:
            return 0.0
        x = np.linspace(a, b, points)
        cdf = cdf_at(np.repeat(mass_row[None], x.size, axis=0), bins, x)
        return float(np.trapezoid((cdf - step) ** 2, x))

    return piece(low, y, 0.0) + piece(y, high, 1.0)


# ------------------------------------------------------------------ per-row CDF and density
def test_cdf_at_matches_interpolated_edge_cdf_and_other_statistics():
    rng = np.random.default_rng(0)
    mass = random_mass(rng, 50, LOG_BINS.n_bins)
    values = np.exp(rng.uniform(np.log(0.002), np.log(30), 50))
    values[:3] = [0.0, LOG_BINS.edges[0], LOG_BINS.edges[-1]]
    edge_cdf = np.concatenate([np.zeros((50, 1)), np.cumsum(mass, axis=1)], axis=1)
    expected = [np.interp(v, LOG_BINS.edges, c) for v, c in zip(values, edge_cdf, strict=True)]
    result = cdf_at(mass, LOG_BINS, values)
    np.testing.assert_allclose(result, expected, atol=1e-12)
    assert result[0] == 0.0 and result[2] == 1.0
    # consistent with the exceedance probability and the quantiles of the same model
    for atol in (0.005, 0.05, 1.0, 20.0):
        np.testing.assert_allclose(
            1 - cdf_at(mass, LOG_BINS, atol), exceedance_probability(mass, LOG_BINS, atol)
        )
    for level in (0.1, 0.5, 0.93):
        at_quantile = cdf_at(mass, LOG_BINS, quantiles(mass, LOG_BINS, level))
        np.testing.assert_allclose(at_quantile, level, atol=1e-9)


def test_density_at_bins_closed_on_the_left_last_bin_closed():
    bins = Bins(np.array([0.0, 1.0, 3.0]))
    mass = np.tile([[0.25, 0.75]], (6, 1))
    values = np.array([-0.0, 0.5, 1.0, 2.0, 3.0, 3.5])
    np.testing.assert_allclose(
        density_at(mass, bins, values), [0.25, 0.25, 0.375, 0.375, 0.375, 0.0]
    )


# ----------------------------------------------------------------------- existing metrics
def test_spearman_auroc_coverage_rmse_hand_cases():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # positives score 3 and 1, negatives 2 and 0: 3 of 4 pairs ordered correctly
    assert metrics.auroc([3, 1, 2, 0], [1, 1, 0, 0]) == pytest.approx(0.75)
    assert metrics.auroc([1, 1], [1, 0]) == pytest.approx(0.5)
    assert metrics.interval_coverage([1, 2, 3, 4], [0, 2, 3.5, 0], [1, 2.5, 4, 3]) == 0.5
    assert metrics.rmse([3, -4]) == pytest.approx(np.sqrt(12.5))


# --------------------------------------------------------------- PIT and calibration curves
def test_pit_is_the_cdf_at_the_observation():
    rng = np.random.default_rng(1)
    mass = random_mass(rng, 20, LOG_BINS.n_bins)
    observed = rng.uniform(0, 5, 20)
    np.testing.assert_array_equal(
        metrics.probability_integral_transform(mass, LOG_BINS, observed),
        cdf_at(mass, LOG_BINS, observed),
    )


def test_calibration_curve_hand_case():
    curve = metrics.calibration_curve([0.1, 0.2, 0.2, 0.9], levels=[0.1, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(curve["expected"], [0.1, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(curve["observed"], [0.25, 0.75, 0.75, 1.0])
    default = metrics.calibration_curve([0.5])
    np.testing.assert_allclose(default["expected"], np.arange(1, 100) / 100)
    np.testing.assert_array_equal(default["observed"], np.arange(1, 100) >= 50)


def test_miscalibration_area_zero_for_uniform_pit():
    pit = (np.arange(10_000) + 0.5) / 10_000
    assert metrics.miscalibration_area(pit) < 1e-3
    rng = np.random.default_rng(2)
    assert metrics.miscalibration_area(rng.uniform(size=20_000)) < 0.01


def test_miscalibration_area_known_miscalibrated_cases():
    # every observation below every predicted quantile: observed proportion 1 at every level,
    # area = integral_{0.01}^{0.99} (1 - p) dp = (0.99^2 - 0.01^2) / 2
    assert metrics.miscalibration_area(np.zeros(10)) == pytest.approx(0.49)
    assert metrics.miscalibration_area(np.ones(10)) == pytest.approx(0.49)
    # curves crossing mid-segment: observed 0.5 at p = 0 and at p = 0.98; the exact area is
    # two triangles, 0.98 * (0.5^2 + 0.48^2) / (2 * 0.98)
    area = metrics.miscalibration_area([0.0, 0.0, 1.0, 1.0], levels=[0.0, 0.98])
    assert area == pytest.approx((0.25 + 0.48**2) / 2)


def test_miscalibration_area_matches_dense_numeric_integration():
    # PIT distributed with CDF p^3 (overconfident in one direction)
    n, power = 4000, 3.0
    pit = ((np.arange(n) + 0.5) / n) ** (1 / power)
    levels = np.linspace(0.01, 0.99, 99)
    observed = metrics.calibration_curve(pit, levels)["observed"]
    dense = np.linspace(0.01, 0.99, 200_001)
    numeric = np.trapezoid(np.abs(np.interp(dense, levels, observed) - dense), dense)
    assert metrics.miscalibration_area(pit) == pytest.approx(numeric, abs=1e-8)
    population = np.trapezoid(np.abs(dense**power - dense), dense)
    assert metrics.miscalibration_area(pit) == pytest.approx(population, abs=2e-3)


# ------------------------------------------------------------------ expected-error binning
def test_binned_error_calibration_hand_case():
    predicted = np.array([6.0, 1.0, 5.0, 2.0, 4.0, 3.0])
    observed = np.array([4.0, 1.0, 8.0, 3.0, 0.0, 5.0])
    table = metrics.binned_error_calibration(predicted, observed, n_bins=3)
    # bins by prediction: {1, 2}, {3, 4}, {5, 6}
    np.testing.assert_allclose(table["mean_predicted"], [1.5, 3.5, 5.5])
    np.testing.assert_allclose(table["mean_observed"], [2.0, 2.5, 6.0])
    np.testing.assert_allclose(table["rms_observed"], np.sqrt([5.0, 12.5, 40.0]))
    np.testing.assert_array_equal(table["count"], [2, 2, 2])
    np.testing.assert_allclose(table["predicted_low"], [1, 3, 5])
    np.testing.assert_allclose(table["predicted_high"], [2, 4, 6])
    ence = metrics.expected_normalized_calibration_error(predicted, observed, n_bins=3)
    assert ence == pytest.approx((0.5 / 1.5 + 1.0 / 3.5 + 0.5 / 5.5) / 3)


def test_binned_error_calibration_unequal_counts_and_perfect_calibration():
    table = metrics.binned_error_calibration(np.arange(1.0, 8.0), np.arange(1.0, 8.0), 3)
    np.testing.assert_array_equal(table["count"], [3, 2, 2])
    assert metrics.expected_normalized_calibration_error(
        np.arange(1.0, 8.0), np.arange(1.0, 8.0), 3
    ) == pytest.approx(0.0)


def test_ence_rejects_zero_predictions_and_too_many_bins():
    with pytest.raises(LTAUInputError, match="positive mean predicted error"):
        metrics.expected_normalized_calibration_error([0.0, 0.0, 1.0, 1.0], [1, 1, 1, 1], 2)
    with pytest.raises(LTAUInputError, match="exceeds the number of points"):
        metrics.binned_error_calibration([1.0, 2.0], [1.0, 2.0], n_bins=3)


# ------------------------------------------------------------------------------- NLL
def test_nll_of_one_bin_uniform_distribution():
    bins = Bins.linear(0.0, 2.0, 1)
    assert metrics.nll_histogram(np.ones((3, 1)), bins, [0.0, 1.0, 2.0]) == pytest.approx(
        np.log(2.0)
    )


def test_nll_uses_the_density_floor_outside_the_support_and_in_empty_bins():
    bins = Bins(np.array([1.0, 2.0, 4.0]))
    mass = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    observed = np.array([0.5, 3.0, 1.5, 5.0])  # below, empty bin, inside (0.5), above
    expected = (3 * -np.log(1e-12) - np.log(0.5)) / 4
    assert metrics.nll_histogram(mass, bins, observed) == pytest.approx(expected)
    expected_floor = (3 * -np.log(1e-3) - np.log(0.5)) / 4
    assert metrics.nll_histogram(mass, bins, observed, density_floor=1e-3) == pytest.approx(
        expected_floor
    )
    assert metrics.outside_support(bins, observed) == {"below": 0.25, "above": 0.25}
    with pytest.raises(LTAUInputError, match="density_floor"):
        metrics.nll_histogram(mass, bins, observed, density_floor=0.0)


# ------------------------------------------------------------------------------- CRPS
@pytest.mark.parametrize("y", [0.0, 0.2, 0.5, 1.0])
def test_crps_of_uniform_distribution_closed_form(y):
    # F(x) = x on [0, 1]: integral_0^y x^2 dx + integral_y^1 (1 - x)^2 dx
    bins = Bins.linear(0.0, 1.0, 1)
    assert metrics.crps_histogram(np.ones((1, 1)), bins, [y]) == pytest.approx(
        (y**3 + (1 - y) ** 3) / 3
    )


def test_crps_outside_the_support_adds_the_distance():
    bins = Bins.linear(1.0, 2.0, 1)  # F(x) = x - 1 on [1, 2]
    values = metrics.crps_values(np.ones((2, 1)), bins, [0.25, 3.0])
    np.testing.assert_allclose(values, [0.75 + 1 / 3, 1 / 3 + 1.0])


def test_crps_matches_numeric_integration():
    rng = np.random.default_rng(3)
    mass = random_mass(rng, 6, LOG_BINS.n_bins)
    observed = np.array([0.0, 0.005, 0.02, 0.7, 10.0, 14.0])
    exact = metrics.crps_values(mass, LOG_BINS, observed)
    numeric = [numeric_crps(m, LOG_BINS, y) for m, y in zip(mass, observed, strict=True)]
    np.testing.assert_allclose(exact, numeric, rtol=1e-6, atol=1e-8)
    assert metrics.crps_histogram(mass, LOG_BINS, observed) == pytest.approx(np.mean(exact))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_bins=st.integers(1, 6),
    y=st.floats(0.0, 6.0, allow_nan=False),
)
def test_crps_property_matches_numeric_integration(seed, n_bins, y):
    rng = np.random.default_rng(seed)
    edges = np.concatenate([[rng.uniform(0, 1)], rng.uniform(0.05, 1.5, n_bins)]).cumsum()
    bins = Bins(edges)
    mass = random_mass(rng, 1, n_bins, sparse=False)
    exact = metrics.crps_values(mass, bins, [y])[0]
    assert exact >= 0
    assert exact == pytest.approx(numeric_crps(mass[0], bins, y, 40_001), rel=1e-6, abs=1e-8)


def test_crps_of_a_narrow_bin_is_the_absolute_distance():
    bins = Bins(np.array([0.0, 0.999, 1.001, 3.0]))
    mass = np.array([[0.0, 1.0, 0.0]])
    assert metrics.crps_histogram(mass, bins, [2.5]) == pytest.approx(1.5, abs=1e-3)


# ------------------------------------------------------------------------ sparsification
def test_sparsification_curve_hand_example():
    curves = metrics.sparsification_curve([3, 1, 2, 0], [1, 2, 3, 4], n_steps=4, normalize=False)
    np.testing.assert_allclose(curves["fraction_removed"], [0, 0.25, 0.5, 0.75])
    # remove the most uncertain first: errors {1, 2, 3, 4} -> {2, 3, 4} -> {2, 4} -> {4}
    np.testing.assert_allclose(curves["model"], [2.5, 3.0, 3.0, 4.0])
    np.testing.assert_allclose(curves["oracle"], [2.5, 2.0, 1.5, 1.0])
    normalized = metrics.sparsification_curve([3, 1, 2, 0], [1, 2, 3, 4], n_steps=4)
    np.testing.assert_allclose(normalized["model"], np.array([2.5, 3.0, 3.0, 4.0]) / 2.5)
    # difference (normalized) 0, 0.4, 0.6, 1.2 at steps of 0.25: trapezoid area 0.4
    assert metrics.ause([3, 1, 2, 0], [1, 2, 3, 4], n_steps=4) == pytest.approx(0.4)
    assert metrics.ause([3, 1, 2, 0], [1, 2, 3, 4], n_steps=4, normalize=False) == pytest.approx(
        1.0
    )


def test_sparsification_removes_floor_of_fraction_times_n():
    # n = 5, n_steps = 2: fractions 0 and 0.5 remove 0 and floor(2.5) = 2 points
    curves = metrics.sparsification_curve([5, 4, 3, 2, 1], [5, 4, 3, 2, 1], 2, normalize=False)
    np.testing.assert_allclose(curves["model"], [3.0, 2.0])


def test_ause_is_zero_when_uncertainty_ranks_like_the_error():
    rng = np.random.default_rng(4)
    errors = rng.exponential(size=500)
    assert metrics.ause(errors, errors) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ause(np.log(errors) * 3 + 1, errors) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ause(-errors, errors) > metrics.ause(rng.uniform(size=500), errors) > 0


def test_sparsification_ties_are_averaged_and_order_independent():
    errors = np.array([1.0, 2.0, 3.0, 6.0])
    # constant uncertainty: in expectation every subset has the overall mean error
    flat = metrics.sparsification_curve(np.zeros(4), errors, 4)
    np.testing.assert_allclose(flat["model"], 1.0)
    rng = np.random.default_rng(5)
    uncertainty = rng.integers(0, 5, 200).astype(float)
    observed = rng.exponential(size=200)
    permutation = rng.permutation(200)
    a = metrics.sparsification_curve(uncertainty, observed, 50)
    b = metrics.sparsification_curve(uncertainty[permutation], observed[permutation], 50)
    np.testing.assert_allclose(a["model"], b["model"], rtol=1e-12)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.miscalibration_area([]), "pit_values is empty"),
        (lambda: metrics.miscalibration_area([0.2, np.nan]), "NaN"),
        (lambda: metrics.miscalibration_area([0.2, 1.5]), r"in \[0, 1\]"),
        (lambda: metrics.miscalibration_area([0.2], levels=[0.5]), "at least 2 levels"),
        (lambda: metrics.calibration_curve([0.2], levels=[0.5, 0.4]), "strictly increasing"),
        (lambda: metrics.calibration_curve([[0.2]]), "must be 1-D"),
        (lambda: metrics.ause([1.0, 2.0], [1.0]), "equal length"),
        (lambda: metrics.ause([1.0, 2.0], [1.0, -1.0]), "non-negative"),
        (lambda: metrics.ause([1.0, 2.0], [0.0, 0.0]), "all errors are zero"),
        (lambda: metrics.ause([1.0, 2.0], [1.0, 2.0], n_steps=1), "at least 2"),
        (lambda: metrics.binned_error_calibration([1.0], [1.0], n_bins=0), "positive integer"),
        (
            lambda: metrics.crps_histogram(np.ones((2, 1)), Bins.linear(0, 1, 1), [1.0]),
            "mass has 2 rows",
        ),
        (lambda: metrics.crps_histogram(np.ones((1, 2)), Bins.linear(0, 1, 1), [1.0]), "shape"),
        (lambda: metrics.crps_histogram(np.ones((1, 1)), [0, 1], [1.0]), "Bins instance"),
        (lambda: metrics.nll_histogram(np.full((1, 2), 0.7), LOG_BINS, [1.0]), "shape"),
        (
            lambda: metrics.nll_histogram(np.full((1, 2), 0.7), Bins.linear(0, 1, 2), [1.0]),
            "sum to 1",
        ),
        (
            lambda: metrics.nll_histogram(np.array([[1.5, -0.5]]), Bins.linear(0, 1, 2), [1.0]),
            "non-negative probability",
        ),
        (
            lambda: metrics.probability_integral_transform(
                np.ones((1, 1)), Bins.linear(0, 1, 1), [np.inf]
            ),
            "NaN or infinity",
        ),
        (
            lambda: metrics.probability_integral_transform(
                np.empty((0, 1)), Bins.linear(0, 1, 1), []
            ),
            "mass is empty",
        ),
    ],
)
def test_bad_input_raises_with_a_clear_message(call, message):
    with pytest.raises(LTAUInputError, match=message):
        call()


def test_mass_tolerates_mixture_rounding():
    rng = np.random.default_rng(6)
    mass = random_mass(rng, 30, LOG_BINS.n_bins)
    mixture = np.mean(np.stack([mass, mass[::-1]]), axis=0)
    assert np.isfinite(metrics.crps_histogram(mixture, LOG_BINS, expected_value(mixture, LOG_BINS)))


def test_precision_at_recall_counts_the_flagged_samples():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    labels = np.array([1, 0, 1, 1, 0, 1, 0], dtype=bool)
    # recall 0.75 of 4 positives needs 3: flag down to 0.6 -> 3 of 4 flagged are positive
    assert metrics.precision_at_recall(scores, labels, 0.75) == pytest.approx(3 / 4)
    assert metrics.precision_at_recall(scores, labels, 1.0) == pytest.approx(4 / 6)
    assert metrics.precision_at_recall(scores, labels, 0.2) == pytest.approx(1.0)
    tied = np.array([1.0, 1.0, 1.0, 0.0])
    assert metrics.precision_at_recall(tied, [1, 0, 0, 1], 0.5) == pytest.approx(1 / 3)
    with pytest.raises(LTAUInputError, match="at least one positive"):
        metrics.precision_at_recall(scores, np.zeros(7, dtype=bool), 0.8)
    with pytest.raises(LTAUInputError, match="recall must lie in"):
        metrics.precision_at_recall(scores, labels, 0.0)
    with pytest.raises(LTAUInputError, match="equal length"):
        metrics.precision_at_recall(scores, labels[:3], 0.8)


def test_uq_metrics_bundle_matches_the_single_metrics_in_a_fixed_order():
    rng = np.random.default_rng(12)
    n = 200
    mass = random_mass(rng, n, LOG_BINS.n_bins)
    observed = rng.uniform(0.0, 3.0, n)
    expected = expected_value(mass, LOG_BINS)
    pit = metrics.probability_integral_transform(mass, LOG_BINS, observed)
    lower, upper = central_interval(mass, LOG_BINS, 0.9)
    exceedance = exceedance_probability(mass, LOG_BINS, 1.0)
    bundle = metrics.uq_metrics(
        observed,
        expected,
        lower=lower,
        upper=upper,
        confidence=0.9,
        pit=pit,
        exceedance=exceedance,
        atol=1.0,
        mass=mass,
        bins=LOG_BINS,
    )
    assert list(bundle) == list(metrics.METRIC_INFO)
    exceeds = observed > 1.0
    assert bundle == {
        "n": n,
        "spearman": metrics.spearman(expected, observed),
        "auroc_error_flag": metrics.auroc(exceedance, exceeds),
        "fraction_above_atol": float(exceeds.mean()),
        "ause": metrics.ause(expected, observed),
        "miscalibration_area": metrics.miscalibration_area(pit),
        "ence": metrics.expected_normalized_calibration_error(expected, observed),
        "coverage90": metrics.interval_coverage(observed, lower, upper),
        "nll": metrics.nll_histogram(mass, LOG_BINS, observed),
        "crps": metrics.crps_histogram(mass, LOG_BINS, observed),
    }
    assert all(len(info) == 3 for info in metrics.METRIC_INFO.values())


def test_uq_metrics_optional_parts_and_bad_input():
    observed = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    expected = observed + 0.05
    assert list(metrics.uq_metrics(observed, expected)) == ["n", "spearman", "ause", "ence"]
    # No error above atol: the AUROC is undefined.
    flagged = metrics.uq_metrics(observed, expected, exceedance=expected, atol=5.0)
    assert flagged["auroc_error_flag"] is None and flagged["fraction_above_atol"] == 0.0
    interval = metrics.uq_metrics(
        observed, expected, lower=observed * 0, upper=observed, confidence=0.95
    )
    assert interval["coverage95"] == 1.0 and metrics.coverage_key(0.5) == "coverage50"
    cases = [
        (lambda: metrics.uq_metrics(observed, expected, lower=observed), "lower with upper"),
        (lambda: metrics.uq_metrics(observed, expected, mass=np.ones((10, 1))), "mass with bins"),
        (lambda: metrics.uq_metrics(observed, expected, exceedance=expected), "need the atol"),
        (lambda: metrics.uq_metrics(observed, expected, atol=-1.0), "atol must be finite"),
        (lambda: metrics.uq_metrics(-observed, expected), "non-negative error magnitudes"),
        (lambda: metrics.uq_metrics(observed, expected[:5]), "equal length"),
        (lambda: metrics.coverage_key(1.0), r"confidence must be a number in \(0, 1\)"),
    ]
    for call, message in cases:
        with pytest.raises(LTAUInputError, match=message):
            call()
