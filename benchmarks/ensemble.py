"""LTAU versus a MACE ensemble and plain descriptor distance: uncertainty quality, cost and the
ablation of LTAU's variants, over several seeds.

For each dataset (acac DFT: train_300K -> test_MD_300K in-domain; the built-in EMT set:
train -> test_in_domain), M MACE models are trained with seeds ``seed + m`` on
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
* ``ltau_no_floor``        - the default without the widening's floor on its total exponent
  (least-squares exponents only, the default before issue 17);
* ``ltau_atom_widening``   - the default, widened with the atom OOD score only (no structures);
* ``ltau_published``       - the method as published: kNN mixture, then isotonic calibration;
* ``distance``             - the model's mean distance to the k nearest training atoms alone;
* ``gmm_latent``           - per-element Gaussian mixtures on the model's training-atom
  descriptors (those LTAU uses), components chosen by validation NLL, the NLL mapped to a scale
  on validation (``_single_model_baselines.gmm_latent``);
* ``llpr``                 - last-layer prediction rigidity on the model's last-layer features
  (``_single_model_baselines.llpr`` on ``mace_last_layer_features``), λ and α on validation;
* ``ensemble``             - spread of the M force vectors (target: the ensemble mean's error).

Shifted sets, each scored against the in-domain test set. acac: ``shifted`` (test_MD_600K),
``train_600K``, ``H_transfer`` and ``dihedral`` (energies only), ``radicals`` (every in-domain
frame with one H removed; unlabelled). EMT: ``shifted`` (the demo's test_shifted) and the named
sets of :func:`ltau.demo.emt_data.shifted_test_sets` (``md_900K``, ``md_1200K``,
``unseen_pairs``, ``fcc100``, ``vacancies``, ``radicals``; EMT-labelled). Per method and set:
the per-atom metrics of labelled sets (cov90, miscalibration area and the *uncalibrated* one
beside it, Spearman, AUROC err>atol, AUSE, CRPS) and, on every shifted set, the OOD AUROC
against the in-domain test set per atom (the calibrated expected error for LTAU, the raw
distance or force spread for the baselines) and per structure (LTAU: the estimator's
``per_structure(...).structure_ood_score``; baselines: the structure's largest atom score).

Energy (sets with reference energies): the ensemble's energy spread (standard deviation of the
M members' energies, read as a half-normal |E error| and calibrated on validation) against
the ensemble mean's |E error|, and each single model's LTAU energy estimator
(:func:`ltau.energy.fit_energy_estimator` on its training structures' descriptors and its own
epochs of ``energy_errors.h5``, with the force estimator's burn-in) against that model's
|E error|: Spearman, cov90, miscalibration area (calibrated and not), CRPS, in eV per structure.

The single-model methods are repeated for models 0 .. n_seeds-1 (each as "the" model, with its
own trajectories and descriptors); the ensemble is the one M-member ensemble. ``gmm_latent``
and ``llpr`` are scalar baselines like ``distance``: their ``u`` (eV/Å) in the Maxwell form,
the same validation-only isotonic recalibration, the raw ``u`` as atom OOD score and its
structure maximum as structure score. Costs are measured in the same run: training wall time
(M models / one model with logging), inference time per atom (M forward passes / one forward
pass plus the LTAU prediction), the memory footprint at inference and, per seed, each
single-model baseline's fitting time (ratio to that model's training time) and added inference
cost on the in-domain set as a ratio to a plain forward pass timed beside it (GMM: scoring the
descriptors; LLPR: the forward pass with the feature hook, here a second pass, plus the
variance; beside it the variance alone and the hook's overhead, what capturing the features
in the prediction's own forward pass would add). Trained models and their log are kept in
``--work-dir/<dataset>`` (default ``OUTPUT/work``) and reused by a later run with the same
settings (``--retrain``: train afresh).

Usage::

    python benchmarks/ensemble.py                       # both datasets, M=5, 5 seeds
    python benchmarks/ensemble.py --datasets emt --members 2 --seeds 2 --epochs 3   # quick
    python benchmarks/ensemble.py --tables-from benchmarks/results/ensemble/results.json

``table.md`` opens with LTAU beside the baselines (``distance``, ``gmm_latent``, ``llpr``, the
ensemble, and ``benchmarks/shallow_ensemble.py``'s shallow ensemble when its results are at
``--shallow-results``) with their costs as ratios to one plain model; ``--tables-from``
rewrites the tables from an earlier run's ``results.json`` without training or evaluating.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
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
    half_normal_mass,
    maxwell_mass,
    metrics_of,
    structure_max,
)
from _common import radicals
from _single_model_baselines import gmm_latent, llpr, mace_last_layer_features
from ase.data import atomic_numbers

from ltau import ErrorLog, ErrorRecorder, LTAUEstimator, metrics
from ltau.atomistic.pipeline import VALIDATION_GROUP_KEYS, run_groups, split_validation
from ltau.atomistic.structures import (
    ForceFieldEvaluation,
    LabelledStructures,
    read_structures,
)
from ltau.calibration import MIN_TOTAL_EXPONENT
from ltau.demo.emt_data import default_splits, isolated_atom_energies, shifted_test_sets
from ltau.energy import (
    ENERGY_LOG_NAME,
    energy_recorder,
    fit_energy_estimator,
    open_energy_log,
    structure_descriptors,
)
from ltau.integrations.mace import MACESettings, TrainedMACE, evaluate_mace, train_mace
from ltau.selection import (
    DISTANCE_SCALES,
    K_CANDIDATES,
    burn_in_candidates,
    choose_configuration,
)

ACAC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
VARIANTS = {  # LTAU variant: (burn-in chosen, widening, structures as groups, scales, floor)
    "ltau": (True, True, True, DISTANCE_SCALES, MIN_TOTAL_EXPONENT),
    "ltau_no_floor": (True, True, True, DISTANCE_SCALES, 0.0),
    "ltau_absolute_distance": (True, True, True, ("absolute",), MIN_TOTAL_EXPONENT),
    "ltau_all_epochs": (False, True, True, DISTANCE_SCALES, MIN_TOTAL_EXPONENT),
    "ltau_atom_widening": (True, True, False, DISTANCE_SCALES, MIN_TOTAL_EXPONENT),
    "ltau_published": (False, False, False, ("absolute",), 0.0),
}
METHODS = (*VARIANTS, "distance", "gmm_latent", "llpr", "ensemble")
TABLE_METRICS = {  # per-atom force metrics of labelled sets
    "spearman": "Spearman",
    "auroc_error_flag": "AUROC err>atol",
    "ause": "AUSE",
    "miscalibration_area": "miscal. area",
    "miscalibration_area_uncalibrated": "miscal. area uncal.",
    "coverage90": "cov. 90%",
    "crps": "CRPS",
}
OOD_METRICS = ("auroc_atom_vs_in_domain", "auroc_structure_vs_in_domain")
ENERGY_METRICS = {
    "spearman": "Spearman",
    "coverage90": "cov. 90%",
    "miscalibration_area": "miscal. area",
    "miscalibration_area_uncalibrated": "miscal. area uncal.",
    "crps": "CRPS (eV)",
}


def load_dataset(name: str, seed: int):
    """``(train, {in_domain, shifted sets...}, E0s by atomic number)``; the training data and
    the ``in_domain`` / ``shifted`` sets are those the kept models were trained and tested on."""
    if name == "acac":
        train = read_structures(ACAC / "train_300K.xyz")
        energies_only = {"require_forces": False}
        tests = {
            "in_domain": read_structures(ACAC / "test_MD_300K.xyz"),
            "shifted": read_structures(ACAC / "test_MD_600K.xyz"),
            "train_600K": read_structures(ACAC / "train_600K.xyz"),
            "H_transfer": read_structures(ACAC / "test_H_transfer.xyz", **energies_only),
            "dihedral": read_structures(ACAC / "test_dihedral.xyz", **energies_only),
            "radicals": read_structures(
                radicals(ACAC / "test_MD_300K.xyz", seed),
                energy_key=None,
                forces_key=None,
                require_forces=False,
            ),
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
    for set_name, frames in shifted_test_sets(splits["test_in_domain"], seed=seed).items():
        tests[set_name] = read_structures(frames, **keys)
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


@dataclass
class SetScores:
    """One method's outputs on one set: OOD scores per atom ``(n_atoms,)`` and per structure
    ``(n_structures,)``; on labelled sets also the calibrated predictions, the true errors
    (eV/Å) and the PIT of the uncalibrated predictions ``(n_atoms,)``."""

    atom_score: np.ndarray
    structure_score: np.ndarray
    calibrated: CalibratedTest | None = None
    errors: np.ndarray | None = None
    uncalibrated_pit: np.ndarray | None = None


def ltau_scores(
    estimator: LTAUEstimator,
    evaluation,
    groups: np.ndarray,
    use_groups: bool,
    atol: float,
) -> SetScores:
    """An LTAU estimator's predictions for one set (its own widening and calibration): the
    calibrated expected error as the atom score, ``per_structure``'s structure OOD score."""
    widening_groups = groups if use_groups else None
    prediction = estimator.predict(
        evaluation.descriptors,
        groups=widening_groups,
        atol=atol,
        confidence=CONFIDENCE,
        return_pdf=True,
    )
    structure = estimator.per_structure(prediction, groups).structure_ood_score
    errors = evaluation.force_errors
    if errors is None:
        return SetScores(prediction.expected_error, structure)
    pit = {
        calibrated: estimator.probability_integral_transform(
            evaluation.descriptors, errors, groups=widening_groups, calibrated=calibrated
        )
        for calibrated in (True, False)
    }
    calibrated = CalibratedTest(
        expected_error=prediction.expected_error,
        pit=pit[True],
        lower=prediction.interval_lower,
        upper=prediction.interval_upper,
        exceedance=prediction.exceedance[:, 0],
        mass=prediction.pdf * prediction.bins.widths,
        bins=prediction.bins,
    )
    return SetScores(prediction.expected_error, structure, calibrated, errors, pit[False])


def baseline_scores(
    validation: tuple[np.ndarray, np.ndarray],
    scale: np.ndarray,
    errors: np.ndarray | None,
    groups: np.ndarray,
    bins,
    atol: float,
) -> SetScores:
    """A scalar baseline (``scale`` ``(n_atoms,)``, Maxwell form) on one set, recalibrated on
    ``validation`` = (scales, errors); its raw scale is the atom score."""
    structure = structure_max(scale, groups)
    if errors is None:
        return SetScores(scale, structure)
    mass = maxwell_mass(scale, bins)
    calibrated = calibrate_and_predict(
        maxwell_mass(validation[0], bins), validation[1], mass, errors, bins, atol
    )
    pit = metrics.probability_integral_transform(mass, bins, errors)
    return SetScores(scale, structure, calibrated, errors, pit)


def set_metrics(scores: SetScores, in_domain: SetScores | None, atol: float) -> dict:
    """Per-atom metrics (labelled sets) and, against ``in_domain``, the OOD AUROCs."""
    result: dict = {}
    if scores.calibrated is not None:
        result = metrics_of(scores.calibrated, scores.errors, atol)
        result["miscalibration_area_uncalibrated"] = metrics.miscalibration_area(
            scores.uncalibrated_pit
        )
    if in_domain is not None:
        result["auroc_atom_vs_in_domain"] = _auroc_against(scores.atom_score, in_domain.atom_score)
        result["auroc_structure_vs_in_domain"] = _auroc_against(
            scores.structure_score, in_domain.structure_score
        )
    return result


def _auroc_against(shifted: np.ndarray, in_domain: np.ndarray) -> float:
    """AUROC of a score separating ``shifted`` (positives) from ``in_domain`` values."""
    labels = np.r_[np.ones(shifted.size), np.zeros(in_domain.size)]
    return metrics.auroc(np.concatenate([shifted, in_domain]), labels)


def energy_metrics(
    mass: np.ndarray,
    bins,
    errors: np.ndarray,
    calibrated: CalibratedTest,
    atol: float,
) -> dict:
    """Energy-error metrics (eV per structure) of calibrated predictions, with the
    miscalibration area of the uncalibrated ``mass`` ``(n_structures, n_bins)`` beside it."""
    result = metrics_of(calibrated, errors, atol)
    raw_pit = metrics.probability_integral_transform(mass, bins, errors)
    result["miscalibration_area_uncalibrated"] = metrics.miscalibration_area(raw_pit)
    return result


def ensemble_energy(evaluations: dict, sets: dict, bins) -> dict[str, dict]:
    """The M-member ensemble's energy spread (std of the members' energies, eV) against the
    ensemble mean's |E error| on every test set with energies, calibrated on validation."""
    spread, errors = {}, {}
    for set_name, structures in sets.items():
        if structures.energies is None:
            continue
        energies = np.stack([run.energies for run in evaluations[set_name]])
        spread[set_name] = np.maximum(energies.std(axis=0), 1e-12)
        errors[set_name] = np.abs(energies.mean(axis=0) - structures.energies)
    atol = float(np.quantile(errors["validation"], 0.9))
    validation_mass = half_normal_mass(spread["validation"], bins)
    results = {}
    for set_name in spread:
        if set_name == "validation":
            continue
        mass = half_normal_mass(spread[set_name], bins)
        calibrated = calibrate_and_predict(
            validation_mass, errors["validation"], mass, errors[set_name], bins, atol
        )
        results[set_name] = energy_metrics(mass, bins, errors[set_name], calibrated, atol)
    return results


def ltau_energy(
    energy_log,
    member: int,
    skip_epochs: int,
    fit_descriptors: np.ndarray,
    fit_set,
    evaluations: dict,
    sets: dict,
) -> tuple[dict[str, dict], dict]:
    """One model's LTAU energy estimator (its own epochs of the energy log after the burn-in
    ``skip_epochs``), fitted and calibrated on validation, scored on every test set with
    energies; returns ``(metrics per set, the estimator's choice)``."""
    distributions = energy_log.distributions(n_bins=100, members=[member], skip_epochs=skip_epochs)
    train_queries = structure_descriptors(fit_descriptors, fit_set.index.configuration_of_atoms)
    queries, errors = {}, {}
    for set_name, structures in sets.items():
        if structures.energies is None:
            continue
        evaluation = evaluations[set_name][member]
        groups = structures.index.configuration_of_atoms
        queries[set_name] = structure_descriptors(evaluation.descriptors, groups)
        errors[set_name] = np.abs(evaluation.energies - structures.energies)
    estimator, choice = fit_energy_estimator(
        train_queries, distributions, queries["validation"], errors["validation"]
    )
    atol = float(np.quantile(errors["validation"], 0.9))
    results = {}
    for set_name in queries:
        if set_name == "validation":
            continue
        prediction = estimator.predict(
            queries[set_name], atol=atol, confidence=CONFIDENCE, return_pdf=True
        )
        raw = estimator.predict(queries[set_name], return_pdf=True, calibrated=False)
        calibrated = CalibratedTest(
            expected_error=prediction.expected_error,
            pit=estimator.probability_integral_transform(queries[set_name], errors[set_name]),
            lower=prediction.interval_lower,
            upper=prediction.interval_upper,
            exceedance=prediction.exceedance[:, 0],
            mass=prediction.pdf * prediction.bins.widths,
            bins=prediction.bins,
        )
        results[set_name] = energy_metrics(
            raw.pdf * raw.bins.widths, raw.bins, errors[set_name], calibrated, atol
        )
    return results, choice


def single_model_baselines(
    trained: TrainedMACE,
    fit_set: LabelledStructures,
    fit_descriptors: np.ndarray,
    sets: dict[str, LabelledStructures],
    evaluations: dict[str, ForceFieldEvaluation],
    seed: int,
) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """``gmm_latent`` and ``llpr`` of one model, fitted on its training atoms and chosen on the
    validation split: their scale ``u`` (eV/Å) ``(n_atoms,)`` per set, and a record of what
    was chosen and what it cost (seconds; ratios to a plain forward pass on ``in_domain``
    timed beside the baselines). ``evaluations``: this model's evaluation of every set."""
    begun = time.perf_counter()
    validation = evaluations["validation"]
    elements = {s: structures.chemical_symbols for s, structures in sets.items()}
    started = time.perf_counter()
    gmm = gmm_latent(
        fit_descriptors,
        validation.descriptors,
        validation.force_errors,
        train_elements=fit_set.chemical_symbols,
        validation_elements=elements["validation"],
        seed=seed,
    )
    gmm_fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    train_features = mace_last_layer_features(trained, fit_set)
    validation_features = mace_last_layer_features(trained, sets["validation"])
    rigidity = llpr(train_features, validation_features, validation.force_errors)
    llpr_fit_seconds = time.perf_counter() - started

    # Inference on the in-domain set, side by side with a plain forward pass.
    in_domain = sets["in_domain"]
    started = time.perf_counter()
    evaluate_mace(trained, in_domain)
    plain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    gmm.uncertainty(evaluations["in_domain"].descriptors, elements["in_domain"])
    gmm_seconds = time.perf_counter() - started
    started = time.perf_counter()
    in_domain_features = mace_last_layer_features(trained, in_domain)
    features_seconds = time.perf_counter() - started
    started = time.perf_counter()
    rigidity.uncertainty(in_domain_features)
    llpr_seconds = time.perf_counter() - started

    scales: dict[str, dict[str, np.ndarray]] = {"gmm_latent": {}, "llpr": {}}
    for set_name, structures in sets.items():
        features = {"validation": validation_features, "in_domain": in_domain_features}.get(
            set_name
        )
        if features is None:
            features = mace_last_layer_features(trained, structures)
        descriptors = evaluations[set_name].descriptors
        scales["gmm_latent"][set_name] = gmm.uncertainty(descriptors, elements[set_name])
        scales["llpr"][set_name] = rigidity.uncertainty(features)
    relative = min(rigidity.validation_nll, key=rigidity.validation_nll.get)
    record = {
        "gmm_latent": {
            "components_per_element": {str(e): n for e, n in gmm.n_components.items()},
            "validation_nll": {
                str(e): {str(n): v for n, v in per.items()} for e, per in gmm.validation_nll.items()
            },
            "scale_map": {"c": gmm.scale_map.c, "b": gmm.scale_map.b},
            "fit_seconds": gmm_fit_seconds,
            "score_seconds_in_domain": gmm_seconds,
            "added_inference_ratio": gmm_seconds / plain_seconds,
        },
        "llpr": {
            "lambda": rigidity.lam,
            "lambda_relative": relative,
            "alpha": rigidity.alpha,
            "n_features": int(train_features.shape[1]),
            "validation_nll": {str(k): v for k, v in rigidity.validation_nll.items()},
            "fit_seconds": llpr_fit_seconds,
            "features_seconds_in_domain": features_seconds,
            "score_seconds_in_domain": llpr_seconds,
            "added_inference_ratio": (features_seconds + llpr_seconds) / plain_seconds,
            "score_ratio": llpr_seconds / plain_seconds,
            # forward with the hook minus the plain one: what capturing the features inside the
            # prediction's own pass would add (timing noise can make it negative)
            "hook_overhead_ratio": (features_seconds - plain_seconds) / plain_seconds,
        },
        "plain_forward_seconds_in_domain": plain_seconds,
    }
    for method in scales:
        scales[method] = {s: np.maximum(u, 1e-12) for s, u in scales[method].items()}
    record["wall_seconds"] = time.perf_counter() - begun  # everything above, all sets
    return scales, record


def run_dataset(
    name: str, members: int, epochs: int, seed: int, n_seeds: int, output_dir: Path, work_dir: Path
) -> dict:
    train, tests, e0s = load_dataset(name, seed)
    fit_set, validation = split_validation(train, 0.1, seed)
    models, log_path, train_seconds = train_members(
        name, train, e0s, members, epochs, seed, work_dir / name
    )
    sets = {"validation": validation, **tests}
    labelled = [s for s in tests if tests[s].forces is not None]
    shifted = [s for s in tests if s != "in_domain"]
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
    for set_name, structures in sets.items():
        forces = np.stack([run.forces for run in evaluations[set_name]])
        ensemble_runs[set_name] = (
            np.maximum(ensemble_force_spread(forces), 1e-12),
            None
            if structures.forces is None
            else np.linalg.norm(forces.mean(axis=0) - structures.forces, axis=1),
        )
    energy_log = open_energy_log(log_path.parent / ENERGY_LOG_NAME)
    ensemble_energies = ensemble_energy(
        evaluations, sets, energy_log.distributions(n_bins=100).bins
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
        scores: dict[str, dict[str, SetScores]] = {}
        choices: dict[str, dict] = {}
        for variant, (burn_in, widen, use_groups, scales, floor) in VARIANTS.items():
            if widen:
                chosen = choose_configuration(
                    fit_descriptors,
                    candidates if burn_in else {0: candidates[0]},
                    validation_m.descriptors,
                    validation_m.force_errors,
                    groups["validation"],
                    group_widening=use_groups,
                    widening_floor=floor,
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
                widening_floor=floor,
            )
            if member == 0 and variant == "ltau":
                default_estimator = estimator
            scores[variant] = {
                s: ltau_scores(estimator, evaluations[s][member], groups[s], use_groups, atol)
                for s in tests
            }
        k = choices["ltau"]["k"]
        ood = {
            set_name: LTAUEstimator(k)
            .fit(fit_descriptors, candidates[0])
            .predict(evaluations[set_name][member].descriptors)
            .ood_score
            for set_name in sets
        }
        single, baseline_record = single_model_baselines(
            models[member],
            fit_set,
            fit_descriptors,
            sets,
            {s: evaluations[s][member] for s in sets},
            seed + member,
        )
        for method in single:
            baseline_record[method]["fit_cost_ratio"] = (
                baseline_record[method]["fit_seconds"] / train_seconds[member]
            )
        baselines = {
            "distance": {
                s: (np.maximum(ood[s], 1e-12), evaluations[s][member].force_errors) for s in sets
            },
            **{
                method: {s: (u[s], evaluations[s][member].force_errors) for s in sets}
                for method, u in single.items()
            },
            "ensemble": ensemble_runs,
        }
        for method, per_set in baselines.items():
            scores[method] = {
                s: baseline_scores(per_set["validation"], *per_set[s], groups[s], bins, atol)
                for s in tests
            }
        results = {
            method: {
                s: set_metrics(per_set[s], per_set["in_domain"] if s in shifted else None, atol)
                for s in tests
            }
            for method, per_set in scores.items()
        }
        energy, energy_choice = ltau_energy(
            energy_log,
            member,
            choices["ltau"]["skip_epochs"],
            fit_descriptors,
            fit_set,
            evaluations,
            sets,
        )
        per_seed.append(
            {
                "choices": choices,
                "atol": atol,
                "spearman_by_k": spearman_by_k,
                "baselines": baseline_record,
                "methods": results,
                "energy_choice": energy_choice,
                "energy": {"ltau": energy, "ensemble": ensemble_energies},
            }
        )
        if member == 0:
            curves = {
                s: {m: (scores[m][s].calibrated, scores[m][s].errors) for m in scores}
                for s in labelled
            }
    log.close()
    energy_log.close()

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
        "methods": summarise(per_seed, "methods"),
        "energy": summarise(per_seed, "energy"),
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
        "ltau_added_inference_ratio": ltau_seconds / forward_seconds["in_domain"][0],
        "baseline_costs": baseline_costs(per_seed),
        "inference_memory_ratio": members * parameters / (parameters + estimator_bytes),
        "force_rmse": {
            s: [metrics.rmse(evaluations[s][m].force_errors) for m in range(n_seeds)]
            for s in labelled
        },
    }


def baseline_costs(per_seed: list[dict]) -> dict[str, dict[str, float]]:
    """Mean over seeds of each single-model baseline's costs (seconds and ratios)."""
    return {
        method: {
            key: float(np.mean([run["baselines"][method][key] for run in per_seed]))
            for key in record
            if "seconds" in key or "ratio" in key
        }
        for method, record in per_seed[0]["baselines"].items()
        if isinstance(record, dict)
    }


def summarise(per_seed: list[dict], key: str) -> dict:
    """Mean, standard deviation and per-seed values of every metric, per method and set, of
    the per-seed results under ``key`` ("methods": forces, "energy")."""
    summary: dict = {}
    for method, per_set in per_seed[0][key].items():
        summary[method] = {}
        for set_name, values in per_set.items():
            summary[method][set_name] = {}
            for metric in values:
                seeds = [run[key][method][set_name][metric] for run in per_seed]
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


def _cell(per_metric: dict, metric: str) -> str:
    """``mean ± std`` of one summarised metric, blank when not measured."""
    value = per_metric.get(metric, {}).get("mean")
    spread = per_metric.get(metric, {}).get("std")
    return "" if value is None else f"{value:.3f} ± {spread:.3f}"


def markdown_table(report: dict) -> str:
    """Per dataset, means ± standard deviations over seeds: the per-atom force metrics (test
    set x method), the OOD AUROCs against the in-domain set (per atom / per structure) and the
    energy metrics."""
    lines = []
    for dataset, values in report["datasets"].items():
        methods = values["methods"]
        set_names = list(next(iter(methods.values())))
        lines.append(
            f"\n**{dataset}** (M = {values['members']}, {values['epochs']} epochs, "
            f"{values['n_seeds']} seeds; default LTAU's (k, burn-in epochs, distance scale) per seed "
            f"{[tuple(run['choices']['ltau'].values()) for run in values['per_seed']]}; "
            f"train cost ratio "
            f"{values['train_cost_ratio']:.2f}, inference cost ratio "
            f"{values['inference_cost_ratio']:.2f})\n"
        )
        costs = values["baseline_costs"]
        gmm_components = [
            run["baselines"]["gmm_latent"]["components_per_element"] for run in values["per_seed"]
        ]
        llpr_lambdas = [run["baselines"]["llpr"]["lambda_relative"] for run in values["per_seed"]]
        lines.append(
            "Single-model baselines (means over seeds): added inference cost per atom as a "
            "ratio to one plain forward pass: LTAU "
            f"{values['ltau_added_inference_ratio']:.3f}, gmm_latent "
            f"{costs['gmm_latent']['added_inference_ratio']:.3f}, llpr "
            f"{costs['llpr']['added_inference_ratio']:.3f} with a second forward pass "
            f"(the variance alone {costs['llpr']['score_ratio']:.4f}; the feature hook's "
            f"overhead, forward with it minus without, {costs['llpr']['hook_overhead_ratio']:.3f}"
            "); fitting time as a ratio to one model's training: gmm_latent "
            f"{costs['gmm_latent']['fit_cost_ratio']:.4f}, llpr "
            f"{costs['llpr']['fit_cost_ratio']:.4f}; GMM components per element per seed "
            f"{gmm_components}; LLPR λ (relative to the mean eigenvalue of FᵀF) per seed "
            f"{llpr_lambdas}.\n"
        )
        lines.append(f"Per-atom force-error metrics ({dataset}, labelled sets):\n")
        lines.append("| test set | method | " + " | ".join(TABLE_METRICS.values()) + " |")
        lines.append("|---|---|" + "---|" * len(TABLE_METRICS))
        for set_name in set_names:
            for method, per_set in methods.items():
                if "spearman" in per_set[set_name]:
                    cells = [_cell(per_set[set_name], metric) for metric in TABLE_METRICS]
                    lines.append(f"| {set_name} | {method} | " + " | ".join(cells) + " |")
        shifted = [s for s in set_names if s != "in_domain"]
        lines.append(
            f"\nOOD AUROC against the in-domain test set ({dataset}), per atom / per structure:\n"
        )
        lines.append("| method | " + " | ".join(shifted) + " |")
        lines.append("|---|" + "---|" * len(shifted))
        for method, per_set in methods.items():
            cells = [
                " / ".join(_cell(per_set[s], metric) for metric in OOD_METRICS) for s in shifted
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        k_choices = [run["energy_choice"]["k"] for run in values["per_seed"]]
        lines.append(
            f"\nEnergy-error metrics ({dataset}, eV per structure; LTAU energy k per seed "
            f"{k_choices}; one ensemble):\n"
        )
        lines.append("| test set | method | " + " | ".join(ENERGY_METRICS.values()) + " |")
        lines.append("|---|---|" + "---|" * len(ENERGY_METRICS))
        energy = values["energy"]
        for set_name in next(iter(energy.values())):
            for method, per_set in energy.items():
                cells = [_cell(per_set[set_name], metric) for metric in ENERGY_METRICS]
                lines.append(f"| {set_name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


BASELINE_ROWS = ("ltau", "distance", "gmm_latent", "llpr", "ensemble")
GLANCE_METRICS = {
    key: TABLE_METRICS[key]
    for key in ("spearman", "auroc_error_flag", "ause", "miscalibration_area", "coverage90", "crps")
}


def method_costs(values: dict) -> dict[str, tuple[float | None, float | None]]:
    """Per method of :data:`BASELINE_ROWS`, (added inference cost per atom, training cost), as
    ratios to one plain model's forward pass and training; None where not measured. LTAU's
    and distance's training is the one model's (the logging inside it); GMM and LLPR add their
    fit to it; the ensemble trains M models and runs M forwards."""
    costs = values["baseline_costs"]
    forward_us = values["inference_us_per_atom_ltau"] - values["ltau_predict_us_per_atom"]
    return {
        "ltau": (values["ltau_added_inference_ratio"], 1.0),
        "distance": (None, 1.0),
        "gmm_latent": (
            costs["gmm_latent"]["added_inference_ratio"],
            1.0 + costs["gmm_latent"]["fit_cost_ratio"],
        ),
        "llpr": (costs["llpr"]["added_inference_ratio"], 1.0 + costs["llpr"]["fit_cost_ratio"]),
        "ensemble": (
            values["inference_us_per_atom_ensemble"] / forward_us - 1.0,
            values["train_cost_ratio"],
        ),
    }


def baselines_table(report: dict, shallow: dict | None = None) -> str:
    """Per dataset, LTAU beside the baselines on the in-domain and shifted sets: the force
    metrics, the structure-level OOD AUROC and the costs (means over seeds); with ``shallow``
    (a ``benchmarks/shallow_ensemble.py`` report), its ``shallow_ensemble`` rows too."""
    lines = []
    for dataset, values in report["datasets"].items():
        methods, costs = dict(values["methods"]), method_costs(values)
        rows = list(BASELINE_ROWS)
        if shallow is not None and dataset in shallow["datasets"]:
            extra = shallow["datasets"][dataset]
            methods["shallow_ensemble"] = extra["methods"]["shallow_ensemble"]
            costs["shallow_ensemble"] = (extra["added_inference_ratio"], extra["train_cost_ratio"])
            rows.insert(rows.index("ensemble"), "shallow_ensemble")
        lines.append(f"\n**{dataset}**: LTAU beside the baselines (means over seeds)\n")
        header = [*GLANCE_METRICS.values(), "OOD AUROC (structures)"]
        header += ["added inference / atom", "training"]
        lines.append("| test set | method | " + " | ".join(header) + " |")
        lines.append("|---|---|" + "---|" * len(header))
        for set_name in ("in_domain", "shifted"):
            for method in rows:
                per_metric = methods[method][set_name]
                cells = [
                    f"{per_metric[m]['mean']:.3f}"
                    if per_metric.get(m, {}).get("mean") is not None
                    else ""
                    for m in (*GLANCE_METRICS, "auroc_structure_vs_in_domain")
                ]
                cells += ["" if value is None else f"{value:.3f}" for value in costs[method]]
                lines.append(f"| {set_name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _flat(summary: dict, names: tuple[str, ...]) -> dict:
    """``{method: {set: {metric: mean, metric_std: std}}}`` of the metrics ``names``."""
    return {
        method: {
            set_name: {
                key: values[stat]
                for metric, values in per_metric.items()
                if metric in names
                for key, stat in ((metric, "mean"), (f"{metric}_std", "std"))
            }
            for set_name, per_metric in per_set.items()
        }
        for method, per_set in summary.items()
    }


def tables(report: dict, shallow_results: Path) -> str:
    """``table.md``: the baselines at a glance (with the shallow ensemble's rows if
    ``shallow_results`` exists), then every variant and set."""
    shallow = json.loads(shallow_results.read_text()) if shallow_results.exists() else None
    return baselines_table(report, shallow) + markdown_table(report)


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
    parser.add_argument(
        "--tables-from",
        type=Path,
        metavar="RESULTS_JSON",
        help="only rewrite table.md from an earlier run's results.json",
    )
    parser.add_argument(
        "--shallow-results",
        type=Path,
        help="benchmarks/shallow_ensemble.py's results.json, added to the table of the "
        "baselines if it exists (default OUTPUT/shallow/results.json)",
    )
    args = parser.parse_args(argv)
    shallow = args.shallow_results or args.output_dir / "shallow" / "results.json"
    if args.tables_from is not None:
        report = json.loads(args.tables_from.read_text())
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "table.md").write_text(tables(report, shallow))
        print(json.dumps({d: method_costs(v) for d, v in report["datasets"].items()}))
        return report
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
    (args.output_dir / "table.md").write_text(tables(report, shallow))
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=2))
    flat = {
        "train_cost_ratio": {d: v["train_cost_ratio"] for d, v in report["datasets"].items()},
        "inference_cost_ratio": {
            d: v["inference_cost_ratio"] for d, v in report["datasets"].items()
        },
        "baseline_costs": {
            d: {
                method: {
                    key: costs[key]
                    for key in (
                        "added_inference_ratio",
                        "score_ratio",
                        "hook_overhead_ratio",
                        "fit_cost_ratio",
                    )
                    if key in costs
                }
                for method, costs in v["baseline_costs"].items()
            }
            for d, v in report["datasets"].items()
        },
        **{
            d: _flat(v["methods"], (*TABLE_METRICS, *OOD_METRICS))
            | {"energy": _flat(v["energy"], tuple(ENERGY_METRICS))}
            for d, v in report["datasets"].items()
        },
    }
    print(tables(report, shallow))
    print(json.dumps(flat))
    return report


if __name__ == "__main__":
    main()
