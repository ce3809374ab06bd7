"""LTAU versus a MACE ensemble and plain descriptor distance: uncertainty quality and cost.

For each dataset (acac DFT: train_300K -> test_MD_300K / test_MD_600K; the built-in EMT set:
train -> test_in_domain / test_shifted), M MACE models are trained with different seeds on the
same 90% of the training file, all recording their per-atom force errors into one log. Then,
on the same test atoms and with the same isotonic recalibration fitted on the same 10%
validation split (see ltau.applications.ensembles for how each method becomes a distribution):

* ltau        - one model (member 0) and its own error trajectories;
* ltau_pooled - member 0's descriptors, the M models' trajectories pooled per atom;
* ensemble    - spread of the M force vectors; its target is the ensemble mean's error;
* distance    - the mean distance to the k nearest training atoms alone.

The targets of ltau, ltau_pooled and distance are member 0's force errors. Costs are measured
in the same run: training wall time (M models / one model with logging), inference time per
atom (M forward passes / one forward pass plus the LTAU prediction), and the memory needed at
inference (M models' parameters / one model's parameters plus the estimator's arrays).

Usage::

    python benchmarks/ensemble.py                       # both datasets, M=5 (about 30 min)
    python benchmarks/ensemble.py --datasets emt --members 2 --epochs 3   # a quick check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from ase.data import atomic_numbers

from ltau import ErrorRecorder, LTAUEstimator, metrics
from ltau.applications.ensembles import (
    calibrate_and_predict,
    ensemble_force_spread,
    maxwell_mass,
    metrics_of,
)
from ltau.applications.forcefield import split_validation
from ltau.atomistic.oracle import default_splits, isolated_atom_energies
from ltau.atomistic.structures import read_structures
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace

ACAC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
K_CANDIDATES = (5, 10, 20, 50)
METHODS = ("ltau", "ltau_pooled", "ensemble", "distance")


def load_dataset(name: str, seed: int):
    """``(train, {in_domain, shifted}, E0s by atomic number)``."""
    if name == "acac":
        train = read_structures(ACAC / "train_300K.xyz")
        tests = {
            "in_domain": read_structures(ACAC / "test_MD_300K.xyz"),
            "shifted": read_structures(ACAC / "test_MD_600K.xyz"),
        }
        isolated = read_structures(
            ACAC / "isolated_atoms.xyz", forces_key=None, require_forces=False
        )
        e0s = {
            int(a.numbers[0]): float(e)
            for a, e in zip(isolated.atoms, isolated.energies, strict=True)
        }
        return train, tests, e0s
    splits = default_splits(seed=seed)
    keys = {"energy_key": "REF_energy", "forces_key": "REF_forces"}
    train = read_structures(splits["train"], **keys)
    tests = {
        "in_domain": read_structures(splits["test_in_domain"], **keys),
        "shifted": read_structures(splits["test_shifted"], **keys),
    }
    elements = sorted({s for a in splits["train"] for s in a.get_chemical_symbols()})
    e0s = {atomic_numbers[e]: v for e, v in isolated_atom_energies(elements).items()}
    return train, tests, e0s


def run_dataset(name: str, members: int, epochs: int, seed: int, output_dir: Path) -> dict:
    train, tests, e0s = load_dataset(name, seed)
    fit_set, validation = split_validation(train, 0.1, seed)
    recorder = ErrorRecorder(
        fit_set.n_atoms, log_path=output_dir / f"{name}_errors.h5", overwrite=True
    )
    models, train_seconds = [], []
    for member in range(members):
        started = time.perf_counter()
        models.append(
            train_mace(
                fit_set,
                epochs=epochs,
                settings=MACESettings(seed=seed + member),
                isolated_atom_energies=e0s,
                recorder=recorder,
                member=member,
            )
        )
        train_seconds.append(time.perf_counter() - started)

    sets = {"validation": validation, **tests}
    evaluations, forward_seconds = {}, {}
    for set_name, structures in sets.items():
        evaluations[set_name], forward_seconds[set_name] = [], []
        for model in models:
            started = time.perf_counter()
            evaluations[set_name].append(evaluate_mace(model, structures))
            forward_seconds[set_name].append(time.perf_counter() - started)
    fit_descriptors = evaluate_mace(models[0], fit_set).descriptors

    single = recorder.distributions(members=[0], n_bins=100)
    pooled = recorder.distributions(bins=single.bins)
    recorder.close()
    validation_0 = evaluations["validation"][0]
    spearman_by_k = {
        k: metrics.spearman(
            LTAUEstimator(k)
            .fit(fit_descriptors, single)
            .predict(validation_0.descriptors)
            .expected_error,
            validation_0.force_errors,
        )
        for k in K_CANDIDATES
    }
    k = max(spearman_by_k, key=spearman_by_k.get)
    estimators = {
        "ltau": LTAUEstimator(k).fit(fit_descriptors, single),
        "ltau_pooled": LTAUEstimator(k).fit(fit_descriptors, pooled),
    }
    bins = single.bins
    atol = float(np.quantile(validation_0.force_errors, 0.9))

    def distributions_of(set_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per method: (mass on ``bins``, target errors)."""
        runs = evaluations[set_name]
        descriptors, own_errors = runs[0].descriptors, runs[0].force_errors
        out = {}
        for method, estimator in estimators.items():
            raw = estimator.predict(descriptors, return_pdf=True, calibrated=False)
            out[method] = (raw.pdf * bins.widths, own_errors)
        forces = np.stack([run.forces for run in runs])
        mean_error = np.linalg.norm(forces.mean(axis=0) - sets[set_name].forces, axis=1)
        spread = np.maximum(ensemble_force_spread(forces), 1e-12)
        out["ensemble"] = (maxwell_mass(spread, bins), mean_error)
        ood = estimators["ltau"].predict(descriptors, calibrated=False).ood_score
        out["distance"] = (maxwell_mass(np.maximum(ood, 1e-12), bins), own_errors)
        return out

    validation_distributions = distributions_of("validation")
    results: dict[str, dict] = {method: {} for method in METHODS}
    curves: dict[str, dict] = {}
    for set_name in tests:
        test_distributions = distributions_of(set_name)
        curves[set_name] = {}
        for method in METHODS:
            calibrated = calibrate_and_predict(
                *validation_distributions[method], *test_distributions[method], bins, atol
            )
            errors = test_distributions[method][1]
            results[method][set_name] = metrics_of(calibrated, errors, atol)
            curves[set_name][method] = (calibrated, errors)

    # Inference cost on the in-domain set: M forward passes vs one plus the LTAU prediction.
    in_domain = evaluations["in_domain"][0]
    estimators["ltau"].calibrate(validation_0.descriptors, validation_0.force_errors)
    started = time.perf_counter()
    estimators["ltau"].predict(in_domain.descriptors, atol=atol, confidence=0.9)
    ltau_seconds = time.perf_counter() - started
    n_atoms = tests["in_domain"].n_atoms
    single_cost = forward_seconds["in_domain"][0] + ltau_seconds
    parameters = sum(p.numel() * p.element_size() for p in models[0].model.parameters())
    estimator_bytes = single.counts.nbytes + fit_descriptors.nbytes
    _figures(output_dir, name, curves)
    return {
        "methods": results,
        "k_chosen_on_validation": k,
        "atol": atol,
        "members": members,
        "epochs": epochs,
        "train_seconds": train_seconds,
        "train_cost_ratio": sum(train_seconds) / train_seconds[0],
        "inference_us_per_atom_ltau": 1e6 * single_cost / n_atoms,
        "inference_us_per_atom_ensemble": 1e6 * sum(forward_seconds["in_domain"]) / n_atoms,
        "inference_cost_ratio": sum(forward_seconds["in_domain"]) / single_cost,
        "ltau_predict_us_per_atom": 1e6 * ltau_seconds / n_atoms,
        "inference_memory_ratio": members * parameters / (parameters + estimator_bytes),
        "force_rmse_member0": {s: metrics.rmse(evaluations[s][0].force_errors) for s in tests},
    }


def _figures(output_dir: Path, name: str, curves: dict) -> None:
    """Sparsification, quantile-calibration and predicted-vs-true figures per test set."""
    n_sets = len(curves)
    figure, axes = plt.subplots(2, n_sets, figsize=(5 * n_sets, 8), squeeze=False)
    levels = np.linspace(0, 1, 101)
    for column, (set_name, per_method) in enumerate(curves.items()):
        sparsification, calibration = axes[0, column], axes[1, column]
        for method, (calibrated, errors) in per_method.items():
            fractions, model, oracle = _sparsification(calibrated.expected_error, errors)
            sparsification.plot(fractions, model, label=method)
            observed = np.searchsorted(np.sort(calibrated.pit), levels, side="right")
            calibration.plot(levels, observed / calibrated.pit.size, label=method)
        sparsification.plot(fractions, oracle, "k--", label="oracle")
        sparsification.set_title(f"{name} {set_name}: sparsification")
        sparsification.set_xlabel("fraction of atoms removed (most uncertain first)")
        sparsification.set_ylabel("mean true error of the rest / overall mean")
        calibration.plot([0, 1], [0, 1], "k--", lw=1)
        calibration.set_title(f"{name} {set_name}: quantile calibration (calibrated)")
        calibration.set_xlabel("predicted quantile level")
        calibration.set_ylabel("observed fraction below it")
        sparsification.legend()
        calibration.legend()
    figure.tight_layout()
    figure.savefig(output_dir / f"{name}_sparsification_calibration.png", dpi=90)
    plt.close(figure)

    figure, axes = plt.subplots(n_sets, len(METHODS), figsize=(16, 4 * n_sets), squeeze=False)
    for row, (set_name, per_method) in enumerate(curves.items()):
        for column, (method, (calibrated, errors)) in enumerate(per_method.items()):
            axis = axes[row, column]
            axis.loglog(calibrated.expected_error, errors, ".", ms=1.5, alpha=0.3)
            low, high = max(errors[errors > 0].min(), 1e-4), errors.max()
            axis.plot([low, high], [low, high], "k--", lw=1)
            axis.set_title(f"{set_name}: {method}")
            axis.set_xlabel("predicted expected error (eV/Å)")
            axis.set_ylabel("true error (eV/Å)")
    figure.tight_layout()
    figure.savefig(output_dir / f"{name}_predicted_vs_true.png", dpi=80)
    plt.close(figure)


def _sparsification(uncertainty: np.ndarray, errors: np.ndarray):
    curve = metrics.sparsification_curve(uncertainty, errors)
    return curve["fraction_removed"], curve["model"], curve["oracle"]


def markdown_table(report: dict) -> str:
    lines = []
    for dataset, values in report["datasets"].items():
        lines.append(
            f"\n**{dataset}** (M = {values['members']}, {values['epochs']} epochs, "
            f"k = {values['k_chosen_on_validation']}; train cost ratio "
            f"{values['train_cost_ratio']:.2f}, inference cost ratio "
            f"{values['inference_cost_ratio']:.2f})\n"
        )
        lines.append(
            "| method | test set | Spearman | AUROC err>atol | miscal. area | cov. 90% | NLL | CRPS | AUSE |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for method, per_set in values["methods"].items():
            for set_name, m in per_set.items():
                cells = [
                    m["spearman"],
                    m["auroc_error_flag"],
                    m["miscalibration_area"],
                    m["coverage90"],
                    m["nll"],
                    m["crps"],
                    m["ause"],
                ]
                lines.append(
                    f"| {method} | {set_name} | "
                    + " | ".join("–" if c is None else f"{c:.3f}" for c in cells)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=("acac", "emt"), default=["acac", "emt"])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "ensemble"
    )
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error("--members must be at least 2 (an ensemble)")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {"datasets": {}}
    for name in args.datasets:
        report["datasets"][name] = run_dataset(
            name, args.members, args.epochs, args.seed, args.output_dir
        )
    (args.output_dir / "table.md").write_text(markdown_table(report))
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2))
    flat = {
        "train_cost_ratio": {d: v["train_cost_ratio"] for d, v in report["datasets"].items()},
        "inference_cost_ratio": {
            d: v["inference_cost_ratio"] for d, v in report["datasets"].items()
        },
        **{d: v["methods"] for d, v in report["datasets"].items()},
    }
    print(markdown_table(report))
    print(json.dumps(flat))
    return report


if __name__ == "__main__":
    main()
