"""Training-set tuning from training dynamics on acac: plain training vs re-weighted training.

A fixed 10% validation split is carved from train_300K (seed 0). For each seed: train MACE on
the rest while logging every atom's force error (the baseline); build the per-configuration
training-dynamics map from that log (each configuration's force RMSE per epoch, the first 20%
of the epochs left out); turn it into loss weights (TuningStrategy: weight ∝ mean error over
epochs, clipped to [1/3, 3] and normalised to mean 1; optionally drop suspicious
configurations); train again with the same seed and epochs on those weights (the tuned run).
The strategy's settings are fixed here, before any evaluation; no test set is used to choose
anything. Both models are evaluated on the training configurations, the validation split and
the two MD test sets. Errors: force RMSE = RMS over atoms of ||F_pred - F_ref|| (eV/Å);
energy RMSE per atom (eV/atom); gap = validation RMSE - training RMSE.

Usage::

    python benchmarks/tuning.py                      # 3 seeds x 2 trainings x 30 epochs
    python benchmarks/tuning.py --epochs 3 --seeds 0 --output-dir /tmp/tuning-quick
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ltau import ErrorRecorder, metrics
from ltau._io import atomic_path
from ltau.atomistic.pipeline import split_validation
from ltau.atomistic.structures import (
    LabelledStructures,
    read_isolated_atom_energies,
    read_structures,
)
from ltau.dynamics import groups_from_sizes, training_dynamics
from ltau.integrations.mace import MACESettings, TrainedMACE, evaluate_mace, train_mace
from ltau.report import plot_training_dynamics
from ltau.tuning import TuningStrategy

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
SETS = ("train", "validation", "test_MD_300K", "test_MD_600K")
SKIP_FRACTION = 0.2
ATOL_QUANTILE = 0.9


def errors_of(trained: TrainedMACE, structures: LabelledStructures) -> dict[str, float]:
    """Force RMSE (eV/Å, RMS of per-atom error norms) and energy RMSE per atom (eV/atom)."""
    evaluation = evaluate_mace(trained, structures)
    sizes = np.diff(structures.index.offsets)
    energy = (evaluation.energies - structures.energies) / sizes
    return {
        "force_rmse": float(np.sqrt(np.mean(evaluation.force_errors**2))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean(energy**2))),
        "force_errors": evaluation.force_errors,
    }


def summarise(trained: TrainedMACE, sets: dict[str, LabelledStructures]) -> dict:
    results = {name: errors_of(trained, structures) for name, structures in sets.items()}
    summary = {
        f"{name}_{key}": value
        for name, values in results.items()
        for key, value in values.items()
        if key != "force_errors"
    }
    summary["gap_force"] = summary["validation_force_rmse"] - summary["train_force_rmse"]
    summary["gap_energy"] = (
        summary["validation_energy_rmse_per_atom"] - summary["train_energy_rmse_per_atom"]
    )
    return summary, results["validation"]["force_errors"]


def comparison_figure(per_seed: list[dict], seeds: list[int], path: Path) -> None:
    """Baseline vs tuned force RMSE per set and the gap: one point per seed, mean ± std."""
    keys = [f"{name}_force_rmse" for name in SETS] + ["gap_force"]
    labels = ["train", "validation", "test 300 K", "test 600 K", "gap (val - train)"]
    figure, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.6))
    for axis, key, label in zip(axes, keys, labels, strict=True):
        for position, run in enumerate(("baseline", "tuned")):
            values = np.array([row[run][key] for row in per_seed])
            axis.plot(np.full(values.size, position), values, "o", alpha=0.5, color=f"C{position}")
            axis.errorbar(
                position + 0.15, values.mean(), yerr=values.std(ddof=1) if values.size > 1 else 0,
                fmt="s", color=f"C{position}", capsize=4,
            )  # fmt: skip
        for row in per_seed:
            axis.plot([0, 1], [row["baseline"][key], row["tuned"][key]], "-", color="0.8", lw=1)
        axis.set_xticks([0, 1], ["baseline", "tuned"])
        axis.set_xlim(-0.4, 1.5)
        axis.set_title(label)
    axes[0].set_ylabel("force RMSE (eV/Å)")
    figure.suptitle(f"acac, seeds {seeds}: points = seeds, squares = mean ± std")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def collect(per_seed: list[dict], settings: dict, started: float) -> dict:
    """Per-seed rows plus mean, std (ddof 1) and per-seed lists of every metric."""

    def stats(run: str, key: str) -> dict:
        values = np.array([row[run][key] for row in per_seed])
        return {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "per_seed": values.tolist(),
        }

    keys = list(per_seed[0]["baseline"])
    return {
        "settings": settings,
        "seeds_done": [row["seed"] for row in per_seed],
        "summary": {run: {key: stats(run, key) for key in keys} for run in ("baseline", "tuned")},
        "per_seed": per_seed,
        "wall_seconds": time.perf_counter() - started,
    }


def write_results(results: dict, output_dir: Path) -> None:
    """results.json and the baseline-vs-tuned figure."""
    with atomic_path(output_dir / "results.json") as temporary:
        temporary.write_text(json.dumps(results, indent=2))
    comparison_figure(
        results["per_seed"], results["seeds_done"], output_dir / "baseline_vs_tuned.png"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--power", type=float, default=1.0, help="weight ∝ mean error ** power")
    parser.add_argument("--drop-quantile", type=float, help="also drop suspicious configs")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "tuning"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the seeds already in OUTPUT_DIR/results.json (same settings) and run the rest",
    )
    args = parser.parse_args(argv)
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    started = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    train = read_structures(args.data / "train_300K.xyz")
    fit, validation = split_validation(train, 0.1, seed=0)
    sets = {
        "train": fit,
        "validation": validation,
        "test_MD_300K": read_structures(args.data / "test_MD_300K.xyz"),
        "test_MD_600K": read_structures(args.data / "test_MD_600K.xyz"),
    }
    e0s = read_isolated_atom_energies(args.data / "isolated_atoms.xyz")
    strategy = TuningStrategy(power=args.power, drop_quantile=args.drop_quantile)
    skip = int(SKIP_FRACTION * args.epochs)
    groups = groups_from_sizes(np.diff(fit.index.offsets))
    settings_record = {
        "epochs": args.epochs,
        "strategy": asdict(strategy),
        "skip_epochs": skip,
        "atol_rule": f"{ATOL_QUANTILE:.0%} quantile of the baseline's validation force errors",
        "n_fit_configs": len(fit.atoms),
        "n_validation_configs": len(validation.atoms),
    }
    per_seed = []
    if args.resume and (args.output_dir / "results.json").exists():
        previous = json.loads((args.output_dir / "results.json").read_text())
        if previous["settings"] != settings_record:
            sys.exit("--resume: results.json was written with other settings")
        per_seed = [row for row in previous["per_seed"] if row["seed"] in args.seeds]
    done = {row["seed"] for row in per_seed}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in (s for s in args.seeds if s not in done):
            settings = MACESettings(seed=seed)
            log = Path(scratch) / f"errors_seed{seed}.h5"
            with ErrorRecorder(fit.n_atoms, log_path=log) as recorder:
                baseline = train_mace(
                    fit, epochs=args.epochs, settings=settings,
                    isolated_atom_energies=e0s, recorder=recorder,
                )  # fmt: skip
            baseline_summary, validation_errors = summarise(baseline, sets)
            atol = float(np.quantile(validation_errors, ATOL_QUANTILE))
            dynamics = training_dynamics(log, atol, skip_epochs=skip, groups=groups)
            plan = strategy.plan(dynamics.groups)
            if seed == args.seeds[0]:
                plot_training_dynamics(
                    dynamics.groups,
                    args.output_dir / "dynamics_map.png",
                    atol=atol,
                    title=f"acac, seed {seed}: per-configuration force RMSE over epochs",
                )
            tuned = train_mace(
                fit.subset(plan.kept), epochs=args.epochs, settings=settings,
                isolated_atom_energies=e0s, config_weights=plan.kept_weights,
            )  # fmt: skip
            tuned_summary, _ = summarise(tuned, sets)
            weights = plan.kept_weights
            row = {
                "seed": seed,
                "atol_eV_per_A": atol,
                "n_dropped": int(plan.dropped.size),
                "weights": {
                    "min": float(weights.min()),
                    "max": float(weights.max()),
                    "fraction_at_bounds": float(
                        np.mean(
                            np.isclose(weights, strategy.low) | np.isclose(weights, strategy.high)
                        )
                    ),
                },
                "spearman_weight_vs_forgetting": metrics.spearman(
                    plan.weights, dynamics.groups.forgetting_events.astype(float)
                ),
                "mean_forgetting_events_per_config": float(
                    dynamics.groups.forgetting_events.mean()
                ),
                "baseline": baseline_summary,
                "tuned": tuned_summary,
            }
            per_seed.append(row)
            # Written after every seed, so an interrupted run keeps the seeds it finished.
            write_results(collect(per_seed, settings_record, started), args.output_dir)
            print(json.dumps({"seed": seed, "baseline": baseline_summary, "tuned": tuned_summary}))
    per_seed.sort(key=lambda row: args.seeds.index(row["seed"]))
    results = collect(per_seed, settings_record, started)
    summary = {"seeds": results["seeds_done"], "epochs": args.epochs}
    for run in ("baseline", "tuned"):
        for name, key in [
            ("train_rmse", "train_force_rmse"),
            ("val_rmse", "validation_force_rmse"),
            ("test300_rmse", "test_MD_300K_force_rmse"),
            ("test600_rmse", "test_MD_600K_force_rmse"),
            ("gap", "gap_force"),
            ("gap_energy", "gap_energy"),
        ]:
            values = results["summary"][run][key]
            summary[f"{name}_{run}"] = values["mean"]
            summary[f"{name}_{run}_std"] = values["std"]
            summary[f"{name}_{run}_per_seed"] = values["per_seed"]
    summary["wall_seconds"] = results["wall_seconds"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
