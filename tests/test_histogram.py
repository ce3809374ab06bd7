"""The one piecewise-uniform model (ltau.histogram) and the shared argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from ltau._checks import integer, non_negative_number, positive_number, tolerance, tolerances
from ltau.exceptions import LTAUInputError
from ltau.histogram import (
    Bins,
    cdf_at,
    checked_mass,
    edge_cdf,
    interpolate_cdf,
    interval_levels,
    quantiles,
    row_chunks,
)

BINS = Bins.linear(0.0, 4.0, 4)  # edges 0, 1, 2, 3, 4


def test_edge_cdf_by_hand():
    mass = np.array([[0.5, 0.0, 0.5, 0.0], [0.0, 0.25, 0.25, 0.5]])
    np.testing.assert_array_equal(
        edge_cdf(mass), [[0.0, 0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.25, 0.5, 1.0]]
    )
    # Linear inside bins, 0 below the first edge and 1 from the last edge on.
    values = np.array([2.5, 3.5])
    np.testing.assert_allclose(cdf_at(mass, BINS, values), [0.75, 0.75])
    np.testing.assert_allclose(interpolate_cdf(edge_cdf(mass), BINS, 9.0), [1.0, 1.0])


def test_edge_cdf_is_exactly_one_above_the_support_whatever_the_rounding():
    """Rows summing to 1 - 1e-16 or 1 + 1e-16 both give F = 1 from the last occupied bin on,
    and equal cumulative masses of different rows stay equal (no division)."""
    low = np.array([[0.20381898702851367, 0.7463113329614236, 0.049869680010062596, 0.0]])
    high = np.array([[0.46335848984461653, 0.3373961461805628, 0.1992453639748208, 0.0]])
    assert np.cumsum(low)[-1] < 1.0 < np.cumsum(high)[-1]
    for mass in (low, high):
        cdf = edge_cdf(mass)
        assert cdf[0, 0] == 0.0 and cdf[0, 3] == 1.0 and cdf[0, 4] == 1.0
        assert np.all(np.diff(cdf) >= 0)
        assert cdf_at(mass, BINS, 3.5)[0] == 1.0
    same = np.array([[0.5, 0.0, 0.25, 0.25], [0.5, 0.0, 0.5, 0.0]])
    assert edge_cdf(same)[0, 2] == edge_cdf(same)[1, 2] == 0.5


def test_quantiles_invert_the_edge_cdf():
    mass = np.array([[0.5, 0.0, 0.5, 0.0]])
    np.testing.assert_allclose(quantiles(mass, BINS, [0.0, 0.25, 0.75, 1.0]), [[0, 0.5, 2.5, 3]])
    np.testing.assert_allclose(cdf_at(mass, BINS, quantiles(mass, BINS, 0.3)), [0.3])
    np.testing.assert_allclose(interval_levels(0.9), [0.05, 0.95])


def test_row_chunks_cover_the_rows():
    chunks = list(row_chunks(10, 4))
    assert chunks == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(row_chunks(0)) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: checked_mass(np.ones((1, 4)), BINS), "must sum to 1"),
        (lambda: checked_mass(np.ones((1, 3)) / 3, BINS), r"shape \(n, 4\)"),
        (lambda: checked_mass(np.full((1, 4), 0.25), [0, 1]), "Bins instance"),
        (lambda: interval_levels(1.5), r"confidence must lie in \[0, 1\]"),
    ],
)
def test_histogram_bad_input(call, message):
    with pytest.raises(LTAUInputError, match=message):
        call()


def test_tolerances_one_rule():
    """Finite and >= 0, a number or a 1-D sequence; 0 is a valid tolerance."""
    assert tolerances(0.0).shape == () and tolerances([0.1, 2]).tolist() == [0.1, 2.0]
    assert tolerance(np.float32(0.5)) == 0.5 and tolerance(0) == 0.0
    for bad in (-0.1, [0.1, -1e-9], np.nan, np.inf, [[0.1]], "x", None):
        with pytest.raises(LTAUInputError, match="atol must be finite, non-negative numbers"):
            tolerances(bad)
    with pytest.raises(LTAUInputError, match="atol must be one number"):
        tolerance([0.1, 0.2])


def test_number_and_integer_checks():
    assert integer(np.int64(3), "k", 1) == 3 and positive_number(2, "s") == 2.0
    assert non_negative_number(0.0, "t") == 0.0
    cases = [
        (lambda: integer(True, "k", 1), "k must be a positive integer; got True"),
        (lambda: integer(2.0, "k", 0), "k must be a non-negative integer"),
        (lambda: integer(2, "k", 3, "at least 3"), "k must be at least 3; got 2"),
        (lambda: positive_number(0.0, "fmax", "a positive number (eV/Å)"), r"\(eV/Å\); got 0.0"),
        (lambda: positive_number("1", "s"), "s must be a positive number"),
        (lambda: non_negative_number(np.nan, "t"), "t must be a non-negative number"),
        (lambda: non_negative_number(True, "t"), "t must be a non-negative number"),
    ]
    for call, message in cases:
        with pytest.raises(LTAUInputError, match=message):
            call()
