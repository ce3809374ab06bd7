"""Labelled structures for force fields: reference energies and forces, and per-atom ids.

LTAU's samples are atoms. :class:`AtomIndex` numbers the atoms of a list of configurations in
order (configuration 0's atoms, then configuration 1's, ...) and maps ids back to
``(configuration, atom)``. :func:`read_structures` reads extxyz (or anything ASE reads) with
configurable energy and forces keys, from ``atoms.info`` / ``atoms.arrays`` or, for the plain
keys ``energy`` / ``forces``, from the SinglePointCalculator ASE attaches when reading.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from ltau.exceptions import LTAUFileError, LTAUInputError


@dataclass(frozen=True)
class AtomIndex:
    """Global atom ids of a list of configurations. ``offsets`` has shape ``(n_configs + 1,)``."""

    offsets: np.ndarray

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> AtomIndex:
        return cls(np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))]))

    @property
    def n_atoms(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_configs(self) -> int:
        return self.offsets.size - 1

    @property
    def configuration_of_atoms(self) -> np.ndarray:
        """The configuration each atom belongs to, int64 ``(n_atoms,)`` (LTAU's ``groups``)."""
        return np.repeat(np.arange(self.n_configs), np.diff(self.offsets))

    def ids_of(self, config: int) -> np.ndarray:
        """Global ids of configuration ``config``'s atoms."""
        return np.arange(self.offsets[config], self.offsets[config + 1])

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(configuration, atom within it)`` of each global id."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_atoms):
            raise LTAUInputError(f"atom ids must lie in [0, {self.n_atoms})")
        config = np.searchsorted(self.offsets, ids, side="right") - 1
        return config, ids - self.offsets[config]


@dataclass
class LabelledStructures:
    """Configurations with optional reference energies ``(n_configs,)`` eV and forces
    ``(n_atoms, 3)`` eV/Å, the latter concatenated in atom-id order."""

    atoms: list[Atoms]
    energies: np.ndarray | None = None
    forces: np.ndarray | None = None
    index: AtomIndex = field(init=False)

    def __post_init__(self) -> None:
        if not self.atoms:
            raise LTAUInputError("no structures given")
        self.index = AtomIndex.from_sizes([len(a) for a in self.atoms])
        if self.energies is not None:
            self.energies = np.asarray(self.energies, dtype=np.float64)
            if self.energies.shape != (len(self.atoms),) or not np.all(np.isfinite(self.energies)):
                raise LTAUInputError("energies must be finite, one per configuration")
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
            if self.forces.shape != (self.index.n_atoms, 3) or not np.all(np.isfinite(self.forces)):
                raise LTAUInputError(f"forces must be finite with shape ({self.index.n_atoms}, 3)")

    @property
    def n_atoms(self) -> int:
        return self.index.n_atoms

    @property
    def atomic_numbers(self) -> np.ndarray:
        """Atomic number of every atom, in id order, ``(n_atoms,)``."""
        return np.concatenate([a.numbers for a in self.atoms])

    @property
    def chemical_symbols(self) -> np.ndarray:
        """Element symbol of every atom, in id order, ``(n_atoms,)`` strings."""
        return np.concatenate([a.get_chemical_symbols() for a in self.atoms])

    def forces_of(self, config: int) -> np.ndarray:
        if self.forces is None:
            raise LTAUInputError("these structures have no reference forces")
        return self.forces[self.index.offsets[config] : self.index.offsets[config + 1]]

    def subset(self, configs: Sequence[int]) -> LabelledStructures:
        """The structures ``configs`` (in that order), with their labels."""
        configs = [int(c) for c in configs]
        forces = None
        if self.forces is not None:
            forces = np.concatenate([self.forces_of(c) for c in configs])
        energies = None if self.energies is None else self.energies[configs]
        return LabelledStructures([self.atoms[c] for c in configs], energies, forces)


@dataclass
class ForceFieldEvaluation:
    """A force field's outputs on a set of structures, atoms concatenated in configuration
    order: ``energies`` ``(n_configs,)`` eV, ``forces`` ``(n_atoms, 3)`` eV/Å, per-atom
    invariant ``descriptors`` ``(n_atoms, descriptor_size)`` and, if the structures carry
    reference forces, ``force_errors`` ``(n_atoms,)`` = ``||F_pred - F_ref||_2`` eV/Å."""

    energies: np.ndarray
    forces: np.ndarray
    descriptors: np.ndarray
    force_errors: np.ndarray | None

    @classmethod
    def from_batches(
        cls,
        structures: LabelledStructures,
        energies: Sequence[np.ndarray],
        forces: Sequence[np.ndarray],
        descriptors: Sequence[np.ndarray],
    ) -> ForceFieldEvaluation:
        """Join the outputs of consecutive batches of ``structures`` (in order) and take the
        force errors against the structures' reference forces, if any."""
        predicted_forces = np.concatenate(forces).astype(np.float64)
        force_errors = None
        if structures.forces is not None:
            force_errors = np.linalg.norm(predicted_forces - structures.forces, axis=1)
        return cls(
            np.concatenate(energies).astype(np.float64),
            predicted_forces,
            np.concatenate(descriptors),
            force_errors,
        )


def read_structures(
    source: str | os.PathLike | Sequence[Atoms],
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    require_forces: bool = True,
) -> LabelledStructures:
    """Read configurations and their reference labels.

    ``energy_key`` is looked up in ``atoms.info`` and ``forces_key`` in ``atoms.arrays``; the
    keys ``energy`` / ``forces`` also accept values that ASE put on a SinglePointCalculator.
    ``None`` skips a label. Missing forces are an error when ``require_forces``.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the given structures"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise LTAUFileError(f"{path} does not exist")
        try:
            atoms_list = ase.io.read(path, index=":")
        except Exception as exc:
            raise LTAUFileError(f"{path} could not be read as structures: {exc}") from exc
    else:
        atoms_list = list(source)
    if not atoms_list:
        raise LTAUInputError(f"{name} holds no structures")
    energies = _labels(atoms_list, energy_key, "energy", name) if energy_key else None
    forces = None
    if forces_key:
        per_config = _labels(atoms_list, forces_key, "forces", name, required=require_forces)
        forces = None if per_config is None else np.concatenate(per_config)
    elif require_forces:
        raise LTAUInputError("forces are required but no forces_key was given")
    return LabelledStructures(list(atoms_list), energies, forces)


def read_isolated_atom_energies(
    path: str | os.PathLike, *, energy_key: str = "energy"
) -> dict[int, float]:
    """E0s by atomic number (eV) from a file of single-atom structures with energies."""
    isolated = read_structures(path, energy_key=energy_key, forces_key=None, require_forces=False)
    if any(len(atoms) != 1 for atoms in isolated.atoms):
        raise LTAUInputError(f"{path} must hold single-atom structures")
    return {
        int(atoms.numbers[0]): float(energy)
        for atoms, energy in zip(isolated.atoms, isolated.energies, strict=True)
    }


def _labels(
    atoms_list: list[Atoms], key: str, kind: str, name: str, required: bool = True
) -> np.ndarray | list | None:
    values = []
    for position, atoms in enumerate(atoms_list):
        store = atoms.info if kind == "energy" else atoms.arrays
        if key in store:
            values.append(store[key])
        elif key == kind and atoms.calc is not None and kind in atoms.calc.results:
            values.append(atoms.calc.results[kind])
        elif required:
            available = sorted(set(atoms.info) | set(atoms.arrays))
            if atoms.calc is not None:
                available += [f"{k} (calculator)" for k in atoms.calc.results]
            raise LTAUInputError(
                f"structure {position} of {name} has no {kind} under the key {key!r}; "
                f"available keys: {available}"
            )
        else:
            return None
    if kind == "energy":
        return np.asarray(values, dtype=np.float64)
    return [np.asarray(v, dtype=np.float64).reshape(-1, 3) for v in values]


def check_elements(structures: Sequence[Atoms], known: Sequence[str]) -> None:
    """Raise :class:`LTAUInputError` naming the first structure with an element not in
    ``known``."""
    known_set = set(known)
    for position, atoms in enumerate(structures):
        unknown = sorted(set(atoms.get_chemical_symbols()) - known_set)
        if unknown:
            raise LTAUInputError(
                f"structure {position} has element(s) {', '.join(unknown)} that the model was "
                "not trained on"
            )
