"""Training-set tuning from training dynamics: loss weights for hard configurations, and a
list of suspicious ones to drop.

Input: a per-configuration :class:`~ltau.dynamics.DynamicsTable` (``training_dynamics(...,
groups=...).groups``) of a first, plain training run. Output: a :class:`TuningPlan` with a loss
weight per configuration (mean 1 over the kept configurations, bounded) and the configurations
to drop. Two rules, both fixed before any evaluation:

* **re-weight**: a configuration's weight is proportional to ``(mean_error / typical) **
  power`` (``typical``: the median over configurations), then clipped to ``[low, high]`` and
  rescaled so that the weights have mean 1 and stay within the bounds (one scale factor, found
  by bisection). Hard configurations count more in the loss, easy ones less.
* **drop**: a configuration is suspicious when its mean error is in the top
  ``drop_quantile`` tail while its relative variability ``error_std / mean_error`` is below
  the median: the model keeps failing on it the same way epoch after epoch, the pattern of a
  wrong label in dataset cartography (Swayamdipta et al., EMNLP 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltau._checks import is_real, paired_vectors, positive_number, real_array
from ltau.dynamics import DynamicsTable
from ltau.exceptions import LTAUInputError

_BISECTION_STEPS = 200


@dataclass(frozen=True)
class TuningPlan:
    """Per-configuration loss weights ``(n_configs,)`` (0 for dropped ones; mean 1 over the
    kept ones) and the indices of the kept and dropped configurations."""

    weights: np.ndarray
    kept: np.ndarray
    dropped: np.ndarray

    @property
    def kept_weights(self) -> np.ndarray:
        """The weights of the kept configurations, in ``kept`` order (for ``subset(kept)``)."""
        return self.weights[self.kept]


@dataclass(frozen=True)
class TuningStrategy:
    """How to turn a per-configuration dynamics table into a :class:`TuningPlan`.

    ``reweight``: weights from mean errors (``power``; ``low <= 1 <= high`` bound them).
    ``drop_quantile``: drop high-error, low-variability configurations from this upper tail of
    mean errors (e.g. 0.05); ``None`` drops nothing.
    """

    reweight: bool = True
    power: float = 1.0
    low: float = 1.0 / 3.0
    high: float = 3.0
    drop_quantile: float | None = None

    def __post_init__(self) -> None:
        _check_weight_rule(self.power, self.low, self.high)
        if self.drop_quantile is not None and not 0 < self.drop_quantile < 1:
            raise LTAUInputError(f"drop_quantile must lie in (0, 1); got {self.drop_quantile}")

    def plan(self, table: DynamicsTable) -> TuningPlan:
        """The weights and drops for the configurations of ``table``."""
        mean, std = _check_table(table)
        dropped = (
            suspicious_configs(mean, std, self.drop_quantile)
            if self.drop_quantile is not None
            else np.zeros(mean.size, dtype=bool)
        )
        kept = np.flatnonzero(~dropped)
        weights = np.zeros(mean.size)
        if self.reweight:
            weights[kept] = hardness_weights(mean[kept], self.power, self.low, self.high)
        else:
            weights[kept] = 1.0
        return TuningPlan(weights, kept, np.flatnonzero(dropped))


def hardness_weights(
    mean_error: np.ndarray, power: float = 1.0, low: float = 1.0 / 3.0, high: float = 3.0
) -> np.ndarray:
    """Weights ``∝ (mean_error / median) ** power`` with mean exactly 1, each in ``[low, high]``.

    ``mean_error``: ``(n,)`` finite, positive. The bounds are met by one common scale factor
    ``c`` with ``mean(clip(c * raw, low, high)) = 1`` (the mean is monotone in ``c``).
    """
    _check_weight_rule(power, low, high)
    values = real_array(mean_error, "mean_error")
    if values.ndim != 1 or values.size == 0:
        raise LTAUInputError(f"mean_error must be a non-empty 1-D array; got {values.shape}")
    if not np.all(np.isfinite(values)) or values.min() <= 0:
        raise LTAUInputError("mean errors must be finite and positive to give weights")
    raw = (values / np.median(values)) ** power
    lower, upper = 0.0, 1.0
    while np.clip(upper * raw, low, high).mean() < 1.0:
        upper *= 2.0
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (lower + upper)
        if np.clip(middle * raw, low, high).mean() < 1.0:
            lower = middle
        else:
            upper = middle
    weights = np.clip(upper * raw, low, high)
    return weights / weights.mean()


def suspicious_configs(
    mean_error: np.ndarray, error_std: np.ndarray, quantile: float
) -> np.ndarray:
    """Boolean mask ``(n,)``: mean error above its ``1 - quantile`` quantile and relative
    variability ``error_std / mean_error`` below its median."""
    mean, std = paired_vectors(mean_error, error_std, names=("mean_error", "error_std"))
    if mean.min() <= 0 or std.min() < 0:
        raise LTAUInputError("mean errors must be positive and their std non-negative")
    if not (is_real(quantile) and 0 < quantile < 1):
        raise LTAUInputError(f"quantile must lie in (0, 1); got {quantile!r}")
    relative = std / mean
    return (mean > np.quantile(mean, 1.0 - quantile)) & (relative < np.median(relative))


def _check_weight_rule(power: float, low: float, high: float) -> None:
    """The weights' exponent ``power > 0`` and bounds ``0 < low <= 1 <= high < inf``."""
    positive_number(power, "power")
    if not (is_real(low) and is_real(high) and 0 < low <= 1 <= high < np.inf):
        raise LTAUInputError(f"need 0 < low <= 1 <= high; got low={low}, high={high}")


def _check_table(table: DynamicsTable) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(table, DynamicsTable) or len(table) == 0:
        raise LTAUInputError("give a non-empty per-configuration DynamicsTable")
    if np.any(table.n_epochs == 0):
        missing = np.flatnonzero(table.n_epochs == 0)
        raise LTAUInputError(
            f"{missing.size} configurations were never recorded (first: {missing[:5].tolist()})"
        )
    mean = np.asarray(table.mean_error, dtype=np.float64)
    if mean.min() <= 0:
        raise LTAUInputError("mean errors must be positive to give weights")
    return mean, np.asarray(table.error_std, dtype=np.float64)


__all__ = [
    "TuningPlan",
    "TuningStrategy",
    "hardness_weights",
    "suspicious_configs",
]
