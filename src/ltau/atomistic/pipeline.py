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
the chosen distance scale is local). Any model plugs in through an
``evaluate(structures, progress)`` function returning descriptors and force errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ltau import metrics
from ltau.atomistic.structures import LabelledStructures
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator, LTAUPrediction
from ltau.exceptions import LTAUInputError
from ltau.report import SetResults, write_report
from ltau.selection import CV_FOLDS, CV_REPEATS, choose_configuration

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


def evaluate_ltau(
    evaluate: Callable[[LabelledStructures, bool], Evaluation],
    candidates: dict[int, ErrorDistributions],
    fit_set: LabelledStructures,
    validation: LabelledStructures,
    tests: dict[str, LabelledStructures],
    output_dir: Path,
    *,
    in_domain: str,
    calibration: str,
    training: dict,
    title: str,
    started: float,
    group_keys: Sequence[str] = VALIDATION_GROUP_KEYS,
    model_facts: dict | None = None,
) -> dict:
    """The model-agnostic half of the pipeline: fit LTAU on the training atoms' descriptors
    and the burn-in ``candidates`` (:func:`burn_in_candidates`), choose k / burn-in /
    calibration / atol on ``validation``, evaluate the test sets, write ``estimator.h5``, the
    report and metrics into ``output_dir``.

    ``evaluate(structures, progress)`` runs the trained model; ``training`` is reported as is;
    ``started`` is the ``time.perf_counter()`` at the start of the run (for ``wall_seconds``);
    ``model_facts`` (e.g. ``model_sha256``, the fingerprint of the model's weights, which
    calculators check) are stored with the estimator;
    ``group_keys`` name the runs that cross-validation folds keep whole (:func:`run_groups`).
    """
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

    results: dict[str, dict] = {}
    figures: list[SetResults] = []
    in_domain_ood = None
    for name, structures in tests.items():
        evaluation = evaluate(structures, True)
        groups = structures.index.configuration_of_atoms
        prediction = estimator.predict(
            evaluation.descriptors, groups=groups, atol=atol, confidence=CONFIDENCE
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
        if name == in_domain:
            in_domain_ood = prediction.ood_score
        figures.append(
            SetResults(name, prediction.expected_error, prediction.ood_score, observed, pit)
        )
    for name, values in results.items():
        if name != in_domain:
            shifted = next(s for s in figures if s.name == name).ood_score
            values["auroc_ood_score_vs_in_domain"] = metrics.auroc(
                np.concatenate([shifted, in_domain_ood]),
                np.r_[np.ones(shifted.size), np.zeros(in_domain_ood.size)],
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
    page = write_report(output_dir, title, summary, report, figures)
    logger.info(_summary_lines(report, page))
    return report


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
    estimator = LTAUEstimator(selection["k"], distance_scale=selection["distance_scale"]).fit(
        descriptors, candidates[selection["skip_epochs"]]
    )
    estimator.calibrate(
        validation.descriptors,
        validation.force_errors,
        method=calibration,
        groups=structures,
    )
    atol = float(np.quantile(validation.force_errors, ATOL_QUANTILE))
    return estimator, selection, atol


def _labelled_metrics(
    prediction: LTAUPrediction,
    observed: np.ndarray,
    pit: np.ndarray,
    raw_pit: np.ndarray,
    atol: float,
) -> dict:
    exceeds = observed > atol
    flags = (
        metrics.auroc(prediction.exceedance[:, 0], exceeds)
        if exceeds.any() and not exceeds.all()
        else None
    )
    return {
        "n_atoms": int(observed.size),
        "force_rmse": metrics.rmse(observed),
        "force_mae": float(observed.mean()),
        "spearman": metrics.spearman(prediction.expected_error, observed),
        "miscalibration_area": metrics.miscalibration_area(pit),
        "miscalibration_area_uncalibrated": metrics.miscalibration_area(raw_pit),
        "ence": metrics.expected_normalized_calibration_error(prediction.expected_error, observed),
        "coverage90": metrics.interval_coverage(
            observed, prediction.interval_lower, prediction.interval_upper
        ),
        "auroc_error_flag": flags,
        "fraction_above_atol": float(exceeds.mean()),
        "ause": metrics.ause(prediction.expected_error, observed),
    }


def _summary_lines(report: dict, page: Path) -> str:
    lines = [f"LTAU-FF report: {page}"]
    for name, values in report["sets"].items():
        parts = [f"{key}={value:.3f}" for key, value in values.items() if isinstance(value, float)]
        lines.append(f"  {name}: " + ", ".join(parts))
    return "\n".join(lines)
