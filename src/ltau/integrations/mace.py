"""LTAU for MACE (mace-torch 0.3): training with per-atom error logging, descriptors, calculator.

Nothing of mace is patched or copied: the training loop below is ltau's own, built from mace's
public pieces (``ScaleShiftMACE``, ``AtomicData``, its data loader and
``WeightedEnergyForcesLoss``). Each training step's own forward pass gives the predicted forces;
the per-atom force-error norm ``||F_pred - F_ref||_2`` (eV/Å) of every training atom is
recorded from it, so logging costs one norm and one copy per batch.

Atoms are numbered in order: configuration 0's atoms first, then configuration 1's, ...
(:class:`AtomIndex` maps ids back to ``(configuration, atom)``). Descriptors are the invariant
(scalar) part of MACE's node features from every interaction layer, as
``mace.modules.utils.extract_invariant`` defines them.

``import mace`` must come before anything imports e3nn, so this module imports it first.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import mace  # noqa: F401  (must be imported before e3nn)
import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data as mace_data
from mace import modules as mace_modules
from mace.modules.utils import extract_invariant
from mace.tools import AtomicNumberTable, torch_geometric
from tqdm.auto import tqdm

from ltau._checks import positive_number
from ltau.atomistic.calculator import LTAUCalculatorBase, ModelOutput
from ltau.atomistic.structures import ForceFieldEvaluation, LabelledStructures
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUInputError
from ltau.integrations._trained import TrainingTimes, read_model_file
from ltau.recording import ErrorRecorder

_ENERGY, _FORCES = "ltau_REF_energy", "ltau_REF_forces"
_KEYS = mace_data.KeySpecification(info_keys={"energy": _ENERGY}, arrays_keys={"forces": _FORCES})


@dataclass
class MACESettings:
    """Model and training settings (units: Å, eV). Defaults: a small, fast CPU model."""

    r_max: float = 5.0
    num_channels: int = 32
    max_L: int = 0
    num_interactions: int = 2
    correlation: int = 3
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    mlp_channels: int = 16
    batch_size: int = 10
    learning_rate: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    ema_decay: float = 0.99
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float64"):
            raise LTAUInputError(f"dtype must be 'float32' or 'float64'; got {self.dtype!r}")
        positive_number(self.r_max, "r_max", "a positive number (Å)")


@dataclass
class TrainedMACE(TrainingTimes):
    """A trained model with what is needed to evaluate it, and the training timings."""

    model: torch.nn.Module
    settings: MACESettings
    atomic_numbers: list[int]
    epoch_seconds: list[float] = field(default_factory=list)
    logging_seconds: list[float] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Save the model (torch's format, as mace does) and its settings."""
        torch.save(
            {"model": self.model, "settings": asdict(self), "format": "ltau-mace-model"}, path
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedMACE:
        """Load a model saved by :meth:`save` (a trusted file: torch unpickles it)."""
        payload = read_model_file(path, "ltau-mace-model", "TrainedMACE.save")
        stored = payload["settings"]
        return cls(
            model=payload["model"],
            settings=MACESettings(**stored["settings"]),
            atomic_numbers=list(stored["atomic_numbers"]),
            epoch_seconds=list(stored["epoch_seconds"]),
            logging_seconds=list(stored["logging_seconds"]),
        )


@contextlib.contextmanager
def default_dtype(name: str) -> Iterator[None]:
    """Set torch's default dtype for the duration of the block (mace reads it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def train_mace(
    structures: LabelledStructures,
    *,
    epochs: int,
    settings: MACESettings | None = None,
    isolated_atom_energies: dict[int, float] | None = None,
    recorder: ErrorRecorder | None = None,
    member: int = 0,
    config_weights: np.ndarray | None = None,
    progress: bool = True,
) -> TrainedMACE:
    """Train a MACE model, recording every training atom's force error at every epoch.

    ``isolated_atom_energies``: E0s by atomic number (eV); without them they are fitted by
    least squares on the training energies. ``recorder`` must have one sample per training
    atom; its epoch is closed with ``member``. ``config_weights``: a loss weight per
    configuration ``(n_configs,)``, finite, >= 0, not all 0 (mace's per-configuration
    ``weight``, multiplying both the energy and the force terms; it replaces any
    ``config_weight`` in ``atoms.info``); default: all 1.
    """
    settings = settings or MACESettings()
    if epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {epochs}")
    if structures.forces is None:
        raise LTAUInputError("training structures need reference forces")
    weights = _check_config_weights(config_weights, len(structures.atoms))
    if recorder is not None and recorder.n_samples != structures.n_atoms:
        raise LTAUInputError(
            f"the recorder has {recorder.n_samples} samples but the training set has "
            f"{structures.n_atoms} atoms (one sample per atom)"
        )
    torch.manual_seed(settings.seed)
    with default_dtype(settings.dtype):
        z_table = AtomicNumberTable(sorted(set(structures.atomic_numbers.tolist())))
        dataset = _atomic_data(structures, z_table, settings.r_max, weights)
        generator = torch.Generator().manual_seed(settings.seed)
        loader = torch_geometric.dataloader.DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
        e0s = _atomic_energies(structures, z_table, isolated_atom_energies)
        model = _build_model(settings, z_table, e0s, loader)
        loss_function = mace_modules.WeightedEnergyForcesLoss(
            energy_weight=settings.energy_weight, forces_weight=settings.forces_weight
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, amsgrad=True)
        averaged = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings.ema_decay),
        )
        trained = TrainedMACE(model, settings, list(z_table.zs))
        for _ in tqdm(range(epochs), desc="training MACE", unit="epoch", disable=not progress):
            started, logging = time.perf_counter(), 0.0
            model.train()
            for batch in loader:
                output = model(batch.to_dict(), training=True)
                loss = loss_function(pred=output, ref=batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                averaged.update_parameters(model)
                if recorder is not None:
                    logged = time.perf_counter()
                    errors = torch.linalg.vector_norm(output["forces"] - batch.forces, dim=1)
                    recorder.record(batch.atom_ids.numpy(), errors.detach().numpy())
                    logging += time.perf_counter() - logged
            if recorder is not None:
                logged = time.perf_counter()
                recorder.end_epoch(member)
                logging += time.perf_counter() - logged
            trained.epoch_seconds.append(time.perf_counter() - started)
            trained.logging_seconds.append(logging)
        trained.model = averaged.module  # the exponential moving average of the weights
        trained.model.eval()
    return trained


def evaluate_mace(
    trained: TrainedMACE,
    structures: LabelledStructures,
    *,
    batch_size: int = 20,
    progress: bool = False,
) -> ForceFieldEvaluation:
    """Energies, forces, invariant descriptors (the invariant node features) and force
    errors if labelled, batched."""
    model = trained.model
    z_table = AtomicNumberTable(trained.atomic_numbers)
    _check_elements(structures.atomic_numbers, z_table)
    energies, forces, descriptors = [], [], []
    with default_dtype(trained.settings.dtype):
        dataset = _atomic_data(structures, z_table, trained.settings.r_max)
        loader = torch_geometric.dataloader.DataLoader(dataset, batch_size=batch_size)
        for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress):
            output = model(batch.to_dict(), training=False, compute_force=True)
            energies.append(output["energy"].detach().numpy())
            forces.append(output["forces"].detach().numpy())
            descriptors.append(invariant_descriptors(model, output["node_feats"]))
    return ForceFieldEvaluation.from_batches(structures, energies, forces, descriptors)


def invariant_descriptors(model: torch.nn.Module, node_feats: torch.Tensor) -> np.ndarray:
    """The scalar part of every layer's node features, float32 ``(n_atoms, n_invariant)``."""
    irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
    l_max = irreps_out.lmax
    invariant = extract_invariant(
        node_feats,
        num_layers=int(model.num_interactions),
        num_features=irreps_out.dim // (l_max + 1) ** 2,
        l_max=l_max,
    )
    return invariant.detach().numpy().astype(np.float32)


class LTAUCalculator(LTAUCalculatorBase):
    """ASE calculator: a trained MACE model plus a fitted LTAU estimator.

    One forward pass gives energy, forces (and stress for periodic cells) and the invariant
    descriptors; the results are those of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`.
    """

    def __init__(
        self, trained: TrainedMACE, estimator: LTAUEstimator, *, atol: float = 0.1, **kwargs
    ) -> None:
        self.trained = trained
        self._z_table = AtomicNumberTable(trained.atomic_numbers)
        super().__init__(estimator, atol=atol, **kwargs)

    @property
    def descriptor_size(self) -> int:
        return _descriptor_size(self.trained.model)

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        _check_elements(atoms.numbers, self._z_table)
        with default_dtype(self.trained.settings.dtype):
            config = mace_data.config_from_atoms(atoms, key_specification=_KEYS)
            data = mace_data.AtomicData.from_config(
                config, z_table=self._z_table, cutoff=self.trained.settings.r_max
            )
            batch = next(iter(torch_geometric.dataloader.DataLoader([data], batch_size=1)))
            output = self.trained.model(
                batch.to_dict(), training=False, compute_force=True, compute_stress=compute_stress
            )
        stress = output.get("stress") if compute_stress else None
        return ModelOutput(
            energy=float(output["energy"].detach()[0]),
            forces=output["forces"].detach().numpy(),
            descriptors=invariant_descriptors(self.trained.model, output["node_feats"]),
            stress=None if stress is None else stress.detach().numpy()[0],
        )


def _check_config_weights(weights: np.ndarray | None, n_configs: int) -> np.ndarray | None:
    if weights is None:
        return None
    try:
        array = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"config_weights must be numbers: {exc}") from exc
    if array.shape != (n_configs,):
        raise LTAUInputError(
            f"config_weights needs one weight per configuration, shape ({n_configs},); "
            f"got {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise LTAUInputError(
            f"config_weights must be finite; entry {int(np.argmin(np.isfinite(array)))} is not"
        )
    if array.min() < 0:
        raise LTAUInputError(
            f"config_weights must be >= 0; entry {int(np.argmin(array))} is {array.min()}"
        )
    if not array.any():
        raise LTAUInputError("config_weights are all zero: nothing would be trained on")
    return array


def _atomic_data(
    structures: LabelledStructures,
    z_table: AtomicNumberTable,
    r_max: float,
    config_weights: np.ndarray | None = None,
) -> list:
    """One mace ``AtomicData`` per configuration, carrying its atoms' global ``atom_ids``
    (and, if given, its loss weight as mace's ``config_weight``)."""
    dataset = []
    for index, atoms in enumerate(structures.atoms):
        labelled = atoms.copy()
        labelled.calc = None
        if config_weights is not None:
            labelled.info["config_weight"] = float(config_weights[index])
        if structures.energies is not None:
            labelled.info[_ENERGY] = structures.energies[index]
        if structures.forces is not None:
            labelled.arrays[_FORCES] = structures.forces_of(index)
        config = mace_data.config_from_atoms(labelled, key_specification=_KEYS)
        data = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max)
        start = int(structures.index.offsets[index])
        data.atom_ids = torch.arange(start, start + len(atoms))
        dataset.append(data)
    return dataset


def _atomic_energies(
    structures: LabelledStructures,
    z_table: AtomicNumberTable,
    isolated: dict[int, float] | None,
) -> np.ndarray:
    if isolated is None:
        if structures.energies is None:
            raise LTAUInputError("E0s need either isolated-atom energies or training energies")
        counts = np.array(
            [[np.count_nonzero(a.numbers == z) for z in z_table.zs] for a in structures.atoms]
        )
        return np.linalg.lstsq(counts, structures.energies, rcond=None)[0]
    missing = [z for z in z_table.zs if z not in isolated]
    if missing:
        raise LTAUInputError(f"isolated-atom energies are missing for atomic numbers {missing}")
    return np.array([isolated[z] for z in z_table.zs], dtype=np.float64)


def _build_model(
    settings: MACESettings,
    z_table: AtomicNumberTable,
    e0s: np.ndarray,
    loader: torch_geometric.dataloader.DataLoader,
) -> torch.nn.Module:
    mean, rms = mace_modules.compute_mean_rms_energy_forces(loader, e0s)
    hidden = o3.Irreps(
        " + ".join(
            f"{settings.num_channels}x{ell}{'e' if ell % 2 == 0 else 'o'}"
            for ell in range(settings.max_L + 1)
        )
    )
    interaction = mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return mace_modules.ScaleShiftMACE(
        r_max=settings.r_max,
        num_bessel=settings.num_radial_basis,
        num_polynomial_cutoff=settings.num_cutoff_basis,
        max_ell=3,
        interaction_cls=interaction,
        interaction_cls_first=interaction,
        num_interactions=settings.num_interactions,
        num_elements=len(z_table),
        hidden_irreps=hidden,
        MLP_irreps=o3.Irreps(f"{settings.mlp_channels}x0e"),
        atomic_energies=e0s,
        avg_num_neighbors=mace_modules.compute_avg_num_neighbors(loader),
        atomic_numbers=z_table.zs,
        correlation=settings.correlation,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=float(np.atleast_1d(rms)[0]),
        atomic_inter_shift=float(np.atleast_1d(mean)[0]),
    )


def _descriptor_size(model: torch.nn.Module) -> int:
    irreps_out = o3.Irreps(str(model.products[0].linear.irreps_out))
    return int(model.num_interactions) * irreps_out.dim // (irreps_out.lmax + 1) ** 2


def _check_elements(numbers: np.ndarray, z_table: AtomicNumberTable) -> None:
    unknown = sorted(set(np.asarray(numbers).tolist()) - set(z_table.zs))
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[z] for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in z_table.zs)
        raise LTAUInputError(
            f"the model does not know element(s) {names}; it was trained on {known}"
        )


__all__ = [
    "LTAUCalculator",
    "MACESettings",
    "TrainedMACE",
    "evaluate_mace",
    "train_mace",
]
