"""Per-sample error distributions on fixed bins: histograms, PDFs, CDFs and their statistics.

One model underlies every quantity here: inside a bin the error density is uniform, so the CDF
is piecewise linear between bin edges. The expected error, the exceedance probability
``P(error > atol)`` and the quantiles all follow exactly from that model, with bin widths taken
into account (log-spaced bins have very unequal widths).

Arrays of probability *mass* have shape ``(n, n_bins)`` and rows that sum to one; a *density*
(PDF) is mass divided by bin width, in 1 / (error unit).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import h5py
import numpy as np

from ltau._checks import as_error_vector, as_index_vector, as_probabilities, positive_int
from ltau._io import (
    atomic_h5,
    open_checked,
    read_array,
    read_attributes,
    reading,
    sign_attributes,
    write_array,
)
from ltau.exceptions import LTAUFileError, LTAUInputError

Spacing = Literal["log", "linear", "custom"]
ROW_CHUNK = 1 << 16
"""Rows processed at once when turning counts into floats, to bound temporary memory."""


@dataclass(frozen=True)
class Bins:
    """Bin edges for error histograms.

    Bins are closed on the left and open on the right, except the last, which is closed
    (as in ``numpy.histogram``). ``edges`` has shape ``(n_bins + 1,)``, in the error's unit.
    """

    edges: np.ndarray
    spacing: Spacing = "custom"

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or edges.size < 2:
            raise LTAUInputError(f"bin edges must be 1-D with at least 2 values; got {edges.shape}")
        if not np.all(np.isfinite(edges)):
            raise LTAUInputError("bin edges must be finite")
        if not np.all(np.diff(edges) > 0):
            raise LTAUInputError("bin edges must be strictly increasing")
        if edges[0] < 0:
            raise LTAUInputError(
                f"errors are non-negative, so bins must start at >= 0; got {edges[0]}"
            )
        if self.spacing not in ("log", "linear", "custom"):
            raise LTAUInputError(f"unknown bin spacing {self.spacing!r}; use 'log' or 'linear'")
        if self.spacing == "log" and edges[0] <= 0:
            raise LTAUInputError("log-spaced bins need a positive lower edge")
        if self.spacing in ("log", "linear"):
            coordinate = np.log(edges) if self.spacing == "log" else edges
            if not np.allclose(np.diff(coordinate), np.diff(coordinate).mean(), rtol=1e-6, atol=0):
                raise LTAUInputError(
                    f"these edges are not evenly {self.spacing}-spaced; use spacing='custom'"
                )
        edges.setflags(write=False)
        object.__setattr__(self, "edges", edges)
        # For float32 values v and any float64 edge e: v < e  <=>  v < ceil32(e), the smallest
        # float32 >= e. These rounded-up edges let assign() compare exactly in float32.
        edges32 = edges.astype(np.float32)
        below = edges32.astype(np.float64) < edges
        edges32[below] = np.nextafter(edges32[below], np.float32(np.inf))
        object.__setattr__(self, "_edges32", edges32)

    @classmethod
    def log(cls, low: float, high: float, n_bins: int = 100) -> Bins:
        """``n_bins`` log-spaced bins from ``low`` to ``high`` (both > 0)."""
        n_bins = positive_int(n_bins, "n_bins")
        if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
            raise LTAUInputError(f"log bins need 0 < low < high; got low={low}, high={high}")
        return cls(np.geomspace(low, high, n_bins + 1), "log")

    @classmethod
    def linear(cls, low: float, high: float, n_bins: int = 100) -> Bins:
        """``n_bins`` equal-width bins from ``low`` (>= 0) to ``high``."""
        n_bins = positive_int(n_bins, "n_bins")
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
            raise LTAUInputError(f"linear bins need 0 <= low < high; got low={low}, high={high}")
        return cls(np.linspace(low, high, n_bins + 1), "linear")

    @classmethod
    def from_range(
        cls, low: float, high: float, n_bins: int = 100, spacing: Spacing = "log"
    ) -> Bins:
        """Bins spanning an observed error range ``[low, high]``.

        For log spacing ``low`` should be the smallest *positive* error; exact zeros then fall
        into the first bin. Linear bins built from data start at 0 (errors are magnitudes). A degenerate range (``low == high``) is widened by 1% each way.
        """
        if spacing not in ("log", "linear"):
            raise LTAUInputError(f"unknown bin spacing {spacing!r}; use 'log' or 'linear'")
        if not (np.isfinite(low) and np.isfinite(high)) or high < low:
            raise LTAUInputError(f"invalid error range [{low}, {high}]")
        if high == low:
            low, high = low * 0.99, high * 1.01 if high > 0 else 1.0
        if spacing == "log":
            return cls.log(low, high, n_bins)
        return cls.linear(low, high, n_bins)

    @property
    def n_bins(self) -> int:
        return self.edges.size - 1

    @property
    def widths(self) -> np.ndarray:
        """Bin widths, shape ``(n_bins,)``."""
        return np.diff(self.edges)

    @property
    def centers(self) -> np.ndarray:
        """Arithmetic bin midpoints, shape ``(n_bins,)``: the mean of a uniform density in a bin."""
        return 0.5 * (self.edges[:-1] + self.edges[1:])

    def assign(self, values: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Bin index of each value, clipping out-of-range values into the end bins.

        Returns ``(indices, n_below, n_above)``: int64 indices of shape ``values.shape`` and how
        many values lay below the first edge or above the last one. Exact for float32 and
        float64 values (same result as a binary search of the float64 edges).
        """
        values = np.asarray(values)
        edges = self._edges32 if values.dtype == np.float32 else self.edges
        if values.dtype != np.float32:
            values = values.astype(np.float64)
        n_below = int(np.count_nonzero(values < edges[0]))
        n_above = values.size - int(np.count_nonzero(values <= self.edges[-1]))
        # Uniform spacing in log or linear coordinates: a direct formula in float32, then an
        # exact check against the edges for the few values whose coordinate lies within the
        # float32 rounding error (of the value and of the log) of a bin boundary. Custom edges,
        # and bins too narrow for float32, use an exact binary search instead.
        low, high = self.edges[0], self.edges[-1]
        eps = float(np.finfo(np.float32).eps)
        if self.spacing == "log":
            offset, step = np.log(low), np.log(high / low) / self.n_bins
            tolerance = 16 * eps * (1 + abs(np.log(low)) + abs(np.log(high))) / step
        else:
            offset, step = low, (high - low) / self.n_bins
            tolerance = 16 * eps * (abs(low) + abs(high)) / step
        if self.spacing == "custom" or tolerance >= 0.25:
            index = np.searchsorted(self.edges, values, side="right") - 1
            return np.clip(index, 0, self.n_bins - 1), n_below, n_above
        coordinate = np.array(values, dtype=np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):  # log(0) = -inf: first bin
            if self.spacing == "log":
                np.log(coordinate, out=coordinate)
            coordinate -= np.float32(offset)
            coordinate *= np.float32(1.0 / step)
            distance = np.rint(coordinate)
            np.subtract(coordinate, distance, out=distance)
            np.abs(distance, out=distance)
            near_boundary = np.flatnonzero(distance < tolerance)
        np.floor(coordinate, out=coordinate)
        np.clip(coordinate, 0, self.n_bins - 1, out=coordinate)
        index = coordinate.astype(np.intp)
        suspects, suspect_values = index[near_boundary], values[near_boundary]
        suspects -= suspect_values < edges[suspects]
        suspects += suspect_values >= edges[suspects + 1]
        index[near_boundary] = np.clip(suspects, 0, self.n_bins - 1)
        return index, n_below, n_above

    def tail_fraction(self, thresholds: np.ndarray) -> np.ndarray:
        """Fraction of each bin above each threshold, shape ``(n_bins, n_thresholds)``.

        ``mass @ tail_fraction(t)`` is ``P(error > t)`` under the uniform-in-bin model.
        """
        thresholds = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        if not np.all(np.isfinite(thresholds)) or np.any(thresholds < 0):
            raise LTAUInputError(
                f"atol (error tolerances) must be finite and non-negative; got {thresholds.tolist()}"
            )
        above = (self.edges[1:, None] - thresholds[None, :]) / self.widths[:, None]
        return np.clip(above, 0.0, 1.0)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Bins)
            and self.spacing == other.spacing
            and self.edges.shape == other.edges.shape
            and bool(np.array_equal(self.edges, other.edges))
        )

    def __hash__(self) -> int:
        return hash((self.spacing, self.edges.tobytes()))


def expected_value(mass: np.ndarray, bins: Bins) -> np.ndarray:
    """Mean error of each row of ``mass`` (shape ``(n, n_bins)``), shape ``(n,)``."""
    return mass @ bins.centers


def exceedance_probability(mass: np.ndarray, bins: Bins, atol: float | np.ndarray) -> np.ndarray:
    """``P(error > atol)`` for each row of ``mass``; shape ``(n,)`` or ``(n, len(atol))``."""
    atol_array = np.asarray(atol, dtype=np.float64)
    result = mass @ bins.tail_fraction(atol_array)
    return result[:, 0] if atol_array.ndim == 0 else result


def quantiles(mass: np.ndarray, bins: Bins, levels: float | np.ndarray) -> np.ndarray:
    """Error quantiles of each row of ``mass`` by linear interpolation of its CDF.

    Returns shape ``(n,)`` for a scalar level, else ``(n, len(levels))``.
    """
    levels_array = as_probabilities(levels, "quantile levels")
    cdf = np.cumsum(mass, axis=1)
    cdf /= cdf[:, -1:]
    rows = np.arange(mass.shape[0])
    result = np.empty((mass.shape[0], levels_array.size))
    occupied = mass > 0
    for column, level in enumerate(levels_array):
        # First occupied bin whose right-edge CDF reaches the level (up to rounding); the level
        # is reached inside it, so interpolate there. Level 0 gives the left end of the support
        # and level 1 its right end.
        index = np.argmax(occupied & (cdf >= level - 1e-12), axis=1)
        cdf_left = np.where(index > 0, cdf[rows, np.maximum(index - 1, 0)], 0.0)
        bin_mass = cdf[rows, index] - cdf_left
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(bin_mass > 0, (level - cdf_left) / bin_mass, 0.0)
        fraction = np.clip(fraction, 0.0, 1.0)
        result[:, column] = bins.edges[index] + fraction * bins.widths[index]
    return result[:, 0] if np.ndim(levels) == 0 else result


def central_interval(
    mass: np.ndarray, bins: Bins, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central ``confidence`` interval ``(lower, upper)`` of each row, each of shape ``(n,)``."""
    confidence = float(as_probabilities(confidence, "confidence")[0])
    bounds = quantiles(mass, bins, np.array([(1 - confidence) / 2, (1 + confidence) / 2]))
    return bounds[:, 0], bounds[:, 1]


@dataclass
class ErrorDistributions:
    """Histogram of each training sample's error trajectory.

    ``counts`` has shape ``(n_samples, n_bins)``: how many recorded errors (epochs x models) of
    each sample fell in each bin. ``n_below`` / ``n_above`` count observations that lay outside
    the bins and were clipped into the end bins.
    """

    bins: Bins
    counts: np.ndarray
    n_below: int = 0
    n_above: int = 0
    _totals: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 2 or counts.shape[1] != self.bins.n_bins:
            raise LTAUInputError(
                f"counts must have shape (n_samples, {self.bins.n_bins}); got {counts.shape}"
            )
        if counts.shape[0] == 0:
            raise LTAUInputError("distributions need at least one sample")
        if not np.issubdtype(counts.dtype, np.integer) or (counts.size and counts.min() < 0):
            raise LTAUInputError("counts must be non-negative integers")
        totals = counts.sum(axis=1, dtype=np.int64)
        if np.any(totals == 0):
            empty = np.flatnonzero(totals == 0)
            raise LTAUInputError(
                f"{empty.size} samples have no recorded errors (first ids: {empty[:5].tolist()})"
            )
        self.counts = counts
        self._totals = totals

    @classmethod
    def from_errors(
        cls,
        errors: np.ndarray,
        bins: Bins | None = None,
        n_bins: int = 100,
        spacing: Spacing = "log",
    ) -> ErrorDistributions:
        """Histogram an in-memory ``(n_samples, n_observations)`` error array, row by row.

        Without ``bins``, ``n_bins`` bins span the observed range.
        """
        errors = np.asarray(errors, dtype=np.float32)
        if errors.ndim != 2 or 0 in errors.shape:
            raise LTAUInputError(
                f"errors must be 2-D (n_samples, n_observations), non-empty; got {errors.shape}"
            )
        if bins is None:
            bins = bins_for_errors(errors, n_bins, spacing)
        as_error_vector(errors.reshape(-1))
        accumulator = HistogramAccumulator(bins, errors.shape[0])
        for column in range(errors.shape[1]):
            accumulator.add_checked(None, np.ascontiguousarray(errors[:, column]))
        return accumulator.distributions()

    @property
    def n_samples(self) -> int:
        return self.counts.shape[0]

    @property
    def n_observations(self) -> np.ndarray:
        """Number of recorded errors per sample, shape ``(n_samples,)``."""
        return self._totals

    def mass(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Probability mass per bin, float64 ``(n_rows, n_bins)``; rows sum to one."""
        selection = slice(None) if rows is None else rows
        return self.counts[selection].astype(np.float64) / self._totals[selection, None]

    def pdf(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Probability density per bin (1 / error unit), shape ``(n_rows, n_bins)``."""
        return self.mass(rows) / self.bins.widths

    def cdf(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """CDF at every bin edge, shape ``(n_rows, n_bins + 1)``, starting at 0 and ending at 1."""
        mass = self.mass(rows)
        return np.concatenate([np.zeros((mass.shape[0], 1)), np.cumsum(mass, axis=1)], axis=1)

    def expected_error(self) -> np.ndarray:
        """Mean error of each sample's distribution, shape ``(n_samples,)``."""
        return self._per_row(lambda mass: expected_value(mass, self.bins))

    def exceedance(self, atol: float | np.ndarray) -> np.ndarray:
        """``P(error > atol)`` per sample; shape ``(n_samples,)`` or ``(n_samples, len(atol))``."""
        return self._per_row(lambda mass: exceedance_probability(mass, self.bins, atol))

    def quantile(self, levels: float | np.ndarray) -> np.ndarray:
        """Quantiles of each sample's error distribution (see :func:`quantiles`)."""
        return self._per_row(lambda mass: quantiles(mass, self.bins, levels))

    def pooled(self, *others: ErrorDistributions) -> ErrorDistributions:
        """Pool several models' distributions of the same samples on the same bins."""
        counts = self.counts.astype(np.int64)
        n_below, n_above = self.n_below, self.n_above
        for other in others:
            if other.bins != self.bins or other.n_samples != self.n_samples:
                raise LTAUInputError(
                    "only distributions of the same samples and bins can be pooled"
                )
            counts += other.counts
            n_below += other.n_below
            n_above += other.n_above
        return ErrorDistributions(self.bins, _compact(counts), n_below, n_above)

    def subset(self, rows: np.ndarray) -> ErrorDistributions:
        """The distributions of the samples ``rows`` (integer ids)."""
        rows = as_index_vector(rows, self.n_samples, "rows")
        return ErrorDistributions(self.bins, self.counts[rows], self.n_below, self.n_above)

    def _per_row(self, statistic) -> np.ndarray:
        parts = [statistic(self.mass(chunk)) for chunk in _row_chunks(self.n_samples)]
        return np.concatenate(parts, axis=0)


class HistogramAccumulator:
    """Streaming per-sample histograms: memory is ``n_samples x n_bins`` counts, whatever the
    number of epochs.

    Counts are stored as uint16 and promoted to uint32 only if a sample could exceed 65535
    observations. Bin indices of whole epochs are buffered (``PENDING_EPOCHS`` at a time, one
    byte per sample) and added block of rows by block of rows, so that the scattered increments
    hit a block of counts that stays in cache instead of the whole array once per epoch.
    """

    PENDING_EPOCHS = 16
    ROWS_PER_BLOCK = 4096

    def __init__(self, bins: Bins, n_samples: int) -> None:
        self.bins = bins
        self.n_samples = positive_int(n_samples, "n_samples")
        self._counts = np.zeros((self.n_samples, bins.n_bins), dtype=np.uint16)
        self._max_observations = 0
        index_type = np.uint8 if bins.n_bins <= 256 else np.uint16
        self._pending = np.empty((0, self.n_samples), dtype=index_type)
        self._n_pending = 0
        self._block_offsets = np.arange(self.ROWS_PER_BLOCK, dtype=np.intp) * bins.n_bins
        self.n_below = 0
        self.n_above = 0

    @property
    def counts(self) -> np.ndarray:
        """Counts so far, ``(n_samples, n_bins)`` (the live array: copy it to keep it)."""
        self._flush()
        return self._counts

    def add(self, ids: np.ndarray, errors: np.ndarray) -> None:
        """Add one observation for each of ``ids`` (unique sample ids, shape ``(m,)``)."""
        errors = as_error_vector(errors)
        ids = as_index_vector(ids, self.n_samples)
        if ids.shape != errors.shape:
            raise LTAUInputError(f"{ids.size} ids but {errors.size} errors")
        if np.unique(ids).size != ids.size:
            raise LTAUInputError("ids must be unique within one call to add()")
        self.add_checked(ids, errors)

    def add_checked(self, ids: np.ndarray | None, errors: np.ndarray) -> None:
        """:meth:`add` for input already validated (unique in-range ids, finite errors >= 0).

        ``ids=None`` means every sample, in id order (such epochs are buffered).
        """
        if self._max_observations + 1 > np.iinfo(self._counts.dtype).max:
            self._flush()
            self._counts = self._counts.astype(np.uint32)
        index, n_below, n_above = self.bins.assign(errors)
        self._max_observations += 1
        self.n_below += n_below
        self.n_above += n_above
        if ids is None:
            if self._pending.shape[0] == 0:
                self._pending = np.empty((self.PENDING_EPOCHS, self.n_samples), self._pending.dtype)
            self._pending[self._n_pending] = index
            self._n_pending += 1
            if self._n_pending == self.PENDING_EPOCHS:
                self._flush()
        else:
            # ids are unique, so a plain fancy-index increment is exact (no np.add.at needed).
            index += ids * self.bins.n_bins
            self._counts.reshape(-1)[index] += 1

    def _flush(self) -> None:
        """Add the buffered epochs to the counts, one cache-sized block of rows at a time."""
        if self._n_pending == 0:
            return
        pending = self._pending[: self._n_pending]
        for start in range(0, self.n_samples, self.ROWS_PER_BLOCK):
            stop = min(start + self.ROWS_PER_BLOCK, self.n_samples)
            block = self._counts[start:stop].reshape(-1)
            offsets = self._block_offsets[: stop - start]
            for epoch_indices in pending[:, start:stop]:
                block[offsets + epoch_indices] += 1
        self._n_pending = 0

    def distributions(self) -> ErrorDistributions:
        """The accumulated histograms (shares the counts array; copy it to keep recording)."""
        return ErrorDistributions(self.bins, self.counts, self.n_below, self.n_above)


def bins_for_errors(errors: np.ndarray, n_bins: int = 100, spacing: Spacing = "log") -> Bins:
    """Bins spanning the observed errors (any shape, finite, >= 0).

    Log bins run from the smallest positive error to the largest; linear bins from 0 to the
    largest.
    """
    flat = as_error_vector(np.asarray(errors, dtype=np.float32).reshape(-1))
    if flat.size == 0:
        raise LTAUInputError("cannot choose bins from an empty set of errors")
    high = float(flat.max())
    if spacing == "log":
        positive = flat[flat > 0]
        if positive.size == 0:
            raise LTAUInputError("all errors are zero: log-spaced bins cannot span them")
        return Bins.from_range(float(positive.min()), high, n_bins, "log")
    return Bins.from_range(0.0, high, n_bins, spacing)


def _compact(counts: np.ndarray) -> np.ndarray:
    """Store counts in the smallest unsigned type that holds them."""
    for dtype in (np.uint16, np.uint32):
        if counts.size == 0 or counts.max() <= np.iinfo(dtype).max:
            return counts.astype(dtype)
    return counts.astype(np.uint64)


def _row_chunks(n_rows: int, chunk: int = ROW_CHUNK) -> Iterator[slice]:
    for start in range(0, n_rows, chunk):
        yield slice(start, min(start + chunk, n_rows))


DISTRIBUTIONS_FORMAT = "ltau-distributions"
_DISTRIBUTION_ATTRIBUTES = ("spacing", "n_below", "n_above")


def save_distributions(distributions: ErrorDistributions, path: str | os.PathLike) -> None:
    """Write ``distributions`` to one self-describing HDF5 file, atomically."""
    with atomic_h5(path, DISTRIBUTIONS_FORMAT) as handle:
        write_distributions_group(handle.create_group("distributions"), distributions)


def load_distributions(path: str | os.PathLike) -> ErrorDistributions:
    """Read a file written by :func:`save_distributions`."""
    with open_checked(path, DISTRIBUTIONS_FORMAT) as handle, reading(path):
        if "distributions" not in handle:
            raise LTAUFileError(f"{path} is missing the group 'distributions'")
        return read_distributions_group(handle["distributions"], path)


def write_distributions_group(group: h5py.Group, distributions: ErrorDistributions) -> None:
    """Store bins and counts in an HDF5 group (shared by the distributions and estimator files)."""
    group.attrs["spacing"] = distributions.bins.spacing
    group.attrs["n_below"] = distributions.n_below
    group.attrs["n_above"] = distributions.n_above
    sign_attributes(group, _DISTRIBUTION_ATTRIBUTES)
    write_array(group, "edges", distributions.bins.edges)
    write_array(group, "counts", distributions.counts)


def read_distributions_group(group: h5py.Group, source: str | os.PathLike) -> ErrorDistributions:
    """Inverse of :func:`write_distributions_group`, with checks that name what is wrong."""
    attributes = read_attributes(group, _DISTRIBUTION_ATTRIBUTES, source)
    try:
        bins = Bins(read_array(group, "edges", source), str(attributes["spacing"]))
        return ErrorDistributions(
            bins,
            read_array(group, "counts", source),
            int(attributes["n_below"]),
            int(attributes["n_above"]),
        )
    except LTAUInputError as exc:
        raise LTAUFileError(f"{source}: invalid stored distributions: {exc}") from exc


def cdf_at(mass: np.ndarray, bins: Bins, values: float | np.ndarray) -> np.ndarray:
    """Each row's CDF at its own value: ``F_i(values[i])``, shape ``(n,)``.

    ``mass`` has shape ``(n, n_bins)``; ``values`` has shape ``(n,)`` or is a scalar used for
    every row. Under the uniform-in-bin model the CDF is 0 below the first edge, 1 from the
    last edge on, and linear inside each bin (the same CDF that :func:`quantiles` inverts).
    """
    mass = np.asarray(mass, dtype=np.float64)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (mass.shape[0],))
    edges = bins.edges
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins.n_bins - 1)
    rows = np.arange(mass.shape[0])
    cumulative = np.cumsum(mass, axis=1)
    left = cumulative[rows, index] - mass[rows, index]
    fraction = np.clip((values - edges[index]) / bins.widths[index], 0.0, 1.0)
    result = left + fraction * mass[rows, index]
    result[values < edges[0]] = 0.0
    result[values >= edges[-1]] = 1.0
    return np.clip(result, 0.0, 1.0)


def density_at(mass: np.ndarray, bins: Bins, values: float | np.ndarray) -> np.ndarray:
    """Each row's density at its own value: ``f_i(values[i])`` in 1 / (error unit), shape ``(n,)``.

    ``mass[i, j] / width[j]`` for the bin ``j`` holding ``values[i]`` (bins are closed on the
    left, the last one also on the right, as in :meth:`Bins.assign`); 0 outside
    ``[edges[0], edges[-1]]``.
    """
    mass = np.asarray(mass, dtype=np.float64)
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (mass.shape[0],))
    edges = bins.edges
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins.n_bins - 1)
    density = mass[np.arange(mass.shape[0]), index] / bins.widths[index]
    return np.where((values >= edges[0]) & (values <= edges[-1]), density, 0.0)
