"""Uncertainty-quality metrics, named as in uncertainty-toolbox, chemprop and scikit-learn.

Errors are non-negative magnitudes ``|error|``. Ranking and scalar metrics take 1-D arrays of
equal length; metrics of full predicted distributions take probability *mass* of shape
``(n, n_bins)`` (rows summing to one; ``LTAUPrediction.pdf * bins.widths``) with its
:class:`~ltau.distributions.Bins`, under the library's single model: uniform density inside
each bin, piecewise-linear CDF. Each returns a float or a small dict of arrays and raises
:class:`~ltau.exceptions.LTAUInputError` on empty, non-finite or mismatched input.

Ranking: :func:`spearman`, :func:`auroc`, :func:`precision_at_recall`,
:func:`sparsification_curve`, :func:`ause`.
Calibration: :func:`probability_integral_transform`, :func:`calibration_curve`,
:func:`miscalibration_area`, :func:`interval_coverage`, :func:`binned_error_calibration`,
:func:`expected_normalized_calibration_error`. Proper scores: :func:`nll_histogram`,
:func:`crps_histogram`.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ltau._checks import positive_int
from ltau.distributions import Bins, _row_chunks, cdf_at, density_at
from ltau.exceptions import LTAUInputError


def _paired(*arrays: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    values = [np.asarray(array, dtype=np.float64) for array in arrays]
    for value, name in zip(values, names, strict=True):
        if value.ndim != 1:
            raise LTAUInputError(f"{name} must be 1-D; got shape {value.shape}")
        if value.size == 0:
            raise LTAUInputError(f"{name} is empty")
        if not np.all(np.isfinite(value)):
            raise LTAUInputError(f"{name} contains NaN or infinity")
    if len({value.size for value in values}) != 1:
        sizes = ", ".join(f"{n}={v.size}" for n, v in zip(names, values, strict=True))
        raise LTAUInputError(f"arrays must have equal length; got {sizes}")
    return values


def spearman(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Spearman rank correlation of predicted uncertainty and observed error."""
    predicted, observed = _paired(predicted, observed, names=("predicted", "observed"))
    return float(stats.spearmanr(predicted, observed).statistic)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (True = positive).

    Equals the Mann-Whitney U statistic over ``n_pos * n_neg`` (ties count one half).
    """
    scores, labels = _paired(scores, labels, names=("scores", "labels"))
    positive = labels.astype(bool)
    if positive.all() or not positive.any():
        raise LTAUInputError("AUROC needs both positive and negative labels")
    result = stats.mannwhitneyu(scores[positive], scores[~positive], alternative="two-sided")
    return float(result.statistic / (positive.sum() * (~positive).sum()))


def precision_at_recall(scores: np.ndarray, labels: np.ndarray, recall: float) -> float:
    """Precision when flagging every sample scored at least ``t``, for the highest threshold
    ``t`` whose recall of the positives (True labels) reaches ``recall`` in (0, 1].

    Samples tied at the threshold are all flagged.
    """
    scores, labels = _paired(scores, labels, names=("scores", "labels"))
    positive = labels.astype(bool)
    if not positive.any():
        raise LTAUInputError("precision at recall needs at least one positive label")
    if not 0 < recall <= 1:
        raise LTAUInputError(f"recall must lie in (0, 1]; got {recall}")
    needed = int(np.ceil(recall * positive.sum() - 1e-9))
    threshold = np.sort(scores[positive])[::-1][needed - 1]
    flagged = scores >= threshold
    return float(positive[flagged].mean())


def interval_coverage(observed: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of observations inside ``[lower, upper]``."""
    observed, lower, upper = _paired(observed, lower, upper, names=("observed", "lower", "upper"))
    return float(np.mean((observed >= lower) & (observed <= upper)))


def rmse(errors: np.ndarray) -> float:
    """Root-mean-square of signed or absolute errors."""
    (errors,) = _paired(errors, names=("errors",))
    return float(np.sqrt(np.mean(errors**2)))


# ----------------------------------------------------------------------------------------------
# Calibration of full predicted distributions (probability mass on bins) and of expected errors
# ----------------------------------------------------------------------------------------------

DEFAULT_LEVELS = np.linspace(0.01, 0.99, 99)
"""Expected proportions used by :func:`calibration_curve` and :func:`miscalibration_area`:
the 99 levels 0.01, 0.02, ..., 0.99 (as in uncertainty-toolbox)."""

DEFAULT_DENSITY_FLOOR = 1e-12
"""Smallest density (1 / error unit) used by :func:`nll_histogram`."""

_MASS_TOLERANCE = 1e-6


def checked_mass(mass: np.ndarray, bins: Bins, name: str = "mass") -> np.ndarray:
    """``mass`` as float64 ``(n, n_bins)`` with ``n >= 1``, finite, >= 0, rows summing to 1.

    Rows may deviate from 1 by at most 1e-6 (rounding in mixtures); raises LTAUInputError.
    """
    if not isinstance(bins, Bins):
        raise LTAUInputError(f"bins must be a Bins instance; got {type(bins).__name__}")
    try:
        array = np.asarray(mass, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must be a numeric array: {exc}") from exc
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
    bad = np.flatnonzero(np.abs(totals - 1.0) > _MASS_TOLERANCE)
    if bad.size:
        raise LTAUInputError(
            f"each row of {name} must sum to 1 (probability mass, not density; multiply a PDF "
            f"by bins.widths); row {int(bad[0])} sums to {totals[bad[0]]:.6g}"
        )
    return array


def checked_errors(values: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array of finite errors >= 0 (of length ``n``)."""
    (array,) = _paired(values, names=(name,))
    if n is not None and array.size != n:
        raise LTAUInputError(f"{name} has {array.size} entries but mass has {n} rows")
    if np.any(array < 0):
        first = int(np.flatnonzero(array < 0)[0])
        raise LTAUInputError(
            f"{name} must be non-negative error magnitudes; entry {first} is {array[first]}"
        )
    return array


def _checked_pit(pit_values: np.ndarray) -> np.ndarray:
    (pit,) = _paired(pit_values, names=("pit_values",))
    if np.any((pit < 0) | (pit > 1)):
        raise LTAUInputError("pit_values must lie in [0, 1]")
    return pit


def _checked_levels(levels: np.ndarray | None) -> np.ndarray:
    if levels is None:
        return DEFAULT_LEVELS
    (array,) = _paired(levels, names=("levels",))
    if np.any((array < 0) | (array > 1)):
        raise LTAUInputError(f"levels must lie in [0, 1]; got {array.tolist()}")
    if array.size > 1 and not np.all(np.diff(array) > 0):
        raise LTAUInputError("levels must be strictly increasing")
    return array


def probability_integral_transform(
    mass: np.ndarray, bins: Bins, observed: np.ndarray
) -> np.ndarray:
    """PIT values ``u_i = F_i(observed_i)``, shape ``(n,)``.

    ``F_i`` is the piecewise-linear CDF of row ``i`` of ``mass`` (0 below the first bin edge,
    1 from the last edge on). For calibrated predictions the PIT values are uniform on [0, 1].
    """
    mass = checked_mass(mass, bins)
    observed = checked_errors(observed, "observed", mass.shape[0])
    return cdf_at(mass, bins, observed)


def _observed_proportions(pit: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fraction of ``pit`` values ``<= level`` for each of the sorted ``levels`` (unchecked)."""
    # Number of levels strictly below each PIT value: u <= levels[k]  <=>  k >= that number.
    first_level = np.searchsorted(levels, pit, side="left")
    counts = np.cumsum(np.bincount(first_level, minlength=levels.size + 1))[: levels.size]
    return counts / pit.size


def _area_between(expected: np.ndarray, observed: np.ndarray) -> float:
    """Exact area between two curves linear between common abscissas ``expected``."""
    if expected.size < 2:
        return 0.0
    difference = observed - expected
    left, right = difference[:-1], difference[1:]
    width = np.diff(expected)
    same_sign = left * right >= 0
    magnitude = np.abs(left) + np.abs(right)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = (left**2 + right**2) / (2 * magnitude)
    pieces = np.where(same_sign, 0.5 * magnitude, crossing)
    return float(np.sum(width * pieces))


def calibration_curve(
    pit_values: np.ndarray, levels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Observed versus expected proportions of a quantile calibration curve.

    For each expected proportion ``p`` in ``levels`` (default: 0.01, 0.02, ..., 0.99) the
    observed proportion is the fraction of observations with ``PIT <= p``, i.e. that fell at or
    below the predicted ``p``-quantile (uncertainty-toolbox's ``prop_type="quantile"``).
    Returns ``{"expected": levels, "observed": proportions}``, both of shape ``(len(levels),)``.
    """
    pit = _checked_pit(pit_values)
    levels = _checked_levels(levels)
    return {"expected": levels.copy(), "observed": _observed_proportions(pit, levels)}


def miscalibration_area(pit_values: np.ndarray, levels: np.ndarray | None = None) -> float:
    """Area between the calibration curve and the diagonal (0 = perfectly calibrated).

    With ``o(p)`` the observed proportion of :func:`calibration_curve` at the expected
    proportions ``p_1 < ... < p_m`` (default 0.01, ..., 0.99) and both curves taken as linear
    between those points, the result is ``integral_{p_1}^{p_m} |o(p) - p| dp``: the trapezoid
    rule on ``|o - p|``, except that a segment where the curves cross is split at the crossing
    (so the value is exactly the polygon area that uncertainty-toolbox computes). It is not
    divided by ``p_m - p_1``; on the default grid it lies in [0, 0.49].
    """
    pit = _checked_pit(pit_values)
    levels = _checked_levels(levels)
    if levels.size < 2:
        raise LTAUInputError("miscalibration_area needs at least 2 levels")
    return _area_between(levels, _observed_proportions(pit, levels))


def binned_error_calibration(
    predicted_expected_error: np.ndarray, observed_error: np.ndarray, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Mean predicted versus mean observed |error| in bins of equal count (reliability diagram).

    Points are sorted by predicted expected error (stable sort) and split into ``n_bins``
    consecutive groups whose sizes differ by at most one (``numpy.array_split``), so tied
    predictions may straddle a boundary. Returns arrays of shape ``(n_bins,)``:
    ``mean_predicted``, ``mean_observed`` (mean |error|), ``rms_observed``
    (``sqrt(mean(error^2))``), ``count``, and ``predicted_low`` / ``predicted_high`` (the range
    of predictions in each bin). A calibrated expected error has
    ``mean_observed ≈ mean_predicted`` in every bin.
    """
    predicted, observed = _paired(
        predicted_expected_error,
        observed_error,
        names=("predicted_expected_error", "observed_error"),
    )
    checked_errors(predicted, "predicted_expected_error")
    checked_errors(observed, "observed_error")
    n_bins = positive_int(n_bins, "n_bins")
    if n_bins > predicted.size:
        raise LTAUInputError(f"n_bins={n_bins} exceeds the number of points ({predicted.size})")
    groups = np.array_split(np.argsort(predicted, kind="stable"), n_bins)
    return {
        "mean_predicted": np.array([predicted[g].mean() for g in groups]),
        "mean_observed": np.array([observed[g].mean() for g in groups]),
        "rms_observed": np.array([np.sqrt(np.mean(observed[g] ** 2)) for g in groups]),
        "count": np.array([g.size for g in groups], dtype=np.int64),
        "predicted_low": np.array([predicted[g].min() for g in groups]),
        "predicted_high": np.array([predicted[g].max() for g in groups]),
    }


def expected_normalized_calibration_error(
    predicted_expected_error: np.ndarray, observed_error: np.ndarray, n_bins: int = 10
) -> float:
    """ENCE analogue for predicted expected |error|.

    ``(1 / B) * sum_b |mean_pred_b - mean_obs_b| / mean_pred_b`` over the ``B = n_bins``
    equal-count bins of :func:`binned_error_calibration`. ENCE (Levi et al. 2019, as in
    chemprop and uncertainty-toolbox) compares, per bin, the root mean predicted variance with
    the RMSE; LTAU predicts an expected |error| rather than a standard deviation, so this
    compares it with the mean observed |error| instead. 0 means calibrated; 0.5 means the
    predictions are off by 50% on average over bins.
    """
    table = binned_error_calibration(predicted_expected_error, observed_error, n_bins)
    predicted, observed = table["mean_predicted"], table["mean_observed"]
    if np.any(predicted <= 0):
        raise LTAUInputError(
            "the normalized calibration error needs a positive mean predicted error in every bin"
        )
    return float(np.mean(np.abs(predicted - observed) / predicted))


def nll_histogram(
    mass: np.ndarray,
    bins: Bins,
    observed: np.ndarray,
    *,
    density_floor: float = DEFAULT_DENSITY_FLOOR,
) -> float:
    """Mean negative log density of the observed errors under the piecewise-uniform density.

    ``mean_i -log(max(f_i(observed_i), density_floor))`` with ``f_i = mass[i, j] / width_j`` in
    the bin ``j`` holding ``observed_i``. Outside ``[edges[0], edges[-1]]`` and in bins of zero
    mass the density is 0 and the floor (default 1e-12 per error unit, i.e. a penalty of
    ``-log(1e-12) ≈ 27.6`` per such point) is used instead; :func:`outside_support` reports how
    many observations that concerns. Densities are per error unit, so the value depends on the
    unit (changing eV/Å to meV/Å adds ``log(1000)``).
    """
    mass = checked_mass(mass, bins)
    observed = checked_errors(observed, "observed", mass.shape[0])
    if not (np.isfinite(density_floor) and density_floor > 0):
        raise LTAUInputError(f"density_floor must be a positive number; got {density_floor}")
    density = density_at(mass, bins, observed)
    return float(np.mean(-np.log(np.maximum(density, density_floor))))


def outside_support(bins: Bins, observed: np.ndarray) -> dict[str, float]:
    """Fractions of ``observed`` errors below the first bin edge and above the last.

    Returns ``{"below": ..., "above": ...}``. Such observations get PIT 0 or 1 and the floor
    density in :func:`nll_histogram`.
    """
    if not isinstance(bins, Bins):
        raise LTAUInputError(f"bins must be a Bins instance; got {type(bins).__name__}")
    observed = checked_errors(observed, "observed")
    return {
        "below": float(np.mean(observed < bins.edges[0])),
        "above": float(np.mean(observed > bins.edges[-1])),
    }


def crps_values(mass: np.ndarray, bins: Bins, observed: np.ndarray) -> np.ndarray:
    """Per-observation CRPS, shape ``(n,)``; see :func:`crps_histogram`."""
    mass = checked_mass(mass, bins)
    observed = checked_errors(observed, "observed", mass.shape[0])
    result = np.empty(mass.shape[0])
    for rows in _row_chunks(mass.shape[0]):
        result[rows] = _crps_rows(mass[rows], bins, observed[rows])
    return result


def _crps_rows(mass: np.ndarray, bins: Bins, observed: np.ndarray) -> np.ndarray:
    edges, widths = bins.edges, bins.widths
    cdf = np.concatenate([np.zeros((mass.shape[0], 1)), np.cumsum(mass, axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    left, right = cdf[:, :-1], cdf[:, 1:]
    # F is linear from a to b over a bin of width w: the bin's integral of F^2 is
    # w (a^2 + ab + b^2) / 3, that of F is w (a + b) / 2.
    square_integral = np.sum(widths * (left**2 + left * right + right**2) / 3.0, axis=1)
    cumulative = np.concatenate(
        [np.zeros((mass.shape[0], 1)), np.cumsum(widths * (left + right) / 2.0, axis=1)], axis=1
    )
    low, high = edges[0], edges[-1]
    clipped = np.clip(observed, low, high)
    index = np.clip(np.searchsorted(edges, clipped, side="right") - 1, 0, bins.n_bins - 1)
    rows = np.arange(mass.shape[0])
    a, b = left[rows, index], right[rows, index]
    offset = clipped - edges[index]
    at_value = a + (b - a) * np.clip(offset / widths[index], 0.0, 1.0)
    below_value = cumulative[rows, index] + offset * (a + at_value) / 2.0  # int_{low}^{z} F
    above_value = cumulative[:, -1] - below_value  # int_{z}^{high} F
    return (
        square_integral
        - 2.0 * above_value
        + (high - clipped)
        + np.maximum(low - observed, 0.0)
        + np.maximum(observed - high, 0.0)
    )


def crps_histogram(mass: np.ndarray, bins: Bins, observed: np.ndarray) -> float:
    """Mean continuous ranked probability score, in the error's unit (lower is better).

    ``CRPS_i = integral (F_i(x) - 1{x >= y_i})^2 dx`` over the real line, with ``F_i`` the
    piecewise-linear CDF of row ``i`` (0 below the first edge, 1 from the last edge on) and
    ``y_i = observed_i``. It is computed exactly: per bin, ``F`` is linear from ``a`` to ``b``
    over a width ``w``, so ``integral F^2 = w (a^2 + ab + b^2) / 3`` and
    ``integral F = w (a + b) / 2``; the bin holding ``y_i`` is split at ``y_i``, and the parts of
    ``y_i`` beyond the support add ``edges[0] - y_i`` or ``y_i - edges[-1]``.
    """
    return float(np.mean(crps_values(mass, bins, observed)))


def sparsification_curve(
    uncertainty: np.ndarray,
    observed_error: np.ndarray,
    n_steps: int = 100,
    *,
    normalize: bool = True,
) -> dict[str, np.ndarray]:
    """Sparsification curves of a predicted uncertainty and of the oracle (Ilg et al. 2018).

    For ``k = 0, ..., n_steps - 1`` the fraction ``f_k = k / n_steps`` of the ``n`` points is
    removed (``floor(k * n / n_steps)`` points, so at least one always remains) in decreasing
    order of ``uncertainty``, and the curve is the mean ``observed_error`` (mean absolute error)
    of the remaining points. The oracle removes points in decreasing order of the observed error
    itself, the best any ordering can do. Ties in ``uncertainty`` are resolved by averaging
    over their orderings (the expectation under random tie-breaking), so the result does not
    depend on the input order. With ``normalize`` (default, as in Ilg et al.) both curves are
    divided by the mean error of all points, so they start at 1.

    Returns ``{"fraction_removed": f, "model": ..., "oracle": ...}``, each ``(n_steps,)``.
    """
    uncertainty, observed = _paired(
        uncertainty, observed_error, names=("uncertainty", "observed_error")
    )
    checked_errors(observed, "observed_error")
    n_steps = positive_int(n_steps, "n_steps")
    if n_steps < 2:
        raise LTAUInputError("n_steps must be at least 2")
    n = observed.size
    steps = np.arange(n_steps)
    kept = n - (steps * n) // n_steps
    # Keep the least uncertain points: sort ascending; within a tie group every ordering is
    # equally likely, so each member contributes the group's mean error in expectation.
    order = np.argsort(uncertainty, kind="stable")
    sorted_uncertainty, sorted_error = uncertainty[order], observed[order]
    group = np.concatenate([[0], np.cumsum(np.diff(sorted_uncertainty) != 0)])
    group_mean = np.bincount(group, weights=sorted_error) / np.bincount(group)
    model_sums = np.concatenate([[0.0], np.cumsum(group_mean[group])])
    oracle_sums = np.concatenate([[0.0], np.cumsum(np.sort(observed))])
    model = model_sums[kept] / kept
    oracle = oracle_sums[kept] / kept
    # The oracle is a lower bound; remove rounding noise that would put the model below it.
    model = np.maximum(model, oracle)
    if normalize:
        total = observed.mean()
        if total <= 0:
            raise LTAUInputError("cannot normalize sparsification curves: all errors are zero")
        model, oracle = model / total, oracle / total
    return {"fraction_removed": steps / n_steps, "model": model, "oracle": oracle}


def ause(
    uncertainty: np.ndarray,
    observed_error: np.ndarray,
    n_steps: int = 100,
    *,
    normalize: bool = True,
) -> float:
    """Area under the sparsification error: area between the model's and the oracle's curves.

    The trapezoid integral of ``model - oracle`` from :func:`sparsification_curve` over the
    removed fractions ``0, 1/n_steps, ..., 1 - 1/n_steps``. 0 when ``uncertainty`` orders the
    points exactly like the observed error; larger is worse. Dimensionless with ``normalize``
    (default), else in the error's unit.
    """
    curves = sparsification_curve(uncertainty, observed_error, n_steps, normalize=normalize)
    return _trapezoid(curves["model"] - curves["oracle"], curves["fraction_removed"])


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
