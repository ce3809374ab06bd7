"""Independent NumPy reference computations the tests compare ltau against.

Nothing here calls ltau's statistics: histograms come from ``np.histogram``, CDFs from integer
cumulative counts, exceedance from ``np.interp`` of the CDF, the mean from integrating the
survival function, quantiles from the definition of the generalised inverse of a piecewise-linear
CDF, and neighbours from brute-force distance matrices.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings

# Deterministic, fast property tests: derandomised, no example database, no deadline.
PROPERTY = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def histogram_rows(errors: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Per-row ``np.histogram`` counts, with out-of-range values clipped into the end bins.

    Returns ``(counts (n, n_bins) int64, n_below, n_above)``.
    """
    values = np.asarray(errors, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    clipped = np.clip(values, edges[0], edges[-1])
    counts = np.stack([np.histogram(row, bins=edges)[0] for row in clipped]).astype(np.int64)
    return counts, int(np.sum(values < edges[0])), int(np.sum(values > edges[-1]))


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value by direct comparison with every edge (left-closed, last bin closed)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    step = max(1, 2_000_000 // edges.size)
    index = np.concatenate(
        [
            np.sum(values[start : start + step, None] >= edges[None, :-1], axis=1) - 1
            for start in range(0, values.size, step)
        ]
    )
    return np.clip(index, 0, edges.size - 2)


def masses(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def cdf_at_edges(counts_or_mass: np.ndarray) -> np.ndarray:
    """CDF at every edge, ``(n, n_bins + 1)``, from integer cumulative counts when possible."""
    values = np.asarray(counts_or_mass)
    if np.issubdtype(values.dtype, np.integer):
        cumulative = np.cumsum(values.astype(np.int64), axis=1)
        cdf = cumulative / cumulative[:, -1:]
    else:
        cumulative = np.cumsum(values.astype(np.float64), axis=1)
        cdf = cumulative / cumulative[:, -1:]
    return np.concatenate([np.zeros((values.shape[0], 1)), cdf], axis=1)


def exceedance(counts_or_mass: np.ndarray, edges: np.ndarray, atol: float) -> np.ndarray:
    """``P(e > atol) = 1 - F(atol)`` with the piecewise-linear CDF interpolated between edges."""
    cdf = cdf_at_edges(counts_or_mass)
    return np.array([1.0 - np.interp(atol, edges, row, left=0.0, right=1.0) for row in cdf])


def expected(counts_or_mass: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``E[e] = e_0 + integral of (1 - F)`` over the bins (trapezoids are exact: F is linear)."""
    survival = 1.0 - cdf_at_edges(counts_or_mass)
    widths = np.diff(edges)
    return edges[0] + np.sum(0.5 * (survival[:, :-1] + survival[:, 1:]) * widths, axis=1)


def _inverse(cdf: np.ndarray, edges: np.ndarray, level: float, side: str) -> float:
    """``min{x: F(x) >= level}`` (side='left') or ``max{x: F(x) <= level}`` (side='right')."""
    j = int(np.searchsorted(cdf, level, side=side))
    if side == "left":
        if j == 0:
            return float(edges[0])
    else:
        if j >= cdf.size:
            return float(edges[-1])
        if j == 0:
            return float(edges[0])
    c0, c1 = cdf[j - 1], cdf[j]
    return float(edges[j - 1] + (level - c0) / (c1 - c0) * (edges[j] - edges[j - 1]))


def quantile_bounds(
    counts_or_mass: np.ndarray, edges: np.ndarray, levels: np.ndarray, eps: float = 1e-11
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds ``(lo, hi)`` of each quantile of each row, shape ``(n, n_levels)``.

    ``lo`` is the generalised inverse of the CDF at ``level - eps``, ``hi`` the right inverse at
    ``level + eps``: they coincide up to ``eps`` unless the level hits a flat stretch of the CDF
    exactly, where any point of the stretch is a valid quantile.
    """
    cdf = cdf_at_edges(counts_or_mass)
    levels = np.atleast_1d(levels)
    lo = np.empty((cdf.shape[0], levels.size))
    hi = np.empty_like(lo)
    for i, row in enumerate(cdf):
        for j, level in enumerate(levels):
            lo[i, j] = _inverse(row, edges, level - eps, "left")
            hi[i, j] = _inverse(row, edges, level + eps, "right")
    return lo, hi


def support(counts_or_mass: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest edge of the non-empty bins of each row."""
    positive = np.asarray(counts_or_mass) > 0
    first = np.argmax(positive, axis=1)
    last = positive.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)
    return edges[first], edges[last + 1]


def brute_force_knn(
    train: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)`` of the k nearest rows of ``train``, float64 Euclidean."""
    train = np.asarray(train, dtype=np.float64)
    queries = np.asarray(queries, dtype=np.float64)
    squared = np.sum((queries[:, None, :] - train[None, :, :]) ** 2, axis=2)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(squared, order, axis=1)), order


def knn_weights(distances: np.ndarray, weighting: str) -> np.ndarray:
    if weighting == "uniform":
        raw = np.ones_like(distances)
    else:
        raw = 1.0 / np.maximum(distances, 1e-12)
    return raw / raw.sum(axis=1, keepdims=True)


def mixture(counts: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted average of the neighbours' probability masses, ``(n_queries, n_bins)``."""
    mass = masses(counts)
    out = np.zeros((indices.shape[0], mass.shape[1]))
    for q in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            out[q] += weights[q, j] * mass[indices[q, j]]
    return out


def clustered(
    rng: np.random.Generator,
    *,
    n_clusters: int = 20,
    per_cluster: int = 150,
    dim: int = 32,
    spread: float = 1.0,
    separation: float = 12.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters: ``(points float32, labels, centres)``."""
    centres = rng.normal(scale=separation, size=(n_clusters, dim))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    points = centres[labels] + rng.normal(scale=spread, size=(labels.size, dim))
    return points.astype(np.float32), labels, centres


# --------------------------------------------------------------- corruption scans

_SCAN_SCRIPT = """
import sys, time
import numpy as np
from ltau import ErrorLog, LTAUEstimator, LTAUFileError
from ltau.distributions import load_distributions

kind, good_path, bad_path, queries_path = sys.argv[1:5]


def read(path):
    if kind == "estimator":
        prediction = LTAUEstimator.load(path).predict(
            np.load(queries_path), quantiles=[0.5], return_pdf=True
        )
        return [prediction.expected_error, prediction.neighbor_indices, prediction.pdf]
    if kind == "distributions":
        dist = load_distributions(path)
        return [dist.counts, dist.bins.edges, np.array([dist.n_below, dist.n_above])]
    with ErrorLog(path) as log:
        return [log.to_array(), log.members, log.distributions().counts]


reference = read(good_path)
raw = open(good_path, "rb").read()
dense = set(range(0, min(len(raw), 6144), 31))  # HDF5 superblock, headers, heaps, B-trees
positions = sorted(dense | set(range(0, len(raw), max(1, len(raw) // 64))))
for pattern in (0xFF, 0x5A):
    for position in positions:
        bad = bytearray(raw)
        for i in range(position, min(position + 16, len(bad))):
            bad[i] ^= pattern
        with open(bad_path, "wb") as handle:
            handle.write(bad)
        print(f"{pattern:#04x}@{position} start", flush=True)
        start = time.perf_counter()
        try:
            got = read(bad_path)
            same = len(got) == len(reference) and all(
                a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
                for a, b in zip(got, reference)
            )
            outcome = "same" if same else "DIFFERENT (corruption not detected)"
        except LTAUFileError:
            outcome = "LTAUFileError"
        except BaseException as exc:
            outcome = f"raised {type(exc).__name__}: {str(exc)[:90]}"
        elapsed = time.perf_counter() - start
        if elapsed > 2.0:
            outcome += f" SLOW ({elapsed:.1f} s)"
        print(f"{pattern:#04x}@{position} {outcome}", flush=True)
print("done", flush=True)
"""


def corruption_scan(kind: str, good_path, workdir, queries_path="", timeout: float = 120.0):
    """Flip 16 bytes (XOR 0xFF and XOR 0x5A) at many places of a good ltau file and read it.

    ``kind``: "estimator", "distributions" or "log". Runs in a subprocess so that a hang or a
    crash cannot take the test session down. Returns a list of problems: any exception other
    than LTAUFileError, a successful read with different content, a read slower than 2 s, a
    hang (the whole scan not done within ``timeout`` seconds, generous so that a loaded machine
    does not count as a hang) or a crash. An empty list means every corruption was reported or harmless.
    """
    import subprocess
    import sys
    from pathlib import Path

    bad_path = Path(workdir) / f"corrupted-{kind}.h5"
    command = [sys.executable, "-c", _SCAN_SCRIPT, kind, str(good_path), str(bad_path)]
    command.append(str(queries_path))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        output, stderr, crashed = result.stdout, result.stderr, result.returncode != 0
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr, crashed = "(timed out)", True
    lines = output.splitlines()
    problems = [
        line
        for line in lines
        if not line.endswith((" start", " same", " LTAUFileError")) and line != "done"
    ]
    if lines and lines[-1].endswith(" start"):
        where = lines[-1].removesuffix(" start")
        problems.append(f"{where} hang (> {timeout} s in all) or crash: {stderr[-300:]}")
    elif crashed or "done" not in lines:
        problems.append(f"scan did not finish: {stderr[-300:]}")
    return problems


def reseal(path) -> None:
    """Seal a file edited with h5py as if ltau had written it that way, to test the checks that
    stand behind the seal (an edit that is not resealed is refused by the seal itself)."""
    import h5py

    from ltau._io import seal

    with h5py.File(path, "r") as handle:
        found = handle.attrs["format"]
    seal(path, found.decode() if isinstance(found, bytes) else str(found))
