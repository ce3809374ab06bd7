"""The built-in demo runs end to end and writes its report (a few epochs only)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from ltau import LTAUEstimator
from ltau.cli import main
from ltau.demo.tabular import K_CANDIDATES


@pytest.mark.parametrize("dataset", ["friedman", "diabetes"])
def test_demo_writes_report(tmp_path, dataset):
    assert (
        main(
            [
                "demo",
                "--task",
                "tabular",
                "--dataset",
                dataset,
                "--epochs",
                "4",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    for name in ("report.html", "metrics.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert 'src="data:image/png;base64,' in (tmp_path / "report.html").read_text()
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["n_epochs_recorded"] == 4
    for split in ("test", "shifted"):
        assert -1 <= report[split]["spearman_expected_vs_true_error"] <= 1
        assert 0 <= report[split]["coverage_0.9_interval"] <= 1
    assert 0 <= report["auroc_ood_score_shifted_vs_test"] <= 1
    # k and the burn-in: the best cross-validated CRPS of every pair tried on validation.
    scores = report["validation_cv_crps"]
    assert set(scores) == {
        f"skip_epochs={s},k={k},distance_scale={d}"
        for s in (0, 1, 2, 3)
        for k in K_CANDIDATES
        for d in ("absolute", "local")
    }
    skipped, k = report["skip_epochs_chosen_on_validation"], report["k_chosen_on_validation"]
    scale = report["distance_scale_chosen_on_validation"]
    assert min(scores, key=scores.get) == f"skip_epochs={skipped},k={k},distance_scale={scale}"
    estimator = LTAUEstimator.load(tmp_path / "estimator.h5")
    assert estimator.n_neighbors == k and estimator.metadata_["skip_epochs"] == skipped
    assert estimator.distance_scale == scale
    assert estimator.distributions_.n_samples == report["n_train"]
    assert estimator.distributions_.n_observations.min() == 4 - skipped
    assert estimator.calibrator_ is not None and estimator.widening_ is not None


def test_demo_rejects_bad_epochs(tmp_path, capsys):
    assert main(["demo", "--task", "tabular", "--epochs", "0", "--output-dir", str(tmp_path)]) == 2
    assert "epochs must be a positive integer" in capsys.readouterr().err
