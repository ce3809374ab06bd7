"""Recalibration of predicted error distributions, fitted on a validation split.

Both calibrators are fitted on validation data given as probability mass ``(n, n_bins)`` (rows
summing to one: the kNN mixtures, ``LTAUPrediction.pdf * bins.widths``), the :class:`Bins`
and the observed errors ``(n,)`` (non-negative magnitudes), and then transform new predictions.
With ``F`` the uncalibrated (piecewise-linear) mixture CDF of a query:

* :class:`ErrorScaleCalibrator` -- one factor ``s > 0`` on the error axis: the calibrated
  error is distributed as ``s * E``, so ``CDF(x) = F(x / s)``, the expected error and every
  quantile are multiplied by ``s`` and ``P(error > atol)`` is the raw exceedance at
  ``atol / s``. ``s`` minimises the miscalibration area of the validation PIT values.
* :class:`IsotonicCalibrator` -- Kuleshov, Fenner & Ermon (2018): an optional scale ``s`` as
  above, then a monotone map ``g`` of CDF levels, ``CDF(x) = g(F(x / s))``, with ``g`` the
  isotonic fit of the observed frequency ``P(PIT <= p)`` on the validation set.

Interface shared by both (``mass``/``bins`` always the *uncalibrated* distribution):

* ``fit(mass, bins, observed) -> self``
* exact statistics of the calibrated distribution: ``cdf(mass, bins, values)``,
  ``pit(mass, bins, observed)``, ``exceedance(mass, bins, atol)``,
  ``quantiles(mass, bins, levels)``, ``central_interval(mass, bins, confidence)``,
  ``expected_error(mass, bins)``, with the shapes of the functions in
  :mod:`ltau.histogram`;
* ``rebinned(mass, bins) -> (mass, bins)``: the calibrated distribution in the library's
  histogram form (exact probability of each bin of the scaled bins ``bins.edges * s``), e.g.
  for ``pdf = mass / bins.widths``;
* scalar maps, so that an estimator can keep computing the raw statistics that are linear in
  the mixture (from per-training-sample precomputations) and calibrate afterwards:
  ``scale`` (``s``), ``raw_tolerance(atol) = atol / s`` (evaluate the raw exceedance there),
  ``exceedance_from_raw(p)`` (calibrated exceedance from that raw one), ``raw_levels(levels)``
  (evaluate the raw quantiles at these levels) and ``quantiles_from_raw(q) = q * s``. The
  expected error is linear in the mixture only for the scale calibrator
  (``expected_error_from_raw(e) = e * s``, ``expected_error_is_linear = True``); the
  isotonic map needs the mixture (``expected_error(mass, bins)``).
* ``to_dict()`` (JSON-serialisable plain floats and lists) and ``from_dict(data)``;
  :func:`calibrator_from_dict` picks the class from ``data["kind"]``.

Before either map, :class:`DistanceWidening` can widen each query's distribution with its
distance to the training set: the raw error axis of query ``i`` is scaled by
``w_i = (max(d_i, d_low) / d_ref)^a * (max(g_i, g_low) / g_ref)^b``, where ``d_i`` is the
query's OOD score (mean distance to its k neighbours), ``g_i`` the mean OOD score of its group
(the atoms of one structure) and ``d_low``, ``g_low`` low quantiles of the validation scores;
the calibrators then act on the widened distributions ``F_i(x / w_i)``. The fit keeps
``a + b >= 1`` (:data:`MIN_TOTAL_EXPONENT`): validation data cannot show how errors grow far
from the training set, and too narrow a widening there was the measured failure.
"""

from __future__ import annotations

import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ltau._checks import (
    as_probabilities,
    boolean,
    checked_errors,
    checked_levels,
    integer,
    non_negative_number,
    non_negative_vector,
    number_pair,
    positive_number,
    tolerances,
)
from ltau.exceptions import LTAUInputError, NotFittedError
from ltau.histogram import (
    Bins,
    cdf_at,
    checked_bins,
    checked_mass,
    edge_cdf,
    exceedance_probability,
    expected_value,
    interpolate_cdf,
    interval_levels,
    row_chunks,
)
from ltau.histogram import quantiles as raw_quantiles
from ltau.metrics import DEFAULT_LEVELS, area_between, levels_or_default, observed_proportions

FORMAT_VERSION = 1
DEFAULT_SCALE_BOUNDS = (1e-3, 1e3)
_COARSE_POINTS = 241
_REFINE_POINTS = 41
_REFINEMENTS = 3
_ROWS_PER_BLOCK = 8192
_NARROW_LEVELS = 1e-9
"""Level intervals across a knot at most this wide get the mean of their end levels."""

MIN_TOTAL_EXPONENT = 1.0
"""Least total exponent ``a + b`` of a fitted :class:`DistanceWidening` (errors grow at least
linearly with the distance to the training set)."""


def _checked_fit_data(
    mass: np.ndarray, bins: Bins, observed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    mass = checked_mass(mass, bins)
    observed = checked_errors(observed, "observed", mass.shape[0])
    return mass, observed


def _optional_levels(levels: Any) -> np.ndarray | None:
    """The calibrators' ``levels`` setting checked: ``None`` (the default levels) or an array."""
    return None if levels is None else checked_levels(levels)


def _area(pit: np.ndarray, levels: np.ndarray) -> float:
    """Miscalibration area of valid PIT values on checked levels (no input checks)."""
    return area_between(levels, observed_proportions(pit, levels))


class _Calibrator:
    """Shared plumbing; subclasses define the level map and the fitting."""

    kind: ClassVar[str] = ""
    expected_error_is_linear: ClassVar[bool] = False
    _fitted_attribute: ClassVar[str] = "scale_"

    # -------------------------------------------------------------- fitted state
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, self._fitted_attribute)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit() or from_dict()"
            )

    @property
    def scale(self) -> float:
        """The factor ``s`` on the error axis (1.0 for an isotonic map fitted without scale)."""
        self._require_fitted()
        return float(self.scale_)

    # ------------------------------------------------------------ level maps
    def level_map(self, levels: np.ndarray) -> np.ndarray:
        """``g(p)``: calibrated CDF level for a raw CDF level ``p`` (identity here)."""
        self._require_fitted()
        return np.asarray(levels, dtype=np.float64)

    def raw_levels(self, levels: float | np.ndarray) -> np.ndarray:
        """``g^{-1}(q)``: raw CDF levels whose raw quantiles, times ``s``, are the calibrated
        quantiles at ``levels`` (same shape as ``levels``)."""
        self._require_fitted()
        as_probabilities(levels, "levels")
        return np.asarray(levels, dtype=np.float64)

    # ------------------------------------------------------------ scalar maps
    def raw_tolerance(self, atol: float | np.ndarray) -> np.ndarray:
        """``atol / s``: the tolerance at which to evaluate the *raw* exceedance."""
        self._require_fitted()
        return tolerances(atol) / self.scale_

    def exceedance_from_raw(self, raw_exceedance: np.ndarray) -> np.ndarray:
        """Calibrated ``P(error > atol)`` from the raw exceedance at ``raw_tolerance(atol)``:
        ``1 - g(1 - p)``."""
        self._require_fitted()
        raw = np.asarray(raw_exceedance, dtype=np.float64)
        return np.clip(1.0 - self.level_map(1.0 - raw), 0.0, 1.0)

    def quantiles_from_raw(self, raw_quantile_values: np.ndarray) -> np.ndarray:
        """Calibrated quantiles from raw quantiles taken at :meth:`raw_levels`: times ``s``."""
        self._require_fitted()
        return np.asarray(raw_quantile_values, dtype=np.float64) * self.scale_

    # ------------------------------------------------- calibrated distributions
    def calibrated_bins(self, bins: Bins) -> Bins:
        """The bins scaled by ``s`` (same spacing): the support of the calibrated distribution."""
        self._require_fitted()
        bins = checked_bins(bins)
        return Bins(bins.edges * self.scale_, bins.spacing)

    def cdf(self, mass: np.ndarray, bins: Bins, values: float | np.ndarray) -> np.ndarray:
        """Calibrated CDF of each row at its own value, ``g(F_i(values_i / s))``, ``(n,)``."""
        self._require_fitted()
        mass = checked_mass(mass, bins)
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 0:
            values = np.full(mass.shape[0], float(values))
        values = checked_errors(values, "values", mass.shape[0])
        return self.level_map(cdf_at(mass, bins, values / self.scale_))

    def pit(self, mass: np.ndarray, bins: Bins, observed: np.ndarray) -> np.ndarray:
        """Calibrated PIT values ``g(F_i(observed_i / s))``, ``(n,)``."""
        self._require_fitted()
        mass, observed = _checked_fit_data(mass, bins, observed)
        return self.level_map(cdf_at(mass, bins, observed / self.scale_))

    def exceedance(self, mass: np.ndarray, bins: Bins, atol: float | np.ndarray) -> np.ndarray:
        """Calibrated ``P(error > atol)``: ``(n,)`` for a scalar ``atol``, else ``(n, len)``."""
        self._require_fitted()
        mass = checked_mass(mass, bins)
        raw = exceedance_probability(mass, bins, self.raw_tolerance(atol))
        return self.exceedance_from_raw(raw)

    def quantiles(self, mass: np.ndarray, bins: Bins, levels: float | np.ndarray) -> np.ndarray:
        """Calibrated quantiles: ``(n,)`` for a scalar level, else ``(n, len(levels))``."""
        self._require_fitted()
        mass = checked_mass(mass, bins)
        return self.quantiles_from_raw(raw_quantiles(mass, bins, self.raw_levels(levels)))

    def central_interval(
        self, mass: np.ndarray, bins: Bins, confidence: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated central ``confidence`` interval ``(lower, upper)``, each ``(n,)``."""
        bounds = self.quantiles(mass, bins, interval_levels(confidence))
        return bounds[:, 0], bounds[:, 1]

    def rebinned(self, mass: np.ndarray, bins: Bins) -> tuple[np.ndarray, Bins]:
        """The calibrated distribution as mass on :meth:`calibrated_bins`, ``(n, n_bins)``.

        Bin ``j`` gets ``g(F(e_{j+1})) - g(F(e_j))``, its exact calibrated probability. Inside a
        bin the library's model is again uniform, which is exact for the scale calibrator and
        an approximation (same bin probabilities, different shape inside bins) for an isotonic
        map; the exact statistics are those of the other methods.
        """
        self._require_fitted()
        mass = checked_mass(mass, bins)
        levels = self.level_map(edge_cdf(mass))
        return np.diff(levels, axis=1), self.calibrated_bins(bins)

    # ----------------------------------------------------------------- fitting
    def _fit_scale(
        self, mass: np.ndarray, bins: Bins, observed: np.ndarray, bounds: tuple[float, float]
    ) -> tuple[float, float, float]:
        """``(s, area at s = 1, area at s)``: the scale minimising the miscalibration area."""
        levels = levels_or_default(getattr(self, "levels", None))
        cdf = edge_cdf(mass)

        def area(log_scale: float) -> float:
            return _area(interpolate_cdf(cdf, bins, observed / np.exp(log_scale)), levels)

        low, high = np.log(bounds[0]), np.log(bounds[1])
        grid = np.linspace(low, high, _COARSE_POINTS)
        best = _plateau_center(grid, np.array([area(value) for value in grid]))
        step = grid[1] - grid[0]
        for _ in range(_REFINEMENTS):
            grid = np.linspace(max(low, best - step), min(high, best + step), _REFINE_POINTS)
            best = _plateau_center(grid, np.array([area(value) for value in grid]))
            step = grid[1] - grid[0]
        best_area = area(best)
        if min(area(low), area(high)) <= best_area + 1e-12:
            warnings.warn(
                f"the fitted error scale {np.exp(best):.4g} is limited by the search bounds "
                f"{bounds} (a bound is as good as the optimum); widen the bounds",
                RuntimeWarning,
                stacklevel=3,
            )
        return float(np.exp(best)), area(0.0), best_area


def _plateau_center(grid: np.ndarray, values: np.ndarray) -> float:
    """The minimiser of ``values`` on ``grid``; for several equal minima (the miscalibration
    area is piecewise constant in ``s``), the minimiser nearest the median of their positions."""
    minima = np.flatnonzero(values <= values.min() + 1e-12)
    middle = np.median(minima)
    return float(grid[minima[np.argmin(np.abs(minima - middle))]])


class ErrorScaleCalibrator(_Calibrator):
    """One factor ``s > 0`` on the error axis: the calibrated error is distributed as ``s * E``.

    ``fit`` chooses ``s`` on validation data by minimising the miscalibration area
    (:func:`ltau.metrics.miscalibration_area`, on ``levels``) of the PIT values
    ``u_i = F_i(observed_i / s)``, with ``F_i`` the uncalibrated CDF. That area is piecewise
    constant in ``s``, so the search is a grid over ``log s``: 241 points spanning ``bounds``
    (default 1e-3 to 1e3), then three refinements of 41 points over +-1 step of the previous
    grid around the best point (final resolution ~1e-5 in ``log s``); among equal minima the
    one nearest the middle of the minimising set is taken. A RuntimeWarning is issued when a
    bound is as good as the optimum (the scale may lie beyond it). Cost: about 370 evaluations
    of ``O(n log n_bins)`` each (about 4 s for 100 000 points on one core).

    Applying it: expected error and quantiles times ``s``; ``P(error > atol)`` is the raw one
    at ``atol / s``; ``CDF(x) = F(x / s)``; the density is ``mass / (s * widths)`` on the
    scaled bins. Fitted attributes: ``scale_``, ``miscalibration_area_before_`` (at ``s = 1``),
    ``miscalibration_area_after_`` and ``n_fit_``.
    """

    kind = "error_scale"
    expected_error_is_linear = True

    def __init__(
        self,
        *,
        bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        levels: np.ndarray | None = None,
    ) -> None:
        self.bounds = bounds
        self.levels = levels

    def fit(self, mass: np.ndarray, bins: Bins, observed: np.ndarray) -> ErrorScaleCalibrator:
        """Fit ``s`` on validation ``mass`` ``(n, n_bins)`` and ``observed`` errors ``(n,)``."""
        bounds = number_pair(self.bounds, "scale bounds")
        _optional_levels(self.levels)
        mass, observed = _checked_fit_data(mass, bins, observed)
        scale, before, after = self._fit_scale(mass, bins, observed, bounds)
        self.scale_ = scale
        self.miscalibration_area_before_ = before
        self.miscalibration_area_after_ = after
        self.n_fit_ = int(observed.size)
        return self

    def expected_error_from_raw(self, raw_expected_error: np.ndarray) -> np.ndarray:
        """Calibrated expected error from the raw one: times ``s``."""
        self._require_fitted()
        return np.asarray(raw_expected_error, dtype=np.float64) * self.scale_

    def expected_error(self, mass: np.ndarray, bins: Bins) -> np.ndarray:
        """Calibrated mean error of each row, ``(n,)``: ``s`` times the raw mean."""
        self._require_fitted()
        return expected_value(checked_mass(mass, bins), bins) * self.scale_

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: kind, version, settings, scale and fit diagnostics."""
        self._require_fitted()
        low, high = number_pair(self.bounds, "scale bounds")
        levels = None if self.levels is None else [float(v) for v in np.asarray(self.levels)]
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "bounds": [low, high],
            "levels": levels,
            "scale": float(self.scale_),
            "miscalibration_area_before": float(self.miscalibration_area_before_),
            "miscalibration_area_after": float(self.miscalibration_area_after_),
            "n_fit": int(self.n_fit_),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorScaleCalibrator:
        """Inverse of :meth:`to_dict`; raises LTAUInputError on missing or invalid fields."""
        _check_header(data, cls.kind)
        try:
            calibrator = cls(bounds=tuple(data["bounds"]), levels=data.get("levels"))
            number_pair(calibrator.bounds, "scale bounds")
            calibrator.levels = _optional_levels(calibrator.levels)
            calibrator.scale_ = positive_number(data["scale"], "scale")
            calibrator.miscalibration_area_before_ = float(data["miscalibration_area_before"])
            calibrator.miscalibration_area_after_ = float(data["miscalibration_area_after"])
            calibrator.n_fit_ = int(data["n_fit"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LTAUInputError):
                raise
            raise LTAUInputError(f"invalid {cls.kind} calibrator data: {exc!r}") from exc
        return calibrator

    def __repr__(self) -> str:
        state = f", scale_={self.scale_:.6g}" if self.is_fitted else ""
        return f"ErrorScaleCalibrator(bounds={self.bounds!r}{state})"


class IsotonicCalibrator(_Calibrator):
    """Isotonic recalibration of CDF levels (Kuleshov, Fenner & Ermon, ICML 2018).

    Calibrated CDF ``G(x) = g(F(x / s))``: ``s`` is an optional error scale fitted first as in
    :class:`ErrorScaleCalibrator` (``fit_scale=True``, the default; it can move the support,
    which ``g`` cannot), and ``g`` is a non-decreasing map of ``[0, 1]`` onto ``[0, 1]``
    fitted on the validation PIT values ``u_i = F_i(observed_i / s)``: as in Kuleshov et al.,
    the recalibration data are the pairs ``(u, P_hat(u))`` with ``P_hat(p)`` the fraction of
    validation PIT values ``<= p``, fitted by isotonic regression
    (``scipy.optimize.isotonic_regression``, SciPy >= 1.12). Over the distinct PIT values
    those targets are already non-decreasing, so the fit is the empirical CDF of the PIT
    values (ties in the PIT values form one knot, with the fraction ``<=`` them as target),
    interpolated linearly between knots; the isotonic step only guarantees a monotone map.
    The map is anchored at ``g(0) = 0`` and ``g(1) = 1`` (PIT values of exactly 0 or 1, from
    errors outside the support, only count in the targets), so the calibrated distribution
    keeps the support ``[s e_0, s e_K]`` and has no atoms. At most ``max_knots`` knots are
    kept (evenly spaced in rank; this changes ``g`` by at most about ``1 / max_knots``).

    Applying it: ``CDF = g(F(x / s))``; ``P(error > atol) = 1 - g(1 - p)`` with ``p`` the raw
    exceedance at ``atol / s``; the quantile at level ``q`` is ``s`` times the raw quantile at
    level ``g^{-1}(q) = inf{p : g(p) >= q}`` (on flat parts of ``g``, the left end); the
    expected error ``s (e_K - integral_{e_0}^{e_K} g(F(t)) dt)`` is integrated in closed form.
    Fitted attributes: ``scale_``, ``level_knots_``, ``frequency_knots_``,
    ``miscalibration_area_before_`` (raw), ``miscalibration_area_after_`` (calibrated, on the
    validation data) and ``n_fit_``.
    """

    kind = "isotonic"
    _fitted_attribute = "level_knots_"

    def __init__(
        self,
        *,
        fit_scale: bool = True,
        scale_bounds: tuple[float, float] = DEFAULT_SCALE_BOUNDS,
        levels: np.ndarray | None = None,
        max_knots: int = 1000,
    ) -> None:
        self.fit_scale = fit_scale
        self.scale_bounds = scale_bounds
        self.levels = levels
        self.max_knots = max_knots

    def fit(self, mass: np.ndarray, bins: Bins, observed: np.ndarray) -> IsotonicCalibrator:
        """Fit ``s`` (optionally) and ``g`` on validation ``mass`` and ``observed`` errors."""
        boolean(self.fit_scale, "fit_scale")
        bounds = number_pair(self.scale_bounds, "scale bounds")
        levels = levels_or_default(self.levels)
        max_knots = integer(self.max_knots, "max_knots", 3, "at least 3")
        mass, observed = _checked_fit_data(mass, bins, observed)
        raw_pit = cdf_at(mass, bins, observed)
        before = _area(raw_pit, levels)
        if self.fit_scale:
            scale = self._fit_scale(mass, bins, observed, bounds)[0]
        else:
            scale = 1.0
        pit = cdf_at(mass, bins, observed / scale)
        knots, frequencies = _isotonic_knots(pit, max_knots)
        self.scale_ = scale
        self._set_knots(knots, frequencies)
        calibrated = self.level_map(pit)
        self.miscalibration_area_before_ = before
        self.miscalibration_area_after_ = _area(calibrated, levels)
        self.n_fit_ = int(observed.size)
        return self

    def level_map(self, levels: np.ndarray) -> np.ndarray:
        """``g(p)`` by linear interpolation between the knots (any shape)."""
        self._require_fitted()
        return np.interp(
            np.asarray(levels, dtype=np.float64), self.level_knots_, self.frequency_knots_
        )

    def raw_levels(self, levels: float | np.ndarray) -> np.ndarray:
        """``g^{-1}(q) = inf{p : g(p) >= q}`` for ``q`` in ``levels`` (same shape)."""
        self._require_fitted()
        as_probabilities(levels, "levels")
        targets = np.asarray(levels, dtype=np.float64)
        knots, frequencies = self.level_knots_, self.frequency_knots_
        # First knot with g >= q; g rises strictly on the segment just before it.
        upper = np.clip(np.searchsorted(frequencies, targets, side="left"), 1, knots.size - 1)
        lower = upper - 1
        rise = frequencies[upper] - frequencies[lower]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(rise > 0, (targets - frequencies[lower]) / rise, 0.0)
        fraction = np.clip(fraction, 0.0, 1.0)
        return knots[lower] + fraction * (knots[upper] - knots[lower])

    def expected_error(self, mass: np.ndarray, bins: Bins) -> np.ndarray:
        """Calibrated mean error of each row, ``(n,)``, integrated in closed form.

        ``E = s (e_K - integral_{e_0}^{e_K} g(F(t)) dt)`` (the calibrated error lies in
        ``[s e_0, s e_K]``). In a bin of width ``w`` where ``F`` rises linearly from ``a`` to
        ``b`` the integral of ``g(F)`` is ``w`` times the mean of ``g`` over ``[a, b]``, from
        the integral of the piecewise-linear ``g`` (``w g(a)`` if ``a = b``; see
        ``_mean_levels`` for the rounding).
        """
        self._require_fitted()
        mass = checked_mass(mass, bins)
        result = np.empty(mass.shape[0])
        for rows in row_chunks(mass.shape[0], _ROWS_PER_BLOCK):
            result[rows] = self.expected_error_from_cdf(edge_cdf(mass[rows]), bins)
        return result

    def expected_error_from_cdf(self, cdf: np.ndarray, bins: Bins) -> np.ndarray:
        """:meth:`expected_error` from the edge CDF ``(n, n_bins + 1)`` of valid masses
        (:func:`~ltau.histogram.edge_cdf`; not checked again), ``(n,)``."""
        return self.scale_ * (bins.edges[-1] - self._mean_levels(cdf) @ bins.widths)

    def _set_knots(self, knots: np.ndarray, frequencies: np.ndarray) -> None:
        """Store the knots of ``g`` and what :meth:`_mean_levels` needs of them: the slope of
        each segment and the integral of ``g`` from 0 to each knot."""
        self.level_knots_ = knots
        self.frequency_knots_ = frequencies
        self._slopes = np.diff(frequencies) / np.diff(knots)
        self._integral_at_knots = np.concatenate(
            [[0.0], np.cumsum(np.diff(knots) * (frequencies[1:] + frequencies[:-1]) / 2.0)]
        )

    def _mean_levels(self, cdf: np.ndarray) -> np.ndarray:
        """Mean of ``g`` over ``[cdf[:, j], cdf[:, j + 1]]`` for each bin ``j``, ``(n, n_bins)``.

        Where ``a`` and ``b`` lie in one knot segment, ``g`` is linear on ``[a, b]`` and the
        mean is ``(g(a) + g(b)) / 2``. Across knots it is ``(G(b) - G(a)) / (b - a)``, with
        ``G`` the integral of ``g`` from 0 (piecewise quadratic, exact from the knots), kept
        within ``[g(a), g(b)]``; rounding in ``G(b) - G(a)`` (about 1e-16) moves it by about
        ``1e-16 / (b - a)``, so intervals narrower than 1e-9 take the mean of their end levels
        instead (off by at most the change of slope at the knot times ``b - a``).
        """
        knots, frequencies = self.level_knots_, self.frequency_knots_
        segment = np.searchsorted(knots, cdf, side="right") - 1
        np.clip(segment, 0, knots.size - 2, out=segment)
        offset = cdf - knots[segment]
        start = frequencies[segment]
        level = start + offset * self._slopes[segment]
        integral = self._integral_at_knots[segment] + 0.5 * offset * (start + level)
        width = cdf[:, 1:] - cdf[:, :-1]
        g_low, g_high = level[:, :-1], level[:, 1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            across = (integral[:, 1:] - integral[:, :-1]) / width
        np.clip(across, g_low, g_high, out=across)
        linear = (segment[:, 1:] == segment[:, :-1]) | (width <= _NARROW_LEVELS)
        return np.where(linear, 0.5 * (g_low + g_high), across)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: kind, version, settings, scale, knots and diagnostics."""
        self._require_fitted()
        low, high = number_pair(self.scale_bounds, "scale bounds")
        levels = None if self.levels is None else [float(v) for v in np.asarray(self.levels)]
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "fit_scale": bool(self.fit_scale),
            "scale_bounds": [low, high],
            "levels": levels,
            "max_knots": int(self.max_knots),
            "scale": float(self.scale_),
            "level_knots": [float(v) for v in self.level_knots_],
            "frequency_knots": [float(v) for v in self.frequency_knots_],
            "miscalibration_area_before": float(self.miscalibration_area_before_),
            "miscalibration_area_after": float(self.miscalibration_area_after_),
            "n_fit": int(self.n_fit_),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        """Inverse of :meth:`to_dict`; raises LTAUInputError on missing or invalid fields."""
        _check_header(data, cls.kind)
        try:
            calibrator = cls(
                fit_scale=bool(data["fit_scale"]),
                scale_bounds=tuple(data["scale_bounds"]),
                levels=data.get("levels"),
                max_knots=int(data["max_knots"]),
            )
            number_pair(calibrator.scale_bounds, "scale bounds")
            calibrator.levels = _optional_levels(calibrator.levels)
            scale = positive_number(data["scale"], "scale")
            knots = np.asarray(data["level_knots"], dtype=np.float64)
            frequencies = np.asarray(data["frequency_knots"], dtype=np.float64)
            before = float(data["miscalibration_area_before"])
            after = float(data["miscalibration_area_after"])
            n_fit = int(data["n_fit"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LTAUInputError):
                raise
            raise LTAUInputError(f"invalid {cls.kind} calibrator data: {exc!r}") from exc
        _check_knots(knots, frequencies)
        calibrator.scale_ = scale
        calibrator._set_knots(knots, frequencies)
        calibrator.miscalibration_area_before_ = before
        calibrator.miscalibration_area_after_ = after
        calibrator.n_fit_ = n_fit
        return calibrator

    def __repr__(self) -> str:
        state = (
            f", scale_={self.scale_:.6g}, {self.level_knots_.size} knots" if self.is_fitted else ""
        )
        return f"IsotonicCalibrator(fit_scale={self.fit_scale!r}{state})"


def _isotonic_knots(pit: np.ndarray, max_knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(p, g(p))`` of the isotonic fit of ``P_hat(p) = mean(pit <= p)``."""
    try:
        from scipy.optimize import isotonic_regression
    except ImportError as exc:  # SciPy < 1.12
        raise ImportError("IsotonicCalibrator needs scipy >= 1.12 (isotonic_regression)") from exc
    ordered = np.sort(pit)
    interior = np.unique(ordered[(ordered > 0) & (ordered < 1)])
    targets = np.searchsorted(ordered, interior, side="right") / ordered.size
    if interior.size:
        targets = isotonic_regression(targets, increasing=True).x
    if interior.size > max_knots - 2:
        keep = np.unique(np.round(np.linspace(0, interior.size - 1, max_knots - 2)).astype(int))
        interior, targets = interior[keep], targets[keep]
    knots = np.concatenate([[0.0], interior, [1.0]])
    frequencies = np.clip(np.concatenate([[0.0], targets, [1.0]]), 0.0, 1.0)
    return knots, np.maximum.accumulate(frequencies)


def _check_knots(knots: np.ndarray, frequencies: np.ndarray) -> None:
    if knots.ndim != 1 or knots.shape != frequencies.shape or knots.size < 2:
        raise LTAUInputError("level_knots and frequency_knots must be 1-D, equal length, >= 2")
    if not (np.all(np.isfinite(knots)) and np.all(np.isfinite(frequencies))):
        raise LTAUInputError("calibration knots contain NaN or infinity")
    if not np.all(np.diff(knots) > 0):
        raise LTAUInputError("level_knots must be strictly increasing")
    if not np.all(np.diff(frequencies) >= 0):
        raise LTAUInputError("frequency_knots must be non-decreasing")
    if knots[0] != 0 or knots[-1] != 1 or frequencies[0] != 0 or frequencies[-1] != 1:
        raise LTAUInputError("calibration knots must run from (0, 0) to (1, 1)")


@dataclass(frozen=True)
class DistanceWidening:
    """Widen predicted error distributions as queries leave the training domain.

    The factor on query ``i``'s error axis is
    ``w_i = (max(d_i, d_low) / d_ref)^a * (max(g_i, g_low) / g_ref)^b``: ``d_i`` its OOD
    score, ``g_i`` the mean OOD score of its group (for a force field: the atoms of one
    structure; without groups ``g_i = d_i`` and ``b = 0``). Expected error and quantiles are
    multiplied by ``w_i``, and ``CDF(x) = F(x / w_i)``.

    :meth:`fit` estimates ``a`` and ``b`` on validation data by least squares of
    ``log(observed / expected)`` on ``[1, log d, log g]``
    (``expected``: the raw expected error), i.e. how the observed error grows with distance
    beyond what the neighbours' distributions predict. An exponent that comes out negative is
    set to 0 and the other refitted, so the distributions only widen with distance. ``d_ref``
    and ``g_ref`` are the validation medians; the overall scale is left to the calibrator
    fitted afterwards.

    Validation data come from the training distribution, so they say little about how errors
    grow far from it. On the EMT set's 20 validation structures (mean OOD scores spanning less
    than a factor of 2), the least-squares group exponent came out negative (so ``b = 0``),
    while the errors of 900 K and 1200 K frames grew about linearly with the structure's score:
    the 90% intervals covered 85% and 79% of their errors. The fit therefore keeps the total exponent
    ``a + b`` (how the error grows when a whole structure moves away) at
    ``min_total_exponent`` or more (default :data:`MIN_TOTAL_EXPONENT` = 1: linear growth,
    as the Lipschitz bound ``|e(x) - e(x_nn)| <= L d`` has it far from the data): when the
    least-squares total is smaller, ``a`` and ``b`` are refitted by least squares on
    ``a + b = 1`` (both >= 0). Where validation shows a faster growth, as on acac (``a + b``
    about 1.6-2.5), the least-squares exponents stand.

    ``d_low`` and ``g_low`` (``lower``, ``group_lower``) are the 5% quantiles of the validation
    scores (or their smallest positive value if that quantile is 0): below them, where
    validation data are too few to support it, the power law is not extrapolated, so a query that coincides with a training sample (``d_i = 0``) is not
    made arbitrarily confident; it gets the factor of the closest validation queries. Widenings
    stored without them (older files) have ``lower = group_lower = 0``: no such limit.
    """

    exponent: float
    group_exponent: float
    reference: float
    group_reference: float
    lower: float = 0.0
    group_lower: float = 0.0

    kind: ClassVar[str] = "distance_widening"

    def __post_init__(self) -> None:
        for name in ("exponent", "group_exponent", "lower", "group_lower"):
            non_negative_number(getattr(self, name), name)
        for name in ("reference", "group_reference"):
            positive_number(getattr(self, name), name)

    @classmethod
    def fit(
        cls,
        ood_score: np.ndarray,
        group_score: np.ndarray | None,
        expected: np.ndarray,
        observed: np.ndarray,
        *,
        min_total_exponent: float = MIN_TOTAL_EXPONENT,
    ) -> DistanceWidening:
        """Fit on validation arrays, each ``(n,)``: OOD scores, group OOD scores (or None),
        raw expected errors and observed errors (same unit as the expected ones);
        ``min_total_exponent`` >= 0 is the least ``a + b`` (0: least squares only)."""
        observed = checked_errors(observed, "observed errors")
        n = observed.size
        ood_score = _positive_values(ood_score, "OOD scores", n)
        if np.all(ood_score == _MIN_SCORE):
            raise LTAUInputError(
                "the OOD scores are all 0 (every validation query coincides with training "
                "samples): the widening cannot be fitted; calibrate with widen=False"
            )
        expected = _positive_values(expected, "expected errors", n)
        group_score = (
            ood_score
            if group_score is None
            else _positive_values(group_score, "group OOD scores", n)
        )
        floor = non_negative_number(min_total_exponent, "min_total_exponent")
        positive = observed > 0
        if np.count_nonzero(positive) < 3:
            raise LTAUInputError("fitting the distance widening needs 3 or more positive errors")
        target = np.log(observed[positive] / expected[positive])
        features = {
            "exponent": np.log(ood_score[positive]),
            "group_exponent": np.log(group_score[positive]),
        }
        if group_score is ood_score or np.ptp(features["group_exponent"]) == 0:
            features.pop("group_exponent")  # no groups, or one group score: no group term
        exponents = _nonnegative_least_squares(target, features)
        if sum(exponents.values()) < floor:
            exponents = _exponents_with_total(target, features, floor)
        return cls(
            exponent=exponents.get("exponent", 0.0),
            group_exponent=exponents.get("group_exponent", 0.0),
            reference=float(np.median(ood_score)),
            group_reference=float(np.median(group_score)),
            lower=_score_floor(ood_score),
            group_lower=_score_floor(group_score),
        )

    def factors(self, ood_score: np.ndarray, group_score: np.ndarray | None) -> np.ndarray:
        """``w_i`` for OOD scores and group scores, each ``(n,)`` (``None``: no groups)."""
        ood_score = np.maximum(np.asarray(ood_score, dtype=np.float64), self._floor)
        group_score = ood_score if group_score is None else np.asarray(group_score, np.float64)
        group_score = np.maximum(group_score, self._group_floor)
        return (ood_score / self.reference) ** self.exponent * (
            group_score / self.group_reference
        ) ** self.group_exponent

    @property
    def _floor(self) -> float:
        return max(self.lower, _MIN_SCORE)

    @property
    def _group_floor(self) -> float:
        return max(self.group_lower, _MIN_SCORE)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistanceWidening:
        """Inverse of :meth:`to_dict`; fields added since (``lower``, ``group_lower``) take
        their defaults when absent."""
        _check_header(data, cls.kind)
        try:
            return cls(
                **{
                    field.name: data[field.name]
                    for field in fields(cls)
                    if field.name in data or field.default is MISSING
                }
            )
        except KeyError as exc:
            raise LTAUInputError(f"distance widening data lacks {exc}") from exc


_SCORE_FLOOR_QUANTILE = 0.05
"""Quantile of the validation OOD scores below which :class:`DistanceWidening` does not
extrapolate."""


def _score_floor(scores: np.ndarray) -> float:
    """The :data:`_SCORE_FLOOR_QUANTILE` quantile of ``scores`` ``(n,)`` (each at least
    ``_MIN_SCORE``), or, if that quantile is ``_MIN_SCORE`` (zeros), their smallest larger
    value (``_MIN_SCORE`` if there is none)."""
    floor = float(np.quantile(scores, _SCORE_FLOOR_QUANTILE))
    if floor > _MIN_SCORE:
        return floor
    larger = scores[scores > _MIN_SCORE]
    return float(larger.min()) if larger.size else _MIN_SCORE


_MIN_SCORE = 1e-12


def _positive_values(values: Any, name: str, n: int) -> np.ndarray:
    """``(n,)`` finite values >= 0, raised to at least ``_MIN_SCORE`` (so that logs exist)."""
    return np.maximum(non_negative_vector(values, name, n), _MIN_SCORE)


def _exponents_with_total(
    target: np.ndarray, features: dict[str, np.ndarray], total: float
) -> dict[str, float]:
    """Least-squares exponents of ``target`` on ``features`` (one or two, each ``(m,)``, with
    an intercept) constrained to sum to ``total`` and to be >= 0."""
    names = list(features)
    if len(names) == 1:
        return {names[0]: total}
    first, second = (features[name] for name in names)
    # target - total * second = c + a * (first - second), with b = total - a.
    design = np.column_stack([np.ones_like(target), first - second])
    slope = float(np.linalg.lstsq(design, target - total * second, rcond=None)[0][1])
    slope = min(max(slope, 0.0), total)
    return {names[0]: slope, names[1]: total - slope}


def _nonnegative_least_squares(target: np.ndarray, features: dict[str, np.ndarray]) -> dict:
    """Least-squares slopes of ``target`` on ``features`` (with an intercept), dropping any
    feature whose slope is negative and refitting the rest; dropped features get 0."""
    names = list(features)
    while names:
        design = np.column_stack([np.ones_like(target), *(features[name] for name in names)])
        slopes = np.linalg.lstsq(design, target, rcond=None)[0][1:]
        if np.all(slopes >= 0):
            return {name: float(slope) for name, slope in zip(names, slopes, strict=True)}
        names.pop(int(np.argmin(slopes)))
    return {}


def _check_header(data: Any, kind: str) -> None:
    if not isinstance(data, dict):
        raise LTAUInputError(f"calibrator data must be a dict; got {type(data).__name__}")
    if data.get("kind") != kind:
        raise LTAUInputError(f"calibrator data is of kind {data.get('kind')!r}, not {kind!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise LTAUInputError(
            f"unsupported calibrator format_version {data.get('format_version')!r} "
            f"(this version of ltau reads {FORMAT_VERSION})"
        )


Calibrator = ErrorScaleCalibrator | IsotonicCalibrator
"""Either calibrator (both implement the interface described in the module docstring)."""

_KINDS: dict[str, type[ErrorScaleCalibrator] | type[IsotonicCalibrator]] = {
    ErrorScaleCalibrator.kind: ErrorScaleCalibrator,
    IsotonicCalibrator.kind: IsotonicCalibrator,
}


def calibrator_from_dict(data: dict[str, Any]) -> ErrorScaleCalibrator | IsotonicCalibrator:
    """Rebuild a calibrator stored with ``to_dict()``, choosing the class by ``data["kind"]``."""
    if not isinstance(data, dict):
        raise LTAUInputError(f"calibrator data must be a dict; got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in _KINDS:
        raise LTAUInputError(f"unknown calibrator kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind].from_dict(data)


CALIBRATION_METHODS: dict[str, type[IsotonicCalibrator] | type[ErrorScaleCalibrator]] = {
    "isotonic": IsotonicCalibrator,
    "scale": ErrorScaleCalibrator,
}
"""The calibration methods by the name users pick them with (``--calibration``, ``method=``):
``"isotonic"`` (scale, then an isotonic map of CDF levels) and ``"scale"`` (one factor)."""


def make_calibrator(method: str) -> ErrorScaleCalibrator | IsotonicCalibrator:
    """An unfitted calibrator of the named method (a key of :data:`CALIBRATION_METHODS`)."""
    if not isinstance(method, str) or method not in CALIBRATION_METHODS:
        raise LTAUInputError(
            f"unknown calibration method {method!r}; use one of "
            f"{', '.join(repr(name) for name in CALIBRATION_METHODS)}"
        )
    return CALIBRATION_METHODS[method]()


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_LEVELS",
    "Calibrator",
    "DistanceWidening",
    "ErrorScaleCalibrator",
    "IsotonicCalibrator",
    "calibrator_from_dict",
    "make_calibrator",
]
