"""The per-call prediction path: statistics equal to a direct computation from the mixture,
and FAISS's thread setting around small searches."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from golden_predictions import GOLDEN_FILE, golden_cases

from ltau import LTAUEstimator
from ltau.histogram import cdf_at, edge_cdf
from ltau.histogram import quantiles as mixture_quantiles
from ltau.search import SERIAL_QUERIES, NeighborIndex


def _reference(estimator: LTAUEstimator, queries: np.ndarray, groups: np.ndarray, atol):
    """Expected error and exceedance formed the long way: the full mixture of each query's
    neighbours, the widening factors and the calibrator's own statistics of that mixture."""
    distances, indices = estimator.kneighbors(queries)
    scaled = distances / estimator.local_scale_[indices]
    weights = np.full(indices.shape, 1.0 / indices.shape[1])
    mixture = np.einsum(
        "qk,qkb->qb",
        weights,
        estimator.distributions_.mass(indices.ravel()).reshape(*indices.shape, -1),
    )
    ood = scaled.mean(axis=1)
    group_mean = np.array([ood[groups == group].mean() for group in groups])
    factors = estimator.widening_.factors(ood, group_mean)
    calibrator = estimator.calibrator_
    expected = calibrator.expected_error(mixture, estimator.bins) * factors
    exceedance = np.stack(
        [1.0 - calibrator.cdf(mixture, estimator.bins, value / factors) for value in atol], axis=1
    )
    return mixture, factors, expected, exceedance, ood


@pytest.mark.parametrize("method", ["isotonic", "scale"])
def test_calibrated_statistics_equal_the_mixture_computation(cluster_data, method):
    train, queries = cluster_data["train"], cluster_data["queries"]
    estimator = LTAUEstimator(8, distance_scale="local").fit(
        train[:2500], cluster_data["distributions"].subset(np.arange(2500))
    )
    calibration_groups = np.arange(500) // 10
    held_out = train[2500:]
    true_errors = np.abs(np.random.default_rng(3).normal(size=500)) * 0.5
    estimator.calibrate(held_out, true_errors, method=method, groups=calibration_groups)
    groups = np.arange(queries.shape[0]) // 15  # structures of 15 atoms, as in an MD step
    atol = (0.05, 0.3)
    for rows in (slice(0, 15), slice(None)):
        prediction = estimator.predict(
            queries[rows], groups=groups[rows], atol=atol, quantiles=(0.5,), confidence=0.9
        )
        mixture, factors, expected, exceedance, ood = _reference(
            estimator, queries[rows], groups[rows], atol
        )
        np.testing.assert_allclose(prediction.expected_error, expected, rtol=1e-10)
        np.testing.assert_allclose(prediction.exceedance, exceedance, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(prediction.ood_score, ood, rtol=1e-6)
        median = estimator.calibrator_.quantiles(mixture, estimator.bins, 0.5) * factors
        np.testing.assert_allclose(prediction.quantiles[:, 0], median, rtol=1e-10)
    raw = estimator.predict(queries, atol=atol, calibrated=False, quantiles=(0.5,))
    mixture = _reference(estimator, queries, groups, atol)[0]
    np.testing.assert_allclose(raw.expected_error, mixture @ estimator.bins.centers, rtol=1e-10)
    np.testing.assert_allclose(
        raw.exceedance[:, 1], 1.0 - cdf_at(mixture, estimator.bins, 0.3), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        raw.quantiles[:, 0], mixture_quantiles(mixture, estimator.bins, 0.5), rtol=1e-10
    )
    assert edge_cdf(mixture).shape[1] == estimator.bins.n_bins + 1


def test_small_searches_run_on_one_thread_and_restore_the_setting(cluster_data, monkeypatch):
    index = NeighborIndex().build(cluster_data["train"])
    queries = cluster_data["queries"]
    settings = []
    set_threads = faiss.omp_set_num_threads
    monkeypatch.setattr(
        faiss, "omp_set_num_threads", lambda n: (settings.append(n), set_threads(n))[1]
    )
    previous = faiss.omp_get_max_threads()
    try:
        set_threads(2)
        full = index._index.search(queries[:15], 5)
        distances, indices = index.search(queries[:15], 5)
        assert settings == [1, 2] and faiss.omp_get_max_threads() == 2
        np.testing.assert_array_equal(indices, full[1])
        np.testing.assert_allclose(distances, np.sqrt(full[0]), rtol=1e-6)
        index.search(queries[:SERIAL_QUERIES], 5)  # large enough for FAISS's own threads
        assert settings == [1, 2]

        class Failing:
            d, ntotal = index.dim, index.n_items

            def search(self, data, k):
                raise RuntimeError("search failed")

        index._index = Failing()
        with pytest.raises(RuntimeError, match="search failed"):
            index.search(queries[:3], 5)
        assert settings == [1, 2, 1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        set_threads(previous)


def test_searched_fit_and_calibration_refuse_bad_input(cluster_data):
    from ltau import LTAUInputError

    train, distributions = cluster_data["train"][:200], cluster_data["distributions"]
    subset = distributions.subset(np.arange(200))
    estimator = LTAUEstimator(5)
    with pytest.raises(LTAUInputError, match="must be a NeighborIndex"):
        estimator.fit_searched(train, subset)
    index = NeighborIndex("exact").build(train)
    with pytest.raises(LTAUInputError, match="holds 200 items but there are 3000"):
        estimator.fit_searched(index, distributions)
    with pytest.raises(LTAUInputError, match="needs the training samples' distances"):
        LTAUEstimator(5, distance_scale="local").fit_searched(index, subset, np.ones((200, 2)))
    fitted = estimator.fit_searched(index, subset)
    distances, indices = fitted.kneighbors(train[:20])
    with pytest.raises(LTAUInputError):
        fitted.calibrate_from_neighbors(distances, indices, np.ones(7))
    with pytest.raises(LTAUInputError):
        fitted.calibrate_from_neighbors(distances[:, :2], indices, np.ones(20))


def test_predictions_equal_those_before_the_per_call_path_was_reworked():
    golden = np.load(GOLDEN_FILE)
    today = golden_cases()
    assert sorted(today) == sorted(golden.files)
    for name in golden.files:
        np.testing.assert_allclose(today[name], golden[name], rtol=1e-9, atol=1e-12, err_msg=name)
