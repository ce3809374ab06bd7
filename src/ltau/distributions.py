"""Per-sample error distributions on fixed bins: streaming histograms, their statistics, files.

:class:`ErrorDistributions` holds the histogram of every training sample's error trajectory;
:class:`HistogramAccumulator` builds it epoch by epoch in bounded memory; :func:`bins_for_errors`
chooses bins spanning observed errors; :func:`save_distributions` / :func:`load_distributions`
write and read one self-describing HDF5 file. Every statistic (PDF, CDF, expected error,
``P(error > atol)``, quantiles) is that of the piecewise-uniform model of :mod:`ltau.histogram`.

Errors outside the bins are counted in the end bins (:meth:`ltau.histogram.Bins.assign`), and
never silently: building distributions that hold such errors emits an
:class:`~ltau.exceptions.LTAUClippingWarning` whose :class:`ClippingSummary` says how many
observations of how many samples lay below and above the bins and how much that biases them
(turn it into an error with ``warnings.simplefilter("error", LTAUClippingWarning)``). Errors
below the first edge, exact zeros with log bins among them, count as errors in the first bin:
the distributions do not resolve errors below ``edges[0]``.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np

from ltau._checks import as_error_vector, as_index_vector, positive_int, real_array
from ltau._io import (
    atomic_h5,
    open_checked,
    read_array,
    read_attributes,
    reading,
    sign_attributes,
    write_array,
)
from ltau.exceptions import LTAUClippingWarning, LTAUFileError, LTAUInputError
from ltau.histogram import (
    Bins,
    Spacing,
    checked_bins,
    edge_cdf,
    exceedance_probability,
    expected_value,
    quantiles,
    row_chunks,
)


@dataclass
class ErrorDistributions:
    """Histogram of each training sample's error trajectory.

    ``counts`` has shape ``(n_samples, n_bins)``: how many recorded errors (epochs x models) of
    each sample fell in each bin. ``n_below`` / ``n_above`` count observations that lay outside
    the bins and were clipped into the end bins (of the distributions these were built from,
    for a :meth:`subset`).

    uint8 ``counts`` are the compressed form made by :meth:`compressed` (1 byte per bin instead
    of 2 or 4): each row rescaled so that its largest count is at most
    :data:`COMPRESSED_MAX`. Every statistic reads the row's mass ``counts / row sum`` alike, so
    they work unchanged on it; :attr:`n_observations` then holds the rescaled row sums.
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
        self._totals = _compact(totals)

    @classmethod
    def from_errors(
        cls,
        errors: np.ndarray,
        bins: Bins | None = None,
        n_bins: int = 100,
        spacing: Spacing = "log",
    ) -> ErrorDistributions:
        """Histogram an in-memory ``(n_samples, n_observations)`` error array, row by row.

        Without ``bins``, ``n_bins`` bins span the observed range. Errors outside given
        ``bins`` emit an :class:`~ltau.exceptions.LTAUClippingWarning`.
        """
        errors = real_array(errors, "errors", np.float32)
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
    def is_compressed(self) -> bool:
        """Whether the counts are the uint8 form of :meth:`compressed`."""
        return self.counts.dtype == np.uint8

    def compressed(self) -> ErrorDistributions:
        """These distributions with uint8 counts (1 byte per sample and bin).

        Each row whose largest count exceeds :data:`COMPRESSED_MAX` is multiplied by
        ``COMPRESSED_MAX / its largest count`` and rounded, an occupied bin keeping at least 1
        (so the support, and :meth:`resolution`, are unchanged); other rows are kept exactly.
        A bin's mass then moves by at most ``0.5 / COMPRESSED_MAX`` of the row's largest bin
        mass (plus the renormalisation); ``docs/scale.md`` gives the measured effect on the
        predicted statistics. Compress after pooling: compressed rows cannot be pooled.
        """
        if self.is_compressed:
            return self
        packed = np.empty(self.counts.shape, dtype=np.uint8)
        for rows in row_chunks(self.n_samples):
            block = self.counts[rows]
            peak = block.max(axis=1, keepdims=True).astype(np.float64)
            scaled = np.rint(block * np.minimum(1.0, COMPRESSED_MAX / peak))
            packed[rows] = np.where(block > 0, np.maximum(scaled, 1.0), 0.0)
        return ErrorDistributions(self.bins, packed, self.n_below, self.n_above)

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
        """CDF at every bin edge, shape ``(n_rows, n_bins + 1)``, from 0 to 1 (:func:`edge_cdf`)."""
        return edge_cdf(self.mass(rows))

    def expected_error(self) -> np.ndarray:
        """Mean error of each sample's distribution, shape ``(n_samples,)``."""
        return self._per_row(lambda mass: expected_value(mass, self.bins))

    def exceedance(self, atol: float | np.ndarray) -> np.ndarray:
        """``P(error > atol)`` per sample; shape ``(n_samples,)`` or ``(n_samples, len(atol))``."""
        return self._per_row(lambda mass: exceedance_probability(mass, self.bins, atol))

    def quantile(self, levels: float | np.ndarray) -> np.ndarray:
        """Quantiles of each sample's error distribution (see :func:`ltau.histogram.quantiles`)."""
        return self._per_row(lambda mass: quantiles(mass, self.bins, levels))

    def resolution(self) -> np.ndarray:
        """The smallest error each sample's distribution resolves, ``(n_samples,)``: the left
        edge of its lowest occupied bin (its smallest recorded errors lay in that bin, or below
        the first edge if it is the first)."""
        return self._per_row(lambda mass: self.bins.edges[np.argmax(mass > 0, axis=1)])

    def pooled(self, *others: ErrorDistributions) -> ErrorDistributions:
        """Pool several models' distributions of the same samples on the same bins."""
        if any(part.is_compressed for part in (self, *others)):
            raise LTAUInputError(
                "compressed (uint8) distributions cannot be pooled: pool the uncompressed "
                "distributions, then compress"
            )
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
        parts = [statistic(self.mass(chunk)) for chunk in row_chunks(self.n_samples)]
        return np.concatenate(parts, axis=0)


class HistogramAccumulator:
    """Streaming per-sample histograms: memory is ``n_samples x n_bins`` counts, whatever the
    number of epochs.

    Counts are stored as uint16 and promoted to uint32 only if a sample could exceed 65535
    observations. Bin indices of whole epochs are buffered (``PENDING_EPOCHS`` at a time, one
    byte per sample) and added block of rows by block of rows, so that the scattered increments
    hit a block of counts that stays in cache instead of the whole array once per epoch.

    Observations outside the bins are counted in the end bins; per sample, how many lay below
    and above and the sum of those above are kept (arrays allocated at the first such
    observation) for :meth:`clipping`.
    """

    PENDING_EPOCHS = 16
    ROWS_PER_BLOCK = 4096

    def __init__(self, bins: Bins, n_samples: int) -> None:
        self.bins = checked_bins(bins)
        self.n_samples = positive_int(n_samples, "n_samples")
        self._counts = np.zeros((self.n_samples, bins.n_bins), dtype=np.uint16)
        self._max_observations = 0
        index_type = np.uint8 if bins.n_bins <= 256 else np.uint16
        self._pending = np.empty((0, self.n_samples), dtype=index_type)
        self._n_pending = 0
        self._block_offsets = np.arange(self.ROWS_PER_BLOCK, dtype=np.intp) * bins.n_bins
        self.n_below = 0
        self.n_above = 0
        self._n_observations = 0
        self._below: np.ndarray | None = None
        self._above: np.ndarray | None = None
        self._above_sum: np.ndarray | None = None
        self._zeros = 0
        self._lowest = np.inf
        self._highest = -np.inf

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
        self._n_observations += index.size
        if n_below or n_above:
            self._note_clipped(ids, errors)
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

    def merge(self, other: HistogramAccumulator) -> None:
        """Add every observation of ``other`` (same bins and samples), e.g. the histograms of
        other epochs built elsewhere: counts and clipping tallies become those of one
        accumulator that saw both sets of epochs."""
        if not isinstance(other, HistogramAccumulator):
            raise LTAUInputError(
                f"can merge only a HistogramAccumulator; got {type(other).__name__}"
            )
        if other.bins != self.bins or other.n_samples != self.n_samples:
            raise LTAUInputError("can merge only an accumulator with the same bins and samples")
        counts = other.counts
        if self._max_observations + other._max_observations > np.iinfo(self._counts.dtype).max:
            self._flush()
            self._counts = self._counts.astype(np.uint32)
        self.counts[...] += counts
        self._max_observations += other._max_observations
        self._n_observations += other._n_observations
        self.n_below += other.n_below
        self.n_above += other.n_above
        if other._below is not None:
            if self._below is None:
                self._below = np.zeros(self.n_samples, dtype=np.int64)
                self._above = np.zeros(self.n_samples, dtype=np.int64)
                self._above_sum = np.zeros(self.n_samples)
            self._below += other._below
            self._above += other._above
            self._above_sum += other._above_sum
            self._zeros += other._zeros
            self._lowest = min(self._lowest, other._lowest)
            self._highest = max(self._highest, other._highest)

    def _note_clipped(self, ids: np.ndarray | None, errors: np.ndarray) -> None:
        """Keep per-sample tallies of the observations outside the bins."""
        if self._below is None:
            self._below = np.zeros(self.n_samples, dtype=np.int64)
            self._above = np.zeros(self.n_samples, dtype=np.int64)
            self._above_sum = np.zeros(self.n_samples)
        values = np.asarray(errors, dtype=np.float64)  # exact for float32: same test as assign()
        rows = np.arange(values.size) if ids is None else ids
        below, above = values < self.bins.edges[0], values > self.bins.edges[-1]
        if below.any():
            self._below[rows[below]] += 1
            self._zeros += int(np.count_nonzero(values[below] == 0))
            self._lowest = min(self._lowest, float(values[below].min()))
        if above.any():
            self._above[rows[above]] += 1
            self._above_sum[rows[above]] += values[above]
            self._highest = max(self._highest, float(values[above].max()))

    def clipping(self) -> ClippingSummary:
        """What was clipped into the end bins so far, and its effect."""
        counts = self.counts
        underestimate = 1.0
        if self.n_above:
            rows = np.flatnonzero(self._above)
            totals = counts[rows].sum(axis=1, dtype=np.float64)
            binned = counts[rows] @ self.bins.centers / totals
            # Each clipped value v was counted at the last bin's centre instead of v.
            shortfall = (self._above_sum[rows] - self._above[rows] * self.bins.centers[-1]) / totals
            underestimate = float(np.max((binned + shortfall) / binned))
        return ClippingSummary(
            low_edge=float(self.bins.edges[0]),
            high_edge=float(self.bins.edges[-1]),
            n_observations=self._n_observations,
            n_samples=self.n_samples,
            below=self.n_below,
            above=self.n_above,
            samples_below=0 if self._below is None else int(np.count_nonzero(self._below)),
            samples_above=0 if self._above is None else int(np.count_nonzero(self._above)),
            zeros=self._zeros,
            lowest=float(self._lowest) if self.n_below else None,
            highest=float(self._highest) if self.n_above else None,
            underestimate=underestimate,
        )

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

    def distributions(self, copy: bool = False) -> ErrorDistributions:
        """The accumulated histograms, sharing the counts array unless ``copy`` (copy them to
        keep recording). Emits an :class:`~ltau.exceptions.LTAUClippingWarning` if any
        observation lay outside the bins."""
        counts = self.counts.copy() if copy else self.counts
        distributions = ErrorDistributions(self.bins, counts, self.n_below, self.n_above)
        if self.n_below or self.n_above:
            summary = self.clipping()
            warning = LTAUClippingWarning(summary.message(), summary)
            warnings.warn(warning, stacklevel=_stacklevel_outside_ltau())
        return distributions


def _stacklevel_outside_ltau() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller name the first frame
    outside the ltau package (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        package + os.sep
    ):
        frame, level = frame.f_back, level + 1
    return level


@dataclass(frozen=True)
class ClippingSummary:
    """Observations that lay outside the bins ``[low_edge, high_edge]`` (error unit) and were
    counted in the end bins.

    ``below`` / ``above``: how many of the ``n_observations`` recorded errors; ``samples_below``
    / ``samples_above``: of how many of the ``n_samples`` samples; ``zeros``: exact zeros among
    those below; ``lowest`` / ``highest``: the most extreme clipped values (None if none).
    ``underestimate``: the largest factor by which clipping lowered a sample's expected error
    (its mean with the clipped values at their true size over its histogram mean; 1 if nothing
    lay above). Values below the first edge raise a sample's expected error by less than the
    first bin's centre.
    """

    low_edge: float
    high_edge: float
    n_observations: int
    n_samples: int
    below: int
    above: int
    samples_below: int
    samples_above: int
    zeros: int
    lowest: float | None
    highest: float | None
    underestimate: float

    def message(self) -> str:
        """A readable account of the clipping, its effect and the remedy."""
        parts = []
        if self.above:
            parts.append(
                f"{self.above} of {self.n_observations} recorded errors ({self.samples_above} "
                f"of {self.n_samples} samples) lay above the last bin edge {self.high_edge:.4g}, "
                f"up to {self.highest:.4g} ({self.highest / self.high_edge:.3g} times the edge), "
                "and were counted in the last bin: the expected error of those samples is "
                f"underestimated by up to a factor {self.underestimate:.3g}."
            )
        if self.below:
            zeros = f", {self.zeros} of them exact zeros" if self.zeros else ""
            parts.append(
                f"{self.below} of {self.n_observations} recorded errors ({self.samples_below} "
                f"of {self.n_samples} samples{zeros}) lay below the first bin edge "
                f"{self.low_edge:.4g}, down to {self.lowest:.4g}, and were counted in the first "
                f"bin: these distributions do not resolve errors below {self.low_edge:.4g} "
                f"(P(error > atol) counts them for any atol < {self.low_edge:.4g})."
            )
        low = self.low_edge if self.lowest is None else self.lowest
        high = self.high_edge if self.highest is None else self.highest
        parts.append(
            f"An error log keeps the raw errors: rebuild the distributions from it with bins "
            f"that cover [{low:.4g}, {high:.4g}] (without bins, distributions() spans the "
            "recorded range"
            + ("; linear bins start at 0 and hold exact zeros)." if self.zeros else ").")
        )
        return " ".join(parts)


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


COMPRESSED_MAX = 255
"""The largest count of a row of compressed (uint8) distributions."""


def _compact(counts: np.ndarray) -> np.ndarray:
    """Store counts in the smallest unsigned type that holds them."""
    for dtype in (np.uint16, np.uint32):
        if counts.size == 0 or counts.max() <= np.iinfo(dtype).max:
            return counts.astype(dtype)
    return counts.astype(np.uint64)


DISTRIBUTIONS_FORMAT = "ltau-distributions"
_DISTRIBUTION_ATTRIBUTES = ("spacing", "n_below", "n_above")


def save_distributions(distributions: ErrorDistributions, path: str | os.PathLike) -> None:
    """Write ``distributions`` to one self-describing HDF5 file, atomically."""
    if not isinstance(distributions, ErrorDistributions):
        raise LTAUInputError(
            f"save_distributions needs ErrorDistributions; got {type(distributions).__name__}"
        )
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
