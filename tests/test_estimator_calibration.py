"""LTAUEstimator.calibrate: the calibrated outputs agree with the calibrator applied directly,
improve calibration on held-out data and survive save/load."""

from __future__ import annotations

import numpy as np
import pytest

from ltau import Bins, ErrorDistributions, LTAUEstimator, LTAUInputError
from ltau.metrics import interval_coverage, miscalibration_area


@pytest.fixture(scope="module")
def problem():
    """Training errors ~ |N(0, sigma(x))|; held-out errors are 2.5x larger (a train/test gap)."""
    rng = np.random.default_rng(11)
    n_train, n_epochs, dim = 1500, 40, 4
    train = rng.uniform(-1, 1, size=(n_train, dim)).astype(np.float32)
    sigma = np.exp(train[:, 0])
    errors = np.abs(rng.normal(size=(n_train, n_epochs))) * sigma[:, None]
    distributions = ErrorDistributions.from_errors(errors, Bins.log(1e-4, 50.0, 60))

    def held_out(n):
        x = rng.uniform(-1, 1, size=(n, dim)).astype(np.float32)
        return x, 2.5 * np.abs(rng.normal(size=n)) * np.exp(x[:, 0])

    return train, distributions, held_out(1500), held_out(1500)


@pytest.mark.parametrize("method", ["scale", "isotonic"])
def test_calibration_improves_held_out_calibration(problem, method, tmp_path):
    train, distributions, (x_val, e_val), (x_test, e_test) = problem
    raw = LTAUEstimator(10).fit(train, distributions)
    before = miscalibration_area(raw.probability_integral_transform(x_test, e_test))
    raw_coverage = raw.predict(x_test, confidence=0.9)
    # No widening: the errors here do not depend on the distance (see test_widening.py).
    estimator = (
        LTAUEstimator(10).fit(train, distributions).calibrate(x_val, e_val, method, widen=False)
    )
    after = miscalibration_area(estimator.probability_integral_transform(x_test, e_test))
    assert before > 0.15 and after < 0.05
    calibrated = estimator.predict(x_test, atol=[0.5, 2.0], quantiles=[0.5], confidence=0.9)
    coverage = interval_coverage(e_test, calibrated.interval_lower, calibrated.interval_upper)
    old = interval_coverage(e_test, raw_coverage.interval_lower, raw_coverage.interval_upper)
    assert old < 0.7 and 0.85 <= coverage <= 0.95
    if method == "scale":
        assert 2.2 < estimator.calibrator_.scale < 2.8

    # calibrated=False gives exactly the uncalibrated estimator's output
    uncalibrated = estimator.predict(x_test, atol=[0.5, 2.0], calibrated=False)
    np.testing.assert_array_equal(uncalibrated.expected_error, raw.predict(x_test).expected_error)

    # The fast paths equal the calibrator applied to the full mixture directly.
    mass = estimator.predict(x_test, return_pdf=True, calibrated=False).pdf * estimator.bins.widths
    calibrator = estimator.calibrator_
    np.testing.assert_allclose(
        calibrated.exceedance, calibrator.exceedance(mass, estimator.bins, np.array([0.5, 2.0]))
    )
    np.testing.assert_allclose(
        calibrated.quantiles[:, 0], calibrator.quantiles(mass, estimator.bins, 0.5), rtol=1e-9
    )
    np.testing.assert_allclose(
        calibrated.expected_error, calibrator.expected_error(mass, estimator.bins), rtol=1e-9
    )

    path = tmp_path / "calibrated.h5"
    estimator.save(path)
    loaded = LTAUEstimator.load(path)
    again = loaded.predict(x_test, atol=[0.5, 2.0], quantiles=[0.5], confidence=0.9)
    for name in ("expected_error", "exceedance", "quantiles", "interval_lower"):
        np.testing.assert_array_equal(getattr(again, name), getattr(calibrated, name))


def test_bad_calibration_input(problem):
    train, distributions, (x_val, e_val), _ = problem
    estimator = LTAUEstimator(10).fit(train, distributions)
    with pytest.raises(LTAUInputError, match="unknown calibration method"):
        estimator.calibrate(x_val, e_val, "platt")
    with pytest.raises(LTAUInputError):
        estimator.calibrate(x_val, e_val[:10])
    with pytest.raises(LTAUInputError):
        estimator.calibrate(x_val, -e_val)
