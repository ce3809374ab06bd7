"""Choosing what to label next: rank a pool of unlabelled structures by LTAU's uncertainty.

:func:`select_structures` evaluates a force field on every structure of the pool, predicts the
per-atom error distributions with a fitted :class:`~ltau.estimator.LTAUEstimator` (each
structure's atoms one group, as the ASE calculator does) and scores each structure by a rule:

* ``"expected_error"``: the largest expected force-error norm of its atoms (eV/Å), the
  structure's predicted error;
* ``"p_exceed"``: the largest ``P(error > atol)`` of its atoms;
* ``"structure_ood"``: the structure-level OOD score of
  :meth:`~ltau.estimator.LTAUEstimator.per_structure` (the estimator's validated
  :class:`~ltau.structure_scoring.StructureScoring`, else the largest atom OOD score).

It returns the ``n`` highest-scoring structures, best first (ties go to the earlier pool
position). Any labelling code can drive the loop: select, label the picked structures
(DFT, EMT...), add them to the training set, retrain, refit the estimator, repeat.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from ase import Atoms

from ltau._checks import integer, tolerance
from ltau.atomistic.pipeline import Evaluation
from ltau.atomistic.structures import LabelledStructures, check_elements
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)

RULES = ("expected_error", "p_exceed", "structure_ood")


class PoolModel(Protocol):
    """What selection needs of a model (a :class:`ltau.integrations.models.ForceField`):
    its chemical symbols, the SHA-256 of its weights and an evaluation giving descriptors."""

    elements: list[str]
    fingerprint: str

    def evaluate(self, structures: LabelledStructures, progress: bool = False) -> Evaluation: ...


@dataclass(frozen=True)
class Selection:
    """The picked structures: ``indices`` ``(n,)`` pool positions, best first, and their
    ``scores`` ``(n,)``; ``pool_scores`` ``(n_pool,)`` the score of every pool structure
    (unit of the rule: eV/Å, a probability, or descriptor units), ``rule`` and ``atol``."""

    indices: np.ndarray
    scores: np.ndarray
    pool_scores: np.ndarray
    rule: str
    atol: float | None = None


def check_fingerprint(estimator: LTAUEstimator, fingerprint: str | None) -> None:
    """Refuse an estimator fitted on another model's descriptors (when both record one)."""
    expected = (getattr(estimator, "metadata_", None) or {}).get("model_sha256")
    if expected and fingerprint and str(expected) != fingerprint:
        raise LTAUInputError(
            "the estimator was fitted on the descriptors of another model: it records model "
            f"SHA-256 {str(expected)[:16]}..., this model's weights give {fingerprint[:16]}..."
        )


def select_structures(
    estimator: LTAUEstimator,
    model: PoolModel,
    pool: Sequence[Atoms],
    n: int,
    *,
    rule: str = "expected_error",
    atol: float | None = None,
    progress: bool = False,
) -> Selection:
    """The ``n`` structures of ``pool`` that ``rule`` (one of :data:`RULES`) scores highest.

    ``atol`` (eV/Å) is the tolerance of ``"p_exceed"`` (default: the estimator's
    ``atol_eV_per_A`` metadata); the other rules ignore it.
    """
    if not isinstance(estimator, LTAUEstimator):
        raise LTAUInputError(f"estimator must be an LTAUEstimator; got {type(estimator).__name__}")
    if rule not in RULES:
        raise LTAUInputError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    pool = list(pool)
    if not pool:
        raise LTAUInputError("the pool holds no structures")
    for position, atoms in enumerate(pool):
        if not isinstance(atoms, Atoms):
            raise LTAUInputError(f"pool[{position}] is a {type(atoms).__name__}, not ase.Atoms")
        if len(atoms) == 0:
            raise LTAUInputError(f"pool structure {position} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise LTAUInputError(f"pool structure {position} has a non-finite position")
    n = integer(n, "n (structures to pick)", minimum=1)
    if n > len(pool):
        raise LTAUInputError(f"cannot pick {n} structures from a pool of {len(pool)}")
    if rule == "p_exceed":
        atol = (estimator.metadata_ or {}).get("atol_eV_per_A") if atol is None else atol
        if atol is None:
            raise LTAUInputError("the estimator stores no atol_eV_per_A: give atol")
        atol = tolerance(atol)
    else:
        atol = None
    check_elements(pool, model.elements)
    check_fingerprint(estimator, model.fingerprint)
    structures = LabelledStructures([atoms.copy() for atoms in pool])
    descriptors = model.evaluate(structures, progress=progress).descriptors
    groups = structures.index.configuration_of_atoms
    prediction = estimator.predict(descriptors, groups=groups, atol=atol, progress=progress)
    summary = estimator.per_structure(prediction, groups)
    if rule == "expected_error":
        pool_scores = summary.max_expected_error
    elif rule == "p_exceed":
        pool_scores = summary.max_exceedance[:, 0]
    else:
        pool_scores = summary.structure_ood_score
    pool_scores = np.asarray(pool_scores, dtype=np.float64)
    order = np.argsort(-pool_scores, kind="stable")[:n]
    logger.info(
        f"picked {n} of {len(pool)} structures by {rule}: scores "
        f"{pool_scores[order[-1]]:.4g} to {pool_scores[order[0]]:.4g}"
    )
    return Selection(order, pool_scores[order], pool_scores, rule, atol)
