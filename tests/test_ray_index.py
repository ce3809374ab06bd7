"""The index sharded across Ray workers equals the single-process index, on a real local Ray
cluster (2 CPUs, localhost only), and refuses bad input clearly."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from ltau.exceptions import LTAUInputError  # noqa: E402
from ltau.integrations.ray_index import ShardedIndex  # noqa: E402
from ltau.search import NeighborIndex  # noqa: E402

N_ITEMS, DIM, K = 600, 8, 7


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=4.0, size=(12, DIM))
    train = centres[rng.integers(0, 12, N_ITEMS)] + rng.normal(size=(N_ITEMS, DIM))
    queries = centres[rng.integers(0, 12, 50)] + rng.normal(size=(50, DIM))
    return train.astype(np.float32), queries.astype(np.float32)


def assert_same_neighbours(got, want):
    """Same distances to float32 rounding and the same ids wherever distances are not tied."""
    (got_d, got_i), (want_d, want_i) = got, want
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    untied = np.ones_like(want_d, dtype=bool)
    untied[:, 1:] &= np.diff(want_d, axis=1) > 1e-4
    untied[:, :-1] &= np.diff(want_d, axis=1) > 1e-4
    np.testing.assert_array_equal(got_i[untied], want_i[untied])


def test_without_ray_initialised_it_says_so(data):
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    with pytest.raises(LTAUInputError, match="Ray is not initialised"):
        ShardedIndex(2).build(data[0])


@pytest.mark.parametrize("n_shards", [2, 3])
def test_sharded_exact_search_equals_the_single_process_index(cluster, data, n_shards):
    train, queries = data
    sharded = ShardedIndex(n_shards, cpus_per_shard=2 / n_shards).build(train)
    try:
        assert sharded.n_items == N_ITEMS and sharded.dim == DIM
        want = NeighborIndex("exact").build(train).search(queries, K)
        assert_same_neighbours(sharded.search(queries, K), want)
    finally:
        sharded.shutdown()


def test_shards_with_their_own_ids_map_back_to_global_ids(cluster, data):
    train, queries = data
    order = np.random.default_rng(0).permutation(N_ITEMS)
    halves = np.array_split(order, 2)
    sharded = ShardedIndex(2).build_shards([(ids, train[ids]) for ids in halves])
    try:
        want = NeighborIndex("exact").build(train).search(queries, K)
        assert_same_neighbours(sharded.search(queries, K), want)
    finally:
        sharded.shutdown()


def test_sharded_hnsw_finds_most_exact_neighbours(cluster, data):
    train, queries = data
    sharded = ShardedIndex(2, "hnsw", {"ef_search": 32}).build(train)
    try:
        _, got = sharded.search(queries, K)
    finally:
        sharded.shutdown()
    _, want = NeighborIndex("exact").build(train).search(queries, K)
    recall = np.mean([np.isin(w, g).mean() for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9


def test_bad_input_is_named(cluster, data):
    train, queries = data
    with pytest.raises(LTAUInputError, match="3 shards requested for only 2 descriptors"):
        ShardedIndex(3).build(train[:2])
    ids = np.arange(N_ITEMS)
    with pytest.raises(LTAUInputError, match=r"ids are in more than one shard \(id 290"):
        ShardedIndex(2).build_shards([(ids[:300], train[:300]), (ids[290:], train[290:])])
    with pytest.raises(
        LTAUInputError, match=r"do not cover the ids 0..299: 100 missing \(first 200"
    ):
        ShardedIndex(2).build_shards([(ids[:200], train[:200]), (ids[300:400], train[300:400])])
    with pytest.raises(LTAUInputError, match="shard 1 is missing"):
        ShardedIndex(2).build_shards([(ids, train), None])
    with pytest.raises(LTAUInputError, match="different sizes"):
        ShardedIndex(2).build_shards([(ids[:300], train[:300]), (ids[300:], train[300:, :4])])
    with pytest.raises(LTAUInputError, match="1 shards given for an index of 2"):
        ShardedIndex(2).build_shards([(ids, train)])
    with pytest.raises(
        LTAUInputError, match="3 shards of 1 CPUs need 3 CPUs; the Ray cluster has 2"
    ):
        ShardedIndex(3).build(train)
    with pytest.raises(LTAUInputError, match="unknown index type"):
        ShardedIndex(2, "annoy")
    with pytest.raises(LTAUInputError, match="has not been built"):
        ShardedIndex(2).search(queries, K)
    sharded = ShardedIndex(2).build(train)
    try:
        with pytest.raises(LTAUInputError, match="have 5 features; the index was built on 8"):
            sharded.search(queries[:, :5], K)
        with pytest.raises(LTAUInputError, match="query descriptors"):
            sharded.search(np.full((2, DIM), np.nan, np.float32), K)
        with pytest.raises(LTAUInputError, match=f"k={N_ITEMS + 1} neighbours requested"):
            sharded.search(queries, N_ITEMS + 1)
        ray.kill(sharded._actors[1])
        with pytest.raises(LTAUInputError, match="shard 1 of 2 is missing: its Ray worker died"):
            sharded.search(queries, K)
    finally:
        sharded.shutdown()
