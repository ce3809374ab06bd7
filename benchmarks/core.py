"""Benchmark of ltau's core costs, measured in one run so that results compare as ratios.

Three measurements:

1. **Building per-sample distributions** (n_samples x n_epochs errors into n_bins log bins):

   * ``build``: ltau's streaming path, ``ErrorRecorder(n, bins=...)`` fed one epoch at a time
     with ``record_epoch`` (live histograms only, no log file), then ``.distributions()``.
   * ``naive``: the approach of the public reference code (all epochs kept in memory as a list
     of float32 arrays, concatenated to ``(T, N)``, transposed, ``searchsorted`` over the whole
     2-D array, masked, offset per row, one ``bincount``, then normalised to PDFs); written
     here as :func:`naive_build`, nothing is imported from the reference.

   Both methods get their epochs from the same deterministic, cheap generator
   (:class:`EpochGenerator`), one epoch at a time. The time spent *inside the generator* is
   measured and excluded from both build times (reported separately as ``*_gen_s``);
   everything else, including holding the epochs and building the ``(T, N)`` array for the
   naive method, counts. Each method runs in its own child process (this script with the
   hidden ``--only`` flag) so that its peak memory can be read from
   ``getrusage(RUSAGE_SELF).ru_maxrss``; the reported peak is that minus the resident size of
   the child after imports and after the generator state was created. Both children also
   save (part of) their counts, and the parent checks that they agree.

2. **Cost per query** of the k-nearest-neighbour search (``LTAUEstimator.kneighbors``) with
   the exact and the HNSW index over ``n_samples`` clustered ``dim``-dimensional descriptors,
   queries in one batch; plus HNSW recall@k against the exact neighbours.

3. **Aggregation cost** after the search: neighbour (distances, indices) to expected error and
   ``P(error > atol)`` at one ``atol``, as ``LTAUEstimator.predict_from_neighbors`` does it
   (``neighbor_weights``, ``sample_expected_error_`` and the per-sample exceedance, gathered
   and weighted); the per-sample exceedance is precomputed (it is cached per ``atol`` by the
   estimator). Also timed: ``predict_from_neighbors`` itself and the whole ``predict``,
   and fitting and predicting with HNSW and ``distance_scale="local"`` (its fit adds a
   k-nearest-neighbour search of every training sample).

The last line printed to stdout is a JSON object with the results, also written to
``--output``. Progress goes to stderr.

Usage::

    python benchmarks/core.py                      # 1e6 samples x 200 epochs x 100 bins
    python benchmarks/core.py --samples 20000 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

import ltau
from ltau import Bins, ErrorDistributions, ErrorRecorder, LTAUEstimator

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "core.json"
FULL_CHECK_ROWS = 200_000
"""Up to this many samples the two methods' counts are compared in full; above, on a subsample."""
CHECK_SUBSAMPLE = 20_000
TARGETS = {"build_speedup_min": 5.0, "memory_ratio_max": 0.25, "aggregate_us_max": 1.0}


# --------------------------------------------------------------------------- error generator
class EpochGenerator:
    """Deterministic float32 errors of all samples, one epoch at a time.

    ``error[i, t] = scale[i] * noise[(i + shift[t]) mod n] * decay[t]``: a lognormal per-sample
    scale, a lognormal noise vector drawn once and read cyclically from an epoch-dependent
    offset (a cheap stand-in for fresh per-epoch noise), and a decaying epoch factor (training
    converging). Every factor is clipped, so all errors lie inside known bounds and bins built
    from :meth:`bounds` contain all of them.
    """

    SCALE_CLIP = 3.0
    NOISE_CLIP = 1.6

    def __init__(self, n_samples: int, n_epochs: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.n_samples = n_samples
        self.n_epochs = n_epochs
        scale_z = rng.standard_normal(n_samples, dtype=np.float32)
        np.clip(scale_z, -self.SCALE_CLIP / 0.7, self.SCALE_CLIP / 0.7, out=scale_z)
        scale_z *= 0.7
        self.scale = np.exp(scale_z, out=scale_z)
        self.scale *= np.float32(0.05)
        noise_z = rng.standard_normal(n_samples, dtype=np.float32)
        np.clip(noise_z, -self.NOISE_CLIP / 0.4, self.NOISE_CLIP / 0.4, out=noise_z)
        noise_z *= 0.4
        self.noise = np.exp(noise_z, out=noise_z)
        self.shift = rng.integers(0, n_samples, size=n_epochs)
        epochs = np.arange(n_epochs, dtype=np.float64)
        self.decay = (0.1 + 0.9 * np.exp(-5.0 * epochs / max(n_epochs, 1))).astype(np.float32)

    def bounds(self) -> tuple[float, float]:
        """Lower and upper bounds of every error this generator produces."""
        low = 0.05 * np.exp(-self.SCALE_CLIP) * np.exp(-self.NOISE_CLIP) * 0.1
        high = 0.05 * np.exp(self.SCALE_CLIP) * np.exp(self.NOISE_CLIP) * 1.0
        return float(low), float(high)

    def epoch(self, t: int) -> np.ndarray:
        """Errors of all samples at epoch ``t``: a new float32 array of shape ``(n_samples,)``."""
        n, s = self.n_samples, int(self.shift[t])
        out = np.empty(n, dtype=np.float32)
        np.multiply(self.scale[: n - s], self.noise[s:], out=out[: n - s])
        np.multiply(self.scale[n - s :], self.noise[:s], out=out[n - s :])
        out *= self.decay[t]
        return out


def make_bins(generator: EpochGenerator, n_bins: int) -> Bins:
    """Log bins with a margin around the generator's bounds (no error falls outside)."""
    low, high = generator.bounds()
    return Bins.log(low / 1.5, high * 1.5, n_bins)


class Timed:
    """Wraps the generator and adds up the time spent in it (excluded from build times)."""

    def __init__(self, generator: EpochGenerator) -> None:
        self.generator = generator
        self.seconds = 0.0

    def epoch(self, t: int) -> np.ndarray:
        start = time.perf_counter()
        errors = self.generator.epoch(t)
        self.seconds += time.perf_counter() - start
        return errors


# ------------------------------------------------------------------------- the two methods
def streaming_build(source: Timed, n_samples: int, n_epochs: int, bins: Bins, stages: dict):
    """ltau: live histograms fed one epoch at a time."""
    start = time.perf_counter()
    recorder = ErrorRecorder(n_samples, bins=bins)
    for t in tqdm(range(n_epochs), desc="ltau streaming", unit="epoch", file=sys.stderr):
        recorder.record_epoch(source.epoch(t))
    recorded = time.perf_counter()
    distributions = recorder.distributions()
    stages["record_epochs_s"] = recorded - start - source.seconds
    stages["distributions_s"] = time.perf_counter() - recorded
    return distributions


def naive_build(source: Timed, n_epochs: int, edges: np.ndarray, stages: dict):
    """All epochs in memory, then one vectorised histogram over the ``(N, T)`` array.

    Returns ``(counts, pdf)``: int64 counts ``(N, n_bins)`` before normalisation and the
    float64 PDFs (mass per bin divided by bin width). Out-of-range errors are dropped.
    """
    start = time.perf_counter()
    epochs = [
        source.epoch(t)
        for t in tqdm(range(n_epochs), desc="naive: epochs", unit="epoch", file=sys.stderr)
    ]
    data = np.concatenate([row[np.newaxis, :] for row in epochs], axis=0)  # (T, N)
    del epochs
    data = data.T  # (N, T)
    n_rows = data.shape[0]
    n_bins = edges.size - 1
    mark = time.perf_counter()
    stages["hold_and_concatenate_s"] = mark - start - source.seconds

    index = np.searchsorted(edges, data, "right") - 1
    valid = (index >= 0) & (index < n_bins)
    index = index + np.arange(n_rows)[:, np.newaxis] * n_bins
    stages["searchsorted_s"] = time.perf_counter() - mark
    mark = time.perf_counter()

    counts = np.bincount(index[valid], minlength=n_rows * n_bins).reshape(n_rows, n_bins)
    stages["dropped_out_of_range"] = int(valid.size - np.count_nonzero(valid))
    del index, valid, data
    stages["bincount_s"] = time.perf_counter() - mark
    mark = time.perf_counter()

    pdf = counts.astype(np.float64)
    pdf /= pdf.sum(axis=1, keepdims=True)
    pdf /= np.diff(edges)
    stages["normalise_s"] = time.perf_counter() - mark
    return counts, pdf


# --------------------------------------------------------------------------- child process
def current_rss_kib() -> int:
    """Resident set size now (KiB), from /proc; falls back to the peak so far."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def check_rows(n_samples: int, seed: int) -> np.ndarray:
    """Rows whose counts are compared between the methods (all of them for small sizes)."""
    if n_samples <= FULL_CHECK_ROWS:
        return np.arange(n_samples)
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(n_samples, size=CHECK_SUBSAMPLE, replace=False)
    return np.unique(np.concatenate([rows, [0, n_samples - 1]]))


def run_child(args: argparse.Namespace) -> None:
    """Run one build method, measure its time and peak memory, save counts for the check."""
    workdir = Path(args.workdir)
    generator = EpochGenerator(args.samples, args.epochs, args.seed)
    bins = make_bins(generator, args.bins)
    rows = check_rows(args.samples, args.seed)
    baseline_kib = current_rss_kib()
    baseline_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    source = Timed(generator)
    stages: dict = {}
    start = time.perf_counter()
    if args.only == "build":
        distributions = streaming_build(source, args.samples, args.epochs, bins, stages)
        counts = distributions.counts
        stages["n_below"], stages["n_above"] = distributions.n_below, distributions.n_above
    else:
        counts, pdf = naive_build(source, args.epochs, bins.edges, stages)
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Everything below happens after the measurement.
    if args.only == "build":
        np.save(workdir / "build_counts.npy", counts)
    else:
        np.save(workdir / "naive_counts_rows.npy", counts[rows])
        np.save(workdir / "naive_pdf_rows.npy", pdf[rows])
    result = {
        "method": args.only,
        "seconds": elapsed - source.seconds,
        "generation_s": source.seconds,
        "peak_mb": (peak_kib - baseline_kib) / 1024,
        "peak_rss_mb": peak_kib / 1024,
        "baseline_rss_mb": baseline_kib / 1024,
        "baseline_peak_rss_mb": baseline_peak_kib / 1024,
        "column_totals": counts.sum(axis=0, dtype=np.int64).tolist(),
        "stages": stages,
    }
    (workdir / f"{args.only}.json").write_text(json.dumps(result))


def spawn_child(method: str, args: argparse.Namespace, workdir: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        method,
        "--workdir",
        str(workdir),
        "--samples",
        str(args.samples),
        "--epochs",
        str(args.epochs),
        "--bins",
        str(args.bins),
        "--seed",
        str(args.seed),
    ]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"the {method!r} child process failed (exit code {completed.returncode})")
    return json.loads((workdir / f"{method}.json").read_text())


# ------------------------------------------------------------------------------ timing tools
def best_time(function, *, min_repeats: int = 1, max_repeats: int = 7, budget_s: float = 3.0):
    """Smallest wall time of ``function()`` over repeats (at least ``min_repeats``, then more
    while the total stays under ``budget_s``); returns ``(seconds, last_result)``."""
    times, result = [], None
    total_start = time.perf_counter()
    while len(times) < max_repeats:
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
        if len(times) >= min_repeats and time.perf_counter() - total_start > budget_s:
            break
    return min(times), result


def log(message: str, started: float) -> None:
    tqdm.write(f"[{time.perf_counter() - started:8.1f} s] {message}", file=sys.stderr)


def clustered_descriptors(
    rng: np.random.Generator, centers: np.ndarray, n: int, spread: float, chunk: int = 1 << 18
) -> np.ndarray:
    """``n`` points, each a random cluster centre plus isotropic Gaussian noise (float32)."""
    out = np.empty((n, centers.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        labels = rng.integers(0, centers.shape[0], size=stop - start)
        block = rng.standard_normal((stop - start, centers.shape[1]), dtype=np.float32)
        block *= np.float32(spread)
        block += centers[labels]
        out[start:stop] = block
    return out


def aggregate(estimator: LTAUEstimator, sample_exceedance, distances, indices):
    """The aggregation of ``predict_from_neighbors`` for expected error and one exceedance,
    with the same public pieces and the same operations (precomputed per-sample exceedance)."""
    weights = estimator.neighbor_weights(distances)
    safe = np.maximum(indices, 0)
    expected = np.sum(weights * estimator.sample_expected_error_[safe], axis=1)
    exceedance = np.sum(weights * sample_exceedance[safe], axis=1)
    return expected, exceedance


def query_benchmark(args, distributions: ErrorDistributions, started: float) -> dict:
    rng = np.random.default_rng(args.seed + 2)
    n_clusters = max(8, args.samples // 1000)
    centers = rng.standard_normal((n_clusters, args.dim), dtype=np.float32)
    spread = 0.35
    log(f"descriptors: {args.samples} x {args.dim}, {n_clusters} clusters", started)
    descriptors = clustered_descriptors(rng, centers, args.samples, spread)
    queries = clustered_descriptors(rng, centers, args.queries, spread)
    low, high = distributions.bins.edges[0], distributions.bins.edges[-1]
    atol = float(np.sqrt(low * high))  # geometric middle of the bin range
    result: dict = {"atol": atol, "n_clusters": n_clusters, "cluster_spread": spread}
    per_query = 1e6 / args.queries

    # Exact index.
    log("fitting the exact index", started)
    start = time.perf_counter()
    exact = LTAUEstimator(args.k, index="exact").fit(descriptors, distributions)
    result["fit_s_exact"] = time.perf_counter() - start
    exact.kneighbors(queries[: min(100, args.queries)])  # warm-up
    log(f"exact search of {args.queries} queries", started)
    seconds, (distances, indices) = best_time(lambda: exact.kneighbors(queries))
    result["query_us_exact"] = seconds * per_query

    # Aggregation, given the neighbours found.
    log("aggregation", started)
    start = time.perf_counter()
    sample_exceedance = exact.distributions_.exceedance(atol)
    result["exceedance_precompute_s"] = time.perf_counter() - start
    exact.predict_from_neighbors(distances, indices, atol=atol)  # fills the estimator's cache
    seconds, (expected, exceedance) = best_time(
        lambda: aggregate(exact, sample_exceedance, distances, indices),
        min_repeats=5,
        max_repeats=50,
    )
    result["aggregate_us"] = seconds * per_query
    seconds, prediction = best_time(
        lambda: exact.predict_from_neighbors(distances, indices, atol=atol),
        min_repeats=5,
        max_repeats=50,
    )
    result["predict_from_neighbors_us"] = seconds * per_query
    result["aggregate_matches_predict"] = bool(
        np.allclose(expected, prediction.expected_error, rtol=1e-12, atol=0)
        and np.allclose(exceedance, prediction.exceedance[:, 0], rtol=1e-12, atol=0)
    )
    log("exact predict()", started)
    seconds, _ = best_time(lambda: exact.predict(queries, atol=atol))
    result["predict_us_exact"] = seconds * per_query
    exact_indices = indices
    exact = None  # release the flat index before building HNSW

    # HNSW index.
    log("fitting the HNSW index (the slow part at full size)", started)
    start = time.perf_counter()
    hnsw = LTAUEstimator(args.k, index="hnsw").fit(descriptors, distributions)
    result["fit_s_hnsw"] = time.perf_counter() - start
    result["hnsw_params"] = hnsw.index_.params
    hnsw.kneighbors(queries[: min(100, args.queries)])
    log(f"HNSW search of {args.queries} queries", started)
    seconds, (_, hnsw_indices) = best_time(lambda: hnsw.kneighbors(queries))
    result["query_us_hnsw"] = seconds * per_query
    hits = sum(
        np.intersect1d(found, truth).size
        for found, truth in zip(hnsw_indices, exact_indices, strict=True)
    )
    result["hnsw_recall"] = hits / exact_indices.size
    seconds, _ = best_time(lambda: hnsw.predict(queries, atol=atol))
    result["predict_us_hnsw"] = seconds * per_query
    hnsw = None

    # HNSW with local distance scales: one extra self-search of the training set at fit.
    log("fitting the HNSW index with local distance scales", started)
    start = time.perf_counter()
    local = LTAUEstimator(args.k, index="hnsw", distance_scale="local")
    local.fit(descriptors, distributions)
    result["fit_s_hnsw_local"] = time.perf_counter() - start
    result["fit_ratio_hnsw_local"] = result["fit_s_hnsw_local"] / result["fit_s_hnsw"]
    seconds, _ = best_time(lambda: local.predict(queries, atol=atol))
    result["predict_us_hnsw_local"] = seconds * per_query
    return result


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="training samples N")
    parser.add_argument("--epochs", type=int, default=200, help="epochs T")
    parser.add_argument("--bins", type=int, default=100, help="log bins")
    parser.add_argument("--dim", type=int, default=64, help="descriptor size")
    parser.add_argument("--queries", type=int, default=10_000, help="queries (one batch)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument("--seed", type=int, default=0, help="seed of all random data")
    parser.add_argument("--only", choices=("build", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("samples", "epochs", "bins", "dim", "queries", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")
    if args.k > args.samples:
        parser.error("--k cannot exceed --samples")
    if args.epochs > np.iinfo(np.uint16).max:
        parser.error("--epochs above 65535 would make ltau switch its counts to uint32")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.only:
        run_child(args)
        return None
    started = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".core-", dir=args.output.parent) as tmp:
        workdir = Path(tmp)
        log(f"build: ltau streaming, {args.samples} x {args.epochs} -> {args.bins} bins", started)
        build = spawn_child("build", args, workdir)
        log("build: naive in-memory", started)
        naive = spawn_child("naive", args, workdir)

        log("checking that the counts agree", started)
        generator = EpochGenerator(args.samples, args.epochs, args.seed)
        bins = make_bins(generator, args.bins)
        del generator
        counts = np.load(workdir / "build_counts.npy")
        distributions = ErrorDistributions(bins, counts)
        rows = check_rows(args.samples, args.seed)
        naive_rows = np.load(workdir / "naive_counts_rows.npy")
        naive_pdf_rows = np.load(workdir / "naive_pdf_rows.npy")
    nothing_outside = (
        build["stages"]["n_below"] == 0
        and build["stages"]["n_above"] == 0
        and naive["stages"]["dropped_out_of_range"] == 0
    )
    counts_agree = bool(
        np.array_equal(counts[rows].astype(np.int64), naive_rows)
        and build["column_totals"] == naive["column_totals"]
        and nothing_outside
    )
    pdf_agree = bool(np.allclose(distributions.pdf(rows), naive_pdf_rows, rtol=1e-12, atol=0))

    queries = query_benchmark(args, distributions, started)

    result = {
        "n_samples": args.samples,
        "n_epochs": args.epochs,
        "n_bins": args.bins,
        "dim": args.dim,
        "k": args.k,
        "n_queries": args.queries,
        "seed": args.seed,
        "build_s": build["seconds"],
        "build_peak_mb": build["peak_mb"],
        "naive_build_s": naive["seconds"],
        "naive_build_peak_mb": naive["peak_mb"],
        "build_speedup": naive["seconds"] / build["seconds"],
        "memory_ratio": build["peak_mb"] / naive["peak_mb"],
        "query_us_exact": queries["query_us_exact"],
        "query_us_hnsw": queries["query_us_hnsw"],
        "hnsw_recall": queries["hnsw_recall"],
        "aggregate_us": queries["aggregate_us"],
        "predict_from_neighbors_us": queries["predict_from_neighbors_us"],
        "predict_us_exact": queries["predict_us_exact"],
        "predict_us_hnsw": queries["predict_us_hnsw"],
        "fit_ratio_hnsw_local": queries["fit_ratio_hnsw_local"],
        "predict_us_hnsw_local": queries["predict_us_hnsw_local"],
        "counts_agree": counts_agree,
        "pdf_agree": pdf_agree,
        "counts_checked_rows": int(rows.size),
        "aggregate_matches_predict": queries["aggregate_matches_predict"],
        "targets": TARGETS,
        "targets_met": {
            "build_speedup": naive["seconds"] / build["seconds"] >= TARGETS["build_speedup_min"],
            "memory_ratio": build["peak_mb"] / naive["peak_mb"] <= TARGETS["memory_ratio_max"],
            "aggregate_us": queries["aggregate_us"] <= TARGETS["aggregate_us_max"],
        },
        "details": {
            "build": {key: build[key] for key in ("generation_s", "peak_rss_mb", "stages")}
            | {"baseline_rss_mb": build["baseline_rss_mb"]},
            "naive": {key: naive[key] for key in ("generation_s", "peak_rss_mb", "stages")}
            | {"baseline_rss_mb": naive["baseline_rss_mb"]},
            "bins": {"low": float(bins.edges[0]), "high": float(bins.edges[-1]), "log": True},
            "queries": {
                key: queries[key]
                for key in (
                    "atol",
                    "n_clusters",
                    "cluster_spread",
                    "fit_s_exact",
                    "fit_s_hnsw",
                    "fit_s_hnsw_local",
                    "hnsw_params",
                    "exceedance_precompute_s",
                )
            },
            "notes": (
                "times exclude error generation (timed inside both methods and subtracted); "
                "peak_mb = ru_maxrss of a child process running one method minus its RSS after "
                "imports and generator set-up, MB = 2**20 bytes; build = ErrorRecorder.record_epoch"
                " x T + distributions() (uint16 counts); naive = list of epochs + concatenate + "
                "searchsorted + bincount + float64 PDFs; per-query times are one batch of "
                "n_queries divided by n_queries, best of repeats"
            ),
        },
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "ltau": ltau.__version__,
            "cpu_count": os.cpu_count(),
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        "run_s": time.perf_counter() - started,
    }
    line = json.dumps(result)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.output}", started)
    print(line, flush=True)
    return result


if __name__ == "__main__":
    main()
