"""Ensemble spread, the Maxwell form of a scalar uncertainty, and the shared metric pipeline."""

from __future__ import annotations

import numpy as np
import pytest
from _baselines import (
    calibrate_and_predict,
    ensemble_force_spread,
    half_normal_mass,
    maxwell_mass,
    metrics_of,
    structure_max,
)
from scipy import stats

from ltau import Bins, LTAUInputError


def calibrated_metrics(val_mass, val_errors, test_mass, test_errors, bins, atol):
    test = calibrate_and_predict(val_mass, val_errors, test_mass, test_errors, bins, atol)
    return metrics_of(test, test_errors, atol)


def test_ensemble_spread_is_the_rms_deviation_of_member_force_vectors():
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(5, 7, 3))
    direct = np.array(
        [
            np.sqrt(
                np.mean([np.sum((forces[m, i] - forces[:, i].mean(axis=0)) ** 2) for m in range(5)])
            )
            for i in range(7)
        ]
    )
    np.testing.assert_allclose(ensemble_force_spread(forces), direct)
    # Two members at +f and -f: the deviation of each is |f|.
    pair = np.array([[[3.0, 4.0, 0.0]], [[-3.0, -4.0, 0.0]]])
    np.testing.assert_allclose(ensemble_force_spread(pair), [5.0])


def test_maxwell_mass_matches_scipy():
    bins = Bins.log(1e-3, 10.0, 50)
    scale = np.array([0.05, 0.3, 1.0])
    mass = maxwell_mass(scale, bins)
    np.testing.assert_allclose(mass.sum(axis=1), 1.0)
    cdf = stats.maxwell.cdf(bins.edges[None, :], scale=scale[:, None] / np.sqrt(3))
    np.testing.assert_allclose(mass[:, 1:-1], np.diff(cdf, axis=1)[:, 1:-1], atol=1e-12)
    # E||e||^2 = u^2: the second moment of the (fine-binned) distribution is close to u^2.
    fine = Bins.linear(0.0, 10.0, 20000)
    second = maxwell_mass(np.array([0.7]), fine) @ fine.centers**2
    np.testing.assert_allclose(second, [0.49], rtol=1e-3)


def test_half_normal_mass_matches_scipy():
    bins = Bins.log(1e-3, 10.0, 50)
    scale = np.array([0.02, 0.4, 2.0])
    mass = half_normal_mass(scale, bins)
    np.testing.assert_allclose(mass.sum(axis=1), 1.0)
    cdf = stats.halfnorm.cdf(bins.edges[None, :], scale=scale[:, None])
    np.testing.assert_allclose(mass[:, 1:-1], np.diff(cdf, axis=1)[:, 1:-1], atol=1e-12)


def test_structure_max():
    values = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    np.testing.assert_array_equal(structure_max(values, [0, 0, 1, 2, 2]), [0.5, 0.2, 0.9])


def test_calibrated_metrics_rank_a_good_uncertainty_above_noise():
    rng = np.random.default_rng(1)
    bins = Bins.log(1e-3, 20.0, 60)

    def draw(n):
        scale = np.exp(rng.uniform(-2, 0.5, n))
        errors = np.linalg.norm(rng.normal(size=(n, 3)) * scale[:, None] / np.sqrt(3), axis=1)
        return scale, errors

    (val_scale, val_errors), (test_scale, test_errors) = draw(3000), draw(3000)
    good = calibrated_metrics(
        maxwell_mass(val_scale, bins),
        val_errors,
        maxwell_mass(test_scale, bins),
        test_errors,
        bins,
        atol=1.0,
    )
    noise = rng.permutation(test_scale)
    bad = calibrated_metrics(
        maxwell_mass(rng.permutation(val_scale), bins),
        val_errors,
        maxwell_mass(noise, bins),
        test_errors,
        bins,
        atol=1.0,
    )
    assert good["spearman"] > 0.5 > abs(bad["spearman"])
    assert good["auroc_error_flag"] > 0.8 and abs(bad["auroc_error_flag"] - 0.5) < 0.1
    assert good["miscalibration_area"] < 0.03 and 0.85 < good["coverage90"] < 0.95
    assert good["crps"] < bad["crps"] and good["nll"] < bad["nll"] and good["ause"] < bad["ause"]


def test_bad_inputs():
    with pytest.raises(LTAUInputError, match="shape \\(M >= 2, n_atoms, 3\\)"):
        ensemble_force_spread(np.zeros((1, 4, 3)))
    with pytest.raises(LTAUInputError, match="positive finite"):
        maxwell_mass(np.array([0.1, 0.0]), Bins.log(1e-3, 1.0, 5))
    with pytest.raises(LTAUInputError, match="positive finite"):
        half_normal_mass(np.array([np.nan]), Bins.log(1e-3, 1.0, 5))
    with pytest.raises(LTAUInputError, match="one non-negative structure label"):
        structure_max(np.zeros(3), [0, 1])
    with pytest.raises(LTAUInputError, match="one non-negative structure label"):
        structure_max(np.zeros(2), [0, -1])
