"""The model-agnostic half of LTAU-FF: fit LTAU on a trained force field's descriptors and
error distributions, make every choice on a validation split, evaluate test sets, report.

Choices that affect uncertainty quality are made on a validation split carved from the
training set (never on a test set), in whole MD runs or relaxations where the structures say
which they came from. k and the burn-in (how many of each model's first epochs the error
distributions leave out) are chosen together by the 2-fold cross-validated CRPS of the final,
widened and calibrated prediction on it, averaged over 5 shuffles of the folds (folds of
whole runs, else of structures: widening and calibration fitted on one half, scored on the
other). The distance
widening (how errors grow with the atom's and its structure's distance to the training set)
and the calibration map are then fitted on all of it, and the error tolerance ``atol`` used
for exceedance flags is its 90th percentile of true errors.

Per-atom quantities: true error ``||F_pred - F_ref||_2`` (eV/Å); predicted expected error
(eV/Å); exceedance ``P(error > atol)``; OOD score = mean Euclidean distance to the k nearest
training atoms in the model's invariant descriptor space (relative to their local scales if
the chosen distance scale is local). Per structure: the structure OOD score (the atoms' scores
aggregated as chosen on the validation structures, :mod:`ltau.structure_scoring`), whether it
exceeds the validated threshold, and the largest expected force error of its atoms (eV/Å),
scored by Spearman against the structure's largest true force error. Any force field plugs in through :func:`run_pipeline`:
its error log and an ``evaluate(structures, progress)`` function returning descriptors and
force errors.

Energy uncertainty (optional, with a per-configuration energy log, see :mod:`ltau.energy`):
an estimator over training structures' mean descriptors, with the force estimator's burn-in,
k chosen by validation CRPS, widened and calibrated on the validation structures; each
labelled test set then gets an ``energy`` block: ``ltau_expected_energy_error`` statistics
(eV per structure), its Spearman against the true ``|E_pred - E_ref|``, miscalibration area
and 90% coverage.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ltau import metrics
from ltau.atomistic.structures import LabelledStructures
from ltau.distributions import ErrorDistributions
from ltau.energy import (
    ENERGY_UNIT,
    check_energy_log,
    energy_errors,
    fit_energy_estimator,
    structure_descriptors,
)
from ltau.estimator import GroupSummary, LTAUEstimator, LTAUPrediction
from ltau.exceptions import LTAUInputError
from ltau.recording import ErrorLog, ErrorRecorder
from ltau.report import SetResults, element_breakdown, write_report
from ltau.selection import CV_FOLDS, CV_REPEATS, burn_in_candidates, choose_configuration
from ltau.structure_scoring import StructureScoring

logger = logging.getLogger(__name__)

VALIDATION_GROUP_KEYS = ("trajectory", "relaxation")
"""``atoms.info`` keys whose shared values make configurations one group of the validation
split (the frames of one MD run or one relaxation), as the built-in EMT data records them."""
CONFIDENCE = 0.9
ATOL_QUANTILE = 0.9


def split_validation(
    structures: LabelledStructures,
    fraction: float,
    seed: int,
    group_keys: Sequence[str] = VALIDATION_GROUP_KEYS,
) -> tuple[LabelledStructures, LabelledStructures]:
    """Random split into (fit, validation) that holds out about ``fraction`` of the
    configurations, in whole groups.

    Configurations sharing a value of the first of ``group_keys`` that their ``atoms.info``
    holds (and the same ``config_type``) form one group, e.g. the frames of one MD run: the
    validation set then stands for new runs, as test sets do, rather than for frames
    correlated with training ones. Configurations without any of the keys are groups of one.
    Groups are drawn in a random order until the validation set holds ``round(fraction * n)``
    configurations or more.
    """
    if not 0 < fraction < 1:
        raise LTAUInputError(f"validation_fraction must lie in (0, 1); got {fraction}")
    group_of_config = run_groups(structures, group_keys)
    n_groups = group_of_config.max() + 1
    wanted = max(1, round(fraction * len(group_of_config)))
    held_out = np.zeros(len(group_of_config), dtype=bool)
    for group in np.random.default_rng(seed).permutation(n_groups):
        if np.count_nonzero(held_out) >= wanted:
            break
        held_out |= group_of_config == group
    if held_out.all():
        raise LTAUInputError(
            f"too few training structures ({len(held_out)} in {n_groups} groups by "
            f"{list(group_keys)}) to carve out a validation split"
        )
    return structures.subset(np.flatnonzero(~held_out)), structures.subset(np.flatnonzero(held_out))


def run_groups(
    structures: LabelledStructures, group_keys: Sequence[str] = VALIDATION_GROUP_KEYS
) -> np.ndarray:
    """The run (group) of every configuration, ``(n_configs,)`` ints numbered in order of first
    appearance: see :func:`split_validation`."""
    if isinstance(group_keys, str) or not all(isinstance(k, str) for k in group_keys):
        raise LTAUInputError(f"group_keys must be a sequence of info keys; got {group_keys!r}")
    ids: dict[tuple, int] = {}
    labels = []
    for position, atoms in enumerate(structures.atoms):
        key = next((k for k in group_keys if k in atoms.info), None)
        label = (
            ("single", position)
            if key is None
            else (key, str(atoms.info[key]), str(atoms.info.get("config_type")))
        )
        labels.append(ids.setdefault(label, len(ids)))
    return np.asarray(labels, dtype=np.int64)


class Evaluation(Protocol):
    """A model's per-atom outputs on a set of structures."""

    descriptors: np.ndarray  # (n_atoms, d)
    force_errors: np.ndarray | None  # (n_atoms,) eV/Å, None without reference forces


def check_in_domain(tests: dict[str, LabelledStructures], in_domain: str) -> None:
    """Raise unless ``in_domain`` names one of the ``tests`` (check before training)."""
    if in_domain not in tests:
        raise LTAUInputError(
            f"in-domain test set {in_domain!r} not among the test sets {sorted(tests)}"
        )


def run_pipeline(
    evaluate: Callable[[LabelledStructures, bool], Evaluation],
    errors: ErrorLog | ErrorRecorder,
    fit_set: LabelledStructures,
    validation: LabelledStructures,
    tests: dict[str, LabelledStructures],
    output_dir: str | os.PathLike,
    *,
    training: dict,
    in_domain: str,
    calibration: str = "isotonic",
    title: str = "LTAU-FF",
    n_bins: int = 100,
    group_keys: Sequence[str] = VALIDATION_GROUP_KEYS,
    started: float | None = None,
    samples: np.ndarray | None = None,
    model_facts: dict | None = None,
    energy_log: ErrorLog | ErrorRecorder | None = None,
    energy_samples: np.ndarray | None = None,
) -> dict:
    """The model-agnostic half of LTAU-FF, for any force field trained on ``fit_set`` with its
    per-atom errors recorded in ``errors`` (a recorder with a log file, or an open log; one
    sample per atom of ``fit_set``, models pooled).

    Builds the burn-in candidates from the log (:func:`~ltau.selection.burn_in_candidates`,
    ``n_bins`` log-spaced bins), fits LTAU on the training atoms' descriptors with every choice
    made on ``validation`` (:func:`fit_ltau`), evaluates the ``tests`` (OOD AUROCs against
    ``in_domain``), and writes ``estimator.h5``, ``metrics.json`` and ``report.html`` into
    ``output_dir``. Returns the metrics dictionary (what ``metrics.json`` holds).

    ``evaluate(structures, progress)`` runs the trained model; ``training`` holds what only
    the caller knows (timings, settings) and is reported after the split sizes and the epochs
    and models read from the log; ``group_keys`` name the runs that the validation split and
    cross-validation keep whole (:func:`run_groups`); ``started`` is the
    ``time.perf_counter()`` at the start of the run (default: now), for ``wall_seconds``;
    ``samples``: the log sample of every ``fit_set`` atom ``(fit_set.n_atoms,)``, when the log
    holds more (a trainer's log of its whole training file; default: all samples, in order);
    ``model_facts`` (e.g. ``model_sha256``, the fingerprint of the model's weights, which the
    calculators check) are stored with the estimator. ``energy_log``: the per-configuration
    energy-error log (:func:`ltau.energy.energy_recorder`) with ``energy_samples``, the log
    sample of every ``fit_set`` configuration (default: all, in order); it adds
    ``energy_estimator.h5`` and each labelled test set's ``energy`` metrics.
    """
    started = time.perf_counter() if started is None else started
    check_in_domain(tests, in_domain)
    n_samples = errors.n_samples if samples is None else len(samples)
    if n_samples != fit_set.n_atoms:
        raise LTAUInputError(
            f"the error log has {n_samples} samples for the training structures' "
            f"{fit_set.n_atoms} atoms"
        )
    if energy_log is not None:
        n_configs = len(fit_set.atoms)
        check_energy_log(energy_log, None if energy_samples is not None else n_configs)
        if energy_samples is not None and len(energy_samples) != n_configs:
            raise LTAUInputError(
                f"energy_samples names {len(energy_samples)} log samples for the training "
                f"structures' {n_configs} configurations"
            )
        if fit_set.energies is None or validation.energies is None:
            raise LTAUInputError("energy uncertainty needs reference energies of every structure")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    candidates = burn_in_candidates(errors, n_bins=n_bins, progress=True, samples=samples)
    epochs = errors.epochs_by_member
    training = {
        "n_fit_configs": len(fit_set.atoms),
        "n_fit_atoms": fit_set.n_atoms,
        "n_validation_configs": len(validation.atoms),
        "n_validation_runs": int(np.unique(run_groups(validation, group_keys)).size),
        "validation_group_keys": list(group_keys),
        "epochs": min(epochs.values()),
        "n_models_pooled": len(epochs),
        **training,
    }
    fit_eval = evaluate(fit_set, True)
    validation_eval = evaluate(validation, False)
    estimator, selection, atol = fit_ltau(
        fit_eval.descriptors,
        candidates,
        validation_eval,
        validation,
        calibration,
        group_keys=group_keys,
    )
    estimator.save(
        output_dir / "estimator.h5",
        metadata={
            "error": "per-atom force-error norm",
            "unit": "eV/A",
            "model": "model.pt",
            "atol_eV_per_A": atol,
            "skip_epochs": selection["skip_epochs"],
            **(model_facts or {}),
        },
    )
    results, sets = _evaluate_tests(evaluate, estimator, tests, atol, in_domain)
    energy_choice = None
    if energy_log is not None:
        energy_estimator, energy_choice = _fit_energy(
            energy_log,
            energy_samples,
            fit_set,
            fit_eval,
            validation,
            validation_eval,
            selection["skip_epochs"],
            n_bins,
            calibration,
        )
        energy_estimator.save(
            output_dir / "energy_estimator.h5",
            metadata={
                "error": "|E_pred - E_ref| per structure",
                "unit": ENERGY_UNIT,
                "structure_descriptor": "mean of the atoms' descriptors",
                "skip_epochs": selection["skip_epochs"],
                **(model_facts or {}),
            },
        )
        for name, structures in tests.items():
            if structures.energies is not None:
                results[name]["energy"] = energy_metrics(
                    energy_estimator, evaluate(structures, False), structures
                )
    report = {
        "training": training,
        "chosen_on_validation": {
            "k": estimator.n_neighbors,
            "skip_epochs": selection["skip_epochs"],
            "distance_scale": estimator.distance_scale,
            "selection": f"{CV_FOLDS}-fold cross-validated CRPS, {CV_REPEATS} shuffles "
            "(folds of whole runs, else of structures)",
            "cv_crps": selection["cv_crps"],
            "calibration": calibration,
            "atol_eV_per_A": atol,
            "atol_rule": f"{ATOL_QUANTILE:.0%} quantile of validation force errors",
            **({"energy": energy_choice} if energy_choice is not None else {}),
            "structure_scoring": (
                None
                if estimator.structure_scoring_ is None
                else estimator.structure_scoring_.to_dict()
            ),
        },
        "validation_force_rmse": metrics.rmse(validation_eval.force_errors),
        "sets": results,
        "wall_seconds": time.perf_counter() - started,
    }
    summary = (
        f"{len(fit_set.atoms)} training structures ({fit_set.n_atoms} atoms), "
        f"{training['epochs']} epochs, k={estimator.n_neighbors}, a burn-in of "
        f"{selection['skip_epochs']} epochs, {estimator.distance_scale} distances and "
        f"{calibration} calibration chosen/fitted on "
        f"{len(validation.atoms)} validation structures; "
        f"atol = {atol:.3g} eV/Å."
    )
    page = write_report(
        output_dir,
        title,
        summary,
        report,
        sets,
        in_domain=in_domain,
        confidence=CONFIDENCE,
        samples="atoms",
    )
    logger.info(_summary_lines(report, page))
    return report


def _evaluate_tests(
    evaluate: Callable[[LabelledStructures, bool], Evaluation],
    estimator: LTAUEstimator,
    tests: dict[str, LabelledStructures],
    atol: float,
    in_domain: str,
) -> tuple[dict[str, dict], list[SetResults]]:
    """Per-set metrics (with the per-element breakdown of labelled sets, the structure-level
    figures, and the atom and structure OOD-score AUROCs of every other set against
    ``in_domain``) and the per-atom arrays of the report."""
    results: dict[str, dict] = {}
    sets: list[SetResults] = []
    structure_scores: dict[str, np.ndarray] = {}
    for name, structures in tests.items():
        evaluation = evaluate(structures, True)
        groups = structures.index.configuration_of_atoms
        prediction = estimator.predict(
            evaluation.descriptors,
            groups=groups,
            atol=atol,
            confidence=CONFIDENCE,
            return_pdf=evaluation.force_errors is not None,
        )
        observed = evaluation.force_errors
        pit = None
        if observed is not None:
            pit = estimator.probability_integral_transform(
                evaluation.descriptors, observed, groups=groups
            )
            raw_pit = estimator.probability_integral_transform(
                evaluation.descriptors, observed, calibrated=False
            )
            results[name] = _labelled_metrics(prediction, observed, pit, raw_pit, atol)
        else:
            results[name] = {"n_atoms": int(prediction.ood_score.size)}
        results[name]["mean_ood_score"] = float(prediction.ood_score.mean())
        results[name]["mean_expected_error"] = float(prediction.expected_error.mean())
        results[name]["n_below_resolution"] = int(np.count_nonzero(prediction.below_resolution))
        structure = estimator.per_structure(prediction, groups)
        structure_scores[name] = structure.structure_ood_score
        results[name].update(_structure_metrics(structure, observed, groups))
        set_results = SetResults(
            name,
            prediction.expected_error,
            prediction.ood_score,
            observed,
            pit,
            prediction.interval_lower,
            prediction.interval_upper,
            structures.chemical_symbols,
        )
        if observed is not None:
            results[name]["per_element"] = element_breakdown(set_results)
        sets.append(set_results)
    in_domain_ood = next(s.ood_score for s in sets if s.name == in_domain)
    for set_results in sets:
        if set_results.name != in_domain:
            shifted = set_results.ood_score
            results[set_results.name]["auroc_ood_score_vs_in_domain"] = metrics.auroc(
                np.concatenate([shifted, in_domain_ood]),
                np.r_[np.ones(shifted.size), np.zeros(in_domain_ood.size)],
            )
    in_domain_structures = structure_scores[in_domain]
    for name, scores in structure_scores.items():
        if name != in_domain:
            results[name]["auroc_structure_ood_score_vs_in_domain"] = metrics.auroc(
                np.concatenate([scores, in_domain_structures]),
                np.r_[np.ones(scores.size), np.zeros(in_domain_structures.size)],
            )
    return results, sets


def _structure_metrics(
    structure: GroupSummary, observed: np.ndarray | None, groups: np.ndarray
) -> dict:
    """A set's per-structure figures: how many structures, their mean OOD score, the fraction
    flagged out of domain and, with true errors ``observed`` ``(n_atoms,)`` (eV/Å), the
    Spearman correlation of each structure's largest expected error with its largest true
    error."""
    figures: dict = {
        "n_structures": int(structure.group_ids.size),
        "mean_structure_ood_score": float(structure.structure_ood_score.mean()),
    }
    if structure.ood_flag is not None:
        figures["fraction_structures_flagged_ood"] = float(structure.ood_flag.mean())
    if observed is not None and structure.group_ids.size >= 2:
        _, max_observed = StructureScoring("max").scores(observed, groups)
        figures["structure_spearman"] = metrics.spearman(structure.max_expected_error, max_observed)
    return figures


def fit_ltau(
    descriptors: np.ndarray,
    candidates: dict[int, ErrorDistributions],
    validation: Evaluation,
    validation_set: LabelledStructures,
    calibration: str = "isotonic",
    *,
    group_keys: Sequence[str] = VALIDATION_GROUP_KEYS,
) -> tuple[LTAUEstimator, dict, float]:
    """Fit LTAU on the training atoms' ``descriptors`` and burn-in ``candidates``
    (:func:`burn_in_candidates`), with every choice made on the labelled ``validation``
    evaluation of ``validation_set`` (never a test set): k, the burn-in and the distance scale
    (:func:`choose_configuration`, folds of whole runs by ``group_keys``, see
    :func:`run_groups`), then the distance widening (structures as groups) and
    ``calibration`` map on all of it, and ``atol`` (eV/Å), the :data:`ATOL_QUANTILE` quantile
    of the validation errors.

    Returns ``(estimator, selection, atol)``, ``selection`` as from
    :func:`choose_configuration`.
    """
    if validation.force_errors is None:
        raise LTAUInputError("the validation structures need reference forces")
    structures = validation_set.index.configuration_of_atoms
    selection = choose_configuration(
        descriptors,
        candidates,
        validation.descriptors,
        validation.force_errors,
        structures,
        calibration,
        fold_groups=run_groups(validation_set, group_keys)[structures],
    )
    estimator = LTAUEstimator(
        selection["k"], distance_scale=selection["distance_scale"], index="auto"
    ).fit(descriptors, candidates[selection["skip_epochs"]])
    estimator.calibrate(
        validation.descriptors,
        validation.force_errors,
        method=calibration,
        groups=structures,
    )
    atol = float(np.quantile(validation.force_errors, ATOL_QUANTILE))
    return estimator, selection, atol


def _fit_energy(
    energy_log: ErrorLog | ErrorRecorder,
    energy_samples: np.ndarray | None,
    fit_set: LabelledStructures,
    fit_eval: Evaluation,
    validation: LabelledStructures,
    validation_eval: Evaluation,
    skip_epochs: int,
    n_bins: int,
    calibration: str,
) -> tuple[LTAUEstimator, dict]:
    """The energy estimator (see :func:`ltau.energy.fit_energy_estimator`) on the fit set's
    structure descriptors and the energy log's distributions after ``skip_epochs``."""
    distributions = energy_log.distributions(
        n_bins=n_bins, skip_epochs=skip_epochs, samples=energy_samples
    )
    return fit_energy_estimator(
        structure_descriptors(fit_eval.descriptors, fit_set.index.configuration_of_atoms),
        distributions,
        structure_descriptors(validation_eval.descriptors, validation.index.configuration_of_atoms),
        energy_errors(_energies(validation_eval), validation.energies),
        calibration=calibration,
    )


def energy_metrics(
    energy_estimator: LTAUEstimator, evaluation: Evaluation, structures: LabelledStructures
) -> dict:
    """A labelled set's energy-uncertainty metrics: Spearman of ``ltau_expected_energy_error``
    against ``|E_pred - E_ref|`` (eV per structure), miscalibration area, 90% coverage, CRPS."""
    queries = structure_descriptors(evaluation.descriptors, structures.index.configuration_of_atoms)
    observed = energy_errors(_energies(evaluation), structures.energies)
    prediction = energy_estimator.predict(queries, confidence=CONFIDENCE, return_pdf=True)
    pit = energy_estimator.probability_integral_transform(queries, observed)
    bundle = prediction.uq_metrics(observed, pit=pit)
    bundle.pop("n")
    return {
        "unit": ENERGY_UNIT,
        "n_structures": int(observed.size),
        "energy_mae": float(observed.mean()),
        "mean_ltau_expected_energy_error": float(prediction.expected_error.mean()),
        **bundle,
    }


def _energies(evaluation: Evaluation) -> np.ndarray:
    """The predicted energies (eV) of an evaluation, which the energy route needs."""
    energies = getattr(evaluation, "energies", None)
    if energies is None:
        raise LTAUInputError("energy uncertainty needs the model's predicted energies")
    return np.asarray(energies)


def _labelled_metrics(
    prediction: LTAUPrediction,
    observed: np.ndarray,
    pit: np.ndarray,
    raw_pit: np.ndarray,
    atol: float,
) -> dict:
    """A test set's force-error statistics (eV/Å) and :func:`ltau.metrics.uq_metrics` of its
    calibrated ``prediction`` (made with ``atol``, the interval and the PDF) and PIT values,
    plus the miscalibration area of the uncalibrated PIT values ``raw_pit``."""
    bundle = prediction.uq_metrics(observed, pit=pit, atol=atol)
    bundle.pop("n")
    return {
        "n_atoms": int(observed.size),
        "force_rmse": metrics.rmse(observed),
        "force_mae": float(observed.mean()),
        **bundle,
        "miscalibration_area_uncalibrated": metrics.miscalibration_area(raw_pit),
    }


def _summary_lines(report: dict, page: Path) -> str:
    lines = [f"LTAU-FF report: {page}"]
    for name, values in report["sets"].items():
        parts = [f"{key}={value:.3f}" for key, value in values.items() if isinstance(value, float)]
        lines.append(f"  {name}: " + ", ".join(parts))
    return "\n".join(lines)
