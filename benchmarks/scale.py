"""Memory, time and accuracy of ltau's compressed form at scale, against the exact estimator.

Synthetic but structured data (:class:`SyntheticAtoms`): descriptors in clusters, each cluster
a noisy 8-dimensional patch of the ``dim``-dimensional space (latent spaces of trained models
have a low intrinsic dimension); each training atom's errors are ``n_observations`` draws from
a log-normal whose log-median and width vary smoothly across the patch and between clusters, so
the k nearest training atoms of a query carry signal about its errors. Its histogram on
``n_bins`` log bins is drawn as a multinomial from the exact bin probabilities (what
histogramming ``n_observations`` recorded errors gives, without simulating each one). Queries
come from the same generator, with one observed error each drawn from their own log-normal.

Measured in one run, on the same data and queries:

* the reference: ``LTAUEstimator(k, index="exact")`` on the uncompressed (uint16) counts;
* the compressed estimator: ``--index`` (default ``ivfsq``) on uint8 counts
  (``ErrorDistributions.compressed()``), saved with ``index_file=True``, loaded back with the
  index memory-mapped, and queried;
* each half alone (exact index with uint8 counts; compressed index with uint16 counts), so that
  the error of each compression is seen apart;
* with ``--compare-indices``: recall@k, query time and bytes per item of every compressed index
  kind on the same data;
* the exact index sharded over ``--shards`` Ray workers (``ltau.integrations.ray_index``) on the
  first ``--ray-atoms`` training atoms, against the single-process exact index on them.

``bytes_per_training_atom`` is what a predicting process holds per training atom: the loaded
estimator's per-sample arrays (counts, row sums, expected error, resolution, the exceedance at
one ``atol``) plus the index file, which it memory-maps (``bytes_breakdown`` gives each part;
``file_bytes_per_training_atom`` the two files on disk). ``query_us`` is the loaded compressed
estimator's ``predict`` (expected error, exceedance, 90% interval) per query, one batch of
``--queries``, the second such batch (``query_us_first_batch``: the first after loading, which
also reads the mapped index pages it touches and computes the per-sample exceedance);
``exact_query_us`` the reference's first batch, measured beside it. The last stdout line is a
compact JSON object, also written (indented) to ``--output``.

Usage::

    python benchmarks/scale.py --atoms 1000000
    python benchmarks/scale.py --atoms 10000000 --output benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from scipy.special import ndtr
from tqdm import tqdm

import ltau
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator
from ltau.histogram import Bins
from ltau.search import NeighborIndex

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "scale.json"
PATCH_DIM = 8
CHUNK = 50_000
logger = logging.getLogger("scale")


class SyntheticAtoms:
    """Clustered descriptors and per-atom log-normal error distributions (see module doc)."""

    def __init__(self, dim: int, n_clusters: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.normal(scale=3.0, size=(n_clusters, dim)).astype(np.float32)
        bases = rng.normal(size=(n_clusters, dim, PATCH_DIM))
        self.bases = (bases / np.sqrt(dim)).astype(np.float32) * 4.0
        self.log_median = rng.uniform(np.log(0.02), np.log(0.3), n_clusters)
        self.slope = rng.normal(scale=0.25, size=(n_clusters, PATCH_DIM))
        self.width = rng.uniform(0.3, 0.7, n_clusters)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(descriptors (n, dim) float32, log-median (n,), log-width (n,))``."""
        cluster = rng.integers(0, self.centres.shape[0], n)
        patch = rng.normal(size=(n, PATCH_DIM)).astype(np.float32)
        descriptors = self.centres[cluster] + np.einsum("nij,nj->ni", self.bases[cluster], patch)
        descriptors += rng.normal(scale=0.05, size=descriptors.shape).astype(np.float32)
        mu = self.log_median[cluster] + np.sum(self.slope[cluster] * patch, axis=1)
        sigma = self.width[cluster] * (1.0 + 0.3 * np.tanh(patch[:, 0]))
        return descriptors.astype(np.float32), mu, sigma


def bin_probabilities(bins: Bins, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Exact log-normal mass of each bin ``(n, n_bins)``, the tails put in the end bins."""
    cdf = ndtr((np.log(bins.edges)[None, :] - mu[:, None]) / sigma[:, None])
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    mass = np.diff(cdf, axis=1)
    return mass / mass.sum(axis=1, keepdims=True)


def training_set(args, generator: SyntheticAtoms, bins: Bins):
    """Descriptors ``(N, dim)`` and uint16 counts ``(N, n_bins)``, built in chunks."""
    rng = np.random.default_rng(args.seed + 1)
    descriptors = np.empty((args.atoms, args.dim), dtype=np.float32)
    counts = np.empty((args.atoms, bins.n_bins), dtype=np.uint16)
    for start in tqdm(range(0, args.atoms, CHUNK), desc="training atoms", unit="chunk"):
        stop = min(start + CHUNK, args.atoms)
        x, mu, sigma = generator.draw(stop - start, rng)
        descriptors[start:stop] = x
        counts[start:stop] = rng.multinomial(args.observations, bin_probabilities(bins, mu, sigma))
    return descriptors, counts


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact k neighbours among those found."""
    return float(np.mean([np.isin(row, found[i]).mean() for i, row in enumerate(exact)]))


def statistics(prediction, observed: np.ndarray) -> dict[str, np.ndarray | float]:
    inside = (prediction.interval_lower <= observed) & (observed <= prediction.interval_upper)
    return {
        "expected": prediction.expected_error,
        "exceedance": prediction.exceedance[:, 0],
        "coverage90": float(np.mean(inside)),
    }


def compare(reference: dict, other: dict) -> dict[str, float]:
    relative = np.abs(other["expected"] - reference["expected"]) / reference["expected"]
    return {
        "expected_error_rel_error": float(np.mean(relative)),
        "expected_error_rel_error_p95": float(np.quantile(relative, 0.95)),
        "exceedance_abs_error": float(
            np.mean(np.abs(other["exceedance"] - reference["exceedance"]))
        ),
        "coverage90_change": other["coverage90"] - reference["coverage90"],
    }


def timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def resident_bytes(estimator: LTAUEstimator) -> dict[str, int]:
    """Bytes of what a predicting process holds per part (the index: its file, mapped)."""
    distributions = estimator.distributions_
    parts = {
        "counts": distributions.counts.nbytes,
        "row_sums": distributions.n_observations.nbytes,
        "expected_error": estimator.sample_expected_error_.nbytes,
        "resolution": estimator.sample_resolution_.nbytes,
        "exceedance_one_atol": sum(v.nbytes for v in estimator._exceedance_cache_.values()),
    }
    if estimator.local_scale_ is not None:
        parts["local_scale"] = estimator.local_scale_.nbytes
    parts["index_file"] = estimator.index_file_.stat().st_size
    return parts


def index_comparison(args, descriptors, queries, exact_indices) -> dict[str, dict]:
    """Recall@k, query time and bytes per item of each compressed index kind."""
    kinds = {
        "ivfpq_m8": ("ivfpq", {"m": 8}),
        "ivfpq_m16": ("ivfpq", {"m": 16}),
        "opq_m16": ("opq", {"m": 16}),
        "opq_m32": ("opq", {"m": 32}),
        "ivfsq": ("ivfsq", {}),
    }
    results = {}
    for name, (kind, params) in tqdm(kinds.items(), desc="index kinds", unit="kind"):
        params = {"nlist": args.nlist, "nprobe": args.nprobe, **params}
        clock = time.perf_counter()
        index = NeighborIndex(kind, params).build(descriptors)
        build_s = time.perf_counter() - clock
        clock = time.perf_counter()
        _, found = index.search(queries, args.k)
        search_s = time.perf_counter() - clock
        with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
            index.write(Path(scratch) / "index.faiss")
            size = (Path(scratch) / "index.faiss").stat().st_size
        results[name] = {
            "recall_at_k": recall_at_k(found, exact_indices),
            "build_s": build_s,
            "search_us_per_query": search_s / len(queries) * 1e6,
            "bytes_per_item": size / len(descriptors),
        }
        logger.info("%s: %s", name, results[name])
        del index
    return results


def ray_check(args, descriptors, queries) -> dict[str, object]:
    """The exact index sharded over ``--shards`` Ray workers against the single process."""
    import ray

    from ltau.integrations.ray_index import ShardedIndex

    subset = descriptors[: args.ray_atoms]
    ray.init(
        num_cpus=args.shards,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=max(subset.nbytes * 3, 200 * 1024**2),
    )
    try:
        sharded, build_s = timed(lambda: ShardedIndex(args.shards).build(subset))
        (distances, indices), search_s = timed(lambda: sharded.search(queries, args.k))
        sharded.shutdown()
    finally:
        ray.shutdown()
    want_d, want_i = NeighborIndex("exact").build(subset).search(queries, args.k)
    gaps = np.diff(want_d, axis=1) > 1e-4
    untied = np.ones_like(want_d, dtype=bool)
    untied[:, 1:] &= gaps
    untied[:, :-1] &= gaps
    matched = bool(
        np.allclose(distances, want_d, rtol=1e-5, atol=1e-5)
        and np.array_equal(indices[untied], want_i[untied])
    )
    return {
        "atoms": int(subset.shape[0]),
        "shards": args.shards,
        "matched": matched,
        "build_s": build_s,
        "search_us_per_query": search_s / len(queries) * 1e6,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=1_000_000, help="training atoms N")
    parser.add_argument("--dim", type=int, default=64, help="descriptor size")
    parser.add_argument("--bins", type=int, default=100, help="log bins")
    parser.add_argument("--observations", type=int, default=1000, help="errors per atom")
    parser.add_argument("--queries", type=int, default=1000, help="queries (one batch)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query")
    parser.add_argument("--index", default="ivfsq", help="compressed index kind")
    parser.add_argument("--m", type=int, default=16, help="PQ sub-quantisers (ivfpq/opq)")
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells (0: ~sqrt(N), pow. 2)")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF cells visited per query")
    parser.add_argument("--compare-indices", action="store_true", help="measure every kind")
    parser.add_argument("--shards", type=int, default=2, help="Ray workers (0: skip)")
    parser.add_argument("--ray-atoms", type=int, default=1_000_000, help="atoms of the Ray run")
    parser.add_argument("--workdir", default=None, help="scratch directory for the files")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.nlist == 0:
        args.nlist = int(min(4096, max(256, 2 ** round(np.log2(np.sqrt(args.atoms))))))
    return args


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    generator = SyntheticAtoms(args.dim, max(64, args.atoms // 5000), args.seed)
    bins = Bins.from_range(1e-4, 1e2, args.bins, "log")
    descriptors, counts = training_set(args, generator, bins)
    distributions = ErrorDistributions(bins, counts)
    query_rng = np.random.default_rng(args.seed + 2)
    queries, query_mu, query_sigma = generator.draw(args.queries, query_rng)
    observed = np.exp(query_mu + query_sigma * query_rng.normal(size=args.queries))
    options = {"atol": None, "confidence": 0.9}

    reference, reference_fit_s = timed(
        lambda: LTAUEstimator(args.k, index="exact").fit(descriptors, distributions)
    )
    options["atol"] = float(np.median(reference.sample_expected_error_))
    reference_prediction, exact_predict_s = timed(lambda: reference.predict(queries, **options))
    reference_stats = statistics(reference_prediction, observed)
    exact_indices = reference_prediction.neighbor_indices
    logger.info("reference fitted in %.1f s", reference_fit_s)

    compressed_distributions, compress_s = timed(distributions.compressed)
    params = {"nlist": args.nlist, "nprobe": args.nprobe}
    if args.index in ("ivfpq", "opq"):
        params["m"] = args.m
    compressed, compressed_fit_s = timed(
        lambda: LTAUEstimator(args.k, index=args.index, index_params=params).fit(
            descriptors, compressed_distributions
        )
    )
    fit_s = compress_s + compressed_fit_s
    logger.info("compressed estimator fitted in %.1f s", fit_s)
    # Each compression alone, on the indices already built.
    counts_only = LTAUEstimator(args.k, index="exact").fit_searched(
        reference.index_, compressed_distributions
    )
    index_only = LTAUEstimator(args.k, index=args.index, index_params=params).fit_searched(
        compressed.index_, distributions
    )
    alone = {
        "uint8_counts_exact_index": compare(
            reference_stats, statistics(counts_only.predict(queries, **options), observed)
        ),
        f"{args.index}_index_uint16_counts": compare(
            reference_stats, statistics(index_only.predict(queries, **options), observed)
        ),
    }
    del counts_only, index_only

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        path = Path(scratch) / "estimator.h5"
        clock = time.perf_counter()
        compressed.save(path, index_file=True)
        save_s = time.perf_counter() - clock
        compressed = None  # only the loaded estimator from here on
        clock = time.perf_counter()
        loaded = LTAUEstimator.load(path)
        load_s = time.perf_counter() - clock
        file_bytes = path.stat().st_size + loaded.index_file_.stat().st_size
        clock = time.perf_counter()
        prediction = loaded.predict(queries, **options)
        first_predict_s = time.perf_counter() - clock
        clock = time.perf_counter()
        loaded.predict(queries, **options)
        predict_s = time.perf_counter() - clock
        parts = resident_bytes(loaded)
        memory_mapped = loaded.index_.memory_mapped
        loaded = None
    stats = statistics(prediction, observed)
    headline = compare(reference_stats, stats)
    result = {
        "n_training_atoms": args.atoms,
        "bytes_per_training_atom": sum(parts.values()) / args.atoms,
        "fit_s": fit_s,
        "query_us": predict_s / args.queries * 1e6,
        "recall_at_k": recall_at_k(prediction.neighbor_indices, exact_indices),
        "expected_error_rel_error": headline["expected_error_rel_error"],
        "coverage90_change": headline["coverage90_change"],
        "ray_workers": 0,
        "expected_error_rel_error_p95": headline["expected_error_rel_error_p95"],
        "exceedance_abs_error": headline["exceedance_abs_error"],
        "coverage90_reference": reference_stats["coverage90"],
        "coverage90_compressed": stats["coverage90"],
        "query_us_first_batch": first_predict_s / args.queries * 1e6,
        "exact_query_us": exact_predict_s / args.queries * 1e6,
        "reference_fit_s": reference_fit_s,
        "file_bytes_per_training_atom": file_bytes / args.atoms,
        "bytes_breakdown_per_atom": {name: size / args.atoms for name, size in parts.items()},
        "uncompressed_bytes_per_atom": {
            "counts_uint16": counts.nbytes / args.atoms,
            "row_sums": distributions.n_observations.nbytes / args.atoms,
            "float64_per_sample_arrays": 8 * 3,
            "flat_index": args.dim * 4,
        },
        "each_compression_alone": alone,
        "save_s": save_s,
        "load_s": load_s,
        "index_memory_mapped": memory_mapped,
        "settings": {
            "index": args.index,
            "index_params": params,
            "k": args.k,
            "dim": args.dim,
            "n_bins": args.bins,
            "observations_per_atom": args.observations,
            "queries": args.queries,
            "atol": options["atol"],
            "seed": args.seed,
        },
    }
    result["extrapolated_1e8_GB"] = result["bytes_per_training_atom"] * 1e8 / 1e9
    if args.compare_indices:
        result["index_comparison"] = index_comparison(args, descriptors, queries, exact_indices)
    reference = None  # frees the exact index before the Ray run
    if args.shards:
        ray = ray_check(args, descriptors, queries)
        result["ray"] = ray
        result["ray_workers"] = ray["shards"] if ray["matched"] else 0
    result["environment"] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "ltau": ltau.__version__,
        "cpu_count": os.cpu_count(),
    }
    result["run_s"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
