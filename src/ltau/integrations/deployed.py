"""Deployed TorchScript force fields, loaded with torch alone (no nequip or mace import).

Supported is the format written by ``nequip-deploy build`` in nequip 0.5/0.6: a scripted module
saved with ``torch.jit.save(module, path, _extra_files=metadata)`` whose metadata entries are
ASCII strings, among them

* ``r_max``: the cutoff (Å), e.g. ``"5.0"``, and
* ``type_names``: the model's atom types separated by spaces, e.g. ``"C H O"`` (type index =
  position in this list), with optionally ``n_species`` (their number), ``nequip_version`` and
  ``model_dtype`` (``"float32"`` / ``"float64"``).

A file without ``r_max`` or ``type_names`` is refused. The module is called with the dict that
nequip's ``AtomicData.from_ase`` gave it, one structure (or a batch) at a time:

* ``pos`` ``(n, 3)``, ``cell`` ``(3, 3)`` (``atoms.cell``), ``pbc`` ``(3,)`` bool,
* ``edge_index`` ``(2, E)`` int64: row 0 the centre atom i, row 1 its neighbour j,
* ``edge_cell_shift`` ``(E, 3)``: the periodic image of j, so the edge vector is
  ``pos[j] - pos[i] + edge_cell_shift @ cell``,
* ``atom_types`` ``(n, 1)`` int64 (nequip stored per-atom fields with a trailing axis; its
  models squeeze it);
* for a batch of B structures also ``batch`` ``(n,)`` and ``ptr`` ``(B + 1,)``, with ``cell``
  ``(B, 3, 3)`` and ``pbc`` ``(B, 3)``.

The neighbour list is ``ase.neighborlist.neighbor_list`` at the stored cutoff, every pair
within it except an atom with itself in the same image (images of itself are kept), as nequip
built it. The module must return ``total_energy`` (eV), ``forces`` (eV/Å) and
``node_features`` ``(n, F)``; ``stress`` (eV/Å³) is used when present.

Descriptors are the invariant part of ``node_features``. In nequip 0.5/0.6 the
``node_features`` a deployed model returns are the output of its last hidden layer
(``conv_to_output_hidden``), which holds scalars only, so by default every column is used. For
other models say which columns are invariant: ``scalar_channels=n`` takes the first n columns,
``irreps_key="name"`` reads an e3nn irreps string (e.g. ``"16x0e+8x1o"``) from that metadata
entry and takes its ``0e`` columns.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from tqdm.auto import tqdm

from ltau._checks import positive_int
from ltau.atomistic.calculator import LTAUCalculatorBase, ModelOutput
from ltau.atomistic.structures import ForceFieldEvaluation, LabelledStructures
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.model_files import state_fingerprint

R_MAX_KEY = "r_max"
TYPE_NAMES_KEY = "type_names"
N_SPECIES_KEY = "n_species"
VERSION_KEY = "nequip_version"
DTYPE_KEY = "model_dtype"
_REQUIRED_KEYS = (R_MAX_KEY, TYPE_NAMES_KEY)
_OUTPUT_KEYS = ("total_energy", "forces", "node_features")
_IRREP = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)([eo])\s*$")


@dataclass
class DeployedOutput:
    """Raw outputs of one forward pass over B structures with n atoms in all."""

    energies: np.ndarray  # (B,) eV
    forces: np.ndarray  # (n, 3) eV/Å
    descriptors: np.ndarray  # (n, descriptor_size) float32
    stress: np.ndarray | None  # (B, 3, 3) eV/Å³, if the model returns it


class DeployedModel:
    """A deployed TorchScript force field and what its metadata says about it.

    Build it with :meth:`load`. ``species_to_type_name`` maps chemical symbols to the model's
    type names where they differ (default: type names are chemical symbols).
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        metadata: Mapping[str, str],
        *,
        source: str = "the model",
        scalar_channels: int | None = None,
        irreps_key: str | None = None,
        species_to_type_name: Mapping[str, str] | None = None,
    ) -> None:
        missing = [key for key in _REQUIRED_KEYS if not metadata.get(key, "").strip()]
        if missing:
            raise LTAUFileError(
                f"{source} has no {' or '.join(repr(k) for k in missing)} in its metadata "
                "(a deployed model must store its cutoff and type names, as nequip-deploy does)"
            )
        try:
            self.r_max = float(metadata[R_MAX_KEY])
        except ValueError:
            raise LTAUFileError(
                f"{source}: metadata r_max is not a number: {metadata[R_MAX_KEY]!r}"
            ) from None
        if not (np.isfinite(self.r_max) and self.r_max > 0):
            raise LTAUFileError(f"{source}: metadata r_max must be positive; got {self.r_max}")
        self.type_names = metadata[TYPE_NAMES_KEY].split()
        n_species = metadata.get(N_SPECIES_KEY, "").strip()
        if n_species and n_species != str(len(self.type_names)):
            raise LTAUFileError(
                f"{source}: metadata n_species is {n_species} but type_names lists "
                f"{len(self.type_names)} types"
            )
        if scalar_channels is not None and irreps_key is not None:
            raise LTAUInputError("give scalar_channels or irreps_key, not both")
        self.module = module
        self.metadata = dict(metadata)
        self.source = source
        self.dtype = _model_dtype(module, metadata.get(DTYPE_KEY, ""), source)
        self._columns = _descriptor_columns(metadata, scalar_channels, irreps_key, source)
        mapping = dict(species_to_type_name or {})
        unknown_names = sorted(set(mapping.values()) - set(self.type_names))
        if unknown_names:
            raise LTAUInputError(
                f"species_to_type_name maps to {unknown_names}, which are not among the model's "
                f"type names {self.type_names}"
            )
        position = {name: index for index, name in enumerate(self.type_names)}
        self._type_of_symbol = {name: position[name] for name in self.type_names}
        self._type_of_symbol.update({symbol: position[name] for symbol, name in mapping.items()})
        self._descriptor_size: int | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        scalar_channels: int | None = None,
        irreps_key: str | None = None,
        species_to_type_name: Mapping[str, str] | None = None,
    ) -> DeployedModel:
        """Load ``path`` (CPU) with its metadata; see the module docstring for the format."""
        path = Path(path)
        if not path.is_file():
            raise LTAUFileError(f"{path} does not exist or is not a file")
        keys = [*_REQUIRED_KEYS, N_SPECIES_KEY, VERSION_KEY, DTYPE_KEY]
        if irreps_key is not None:
            keys.append(irreps_key)
        extra_files = dict.fromkeys(keys, "")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, yet deployed files use it
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated")
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
        except Exception as exc:
            raise LTAUFileError(f"{path} is not a TorchScript model file: {exc}") from exc
        try:
            metadata = {
                key: value.decode("ascii") if isinstance(value, bytes) else str(value)
                for key, value in extra_files.items()
            }
        except UnicodeDecodeError as exc:
            raise LTAUFileError(f"{path}: metadata is not ASCII text: {exc}") from exc
        module.eval()
        return cls(
            module,
            metadata,
            source=str(path),
            scalar_channels=scalar_channels,
            irreps_key=irreps_key,
            species_to_type_name=species_to_type_name,
        )

    @property
    def descriptor_size(self) -> int:
        """Length of the per-atom descriptor (found by one probe pass when the metadata does not
        say: two atoms of the first type, r_max / 2 apart)."""
        if self._descriptor_size is None:
            if isinstance(self._columns, int):
                self._descriptor_size = self._columns
            elif isinstance(self._columns, np.ndarray):
                self._descriptor_size = int(self._columns.size)
            else:
                symbol = next(s for s, t in self._type_of_symbol.items() if t == 0)
                probe = Atoms([symbol, symbol], positions=[[0, 0, 0], [0, 0, self.r_max / 2]])
                self._descriptor_size = self.forward([probe]).descriptors.shape[1]
        return self._descriptor_size

    @property
    def symbols(self) -> list[str]:
        """The chemical symbols (or type names) the model accepts."""
        return list(self._type_of_symbol)

    def type_indices(self, symbols: Sequence[str]) -> np.ndarray:
        """The model's type index of each chemical symbol, int64 ``(n,)``."""
        unknown = sorted(set(symbols) - set(self._type_of_symbol))
        if unknown:
            raise LTAUInputError(
                f"the model does not know element(s) {', '.join(unknown)}; its type names are "
                f"{' '.join(self.type_names)} (map symbols with species_to_type_name if they differ)"
            )
        return np.array([self._type_of_symbol[s] for s in symbols], dtype=np.int64)

    def graph(self, structures: Sequence[Atoms]) -> dict[str, torch.Tensor]:
        """The input dict of one forward pass over ``structures`` (one, or a batch)."""
        positions, types, edges, shifts, cells, pbcs = [], [], [], [], [], []
        offset = 0
        for atoms in structures:
            if len(atoms) == 0:
                raise LTAUInputError("a structure has no atoms")
            types.append(self.type_indices(atoms.get_chemical_symbols()))
            centre, neighbour, shift = neighbor_list("ijS", atoms, self.r_max)
            edges.append(np.stack([centre, neighbour]) + offset)
            shifts.append(shift)
            positions.append(atoms.positions)
            cells.append(atoms.cell.array)
            pbcs.append(np.asarray(atoms.pbc, dtype=bool))
            offset += len(atoms)
        data = {
            "pos": torch.as_tensor(np.concatenate(positions), dtype=self.dtype),
            "edge_index": torch.as_tensor(np.concatenate(edges, axis=1), dtype=torch.int64),
            "edge_cell_shift": torch.as_tensor(np.concatenate(shifts), dtype=self.dtype),
            "atom_types": torch.as_tensor(np.concatenate(types)).view(-1, 1),
        }
        if len(structures) == 1:
            data["cell"] = torch.as_tensor(cells[0], dtype=self.dtype)
            data["pbc"] = torch.as_tensor(pbcs[0])
        else:
            sizes = torch.tensor([len(a) for a in structures])
            data["cell"] = torch.as_tensor(np.stack(cells), dtype=self.dtype)
            data["pbc"] = torch.as_tensor(np.stack(pbcs))
            data["batch"] = torch.repeat_interleave(torch.arange(len(structures)), sizes)
            data["ptr"] = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
        return data

    def forward(self, structures: Sequence[Atoms]) -> DeployedOutput:
        """One forward pass over ``structures``: energies, forces, descriptors (and stress)."""
        data = self.graph(structures)
        try:
            output = self.module(data)  # grad enabled: the model differentiates its energy
        except Exception as exc:
            raise LTAUFileError(
                f"{self.source} failed on nequip's dict input (pos, edge_index, edge_cell_shift, "
                f"cell, pbc, atom_types): {exc}"
            ) from exc
        missing = [key for key in _OUTPUT_KEYS if key not in output]
        if missing:
            raise LTAUFileError(
                f"{self.source} returns no {missing}; a deployed force field must return "
                f"{list(_OUTPUT_KEYS)} (it returned {sorted(output)})"
            )
        n_atoms, n_structures = data["pos"].shape[0], len(structures)
        energies = output["total_energy"].detach().double().numpy().reshape(-1)
        forces = output["forces"].detach().double().numpy()
        features = output["node_features"].detach()
        if (
            energies.shape != (n_structures,)
            or forces.shape != (n_atoms, 3)
            or features.dim() != 2
            or features.shape[0] != n_atoms
        ):
            raise LTAUFileError(
                f"{self.source} returned outputs of unexpected shapes for {n_structures} "
                f"structure(s) of {n_atoms} atoms: total_energy {tuple(output['total_energy'].shape)}, "
                f"forces {tuple(forces.shape)}, node_features {tuple(features.shape)}"
            )
        stress = None
        if "stress" in output:
            stress = output["stress"].detach().double().numpy().reshape(n_structures, 3, 3)
        return DeployedOutput(energies, forces, self._descriptors(features.numpy()), stress)

    def _descriptors(self, features: np.ndarray) -> np.ndarray:
        width = features.shape[1]
        columns = self._columns
        if columns is None:
            columns = np.arange(width)
        elif isinstance(columns, int):
            columns = np.arange(columns)
        if columns.size and columns.max() >= width:
            raise LTAUInputError(
                f"{self.source}: node_features have {width} columns but the descriptor needs "
                f"column {int(columns.max())} (check scalar_channels / irreps_key)"
            )
        return np.ascontiguousarray(features[:, columns], dtype=np.float32)


def load_deployed_model(
    path: str | os.PathLike,
    *,
    scalar_channels: int | None = None,
    irreps_key: str | None = None,
    species_to_type_name: Mapping[str, str] | None = None,
) -> DeployedModel:
    """Load a deployed TorchScript force field; see :class:`DeployedModel`."""
    return DeployedModel.load(
        path,
        scalar_channels=scalar_channels,
        irreps_key=irreps_key,
        species_to_type_name=species_to_type_name,
    )


def evaluate_deployed(
    model: DeployedModel,
    structures: LabelledStructures,
    *,
    batch_size: int = 1,
    progress: bool = False,
) -> ForceFieldEvaluation:
    """Energies, forces, invariant descriptors (and force errors if labelled).

    ``batch_size`` structures go through each forward pass; above 1 the model must read
    nequip's ``batch`` / ``ptr`` keys (nequip's own models do).
    """
    batch_size = positive_int(batch_size, "batch_size")
    energies, forces, descriptors = [], [], []
    starts = range(0, len(structures.atoms), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        output = model.forward(structures.atoms[start : start + batch_size])
        energies.append(output.energies)
        forces.append(output.forces)
        descriptors.append(output.descriptors)
    return ForceFieldEvaluation.from_batches(structures, energies, forces, descriptors)


class LTAUCalculator(LTAUCalculatorBase):
    """ASE calculator: a deployed TorchScript force field plus a fitted LTAU estimator.

    One forward pass gives energy, forces (stress if the model returns it) and the descriptors;
    the results are those of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`.
    """

    def __init__(
        self, model: DeployedModel, estimator: LTAUEstimator, *, atol: float = 0.1, **kwargs
    ) -> None:
        if not isinstance(model, DeployedModel):
            raise LTAUInputError("model must be a DeployedModel (see load_deployed_model)")
        self.model = model
        super().__init__(estimator, atol=atol, **kwargs)

    @property
    def descriptor_size(self) -> int:
        return self.model.descriptor_size

    @property
    def model_fingerprint(self) -> str:
        return state_fingerprint(self.model.module)

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        output = self.model.forward([atoms])
        stress = output.stress[0] if compute_stress and output.stress is not None else None
        return ModelOutput(
            energy=float(output.energies[0]),
            forces=output.forces,
            descriptors=output.descriptors,
            stress=stress,
        )


def _model_dtype(module: torch.jit.ScriptModule, stored: str, source: str) -> torch.dtype:
    """The metadata's ``model_dtype``, else that of the module's first floating tensor."""
    if stored.strip():
        if stored.strip() not in ("float32", "float64"):
            raise LTAUFileError(f"{source}: metadata model_dtype {stored!r} is not supported")
        return getattr(torch, stored.strip())
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _descriptor_columns(
    metadata: Mapping[str, str], scalar_channels: int | None, irreps_key: str | None, source: str
) -> np.ndarray | int | None:
    """Which node-feature columns are invariant: indices, a leading count, or None (all)."""
    if scalar_channels is not None:
        return positive_int(scalar_channels, "scalar_channels")
    if irreps_key is None:
        return None
    text = metadata.get(irreps_key, "").strip()
    if not text:
        raise LTAUFileError(f"{source} has no metadata entry {irreps_key!r} (irreps_key)")
    columns, start = [], 0
    for term in text.split("+"):
        match = _IRREP.match(term)
        if match is None:
            raise LTAUFileError(f"{source}: {irreps_key} = {text!r} is not an irreps string")
        multiplicity = int(match.group(1) or 1)
        degree, parity = int(match.group(2)), match.group(3)
        width = multiplicity * (2 * degree + 1)
        if degree == 0 and parity == "e":
            columns.extend(range(start, start + width))
        start += width
    if not columns:
        raise LTAUFileError(f"{source}: {irreps_key} = {text!r} has no scalar (0e) channels")
    return np.array(columns, dtype=np.int64)


__all__ = [
    "DeployedModel",
    "DeployedOutput",
    "LTAUCalculator",
    "evaluate_deployed",
    "load_deployed_model",
]
