"""LTAU for NequIP (nequip 0.19): error logging during training, descriptors, calculator.

Nothing of nequip is patched or copied; ltau plugs into nequip's extension points:

* :class:`LTAUErrorLogger`, a Lightning callback configured like nequip's own callbacks
  (``_target_: ltau.integrations.nequip.LTAUErrorLogger`` in ``trainer.callbacks``), records
  every training atom's force-error norm ``||F_pred - F_ref||_2`` (eV/Å) at every epoch.
  ``NequIPLightningModule.training_step`` returns only the loss, so the callback reads the
  predicted forces of the step's own forward pass through a forward hook on the Lightning module
  (no extra model evaluation): logging costs one norm and one copy per batch.
* Training atoms need ids that stay fixed while batches are shuffled. :class:`FrameIndexedDataset`
  adds each frame's position in the training set to the data (key ``ltau_frame_id``, a
  registered per-frame field). The callback wraps the training dataset of a nequip data module
  itself, so configs need no change; with other data pipelines wrap the dataset yourself.
  Atom ids are global in frame order (frame 0's atoms, then frame 1's, ...), the numbering of
  :class:`~ltau.atomistic.structures.AtomIndex`.
* :class:`LTAUCalculator` builds on ``nequip.integrations.ase.NequIPCalculator``'s public
  ``atoms_to_data`` and ``call_model`` (type mapping, neighbour list, forward pass) and adds the
  LTAU results of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`. Descriptors are the
  invariant (``0e``) part of the ``node_features`` NequIP computes before its energy readout.

:func:`train_nequip` and :func:`evaluate_nequip` do the same from Python on
:class:`~ltau.atomistic.structures.LabelledStructures` (used by the tests and the benchmark).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning
import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from e3nn import o3
from nequip.data import AtomicDataDict, from_ase, register_fields
from nequip.data.dataset import AtomicDataset
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.train import NequIPLightningModule
from nequip.utils.global_state import set_global_state
from tqdm.auto import tqdm

from ltau._checks import positive_number
from ltau.atomistic.calculator import LTAUCalculatorBase, ModelOutput
from ltau.atomistic.structures import AtomIndex, ForceFieldEvaluation, LabelledStructures
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations._trained import TrainingTimes, read_model_file
from ltau.recording import ErrorLog, ErrorRecorder

FRAME_ID_KEY = "ltau_frame_id"
"""Per-frame field: the frame's position in the training set (int64, shape ``(n_frames,)``)."""

register_fields(graph_fields=[FRAME_ID_KEY], long_fields=[FRAME_ID_KEY])


class FrameIndexedDataset(AtomicDataset):
    """A NequIP dataset whose frames carry their index in it under ``ltau_frame_id``.

    ``dataset`` is any dataset of AtomicDataDicts (a nequip ``AtomicDataset``, a torch
    ``Subset`` of one, ...); its frames are returned unchanged apart from the added key.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        super().__init__(transforms=[])
        if isinstance(dataset, FrameIndexedDataset):
            dataset = dataset.dataset
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices) -> list[AtomicDataDict.Type]:
        if isinstance(indices, slice):
            indices = range(*indices.indices(len(self)))
        indices = [int(i) for i in indices]
        many = getattr(self.dataset, "__getitems__", None)
        frames = many(indices) if many is not None else [self.dataset[i] for i in indices]
        indexed = []
        for index, frame in zip(indices, frames, strict=True):
            frame = dict(frame)
            frame[FRAME_ID_KEY] = torch.tensor([index], dtype=torch.long)
            indexed.append(frame)
        return indexed


class LTAUErrorLogger(lightning.Callback):
    """Record every training atom's force-error norm (eV/Å) at every epoch into an ltau log.

    Parameters (plain values, so a nequip config can set them):

    log_path:
        The HDF5 error log to write (format ``ltau-error-log``: one row per epoch, one column
        per training atom in frame order).
    overwrite:
        Replace an existing log at ``log_path`` instead of refusing to.

    The training set's atoms are numbered from the frames the first epoch visits, which must be
    every training frame exactly once (no ``drop_last``, no sampler that repeats frames). The
    log file is created at the end of that first epoch. Single-process training only.
    Epoch times run from the start of an epoch to its end, validation included.
    After ``fit``: :attr:`atom_index` maps atom ids to frames, :attr:`epoch_seconds` and
    :attr:`logging_seconds` time each epoch and the logger's share of it.
    """

    def __init__(self, log_path: str | os.PathLike, overwrite: bool = False) -> None:
        super().__init__()
        if not isinstance(log_path, (str, os.PathLike)) or not str(log_path).strip():
            raise LTAUInputError(f"log_path must be a file path; got {log_path!r}")
        if not isinstance(overwrite, bool):
            raise LTAUInputError(f"overwrite must be true or false; got {overwrite!r}")
        self.log_path = Path(log_path)
        if not self.log_path.parent.is_dir():
            raise LTAUInputError(f"the folder of log_path {self.log_path} does not exist")
        if self.log_path.exists() and not overwrite:
            raise LTAUFileError(f"{self.log_path} exists; pass overwrite=True to replace it")
        self.overwrite = overwrite
        self.recorder: ErrorRecorder | None = None
        self.atom_index: AtomIndex | None = None
        self.epoch_seconds: list[float] = []
        self.logging_seconds: list[float] = []
        self._hook = None
        self._capturing = False
        self._forces: torch.Tensor | None = None
        self._first_epoch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def logging_overhead(self) -> float:
        """Time spent logging as a fraction of the epoch time without it."""
        total, logging = sum(self.epoch_seconds), sum(self.logging_seconds)
        return logging / (total - logging) if total > logging else float("nan")

    def distributions(self, **kwargs) -> ErrorDistributions:
        """Per-atom error distributions from the log (arguments of ``ErrorLog.distributions``)."""
        if self.recorder is None:
            raise LTAUInputError("no training epoch has been logged yet")
        with ErrorLog(self.log_path) as log:
            return log.distributions(**kwargs)

    def setup(self, trainer: lightning.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size != 1:
            raise LTAUInputError("LTAUErrorLogger supports single-process training only")
        # nequip's data modules keep their training set(s) in ``train_dataset`` (a list).
        datasets = getattr(trainer.datamodule, "train_dataset", None)
        if isinstance(datasets, Sequence) and not isinstance(datasets, str):
            trainer.datamodule.train_dataset = [FrameIndexedDataset(d) for d in datasets]

    def on_train_start(self, trainer: lightning.Trainer, pl_module) -> None:
        self._hook = pl_module.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output) -> None:
        if self._capturing and self._forces is None:
            self._forces = output[AtomicDataDict.FORCE_KEY].detach()

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module) -> None:
        self._epoch_started = time.perf_counter()
        self._logging = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._capturing, self._forces = True, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        started = time.perf_counter()
        self._capturing = False
        if self._forces is None:
            raise LTAUInputError("the training step's forward pass gave no forces")
        if FRAME_ID_KEY not in batch:
            raise LTAUInputError(
                f"training batches carry no {FRAME_ID_KEY!r}: wrap the training dataset in "
                "ltau.integrations.nequip.FrameIndexedDataset"
            )
        errors = torch.linalg.vector_norm(self._forces - batch[AtomicDataDict.FORCE_KEY], dim=1)
        self._forces = None
        frames = batch[FRAME_ID_KEY].cpu().numpy().reshape(-1)
        sizes = batch[AtomicDataDict.NUM_NODES_KEY].cpu().numpy().reshape(-1)
        errors = errors.detach().cpu().numpy()
        if self.atom_index is None:
            self._first_epoch.append((frames, sizes, errors))
        else:
            self.recorder.record(self._atom_ids(frames, sizes), errors)
        self._logging += time.perf_counter() - started

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module) -> None:
        started = time.perf_counter()
        if self.atom_index is None:
            self._number_atoms()
        self.recorder.end_epoch()
        self._logging += time.perf_counter() - started
        self.logging_seconds.append(self._logging)
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)

    def on_train_end(self, trainer: lightning.Trainer, pl_module) -> None:
        self._remove_hook()

    def teardown(self, trainer: lightning.Trainer, pl_module, stage: str) -> None:
        self._remove_hook()
        if self.recorder is not None:
            self.recorder.close()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _number_atoms(self) -> None:
        """Number the atoms from the frames of the first epoch, then record that epoch."""
        frames = np.concatenate([f for f, _, _ in self._first_epoch])
        sizes = np.concatenate([s for _, s, _ in self._first_epoch])
        order = np.argsort(frames, kind="stable")
        if not np.array_equal(frames[order], np.arange(frames.size)):
            raise LTAUInputError(
                "the first training epoch must visit every training frame exactly once "
                f"(frames 0..{frames.size - 1}); check drop_last and the sampler"
            )
        self.atom_index = AtomIndex.from_sizes(sizes[order])
        self.recorder = ErrorRecorder(
            self.atom_index.n_atoms, log_path=self.log_path, overwrite=self.overwrite
        )
        for frames, sizes, errors in self._first_epoch:
            self.recorder.record(self._atom_ids(frames, sizes), errors)
        self._first_epoch = []

    def _atom_ids(self, frames: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if frames.max() >= self.atom_index.n_configs or not np.array_equal(
            np.diff(self.atom_index.offsets)[frames], sizes
        ):
            raise LTAUInputError("a training frame changed its number of atoms between epochs")
        starts = np.repeat(self.atom_index.offsets[frames] - np.cumsum(sizes) + sizes, sizes)
        return starts + np.arange(int(sizes.sum()))


@dataclass
class NequIPSettings:
    """Model and training settings (units: Å, eV). Defaults: a small, fast CPU model."""

    r_max: float = 4.0
    num_layers: int = 2
    l_max: int = 1
    num_features: int = 16
    radial_mlp_width: int = 32
    batch_size: int = 10
    learning_rate: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    model_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model_dtype not in ("float32", "float64"):
            raise LTAUInputError(
                f"model_dtype must be float32 or float64; got {self.model_dtype!r}"
            )
        positive_number(self.r_max, "r_max", "a positive number (Å)")


@dataclass
class TrainedNequIP(TrainingTimes):
    """A trained NequIP model (``nequip.nn.GraphModel``, in eval mode) and its timings."""

    model: torch.nn.Module
    settings: NequIPSettings
    epoch_seconds: list[float] = field(default_factory=list)
    logging_seconds: list[float] = field(default_factory=list)

    @property
    def type_names(self) -> list[str]:
        return list(self.model.type_names)

    def save(self, path: str | os.PathLike) -> None:
        """Save the model (torch's format) and its settings."""
        payload = {"model": self.model, "settings": asdict(self), "format": "ltau-nequip-model"}
        payload["settings"].pop("model")
        torch.save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainedNequIP:
        """Load a model saved by :meth:`save` (a trusted file: torch unpickles it)."""
        payload = read_model_file(path, "ltau-nequip-model", "TrainedNequIP.save")
        stored = payload["settings"]
        return cls(
            model=payload["model"].eval(),
            settings=NequIPSettings(**stored["settings"]),
            epoch_seconds=list(stored["epoch_seconds"]),
            logging_seconds=list(stored["logging_seconds"]),
        )


class _FramesDataset(AtomicDataset):
    """Prepared AtomicDataDicts held in memory (transforms already applied)."""

    def __init__(self, frames: list[AtomicDataDict.Type]) -> None:
        super().__init__(transforms=[])
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def _get_data_list(self, indices) -> list[AtomicDataDict.Type]:
        if isinstance(indices, slice):
            return self.frames[indices]
        return [self.frames[int(i)] for i in indices]


def train_nequip(
    structures: LabelledStructures,
    *,
    epochs: int,
    settings: NequIPSettings | None = None,
    isolated_atom_energies: dict[int, float] | None = None,
    log_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[TrainedNequIP, LTAUErrorLogger | None]:
    """Train a NequIP model with nequip's own Lightning module, logging errors into
    ``log_path`` with :class:`LTAUErrorLogger` (no logging without a path).

    ``isolated_atom_energies``: E0s by atomic number (eV), the model's per-type energy shifts;
    without them they are fitted by least squares on the training energies. Returns the trained
    model and the logger (``logger.distributions()``; its atom ids are those of
    ``structures.index``).
    """
    settings = settings or NequIPSettings()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {epochs!r}")
    if structures.forces is None or structures.energies is None:
        raise LTAUInputError("training structures need reference energies and forces")
    set_global_state()  # what nequip-train does first: float64 data, TF32 off
    lightning.seed_everything(settings.seed, verbose=False)
    numbers = sorted(set(structures.atomic_numbers.tolist()))
    type_names = [chemical_symbols[z] for z in numbers]
    frames = _prepare(structures, type_names, settings.r_max)
    shifts = _energy_shifts(structures, numbers, isolated_atom_energies)
    neighbours = np.mean(
        [
            f[AtomicDataDict.EDGE_INDEX_KEY].shape[1] / len(a)
            for f, a in zip(frames, structures.atoms, strict=True)
        ]
    )
    module = NequIPLightningModule(
        model={
            "_target_": "nequip.model.NequIPGNNModel",
            "seed": settings.seed,
            "model_dtype": settings.model_dtype,
            "type_names": type_names,
            "r_max": settings.r_max,
            "num_layers": settings.num_layers,
            "l_max": settings.l_max,
            "num_features": settings.num_features,
            "radial_mlp_width": settings.radial_mlp_width,
            "avg_num_neighbors": float(neighbours),
            "per_type_energy_shifts": dict(zip(type_names, shifts, strict=True)),
            "per_type_energy_scales": float(np.sqrt(np.mean(structures.forces**2))),
        },
        num_datasets={"train": 1, "val": 0, "test": 0, "predict": 0},
        optimizer={"_target_": "torch.optim.Adam", "lr": settings.learning_rate, "amsgrad": True},
        loss={
            "_target_": "nequip.train.EnergyForceLoss",
            "per_atom_energy": True,
            "coeffs": {
                AtomicDataDict.TOTAL_ENERGY_KEY: settings.energy_weight,
                AtomicDataDict.FORCE_KEY: settings.forces_weight,
            },
        },
    )
    logger = None
    callbacks = []
    if log_path is not None:
        logger = LTAUErrorLogger(log_path, overwrite=overwrite)
        callbacks.append(logger)
    timer = _EpochTimer()
    callbacks.append(timer)
    if progress:
        callbacks.append(_EpochBar(epochs))
    loader = torch.utils.data.DataLoader(
        FrameIndexedDataset(_FramesDataset(frames)),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
        collate_fn=AtomicDataDict.batched_from_list,
    )
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*(does not have many workers|no `val_dataloader`).*"
        )
        trainer.fit(module, train_dataloaders=loader)
    model = module.model["sole_model"].eval()
    trained = TrainedNequIP(model, settings, timer.epoch_seconds)
    trained.logging_seconds = list(logger.logging_seconds) if logger else [0.0] * epochs
    return trained, logger


class _EpochTimer(lightning.Callback):
    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._started)


class _EpochBar(lightning.Callback):
    def __init__(self, epochs: int) -> None:
        self.bar = tqdm(total=epochs, desc="training NequIP", unit="epoch")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.bar.update()

    def on_train_end(self, trainer, pl_module) -> None:
        self.bar.close()


def evaluate_nequip(
    trained: TrainedNequIP,
    structures: LabelledStructures,
    *,
    batch_size: int = 20,
    progress: bool = False,
) -> ForceFieldEvaluation:
    """Energies, forces, invariant descriptors (the scalar node features) and force errors
    if labelled, batched."""
    model = trained.model
    _check_elements(structures.atomic_numbers, trained.type_names)
    frames = _prepare(structures, trained.type_names, float(trained.settings.r_max))
    energies, forces, descriptors = [], [], []
    starts = range(0, len(frames), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        batch = AtomicDataDict.batched_from_list(frames[start : start + batch_size])
        output = model(batch)
        energies.append(output[AtomicDataDict.TOTAL_ENERGY_KEY].detach().numpy().reshape(-1))
        forces.append(output[AtomicDataDict.FORCE_KEY].detach().numpy())
        descriptors.append(invariant_descriptors(model, output))
    return ForceFieldEvaluation.from_batches(structures, energies, forces, descriptors)


def invariant_descriptors(model: torch.nn.Module, output: AtomicDataDict.Type) -> np.ndarray:
    """The ``0e`` part of the model's ``node_features``, float32 ``(n_atoms, n_invariant)``."""
    features = output[AtomicDataDict.NODE_FEATURES_KEY].detach()
    return features[:, _scalar_columns(model)].numpy().astype(np.float32)


def descriptor_size(model: torch.nn.Module) -> int:
    """Length of the invariant descriptor of ``model``."""
    return int(_scalar_columns(model).size)


def _scalar_columns(model: torch.nn.Module) -> np.ndarray:
    irreps_out = getattr(model, "irreps_out", None)
    if not isinstance(irreps_out, dict) or AtomicDataDict.NODE_FEATURES_KEY not in irreps_out:
        raise LTAUInputError(
            "the model does not declare its node_features (a compiled model does not): "
            "use the eager nequip model"
        )
    irreps = o3.Irreps(str(irreps_out[AtomicDataDict.NODE_FEATURES_KEY]))
    columns = []
    for (multiplicity, irrep), block in zip(irreps, irreps.slices(), strict=True):
        if irrep.l == 0 and irrep.p == 1:
            columns.extend(range(block.start, block.start + multiplicity))
    return np.asarray(columns, dtype=np.int64)


class LTAUCalculator(LTAUCalculatorBase):
    """ASE calculator: a NequIP model plus a fitted LTAU estimator.

    Built on ``nequip.integrations.ase.NequIPCalculator``: its ``atoms_to_data`` (type mapping,
    neighbour list) and ``call_model`` run the model once; energy, forces (stress for periodic
    cells) and the invariant descriptors come from that one pass, and the LTAU results are those
    of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`. Use :meth:`from_trained`, or give
    any ``NequIPCalculator`` on an eager (not compiled) model, which returns ``node_features``.
    """

    def __init__(
        self,
        nequip_calculator: NequIPCalculator,
        estimator: LTAUEstimator,
        *,
        atol: float = 0.1,
        **kwargs,
    ) -> None:
        if not isinstance(nequip_calculator, NequIPCalculator):
            raise LTAUInputError("nequip_calculator must be a nequip NequIPCalculator")
        self.nequip = nequip_calculator
        self._columns = _scalar_columns(nequip_calculator.model)
        self.type_names = list(nequip_calculator.model.type_names)
        super().__init__(estimator, atol=atol, **kwargs)

    @classmethod
    def from_trained(
        cls, trained: TrainedNequIP, estimator: LTAUEstimator, *, atol: float = 0.1, **kwargs
    ) -> LTAUCalculator:
        """A calculator for a model from :func:`train_nequip` (type names = chemical symbols)."""
        calculator = NequIPCalculator(
            trained.model.eval(),
            device="cpu",
            transforms=_transforms(trained.type_names, float(trained.settings.r_max)),
        )
        return cls(calculator, estimator, atol=atol, **kwargs)

    @property
    def descriptor_size(self) -> int:
        return int(self._columns.size)

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        _check_elements(atoms.numbers, self.type_names)
        output = self.nequip.call_model(self.nequip.atoms_to_data(atoms))
        energy_unit = self.nequip.energy_units_to_eV
        force_unit = energy_unit / self.nequip.length_units_to_A
        stress = None
        if compute_stress and AtomicDataDict.STRESS_KEY in output:
            stress = output[AtomicDataDict.STRESS_KEY].detach().numpy().reshape(3, 3)
            stress = stress * energy_unit / self.nequip.length_units_to_A**3
        return ModelOutput(
            energy=energy_unit * float(output[AtomicDataDict.TOTAL_ENERGY_KEY].detach().sum()),
            forces=force_unit * output[AtomicDataDict.FORCE_KEY].detach().numpy(),
            descriptors=output[AtomicDataDict.NODE_FEATURES_KEY]
            .detach()[:, self._columns]
            .numpy()
            .astype(np.float32),
            stress=stress,
        )


def _transforms(type_names: Sequence[str], r_max: float) -> list:
    return [
        ChemicalSpeciesToAtomTypeMapper(
            model_type_names=list(type_names),
            chemical_species_to_atom_type_map={name: name for name in type_names},
        ),
        NeighborListTransform(r_max=r_max),
    ]


def _prepare(
    structures: LabelledStructures, type_names: Sequence[str], r_max: float
) -> list[AtomicDataDict.Type]:
    """One AtomicDataDict per configuration with types, neighbour list and labels."""
    transforms = _transforms(type_names, r_max)
    frames = []
    for index, atoms in enumerate(structures.atoms):
        bare = atoms.copy()
        bare.calc = None
        frame = from_ase(bare)
        for transform in transforms:
            frame = transform(frame)
        if structures.energies is not None:
            frame[AtomicDataDict.TOTAL_ENERGY_KEY] = torch.tensor(
                [[structures.energies[index]]], dtype=torch.float64
            )
        if structures.forces is not None:
            frame[AtomicDataDict.FORCE_KEY] = torch.as_tensor(structures.forces_of(index))
        frames.append(frame)
    return frames


def _energy_shifts(
    structures: LabelledStructures, numbers: list[int], isolated: dict[int, float] | None
) -> list[float]:
    if isolated is None:
        counts = np.array(
            [[np.count_nonzero(a.numbers == z) for z in numbers] for a in structures.atoms]
        )
        return np.linalg.lstsq(counts, structures.energies, rcond=None)[0].tolist()
    missing = [z for z in numbers if z not in isolated]
    if missing:
        raise LTAUInputError(f"isolated-atom energies are missing for atomic numbers {missing}")
    return [float(isolated[z]) for z in numbers]


def _check_elements(numbers: np.ndarray, type_names: Sequence[str]) -> None:
    unknown = sorted({chemical_symbols[z] for z in np.asarray(numbers).tolist()} - set(type_names))
    if unknown:
        raise LTAUInputError(
            f"the model does not know element(s) {', '.join(unknown)}; its type names are "
            f"{', '.join(type_names)}"
        )


__all__ = [
    "FRAME_ID_KEY",
    "FrameIndexedDataset",
    "LTAUCalculator",
    "LTAUErrorLogger",
    "NequIPSettings",
    "TrainedNequIP",
    "evaluate_nequip",
    "train_nequip",
]
