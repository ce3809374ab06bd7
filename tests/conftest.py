"""Shared fixtures for the core tests (reference computations live in ltau_reference.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from ltau_reference import clustered

from ltau import ErrorDistributions

# Benchmark-only code (baselines, shared helpers) lives in benchmarks/ and is tested from here.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# One FAISS thread: deterministic HNSW graphs, and far faster than OpenMP on a shared 2-core box.
faiss.omp_set_num_threads(1)


@pytest.fixture(scope="session")
def cluster_data():
    """20 well-separated Gaussian clusters in 32-D (3000 points) with cluster-dependent errors,
    and 200 queries near the cluster centres.

    Returns a dict: ``train``, ``labels``, ``queries``, ``query_labels``, ``distributions``.
    """
    rng = np.random.default_rng(11)
    train, labels, centres = clustered(rng)
    scale = np.exp(rng.uniform(-2.0, 1.0, centres.shape[0]))[labels]
    scale *= 1.0 + 0.3 * rng.random(labels.size)
    errors = np.abs(rng.normal(size=(labels.size, 30))) * scale[:, None]
    query_labels = rng.integers(0, centres.shape[0], 200)
    queries = centres[query_labels] + rng.normal(scale=0.5, size=(200, centres.shape[1]))
    return {
        "train": train,
        "labels": labels,
        "queries": queries.astype(np.float32),
        "query_labels": query_labels,
        "distributions": ErrorDistributions.from_errors(errors, n_bins=60),
    }


@pytest.fixture(scope="session")
def small_data():
    """400 training points in 6-D with errors growing with |x_0|, and 60 queries."""
    rng = np.random.default_rng(7)
    train = rng.normal(size=(400, 6)).astype(np.float32)
    scale = 0.05 + np.abs(train[:, 0])
    errors = rng.lognormal(sigma=0.7, size=(400, 25)) * scale[:, None]
    queries = rng.normal(size=(60, 6)).astype(np.float32)
    return {
        "train": train,
        "queries": queries,
        "errors": errors,
        "distributions": ErrorDistributions.from_errors(errors, n_bins=40),
    }
