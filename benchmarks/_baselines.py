"""Side-by-side comparison of LTAU with ensembles and with plain descriptor distance.

Every method is turned into a per-atom predicted distribution of the force-error norm on the
same bins, then given the same recalibration (fitted on the same validation split) and the same
metrics:

* ``ltau``: one model's LTAU estimator, with its own distance widening and calibration (see
  :func:`ltau.estimator.LTAUEstimator.calibrate`), in the same :class:`CalibratedTest` form;
* ``ensemble``: the spread of the M members' force vectors,
  ``u = sqrt(mean_m ||F_m - F_mean||^2)`` (eV/Å), read as an isotropic Gaussian force error
  with ``E||e||^2 = u^2``, i.e. ``||e||`` Maxwell-distributed with scale ``u / sqrt(3)``;
* ``distance``: the OOD score (mean distance to the k nearest training atoms) in place of
  ``u`` in the same Maxwell form (its unit is fixed by the calibration's scale);
* an ensemble's *energy* spread ``s`` (standard deviation of the M members' energies of a
  structure, eV) read as a Gaussian energy error, i.e. ``|E error|`` half-normal with scale
  ``s`` (:func:`half_normal_mass`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from ltau import metrics
from ltau.calibration import make_calibrator
from ltau.exceptions import LTAUInputError
from ltau.histogram import Bins

CONFIDENCE = 0.9


def ensemble_force_spread(forces: np.ndarray) -> np.ndarray:
    """Per-atom spread ``sqrt(mean_m ||F_m - F_mean||^2)`` of ``(M, n_atoms, 3)`` forces."""
    forces = np.asarray(forces, dtype=np.float64)
    if forces.ndim != 3 or forces.shape[2] != 3 or forces.shape[0] < 2:
        raise LTAUInputError(f"forces must have shape (M >= 2, n_atoms, 3); got {forces.shape}")
    deviation = forces - forces.mean(axis=0)
    return np.sqrt(np.mean(np.sum(deviation**2, axis=2), axis=0))


def maxwell_mass(scale: np.ndarray, bins: Bins) -> np.ndarray:
    """Bin masses ``(n, n_bins)`` of ``||e||`` for ``e ~ N(0, (u^2 / 3) I_3)`` with ``u = scale``.

    Mass below the first edge goes to the first bin and above the last edge to the last one,
    so rows sum to one.
    """
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise LTAUInputError("scales must be a 1-D array of positive finite numbers")
    a = scale[:, None] / np.sqrt(3.0)
    x = bins.edges[None, :] / a
    cdf = erf(x / np.sqrt(2)) - np.sqrt(2 / np.pi) * x * np.exp(-(x**2) / 2)
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    return np.maximum(np.diff(cdf, axis=1), 0.0)  # the CDF is monotone; guard rounding


def half_normal_mass(scale: np.ndarray, bins: Bins) -> np.ndarray:
    """Bin masses ``(n, n_bins)`` of ``|e|`` for ``e ~ N(0, s^2)`` with ``s = scale``
    (first and last bins take the mass outside the edges, as in :func:`maxwell_mass`)."""
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise LTAUInputError("scales must be a 1-D array of positive finite numbers")
    cdf = erf(bins.edges[None, :] / (np.sqrt(2.0) * scale[:, None]))
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    return np.maximum(np.diff(cdf, axis=1), 0.0)


def structure_max(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each structure's largest per-atom value, ``(n_structures,)``: ``values`` ``(n_atoms,)``,
    ``groups`` the structure ``0 .. n_structures - 1`` of each atom."""
    groups = np.asarray(groups, dtype=np.int64)
    if groups.shape != np.shape(values) or groups.size == 0 or groups.min() < 0:
        raise LTAUInputError("groups must be one non-negative structure label per value")
    result = np.full(int(groups.max()) + 1, -np.inf)
    np.maximum.at(result, groups, values)
    return result


@dataclass
class CalibratedTest:
    """Calibrated per-atom predictions for a test set (errors in eV/Å)."""

    expected_error: np.ndarray
    pit: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    exceedance: np.ndarray
    mass: np.ndarray
    bins: Bins


def calibrate_and_predict(
    validation_mass: np.ndarray,
    validation_errors: np.ndarray,
    test_mass: np.ndarray,
    test_errors: np.ndarray,
    bins: Bins,
    atol: float,
    method: str = "isotonic",
) -> CalibratedTest:
    """Fit the recalibration on validation, then apply it to the test distributions."""
    calibrator = make_calibrator(method)
    calibrator.fit(validation_mass, bins, validation_errors)
    lower, upper = calibrator.central_interval(test_mass, bins, CONFIDENCE)
    mass, rebinned = calibrator.rebinned(test_mass, bins)
    return CalibratedTest(
        expected_error=calibrator.expected_error(test_mass, bins),
        pit=calibrator.pit(test_mass, bins, test_errors),
        lower=lower,
        upper=upper,
        exceedance=calibrator.exceedance(test_mass, bins, atol),
        mass=mass,
        bins=rebinned,
    )


def metrics_of(test: CalibratedTest, errors: np.ndarray, atol: float) -> dict[str, float | None]:
    """:func:`ltau.metrics.uq_metrics` of one method's calibrated test predictions."""
    return metrics.uq_metrics(
        errors,
        test.expected_error,
        lower=test.lower,
        upper=test.upper,
        confidence=CONFIDENCE,
        pit=test.pit,
        exceedance=test.exceedance,
        atol=atol,
        mass=test.mass,
        bins=test.bins,
    )
