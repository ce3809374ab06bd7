"""LTAU versus a MACE ensemble and plain descriptor distance: uncertainty quality, cost and the
ablation of LTAU's variants, over several seeds.

For each dataset (acac DFT: train_300K -> test_MD_300K / test_MD_600K; the built-in EMT set:
train -> test_in_domain / test_shifted), M MACE models are trained with seeds ``seed + m`` on
the same 90% of the training file, all recording their per-atom force errors into one log.
Every choice is made on the remaining 10% (the validation split; whole MD runs and relaxations
where the frames name theirs, as the EMT ones do): the burn-in and k (2-fold cross-validated
CRPS over 5 shuffles, folds of whole runs, else structures; for ``ltau_published`` k by the Spearman of the raw
expected error), the distance widening, the isotonic calibration and ``atol`` (the 90%
quantile of validation errors). Methods, on the same test atoms:

* ``ltau``                 - one model and its own error trajectories, with the burn-in, k and
  the distance scale (absolute, or relative to the training set's local spacing) chosen by
  cross-validated CRPS on validation and the distance widening fitted on the atom and
  structure OOD scores (the estimator's default calibration);
* ``ltau_absolute_distance`` - the same with absolute distances only (the default until the
  local scale was added);
* ``ltau_all_epochs``      - the default with every epoch kept (k and scale chosen the same way);
* ``ltau_atom_widening``   - the default, widened with the atom OOD score only (no structures);
* ``ltau_published``       - the method as published: kNN mixture, then isotonic calibration;
* ``distance``             - the model's mean distance to the k nearest training atoms alone;
* ``ensemble``             - spread of the M force vectors (target: the ensemble mean's error).

The single-model methods are repeated for models 0 .. n_seeds-1 (each as "the" model, with its
own trajectories and descriptors); the ensemble is the one M-member ensemble. Costs are
measured in the same run: training wall time (M models / one model with logging), inference
time per atom (M forward passes / one forward pass plus the LTAU prediction) and the memory
footprint at inference. Trained models and their log are kept in ``--work-dir/<dataset>`` (default
``OUTPUT/work``) and reused by a later run with the same settings (``--retrain``: train afresh).

Usage::

    python benchmarks/ensemble.py                       # both datasets, M=5, 5 seeds
    python benchmarks/ensemble.py --datasets emt --members 2 --seeds 2 --epochs 3   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _baselines import (
    CONFIDENCE,
    CalibratedTest,
    calibrate_and_predict,
    ensemble_force_spread,
    maxwell_mass,
    metrics_of,
)
from ase.data import atomic_numbers

from ltau import ErrorLog, ErrorRecorder, LTAUEstimator, metrics
from ltau.atomistic.pipeline import VALIDATION_GROUP_KEYS, run_groups, split_validation
from ltau.atomistic.structures import read_structures
from ltau.demo.emt_data import default_splits, isolated_atom_energies
from ltau.energy import ENERGY_LOG_NAME, energy_recorder
from ltau.integrations.mace import MACESettings, TrainedMACE, evaluate_mace, train_mace
from ltau.selection import (
    DISTANCE_SCALES,
    K_CANDIDATES,
    burn_in_candidates,
    choose_configuration,
)

ACAC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
VARIANTS = {  # LTAU variant: (burn-in chosen, distance widening, structures as groups, scales)
    "ltau": (True, True, True, DISTANCE_SCALES),
    "ltau_absolute_distance": (True, True, True, ("absolute",)),
    "ltau_all_epochs": (False, True, True, DISTANCE_SCALES),
    "ltau_atom_widening": (True, True, False, DISTANCE_SCALES),
    "ltau_published": (False, False, False, ("absolute",)),
}
METHODS = (*VARIANTS, "distance", "ensemble")
TABLE_METRICS = {
    "spearman": "Spearman",
    "auroc_error_flag": "AUROC err>atol",
    "ause": "AUSE",
    "miscalibration_area": "miscal. area",
    "coverage90": "cov. 90%",
    "crps": "CRPS",
    "auroc_shifted_vs_in_domain": "AUROC shifted vs in-domain",
}


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


def train_members(
    name: str, train, e0s, members: int, epochs: int, seed: int, work_dir: Path
) -> tuple[list, Path, list[float]]:
    """Train M members on the fit split, all logging into one error log, or reuse the models
    and log a previous run with the same settings left in ``work_dir``.

    Returns ``(models, log path, training seconds per member)``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": name,
        "epochs": epochs,
        "seed": seed,
        "validation_fraction": 0.1,
        "validation_group_keys": list(VALIDATION_GROUP_KEYS),
        "energy_log": ENERGY_LOG_NAME,
    }
    record = work_dir / "training.json"
    log_path = work_dir / "errors.h5"
    energy_log_path = work_dir / ENERGY_LOG_NAME
    model_paths = [work_dir / f"model{member}.pt" for member in range(members)]
    kept = [record, log_path, energy_log_path, *model_paths]
    if all(path.exists() for path in kept):
        stored = json.loads(record.read_text())
        if stored["settings"] == settings and len(stored["train_seconds"]) >= members:
            print(f"{name}: reusing the {members} models trained earlier in {work_dir}")
            models = [TrainedMACE.load(path) for path in model_paths]
            return models, log_path, stored["train_seconds"][:members]
    fit_set, _ = split_validation(train, 0.1, seed)
    recorder = ErrorRecorder(fit_set.n_atoms, log_path=log_path, overwrite=True)
    energies = energy_recorder(len(fit_set.atoms), energy_log_path, overwrite=True)
    models, train_seconds = [], []
    for member in range(members):
        started = time.perf_counter()
        model = train_mace(
            fit_set,
            epochs=epochs,
            settings=MACESettings(seed=seed + member),
            isolated_atom_energies=e0s,
            recorder=recorder,
            member=member,
            energy_recorder=energies,
        )
        train_seconds.append(time.perf_counter() - started)
        model.save(model_paths[member])
        models.append(model)
    recorder.close()
    energies.close()
    record.write_text(json.dumps({"settings": settings, "train_seconds": train_seconds}))
    return models, log_path, train_seconds


def calibrated_ltau(
    estimator: LTAUEstimator, evaluation, groups: np.ndarray | None, atol: float
) -> CalibratedTest:
    """An LTAU estimator's calibrated predictions for labelled atoms, as the ensemble
    comparison's :class:`CalibratedTest` (the estimator's own widening and calibration)."""
    prediction = estimator.predict(
        evaluation.descriptors, groups=groups, atol=atol, confidence=CONFIDENCE, return_pdf=True
    )
    return CalibratedTest(
        expected_error=prediction.expected_error,
        pit=estimator.probability_integral_transform(
            evaluation.descriptors, evaluation.force_errors, groups=groups
        ),
        lower=prediction.interval_lower,
        upper=prediction.interval_upper,
        exceedance=prediction.exceedance[:, 0],
        mass=prediction.pdf * prediction.bins.widths,
        bins=prediction.bins,
    )


def run_dataset(
    name: str, members: int, epochs: int, seed: int, n_seeds: int, output_dir: Path, work_dir: Path
) -> dict:
    train, tests, e0s = load_dataset(name, seed)
    fit_set, validation = split_validation(train, 0.1, seed)
    models, log_path, train_seconds = train_members(
        name, train, e0s, members, epochs, seed, work_dir / name
    )
    sets = {"validation": validation, **tests}
    groups = {set_name: s.index.configuration_of_atoms for set_name, s in sets.items()}
    validation_runs = run_groups(validation)[groups["validation"]]  # cross-validation folds
    evaluations, forward_seconds = {}, {}
    for set_name, structures in sets.items():
        evaluations[set_name], forward_seconds[set_name] = [], []
        for model in models:
            started = time.perf_counter()
            evaluations[set_name].append(evaluate_mace(model, structures))
            forward_seconds[set_name].append(time.perf_counter() - started)

    # The ensemble: all M members; its target is the ensemble mean's force error.
    ensemble_runs = {}
    for set_name in sets:
        forces = np.stack([run.forces for run in evaluations[set_name]])
        ensemble_runs[set_name] = (
            np.maximum(ensemble_force_spread(forces), 1e-12),
            np.linalg.norm(forces.mean(axis=0) - sets[set_name].forces, axis=1),
        )

    per_seed: list[dict] = []
    curves: dict[str, dict] = {}
    log = ErrorLog(log_path)
    for member in range(n_seeds):
        candidates = burn_in_candidates(log, members=[member])
        fit_descriptors = evaluate_mace(models[member], fit_set).descriptors
        validation_m = evaluations["validation"][member]
        spearman_by_k = {
            k: metrics.spearman(
                LTAUEstimator(k)
                .fit(fit_descriptors, candidates[0])
                .predict(validation_m.descriptors)
                .expected_error,
                validation_m.force_errors,
            )
            for k in K_CANDIDATES
        }
        atol = float(np.quantile(validation_m.force_errors, 0.9))
        bins = candidates[0].bins
        results: dict[str, dict] = {}
        predictions: dict[str, dict] = {}
        choices: dict[str, dict] = {}
        for variant, (burn_in, widen, use_groups, scales) in VARIANTS.items():
            if widen:
                chosen = choose_configuration(
                    fit_descriptors,
                    candidates if burn_in else {0: candidates[0]},
                    validation_m.descriptors,
                    validation_m.force_errors,
                    groups["validation"],
                    group_widening=use_groups,
                    distance_scales=scales,
                    fold_groups=validation_runs,
                )
                k, skip, scale = chosen["k"], chosen["skip_epochs"], chosen["distance_scale"]
            else:  # as published: all epochs, k by the raw expected error's Spearman
                k, skip, scale = max(spearman_by_k, key=spearman_by_k.get), 0, "absolute"
            choices[variant] = {"k": k, "skip_epochs": skip, "distance_scale": scale}
            estimator = LTAUEstimator(k, distance_scale=scale).fit(
                fit_descriptors, candidates[skip]
            )
            estimator.calibrate(
                validation_m.descriptors,
                validation_m.force_errors,
                groups=groups["validation"] if use_groups else None,
                widen=widen,
            )
            if member == 0 and variant == "ltau":
                default_estimator = estimator
            predictions[variant] = {
                set_name: (
                    calibrated_ltau(
                        estimator,
                        evaluations[set_name][member],
                        groups[set_name] if use_groups else None,
                        atol,
                    ),
                    evaluations[set_name][member].force_errors,
                )
                for set_name in tests
            }
        k = choices["ltau"]["k"]
        ood = {
            set_name: LTAUEstimator(k)
            .fit(fit_descriptors, candidates[0])
            .predict(evaluations[set_name][member].descriptors)
            .ood_score
            for set_name in sets
        }
        baselines = {
            "distance": {
                s: (
                    maxwell_mass(np.maximum(ood[s], 1e-12), bins),
                    evaluations[s][member].force_errors,
                )
                for s in sets
            },
            "ensemble": {
                s: (maxwell_mass(ensemble_runs[s][0], bins), ensemble_runs[s][1]) for s in sets
            },
        }
        for method, per_set in baselines.items():
            predictions[method] = {
                s: (
                    calibrate_and_predict(*per_set["validation"], *per_set[s], bins, atol),
                    per_set[s][1],
                )
                for s in tests
            }
        for method, per_set in predictions.items():
            results[method] = {
                s: metrics_of(calibrated, errors, atol)
                for s, (calibrated, errors) in per_set.items()
            }
            in_domain, shifted = per_set["in_domain"][0], per_set["shifted"][0]
            results[method]["shifted"]["auroc_shifted_vs_in_domain"] = metrics.auroc(
                np.concatenate([shifted.expected_error, in_domain.expected_error]),
                np.r_[
                    np.ones(shifted.expected_error.size), np.zeros(in_domain.expected_error.size)
                ],
            )
        per_seed.append(
            {"choices": choices, "atol": atol, "spearman_by_k": spearman_by_k, "methods": results}
        )
        if member == 0:
            curves = {s: {m: predictions[m][s] for m in predictions} for s in tests}
    log.close()

    # Inference cost on the in-domain set: M forward passes vs one plus the LTAU prediction.
    estimator = default_estimator
    in_domain = evaluations["in_domain"][0]
    started = time.perf_counter()
    estimator.predict(
        in_domain.descriptors, groups=groups["in_domain"], atol=per_seed[0]["atol"], confidence=0.9
    )
    ltau_seconds = time.perf_counter() - started
    n_atoms = tests["in_domain"].n_atoms
    single_cost = forward_seconds["in_domain"][0] + ltau_seconds
    parameters = sum(p.numel() * p.element_size() for p in models[0].model.parameters())
    estimator_bytes = estimator.distributions_.counts.nbytes + fit_set.n_atoms * (
        estimator.n_features_in_ * 4
    )
    if estimator.local_scale_ is not None:
        estimator_bytes += estimator.local_scale_.nbytes
    _figures(output_dir, name, curves)
    return {
        "methods": summarise(per_seed),
        "per_seed": per_seed,
        "members": members,
        "epochs": epochs,
        "n_seeds": n_seeds,
        "validation_split": {
            "configs": len(validation.atoms),
            "runs": int(np.unique(validation_runs).size),
            "group_keys": list(VALIDATION_GROUP_KEYS),
        },
        "train_seconds": train_seconds,
        "train_cost_ratio": sum(train_seconds) / train_seconds[0],
        "inference_us_per_atom_ltau": 1e6 * single_cost / n_atoms,
        "inference_us_per_atom_ensemble": 1e6 * sum(forward_seconds["in_domain"]) / n_atoms,
        "inference_cost_ratio": sum(forward_seconds["in_domain"]) / single_cost,
        "ltau_predict_us_per_atom": 1e6 * ltau_seconds / n_atoms,
        "inference_memory_ratio": members * parameters / (parameters + estimator_bytes),
        "force_rmse": {
            s: [metrics.rmse(evaluations[s][m].force_errors) for m in range(n_seeds)] for s in tests
        },
    }


def summarise(per_seed: list[dict]) -> dict:
    """Mean, standard deviation and per-seed values of every metric, per method and set."""
    summary: dict = {}
    for method, per_set in per_seed[0]["methods"].items():
        summary[method] = {}
        for set_name, values in per_set.items():
            summary[method][set_name] = {}
            for metric in values:
                seeds = [run["methods"][method][set_name][metric] for run in per_seed]
                known = [value for value in seeds if value is not None]
                summary[method][set_name][metric] = {
                    "mean": float(np.mean(known)) if known else None,
                    "std": float(np.std(known)) if known else None,
                    "per_seed": seeds,
                }
    return summary


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

    figure, axes = plt.subplots(
        n_sets, len(METHODS), figsize=(4 * len(METHODS), 4 * n_sets), squeeze=False
    )
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
    """Per dataset: method x test set x metric, mean ± standard deviation over seeds."""
    lines = []
    for dataset, values in report["datasets"].items():
        lines.append(
            f"\n**{dataset}** (M = {values['members']}, {values['epochs']} epochs, "
            f"{values['n_seeds']} seeds; default LTAU's (k, burn-in epochs, distance scale) per seed "
            f"{[tuple(run['choices']['ltau'].values()) for run in values['per_seed']]}; "
            f"train cost ratio "
            f"{values['train_cost_ratio']:.2f}, inference cost ratio "
            f"{values['inference_cost_ratio']:.2f})\n"
        )
        lines.append("| method | test set | " + " | ".join(TABLE_METRICS.values()) + " |")
        lines.append("|---|---|" + "---|" * len(TABLE_METRICS))
        for method, per_set in values["methods"].items():
            for set_name, per_metric in per_set.items():
                cells = []
                for metric in TABLE_METRICS:
                    value = per_metric.get(metric, {}).get("mean")
                    spread = per_metric.get(metric, {}).get("std")
                    cells.append("" if value is None else f"{value:.3f} ± {spread:.3f}")
                lines.append(f"| {method} | {set_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=("acac", "emt"), default=["acac", "emt"])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument(
        "--seeds", type=int, help="single models evaluated (<= M; default: all M members)"
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--work-dir", type=Path, help="where trained models are kept (default OUTPUT/work)"
    )
    parser.add_argument("--retrain", action="store_true", help="ignore models kept there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "ensemble"
    )
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error("--members must be at least 2 (an ensemble)")
    args.seeds = args.members if args.seeds is None else args.seeds
    if not 1 <= args.seeds <= args.members:
        parser.error("--seeds must lie between 1 and --members")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir or args.output_dir / "work"
    if args.retrain:
        shutil.rmtree(work_dir, ignore_errors=True)
    report = {"datasets": {}}
    for name in args.datasets:
        report["datasets"][name] = run_dataset(
            name, args.members, args.epochs, args.seed, args.seeds, args.output_dir, work_dir
        )
    (args.output_dir / "table.md").write_text(markdown_table(report))
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2))
    flat = {
        "train_cost_ratio": {d: v["train_cost_ratio"] for d, v in report["datasets"].items()},
        "inference_cost_ratio": {
            d: v["inference_cost_ratio"] for d, v in report["datasets"].items()
        },
        **{
            d: {
                method: {
                    set_name: {metric: values["mean"] for metric, values in per_metric.items()}
                    | {f"{metric}_std": values["std"] for metric, values in per_metric.items()}
                    for set_name, per_metric in per_set.items()
                }
                for method, per_set in v["methods"].items()
            }
            for d, v in report["datasets"].items()
        },
    }
    print(markdown_table(report))
    print(json.dumps(flat))
    return report


if __name__ == "__main__":
    main()
