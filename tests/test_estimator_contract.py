"""LTAUEstimator's scikit-learn contract (parameters, clone, fitted state, not-fitted errors)
and the per-group view of a prediction."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from ltau import LTAUEstimator, LTAUInputError, LTAUPrediction, NotFittedError, metrics

PARAMS = {
    "n_neighbors": 4,
    "weights": "distance",
    "distance_scale": "local",
    "index": "hnsw",
    "index_params": {"ef_search": 32},
    "batch_size": 17,
}


@pytest.fixture
def fitted(small_data):
    return LTAUEstimator(**PARAMS).fit(small_data["train"], small_data["distributions"])


def test_get_params_are_the_constructor_arguments():
    estimator = LTAUEstimator(**PARAMS)
    assert estimator.get_params() == PARAMS == estimator.get_params(deep=False)
    assert list(LTAUEstimator().get_params()) == list(PARAMS)
    assert LTAUEstimator().get_params()["index_params"] is None
    assert repr(LTAUEstimator(3)).startswith("LTAUEstimator(n_neighbors=3, weights='uniform'")


def test_sklearn_clone_gives_an_unfitted_copy_with_equal_params(fitted, small_data):
    copy = clone(fitted)
    assert type(copy) is LTAUEstimator and copy is not fitted
    assert copy.get_params() == fitted.get_params()
    assert copy.get_params()["index_params"] is not fitted.index_params
    assert not [name for name in vars(copy) if name.endswith("_")]
    with pytest.raises(NotFittedError):
        copy.predict(small_data["queries"])
    refit = copy.fit(small_data["train"], small_data["distributions"])
    queries = small_data["queries"]
    np.testing.assert_array_equal(
        refit.predict(queries).expected_error, fitted.predict(queries).expected_error
    )


def test_set_params(fitted, small_data):
    queries = small_data["queries"]
    before = fitted.predict(queries).expected_error
    assert fitted.set_params(batch_size=5) is fitted and fitted.batch_size == 5
    np.testing.assert_array_equal(fitted.predict(queries).expected_error, before)  # kept fitted
    fitted.set_params(n_neighbors=PARAMS["n_neighbors"])  # unchanged value: still fitted
    assert hasattr(fitted, "index_")
    fitted.set_params(n_neighbors=2, weights="uniform")
    assert (fitted.n_neighbors, fitted.weights) == (2, "uniform")
    assert not hasattr(fitted, "index_") and not hasattr(fitted, "metadata_")
    with pytest.raises(NotFittedError, match=r"LTAUEstimator.predict needs a fitted estimator"):
        fitted.predict(queries)
    with pytest.raises(LTAUInputError, match=r"unknown parameters \['k'\] for LTAUEstimator"):
        fitted.set_params(k=3)
    with pytest.raises(LTAUInputError, match="batch_size must be a positive integer"):
        LTAUEstimator(2).fit(small_data["train"], small_data["distributions"]).set_params(
            batch_size=0
        )


def test_fitted_state_and_metadata(fitted, small_data, tmp_path):
    assert LTAUEstimator(3).fit(small_data["train"], small_data["distributions"]).metadata_ == {}
    fitted.save(tmp_path / "a.h5", metadata={"unit": "eV/Å", "epochs": (1, 2)})
    assert fitted.metadata_ == {"unit": "eV/Å", "epochs": [1, 2]}
    assert LTAUEstimator.load(tmp_path / "a.h5").metadata_ == fitted.metadata_
    fitted.save(tmp_path / "b.h5")
    assert fitted.metadata_ == {} == LTAUEstimator.load(tmp_path / "b.h5").metadata_
    with pytest.raises(LTAUInputError, match="metadata must be a dict; got list"):
        fitted.save(tmp_path / "c.h5", metadata=[1, 2])
    assert fitted.metadata_ == {}


@pytest.mark.parametrize(
    ("method", "call"),
    [
        ("predict", lambda e, q, y: e.predict(q)),
        ("calibrate", lambda e, q, y: e.calibrate(q, y)),
        ("probability_integral_transform", lambda e, q, y: e.probability_integral_transform(q, y)),
        ("kneighbors", lambda e, q, y: e.kneighbors(q)),
        ("save", lambda e, q, y: e.save("never.h5")),
        ("bins", lambda e, q, y: e.bins),
    ],
)
def test_not_fitted_error_names_the_method(small_data, method, call):
    queries = small_data["queries"]
    with pytest.raises(NotFittedError, match=rf"LTAUEstimator\.{method} needs a fitted.*load\(\)"):
        call(LTAUEstimator(), queries, np.ones(len(queries)))
    assert not hasattr(LTAUEstimator(), "n_features_in_")  # an AttributeError too


def test_per_group_by_hand():
    prediction = LTAUPrediction(
        expected_error=np.array([0.1, 0.4, 0.2, 0.3, 0.9]),
        ood_score=np.array([1.0, 2.0, 6.0, 3.0, 0.5]),
        neighbor_indices=np.zeros((5, 1), int),
        neighbor_distances=np.zeros((5, 1)),
        atol=(0.15, 0.35),
        exceedance=np.array([[0.6, 0.1], [0.9, 0.5], [0.7, 0.2], [0.8, 0.3], [1.0, 0.9]]),
    )
    summary = prediction.per_group(np.array([7, 2, 7, 2, 5]))
    np.testing.assert_array_equal(summary.group_ids, [2, 5, 7])
    np.testing.assert_array_equal(summary.n_samples, [2, 1, 2])
    np.testing.assert_allclose(summary.max_expected_error, [0.4, 0.9, 0.2])
    np.testing.assert_allclose(summary.mean_expected_error, [0.35, 0.9, 0.15])
    np.testing.assert_allclose(summary.max_exceedance, [[0.9, 0.5], [1.0, 0.9], [0.7, 0.2]])
    np.testing.assert_allclose(summary.max_ood_score, [3.0, 0.5, 6.0])
    np.testing.assert_allclose(summary.mean_ood_score, [2.5, 0.5, 3.5])
    assert summary.atol == (0.15, 0.35)
    without_atol = LTAUPrediction(
        prediction.expected_error, prediction.ood_score, np.zeros((5, 1), int), np.zeros((5, 1))
    )
    assert without_atol.per_group(np.zeros(5, int)).max_exceedance is None
    with pytest.raises(LTAUInputError, match=r"one label per query, shape \(5,\)"):
        prediction.per_group(np.zeros(4, int))
    with pytest.raises(LTAUInputError, match="integer labels"):
        prediction.per_group(np.zeros(5))


def test_per_group_of_a_real_prediction(fitted, small_data):
    queries = small_data["queries"]
    groups = np.arange(len(queries)) // 6
    prediction = fitted.predict(queries, atol=0.5)
    summary = prediction.per_group(groups)
    for group in range(10):
        rows = groups == group
        assert summary.max_expected_error[group] == prediction.expected_error[rows].max()
        assert summary.max_exceedance[group, 0] == prediction.exceedance[rows, 0].max()
        np.testing.assert_allclose(
            summary.mean_ood_score[group], prediction.ood_score[rows].mean(), rtol=1e-12
        )


def test_prediction_uq_metrics_uses_what_the_prediction_holds(fitted, small_data):
    queries = small_data["queries"]
    observed = np.abs(small_data["queries"][:, 0]).astype(np.float64)
    prediction = fitted.predict(queries, atol=[0.2, 0.5], confidence=0.8, return_pdf=True)
    bundle = prediction.uq_metrics(observed, atol=0.5)
    assert bundle == metrics.uq_metrics(
        observed,
        prediction.expected_error,
        lower=prediction.interval_lower,
        upper=prediction.interval_upper,
        confidence=0.8,
        exceedance=prediction.exceedance[:, 1],
        atol=0.5,
        mass=prediction.pdf * prediction.bins.widths,
        bins=prediction.bins,
    )
    assert "coverage80" in bundle and "crps" in bundle
    assert prediction.uq_metrics(observed)["fraction_above_atol"] == float(np.mean(observed > 0.2))
    plain = fitted.predict(queries).uq_metrics(observed)
    assert list(plain) == ["n", "spearman", "ause", "ence"]
    with pytest.raises(LTAUInputError, match=r"atol=0.3 is not among the predicted"):
        prediction.uq_metrics(observed, atol=0.3)
