"""Bins and the one piecewise-uniform model of an error distribution on them.

Every statistic of a predicted or recorded error distribution in ltau comes from this model:
inside a bin the error density is uniform, so the CDF is piecewise linear between bin edges.
A distribution is given as probability *mass* on :class:`Bins`, an array of shape
``(n, n_bins)`` whose rows sum to one (a density, PDF, is mass divided by the bin widths, in
1 / error unit). From it, exactly and with bin widths taken into account (log-spaced bins have
very unequal widths):

* :func:`edge_cdf`: the CDF at every bin edge, ``(n, n_bins + 1)``, from 0 to 1; the one place
  the CDF is built. :func:`interpolate_cdf` evaluates such edge CDFs between the edges and
  :func:`cdf_at` does both;
* :func:`density_at`, :func:`expected_value`, :func:`exceedance_probability`
  (``P(error > atol)``), :func:`quantiles` (the inverse of that CDF) and
  :func:`central_interval`.

Errors are non-negative magnitudes in one unit (e.g. eV/Å); bins start at >= 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ltau._checks import as_probabilities, bin_count, real_array, tolerances
from ltau.exceptions import LTAUInputError

Spacing = Literal["log", "linear", "custom"]
ROW_CHUNK = 1 << 16
"""Rows processed at once by per-row statistics of large arrays, to bound temporary memory."""
MASS_TOLERANCE = 1e-6
"""How far a row of probability mass may sum away from 1 (rounding in mixtures)."""


@dataclass(frozen=True)
class Bins:
    """Bin edges for error histograms.

    Bins are closed on the left and open on the right, except the last, which is closed
    (as in ``numpy.histogram``). ``edges`` has shape ``(n_bins + 1,)``, in the error's unit.
    """

    edges: np.ndarray
    spacing: Spacing = "custom"

    def __post_init__(self) -> None:
        edges = real_array(self.edges, "bin edges")
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
        n_bins = bin_count(n_bins)
        if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
            raise LTAUInputError(f"log bins need 0 < low < high; got low={low}, high={high}")
        return cls(np.geomspace(low, high, n_bins + 1), "log")

    @classmethod
    def linear(cls, low: float, high: float, n_bins: int = 100) -> Bins:
        """``n_bins`` equal-width bins from ``low`` (>= 0) to ``high``."""
        n_bins = bin_count(n_bins)
        if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
            raise LTAUInputError(f"linear bins need 0 <= low < high; got low={low}, high={high}")
        return cls(np.linspace(low, high, n_bins + 1), "linear")

    @classmethod
    def from_range(
        cls, low: float, high: float, n_bins: int = 100, spacing: Spacing = "log"
    ) -> Bins:
        """Bins spanning an observed error range ``[low, high]``.

        For log spacing ``low`` should be the smallest *positive* error; exact zeros then fall
        into the first bin. Linear bins built from data start at 0 (errors are magnitudes). A
        degenerate range (``low == high``) is widened by 1% each way.
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
        thresholds = np.atleast_1d(tolerances(thresholds))
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


def checked_bins(bins: Any) -> Bins:
    """``bins`` if it is a :class:`Bins`, else an LTAUInputError."""
    if not isinstance(bins, Bins):
        raise LTAUInputError(f"bins must be a Bins instance; got {type(bins).__name__}")
    return bins


def checked_mass(mass: Any, bins: Bins, name: str = "mass") -> np.ndarray:
    """``mass`` as float64 ``(n, n_bins)`` with ``n >= 1``, finite, >= 0, rows summing to 1.

    Rows may deviate from 1 by at most :data:`MASS_TOLERANCE`; raises LTAUInputError.
    """
    checked_bins(bins)
    array = real_array(mass, name)
    if array.ndim != 2 or array.shape[1] != bins.n_bins:
        raise LTAUInputError(
            f"{name} must have shape (n, {bins.n_bins}) to match the bins; got {array.shape}"
        )
    if array.shape[0] == 0:
        raise LTAUInputError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise LTAUInputError(f"{name} contains NaN or infinity")
    if np.any(array < 0):
        raise LTAUInputError(f"{name} must be non-negative probability masses")
    totals = array.sum(axis=1)
    bad = np.flatnonzero(np.abs(totals - 1.0) > MASS_TOLERANCE)
    if bad.size:
        raise LTAUInputError(
            f"each row of {name} must sum to 1 (probability mass, not density; multiply a PDF "
            f"by bins.widths); row {int(bad[0])} sums to {totals[bad[0]]:.6g}"
        )
    return array


def row_chunks(n_rows: int, chunk: int = ROW_CHUNK) -> Iterator[slice]:
    """Consecutive slices of at most ``chunk`` rows covering ``range(n_rows)``."""
    for start in range(0, n_rows, chunk):
        yield slice(start, min(start + chunk, n_rows))


def edge_cdf(mass: np.ndarray) -> np.ndarray:
    """The CDF of each row of ``mass`` ``(n, n_bins)`` at every bin edge, ``(n, n_bins + 1)``.

    ``F(e_0) = 0`` and ``F(e_j)`` is the mass of the bins below ``e_j``, except that every edge
    from the last occupied bin's right edge on is exactly 1: rows sum to one only up to
    rounding (``1 +- 1e-16`` for mixtures), and without this the CDF above the support would
    be ``1 - 1e-16`` or 1 by chance (an error there would get a PIT just below 1, or 1).
    Nothing is divided, so equal cumulative masses in different rows stay equal (PIT ties,
    which isotonic calibration relies on). Between edges the CDF is linear
    (:func:`interpolate_cdf`).
    """
    mass = np.asarray(mass, dtype=np.float64)
    cumulative = np.cumsum(mass, axis=1)
    cdf = np.empty((mass.shape[0], mass.shape[1] + 1))
    cdf[:, 0] = 0.0
    cdf[:, 1:] = np.where(cumulative >= cumulative[:, -1:], 1.0, np.minimum(cumulative, 1.0))
    return cdf


def interpolate_cdf(cdf: np.ndarray, bins: Bins, values: float | np.ndarray) -> np.ndarray:
    """Row ``i`` of an edge CDF (:func:`edge_cdf`, ``(n, n_bins + 1)``) at ``values[i]``, ``(n,)``.

    ``values`` has shape ``(n,)`` or is a scalar used for every row. The CDF is 0 below the
    first edge, 1 from the last edge on, and linear inside each bin.
    """
    values = np.broadcast_to(np.asarray(values, dtype=np.float64), (cdf.shape[0],))
    edges = bins.edges
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins.n_bins - 1)
    rows = np.arange(cdf.shape[0])
    left, right = cdf[rows, index], cdf[rows, index + 1]
    fraction = np.clip((values - edges[index]) / bins.widths[index], 0.0, 1.0)
    result = left + fraction * (right - left)
    result[values < edges[0]] = 0.0
    result[values >= edges[-1]] = 1.0
    return np.clip(result, 0.0, 1.0, out=result)


def cdf_at(mass: np.ndarray, bins: Bins, values: float | np.ndarray) -> np.ndarray:
    """Each row's CDF at its own value: ``F_i(values[i])``, shape ``(n,)``.

    ``mass`` has shape ``(n, n_bins)``; ``values`` has shape ``(n,)`` or is a scalar used for
    every row. The CDF is that of :func:`edge_cdf`, linear inside each bin (the CDF that
    :func:`quantiles` inverts).
    """
    return interpolate_cdf(edge_cdf(mass), bins, values)


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


def expected_value(mass: np.ndarray, bins: Bins) -> np.ndarray:
    """Mean error of each row of ``mass`` (shape ``(n, n_bins)``), shape ``(n,)``."""
    return mass @ bins.centers


def exceedance_probability(mass: np.ndarray, bins: Bins, atol: float | np.ndarray) -> np.ndarray:
    """``P(error > atol)`` for each row of ``mass``; shape ``(n,)`` or ``(n, len(atol))``."""
    atol_array = tolerances(atol)
    result = mass @ bins.tail_fraction(atol_array)
    return result[:, 0] if atol_array.ndim == 0 else result


def quantiles(mass: np.ndarray, bins: Bins, levels: float | np.ndarray) -> np.ndarray:
    """Error quantiles of each row of ``mass`` by linear interpolation of its CDF.

    Returns shape ``(n,)`` for a scalar level, else ``(n, len(levels))``.
    """
    levels_array = as_probabilities(levels, "quantile levels")
    cdf = edge_cdf(mass)
    rows = np.arange(cdf.shape[0])
    result = np.empty((cdf.shape[0], levels_array.size))
    occupied = np.asarray(mass) > 0
    for column, level in enumerate(levels_array):
        # First occupied bin whose right-edge CDF reaches the level (up to rounding); the level
        # is reached inside it, so interpolate there. Level 0 gives the left end of the support
        # and level 1 its right end.
        index = np.argmax(occupied & (cdf[:, 1:] >= level - 1e-12), axis=1)
        cdf_left = cdf[rows, index]
        bin_mass = cdf[rows, index + 1] - cdf_left
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(bin_mass > 0, (level - cdf_left) / bin_mass, 0.0)
        fraction = np.clip(fraction, 0.0, 1.0)
        result[:, column] = bins.edges[index] + fraction * bins.widths[index]
    return result[:, 0] if np.ndim(levels) == 0 else result


def interval_levels(confidence: float) -> np.ndarray:
    """The quantile levels ``[(1 - c) / 2, (1 + c) / 2]`` of a central ``c`` interval."""
    confidence = float(as_probabilities(confidence, "confidence")[0])
    return np.array([(1 - confidence) / 2, (1 + confidence) / 2])


def central_interval(
    mass: np.ndarray, bins: Bins, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Central ``confidence`` interval ``(lower, upper)`` of each row, each of shape ``(n,)``."""
    bounds = quantiles(mass, bins, interval_levels(confidence))
    return bounds[:, 0], bounds[:, 1]


__all__ = [
    "Bins",
    "cdf_at",
    "central_interval",
    "checked_bins",
    "checked_mass",
    "density_at",
    "edge_cdf",
    "exceedance_probability",
    "expected_value",
    "interpolate_cdf",
    "interval_levels",
    "quantiles",
    "row_chunks",
]
