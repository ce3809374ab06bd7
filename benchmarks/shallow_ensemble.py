"""The shallow ensemble (one MACE backbone, M heads trained jointly) beside ensemble.py's
methods: the same data, validation split, metrics and validation-only recalibration.

For each dataset, :func:`ensemble.load_dataset` and the same 90/10 split as
``benchmarks/ensemble.py`` (its default ``--seed 0``); per seed 0 .. n-1 a shallow ensemble
(``_shallow_ensemble.train_shallow_ensemble``, ltau's MACE settings with that seed, the same
epochs) is trained on the fit split. Its uncertainty is the heads' force spread (eV/Å), its
target the heads' mean force error; like ``ensemble.py``'s ``ensemble`` row it is read in the
Maxwell form and recalibrated isotonically on the validation split
(:func:`ensemble.baseline_scores`), with ``atol`` the 90% quantile of the validation errors
and the bins of its own training-error log (recorded as ``ensemble.py``'s models record
theirs). Metrics per set: :func:`ensemble.set_metrics`, OOD AUROCs against the in-domain set.

Costs, measured in this run: one plain model (ltau's ``train_mace``, seed 0, same epochs,
with error logging as in ``ensemble.py``) is trained beside them; the training cost is each
shallow ensemble's training time over the plain model's, the added inference cost per atom its
evaluation time on the in-domain set (one forward pass and one backward pass per head) over
the plain model's forward pass, less one.

Results: ``OUTPUT/results.json`` (default ``benchmarks/results/ensemble/shallow``), which
``python benchmarks/ensemble.py --tables-from benchmarks/results/ensemble/results.json``
adds to the table of the baselines; the last stdout line is a JSON object of the means over
seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _shallow_ensemble import evaluate_shallow_ensemble, train_shallow_ensemble
from ensemble import baseline_scores, load_dataset, set_metrics, summarise
from tqdm.auto import tqdm

from ltau import ErrorRecorder
from ltau.atomistic.pipeline import split_validation
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace

METHOD = "shallow_ensemble"


def spread_and_error(forces: np.ndarray, reference: np.ndarray | None):
    """The heads' spread ``(n_atoms,)`` and, if labelled, the mean's force-error norm."""
    mean = forces.mean(axis=0)
    spread = np.sqrt(np.mean(np.sum((forces - mean) ** 2, axis=2), axis=0))
    error = None if reference is None else np.linalg.norm(mean - reference, axis=1)
    return np.maximum(spread, 1e-12), error


def run_dataset(name: str, heads: int, epochs: int, n_seeds: int, work: Path) -> dict:
    """Per seed, the shallow ensemble's metrics on every test set, and the costs."""
    train, tests, e0s = load_dataset(name, 0)
    fit_set, validation = split_validation(train, 0.1, 0)
    sets = {"validation": validation, **tests}
    groups = {s: structures.index.configuration_of_atoms for s, structures in sets.items()}
    shifted = [s for s in tests if s != "in_domain"]

    started = time.perf_counter()
    with ErrorRecorder(fit_set.n_atoms, log_path=work / f"{name}_plain.h5", overwrite=True) as log:
        plain = train_mace(
            fit_set,
            epochs=epochs,
            settings=MACESettings(seed=0),
            isolated_atom_energies=e0s,
            recorder=log,
            progress=False,
        )
    plain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_mace(plain, tests["in_domain"])
    plain_forward = time.perf_counter() - started

    per_seed = []
    for seed in tqdm(range(n_seeds), desc=f"{name}: shallow ensembles", unit="seed"):
        log_path = work / f"{name}_shallow{seed}.h5"
        started = time.perf_counter()
        with ErrorRecorder(fit_set.n_atoms, log_path=log_path, overwrite=True) as recorder:
            trained = train_shallow_ensemble(
                fit_set,
                epochs=epochs,
                n_heads=heads,
                settings=MACESettings(seed=seed),
                isolated_atom_energies=e0s,
                recorder=recorder,
            )
            bins = recorder.distributions(n_bins=100).bins
        train_seconds = time.perf_counter() - started
        runs, forward_seconds = {}, {}
        for set_name, structures in sets.items():
            started = time.perf_counter()
            _, forces = evaluate_shallow_ensemble(trained, structures)
            forward_seconds[set_name] = time.perf_counter() - started
            runs[set_name] = spread_and_error(forces, structures.forces)
        atol = float(np.quantile(runs["validation"][1], 0.9))
        scores = {
            s: baseline_scores(runs["validation"], *runs[s], groups[s], bins, atol) for s in tests
        }
        per_seed.append(
            {
                "atol": atol,
                "train_seconds": train_seconds,
                "train_cost_ratio": train_seconds / plain_seconds,
                "added_inference_ratio": forward_seconds["in_domain"] / plain_forward - 1.0,
                "methods": {
                    METHOD: {
                        s: set_metrics(
                            scores[s], scores["in_domain"] if s in shifted else None, atol
                        )
                        for s in tests
                    }
                },
                "force_rmse": {
                    s: float(np.sqrt(np.mean(runs[s][1] ** 2)))
                    for s in tests
                    if runs[s][1] is not None
                },
            }
        )
    return {
        "methods": summarise(per_seed, "methods"),
        "per_seed": per_seed,
        "heads": heads,
        "epochs": epochs,
        "n_seeds": n_seeds,
        "plain_train_seconds": plain_seconds,
        "plain_forward_seconds_in_domain": plain_forward,
        "train_cost_ratio": float(np.mean([run["train_cost_ratio"] for run in per_seed])),
        "added_inference_ratio": float(np.mean([run["added_inference_ratio"] for run in per_seed])),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=("acac", "emt"), default=["acac", "emt"])
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path(__file__).parent / "results" / "ensemble" / "shallow",
    )
    args = parser.parse_args(argv)
    if args.heads < 2 or args.seeds < 1 or args.epochs < 1:
        parser.error("--heads must be at least 2, --seeds and --epochs at least 1")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        report = {
            "datasets": {
                name: run_dataset(name, args.heads, args.epochs, args.seeds, Path(work))
                for name in args.datasets
            }
        }
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2))
    flat = {
        name: {
            "train_cost_ratio": values["train_cost_ratio"],
            "added_inference_ratio": values["added_inference_ratio"],
            **{
                set_name: {metric: stats["mean"] for metric, stats in per_metric.items()}
                for set_name, per_metric in values["methods"][METHOD].items()
            },
        }
        for name, values in report["datasets"].items()
    }
    print(json.dumps(flat))
    return report


if __name__ == "__main__":
    main()
