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

Models written by mace itself (``mace_run_train``'s ``*.model`` files, fine-tuned or not) are
served by :meth:`TrainedMACE.from_file`, loaded without letting the file run code (see
:mod:`ltau.integrations.model_files`). ``device`` (``"cpu"``, ``"cuda"``, ...) places the model
and its batches; results always come back as NumPy arrays.

``import mace`` must come before anything imports e3nn, so this module imports it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mace  # must be imported before e3nn
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
from ltau._io import atomic_path
from ltau.atomistic.calculator import LTAUCalculatorBase, ModelOutput
from ltau.atomistic.structures import ForceFieldEvaluation, LabelledStructures
from ltau.energy import EnergyRecorder
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations._trained import TrainingTimes
from ltau.integrations.mace_files import build_mace, mace_architecture
from ltau.integrations.model_files import load_pickled_model, state_fingerprint
from ltau.recording import ErrorRecorder

MODEL_FORMAT, MODEL_FORMAT_VERSION = "ltau-mace-model", 2
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
    """A MACE model with what is needed to evaluate it (cutoff and dtype in ``settings``, its
    elements, the head to read for a multihead model, the device), and the training timings
    when ltau trained it."""

    model: torch.nn.Module
    settings: MACESettings
    atomic_numbers: list[int]
    epoch_seconds: list[float] = field(default_factory=list)
    logging_seconds: list[float] = field(default_factory=list)
    head: str | None = None
    device: str = "cpu"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model's parameters and buffers (see
        :func:`~ltau.integrations.model_files.state_fingerprint`)."""
        return state_fingerprint(self.model)

    def save(self, path: str | os.PathLike) -> None:
        """Save the weights (a state dict) and the architecture and settings (JSON), written
        atomically; :meth:`load` rebuilds the model and runs no code from the file."""
        stored = asdict(self)
        stored.pop("model")
        payload = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "mace_version": mace.__version__,
            "architecture": json.dumps(mace_architecture(self.model)),
            "settings": json.dumps(stored),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str = "cpu", trusted: bool = False
    ) -> TrainedMACE:
        """Load a model saved by :meth:`save`. Files of the first ltau format (a pickled
        module) are unpickled with the allowlist of
        :func:`~ltau.integrations.model_files.load_pickled_model` unless ``trusted``."""
        payload = load_pickled_model(path, device=device, trusted=trusted)
        if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
            raise LTAUFileError(f"{path} was not written by TrainedMACE.save")
        return cls._from_payload(payload, Path(path), device)

    @classmethod
    def _from_payload(cls, payload: dict, path: Path, device: str) -> TrainedMACE:
        """A model from the loaded content of a file written by :meth:`save`."""
        version = payload.get("format_version", 1)
        if version not in (1, MODEL_FORMAT_VERSION):
            raise LTAUFileError(
                f"{path} has {MODEL_FORMAT} format version {version}; this ltau reads versions "
                f"1 to {MODEL_FORMAT_VERSION}"
            )
        try:
            stored = json.loads(payload["settings"]) if version >= 2 else payload["settings"]
            settings = MACESettings(**stored["settings"])
            trained = {
                "atomic_numbers": [int(z) for z in stored["atomic_numbers"]],
                "epoch_seconds": [float(t) for t in stored["epoch_seconds"]],
                "logging_seconds": [float(t) for t in stored["logging_seconds"]],
                "head": stored.get("head"),
            }
        except (KeyError, TypeError, ValueError, LTAUInputError) as exc:
            raise LTAUFileError(
                f"{path}: its settings are incomplete or malformed ({exc})"
            ) from exc
        model = payload.get("model") if version == 1 else _rebuilt(payload, settings, path)
        if not isinstance(model, torch.nn.Module):
            raise LTAUFileError(f"{path} holds no model")
        return cls(model=model.to(device).eval(), settings=settings, device=device, **trained)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, *, head: str | None = None, device: str = "cpu"
    ) -> TrainedMACE:
        """Serve a mace model module (e.g. of a ``mace_run_train`` file): its cutoff, elements
        and dtype come from the model; ``head`` names the head to read (default: the last
        head other than mace's replay head ``pt_head``, i.e. the fine-tuning head of a
        multihead model)."""
        for attribute in ("r_max", "atomic_numbers", "num_interactions", "products"):
            if not hasattr(model, attribute):
                raise LTAUFileError(f"the model is not a mace model (it has no {attribute})")
        heads = list(getattr(model, "heads", None) or ["Default"])
        if head is not None and head not in heads:
            raise LTAUInputError(f"the model has no head {head!r}; its heads are {heads}")
        dtype = next(model.parameters()).dtype
        settings = MACESettings(r_max=float(model.r_max), dtype=str(dtype).split(".")[-1])
        return cls(
            model=model.to(device).eval(),
            settings=settings,
            atomic_numbers=[int(z) for z in model.atomic_numbers.tolist()],
            head=head if head is not None else [h for h in heads if h != "pt_head"][-1],
            device=device,
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        head: str | None = None,
        device: str = "cpu",
        trusted: bool = False,
    ) -> TrainedMACE:
        """A ``.model`` file written by ``mace_run_train`` (a pickled module) or by
        :meth:`save`, loaded without running code unless ``trusted``."""
        payload = load_pickled_model(path, device=device, trusted=trusted)
        if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
            trained = cls._from_payload(payload, Path(path), device)
            if head is not None and head not in trained.heads:
                raise LTAUInputError(
                    f"the model has no head {head!r}; its heads are {trained.heads}"
                )
            return trained
        if not isinstance(payload, torch.nn.Module):
            raise LTAUFileError(f"{path} holds a {type(payload).__name__}, not a mace model")
        return cls.from_model(payload, head=head, device=device)

    @property
    def heads(self) -> list[str]:
        """The model's heads (``["Default"]`` for a single-head model)."""
        return list(getattr(self.model, "heads", None) or ["Default"])


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
    energy_recorder: EnergyRecorder | None = None,
    config_weights: np.ndarray | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> TrainedMACE:
    """Train a MACE model on ``device``, recording every training atom's force error at every
    epoch.

    ``isolated_atom_energies``: E0s by atomic number (eV); without them they are fitted by
    least squares on the training energies. ``recorder`` must have one sample per training
    atom; its epoch is closed with ``member``. ``energy_recorder`` (one sample per training
    configuration, see :func:`ltau.energy.energy_recorder`) gets each configuration's signed
    ``E_pred - E_ref`` (eV per structure) from the same forward pass and logs it centred. ``config_weights``: a loss weight per
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
    if energy_recorder is not None:
        if structures.energies is None:
            raise LTAUInputError("recording energy errors needs reference training energies")
        if energy_recorder.n_samples != len(structures.atoms):
            raise LTAUInputError(
                f"the energy recorder has {energy_recorder.n_samples} samples but the training "
                f"set has {len(structures.atoms)} configurations (one sample per configuration)"
            )
    configuration_of_atoms = torch.as_tensor(structures.index.configuration_of_atoms)
    torch.manual_seed(settings.seed)
    with default_dtype(settings.dtype):
        z_table = AtomicNumberTable(sorted(set(structures.atomic_numbers.tolist())))
        dataset = _atomic_data(structures, z_table, settings.r_max, weights)
        generator = torch.Generator().manual_seed(settings.seed)
        loader = torch_geometric.dataloader.DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
        e0s = _atomic_energies(structures, z_table, isolated_atom_energies)
        model = _build_model(settings, z_table, e0s, loader).to(device)
        loss_function = mace_modules.WeightedEnergyForcesLoss(
            energy_weight=settings.energy_weight, forces_weight=settings.forces_weight
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, amsgrad=True)
        averaged = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings.ema_decay),
        )
        trained = TrainedMACE(model, settings, list(z_table.zs), device=device)
        for _ in tqdm(range(epochs), desc="training MACE", unit="epoch", disable=not progress):
            started, logging = time.perf_counter(), 0.0
            model.train()
            for batch in loader:
                batch = batch.to(device)
                output = model(batch.to_dict(), training=True)
                loss = loss_function(pred=output, ref=batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                averaged.update_parameters(model)
                if recorder is not None:
                    logged = time.perf_counter()
                    errors = torch.linalg.vector_norm(output["forces"] - batch.forces, dim=1)
                    recorder.record(batch.atom_ids.cpu().numpy(), errors.detach().cpu().numpy())
                    logging += time.perf_counter() - logged
                if energy_recorder is not None:
                    logged = time.perf_counter()
                    first_atoms = batch.atom_ids[batch.ptr[:-1]].cpu()
                    signed = (output["energy"] - batch.energy).detach().cpu()
                    energy_recorder.record(
                        configuration_of_atoms[first_atoms].numpy(), signed.numpy()
                    )
                    logging += time.perf_counter() - logged
            logged = time.perf_counter()
            if recorder is not None:
                recorder.end_epoch(member)
            if energy_recorder is not None:
                energy_recorder.end_epoch(member)
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
        dataset = _atomic_data(
            structures, z_table, trained.settings.r_max, heads=trained.heads, head=trained.head
        )
        loader = torch_geometric.dataloader.DataLoader(dataset, batch_size=batch_size)
        for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress):
            batch = batch.to(trained.device)
            output = model(batch.to_dict(), training=False, compute_force=True)
            energies.append(output["energy"].detach().cpu().numpy())
            forces.append(output["forces"].detach().cpu().numpy())
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
    return invariant.detach().cpu().numpy().astype(np.float32)


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

    @property
    def model_fingerprint(self) -> str:
        return self.trained.fingerprint

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        _check_elements(atoms.numbers, self._z_table)
        with default_dtype(self.trained.settings.dtype):
            config = mace_data.config_from_atoms(atoms, key_specification=_KEYS)
            config.head = self.trained.head or config.head
            data = mace_data.AtomicData.from_config(
                config,
                z_table=self._z_table,
                cutoff=self.trained.settings.r_max,
                heads=self.trained.heads,
            )
            batch = next(iter(torch_geometric.dataloader.DataLoader([data], batch_size=1)))
            batch = batch.to(self.trained.device)
            output = self.trained.model(
                batch.to_dict(), training=False, compute_force=True, compute_stress=compute_stress
            )
        stress = output.get("stress") if compute_stress else None
        return ModelOutput(
            energy=float(output["energy"].detach()[0]),
            forces=output["forces"].detach().cpu().numpy(),
            descriptors=invariant_descriptors(self.trained.model, output["node_feats"]),
            stress=None if stress is None else stress.detach().cpu().numpy()[0],
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
    *,
    heads: list[str] | None = None,
    head: str | None = None,
) -> list:
    """One mace ``AtomicData`` per configuration, carrying its atoms' global ``atom_ids``
    (and, if given, its loss weight as mace's ``config_weight``), read by ``head`` of
    ``heads`` (mace's default head when None)."""
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
        config.head = head or config.head
        data = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=heads)
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


def _rebuilt(payload: dict, settings: MACESettings, source: Path) -> torch.nn.Module:
    """The model of a version-2 file: built from its architecture, then its weights loaded."""
    try:
        architecture = json.loads(payload["architecture"])
        state = dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LTAUFileError(f"{source}: its architecture or weights are missing ({exc})") from exc
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LTAUFileError(f"{source}: its weights are not all tensors")
    with default_dtype(settings.dtype):
        model = build_mace(architecture, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LTAUFileError(f"{source}: its weights do not fit its architecture: {exc}") from exc
    return model


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
