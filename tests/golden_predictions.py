"""Predictions pinned to those of ltau 0.1.0 before the per-call path was reworked (issue 15).

:func:`golden_cases` fits three estimators on fixed synthetic data (the MD-step configuration
of local scales, isotonic calibration with the distance widening and structures as groups; inverse-distance
weights with a scale calibration; plain uniform weights uncalibrated) and predicts every
statistic. ``python tests/golden_predictions.py`` writes them to
``tests/data/golden_predictions.npz``; that file was written by the code before the rework
(commit 5128cb0), and ``tests/test_fast_paths.py`` checks that today's predictions equal it.
It was rewritten once since, when the distance widening's fit gained its floor on the total
exponent (``ltau.calibration.MIN_TOTAL_EXPONENT``, issue 17), which changes the ``md_step``
case's fitted exponents only: with that floor set to 0, today's code still reproduced the
5128cb0 file to 1e-9 in every case before it was rewritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ltau_reference import clustered

from ltau import ErrorDistributions, LTAUEstimator

GOLDEN_FILE = Path(__file__).parent / "data" / "golden_predictions.npz"
_STATISTICS = (
    "expected_error",
    "exceedance",
    "quantiles",
    "interval_lower",
    "interval_upper",
    "pdf",
    "ood_score",
    "resolution",
)


def golden_cases() -> dict[str, np.ndarray]:
    """Every statistic of the three configurations, keyed ``"<case>/<statistic>"``."""
    rng = np.random.default_rng(2026)
    points, labels, centres = clustered(rng, n_clusters=8, per_cluster=60, dim=16)
    scale = np.exp(rng.uniform(-2.0, 1.0, centres.shape[0]))[labels]
    errors = np.abs(rng.normal(size=(labels.size, 12))) * scale[:, None]
    distributions = ErrorDistributions.from_errors(errors[:400], n_bins=40)
    held_out, held_out_errors = points[400:], np.abs(rng.normal(size=80)) * scale[400:]
    queries = (centres[rng.integers(0, 8, 30)] + rng.normal(scale=1.5, size=(30, 16))).astype(
        np.float32
    )
    groups = np.arange(30) // 15
    cases = {
        "md_step": (
            LTAUEstimator(6, distance_scale="local"),
            {"method": "isotonic", "groups": np.arange(80) // 10},
            {"groups": groups},
        ),
        "distance_scale": (
            LTAUEstimator(5, weights="distance"),
            {"method": "scale", "widen": False},
            {},
        ),
        "uncalibrated": (LTAUEstimator(7), None, {}),
    }
    results = {}
    for name, (estimator, calibration, options) in cases.items():
        estimator.fit(points[:400], distributions)
        if calibration is not None:
            estimator.calibrate(held_out, held_out_errors, **calibration)
        prediction = estimator.predict(
            queries,
            atol=(0.05, 0.4),
            quantiles=(0.1, 0.5, 0.9),
            confidence=0.9,
            return_pdf=True,
            **options,
        )
        for statistic in _STATISTICS:
            results[f"{name}/{statistic}"] = np.asarray(getattr(prediction, statistic))
    return results


if __name__ == "__main__":
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN_FILE, **golden_cases())
