"""Is the energy log's failure to rank a shared epoch offset? Measured on acac's validation split.

Trains ltau's small MACE on train_300K (10% held out as the pipeline holds it out) and keeps
every configuration's *signed* training error ``E_pred - E_ref`` (eV per structure) at every
epoch. It reports:

* the size of the shared offset: the spread over epochs (after the burn-in) of each epoch's
  mean signed error, against the spread over configurations within an epoch and within one
  training step, how much of a configuration's centred error persists from epoch to epoch,
  and the final (EMA-averaged) model's mean signed error on the validation and test
  structures;
* for each centring of the log (:data:`ltau.energy.ENERGY_CENTRINGS`), the kNN energy
  estimator (:func:`ltau.energy.fit_energy_estimator`) scored on the validation split by
  2-fold cross-validation (fit on one half, score on the other), against two targets: the
  real ``|E_pred - E_ref|`` and the centred ``|E_pred - b - E_ref|``, ``b`` the final model's
  mean signed error on the fitting half (on the tests: on all of the validation split);
* the same estimators on the test sets, for information only (nothing is chosen there);
* whether the *signed* training errors, centred per training step, persist from epoch to
  epoch and follow the final model's signed errors (on the training structures, and through
  the k nearest training structures on the others).

All structures of acac have the same composition (C5H8O2), so an offset per element count or
a per-atom normalisation reduces to the plain offset here. The burn-in is fixed at a quarter
of the epochs (not tuned). Usage::

    python benchmarks/energy_offsets.py --epochs 20 --seed 0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ltau.atomistic.pipeline import split_validation
from ltau.atomistic.structures import read_isolated_atom_energies, read_structures
from ltau.energy import ENERGY_CENTRINGS, EnergyRecorder, fit_energy_estimator
from ltau.energy import structure_descriptors as mean_descriptors
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace
from ltau.metrics import spearman

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"


class SignedCapture:
    """A stand-in energy recorder for :func:`train_mace` that keeps the signed errors,
    ``rows`` ``(epochs, n_configs)`` eV per structure, and each one's training step within its
    epoch, ``steps`` ``(epochs, n_configs)``."""

    def __init__(self, n_samples: int) -> None:
        self.n_samples = n_samples
        self.rows: list[np.ndarray] = []
        self.steps: list[np.ndarray] = []
        self._row = np.full(n_samples, np.nan)
        self._step = np.full(n_samples, -1)
        self._n_steps = 0

    def record(self, ids: np.ndarray, errors: np.ndarray) -> None:
        self._row[ids] = errors
        self._step[ids] = self._n_steps
        self._n_steps += 1

    def end_epoch(self, member: int = 0) -> None:
        assert np.all(np.isfinite(self._row)), "a configuration was not recorded"
        self.rows.append(self._row.copy())
        self.steps.append(self._step.copy())
        self._row.fill(np.nan)
        self._n_steps = 0


def distributions_of(signed: np.ndarray, steps: np.ndarray, centring: str, skip: int, folder: Path):
    """The energy-error distributions a log centred by ``centring`` would hold, its epochs
    replayed step by step as the trainer recorded them."""
    with EnergyRecorder(signed.shape[1], folder / f"{centring}.h5", centring=centring) as log:
        for row, step_of in zip(signed, steps, strict=True):
            for step in np.unique(step_of):
                ids = np.flatnonzero(step_of == step)
                log.record(ids, row[ids])
            log.end_epoch()
        return log.distributions(n_bins=100, skip_epochs=skip)


def step_centred(signed: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Signed errors ``(epochs, n_configs)`` minus the mean of their training step's."""
    centred = np.empty_like(signed)
    for epoch, (row, step_of) in enumerate(zip(signed, steps, strict=True)):
        for step in np.unique(step_of):
            chosen = step_of == step
            centred[epoch, chosen] = row[chosen] - row[chosen].mean()
    return centred


def signed_diagnostics(
    centred: np.ndarray,
    final_train: np.ndarray,
    train_queries: np.ndarray,
    queries: dict[str, np.ndarray],
    final_signed: dict[str, np.ndarray],
) -> dict[str, float]:
    """Does the step-centred *signed* training error say anything about the final model's?
    ``centred`` ``(epochs, n_train)``; ``final_train`` ``(n_train,)``, the final model's signed
    errors on the training structures; per set, the Spearman of the mean step-centred signed
    error of a structure's k nearest training structures (mean descriptors, Euclidean) against
    the final model's signed error and against ``|E_pred - E_ref|``."""
    persistent = centred.mean(axis=0)
    result = {
        "consecutive_epoch_correlation": float(
            np.mean([np.corrcoef(a, b)[0, 1] for a, b in itertools.pairwise(centred)])
        ),
        "spearman_own_log_vs_final_signed_train": float(spearman(persistent, final_train)),
    }
    for name, query in queries.items():
        distances = ((query[:, None, :] - train_queries[None, :, :]) ** 2).sum(-1)
        for k in (5, 20):
            nearest = np.argsort(distances, axis=1)[:, :k]
            guess = persistent[nearest].mean(axis=1)
            result[f"{name}_k{k}_vs_signed"] = float(spearman(guess, final_signed[name]))
            result[f"{name}_k{k}_vs_abs"] = float(spearman(guess, np.abs(final_signed[name])))
    return result


def scores(estimator, queries: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Spearman, miscalibration area and cov90 of the estimator's prediction."""
    prediction = estimator.predict(queries, confidence=0.9)
    pit = estimator.probability_integral_transform(queries, observed)
    bundle = prediction.uq_metrics(observed, pit=pit)
    return {
        "spearman": float(spearman(prediction.expected_error, observed)),
        "miscalibration_area": float(bundle["miscalibration_area"]),
        "coverage90": float(bundle["coverage90"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).parent / "results" / "energy_offsets"
    )
    args = parser.parse_args(argv)
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    train = read_structures(args.data / "train_300K.xyz")
    tests = {n: read_structures(args.data / f"{n}.xyz") for n in ("test_MD_300K", "test_MD_600K")}
    e0s = read_isolated_atom_energies(args.data / "isolated_atoms.xyz", energy_key="energy")
    fit_set, validation = split_validation(train, 0.1, args.seed)
    capture = SignedCapture(len(fit_set.atoms))
    model = train_mace(
        fit_set,
        epochs=args.epochs,
        settings=MACESettings(seed=args.seed),
        isolated_atom_energies=e0s,
        energy_recorder=capture,
    )
    signed, steps = np.array(capture.rows), np.array(capture.steps)
    skip = args.epochs // 4
    kept = signed[skip:]
    epoch_means = kept.mean(axis=1)
    centred = kept - epoch_means[:, None]
    within_step_std = [
        row[step_of == step].std()
        for row, step_of in zip(kept, steps[skip:], strict=True)
        for step in np.unique(step_of)
    ]
    sets = {"validation": validation, **tests}
    evaluations = {name: evaluate_mace(model, s) for name, s in sets.items()}
    final_signed = {n: evaluations[n].energies - sets[n].energies for n in sets}
    queries = {
        n: mean_descriptors(evaluations[n].descriptors, sets[n].index.configuration_of_atoms)
        for n in sets
    }
    fit_eval = evaluate_mace(model, fit_set)
    train_queries = mean_descriptors(fit_eval.descriptors, fit_set.index.configuration_of_atoms)
    summary: dict = {
        "epochs": args.epochs,
        "seed": args.seed,
        "skip_epochs": skip,
        "offset": {
            "epoch_mean_signed_error_std_over_epochs": float(epoch_means.std()),
            "epoch_mean_signed_error_range": [float(epoch_means.min()), float(epoch_means.max())],
            "within_epoch_std_over_configs_mean": float(kept.std(axis=1).mean()),
            "share_of_variance_from_epoch_offset": float(epoch_means.var() / kept.var()),
            "mean_abs_logged_error": float(np.abs(kept).mean()),
            "mean_abs_centred_logged_error": float(np.abs(kept - epoch_means[:, None]).mean()),
            "consecutive_epoch_correlation_of_centred_errors_mean": float(
                np.mean([np.corrcoef(a, b)[0, 1] for a, b in itertools.pairwise(centred)])
            ),
            "share_of_centred_variance_kept_by_a_configuration": float(
                centred.mean(axis=0).var() / centred.var()
            ),
            "within_step_std_mean": float(np.mean(within_step_std)),
            **{
                f"final_model_{n}": {
                    "mean_signed_error": float(v.mean()),
                    "std_signed_error": float(v.std()),
                }
                for n, v in final_signed.items()
            },
        },
        "signed": signed_diagnostics(
            step_centred(kept, steps[skip:]),
            fit_eval.energies - fit_set.energies,
            train_queries,
            queries,
            final_signed,
        ),
        "routes": {},
    }
    halves = np.array_split(np.random.default_rng(args.seed).permutation(len(validation.atoms)), 2)
    with tempfile.TemporaryDirectory() as folder:
        for centring in ENERGY_CENTRINGS:
            distributions = distributions_of(signed, steps, centring, skip, Path(folder))
            for target in ("raw", "centred"):
                cv = []
                for fit_half, score_half in (halves, halves[::-1]):
                    errors = final_signed["validation"]
                    offset = errors[fit_half].mean() if target == "centred" else 0.0
                    estimator, _ = fit_energy_estimator(
                        train_queries,
                        distributions,
                        queries["validation"][fit_half],
                        np.abs(errors[fit_half] - offset),
                    )
                    cv.append(
                        scores(
                            estimator,
                            queries["validation"][score_half],
                            np.abs(errors[score_half] - offset),
                        )
                    )
                row = {f"validation_{k}": float(np.mean([c[k] for c in cv])) for k in cv[0]}
                offset = final_signed["validation"].mean() if target == "centred" else 0.0
                estimator, choice = fit_energy_estimator(
                    train_queries,
                    distributions,
                    queries["validation"],
                    np.abs(final_signed["validation"] - offset),
                )
                row["k"] = choice["k"]
                for name in tests:
                    for k, v in scores(
                        estimator, queries[name], np.abs(final_signed[name] - offset)
                    ).items():
                        row[f"{name}_{k}"] = v
                summary["routes"][f"{centring}/{target}"] = row
    print(
        f"{'log centring / target':28s} {'val rho':>8s} {'300K rho':>8s} {'600K rho':>8s}"
        f" {'val cov90':>9s} {'300K cov90':>10s} {'600K cov90':>10s}"
    )
    for name, row in summary["routes"].items():
        print(
            f"{name:28s} {row['validation_spearman']:8.3f} {row['test_MD_300K_spearman']:8.3f}"
            f" {row['test_MD_600K_spearman']:8.3f} {row['validation_coverage90']:9.3f}"
            f" {row['test_MD_300K_coverage90']:10.3f} {row['test_MD_600K_coverage90']:10.3f}"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.output / f"signed_seed{args.seed}.npz", training=signed, steps=steps, **final_signed
    )
    (args.output / f"summary_seed{args.seed}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
