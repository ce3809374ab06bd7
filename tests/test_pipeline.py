"""The force-field pipeline and `ltau demo --train/--test` on tiny EMT files (2 epochs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mace")

from ltau import ErrorLog, LTAUEstimator
from ltau.cli import main
from ltau.demo.emt_data import make_md_dataset, write_extxyz
from ltau.energy import open_energy_log


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ff")
    common = {"slab_size": (2, 2, 2), "progress": False, "frames_per_trajectory": 2}
    train = make_md_dataset(["Cu"], ["H"], 300.0, 12, seed=1, **common)
    test = make_md_dataset(["Cu"], ["H"], 300.0, 4, seed=2, **common)
    hot = make_md_dataset(["Cu"], ["H"], 1200.0, 4, seed=3, **common)
    for atoms in hot:  # an unlabelled set: OOD score only
        del atoms.arrays["REF_forces"]
    for name, atoms_list in (("train", train), ("test", test), ("hot", hot)):
        write_extxyz(atoms_list, folder / f"{name}.xyz")
    return folder


def test_demo_on_user_files_writes_report(files, tmp_path):
    out = tmp_path / "report"
    code = main(
        [
            *("demo", "--train", str(files / "train.xyz"), "--epochs", "2"),
            *("--test", f"in_domain={files / 'test.xyz'}", "--test", f"hot={files / 'hot.xyz'}"),
            *("--output-dir", str(out), "--calibration", "scale", "--models", "2"),
        ]
    )
    assert code == 0
    for name in ("report.html", "metrics.json", "model.pt", "estimator.h5", "errors.h5"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    in_domain, hot = report["sets"]["in_domain"], report["sets"]["hot"]
    assert report["training"]["epochs"] == 2 and report["training"]["n_models_pooled"] == 2
    # Validation holds out one whole MD run (2 frames of 9 atoms) of the 6 in the file.
    assert report["training"]["n_validation_runs"] == 1
    assert report["training"]["n_validation_configs"] == 2
    assert report["training"]["n_fit_atoms"] == 10 * 9
    with ErrorLog(out / "errors.h5") as log:  # two seeds' trajectories, pooled per atom
        assert log.n_samples == report["training"]["n_fit_atoms"]
        assert np.bincount(log.members).tolist() == [2, 2]
    chosen = report["chosen_on_validation"]
    skipped = chosen["skip_epochs"]  # burn-in candidates of 2 epochs per model: 0 or 1
    assert set(chosen["cv_crps"]) == {
        f"skip_epochs={s},k={k},distance_scale={d}"
        for s in (0, 1)
        for k in (5, 10, 20, 50)
        for d in ("absolute", "local")
    }
    best = min(chosen["cv_crps"], key=chosen["cv_crps"].get)
    scale = chosen["distance_scale"]
    assert best == f"skip_epochs={skipped},k={chosen['k']},distance_scale={scale}"
    estimator = LTAUEstimator.load(out / "estimator.h5")
    assert estimator.distance_scale == scale
    assert estimator.distributions_.n_observations.min() == 2 * (2 - skipped)
    assert estimator.metadata_["skip_epochs"] == skipped
    for key in ("spearman", "miscalibration_area", "coverage90", "force_rmse", "ence", "ause"):
        assert np.isfinite(in_domain[key])
    assert 0 <= in_domain["coverage90"] <= 1
    assert "force_rmse" not in hot and 0 <= hot["auroc_ood_score_vs_in_domain"] <= 1
    assert "png" in (out / "report.html").read_text()
    # The energy log: one sample per fit configuration, one row per epoch of each model.
    with open_energy_log(out / "energy_errors.h5") as energy_log:
        assert energy_log.n_samples == report["training"]["n_fit_configs"] == 10
        assert np.bincount(energy_log.members).tolist() == [2, 2]
        assert np.all(np.isfinite(energy_log.to_array()))
    energy_estimator = LTAUEstimator.load(out / "energy_estimator.h5")
    assert energy_estimator.metadata_["unit"] == "eV per structure"
    assert energy_estimator.n_features_in_ == estimator.n_features_in_


def test_demo_input_errors(files, tmp_path, capsys):
    assert main(["demo", "--test", f"x={files / 'test.xyz'}"]) == 2
    assert "--test needs --train" in capsys.readouterr().err
    assert main(["demo", "--train", str(files / "train.xyz")]) == 2
    assert "needs at least one --test" in capsys.readouterr().err
    args = ["demo", "--train", str(files / "train.xyz"), "--test", f"t={files / 'test.xyz'}"]
    assert main([*args, "--forces-key", "nope", "--output-dir", str(tmp_path)]) == 2
    assert "no forces under the key 'nope'" in capsys.readouterr().err
    assert main([*args, "--in-domain", "missing", "--output-dir", str(tmp_path)]) == 2
    assert "in-domain test set 'missing'" in capsys.readouterr().err
