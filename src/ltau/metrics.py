"""Uncertainty-quality metrics, named as in uncertainty-toolbox, chemprop and scikit-learn.

Errors are non-negative magnitudes ``|error|``. Ranking and scalar metrics take 1-D arrays of
equal length; metrics of full predicted distributions take probability *mass* of shape
``(n, n_bins)`` (rows summing to one; ``LTAUPrediction.pdf * bins.widths``) with its
:class:`~ltau.histogram.Bins`, under the library's single model (:mod:`ltau.histogram`):
uniform density inside each bin, piecewise-linear CDF. Each returns a float or a small dict of arrays and raises
:class:`~ltau.exceptions.LTAUInputError` on empty, non-finite or mismatched input.

Ranking: :func:`spearman`, :func:`auroc`, :func:`precision_at_recall`,
:func:`sparsification_curve`, :func:`ause`.
Calibration: :func:`probability_integral_transform`, :func:`calibration_curve`,
:func:`miscalibration_area`, :func:`interval_coverage`, :func:`binned_error_calibration`,
:func:`expected_normalized_calibration_error`. Proper scores: :func:`nll_histogram`,
:func:`crps_histogram`. All of them at once, in a fixed order: :func:`uq_metrics`, described
by :data:`METRIC_INFO`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

from ltau._checks import (
    checked_errors,
    checked_levels,
    checked_pit,
    is_real,
    paired_vectors,
    positive_int,
    tolerance,
)
from ltau.exceptions import LTAUInputError
from ltau.histogram import (
    Bins,
    cdf_at,
    checked_bins,
    checked_mass,
    density_at,
    edge_cdf,
    row_chunks,
)


def spearman(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Spearman rank correlation of predicted uncertainty and observed error."""
    predicted, observed = paired_vectors(predicted, observed, names=("predicted", "observed"))
    return float(stats.spearmanr(predicted, observed).statistic)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (True = positive).

    Equals the Mann-Whitney U statistic over ``n_pos * n_neg`` (ties count one half).
    """
    scores, labels = paired_vectors(scores, labels, names=("scores", "labels"))
    if not np.all((labels == 0) | (labels == 1)):
        raise LTAUInputError("labels must be binary (0/1 or False/True)")
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
    scores, labels = paired_vectors(scores, labels, names=("scores", "labels"))
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
    observed, lower, upper = paired_vectors(
        observed, lower, upper, names=("observed", "lower", "upper")
    )
    return float(np.mean((observed >= lower) & (observed <= upper)))


def rmse(errors: np.ndarray) -> float:
    """Root-mean-square of signed or absolute errors."""
    (errors,) = paired_vectors(errors, names=("errors",))
    return float(np.sqrt(np.mean(errors**2)))


# ----------------------------------------------------------------------------------------------
# Calibration of full predicted distributions (probability mass on bins) and of expected errors
# ----------------------------------------------------------------------------------------------

DEFAULT_LEVELS = np.linspace(0.01, 0.99, 99)
"""Expected proportions used by :func:`calibration_curve` and :func:`miscalibration_area`:
the 99 levels 0.01, 0.02, ..., 0.99 (as in uncertainty-toolbox)."""

DEFAULT_DENSITY_FLOOR = 1e-12
"""Smallest density (1 / error unit) used by :func:`nll_histogram`."""


def levels_or_default(levels: np.ndarray | None) -> np.ndarray:
    """Checked expected proportions (strictly increasing, in [0, 1]), :data:`DEFAULT_LEVELS`
    for ``None``."""
    return DEFAULT_LEVELS if levels is None else checked_levels(levels)


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


def observed_proportions(pit: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Fraction of ``pit`` values ``<= level`` for each of the sorted ``levels``, shape
    ``(len(levels),)``: the observed proportions of :func:`calibration_curve`, without its
    input checks (for inner loops over valid PIT values)."""
    # Number of levels strictly below each PIT value: u <= levels[k]  <=>  k >= that number.
    first_level = np.searchsorted(levels, pit, side="left")
    counts = np.cumsum(np.bincount(first_level, minlength=levels.size + 1))[: levels.size]
    return counts / pit.size


def area_between(expected: np.ndarray, observed: np.ndarray) -> float:
    """Exact area between two curves linear between common abscissas ``expected`` (sorted,
    ``(m,)``) with ordinates ``expected`` and ``observed``: :func:`miscalibration_area`
    without its input checks."""
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
    pit = checked_pit(pit_values)
    levels = levels_or_default(levels)
    return {"expected": levels.copy(), "observed": observed_proportions(pit, levels)}


def miscalibration_area(pit_values: np.ndarray, levels: np.ndarray | None = None) -> float:
    """Area between the calibration curve and the diagonal (0 = perfectly calibrated).

    With ``o(p)`` the observed proportion of :func:`calibration_curve` at the expected
    proportions ``p_1 < ... < p_m`` (default 0.01, ..., 0.99) and both curves taken as linear
    between those points, the result is ``integral_{p_1}^{p_m} |o(p) - p| dp``: the trapezoid
    rule on ``|o - p|``, except that a segment where the curves cross is split at the crossing
    (so the value is exactly the polygon area that uncertainty-toolbox computes). It is not
    divided by ``p_m - p_1``; on the default grid it lies in [0, 0.49].
    """
    pit = checked_pit(pit_values)
    levels = levels_or_default(levels)
    if levels.size < 2:
        raise LTAUInputError("miscalibration_area needs at least 2 levels")
    return area_between(levels, observed_proportions(pit, levels))


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
    predicted, observed = paired_vectors(
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
    bins = checked_bins(bins)
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
    for rows in row_chunks(mass.shape[0]):
        result[rows] = _crps_rows(mass[rows], bins, observed[rows])
    return result


def _crps_rows(mass: np.ndarray, bins: Bins, observed: np.ndarray) -> np.ndarray:
    edges, widths = bins.edges, bins.widths
    cdf = edge_cdf(mass)
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
    uncertainty, observed = paired_vectors(
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


# ----------------------------------------------------------------------------------------------
# The bundle every report uses
# ----------------------------------------------------------------------------------------------


class MetricInfo(NamedTuple):
    """How to show a metric: a label, its unit ("" if dimensionless) and which way is better."""

    label: str
    unit: str
    direction: str


METRIC_INFO: dict[str, MetricInfo] = {
    "n": MetricInfo("samples", "", ""),
    "spearman": MetricInfo("Spearman ρ, predicted vs true error", "", "higher is better"),
    "auroc_error_flag": MetricInfo(
        "AUROC of P(error > atol) for errors above atol", "", "higher is better"
    ),
    "fraction_above_atol": MetricInfo("fraction of errors above atol", "", ""),
    "ause": MetricInfo("AUSE (area between sparsification and oracle)", "", "lower is better"),
    "miscalibration_area": MetricInfo("miscalibration area (quantiles)", "", "lower is better"),
    "ence": MetricInfo("ENCE (expected normalized calibration error)", "", "lower is better"),
    "coverage90": MetricInfo("coverage of the 90% interval", "", "best at 0.90"),
    "nll": MetricInfo("NLL (negative log density)", "nats", "lower is better"),
    "crps": MetricInfo("CRPS", "error unit", "lower is better"),
}
"""Label, unit and direction of every key :func:`uq_metrics` can return (its key order).

"error unit" is the unit of the errors (eV/Å for force errors); ``coverage90`` stands for the
coverage of whatever central interval was given (``coverage95`` for ``confidence=0.95``)."""


def coverage_key(confidence: float) -> str:
    """The :func:`uq_metrics` key of a central interval's coverage: ``coverage90`` for 0.9."""
    if not (is_real(confidence) and 0 < confidence < 1):
        raise LTAUInputError(f"confidence must be a number in (0, 1); got {confidence!r}")
    return f"coverage{100 * confidence:.10g}"


def uq_metrics(
    observed: np.ndarray,
    expected_error: np.ndarray,
    *,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    confidence: float = 0.9,
    pit: np.ndarray | None = None,
    exceedance: np.ndarray | None = None,
    atol: float | None = None,
    mass: np.ndarray | None = None,
    bins: Bins | None = None,
) -> dict[str, float | int | None]:
    """The uncertainty metrics of one set of predictions, in the order of :data:`METRIC_INFO`.

    ``observed``: true errors ``(n,)`` (>= 0); ``expected_error``: predicted expected errors
    ``(n,)``, same unit. Always returned: ``n``, ``spearman``, ``ause`` and ``ence``. With
    ``atol`` (error unit): ``fraction_above_atol`` and, with ``exceedance`` (predicted
    ``P(error > atol)``, ``(n,)``), ``auroc_error_flag`` (None when no error, or every error,
    exceeds ``atol``). With ``pit`` ``(n,)``: ``miscalibration_area``. With ``lower`` and
    ``upper`` ``(n,)``, the central ``confidence`` interval: its coverage under
    :func:`coverage_key`. With ``mass`` ``(n, n_bins)`` on ``bins``: ``nll`` and ``crps``.
    """
    observed = checked_errors(observed, "observed")
    if (lower is None) != (upper is None) or (mass is None) != (bins is None):
        raise LTAUInputError("give lower with upper, and mass with bins (or neither)")
    if exceedance is not None and atol is None:
        raise LTAUInputError("the exceedance probabilities need the atol they were taken at")
    result: dict[str, float | int | None] = {
        "n": int(observed.size),
        "spearman": spearman(expected_error, observed),
    }
    if atol is not None:
        exceeds = observed > tolerance(atol)
        if exceedance is not None:
            result["auroc_error_flag"] = (
                auroc(exceedance, exceeds) if exceeds.any() and not exceeds.all() else None
            )
        result["fraction_above_atol"] = float(exceeds.mean())
    result["ause"] = ause(expected_error, observed)
    if pit is not None:
        result["miscalibration_area"] = miscalibration_area(pit)
    result["ence"] = expected_normalized_calibration_error(expected_error, observed)
    if lower is not None:
        result[coverage_key(confidence)] = interval_coverage(observed, lower, upper)
    if mass is not None:
        result["nll"] = nll_histogram(mass, bins, observed)
        result["crps"] = crps_histogram(mass, bins, observed)
    return result
