"""LTAUEstimator: kNN mixtures against brute force, approximate indexes, persistence, bad input."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from ltau_reference import (
    brute_force_knn,
    corruption_scan,
    exceedance,
    expected,
    knn_weights,
    mixture,
    quantile_bounds,
    reseal,
)

from ltau import (
    Bins,
    ErrorDistributions,
    LTAUEstimator,
    LTAUFileError,
    LTAUInputError,
    LTAUPrediction,
)
from ltau._io import sign_attributes
from ltau.distributions import save_distributions
from ltau.estimator import _ESTIMATOR_ATTRIBUTES
from ltau.search import NeighborIndex

ATOLS = [0.0, 0.013, 0.1, 0.37, 2.5, 1e3]
# Levels chosen off every multiple of 1 / (k x 25 observations): no exact CDF plateaus.
LEVELS = [0.0537, 0.2513, 0.5021, 0.9013, 0.9871]
CONFIDENCE = 0.8374
# Approximate vs exact predicted expected error on the clustered data (relative difference).
HNSW_MAX_REL = 0.05
IVFPQ_MEDIAN_REL, IVFPQ_MAX_REL = 0.08, 0.35
IVFPQ_PARAMS = {"nlist": 32, "m": 8, "nbits": 6, "nprobe": 8}


def full_predict(estimator: LTAUEstimator, queries: np.ndarray) -> LTAUPrediction:
    return estimator.predict(
        queries, atol=ATOLS, quantiles=LEVELS, confidence=CONFIDENCE, return_pdf=True
    )


def assert_predictions_equal(a: LTAUPrediction, b: LTAUPrediction) -> None:
    for name in (
        "expected_error",
        "ood_score",
        "neighbor_indices",
        "neighbor_distances",
        "exceedance",
        "quantiles",
        "interval_lower",
        "interval_upper",
        "pdf",
    ):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.atol, a.quantile_levels, a.confidence, a.bins) == (
        b.atol,
        b.quantile_levels,
        b.confidence,
        b.bins,
    )


# ------------------------------------------------------------ kNN vs brute force


@pytest.mark.parametrize("weighting", ["uniform", "distance"])
@pytest.mark.parametrize("k", [1, 7, 400])
def test_knn_averaging_matches_brute_force(small_data, weighting, k):
    train, queries = small_data["train"], small_data["queries"]
    dist: ErrorDistributions = small_data["distributions"]
    counts = dist.counts.astype(np.int64)
    edges = dist.bins.edges
    estimator = LTAUEstimator(k, weights=weighting).fit(train, dist)
    prediction = full_predict(estimator, queries)

    want_d, want_i = brute_force_knn(train, queries, k)
    np.testing.assert_allclose(prediction.neighbor_distances, want_d, rtol=1e-4, atol=1e-3)
    if k < train.shape[0]:
        np.testing.assert_array_equal(prediction.neighbor_indices, want_i)
    else:  # all items: same sets
        np.testing.assert_array_equal(np.sort(prediction.neighbor_indices, axis=1), np.sort(want_i))
    weights = knn_weights(want_d, weighting)
    mix = mixture(counts, want_i, weights)
    n = queries.shape[0]

    np.testing.assert_allclose(prediction.ood_score, want_d.mean(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prediction.expected_error, expected(mix, edges), rtol=1e-5)
    # Linear in the neighbours: weighted mean of the neighbours' own expected errors.
    own = expected(counts, edges)
    np.testing.assert_allclose(
        prediction.expected_error, np.sum(weights * own[want_i], axis=1), rtol=1e-5
    )
    assert prediction.exceedance.shape == (n, len(ATOLS))
    for column, atol in enumerate(ATOLS):
        np.testing.assert_allclose(
            prediction.exceedance[:, column], exceedance(mix, edges, atol), rtol=1e-5, atol=1e-9
        )
    np.testing.assert_allclose(prediction.pdf, mix / np.diff(edges), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(np.sum(prediction.pdf * np.diff(edges), axis=1), 1.0, rtol=1e-6)

    lo, hi = quantile_bounds(mix, edges, np.array(LEVELS))
    assert prediction.quantiles.shape == (n, len(LEVELS))
    # Distances agree to ~1e-6, so distance weights (and quantiles) agree to ~1e-5.
    span = edges[-1] - edges[0]
    assert np.all(prediction.quantiles >= lo - 1e-5 * span)
    assert np.all(prediction.quantiles <= hi + 1e-5 * span)
    np.testing.assert_allclose(prediction.quantiles, lo, rtol=1e-4, atol=1e-7)
    tails = np.array([(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    lo, _ = quantile_bounds(mix, edges, tails)
    np.testing.assert_allclose(prediction.interval_lower, lo[:, 0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(prediction.interval_upper, lo[:, 1], rtol=1e-4, atol=1e-7)

    assert prediction.atol == tuple(ATOLS)
    assert prediction.quantile_levels == tuple(LEVELS)
    assert prediction.confidence == CONFIDENCE
    assert prediction.bins == dist.bins
    columns = prediction.columns()
    np.testing.assert_array_equal(columns["p_exceed_0.1"], prediction.exceedance[:, 2])
    np.testing.assert_array_equal(columns["quantile_0.5021"], prediction.quantiles[:, 2])
    np.testing.assert_array_equal(columns["interval_0.8374_upper"], prediction.interval_upper)


def test_distance_weights_favour_an_exact_match(small_data):
    """Querying a training point: weight 1/max(d, 1e-12) makes it dominate the mixture."""
    train, dist = small_data["train"], small_data["distributions"]
    estimator = LTAUEstimator(10, weights="distance").fit(train, dist)
    rows = np.array([3, 50, 399])
    prediction = estimator.predict(train[rows])
    np.testing.assert_array_equal(prediction.neighbor_indices[:, 0], rows)
    assert np.all(prediction.neighbor_distances[:, 0] < 1e-3)
    np.testing.assert_allclose(prediction.expected_error, dist.expected_error()[rows], rtol=1e-2)
    uniform = LTAUEstimator(10).fit(train, dist).predict(train[rows])
    weights = estimator.neighbor_weights(np.array([[0.0, 1.0], [1.0, 3.0]]))
    np.testing.assert_allclose(
        weights, [[1.0 / (1.0 + 1e-12), 1e-12 / (1.0 + 1e-12)], [0.75, 0.25]]
    )
    assert not np.allclose(uniform.expected_error, prediction.expected_error)


def test_mixture_is_normalised_in_double_precision(small_data):
    """The mixture's PDF integrates to 1 and weights sum to 1 to float64 precision for both
    weightings (FAISS distances are float32; weights must not inherit that precision)."""
    train, queries, dist = small_data["train"], small_data["queries"], small_data["distributions"]
    widths = dist.bins.widths
    for weighting in ("uniform", "distance"):
        estimator = LTAUEstimator(7, weights=weighting).fit(train, dist)
        distances, _ = estimator.kneighbors(queries)
        weights = estimator.neighbor_weights(distances)
        assert weights.dtype == np.float64, f"{weighting}: weights are {weights.dtype}"
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12, err_msg=weighting)
        pdf = estimator.predict(queries, return_pdf=True).pdf
        np.testing.assert_allclose(pdf @ widths, 1.0, rtol=1e-12, err_msg=weighting)


def test_batches_and_neighbour_aggregation_agree(small_data):
    train, queries, dist = small_data["train"], small_data["queries"], small_data["distributions"]
    whole = full_predict(LTAUEstimator(5, weights="distance").fit(train, dist), queries)
    batched_estimator = LTAUEstimator(5, weights="distance", batch_size=7).fit(train, dist)
    assert_predictions_equal(full_predict(batched_estimator, queries), whole)
    distances, indices = batched_estimator.kneighbors(queries)
    again = batched_estimator.predict_from_neighbors(
        distances, indices, atol=ATOLS, quantiles=LEVELS, confidence=CONFIDENCE, return_pdf=True
    )
    assert_predictions_equal(again, whole)
    joined = LTAUPrediction.concatenate(
        [
            full_predict(batched_estimator, queries[:13]),
            full_predict(batched_estimator, queries[13:]),
        ]
    )
    assert_predictions_equal(joined, whole)
    plain = batched_estimator.predict(queries)
    assert plain.exceedance is None and plain.quantiles is None and plain.pdf is None
    assert plain.interval_lower is None
    assert set(plain.columns()) == {"expected_error", "ood_score", "below_resolution"}
    np.testing.assert_array_equal(plain.expected_error, whole.expected_error)


def test_missing_neighbours_are_left_out_of_the_average(small_data):
    """Slots an approximate index could not fill (index -1, distance inf) carry no weight."""
    train, dist = small_data["train"], small_data["distributions"]
    counts = dist.counts.astype(np.int64)
    edges = dist.bins.edges
    for weighting in ("uniform", "distance"):
        estimator = LTAUEstimator(4, weights=weighting).fit(train, dist)
        indices = np.array([[5, 9, -1, -1], [1, 2, 3, 4]])
        distances = np.array([[0.5, 2.0, np.inf, np.inf], [1.0, 1.0, 2.0, 4.0]])
        got = estimator.predict_from_neighbors(
            distances, indices, atol=0.2, quantiles=0.5021, return_pdf=True
        )
        found = [indices[0, :2], indices[1]]
        found_d = [distances[0, :2], distances[1]]
        for row in range(2):
            w = knn_weights(found_d[row][None, :], weighting)
            mix = mixture(counts, found[row][None, :], w)
            assert got.expected_error[row] == pytest.approx(expected(mix, edges)[0], rel=1e-10)
            assert got.exceedance[row, 0] == pytest.approx(exceedance(mix, edges, 0.2)[0], 1e-10)
            np.testing.assert_allclose(got.pdf[row], mix[0] / np.diff(edges), rtol=1e-10)
            assert got.ood_score[row] == pytest.approx(found_d[row].mean())
        with pytest.raises(LTAUInputError, match="found no neighbour for some queries"):
            estimator.predict_from_neighbors(np.full((1, 4), np.inf), np.full((1, 4), -1))
        with pytest.raises(LTAUInputError, match=r"must both be \(n, k\)"):
            estimator.predict_from_neighbors(distances, indices[:1])


def _local_scales_by_hand(train: np.ndarray, k: int) -> np.ndarray:
    """``c_j = (s_j + m) / (2 m)``: ``s_j`` the mean distance to the k nearest *other* rows."""
    train = np.asarray(train, dtype=np.float64)
    pairwise = np.sqrt(np.sum((train[:, None, :] - train[None, :, :]) ** 2, axis=2))
    np.fill_diagonal(pairwise, np.inf)
    spacing = np.sort(pairwise, axis=1)[:, :k].mean(axis=1)
    median = np.median(spacing)
    return (spacing + median) / (2 * median)


@pytest.mark.parametrize("weighting", ["uniform", "distance"])
def test_local_distance_scale_matches_direct_computation(small_data, weighting):
    """Distances divided by the neighbour's local scale, for weights and OOD scores alike."""
    train, queries, dist = small_data["train"], small_data["queries"], small_data["distributions"]
    counts, edges, k = dist.counts.astype(np.int64), dist.bins.edges, 7
    estimator = LTAUEstimator(k, weights=weighting, distance_scale="local").fit(train, dist)
    scale = _local_scales_by_hand(train, k)
    np.testing.assert_allclose(estimator.local_scale_, scale, rtol=1e-5)
    assert np.median(estimator.local_scale_) == pytest.approx(1.0)

    prediction = full_predict(estimator, queries)
    want_d, want_i = brute_force_knn(train, queries, k)
    np.testing.assert_array_equal(prediction.neighbor_indices, want_i)  # same neighbours
    np.testing.assert_allclose(prediction.neighbor_distances, want_d, rtol=1e-4, atol=1e-3)
    relative = want_d / scale[want_i]
    np.testing.assert_allclose(prediction.ood_score, relative.mean(axis=1), rtol=1e-4)
    weights = knn_weights(relative, weighting)
    mix = mixture(counts, want_i, weights)
    np.testing.assert_allclose(prediction.expected_error, expected(mix, edges), rtol=1e-4)
    np.testing.assert_allclose(
        prediction.exceedance[:, 2], exceedance(mix, edges, ATOLS[2]), rtol=1e-4, atol=1e-9
    )
    absolute = LTAUEstimator(k, weights=weighting).fit(train, dist).predict(queries)
    assert absolute.ood_score == pytest.approx(want_d.mean(axis=1), rel=1e-4)
    assert not np.allclose(absolute.ood_score, prediction.ood_score)

    # Group OOD scores and the neighbour-level entry point use the same scaled distances.
    groups = np.arange(queries.shape[0]) // 6
    estimator.calibrate(queries, np.abs(queries[:, 0]) + 0.05, groups=groups)
    grouped = estimator.predict(queries, groups=groups, atol=0.1, confidence=0.8)
    again = estimator.predict_from_neighbors(
        *estimator.kneighbors(queries), groups=groups, atol=0.1, confidence=0.8
    )
    assert_predictions_equal(again, grouped)


def test_local_distance_scale_with_coincident_training_samples(small_data):
    """Copies of a training row give it spacing 0; its scale stays finite: (0 + m) / 2m."""
    train, dist = small_data["train"], small_data["distributions"]
    copies = np.concatenate([train, train[:50], train[:50]])
    copied_dist = ErrorDistributions(
        dist.bins, np.concatenate([dist.counts, dist.counts[:50], dist.counts[:50]])
    )
    estimator = LTAUEstimator(2, distance_scale="local").fit(copies, copied_dist)
    scale = estimator.local_scale_
    assert np.all(np.isfinite(scale)) and np.all(scale > 0)
    np.testing.assert_allclose(scale[:50], 0.5)  # two copies at distance 0: s_j = 0
    np.testing.assert_allclose(scale, _local_scales_by_hand(copies, 2), rtol=1e-5, atol=1e-6)
    prediction = estimator.predict(train[:50])
    assert np.all(np.isfinite(prediction.ood_score))

    same = np.ones((10, 6), dtype=np.float32)
    with pytest.raises(LTAUInputError, match="needs distinct training descriptors"):
        LTAUEstimator(3, distance_scale="local").fit(same, dist.subset(np.arange(10)))
    with pytest.raises(LTAUInputError, match="needs at least 2 training samples"):
        LTAUEstimator(1, distance_scale="local").fit(train[:1], dist.subset(np.arange(1)))


@pytest.mark.parametrize(("kind", "params"), [("exact", {}), ("hnsw", {"ef_search": 48})])
def test_local_scales_are_saved_and_checked(cluster_data, tmp_path, kind, params):
    estimator = LTAUEstimator(6, distance_scale="local", index=kind, index_params=params)
    estimator.fit(cluster_data["train"], cluster_data["distributions"])
    path = tmp_path / "local.h5"
    estimator.save(path)
    loaded = LTAUEstimator.load(path)
    assert loaded.get_params() == estimator.get_params()
    np.testing.assert_array_equal(loaded.local_scale_, estimator.local_scale_)
    queries = cluster_data["queries"]
    assert_predictions_equal(full_predict(loaded, queries), full_predict(estimator, queries))

    missing = tmp_path / "missing.h5"
    missing.write_bytes(path.read_bytes())
    with h5py.File(missing, "r+") as handle:
        del handle["index/local_scale"]
    reseal(missing)
    with pytest.raises(
        LTAUFileError, match="distance_scale='local' but the local scales are missing"
    ):
        LTAUEstimator.load(missing)
    _flip_in_dataset(path, "index/local_scale", 0x5A)
    with pytest.raises(LTAUFileError, match="is corrupted"):
        LTAUEstimator.load(path)


# ------------------------------------------------------- approximate vs exact


@pytest.mark.parametrize(
    ("kind", "params", "median_rel", "max_rel"),
    [
        ("hnsw", {}, HNSW_MAX_REL, HNSW_MAX_REL),
        ("ivfpq", IVFPQ_PARAMS, IVFPQ_MEDIAN_REL, IVFPQ_MAX_REL),
    ],
)
def test_approximate_predictions_agree_with_exact(cluster_data, kind, params, median_rel, max_rel):
    train, queries, dist = (
        cluster_data["train"],
        cluster_data["queries"],
        cluster_data["distributions"],
    )
    exact = LTAUEstimator(10).fit(train, dist).predict(queries, atol=0.1)
    approx = LTAUEstimator(10, index=kind, index_params=params).fit(train, dist)
    got = approx.predict(queries, atol=0.1)
    rel = np.abs(got.expected_error / exact.expected_error - 1.0)
    assert np.median(rel) <= median_rel, f"{kind}: median relative difference {np.median(rel)}"
    assert rel.max() <= max_rel, f"{kind}: max relative difference {rel.max()}"
    assert np.abs(got.exceedance - exact.exceedance).max() <= 0.15
    if kind == "hnsw":
        recall = np.mean(
            [
                len(set(a) & set(b)) / 10
                for a, b in zip(got.neighbor_indices, exact.neighbor_indices, strict=True)
            ]
        )
        assert recall >= 0.9
        np.testing.assert_allclose(got.ood_score, exact.ood_score, rtol=0.05)


@pytest.mark.parametrize(
    ("kind", "params", "check"),
    [
        (
            "hnsw",
            {"M": 12, "ef_construction": 40, "ef_search": 37},
            lambda i: (
                (i.hnsw.nb_neighbors(1), i.hnsw.efConstruction, i.hnsw.efSearch) == (12, 40, 37)
            ),
        ),
        (
            "ivfpq",
            {"nlist": 24, "m": 4, "nbits": 5, "nprobe": 3},
            lambda i: (i.nlist, i.pq.M, i.pq.nbits, i.nprobe) == (24, 4, 5, 3),
        ),
    ],
)
def test_estimator_honours_index_parameters_also_after_load(
    cluster_data, tmp_path, kind, params, check
):
    estimator = LTAUEstimator(8, index=kind, index_params=params)
    estimator.fit(cluster_data["train"], cluster_data["distributions"])
    assert check(estimator.index_._index)
    estimator.save(tmp_path / "est.h5")
    loaded = LTAUEstimator.load(tmp_path / "est.h5")
    assert check(loaded.index_._index)
    assert loaded.index_.params == estimator.index_.params
    assert loaded.get_params() == estimator.get_params()


# ------------------------------------------------------------------ persistence


@pytest.mark.parametrize(
    ("kind", "params"), [("exact", {}), ("hnsw", {"ef_search": 48}), ("ivfpq", IVFPQ_PARAMS)]
)
@pytest.mark.parametrize("weighting", ["uniform", "distance"])
def test_save_load_gives_identical_predictions(cluster_data, tmp_path, kind, params, weighting):
    estimator = LTAUEstimator(6, weights=weighting, index=kind, index_params=params, batch_size=64)
    estimator.fit(cluster_data["train"], cluster_data["distributions"])
    metadata = {"unit": "eV/Å", "model": {"name": "mace", "epochs": [1, 2, 3]}, "lr": 1e-3}
    path = tmp_path / "estimator.h5"
    estimator.save(path, metadata=metadata)
    loaded = LTAUEstimator.load(path)
    assert loaded.metadata_ == metadata
    assert loaded.get_params() == estimator.get_params()
    assert repr(loaded) == repr(estimator)
    assert loaded.bins == estimator.bins
    assert loaded.n_features_in_ == 32
    np.testing.assert_array_equal(loaded.distributions_.counts, estimator.distributions_.counts)
    queries = cluster_data["queries"]
    assert_predictions_equal(full_predict(loaded, queries), full_predict(estimator, queries))
    # And once more through a second save of the loaded estimator.
    loaded.save(tmp_path / "again.h5")
    again = LTAUEstimator.load(tmp_path / "again.h5")
    assert again.metadata_ == {}
    assert_predictions_equal(full_predict(again, queries), full_predict(estimator, queries))


def test_save_is_atomic(small_data, tmp_path, monkeypatch):
    import ltau.distributions
    import ltau.estimator

    train, dist = small_data["train"], small_data["distributions"]
    path = tmp_path / "est.h5"
    LTAUEstimator(3).fit(train, dist).save(path, metadata={"version": "old"})
    before = path.read_bytes()
    real_write = ltau.estimator.write_array
    calls = []

    def failing_write(group, name, data):
        calls.append(name)
        if name == "faiss":  # after the distributions were written: midway through the file
            raise OSError("disk full (simulated)")
        real_write(group, name, data)

    monkeypatch.setattr(ltau.estimator, "write_array", failing_write)
    monkeypatch.setattr(ltau.distributions, "write_array", failing_write)
    new = LTAUEstimator(5, weights="distance").fit(train[:200], dist.subset(np.arange(200)))
    with pytest.raises(OSError, match="disk full"):
        new.save(path, metadata={"version": "new"})
    assert calls == ["edges", "counts", "faiss"]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est.h5"]
    monkeypatch.undo()
    assert LTAUEstimator.load(path).metadata_ == {"version": "old"}


def test_loading_bad_files_gives_clear_errors(small_data, tmp_path):
    train, dist = small_data["train"], small_data["distributions"]
    good = tmp_path / "good.h5"
    LTAUEstimator(3).fit(train, dist).save(good)

    with pytest.raises(LTAUFileError, match="does not exist"):
        LTAUEstimator.load(tmp_path / "missing.h5")

    text = tmp_path / "notes.txt"
    text.write_bytes(b"\x00\x01 certainly not HDF5 " * 500)
    with pytest.raises(LTAUFileError, match="not a readable ltau-estimator file"):
        LTAUEstimator.load(text)

    raw = good.read_bytes()
    for fraction in (0.9, 0.5, 0.1):
        truncated = tmp_path / f"truncated{fraction}.h5"
        truncated.write_bytes(raw[: int(len(raw) * fraction)])
        with pytest.raises(LTAUFileError, match="truncated or corrupted"):
            LTAUEstimator.load(truncated)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["distributions/counts"] = np.ones((3, 3))
    with pytest.raises(LTAUFileError, match="not written by ltau; expected an ltau-estimator"):
        LTAUEstimator.load(foreign)

    newer = tmp_path / "newer.h5"
    newer.write_bytes(raw)
    with h5py.File(newer, "r+") as handle:
        handle.attrs["format_version"] = 4
    reseal(newer)
    with pytest.raises(LTAUFileError, match=r"format version 4; this ltau reads up to version 3"):
        LTAUEstimator.load(newer)

    distributions_file = tmp_path / "distributions.h5"
    save_distributions(dist, distributions_file)
    with pytest.raises(
        LTAUFileError, match="'ltau-distributions' file; expected an ltau-estimator"
    ):
        LTAUEstimator.load(distributions_file)

    no_settings = tmp_path / "no_settings.h5"
    no_settings.write_bytes(raw)
    with h5py.File(no_settings, "r+") as handle:
        del handle.attrs["settings"]
    reseal(no_settings)
    with pytest.raises(LTAUFileError, match="attributes of / are missing or damaged"):
        LTAUEstimator.load(no_settings)

    bad_settings = tmp_path / "bad_settings.h5"
    bad_settings.write_bytes(raw)
    with h5py.File(bad_settings, "r+") as handle:
        handle.attrs["settings"] = json.dumps({"n_neighbors": 0, "weights": "uniform"})
    reseal(bad_settings)
    with pytest.raises(LTAUFileError, match="checksum mismatch"):
        LTAUEstimator.load(bad_settings)
    with h5py.File(bad_settings, "r+") as handle:  # re-signed: well-formed but invalid
        sign_attributes(handle, _ESTIMATOR_ATTRIBUTES)
    reseal(bad_settings)
    with pytest.raises(LTAUFileError, match="stored estimator settings are invalid"):
        LTAUEstimator.load(bad_settings)

    wrong_count = tmp_path / "wrong_count.h5"
    wrong_count.write_bytes(raw)
    with h5py.File(wrong_count, "r+") as handle:
        handle.attrs["n_samples"] = 7
        sign_attributes(handle, _ESTIMATOR_ATTRIBUTES)
    reseal(wrong_count)
    with pytest.raises(LTAUFileError, match="index, distributions and sample count disagree"):
        LTAUEstimator.load(wrong_count)


def _flip_in_dataset(path, dataset: str, pattern: int, n_bytes: int = 16) -> bytes:
    """XOR ``n_bytes`` in the middle of the first chunk of ``dataset`` and reseal the file (to
    test the array digests behind the seal); return the old bytes."""
    with h5py.File(path, "r") as handle:
        info = handle[dataset].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    middle = info.byte_offset + info.size // 2
    old = bytes(raw[middle : middle + n_bytes])
    for i in range(middle, middle + n_bytes):
        raw[i] ^= pattern
    path.write_bytes(bytes(raw))
    reseal(path)
    return old


@pytest.mark.parametrize("dataset", ["index/faiss", "distributions/counts", "distributions/edges"])
def test_corrupted_data_is_detected(small_data, tmp_path, dataset):
    """Bytes flipped in the middle of a stored array: the checksum catches it at load."""
    train, dist = small_data["train"], small_data["distributions"]
    path = tmp_path / "est.h5"
    LTAUEstimator(3, index="hnsw").fit(train, dist).save(path)
    _flip_in_dataset(path, dataset, 0x5A)
    with pytest.raises(LTAUFileError, match="is corrupted"):
        LTAUEstimator.load(path)


def test_zero_words_overwritten_with_ones_are_detected(small_data, tmp_path):
    """Fletcher-32 adds 16-bit words modulo 65535, so it cannot tell 0x0000 from 0xFFFF: a run
    of zero counts (most histogram bins are empty) turned into 0xFF bytes -- e.g. an erased
    flash page -- passes the HDF5 checksum and silently changes the predictions."""
    train, dist = small_data["train"], small_data["distributions"]
    path = tmp_path / "est.h5"
    estimator = LTAUEstimator(3).fit(train, dist)
    estimator.save(path)
    old = _flip_in_dataset(path, "distributions/counts", 0xFF)
    assert old == bytes(16)  # the flipped bytes were all zero counts
    try:
        loaded = LTAUEstimator.load(path)
    except LTAUFileError:
        return
    changed = not np.array_equal(loaded.distributions_.counts, estimator.distributions_.counts)
    pytest.fail(f"corruption not detected at load (counts changed: {changed})")


def test_corruption_anywhere_in_the_file_is_an_ltau_file_error(small_data, tmp_path):
    """Flip 16 bytes at ~300 places (densely over the HDF5 metadata): load either raises
    LTAUFileError or, where the bytes were unused, predicts exactly as before. Never another
    exception, a silently different result, a hang or a crash."""
    train, dist = small_data["train"], small_data["distributions"]
    good = tmp_path / "good.h5"
    LTAUEstimator(3).fit(train, dist).save(good, metadata={"unit": "eV"})
    np.save(tmp_path / "queries.npy", small_data["queries"][:5])
    problems = corruption_scan("estimator", good, tmp_path, tmp_path / "queries.npy")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:25])


# ------------------------------------------------------------------- bad input


@pytest.fixture
def fitted(small_data):
    return LTAUEstimator(5).fit(small_data["train"], small_data["distributions"])


def test_predict_before_fit():
    estimator = LTAUEstimator()
    for action in (
        lambda: estimator.predict(np.zeros((1, 3))),
        lambda: estimator.kneighbors(np.zeros((1, 3))),
        lambda: estimator.save("never.h5"),
        lambda: estimator.bins,
        lambda: estimator.n_features_in_,
        lambda: estimator.predict_from_neighbors(np.zeros((1, 1)), np.zeros((1, 1), int)),
    ):
        with pytest.raises(LTAUInputError, match=r"not fitted yet; call fit\(\) or load\(\)"):
            action()


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"n_neighbors": 401}, r"n_neighbors=401 exceeds the 400 training samples"),
        ({"n_neighbors": 0}, r"n_neighbors must be a positive integer"),
        ({"n_neighbors": 2.0}, r"n_neighbors must be a positive integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
        ({"weights": "gaussian"}, r"weights must be 'uniform' or 'distance'"),
        ({"distance_scale": "relative"}, r"distance_scale must be 'absolute' or 'local'"),
        ({"index": "annoy"}, r"unknown index type 'annoy'"),
        ({"index": "hnsw", "index_params": {"nprobe": 4}}, r"unknown parameters \['nprobe'\]"),
        ({"index": "ivfpq", "index_params": {"m": 5}}, r"m=5 must divide the descriptor size 6"),
        (
            {"index": "ivfpq", "index_params": {"m": 2, "nlist": 500}},
            r"400 descriptors are too few",
        ),
    ],
)
def test_bad_settings_are_refused_at_fit(small_data, settings, match):
    settings = dict(settings)
    n_neighbors = settings.pop("n_neighbors", 5)
    estimator = LTAUEstimator(n_neighbors, **settings)
    with pytest.raises(LTAUInputError, match=match):
        estimator.fit(small_data["train"], small_data["distributions"])
    assert not hasattr(estimator, "index_")


def test_bad_fit_input(small_data):
    train, dist = small_data["train"], small_data["distributions"]
    estimator = LTAUEstimator(5)
    with pytest.raises(LTAUInputError, match="399 descriptor rows but 400 distributions"):
        estimator.fit(train[:-1], dist)
    with pytest.raises(LTAUInputError, match="must be an ErrorDistributions instance"):
        estimator.fit(train, dist.counts)
    bad = train.copy()
    bad[10, 2] = np.nan
    with pytest.raises(LTAUInputError, match=r"descriptors contains nan at index \(10, 2\)"):
        estimator.fit(bad, dist)
    bad[10, 2] = np.inf
    with pytest.raises(LTAUInputError, match="descriptors contains inf"):
        estimator.fit(bad, dist)
    with pytest.raises(LTAUInputError, match="descriptors is empty"):
        estimator.fit(np.empty((0, 6)), dist)
    with pytest.raises(LTAUInputError, match="descriptors must be 2-D"):
        estimator.fit(train[:, 0], dist)


def test_bad_predict_input(fitted, tmp_path):
    queries = np.zeros((4, 6), dtype=np.float32)
    with pytest.raises(LTAUInputError, match="have 5 features; the estimator was fitted on 6"):
        fitted.predict(queries[:, :5])
    with pytest.raises(LTAUInputError, match="query descriptors is empty"):
        fitted.predict(np.empty((0, 6)))
    with pytest.raises(LTAUInputError, match="query descriptors contains nan"):
        fitted.predict(np.full((1, 6), np.nan))
    with pytest.raises(LTAUInputError, match="query descriptors must be 2-D"):
        fitted.predict(np.zeros(6))
    for atol in (-0.1, [0.1, -1e-9], np.nan, np.inf, [[0.1]]):
        with pytest.raises(LTAUInputError, match="atol must be finite, non-negative numbers"):
            fitted.predict(queries, atol=atol)
    for levels in (1.01, -0.5, [0.5, 1.5], np.nan):
        with pytest.raises(LTAUInputError, match=r"quantiles must lie in \[0, 1\]"):
            fitted.predict(queries, quantiles=levels)
    for confidence in (1.5, -0.1):
        with pytest.raises(LTAUInputError, match=r"confidence must lie in \[0, 1\]"):
            fitted.predict(queries, confidence=confidence)
    with pytest.raises(LTAUInputError, match="return_pdf must be True or False"):
        fitted.predict(queries, return_pdf="yes")
    with pytest.raises(LTAUInputError, match="metadata must be JSON-serialisable"):
        fitted.save(tmp_path / "unused.h5", metadata={"array": np.zeros(2)})
    fitted.n_neighbors = 401
    with pytest.raises(LTAUInputError, match="k=401 neighbours requested but only 400"):
        fitted.predict(queries)


def test_save_to_a_missing_directory_or_a_directory(fitted, tmp_path):
    with pytest.raises(LTAUFileError, match="does not exist"):
        fitted.save(tmp_path / "no" / "such" / "dir.h5")
    with pytest.raises(LTAUFileError, match="is a directory"):
        fitted.save(tmp_path)


def test_single_item_and_bin_edge_cases(tmp_path):
    """One training sample, k=1, one bin: everything still works and round-trips."""
    dist = ErrorDistributions(Bins.linear(0.0, 2.0, 1), np.array([[3]]))
    estimator = LTAUEstimator(1).fit(np.array([[1.0, 2.0]]), dist)
    prediction = estimator.predict(
        np.array([[0.0, 0.0], [1.0, 2.0]]), atol=1.5, quantiles=[0.5], return_pdf=True
    )
    np.testing.assert_allclose(prediction.expected_error, [1.0, 1.0])
    np.testing.assert_allclose(prediction.exceedance[:, 0], [0.25, 0.25])
    np.testing.assert_allclose(prediction.quantiles[:, 0], [1.0, 1.0])
    np.testing.assert_allclose(prediction.pdf, [[0.5], [0.5]])
    np.testing.assert_allclose(prediction.ood_score, [np.sqrt(5.0), 0.0], atol=1e-6)
    estimator.save(tmp_path / "tiny.h5")
    assert_predictions_equal(
        LTAUEstimator.load(tmp_path / "tiny.h5").predict(
            np.array([[0.0, 0.0], [1.0, 2.0]]), atol=1.5, quantiles=[0.5], return_pdf=True
        ),
        prediction,
    )


def test_auto_index_is_exact_for_small_sets_and_hnsw_above_the_limit(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    points = rng.normal(size=(120, 8)).astype(np.float32)
    distributions = ErrorDistributions.from_errors(np.abs(rng.normal(size=(120, 6))), n_bins=12)
    small = LTAUEstimator(4, index="auto").fit(points, distributions)
    assert small.index_.kind == "exact"
    np.testing.assert_array_equal(
        small.kneighbors(points[:5])[1],
        LTAUEstimator(4).fit(points, distributions).kneighbors(points[:5])[1],
    )
    monkeypatch.setattr("ltau.search.AUTO_EXACT_LIMIT", 100)
    large = LTAUEstimator(4, index="auto").fit(points, distributions)
    assert large.index_.kind == "hnsw"
    large.save(tmp_path / "auto.h5")
    loaded = LTAUEstimator.load(tmp_path / "auto.h5")
    assert loaded.index == "auto" and loaded.index_.kind == "hnsw"
    np.testing.assert_array_equal(
        loaded.predict(points[:7]).expected_error, large.predict(points[:7]).expected_error
    )
    with pytest.raises(LTAUInputError, match="uses 'hnsw' \\(index='auto'\\)"):
        LTAUEstimator(4, index="auto").fit_searched(
            NeighborIndex().build(points), distributions, None
        )
    with pytest.raises(LTAUInputError, match="index='auto' chooses the index and its parameters"):
        LTAUEstimator(4, index="auto", index_params={"ef_search": 8}).fit(points, distributions)
