"""Bins, per-sample histograms and their statistics against independent NumPy computations."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ltau_reference import (
    PROPERTY,
    bin_index,
    cdf_at_edges,
    corruption_scan,
    exceedance,
    expected,
    histogram_rows,
    masses,
    quantile_bounds,
    reseal,
    support,
)

from ltau import Bins, ErrorDistributions, LTAUEstimator, LTAUFileError, LTAUInputError
from ltau._io import _sha256
from ltau.distributions import (
    HistogramAccumulator,
    bins_for_errors,
    load_distributions,
    save_distributions,
)
from ltau.histogram import central_interval, exceedance_probability, expected_value, quantiles

# --------------------------------------------------------------------------- strategies


@st.composite
def any_bins(draw) -> Bins:
    """Log, linear or custom bins; some with float32-representable edges (exact edge hits)."""
    kind = draw(
        st.sampled_from(["log", "linear", "custom", "log_dyadic", "linear_dyadic", "custom_f32"])
    )
    n_bins = draw(st.integers(1, 40))
    if kind == "log":
        low = draw(st.floats(1e-4, 1.0))
        ratio = draw(st.floats(1.5, 1e5))
        return Bins.log(low, low * ratio, n_bins)
    if kind == "linear":
        low = draw(st.one_of(st.just(0.0), st.floats(0.0, 2.0)))
        width = draw(st.floats(0.05, 50.0))
        return Bins.linear(low, low + width, n_bins)
    if kind == "log_dyadic":
        start = draw(st.integers(-12, 2))
        return Bins(2.0 ** np.arange(start, start + n_bins + 1), "log")
    if kind == "linear_dyadic":
        scale = draw(st.integers(-4, 4))
        return Bins.linear(0.0, 2.0**scale * n_bins, n_bins)
    gaps = draw(st.lists(st.floats(1e-3, 5.0), min_size=n_bins, max_size=n_bins))
    start = draw(st.floats(0.0, 1.0))
    edges = start + np.concatenate([[0.0], np.cumsum(gaps)])
    if kind == "custom_f32":
        edges = np.unique(edges.astype(np.float32)).astype(np.float64)
        if edges.size < 2:
            edges = np.array([0.0, 1.0])
    return Bins(edges)


def errors_for(bins: Bins, seed: int, n_samples: int, n_obs: int) -> np.ndarray:
    """float32 errors spanning below, inside and above the bins, with exact edges and zeros."""
    rng = np.random.default_rng(seed)
    low, high = bins.edges[0], bins.edges[-1]
    choice = rng.integers(0, 5, size=(n_samples, n_obs))
    inside = rng.uniform(low, high, size=choice.shape)
    wide = np.exp(rng.uniform(np.log(max(low, 1e-6) / 10), np.log(high * 10), size=choice.shape))
    on_edge = bins.edges[rng.integers(0, bins.edges.size, size=choice.shape)]
    values = np.select(
        [choice == 0, choice == 1, choice == 2, choice == 3], [inside, wide, on_edge, 0.0], high
    )
    return values.astype(np.float32)


sizes = st.tuples(st.integers(1, 12), st.integers(1, 25))
seeds = st.integers(0, 2**32 - 1)

# ------------------------------------------------------------------------------- bins


@PROPERTY
@given(bins=any_bins(), seed=seeds)
def test_assign_matches_direct_comparison_with_edges(bins, seed):
    rng = np.random.default_rng(seed)
    low, high = bins.edges[0], bins.edges[-1]
    values = np.concatenate(
        [
            bins.edges,  # exactly on every edge, float64
            np.nextafter(bins.edges, np.inf),
            np.nextafter(bins.edges, -np.inf).clip(0),
            rng.uniform(low, high, 200),
            [0.0, low / 2, high * 2, high * 1e6],
        ]
    )
    for dtype in (np.float64, np.float32):
        v = values.astype(dtype)
        index, n_below, n_above = bins.assign(v)
        np.testing.assert_array_equal(index, bin_index(v, bins.edges))
        assert n_below == np.sum(v.astype(np.float64) < low)
        assert n_above == np.sum(v.astype(np.float64) > high)


def test_edges_belong_to_the_bin_on_their_right_and_the_last_edge_to_the_last_bin():
    for bins in (Bins.log(1e-3, 10.0, 4), Bins.linear(0.0, 2.0, 4), Bins([0.0, 0.5, 3.0, 7.0])):
        index, n_below, n_above = bins.assign(bins.edges)
        np.testing.assert_array_equal(index, [*range(bins.n_bins), bins.n_bins - 1])
        assert (n_below, n_above) == (0, 0)


@pytest.mark.parametrize(
    "bins",
    [
        Bins.log(1000.0, 1000.01, 100),
        Bins.log(1.0, 1.0001, 50),
        Bins.linear(1000.0, 1000.01, 100),
        Bins.log(1e-3, 10.0, 10_000),
    ],
    ids=["log-narrow-1000", "log-narrow-1", "linear-narrow", "log-many-bins"],
)
def test_assign_is_exact_for_narrow_bins(bins):
    """Bins much narrower than float32 resolution of log(value) must still bin exactly."""
    rng = np.random.default_rng(5)
    values = rng.uniform(bins.edges[0], bins.edges[-1], 20_000)
    for dtype in (np.float64, np.float32):
        v = values.astype(dtype)
        index = bins.assign(v)[0]
        expected_index = bin_index(v, bins.edges)
        wrong = np.flatnonzero(index != expected_index)
        assert wrong.size == 0, (
            f"{wrong.size} of {v.size} {np.dtype(dtype).name} values misbinned, e.g. "
            f"{v[wrong[0]]!r} -> bin {index[wrong[0]]}, should be {expected_index[wrong[0]]}"
        )


@pytest.mark.parametrize(
    ("edges", "spacing"),
    [([0.0, 1.0, 2.0, 10.0], "linear"), ([0.1, 0.2, 5.0, 10.0], "log")],
)
def test_bins_with_a_spacing_their_edges_do_not_have_are_refused_or_exact(edges, spacing):
    """Bins(edges, 'linear'/'log') assumes uniform spacing; non-uniform edges must not misbin."""
    values = np.array([0.15, 0.5, 1.5, 3.0, 4.0, 6.0, 9.0])
    try:
        bins = Bins(np.array(edges), spacing)
    except LTAUInputError:
        return
    np.testing.assert_array_equal(bins.assign(values)[0], bin_index(values, bins.edges))


def test_bin_geometry():
    bins = Bins.log(1e-2, 1e2, 4)
    np.testing.assert_allclose(bins.edges, [1e-2, 1e-1, 1.0, 1e1, 1e2], rtol=1e-12)
    np.testing.assert_allclose(bins.widths, np.diff(bins.edges))
    np.testing.assert_allclose(bins.centers, (bins.edges[:-1] + bins.edges[1:]) / 2)
    assert bins.n_bins == 4 and bins.spacing == "log"
    linear = Bins.linear(0.0, 1.0, 5)
    np.testing.assert_allclose(linear.edges, np.linspace(0, 1, 6))
    assert Bins.from_range(0.5, 0.5, 10, "log").edges[[0, -1]].tolist() == pytest.approx(
        [0.495, 0.505]
    )
    assert Bins(bins.edges.copy(), "log") == bins
    assert hash(Bins(bins.edges.copy(), "log")) == hash(bins)
    assert Bins(bins.edges.copy(), "custom") != bins
    with pytest.raises(ValueError, match="read-only"):
        bins.edges[0] = 5.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Bins.log(0.0, 1.0), r"0 < low < high"),
        (lambda: Bins.log(-1.0, 1.0), r"0 < low < high"),
        (lambda: Bins.log(1.0, 1.0), r"0 < low < high"),
        (lambda: Bins.log(1e-3, np.inf), r"0 < low < high"),
        (lambda: Bins.linear(-1.0, 1.0), r"0 <= low < high"),
        (lambda: Bins.linear(2.0, 1.0), r"0 <= low < high"),
        (lambda: Bins.log(1e-3, 1.0, 0), r"n_bins must be a positive integer"),
        (lambda: Bins.linear(0.0, 1.0, 2.5), r"n_bins must be a positive integer"),
        (lambda: Bins(np.array([0.0, 1.0, 2.0]), "log"), r"log-spaced bins need a positive"),
        (lambda: Bins(np.array([0.0, 1.0, 1.0])), r"strictly increasing"),
        (lambda: Bins(np.array([2.0, 1.0])), r"strictly increasing"),
        (lambda: Bins(np.array([-1.0, 0.0, 1.0])), r"bins must start at >= 0"),
        (lambda: Bins(np.array([0.0, np.nan])), r"finite"),
        (lambda: Bins(np.array([0.0, np.inf])), r"finite"),
        (lambda: Bins(np.array([1.0])), r"at least 2 values"),
        (lambda: Bins(np.array([[0.0, 1.0]])), r"1-D"),
        (lambda: Bins(np.array([0.0, 1.0]), "cubic"), r"unknown bin spacing"),
        (lambda: Bins.from_range(0.1, 1.0, 10, "cubic"), r"unknown bin spacing"),
        (lambda: Bins.from_range(1.0, 0.1), r"invalid error range"),
        (lambda: Bins.from_range(0.1, np.nan), r"invalid error range"),
    ],
)
def test_bad_bins_are_refused(make, match):
    with pytest.raises(LTAUInputError, match=match):
        make()


# ------------------------------------------------------------------- histograms


@PROPERTY
@given(bins=any_bins(), seed=seeds, shape=sizes)
def test_from_errors_counts_match_numpy_histogram(bins, seed, shape):
    errors = errors_for(bins, seed, *shape)
    dist = ErrorDistributions.from_errors(errors, bins)
    counts, n_below, n_above = histogram_rows(errors, bins.edges)
    np.testing.assert_array_equal(dist.counts, counts)
    assert (dist.n_below, dist.n_above) == (n_below, n_above)
    np.testing.assert_array_equal(dist.n_observations, np.full(shape[0], shape[1]))
    assert dist.bins == bins and dist.n_samples == shape[0]


@PROPERTY
@given(bins=any_bins(), seed=seeds, shape=sizes)
def test_streaming_accumulator_matches_numpy_histogram(bins, seed, shape):
    """Observations added in random order and random batches give the same histograms."""
    errors = errors_for(bins, seed, *shape)
    rng = np.random.default_rng(seed)
    accumulator = HistogramAccumulator(bins, shape[0])
    for column in range(shape[1]):
        order = rng.permutation(shape[0])
        for batch in np.array_split(order, rng.integers(1, 4)):
            accumulator.add(batch, errors[batch, column])
    counts, n_below, n_above = histogram_rows(errors, bins.edges)
    dist = accumulator.distributions()
    np.testing.assert_array_equal(dist.counts, counts)
    assert (dist.n_below, dist.n_above) == (n_below, n_above)


def test_out_of_range_values_are_clipped_into_end_bins_and_counted():
    bins = Bins.linear(1.0, 3.0, 2)
    errors = np.array([[0.0, 0.5, 1.0, 2.0, 3.0, 3.5, 100.0]], dtype=np.float32)
    dist = ErrorDistributions.from_errors(errors, bins)
    np.testing.assert_array_equal(dist.counts, [[3, 4]])
    assert (dist.n_below, dist.n_above) == (2, 2)


def test_bins_chosen_from_data_span_the_observed_range():
    rng = np.random.default_rng(1)
    errors = (rng.lognormal(size=(20, 30)) * 1e-2).astype(np.float32)
    errors[0, 0] = 0.0  # an exact zero: below the log range, counted and clipped
    dist = ErrorDistributions.from_errors(errors, n_bins=25)
    positive = errors[errors > 0]
    assert dist.bins.spacing == "log" and dist.bins.n_bins == 25
    assert dist.bins.edges[0] == pytest.approx(float(positive.min()), rel=1e-12)
    assert dist.bins.edges[-1] == pytest.approx(float(errors.max()), rel=1e-12)
    counts, n_below, n_above = histogram_rows(errors, dist.bins.edges)
    np.testing.assert_array_equal(dist.counts, counts)
    assert (n_below, n_above) == (1, 0) == (dist.n_below, dist.n_above)

    linear = ErrorDistributions.from_errors(errors, n_bins=25, spacing="linear")
    assert linear.bins.edges[0] == 0.0
    assert linear.bins.edges[-1] == pytest.approx(float(errors.max()), rel=1e-12)
    np.testing.assert_array_equal(linear.counts, histogram_rows(errors, linear.bins.edges)[0])


def test_accumulator_rejects_bad_input():
    accumulator = HistogramAccumulator(Bins.linear(0.0, 1.0, 4), 5)
    with pytest.raises(LTAUInputError, match="unique within one call"):
        accumulator.add(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(LTAUInputError, match="2 ids but 3 errors"):
        accumulator.add(np.array([1, 2]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(LTAUInputError, match=r"ids must lie in \[0, 5\)"):
        accumulator.add(np.array([5]), np.array([0.1]))
    with pytest.raises(LTAUInputError, match="contains nan"):
        accumulator.add(np.array([0]), np.array([np.nan]))
    with pytest.raises(LTAUInputError, match="non-negative"):
        accumulator.add(np.array([0]), np.array([-0.1]))
    with pytest.raises(LTAUInputError, match="n_samples must be a positive integer"):
        HistogramAccumulator(Bins.linear(0.0, 1.0, 4), 0)
    assert accumulator.counts.sum() == 0


@pytest.mark.parametrize(
    ("errors", "match"),
    [
        (np.array([[0.1, np.nan]]), r"contains nan"),
        (np.array([[0.1, np.inf]]), r"contains inf"),
        (np.array([[0.1, -0.2]]), r"must be non-negative"),
        (np.empty((0, 4)), r"non-empty"),
        (np.empty((4, 0)), r"non-empty"),
        (np.array([0.1, 0.2]), r"must be 2-D"),
        (np.zeros((3, 4)), r"all errors are zero"),
    ],
)
def test_from_errors_rejects_bad_errors(errors, match):
    with pytest.raises(LTAUInputError, match=match):
        ErrorDistributions.from_errors(errors)


def test_from_errors_with_bins_rejects_bad_errors():
    bins = Bins.linear(0.0, 1.0, 4)
    with pytest.raises(LTAUInputError, match="contains nan"):
        ErrorDistributions.from_errors(np.array([[0.1, np.nan]]), bins)
    with pytest.raises(LTAUInputError, match="non-negative"):
        ErrorDistributions.from_errors(np.array([[0.1, -1.0]]), bins)


def test_bins_for_errors_rejects_empty_input():
    with pytest.raises(LTAUInputError, match="empty set of errors"):
        bins_for_errors(np.empty(0))


def test_distributions_constructor_checks_counts():
    bins = Bins.linear(0.0, 1.0, 3)
    with pytest.raises(LTAUInputError, match=r"counts must have shape \(n_samples, 3\)"):
        ErrorDistributions(bins, np.ones((2, 4), dtype=np.int64))
    with pytest.raises(LTAUInputError, match="at least one sample"):
        ErrorDistributions(bins, np.ones((0, 3), dtype=np.int64))
    with pytest.raises(LTAUInputError, match="non-negative integers"):
        ErrorDistributions(bins, np.array([[1, -1, 2]]))
    with pytest.raises(LTAUInputError, match="non-negative integers"):
        ErrorDistributions(bins, np.array([[1.0, 1.0, 2.0]]))
    with pytest.raises(
        LTAUInputError, match=r"1 samples have no recorded errors \(first ids: \[1\]"
    ):
        ErrorDistributions(bins, np.array([[1, 0, 2], [0, 0, 0]]))


# ----------------------------------------------------------------- statistics


@st.composite
def distributions(draw) -> ErrorDistributions:
    bins = draw(any_bins())
    n_samples = draw(st.integers(1, 10))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    sparse = draw(st.booleans())  # many empty bins -> flat CDF stretches
    counts = rng.integers(0, 6, size=(n_samples, bins.n_bins))
    if sparse:
        counts *= rng.random(counts.shape) < 0.25
    counts[np.arange(n_samples), rng.integers(0, bins.n_bins, n_samples)] += 1
    return ErrorDistributions(bins, counts.astype(np.uint16))


@PROPERTY
@given(dist=distributions())
def test_mass_pdf_and_cdf(dist):
    counts = dist.counts.astype(np.int64)
    np.testing.assert_allclose(dist.mass(), masses(counts), rtol=1e-14)
    pdf = dist.pdf()
    np.testing.assert_allclose(pdf, masses(counts) / np.diff(dist.bins.edges), rtol=1e-12)
    np.testing.assert_allclose(np.sum(pdf * dist.bins.widths, axis=1), 1.0, rtol=1e-12)
    cdf = dist.cdf()
    assert cdf.shape == (dist.n_samples, dist.bins.n_bins + 1)
    np.testing.assert_array_equal(cdf[:, 0], 0.0)
    np.testing.assert_allclose(cdf, cdf_at_edges(counts), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cdf[:, -1], 1.0, rtol=0, atol=1e-12)
    rows = np.array([dist.n_samples - 1, 0])
    np.testing.assert_array_equal(dist.mass(rows), dist.mass()[rows])
    np.testing.assert_array_equal(dist.cdf(slice(0, 1)), cdf[:1])


@PROPERTY
@given(dist=distributions(), atol_seed=seeds)
def test_exceedance_matches_interpolated_cdf(dist, atol_seed):
    rng = np.random.default_rng(atol_seed)
    edges = dist.bins.edges
    atols = np.concatenate(
        [
            [0.0, edges[0] / 2, edges[-1] * 2],
            edges,
            rng.uniform(edges[0], edges[-1], 6),
            np.exp(rng.uniform(np.log(edges[0] + 1e-9), np.log(edges[-1]), 4)),
        ]
    )
    counts = dist.counts.astype(np.int64)
    table = dist.exceedance(atols)
    assert table.shape == (dist.n_samples, atols.size)
    for column, atol in enumerate(atols):
        want = exceedance(counts, edges, atol)
        np.testing.assert_allclose(table[:, column], want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(dist.exceedance(float(atol)), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            exceedance_probability(dist.mass(), dist.bins, atol), want, rtol=0, atol=1e-12
        )
    # P(e > edge_j) = 1 - CDF(edge_j)
    np.testing.assert_allclose(dist.exceedance(edges), 1.0 - dist.cdf(), rtol=0, atol=1e-12)


def test_exceedance_on_log_bins_integrates_the_uniform_density():
    """A hand-checked case: one observation per decade bin, atol in the middle of a bin."""
    bins = Bins.log(1e-3, 1.0, 3)  # [1e-3, 1e-2), [1e-2, 1e-1), [1e-1, 1]
    dist = ErrorDistributions(bins, np.array([[1, 1, 2]]))
    # mass 1/4, 1/4, 1/2; atol = 0.055 is half-way through the middle bin's width
    assert dist.exceedance(0.055)[0] == pytest.approx(0.25 * 0.5 + 0.5, rel=1e-12)
    assert dist.exceedance(1e-2)[0] == pytest.approx(0.75, rel=1e-12)
    assert dist.exceedance(0.0)[0] == pytest.approx(1.0, rel=1e-12)
    assert dist.exceedance(5.0)[0] == 0.0


@PROPERTY
@given(dist=distributions())
def test_expected_error_integrates_the_survival_function(dist):
    counts = dist.counts.astype(np.int64)
    want = expected(counts, dist.bins.edges)
    np.testing.assert_allclose(dist.expected_error(), want, rtol=1e-10)
    np.testing.assert_allclose(
        expected_value(dist.mass(), dist.bins), masses(counts) @ dist.bins.centers, rtol=1e-12
    )


@PROPERTY
@given(dist=distributions(), levels=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_quantiles_invert_the_piecewise_linear_cdf(dist, levels):
    levels = np.array(levels)
    counts = dist.counts.astype(np.int64)
    got = dist.quantile(levels)
    assert got.shape == (dist.n_samples, levels.size)
    lo, hi = quantile_bounds(counts, dist.bins.edges, levels)
    tol = 1e-9 * dist.bins.edges[-1]
    assert np.all(got >= lo - tol), (got, lo)
    assert np.all(got <= hi + tol), (got, hi)
    # Away from the end points the quantile is inside the support and F(Q(q)) = q.
    cdf = cdf_at_edges(counts)
    for i in range(dist.n_samples):
        for j, level in enumerate(levels):
            if 0 < level < 1:
                f = np.interp(got[i, j], dist.bins.edges, cdf[i])
                assert f == pytest.approx(level, abs=1e-9)
    np.testing.assert_array_equal(dist.quantile(float(levels[0])), got[:, 0])
    np.testing.assert_array_equal(quantiles(dist.mass(), dist.bins, levels), got)


@PROPERTY
@given(dist=distributions(), confidence=st.floats(0.0, 0.999))
def test_central_interval_is_the_pair_of_tail_quantiles(dist, confidence):
    lower, upper = central_interval(dist.mass(), dist.bins, confidence)
    counts = dist.counts.astype(np.int64)
    lo, hi = quantile_bounds(counts, dist.bins.edges, np.array([(1 - confidence) / 2]))
    tol = 1e-9 * dist.bins.edges[-1]
    assert np.all((lower >= lo[:, 0] - tol) & (lower <= hi[:, 0] + tol))
    lo, hi = quantile_bounds(counts, dist.bins.edges, np.array([(1 + confidence) / 2]))
    assert np.all((upper >= lo[:, 0] - tol) & (upper <= hi[:, 0] + tol))
    assert np.all(lower <= upper)
    # The interval holds `confidence` of the mass (F is continuous).
    cdf = cdf_at_edges(counts)
    inside = np.array(
        [
            np.interp(u, dist.bins.edges, row) - np.interp(lw, dist.bins.edges, row)
            for lw, u, row in zip(lower, upper, cdf, strict=True)
        ]
    )
    np.testing.assert_allclose(inside, confidence, atol=1e-9)


def test_quantile_of_a_flat_cdf_stretch_lies_in_the_stretch():
    bins = Bins.linear(0.0, 4.0, 4)
    dist = ErrorDistributions(bins, np.array([[1, 0, 0, 1]]))
    median = dist.quantile(0.5)[0]
    assert 1.0 <= median <= 3.0
    assert dist.quantile(0.25)[0] == pytest.approx(0.5)
    assert dist.quantile(0.75)[0] == pytest.approx(3.5)


def test_quantiles_0_and_1_are_the_ends_of_the_support():
    """Q(0) is the smallest possible error (np.quantile(x, 0) == min(x)), Q(1) the largest."""
    bins = Bins.linear(0.0, 5.0, 5)
    counts = np.array([[0, 0, 3, 1, 0], [2, 0, 0, 0, 1], [0, 0, 0, 0, 4]])
    dist = ErrorDistributions(bins, counts)
    low, high = support(counts, bins.edges)
    got = dist.quantile([0.0, 1.0])
    np.testing.assert_allclose(got[:, 1], high)
    np.testing.assert_allclose(got[:, 0], low, err_msg="quantile(0) is not the support minimum")
    lower, upper = central_interval(dist.mass(), bins, 1.0)
    np.testing.assert_allclose(upper, high)
    np.testing.assert_allclose(lower, low, err_msg="confidence=1 interval starts below support")


def test_statistics_reject_bad_levels_and_tolerances():
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1]]))
    for levels in (1.5, -0.1, [0.5, 2.0], np.nan):
        with pytest.raises(LTAUInputError, match=r"must lie in \[0, 1\]"):
            dist.quantile(levels)
    with pytest.raises(LTAUInputError, match=r"confidence must lie in \[0, 1\]"):
        central_interval(dist.mass(), dist.bins, 1.2)
    with pytest.raises(LTAUInputError, match="non-empty list"):
        dist.quantile([])


@pytest.mark.parametrize("atol", [np.nan, -0.5])
def test_exceedance_rejects_nan_or_negative_tolerance(atol):
    """As LTAUEstimator.predict does: a NaN atol must not silently give NaN probabilities."""
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1]]))
    with pytest.raises(LTAUInputError, match="atol"):
        dist.exceedance(atol)


# ------------------------------------------------------------- pooling, subsets


@PROPERTY
@given(bins=any_bins(), seed=seeds, shape=sizes, n_models=st.integers(2, 4))
def test_pooling_models_equals_histogram_of_concatenated_trajectories(bins, seed, shape, n_models):
    per_model = [errors_for(bins, seed + i, *shape) for i in range(n_models)]
    parts = [ErrorDistributions.from_errors(errors, bins) for errors in per_model]
    pooled = parts[0].pooled(*parts[1:])
    concatenated = np.concatenate(per_model, axis=1)
    counts, n_below, n_above = histogram_rows(concatenated, bins.edges)
    np.testing.assert_array_equal(pooled.counts, counts)
    assert (pooled.n_below, pooled.n_above) == (n_below, n_above)
    whole = ErrorDistributions.from_errors(concatenated, bins)
    np.testing.assert_array_equal(pooled.counts, whole.counts)
    np.testing.assert_allclose(pooled.expected_error(), whole.expected_error(), rtol=1e-12)


def test_pooling_promotes_counts_that_overflow_uint16():
    bins = Bins.linear(0.0, 1.0, 2)
    a = ErrorDistributions(bins, np.array([[40_000, 1]], dtype=np.uint16))
    pooled = a.pooled(a)
    np.testing.assert_array_equal(pooled.counts, [[80_000, 2]])
    assert pooled.counts.dtype == np.uint32


def test_pooling_refuses_other_bins_or_samples():
    a = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1]]))
    with pytest.raises(LTAUInputError, match="same samples and bins"):
        a.pooled(ErrorDistributions(Bins.linear(0.0, 2.0, 2), np.array([[1, 1]])))
    with pytest.raises(LTAUInputError, match="same samples and bins"):
        a.pooled(ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1], [2, 0]])))


def test_subset_selects_rows():
    rng = np.random.default_rng(2)
    counts = rng.integers(1, 5, size=(6, 3))
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 3), counts)
    rows = np.array([4, 0, 4])
    np.testing.assert_array_equal(dist.subset(rows).counts, counts[rows])
    np.testing.assert_allclose(dist.subset(rows).expected_error(), dist.expected_error()[rows])
    with pytest.raises(LTAUInputError, match=r"rows must lie in \[0, 6\)"):
        dist.subset(np.array([6]))
    with pytest.raises(LTAUInputError, match="rows must be integers"):
        dist.subset(np.array([0.5]))


# ------------------------------------------------------------------------ files


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    errors = rng.lognormal(size=(50, 40)).astype(np.float32)
    for bins in (Bins.log(0.1, 5.0, 30), Bins.linear(0.0, 4.0, 20), Bins([0.0, 0.3, 1.0, 9.0])):
        dist = ErrorDistributions.from_errors(errors, bins)
        assert dist.n_below + dist.n_above > 0
        save_distributions(dist, tmp_path / "d.h5")
        back = load_distributions(tmp_path / "d.h5")
        assert back.bins == dist.bins
        np.testing.assert_array_equal(back.counts, dist.counts)
        assert back.counts.dtype == dist.counts.dtype
        assert (back.n_below, back.n_above) == (dist.n_below, dist.n_above)
        np.testing.assert_array_equal(back.quantile([0.1, 0.9]), dist.quantile([0.1, 0.9]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_save_is_atomic(tmp_path, monkeypatch):
    import ltau.distributions as module

    path = tmp_path / "d.h5"
    old = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1]]))
    save_distributions(old, path)
    before = path.read_bytes()
    real_write = module.write_array
    calls = []

    def failing_write(group, name, data):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_write(group, name, data)

    monkeypatch.setattr(module, "write_array", failing_write)
    new = ErrorDistributions(Bins.linear(0.0, 2.0, 3), np.array([[1, 2, 3]]))
    with pytest.raises(OSError, match="disk full"):
        save_distributions(new, path)
    assert calls == ["edges", "counts"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_loading_bad_files_gives_clear_errors(tmp_path):
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1], [0, 3]]))
    good = tmp_path / "good.h5"
    save_distributions(dist, good)

    with pytest.raises(LTAUFileError, match="does not exist"):
        load_distributions(tmp_path / "missing.h5")

    text = tmp_path / "text.h5"
    text.write_text("not an HDF5 file\n" * 100)
    with pytest.raises(LTAUFileError, match="not a readable ltau-distributions file"):
        load_distributions(text)

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(
        LTAUFileError, match=r"truncated or corrupted: it holds \d+ bytes after its header"
    ):
        load_distributions(truncated)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["x"] = np.arange(3)
    with pytest.raises(LTAUFileError, match="not written by ltau"):
        load_distributions(foreign)

    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "r+") as handle:
        handle.attrs["format_version"] = 99
    reseal(newer)
    with pytest.raises(LTAUFileError, match="format version 99"):
        load_distributions(newer)

    estimator_file = tmp_path / "estimator.h5"
    LTAUEstimator(1).fit(np.array([[0.0], [1.0]]), dist).save(estimator_file)
    with pytest.raises(
        LTAUFileError, match="'ltau-estimator' file; expected an ltau-distributions"
    ):
        load_distributions(estimator_file)

    bad_counts = tmp_path / "bad_counts.h5"
    bad_counts.write_bytes(good.read_bytes())
    with h5py.File(bad_counts, "r+") as handle:
        del handle["distributions/counts"]
        handle["distributions/counts"] = np.array([[1, 1], [0, 0]])
    reseal(bad_counts)
    with pytest.raises(LTAUFileError, match="counts has no checksum"):
        load_distributions(bad_counts)
    with h5py.File(bad_counts, "r+") as handle:  # well-formed, checksummed, but invalid
        counts = handle["distributions/counts"]
        counts.attrs["sha256"] = _sha256(np.ascontiguousarray(counts[()]))
    reseal(bad_counts)
    with pytest.raises(LTAUFileError, match="invalid stored distributions"):
        load_distributions(bad_counts)

    no_group = tmp_path / "no_group.h5"
    no_group.write_bytes(good.read_bytes())
    with h5py.File(no_group, "r+") as handle:
        del handle["distributions"]
    reseal(no_group)
    with pytest.raises(LTAUFileError, match="missing the group 'distributions'"):
        load_distributions(no_group)


def test_corrupted_counts_are_detected_by_checksum(tmp_path):
    rng = np.random.default_rng(4)
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 16), rng.integers(1, 9, size=(400, 16)))
    path = tmp_path / "d.h5"
    save_distributions(dist, path)
    with h5py.File(path, "r") as handle:
        info = handle["distributions/counts"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    middle = info.byte_offset + info.size // 2
    for i in range(middle, middle + 8):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(LTAUFileError, match="corrupted"):
        load_distributions(path)


def test_corruption_anywhere_in_a_distributions_file_is_an_ltau_file_error(tmp_path):
    """Flip 16 bytes at ~250 places (densely over the HDF5 metadata): loading either raises
    LTAUFileError or returns exactly the saved distributions."""
    rng = np.random.default_rng(8)
    dist = ErrorDistributions(Bins.log(1e-3, 1.0, 24), rng.integers(0, 3, size=(300, 24)) + 1)
    good = tmp_path / "good.h5"
    save_distributions(dist, good)
    problems = corruption_scan("distributions", good, tmp_path)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:25])
