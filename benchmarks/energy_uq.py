"""Energy uncertainty on acac: kNN over structure descriptors against composing per-atom
force-error distributions, chosen on validation; the chosen route measured on the test sets.

Trains ltau's small MACE on train_300K (10% held out as the validation split) with both logs
(per-atom force errors, per-configuration energy errors in eV per structure), then runs the
pipeline (its ``energy`` block per test set: ``ltau_expected_energy_error`` against the true
``|E_pred - E_ref|``: Spearman, miscalibration area, cov90). The routes are compared on the
validation split only, by 2-fold cross-validation over its structures (fit on one half, score
on the other):

* ``knn``: an LTAUEstimator over training structures' mean descriptors and their logged
  energy-error distributions (k by CRPS, widened and calibrated on the fitting half);
* ``composition``: the sum over a structure's atoms of their calibrated expected force errors
  (eV/Å; a ranking score only, Spearman is scale-free);
* ``distance``: the structure's mean-descriptor distance to its k nearest training structures
  (the energy estimator's OOD score, ``ltau_energy_ood_score``).

Both routes are also reported on the tests, for information. Usage::

    python benchmarks/energy_uq.py --epochs 20      # about 6 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ltau.atomistic.pipeline import run_pipeline, split_validation
from ltau.atomistic.structures import read_isolated_atom_energies, read_structures
from ltau.energy import (
    ENERGY_LOG_NAME,
    energy_errors,
    energy_recorder,
    fit_energy_estimator,
    structure_descriptors,
)
from ltau.estimator import LTAUEstimator
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace
from ltau.metrics import spearman
from ltau.recording import ErrorRecorder

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"


def route_scores(
    force_estimator: LTAUEstimator, energy_estimator: LTAUEstimator, evaluation, structures
) -> dict[str, np.ndarray]:
    """Per-structure scores of ``structures`` (model outputs ``evaluation``) by the
    composition and distance routes, ``(n_structures,)`` each."""
    groups = structures.index.configuration_of_atoms
    per_atom = force_estimator.predict(evaluation.descriptors, groups=groups).expected_error
    queries = structure_descriptors(evaluation.descriptors, groups)
    return {
        "composition": np.bincount(groups, weights=per_atom),
        "distance": energy_estimator.predict(queries).ood_score,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "energy_uq"
    )
    args = parser.parse_args(argv)
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train = read_structures(args.data / "train_300K.xyz")
    tests = {
        name: read_structures(args.data / f"{name}.xyz")
        for name in ("test_MD_300K", "test_MD_600K")
    }
    e0s = read_isolated_atom_energies(args.data / "isolated_atoms.xyz", energy_key="energy")
    fit_set, validation = split_validation(train, 0.1, args.seed)
    settings = MACESettings(seed=args.seed)
    with (
        ErrorRecorder(fit_set.n_atoms, log_path=out / "errors.h5", overwrite=True) as forces,
        energy_recorder(len(fit_set.atoms), out / ENERGY_LOG_NAME, overwrite=True) as energies,
    ):
        model = train_mace(
            fit_set,
            epochs=args.epochs,
            settings=settings,
            isolated_atom_energies=e0s,
            recorder=forces,
            energy_recorder=energies,
        )
        report = run_pipeline(
            lambda s, progress: evaluate_mace(model, s, progress=progress),
            forces,
            fit_set,
            validation,
            tests,
            out,
            training={
                "settings": vars(settings),
                "epoch_seconds_mean": float(np.mean(model.epoch_seconds)),
            },
            in_domain="test_MD_300K",
            energy_log=energies,
        )
        skip = report["chosen_on_validation"]["skip_epochs"]
        energies_centring = energies.centring
        force_estimator = LTAUEstimator.load(out / "estimator.h5")
        energy_estimator = LTAUEstimator.load(out / "energy_estimator.h5")
        fit_eval = evaluate_mace(model, fit_set, progress=False)
        train_queries = structure_descriptors(
            fit_eval.descriptors, fit_set.index.configuration_of_atoms
        )
        distributions = energies.distributions(n_bins=100, skip_epochs=skip)
        valid_eval = evaluate_mace(model, validation, progress=False)
        valid_queries = structure_descriptors(
            valid_eval.descriptors, validation.index.configuration_of_atoms
        )
        valid_errors = energy_errors(valid_eval.energies, validation.energies)
        others = route_scores(force_estimator, energy_estimator, valid_eval, validation)
        # 2-fold cross-validation of the kNN route on the validation structures.
        halves = np.array_split(np.random.default_rng(args.seed).permutation(valid_errors.size), 2)
        knn_cv = np.empty(valid_errors.size)
        for fit_half, score_half in (halves, halves[::-1]):
            estimator, _ = fit_energy_estimator(
                train_queries, distributions, valid_queries[fit_half], valid_errors[fit_half]
            )
            knn_cv[score_half] = estimator.predict(valid_queries[score_half]).expected_error
        validation_spearman = {
            "knn": float(np.mean([spearman(knn_cv[h], valid_errors[h]) for h in halves])),
            **{
                name: float(np.mean([spearman(v[h], valid_errors[h]) for h in halves]))
                for name, v in others.items()
            },
        }
        on_tests = {}
        for name, structures in tests.items():
            evaluation = evaluate_mace(model, structures, progress=False)
            truth = energy_errors(evaluation.energies, structures.energies)
            scores = route_scores(force_estimator, energy_estimator, evaluation, structures)
            on_tests[name] = {route: spearman(v, truth) for route, v in scores.items()}
    summary = {
        "epochs": args.epochs,
        "seed": args.seed,
        "validation_structures": len(validation.atoms),
        "validation_spearman_2fold": validation_spearman,
        "chosen_route": max(validation_spearman, key=validation_spearman.__getitem__),
        "energy_k": report["chosen_on_validation"]["energy"]["k"],
        "energy_centring": energies_centring,
        "epoch_seconds_mean": report["training"]["epoch_seconds_mean"],
    }
    for name in tests:
        block = report["sets"][name]["energy"]
        for metric in ("spearman", "miscalibration_area", "coverage90", "energy_mae"):
            summary[f"energy_{metric}_{name}"] = block[metric]
        for route, value in on_tests[name].items():
            summary[f"{route}_spearman_{name}"] = value
        summary[f"force_spearman_{name}"] = report["sets"][name]["spearman"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
