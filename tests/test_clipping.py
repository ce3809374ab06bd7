"""Errors outside the bins are never clipped silently: building distributions that hold them
warns with the counts and the size of the effect; exact zeros with log bins are reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ltau import Bins, ErrorDistributions, ErrorLog, ErrorRecorder, LTAUClippingWarning
from ltau.distributions import HistogramAccumulator


def test_the_audit_example_warns_with_the_53_fold_underestimate():
    errors = np.full((4, 30), 0.05)
    errors[2] = 5.0  # a sample whose errors are all far above the last edge
    with pytest.warns(LTAUClippingWarning) as caught:
        distributions = ErrorDistributions.from_errors(errors, Bins.log(1e-3, 0.1, 20))
    clipping = caught[0].message.clipping
    assert (clipping.above, clipping.samples_above, clipping.n_observations) == (30, 1, 120)
    assert (clipping.below, clipping.samples_below, clipping.zeros) == (0, 0, 0)
    assert clipping.highest == pytest.approx(5.0)
    binned = distributions.expected_error()[2]
    assert binned == pytest.approx(distributions.bins.centers[-1])
    assert clipping.underestimate == pytest.approx(5.0 / binned)
    assert clipping.underestimate > 50
    text = str(caught[0].message)
    factor = f"factor {5.0 / binned:.3g}"
    for part in ("30 of 120 recorded errors", "1 of 4 samples", factor, "[0.001, 5]"):
        assert part in text
    assert caught[0].filename == __file__  # the warning names the caller's line


def test_the_underestimate_is_that_of_the_worst_sample():
    bins = Bins.linear(0.0, 1.0, 10)
    errors = np.array([[0.55, 0.55, 3.0, 0.55], [0.55, 1.5, 1.5, 1.5]])
    with pytest.warns(LTAUClippingWarning) as caught:
        distributions = ErrorDistributions.from_errors(errors, bins)
    binned = distributions.expected_error()
    true = errors.mean(axis=1)
    assert caught[0].message.clipping.underestimate == pytest.approx(np.max(true / binned))
    assert caught[0].message.clipping.samples_above == 2


def test_exact_zeros_with_log_bins_are_reported_and_counted_in_the_first_bin():
    errors = np.full((3, 10), 0.02)
    errors[0, :4] = 0.0
    errors[1, 0] = 1e-5
    with pytest.warns(LTAUClippingWarning) as caught:
        distributions = ErrorDistributions.from_errors(errors, Bins.log(1e-3, 1.0, 30))
    clipping = caught[0].message.clipping
    assert (clipping.below, clipping.samples_below, clipping.zeros) == (5, 2, 4)
    assert clipping.lowest == 0.0 and clipping.above == 0
    assert distributions.n_below == 5 and distributions.counts[0, 0] == 4
    assert "4 of them exact zeros" in str(caught[0].message)
    assert "linear bins start at 0" in str(caught[0].message)
    # The documented rule: below the first edge nothing is resolved.
    assert distributions.exceedance(1e-4)[0] == 1.0
    # Bins from the data: log bins start at the smallest positive error, so only the zeros
    # lie below; linear bins start at 0 and hold them, within their first bin, without a warning.
    with pytest.warns(LTAUClippingWarning, match="4 of 30 recorded errors"):
        ErrorDistributions.from_errors(errors)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LTAUClippingWarning)
        linear = ErrorDistributions.from_errors(errors, spacing="linear")
    first = linear.bins.edges[1]
    assert linear.exceedance(first / 2)[0] == pytest.approx(0.6 + 0.4 / 2)


def test_no_warning_inside_the_bins_and_an_error_on_request():
    errors = np.random.default_rng(0).uniform(0.01, 0.9, (20, 15))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LTAUClippingWarning)
        ErrorDistributions.from_errors(errors, Bins.log(1e-3, 1.0, 30))
        ErrorDistributions.from_errors(errors)
        with pytest.raises(LTAUClippingWarning):
            ErrorDistributions.from_errors(errors, Bins.log(1e-3, 0.5, 30))


def test_partial_epochs_are_tallied_per_sample():
    accumulator = HistogramAccumulator(Bins.linear(0.0, 1.0, 4), 5)
    accumulator.add(np.array([4, 1]), np.array([2.0, 0.5]))
    accumulator.add(np.array([4]), np.array([4.0]))
    accumulator.add_checked(None, np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    clipping = accumulator.clipping()
    assert (clipping.above, clipping.samples_above, clipping.n_observations) == (2, 1, 8)
    # Sample 4: 2.0, 4.0 and 0.5, binned at 0.875, 0.875 and 0.625; with the clipped values at
    # their true size the mean is (2 + 4 + 0.625) / 3.
    assert clipping.underestimate == pytest.approx(6.625 / 2.375)
    with pytest.warns(LTAUClippingWarning):
        accumulator.distributions()


def test_recorder_and_log_warn_and_the_log_rebuilds_without_clipping(tmp_path):
    rng = np.random.default_rng(1)
    errors = rng.lognormal(mean=-3, sigma=1.0, size=(6, 40)).astype(np.float32)
    errors[3, 2] = 9.0
    narrow = Bins.log(1e-3, 0.5, 25)
    path = tmp_path / "log.h5"
    with ErrorRecorder(40, bins=narrow, log_path=path) as recorder:
        for row in errors:
            recorder.record_epoch(row)
        with pytest.warns(LTAUClippingWarning) as live:
            recorder.distributions()
    with pytest.warns(LTAUClippingWarning) as direct:
        ErrorDistributions.from_errors(errors.T, narrow)
    assert live[0].message.clipping == direct[0].message.clipping
    with ErrorLog(path) as log:
        with pytest.warns(LTAUClippingWarning) as rebuilt:
            log.distributions(narrow)
        assert rebuilt[0].message.clipping.above == live[0].message.clipping.above
        with warnings.catch_warnings():
            warnings.simplefilter("error", LTAUClippingWarning)
            spanning = log.distributions(spacing="linear")
    assert spanning.n_above == 0 and spanning.n_below == 0
