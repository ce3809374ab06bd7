"""Structure-level out-of-domain scores: one number per group of queries (the atoms of one
structure) built from the queries' OOD scores.

A structure is out of domain when some of its atoms are, so the per-atom OOD scores (mean
distance to the k nearest training samples, descriptor units) are aggregated per group by one
of :data:`AGGREGATES`:

* ``"max"``: the largest atom score;
* ``"mean"``: the mean atom score (what the distance widening uses);
* ``"quantile"``: the ``level`` quantile of the atom scores (linear interpolation);
* ``"count_above"``: how many atoms score above ``atom_threshold``, the
  :data:`ATOM_THRESHOLD_QUANTILE` quantile of the validation atoms' scores.

:meth:`StructureScoring.fit` chooses among :data:`CANDIDATES` on a validation split only: the
aggregate whose structure scores rank the structures' largest observed errors best (Spearman
correlation of the structure score with the structure's maximum error; validation holds no
out-of-domain structures, so this is the validation signal available). It also sets
``flag_threshold``, the :data:`FLAG_QUANTILE` quantile of the validation structures' scores:
structures scoring above it are flagged out of domain (a 1% false-alarm rate in domain).
The fitted scoring is plain JSON (:meth:`StructureScoring.to_dict`), saved with an estimator's
calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from ltau._checks import checked_errors, group_labels, real_array
from ltau.exceptions import LTAUInputError

AGGREGATES = ("max", "mean", "quantile", "count_above")
CANDIDATES: tuple[tuple[str, float | None], ...] = (
    ("max", None),
    ("mean", None),
    ("quantile", 0.75),
    ("quantile", 0.9),
    ("count_above", None),
)
"""``(aggregate, level)`` pairs compared by :meth:`StructureScoring.fit`."""
ATOM_THRESHOLD_QUANTILE = 0.99
"""Quantile of the validation atoms' OOD scores above which ``"count_above"`` counts an atom."""
FLAG_QUANTILE = 0.99
"""Quantile of the validation structures' scores above which a structure is flagged OOD."""


@dataclass(frozen=True)
class StructureScoring:
    """How atom OOD scores make a structure's OOD score (see the module docstring).

    ``aggregate``: one of :data:`AGGREGATES`; ``level``: the quantile level of ``"quantile"``
    (in [0, 1]); ``atom_threshold``: the atom score ``"count_above"`` counts above (descriptor
    units); ``flag_threshold``: the structure score above which a structure is flagged out of
    domain (None: no flags); ``validation_spearman``: the fit's criterion per candidate name
    (see :meth:`name`), for the record.
    """

    aggregate: str = "max"
    level: float | None = None
    atom_threshold: float | None = None
    flag_threshold: float | None = None
    validation_spearman: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise LTAUInputError(f"aggregate must be one of {AGGREGATES}; got {self.aggregate!r}")
        if (self.aggregate == "quantile") != (self.level is not None):
            raise LTAUInputError("level is given exactly when aggregate is 'quantile'")
        if self.level is not None and not (
            isinstance(self.level, int | float) and 0.0 <= self.level <= 1.0
        ):
            raise LTAUInputError(f"level must lie in [0, 1]; got {self.level!r}")
        if (self.aggregate == "count_above") != (self.atom_threshold is not None):
            raise LTAUInputError("atom_threshold is given exactly when aggregate is 'count_above'")
        for name in ("atom_threshold", "flag_threshold"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                raise LTAUInputError(f"{name} must be a finite number or None; got {value!r}")
        if not isinstance(self.validation_spearman, dict):
            raise LTAUInputError("validation_spearman must be a dict")

    @property
    def name(self) -> str:
        """``"max"``, ``"mean"``, ``"count_above"`` or ``"quantile_<level>"``."""
        return _candidate_name(self.aggregate, self.level)

    def scores(self, ood_scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(group_ids, structure_scores)``, each ``(n_groups,)`` in ascending id order, from
        the queries' ``ood_scores`` ``(n,)`` and integer ``groups`` ``(n,)``."""
        values = _checked_scores(ood_scores)
        labels = group_labels(groups, values.size, "query")
        return _aggregate(values, labels, self.aggregate, self.level, self.atom_threshold)

    def flags(self, structure_scores: np.ndarray) -> np.ndarray | None:
        """``(n_groups,)`` bool: the structure score exceeds ``flag_threshold`` (None if the
        scoring has no threshold)."""
        if self.flag_threshold is None:
            return None
        return np.asarray(structure_scores) > self.flag_threshold

    @classmethod
    def fit(
        cls, ood_scores: np.ndarray, groups: np.ndarray, errors: np.ndarray
    ) -> StructureScoring:
        """Choose the aggregate on a validation split (never a test set): ``ood_scores``,
        observed ``errors`` and integer ``groups`` (structures), each ``(n,)``. Needs at least
        three structures."""
        values = _checked_scores(ood_scores)
        errors = checked_errors(errors, "errors")
        if errors.size != values.size:
            raise LTAUInputError(
                f"errors has {errors.size} entries but there are {values.size} OOD scores"
            )
        labels = group_labels(groups, values.size, "query")
        _, max_error = _aggregate(errors, labels, "max", None, None)
        if max_error.size < 3:
            raise LTAUInputError(
                f"fitting a structure scoring needs at least 3 structures; got {max_error.size}"
            )
        atom_threshold = float(np.quantile(values, ATOM_THRESHOLD_QUANTILE))
        criterion: dict[str, float] = {}
        for aggregate, level in CANDIDATES:
            threshold = atom_threshold if aggregate == "count_above" else None
            _, structure = _aggregate(values, labels, aggregate, level, threshold)
            rho = stats.spearmanr(structure, max_error).statistic
            criterion[_candidate_name(aggregate, level)] = float(rho) if np.isfinite(rho) else -1.0
        best = max(CANDIDATES, key=lambda c: criterion[_candidate_name(*c)])
        aggregate, level = best
        threshold = atom_threshold if aggregate == "count_above" else None
        _, structure = _aggregate(values, labels, aggregate, level, threshold)
        return cls(
            aggregate=aggregate,
            level=level,
            atom_threshold=threshold,
            flag_threshold=float(np.quantile(structure, FLAG_QUANTILE)),
            validation_spearman=criterion,
        )

    def to_dict(self) -> dict:
        """Plain-JSON form (see :meth:`from_dict`)."""
        return {
            "aggregate": self.aggregate,
            "level": self.level,
            "atom_threshold": self.atom_threshold,
            "flag_threshold": self.flag_threshold,
            "validation_spearman": dict(self.validation_spearman),
        }

    @classmethod
    def from_dict(cls, data: dict) -> StructureScoring:
        """Inverse of :meth:`to_dict`; invalid contents raise :class:`LTAUInputError`."""
        if not isinstance(data, dict):
            raise LTAUInputError(f"a structure scoring must be a dict; got {type(data).__name__}")
        expected = {"aggregate", "level", "atom_threshold", "flag_threshold", "validation_spearman"}
        if set(data) != expected:
            raise LTAUInputError(
                f"a structure scoring has keys {sorted(expected)}; got {sorted(data)}"
            )
        return cls(**data)


def _candidate_name(aggregate: str, level: float | None) -> str:
    return aggregate if level is None else f"{aggregate}_{level:g}"


def _checked_scores(ood_scores: np.ndarray) -> np.ndarray:
    values = real_array(ood_scores, "ood_scores")
    if values.ndim != 1 or values.size == 0:
        raise LTAUInputError(f"ood_scores must be a non-empty 1-D array; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise LTAUInputError("ood_scores contains NaN or infinity")
    return values


def _aggregate(
    values: np.ndarray,
    labels: np.ndarray,
    aggregate: str,
    level: float | None,
    atom_threshold: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(group_ids, per-group aggregate of values)`` for validated inputs."""
    group_ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if aggregate == "mean":
        return group_ids, np.bincount(inverse, weights=values) / counts
    if aggregate == "count_above":
        above = (values > atom_threshold).astype(np.float64)
        return group_ids, np.bincount(inverse, weights=above, minlength=group_ids.size)
    order = np.lexsort((values, inverse))  # by group, ascending values within each
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ordered = values[order]
    if aggregate == "max":
        return group_ids, ordered[starts + counts - 1]
    position = level * (counts - 1)  # linear interpolation, as np.quantile's default
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, counts - 1)
    fraction = position - low
    below, above = ordered[starts + low], ordered[starts + high]
    return group_ids, below + fraction * (above - below)
