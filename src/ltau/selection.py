"""Model-agnostic choice of LTAU's settings on validation data: k, the burn-in (how many of
each model's first epochs the error distributions leave out) and the distance scale.

Every setting is scored by the cross-validated CRPS (error units, lower is better) of the
final, widened and calibrated prediction: the widening and calibration are fitted on the
training folds of the validation samples and scored on the held-out fold. The splitter is
injectable in the scikit-learn / MAPIE style: any object with ``split(X, y, groups)`` yielding
``(train_indices, test_indices)`` (``sklearn.model_selection.GroupKFold`` for one) may replace
the default :class:`RepeatedGroupFolds`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from ltau import metrics
from ltau._checks import as_error_vector, as_float_matrix, group_labels, positive_int
from ltau.calibration import MIN_TOTAL_EXPONENT
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError
from ltau.recording import ErrorLog, ErrorRecorder
from ltau.search import NeighborIndex

K_CANDIDATES = (5, 10, 20, 50)
DISTANCE_SCALES = ("absolute", "local")
"""Candidate ``distance_scale`` settings of :class:`~ltau.estimator.LTAUEstimator`."""
BURN_IN_FRACTIONS = (0.0, 0.25, 0.5, 0.75)
"""Fractions of each model's epochs that the candidate distributions leave out."""
CV_FOLDS = 2
CV_REPEATS = 5
"""Cross-validation is repeated with this many shuffles of the folds, to steady the choice."""
CV_SEED = 0

logger = logging.getLogger(__name__)


class Splitter(Protocol):
    """What :func:`choose_configuration` needs of a cross-validation splitter (the
    scikit-learn protocol)."""

    def split(
        self, X: np.ndarray, y: np.ndarray | None = None, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class RepeatedGroupFolds:
    """``n_folds``-fold cross-validation over whole groups, repeated ``n_repeats`` times with a
    fresh shuffle of the groups each time (seeded by ``seed``).

    Group ``g`` (in order of the sorted distinct labels) of a shuffle goes to fold
    ``position_of_g_in_the_permutation % n_folds``. ``split`` follows scikit-learn's splitter
    protocol: it yields ``(train_indices, test_indices)``, repeat by repeat, fold by fold.
    """

    def __init__(self, n_folds: int = CV_FOLDS, n_repeats: int = CV_REPEATS, seed: int = CV_SEED):
        self.n_folds = positive_int(n_folds, "n_folds")
        self.n_repeats = positive_int(n_repeats, "n_repeats")
        self.seed = seed
        if self.n_folds < 2:
            raise LTAUInputError(f"n_folds must be at least 2; got {n_folds}")

    @property
    def n_splits(self) -> int:
        """Distinct groups needed: one per fold."""
        return self.n_folds

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of (train, test) pairs ``split`` yields."""
        return self.n_folds * self.n_repeats

    def fold_assignments(self, groups: np.ndarray) -> list[np.ndarray]:
        """``n_repeats`` assignments of samples to folds: a list of ``(n,)`` fold numbers; all
        samples of one group share a fold."""
        unique_groups, group_of_sample = np.unique(groups, return_inverse=True)
        if unique_groups.size < self.n_folds:
            raise LTAUInputError(
                f"{self.n_folds}-fold cross-validation needs at least {self.n_folds} groups; "
                f"got {unique_groups.size}"
            )
        rng = np.random.default_rng(self.seed)
        assignments = []
        for _ in range(self.n_repeats):
            fold_of_group = np.empty(unique_groups.size, dtype=np.int64)
            fold_of_group[rng.permutation(unique_groups.size)] = (
                np.arange(unique_groups.size) % self.n_folds
            )
            assignments.append(fold_of_group[group_of_sample])
        return assignments

    def split(
        self, X: np.ndarray, y: np.ndarray | None = None, groups: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_indices, test_indices)``; ``groups`` default to one per sample."""
        n = len(X)
        labels = np.arange(n) if groups is None else np.asarray(groups)
        for fold_of_sample in self.fold_assignments(labels):
            for fold in range(self.n_folds):
                held_out = fold_of_sample == fold
                yield np.flatnonzero(~held_out), np.flatnonzero(held_out)


def burn_in_candidates(
    source: ErrorLog | ErrorRecorder,
    n_bins: int = 100,
    members: Sequence[int] | None = None,
    progress: bool = False,
    samples: Sequence[int] | np.ndarray | None = None,
) -> dict[int, ErrorDistributions]:
    """Per-sample distributions that leave out each model's first epochs, for every fraction
    in :data:`BURN_IN_FRACTIONS` (of the epochs of the model with fewest), all on the
    log-spaced bins of the whole log: ``{epochs skipped per model: distributions}``.

    ``source``: a recorder with a log file, or an open log; ``members``: the models whose
    epochs are pooled (default: all); ``samples``: only these sample ids (e.g. the atoms a
    trainer trained on; default all). A burn-in after which one of them has no recorded epoch
    left (a trainer that drops a last partial batch skips a few configurations each epoch) is
    not a candidate.
    """
    if not isinstance(source, (ErrorLog, ErrorRecorder)):
        raise LTAUInputError(
            f"source must be an ErrorLog or an ErrorRecorder; got {type(source).__name__}"
        )
    epochs = source.epochs_by_member
    chosen = epochs if members is None else {m: epochs.get(m, 0) for m in members}
    n_epochs = min(chosen.values(), default=0)
    if n_epochs == 0:
        raise LTAUInputError("the error log holds no completed epoch for these models")
    whole = source.distributions(
        n_bins=n_bins, spacing="log", members=members, progress=progress, samples=samples
    )
    candidates = {0: whole}
    for fraction in BURN_IN_FRACTIONS:
        skip = int(fraction * n_epochs)
        if skip in candidates:
            continue
        if samples is not None and not source.recorded_epochs(members, skip, samples).all():
            logger.info("burn-in %d leaves some samples without a recorded epoch: skipped", skip)
            continue
        candidates[skip] = source.distributions(
            whole.bins, members=members, skip_epochs=skip, progress=progress, samples=samples
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
    widening_floor: float = MIN_TOTAL_EXPONENT,
    k_candidates: tuple[int, ...] = K_CANDIDATES,
    distance_scales: tuple[str, ...] = DISTANCE_SCALES,
    fold_groups: np.ndarray | None = None,
    cv: Splitter | None = None,
) -> dict:
    """Choose k, the burn-in (a key of ``candidates``, see :func:`burn_in_candidates`) and
    the estimator's ``distance_scale`` (one of ``distance_scales``) by
    the cross-validated CRPS of the calibrated prediction on validation. ``cv`` is the splitter
    (default :class:`RepeatedGroupFolds`: :data:`CV_FOLDS` folds, :data:`CV_REPEATS` shuffles).

    Validation samples are split into folds of whole ``fold_groups`` (e.g. the MD run of each
    atom, ``(n,)``; default, or fewer runs than folds: ``validation_groups``, a structure id per
    atom; ``None``, or fewer structures than folds: single samples). For every setting, an
    estimator on the training ``descriptors`` ``(n_train, d)`` and that burn-in's
    distributions is calibrated (``calibration``, with the distance widening if ``widen``, on
    structures too if ``group_widening``, total exponent at least ``widening_floor``) on all folds but one and scored (CRPS, error units)
    on the held-out fold; ties keep the earlier setting. Returns ``{"k", "skip_epochs",
    "distance_scale", "cv_crps": {"skip_epochs=S,k=K,distance_scale=D": CRPS}}``.
    """
    if not candidates:
        raise LTAUInputError("candidates is empty: give at least one burn-in's distributions")
    as_error_vector(validation_errors, "validation errors")
    errors = np.asarray(validation_errors, dtype=np.float64)
    n = errors.shape[0]
    groups = (
        np.arange(n) if validation_groups is None else group_labels(validation_groups, n, "atom")
    )
    cv = RepeatedGroupFolds() if cv is None else cv
    if not callable(getattr(cv, "split", None)):
        raise LTAUInputError(f"cv must have a split(X, y, groups) method; got {cv!r}")
    n_folds = int(getattr(cv, "n_splits", CV_FOLDS))
    if n < n_folds:
        raise LTAUInputError(
            f"choosing k and the burn-in needs at least {n_folds} validation samples; got {n}"
        )
    # Folds of whole runs, else of whole structures, else of single samples.
    runs = None if fold_groups is None else group_labels(fold_groups, n, "atom")
    units = next(
        labels
        for labels in (runs, groups, np.arange(n))
        if labels is not None and np.unique(labels).size >= n_folds
    )
    splits = list(cv.split(validation_descriptors, errors, units))
    if not splits:
        raise LTAUInputError(f"the splitter {cv!r} yielded no (train, test) split")
    n_scored = sum(len(test) for _, test in splits)
    if isinstance(distance_scales, str) or not distance_scales:
        raise LTAUInputError(
            f"distance_scales must be a non-empty tuple such as {DISTANCE_SCALES}; "
            f"got {distance_scales!r}"
        )
    fit_groups = groups if (widen and group_widening and validation_groups is not None) else None
    n_train = np.asarray(descriptors).shape[0]
    usable = [k for k in k_candidates if k <= n_train]
    searched = (
        _shared_search(descriptors, validation_descriptors, max(usable), distance_scales)
        if usable
        else None
    )
    scores: dict[str, float] = {}
    best: tuple[float, int, int, str] | None = None
    settings = itertools.product(sorted(candidates.items()), k_candidates, distance_scales)
    for (skip, distributions), k, scale in settings:
        if k > n_train:
            continue
        index, training_distances, distances, indices = searched
        estimator = LTAUEstimator(k, distance_scale=scale).fit_searched(
            index, distributions, None if scale == "absolute" else training_distances
        )
        distances, indices = distances[:, :k], indices[:, :k]
        crps_sum = 0.0
        for kept, held_out in splits:
            estimator.calibrate_from_neighbors(
                distances[kept],
                indices[kept],
                errors[kept],
                method=calibration,
                groups=None if fit_groups is None else fit_groups[kept],
                widen=widen,
                widening_floor=widening_floor,
            )
            prediction = estimator.predict_from_neighbors(
                distances[held_out],
                indices[held_out],
                groups=None if fit_groups is None else fit_groups[held_out],
                return_pdf=True,
            )
            mass = prediction.pdf * prediction.bins.widths
            crps = metrics.crps_histogram(mass, prediction.bins, errors[held_out])
            crps_sum += crps * held_out.size
        key = f"skip_epochs={skip},k={k},distance_scale={scale}"
        score = scores[key] = crps_sum / n_scored
        if best is None or score < best[0]:
            best = (score, skip, k, scale)
    if best is None:
        raise LTAUInputError(
            f"no k among {k_candidates} fits {descriptors.shape[0]} training samples"
        )
    return {"k": best[2], "skip_epochs": best[1], "distance_scale": best[3], "cv_crps": scores}


def _shared_search(
    descriptors: np.ndarray,
    validation_descriptors: np.ndarray,
    k: int,
    distance_scales: tuple[str, ...],
) -> tuple[NeighborIndex, np.ndarray | None, np.ndarray, np.ndarray]:
    """One exact index over the training ``descriptors`` and one search at the largest ``k``,
    which every setting slices: ``(index, training distances (n_train, k + 1) or None if no
    local scale is a candidate, validation distances (n, k), validation indices (n, k))``."""
    data = as_float_matrix(descriptors, "descriptors")
    index = NeighborIndex().build(data)
    training_distances = None
    if "local" in distance_scales:
        training_distances = index.search(data, min(k + 1, data.shape[0]))[0]
    distances, indices = index.search(validation_descriptors, k)
    return index, training_distances, distances, indices
