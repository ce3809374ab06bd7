"""Uncertainty-quality metrics, named as in uncertainty-toolbox and scikit-learn.

Each takes 1-D arrays of equal length and returns a float. Errors are magnitudes ``|error|``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

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


def interval_coverage(observed: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of observations inside ``[lower, upper]``."""
    observed, lower, upper = _paired(observed, lower, upper, names=("observed", "lower", "upper"))
    return float(np.mean((observed >= lower) & (observed <= upper)))


def rmse(errors: np.ndarray) -> float:
    """Root-mean-square of signed or absolute errors."""
    (errors,) = _paired(errors, names=("errors",))
    return float(np.sqrt(np.mean(errors**2)))
