"""The model-agnostic half of LTAU-FF: fit LTAU on a trained force field's descriptors and
error distributions, make every choice on a validation split, evaluate test sets, report.

Choices that affect uncertainty quality are made on a validation split carved from the
training set (never on a test set). k and the burn-in (how many of each model's first epochs
the error distributions leave out) are chosen together by the 2-fold cross-validated CRPS of
the final, widened and calibrated prediction on it (folds by structure: widening and
calibration fitted on one half, scored on the other). The distance widening (how errors grow
with the atom's and its structure's distance to the training set) and the calibration map are
then fitted on all of it, and the error tolerance ``atol`` used for exceedance flags is its
90th percentile of true errors.

Per-atom quantities: true error ``||F_pred - F_ref||_2`` (eV/Å); predicted expected error
(eV/Å); exceedance ``P(error > atol)``; OOD score = mean Euclidean distance to the k nearest
training atoms in the model's invariant descriptor space. Any model plugs in through an
``evaluate(structures, progress)`` function returning descriptors and force errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ltau import metrics
from ltau._validation import as_error_vector, group_labels
from ltau.atomistic.structures import LabelledStructures
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator, LTAUPrediction
from ltau.exceptions import LTAUInputError
from ltau.recording import ErrorLog, ErrorRecorder
from ltau.report import SetResults, write_report

K_CANDIDATES = (5, 10, 20, 50)
BURN_IN_FRACTIONS = (0.0, 0.25, 0.5, 0.75)
"""Fractions of each model's epochs that the candidate distributions leave out."""
CV_FOLDS = 2
CV_SEED = 0
CONFIDENCE = 0.9
ATOL_QUANTILE = 0.9


def split_validation(
    structures: LabelledStructures, fraction: float, seed: int
) -> tuple[LabelledStructures, LabelledStructures]:
    """Random split by configuration into (fit, validation)."""
    if not 0 < fraction < 1:
        raise LTAUInputError(f"validation_fraction must lie in (0, 1); got {fraction}")
    order = np.random.default_rng(seed).permutation(len(structures.atoms))
    n_validation = max(1, round(fraction * len(order)))
    if n_validation >= len(order):
        raise LTAUInputError("too few training structures to carve out a validation split")
    return structures.subset(np.sort(order[n_validation:])), structures.subset(
        np.sort(order[:n_validation])
    )


class Evaluation(Protocol):
    """A model's per-atom outputs on a set of structures."""

    descriptors: np.ndarray  # (n_atoms, d)
    force_errors: np.ndarray | None  # (n_atoms,) eV/Å, None without reference forces


def burn_in_candidates(
    source: ErrorLog | ErrorRecorder,
    n_bins: int = 100,
    members: Sequence[int] | None = None,
    progress: bool = False,
) -> dict[int, ErrorDistributions]:
    """Per-sample distributions that leave out each model's first epochs, for every fraction
    in :data:`BURN_IN_FRACTIONS` (of the epochs of the model with fewest), all on the
    log-spaced bins of the whole log: ``{epochs skipped per model: distributions}``.

    ``source``: a recorder with a log file, or an open log; ``members``: the models whose
    epochs are pooled (default: all).
    """
    epochs = source.epochs_by_member
    chosen = epochs if members is None else {m: epochs.get(m, 0) for m in members}
    n_epochs = min(chosen.values(), default=0)
    if n_epochs == 0:
        raise LTAUInputError("the error log holds no completed epoch for these models")
    whole = source.distributions(n_bins=n_bins, spacing="log", members=members, progress=progress)
    candidates = {0: whole}
    for fraction in BURN_IN_FRACTIONS:
        skip = int(fraction * n_epochs)
        if skip not in candidates:
            candidates[skip] = source.distributions(
                whole.bins, members=members, skip_epochs=skip, progress=progress
            )
    return candidates


def choose_configuration(
    descriptors: np.ndarray,
    candidates: dict[int, ErrorDistributions],
    validation_descriptors: np.ndarray,
    validation_errors: np.ndarray,
    validation_groups: np.ndarray | None,
    calibration: str = "isotonic",
    *,
    widen: bool = True,
    group_widening: bool = True,
    k_candidates: tuple[int, ...] = K_CANDIDATES,
) -> dict:
    """Choose k and the burn-in (a key of ``candidates``, see :func:`burn_in_candidates`) by
    the :data:`CV_FOLDS`-fold cross-validated CRPS of the calibrated prediction on validation.

    Validation samples are split into folds by ``validation_groups`` (a structure id per
    atom, ``(n,)``; ``None``, or fewer structures than folds: by sample). For every pair, an
    estimator on the training ``descriptors`` ``(n_train, d)`` and that burn-in's
    distributions is calibrated (``calibration``, with the distance widening if ``widen``, on
    structures too if ``group_widening``) on all folds but one and scored (CRPS, error units)
    on the held-out fold. Returns ``{"k", "skip_epochs", "cv_crps": {"skip_epochs=S,k=K":
    CRPS}}``.
    """
    as_error_vector(validation_errors, "validation errors")
    errors = np.asarray(validation_errors, dtype=np.float64)
    n = errors.shape[0]
    groups = (
        np.arange(n) if validation_groups is None else group_labels(validation_groups, n, "atom")
    )
    # Folds of whole structures; with fewer structures than folds, of single samples.
    units = groups if np.unique(groups).size >= CV_FOLDS else np.arange(n)
    unique_units = np.unique(units)
    if unique_units.size < CV_FOLDS:
        raise LTAUInputError(
            f"choosing k and the burn-in needs at least {CV_FOLDS} validation samples; got {n}"
        )
    shuffled = np.random.default_rng(CV_SEED).permutation(unique_units)
    fold_of_unit = dict(zip(shuffled.tolist(), np.arange(shuffled.size) % CV_FOLDS, strict=True))
    folds = np.array([fold_of_unit[u] for u in units.tolist()])
    fit_groups = groups if (widen and group_widening and validation_groups is not None) else None
    scores: dict[str, float] = {}
    best: tuple[float, int, int] | None = None
    for skip, distributions in sorted(candidates.items()):
        for k in k_candidates:
            if k > descriptors.shape[0]:
                continue
            estimator = LTAUEstimator(k).fit(descriptors, distributions)
            crps_sum = 0.0
            for fold in range(CV_FOLDS):
                held_out = folds == fold
                estimator.calibrate(
                    validation_descriptors[~held_out],
                    errors[~held_out],
                    method=calibration,
                    groups=None if fit_groups is None else fit_groups[~held_out],
                    widen=widen,
                )
                prediction = estimator.predict(
                    validation_descriptors[held_out],
                    groups=None if fit_groups is None else fit_groups[held_out],
                    return_pdf=True,
                )
                mass = prediction.pdf * prediction.bins.widths
                crps = metrics.crps_histogram(mass, prediction.bins, errors[held_out])
                crps_sum += crps * np.count_nonzero(held_out)
            score = scores[f"skip_epochs={skip},k={k}"] = crps_sum / n
            if best is None or score < best[0]:
                best = (score, skip, k)
    if best is None:
        raise LTAUInputError(
            f"no k among {k_candidates} fits {descriptors.shape[0]} training samples"
        )
    return {"k": best[2], "skip_epochs": best[1], "cv_crps": scores}


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
) -> dict:
    """The model-agnostic half of the pipeline: fit LTAU on the training atoms' descriptors
    and the burn-in ``candidates`` (:func:`burn_in_candidates`), choose k / burn-in /
    calibration / atol on ``validation``, evaluate the test sets, write ``estimator.h5``, the
    report and metrics into ``output_dir``.

    ``evaluate(structures, progress)`` runs the trained model; ``training`` is reported as is;
    ``started`` is the ``time.perf_counter()`` at the start of the run (for ``wall_seconds``).
    """
    fit_eval = evaluate(fit_set, True)
    validation_eval = evaluate(validation, False)
    estimator, selection, atol = fit_ltau(
        fit_eval.descriptors,
        candidates,
        validation_eval,
        validation.index.configuration_of_atoms,
        calibration,
    )
    estimator.save(
        output_dir / "estimator.h5",
        metadata={
            "error": "per-atom force-error norm",
            "unit": "eV/A",
            "model": "model.pt",
            "atol_eV_per_A": atol,
            "skip_epochs": selection["skip_epochs"],
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
            "selection": "2-fold cross-validated CRPS (folds by structure)",
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
        f"{selection['skip_epochs']} epochs and {calibration} calibration chosen/fitted on "
        f"{len(validation.atoms)} validation structures; "
        f"atol = {atol:.3g} eV/Å."
    )
    page = write_report(output_dir, title, summary, report, figures)
    print(_summary_lines(report, page))
    return report


def headline_metrics(
    report: dict, in_domain: str, shifted: str, ood_only: tuple[str, ...] = ()
) -> dict:
    """The flat summary a benchmark prints from an :func:`evaluate_ltau` ``report``: per-atom
    metrics of the ``in_domain`` and ``shifted`` sets, OOD-score AUROCs (also of the unlabelled
    ``ood_only`` sets, keyed by their lower-cased names), choices and timings."""
    sets = report["sets"]
    summary = {}
    for metric in ("spearman", "miscalibration_area", "coverage90"):
        summary[f"{metric}_in_domain"] = sets[in_domain][metric]
        summary[f"{metric}_shifted"] = sets[shifted][metric]
    summary["auroc_ood_score_shifted"] = sets[shifted]["auroc_ood_score_vs_in_domain"]
    for name in ood_only:
        summary[f"auroc_ood_score_{name.lower()}"] = sets[name]["auroc_ood_score_vs_in_domain"]
    summary["auroc_error_flag_in_domain"] = sets[in_domain]["auroc_error_flag"]
    summary["auroc_error_flag_shifted"] = sets[shifted]["auroc_error_flag"]
    summary["logging_overhead"] = report["training"]["logging_overhead"]
    summary["force_rmse_in_domain"] = sets[in_domain]["force_rmse"]
    summary["force_rmse_shifted"] = sets[shifted]["force_rmse"]
    summary["k"] = report["chosen_on_validation"]["k"]
    summary["skip_epochs"] = report["chosen_on_validation"]["skip_epochs"]
    summary["atol"] = report["chosen_on_validation"]["atol_eV_per_A"]
    summary["epochs"] = report["training"]["epochs"]
    summary["epoch_seconds_mean"] = report["training"]["epoch_seconds_mean"]
    summary["wall_seconds"] = report["wall_seconds"]
    return summary


def fit_ltau(
    descriptors: np.ndarray,
    candidates: dict[int, ErrorDistributions],
    validation: Evaluation,
    validation_structures: np.ndarray,
    calibration: str = "isotonic",
) -> tuple[LTAUEstimator, dict, float]:
    """Fit LTAU on the training atoms' ``descriptors`` and burn-in ``candidates``
    (:func:`burn_in_candidates`), with every choice made on the labelled ``validation``
    evaluation (never a test set): k and the burn-in (:func:`choose_configuration`), then the
    distance widening and ``calibration`` map on all of it (``validation_structures``: the
    structure of each validation atom, ``(n_atoms,)``), and ``atol`` (eV/Å), the
    :data:`ATOL_QUANTILE` quantile of the validation errors.

    Returns ``(estimator, selection, atol)``, ``selection`` as from
    :func:`choose_configuration`.
    """
    if validation.force_errors is None:
        raise LTAUInputError("the validation structures need reference forces")
    selection = choose_configuration(
        descriptors,
        candidates,
        validation.descriptors,
        validation.force_errors,
        validation_structures,
        calibration,
    )
    estimator = LTAUEstimator(selection["k"]).fit(descriptors, candidates[selection["skip_epochs"]])
    estimator.calibrate(
        validation.descriptors,
        validation.force_errors,
        method=calibration,
        groups=validation_structures,
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
