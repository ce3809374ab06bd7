"""The ASE calculator pattern shared by every force-field integration.

A framework integration subclasses :class:`LTAUCalculatorBase` and implements only
:meth:`~LTAUCalculatorBase.evaluate_model` (one forward pass: energy, forces, optional stress and
the per-atom descriptors) and :attr:`~LTAUCalculatorBase.descriptor_size`. The base class checks
the estimator against the model (descriptor width, and the fingerprint of the model's weights
when the estimator records one), turns the descriptors into LTAU's per-atom results and fills
``results``:

* ``ltau_expected_force_error`` (eV/Å): expected force-error norm of each atom,
* ``ltau_p_exceed``: probability that an atom's force error exceeds ``atol`` (eV/Å),
* ``ltau_ood_score``: mean Euclidean distance to the k nearest training atoms (relative to
  their local scales for an estimator with ``distance_scale="local"``).

and per structure (one number each):

* ``ltau_structure_ood_score``: the structure's OOD score, aggregated from its atoms' by the
  estimator's validated :class:`~ltau.structure_scoring.StructureScoring` (the largest atom
  score for an estimator without one);
* ``ltau_structure_ood_flag``: 1.0 if that score exceeds the scoring's validated threshold,
  else 0.0 (absent without a threshold);
* ``ltau_structure_max_expected_force_error`` (eV/Å): the largest expected force error of
  its atoms, the structure's uncertainty.

The structure's atoms form one group, so a calibrated estimator widens the distributions with
the structure's mean OOD score too (see :meth:`ltau.estimator.LTAUEstimator.calibrate`).

With an ``energy_estimator`` (an estimator over training structures fitted on their mean
descriptors, see :mod:`ltau.energy`), two per-structure results are added:

* ``ltau_expected_energy_error`` (eV per structure): expected ``|E_pred - E_ref|``,
* ``ltau_energy_ood_score``: distance of the structure's mean descriptor to its k nearest
  training structures'.

These are also copied into ``atoms.info``, which the extxyz writer keeps.

The per-atom results are also copied into ``atoms.arrays`` of the calculated structure, because ASE's extxyz
writer only keeps result names it knows: ``ase.io.write(path, atoms, format="extxyz")`` then
keeps them as per-atom columns; the per-structure results go into ``atoms.info``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ltau._checks import tolerance
from ltau.energy import structure_descriptors
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError

logger = logging.getLogger(__name__)

PER_ATOM_RESULTS = ("ltau_expected_force_error", "ltau_p_exceed", "ltau_ood_score")
ENERGY_RESULTS = ("ltau_expected_energy_error", "ltau_energy_ood_score")
PER_STRUCTURE_RESULTS = (
    "ltau_structure_ood_score",
    "ltau_structure_ood_flag",
    "ltau_structure_max_expected_force_error",
)


@dataclass
class ModelOutput:
    """One structure's model outputs: energy (eV), forces ``(n_atoms, 3)`` (eV/Å), stress
    ``(3, 3)`` (eV/Å³, or None) and descriptors ``(n_atoms, descriptor_size)``."""

    energy: float
    forces: np.ndarray
    descriptors: np.ndarray
    stress: np.ndarray | None = None


class LTAUCalculatorBase(Calculator):
    """ASE calculator: a force-field model plus a fitted LTAU estimator (abstract).

    ``atol`` (eV/Å) is the tolerance of ``ltau_p_exceed``. ``energy_estimator``: optional
    estimator of per-structure energy errors (eV per structure) over the same model's mean
    descriptors, for ``ltau_expected_energy_error``. Subclasses implement
    :meth:`evaluate_model` and :attr:`descriptor_size`, and call ``super().__init__`` after
    they have set up their model.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        *PER_ATOM_RESULTS,
        *ENERGY_RESULTS,
        *PER_STRUCTURE_RESULTS,
    ]
    per_atom_results: ClassVar[tuple[str, ...]] = PER_ATOM_RESULTS

    def __init__(
        self,
        estimator: LTAUEstimator,
        *,
        atol: float = 0.1,
        energy_estimator: LTAUEstimator | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(estimator, LTAUEstimator):
            raise LTAUInputError("estimator must be a fitted LTAUEstimator")
        atol = tolerance(atol)
        self._check_estimator(estimator, "the estimator")
        if energy_estimator is not None:
            if not isinstance(energy_estimator, LTAUEstimator):
                raise LTAUInputError("energy_estimator must be a fitted LTAUEstimator")
            self._check_estimator(energy_estimator, "the energy estimator")
        self.estimator = estimator
        self.energy_estimator = energy_estimator
        self.atol = atol

    def _check_estimator(self, estimator: LTAUEstimator, what: str) -> None:
        """Check ``estimator``'s descriptor width and recorded model fingerprint."""
        if estimator.n_features_in_ != self.descriptor_size:
            raise LTAUInputError(
                f"{what} was fitted on {estimator.n_features_in_}-dimensional descriptors "
                f"but this model gives {self.descriptor_size}"
            )
        expected = (getattr(estimator, "metadata_", None) or {}).get("model_sha256")
        found = self.model_fingerprint
        if not expected:
            logger.warning(
                f"{what} records no model fingerprint (metadata 'model_sha256'), so it "
                "cannot be checked to be fitted on this model's descriptors; fit it with "
                "'ltau fit --descriptors <the .npz of ltau descriptors>' or save it with that "
                "metadata"
            )
        if expected and found and expected != found:
            raise LTAUInputError(
                f"{what} was fitted on the descriptors of another model: it records "
                f"model SHA-256 {str(expected)[:16]}..., this model's weights give "
                f"{found[:16]}..."
            )

    @property
    def model_fingerprint(self) -> str | None:
        """SHA-256 of the model's weights, checked against the estimator's ``model_sha256``
        metadata when both are known (None: the integration does not say)."""
        return None

    @property
    def descriptor_size(self) -> int:
        """Length of the model's per-atom descriptor."""
        raise NotImplementedError

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        """One forward pass of the model on ``atoms``."""
        raise NotImplementedError

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) == 0:
            raise LTAUInputError("the structure has no atoms")
        if not np.all(np.isfinite(self.atoms.positions)):
            atom = int(np.flatnonzero(~np.isfinite(self.atoms.positions).all(axis=1))[0])
            raise LTAUInputError(f"atom {atom} has a non-finite position (NaN or infinity)")
        if not np.all(np.isfinite(self.atoms.cell.array)):
            raise LTAUInputError("the cell holds NaN or infinity")
        output = self.evaluate_model(self.atoms, compute_stress=bool(self.atoms.pbc.all()))
        groups = np.zeros(len(output.descriptors), dtype=np.int64)
        prediction = self.estimator.predict(output.descriptors, groups=groups, atol=self.atol)
        structure = self.estimator.per_structure(prediction, groups)
        self.results = {
            "energy": float(output.energy),
            "free_energy": float(output.energy),
            "forces": np.asarray(output.forces, dtype=np.float64),
            "ltau_expected_force_error": prediction.expected_error,
            "ltau_p_exceed": prediction.exceedance[:, 0],
            "ltau_ood_score": prediction.ood_score,
            "ltau_structure_ood_score": float(structure.structure_ood_score[0]),
            "ltau_structure_max_expected_force_error": float(structure.max_expected_error[0]),
        }
        if self.energy_estimator is not None:
            energy = self.energy_estimator.predict(
                structure_descriptors(output.descriptors, groups)
            )
            self.results["ltau_expected_energy_error"] = float(energy.expected_error[0])
            self.results["ltau_energy_ood_score"] = float(energy.ood_score[0])
        if structure.ood_flag is not None:
            self.results["ltau_structure_ood_flag"] = float(structure.ood_flag[0])
        if output.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(
                np.asarray(output.stress, dtype=np.float64)
            )
        if atoms is not None:
            for name in self.per_atom_results:
                atoms.arrays[name] = np.asarray(self.results[name], dtype=np.float64)
            for name in (*PER_STRUCTURE_RESULTS, *ENERGY_RESULTS):
                if name in self.results:
                    atoms.info[name] = self.results[name]
