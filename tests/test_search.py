"""NeighborIndex: exact search against brute force, approximate indexes against exact search."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ltau_reference import PROPERTY, brute_force_knn

from ltau import LTAUInputError
from ltau.search import INDEX_DEFAULTS, NeighborIndex

# Approximate-search tolerances on 20 well-separated clusters (see conftest.cluster_data).
HNSW_MIN_RECALL = 0.9
IVFPQ_MIN_RECALL = 0.3  # product quantisation reorders close neighbours; cells stay right
MIN_CLUSTER_PURITY = 0.99  # share of returned neighbours in the query's own cluster
IVFPQ_PARAMS = {"nlist": 32, "m": 8, "nbits": 6, "nprobe": 8}


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n_items=st.integers(1, 120),
    dim=st.integers(1, 12),
    n_queries=st.integers(1, 30),
    k_fraction=st.floats(0.0, 1.0),
)
def test_exact_index_matches_brute_force(seed, n_items, dim, n_queries, k_fraction):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_items, dim)).astype(np.float32)
    queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
    k = max(1, round(k_fraction * n_items))
    index = NeighborIndex("exact").build(train)
    assert (index.n_items, index.dim) == (n_items, dim)
    distances, indices = index.search(queries, k)
    want_d, _ = brute_force_knn(train, queries, k)
    assert distances.shape == indices.shape == (n_queries, k)
    assert indices.dtype == np.int64
    np.testing.assert_allclose(distances, want_d, rtol=1e-4, atol=2e-3)
    # Same neighbours (ties between equal distances aside): compare the true distances of
    # the returned items with the brute-force ones.
    true_d = np.linalg.norm(queries[:, None, :].astype(np.float64) - train[indices], axis=2)
    np.testing.assert_allclose(true_d, want_d, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(distances, axis=1) >= 0)


def test_distances_are_euclidean_not_squared():
    index = NeighborIndex("exact").build(np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]))
    distances, indices = index.search(np.array([[0.0, 0.0]]), 3)
    np.testing.assert_array_equal(indices, [[0, 1, 2]])
    np.testing.assert_allclose(distances, [[0.0, 5.0, 10.0]], atol=1e-6)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact, strict=True)])
    )


@pytest.mark.parametrize(
    ("kind", "params", "min_recall"),
    [("hnsw", {}, HNSW_MIN_RECALL), ("ivfpq", IVFPQ_PARAMS, IVFPQ_MIN_RECALL)],
)
def test_approximate_indexes_agree_with_exact_on_clustered_data(
    cluster_data, kind, params, min_recall
):
    train, queries = cluster_data["train"], cluster_data["queries"]
    k = 10
    exact_d, exact_i = NeighborIndex("exact").build(train).search(queries, k)
    distances, indices = NeighborIndex(kind, params).build(train).search(queries, k)
    assert np.all(indices >= 0)
    recall = _recall(indices, exact_i)
    assert recall >= min_recall, f"{kind} recall@10 = {recall:.3f} < {min_recall}"
    purity = np.mean(cluster_data["labels"][indices] == cluster_data["query_labels"][:, None])
    assert purity >= MIN_CLUSTER_PURITY
    if kind == "hnsw":  # HNSW distances are exact for the neighbours it returns
        true_d = np.linalg.norm(queries[:, None, :] - train[indices], axis=2)
        np.testing.assert_allclose(distances, true_d, rtol=1e-4, atol=1e-3)
        assert np.all(distances[:, 0] >= exact_d[:, 0] - 1e-3)


def test_index_parameters_are_honoured(cluster_data):
    train = cluster_data["train"]
    hnsw = NeighborIndex("hnsw", {"M": 12, "ef_construction": 40, "ef_search": 37}).build(train)
    faiss_index = hnsw._index
    assert faiss_index.hnsw.efSearch == 37
    assert faiss_index.hnsw.efConstruction == 40
    assert faiss_index.hnsw.nb_neighbors(1) == 12  # M links per node above level 0
    assert hnsw.params == {"M": 12, "ef_construction": 40, "ef_search": 37}

    ivfpq = NeighborIndex("ivfpq", {"nlist": 24, "m": 4, "nbits": 5, "nprobe": 3}).build(train)
    faiss_index = ivfpq._index
    assert (faiss_index.nlist, faiss_index.pq.M, faiss_index.pq.nbits) == (24, 4, 5)
    assert faiss_index.nprobe == 3
    assert faiss_index.is_trained and faiss_index.ntotal == train.shape[0]

    for built in (hnsw, ivfpq):
        back = NeighborIndex.deserialize(built.kind, built.params, built.serialize())
        assert back.params == built.params
        q = cluster_data["queries"][:20]
        for got, want in zip(back.search(q, 5), built.search(q, 5), strict=True):
            np.testing.assert_array_equal(got, want)
    back = NeighborIndex.deserialize("hnsw", hnsw.params, hnsw.serialize())._index
    assert (back.hnsw.efSearch, back.hnsw.efConstruction, back.hnsw.nb_neighbors(1)) == (37, 40, 12)
    back = NeighborIndex.deserialize("ivfpq", ivfpq.params, ivfpq.serialize())._index
    assert (back.nlist, back.pq.M, back.pq.nbits, back.nprobe) == (24, 4, 5, 3)


def test_defaults_are_filled_in():
    for kind, defaults in INDEX_DEFAULTS.items():
        assert NeighborIndex(kind).params == defaults
    assert NeighborIndex("hnsw", {"ef_search": 5}).params == {
        "M": 32,
        "ef_construction": 200,
        "ef_search": 5,
    }
    assert NeighborIndex("hnsw").build(np.eye(4) + 1)._index.hnsw.efSearch == 64


def test_missing_neighbours_are_marked():
    """An IVF index visiting one cell can return fewer than k items: index -1, distance inf."""
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 50.0]).astype(
        np.float32
    )
    index = NeighborIndex("ivfpq", {"nlist": 2, "m": 2, "nbits": 4, "nprobe": 1}).build(train)
    distances, indices = index.search(train[:3], 400)
    missing = indices < 0
    assert missing.any()
    assert np.all(np.isinf(distances[missing]))
    assert np.all(np.isfinite(distances[~missing]))


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        (
            "annoy",
            {},
            r"unknown index type 'annoy'; choose one of \['exact', 'hnsw', 'ivfpq', 'ivfsq', 'opq'\]",
        ),
        ("exact", {"M": 4}, r"unknown parameters \['M'\] for a 'exact' index"),
        ("hnsw", {"efSearch": 4}, r"unknown parameters \['efSearch'\] for a 'hnsw' index"),
        ("ivfpq", {"n_list": 4}, r"unknown parameters \['n_list'\]"),
        ("hnsw", {"ef_search": 0}, r"hnsw parameter ef_search must be a positive integer"),
        ("ivfpq", {"nprobe": 2.5}, r"ivfpq parameter nprobe must be a positive integer"),
        ("hnsw", {"M": True}, r"hnsw parameter M must be a positive integer"),
    ],
)
def test_bad_index_settings(kind, params, match):
    with pytest.raises(LTAUInputError, match=match):
        NeighborIndex(kind, params)


def test_bad_build_and_search_input():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(300, 30)).astype(np.float32)
    with pytest.raises(LTAUInputError, match="m=8 must divide the descriptor size 30"):
        NeighborIndex("ivfpq", {"nlist": 4}).build(data)
    with pytest.raises(LTAUInputError, match="200 descriptors are too few"):
        NeighborIndex("ivfpq", {"m": 5}).build(data[:200])  # nlist=256, 2**8-entry codebooks
    with pytest.raises(LTAUInputError, match="too few"):
        NeighborIndex("ivfpq", {"m": 5, "nlist": 301, "nbits": 4}).build(data)
    with pytest.raises(LTAUInputError, match="has not been built"):
        NeighborIndex("exact").search(data, 1)
    with pytest.raises(LTAUInputError, match="has not been built"):
        _ = NeighborIndex("exact").dim
    with pytest.raises(LTAUInputError, match="descriptors contains nan"):
        NeighborIndex("exact").build(np.array([[0.0, np.nan]]))
    with pytest.raises(LTAUInputError, match="descriptors contains inf"):
        NeighborIndex("exact").build(np.array([[0.0, np.inf]]))
    with pytest.raises(LTAUInputError, match=r"descriptors is empty"):
        NeighborIndex("exact").build(np.empty((0, 3)))
    with pytest.raises(LTAUInputError, match=r"descriptors must be 2-D"):
        NeighborIndex("exact").build(np.zeros(3))
    with pytest.raises(LTAUInputError, match="must hold real numbers, not strings"):
        NeighborIndex("exact").build([["a", "b"]])
    index = NeighborIndex("exact").build(data)
    with pytest.raises(LTAUInputError, match="k=301 neighbours requested but only 300"):
        index.search(data[:2], 301)
    with pytest.raises(LTAUInputError, match="k must be a positive integer"):
        index.search(data[:2], 0)
    with pytest.raises(LTAUInputError, match="have 29 features; the index was built on 30"):
        index.search(data[:2, :29], 3)
    with pytest.raises(LTAUInputError, match="query descriptors contains nan"):
        index.search(np.full((1, 30), np.nan), 3)
    with pytest.raises(LTAUInputError, match="query descriptors is empty"):
        index.search(np.empty((0, 30)), 3)


def test_deserializing_garbage_is_an_input_error():
    with pytest.raises(LTAUInputError, match="stored exact index could not be read"):
        NeighborIndex.deserialize("exact", {}, np.frombuffer(b"not a faiss index", np.uint8))


def test_gpu_search_without_a_gpu_is_a_clear_error(cluster_data):
    import faiss

    index = NeighborIndex("exact").build(cluster_data["train"])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible: the error path cannot be shown here")
    with pytest.raises(LTAUInputError, match="needs faiss-gpu and a visible GPU"):
        index.use_gpu()
    assert not index.on_gpu
    distances, _ = index.search(cluster_data["queries"][:3], 2)
    assert np.all(np.isfinite(distances))


def test_estimator_gpu_search_needs_a_fitted_estimator_and_a_gpu(small_data):
    import faiss

    from ltau import LTAUEstimator
    from ltau.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="use_gpu"):
        LTAUEstimator(3).use_gpu()
    estimator = LTAUEstimator(3).fit(small_data["train"], small_data["distributions"])
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible: the error path cannot be shown here")
    with pytest.raises(LTAUInputError, match="faiss-gpu"):
        estimator.use_gpu()
