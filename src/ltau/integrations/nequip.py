"""LTAU for NequIP (nequip 0.19): error logging during training, model files, descriptors,
calculator.

Nothing of nequip is patched or copied; ltau plugs into nequip's extension points:

* :class:`LTAUErrorLogger`, a Lightning callback configured like nequip's own callbacks
  (``_target_: ltau.integrations.nequip.LTAUErrorLogger`` in ``trainer.callbacks``), records
  every training atom's force-error norm ``||F_pred - F_ref||_2`` (eV/Å) at every epoch.
  ``NequIPLightningModule.training_step`` returns only the loss, so the callback reads the
  predicted forces of the step's own forward pass through a forward hook on the Lightning module
  (no extra model evaluation): logging costs one norm and one copy per batch.
* Training frames need ids that stay fixed while batches are shuffled. :class:`FrameIndexedDataset`
  adds each frame's position in the training set to the data (key ``ltau_frame_id``, a
  registered per-frame field). The callback wraps the training dataset of a nequip data module
  itself, so configs need no change; with other data pipelines wrap the dataset yourself.
* The log is tied to the training file, as ``ltau mace-train``'s is, so that ``ltau run`` can
  use it: its samples are the atoms of the file in order (columns ``configuration`` and
  ``atom``), its provenance holds the file's path and SHA-256, the configurations nequip
  trained on and those it held out for validation (or its separate validation file). nequip's
  ASE datasets and their random splits (``split_dataset``) say which configuration of the file
  each frame is; frames of other datasets are matched to the file given as ``train_file`` by
  their atoms (:class:`~ltau.atomistic.matching.ConfigurationMatcher`). Without a file the log
  numbers the training frames' atoms in frame order and carries no provenance.
* :class:`NequIPModel` (:func:`load_nequip_model`) runs the models nequip users save: packaged
  (``nequip-package``, ``.nequip.zip``) and checkpoint (``.ckpt``) files, which run code when
  loaded and so need ``trusted=True``; compiled files (``nequip-compile``: TorchScript
  ``.nequip.pth``, and AOTInductor ``.nequip.pt2``, a native library, which needs
  ``trusted=True``); and ltau's own :class:`TrainedNequIP` files (weights and JSON settings,
  loaded without running code).
* :class:`LTAUCalculator` builds on ``nequip.integrations.ase.NequIPCalculator``'s public
  ``atoms_to_data`` and ``call_model`` (type mapping, neighbour list, forward pass) and adds the
  LTAU results of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`.

Descriptors are the invariant (``0e``) part of the ``node_features`` NequIP computes before its
energy readout (for ``NequIPGNNModel`` every column: its last layer's features are scalars).
Eager models declare the irreps of their ``node_features``. Compiled models do not, and an
AOTInductor file returns only the fields it was compiled for (``nequip-compile --target ase``
gives no ``node_features``; see :data:`COMPILE_FOR_LTAU`): for them every column is used, after
a check on load that each is unchanged when a probe structure is rotated.

:func:`train_nequip` and :func:`evaluate_nequip` do the same from Python on
:class:`~ltau.atomistic.structures.LabelledStructures` (used by the tests and the benchmark).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import nequip
import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers as symbol_numbers
from ase.data import chemical_symbols
from e3nn import o3
from nequip.data import AtomicDataDict, from_ase, register_fields
from nequip.data.dataset import ASEDataset, AtomicDataset
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
from nequip.integrations.ase import NequIPCalculator
from nequip.integrations.utils import basic_transforms
from nequip.train import NequIPLightningModule
from nequip.utils.global_state import set_global_state
from tqdm.auto import tqdm

from ltau._checks import positive_number
from ltau._io import file_sha256
from ltau.atomistic.calculator import LTAUCalculatorBase, ModelOutput
from ltau.atomistic.matching import POSITION_TOLERANCE, ConfigurationMatcher
from ltau.atomistic.structures import (
    AtomIndex,
    ForceFieldEvaluation,
    LabelledStructures,
    read_structures,
)
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations._trained import TrainingTimes
from ltau.integrations.model_files import TRUST_HINT, archive_kind, state_fingerprint
from ltau.recording import ErrorLog, ErrorRecorder

logger = logging.getLogger(__name__)

FRAME_ID_KEY = "ltau_frame_id"
"""Per-frame field: the frame's position in the training set (int64, shape ``(n_frames,)``)."""

register_fields(graph_fields=[FRAME_ID_KEY], long_fields=[FRAME_ID_KEY])

COMPILE_FOR_LTAU = (
    "nequip-compile MODEL OUT.nequip.pt2 --mode aotinductor --device cpu --input-fields pos "
    "edge_index atom_types cell edge_cell_shift --output-fields total_energy forces stress "
    "node_features --num-frames static"
)
"""An AOTInductor compilation whose file ltau can use: nequip's ``ase`` target plus the
``node_features`` (replace ``cpu`` by the device it is to run on)."""

_UNSEEN = -2
"""Configuration of a training frame not seen yet (-1: seen, matching no configuration)."""


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


@dataclass
class DatasetSource:
    """Where a nequip dataset's frames come from: a structure file (absolute ``path``) and the
    configuration of the file that each frame is, ``indices`` ``(n_frames,)``."""

    path: Path
    indices: np.ndarray


def dataset_source(dataset: torch.utils.data.Dataset) -> DatasetSource | None:
    """The file behind ``dataset``, through ``FrameIndexedDataset`` and torch ``Subset``
    wrappers (nequip's ``split_dataset`` and ``SubsetByRandomSlice``) down to an
    ``ASEDataset``; None for any other dataset."""
    indices: np.ndarray | None = None
    while isinstance(dataset, (FrameIndexedDataset, torch.utils.data.Subset)):
        if isinstance(dataset, torch.utils.data.Subset):
            chosen = np.asarray([int(i) for i in dataset.indices], dtype=np.int64)
            indices = chosen if indices is None else chosen[indices]
        dataset = dataset.dataset
    if not isinstance(dataset, ASEDataset):
        return None
    if indices is None:
        indices = np.arange(len(dataset), dtype=np.int64)
    return DatasetSource(Path(dataset.file_path).resolve(), indices)


class TrainingFile:
    """The structures of a training file as the log numbers them: ``structures.index`` gives
    each configuration's atom ids, ``matcher`` finds a frame's configuration from its atoms."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise LTAUFileError(f"the training file {self.path} does not exist")
        self.structures = read_structures(
            self.path, energy_key=None, forces_key=None, require_forces=False
        )
        self.sha256 = file_sha256(self.path)
        self.matcher = ConfigurationMatcher(
            self.structures.atomic_numbers,
            np.concatenate([atoms.positions for atoms in self.structures.atoms]),
            np.diff(self.structures.index.offsets),
        )

    def is_file(self, path: Path) -> bool:
        """Whether ``path`` holds the same bytes as the training file."""
        return path.resolve() == self.path or file_sha256(path) == self.sha256

    def samples(self) -> dict[str, np.ndarray]:
        """The log's sample columns: each atom's ``configuration`` and ``atom`` within it."""
        index = self.structures.index
        sizes = np.diff(index.offsets)
        return {
            "configuration": index.configuration_of_atoms,
            "atom": np.arange(index.n_atoms) - np.repeat(index.offsets[:-1], sizes),
        }

    def check_frame(self, config: int, numbers: np.ndarray | None, positions: np.ndarray) -> str:
        """Why a frame is not configuration ``config`` of the file ('' if it is)."""
        start, stop = self.structures.index.offsets[config : config + 2]
        if stop - start != len(positions):
            return f"it has {len(positions)} atoms, the configuration {stop - start}"
        if numbers is not None and not np.array_equal(self.matcher.numbers[start:stop], numbers):
            return "their elements differ"
        offset = np.max(np.abs(self.matcher.positions[start:stop] - positions))
        if offset > POSITION_TOLERANCE:
            return f"positions differ by up to {offset:.3g} Å"
        return ""


class LTAUErrorLogger(TrainingTimes, lightning.Callback):
    """Record every training atom's force-error norm (eV/Å) at every epoch into an ltau log.

    Parameters (plain values, so a nequip config can set them):

    log_path:
        The HDF5 error log to write (format ``ltau-error-log``: one row per epoch).
    overwrite:
        Replace an existing log at ``log_path`` instead of refusing to.
    train_file:
        The structure file (extxyz or anything ASE reads) the training data come from. Not
        needed when nequip reads it itself (an ``ASEDataModule``, or ``ASEDataset`` s split
        with ``split_dataset``): the log then takes it from the data module. Give it when the
        training frames come from another dataset (LMDB, HDF5, ...): they are then matched to
        its configurations by their atoms (the batches must carry ``atomic_numbers``, as
        nequip's type mapper leaves them).

    With a training file, the log has one column per atom of the file (``configuration``,
    ``atom``), those of held-out configurations never recorded, and the provenance that
    ``ltau run`` reads (see the module docstring); it is created when training starts.
    Without one, its columns are the training frames' atoms in frame order, numbered from the
    first epoch, which must visit every training frame exactly once (no ``drop_last``, no
    sampler that repeats frames); it is created at the end of that epoch. Single-process
    training only. Epoch times run from the start of an epoch to its end, validation included.
    After ``fit``: :attr:`atom_index` maps atom ids to configurations (of the file) or frames,
    :attr:`epoch_seconds` and :attr:`logging_seconds` time each epoch and the logger's share.
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        overwrite: bool = False,
        train_file: str | os.PathLike | None = None,
    ) -> None:
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
        if train_file is not None:
            if not isinstance(train_file, (str, os.PathLike)) or not str(train_file).strip():
                raise LTAUInputError(f"train_file must be a file path; got {train_file!r}")
            if not Path(train_file).is_file():
                raise LTAUFileError(f"the training file {train_file} does not exist")
        self.overwrite = overwrite
        self.train_file = None if train_file is None else Path(train_file)
        self.recorder: ErrorRecorder | None = None
        self.atom_index: AtomIndex | None = None
        self.training_file: TrainingFile | None = None
        self.epoch_seconds: list[float] = []
        self.logging_seconds: list[float] = []
        self._hook = None
        self._capturing = False
        self._forces: torch.Tensor | None = None
        self._first_epoch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._expected: np.ndarray | None = None
        self._frame_configs = np.empty(0, dtype=np.int64)
        self._trained = np.zeros(0, dtype=bool)
        self._n_unmatched = 0
        self._validation: set[int] = set()
        self._valid_files: list[tuple[Path, str]] = []
        self._validation_matcher: ConfigurationMatcher | None = None

    def distributions(self, **kwargs) -> ErrorDistributions:
        """Per-atom error distributions from the log (arguments of ``ErrorLog.distributions``;
        with a training file, give ``samples``: atoms held out for validation have no errors)."""
        if self.recorder is None:
            raise LTAUInputError("no training epoch has been logged yet")
        with ErrorLog(self.log_path) as log:
            return log.distributions(**kwargs)

    def setup(self, trainer: lightning.Trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size != 1:
            raise LTAUInputError("LTAUErrorLogger supports single-process training only")
        datamodule = trainer.datamodule
        # nequip's data modules keep their datasets in lists; the first training set is the
        # one nequip's train_dataloader serves.
        datasets = getattr(datamodule, "train_dataset", None)
        source = None
        if isinstance(datasets, Sequence) and not isinstance(datasets, str) and datasets:
            datamodule.train_dataset = [FrameIndexedDataset(d) for d in datasets]
            source = dataset_source(datasets[0])
        if self.train_file is None and source is None:
            if datamodule is not None:
                logger.warning(
                    "the training data do not come from a file nequip reads: the log numbers "
                    "the training frames and 'ltau run' cannot use it; give the callback "
                    "train_file"
                )
            return
        self._open_log(source, getattr(datamodule, "val_dataset", None) or [])

    def _open_log(self, source: DatasetSource | None, validation_sets: Sequence) -> None:
        """Read the training file, see how nequip's frames map to it, create the log."""
        self.training_file = training = TrainingFile(self.train_file or source.path)
        n_configs = training.structures.index.n_configs
        if source is not None and training.is_file(source.path):
            if source.indices.size and source.indices.max() >= n_configs:
                raise LTAUInputError(
                    f"nequip's training set names configurations beyond the {n_configs} of "
                    f"{training.path}"
                )
            self._expected = source.indices
        self._trained = np.zeros(n_configs, dtype=bool)
        for dataset in validation_sets:
            found = dataset_source(dataset)
            if found is None:
                self._validation_matcher = ConfigurationMatcher(
                    training.matcher.numbers, training.matcher.positions, training.matcher.sizes
                )
            elif training.is_file(found.path):
                self._validation.update(found.indices.tolist())
            else:
                self._valid_files.append((found.path, file_sha256(found.path)))
        if len(self._valid_files) > 1:
            logger.warning(
                "nequip validates on %d files; the log records none of them as the validation "
                "set, which 'ltau run' then takes from held-out configurations of %s only",
                len(self._valid_files),
                training.path,
            )
        self.atom_index = training.structures.index
        self.recorder = ErrorRecorder(
            self.atom_index.n_atoms,
            log_path=self.log_path,
            overwrite=self.overwrite,
            samples=training.samples(),
            provenance=self._provenance(),
        )

    def _provenance(self) -> dict[str, Any]:
        """What the log says about the run (see the module docstring)."""
        training = self.training_file
        trained = np.flatnonzero(self._trained)
        facts: dict[str, Any] = {
            "trainer": "nequip",
            "nequip_version": nequip.__version__,
            "train_file": str(training.path),
            "train_file_sha256": training.sha256,
            "n_configurations": int(training.structures.index.n_configs),
            "frames_identified_by": "atoms" if self._expected is None else "dataset indices",
            "trained_configurations": trained.tolist(),
            "validation_configurations": sorted(self._validation - set(trained.tolist())),
            "members": {
                "0": {
                    "epochs": len(self.epoch_seconds),
                    "epoch_seconds": list(self.epoch_seconds),
                    "logging_seconds": list(self.logging_seconds),
                    "unmatched_frames": self._n_unmatched,
                }
            },
        }
        if len(self._valid_files) == 1:
            facts["valid_file"], facts["valid_file_sha256"] = (
                str(self._valid_files[0][0]),
                (self._valid_files[0][1]),
            )
        return facts

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
        if self.training_file is not None:
            self._record_configurations(frames, sizes, errors, batch)
        elif self.atom_index is None:
            self._first_epoch.append((frames, sizes, errors))
        else:
            self.recorder.record(self._frame_atom_ids(frames, sizes), errors)
        self._logging += time.perf_counter() - started

    def _record_configurations(
        self, frames: np.ndarray, sizes: np.ndarray, errors: np.ndarray, batch: dict
    ) -> None:
        """Record a batch's errors under the atoms of the training file."""
        configs = self._configurations(frames, sizes, batch)
        kept = configs >= 0
        kept_sizes = sizes[kept]
        if not kept_sizes.size:
            return
        within = np.arange(kept_sizes.sum()) - np.repeat(
            np.cumsum(kept_sizes) - kept_sizes, kept_sizes
        )
        ids = np.repeat(self.atom_index.offsets[configs[kept]], kept_sizes) + within
        self.recorder.record(ids, errors[np.repeat(kept, sizes)])

    def _configurations(self, frames: np.ndarray, sizes: np.ndarray, batch: dict) -> np.ndarray:
        """The configuration of the training file of each frame (-1: none), identified the
        first time the frame is seen."""
        if frames.max() >= self._frame_configs.size:
            grown = np.full(int(frames.max()) + 1, _UNSEEN, dtype=np.int64)
            grown[: self._frame_configs.size] = self._frame_configs
            self._frame_configs = grown
        configs = self._frame_configs[frames]
        unseen = np.flatnonzero(configs == _UNSEEN)
        if unseen.size:
            positions, numbers = _frame_atoms(batch)
            ptr = np.concatenate([[0], np.cumsum(sizes)])
            for j in unseen:
                atoms = slice(ptr[j], ptr[j + 1])
                config = self._identify(
                    int(frames[j]), None if numbers is None else numbers[atoms], positions[atoms]
                )
                self._frame_configs[frames[j]] = config
            configs = self._frame_configs[frames]
        return configs

    def _identify(self, frame: int, numbers: np.ndarray | None, positions: np.ndarray) -> int:
        training = self.training_file
        if self._expected is not None:
            if frame >= self._expected.size:
                raise LTAUInputError(
                    f"training frame {frame} is beyond nequip's training set of "
                    f"{self._expected.size} frames"
                )
            config = int(self._expected[frame])
            problem = training.check_frame(config, numbers, positions)
            if problem:
                raise LTAUInputError(
                    f"nequip's dataset says training frame {frame} is configuration {config} "
                    f"of {training.path}, but {problem}: does the dataset read that file "
                    "unchanged?"
                )
        else:
            if numbers is None:
                raise LTAUInputError(
                    f"training batches carry no {AtomicDataDict.ATOMIC_NUMBERS_KEY!r}, by which "
                    f"their frames are matched to {training.path}"
                )
            config = training.matcher.match(numbers, positions)
            if config < 0:
                self._n_unmatched += 1
                return -1
        self._trained[config] = True
        return config

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._validation_matcher is None or trainer.sanity_checking:
            return
        positions, numbers = _frame_atoms(batch)
        if numbers is None:
            raise LTAUInputError(
                f"validation batches carry no {AtomicDataDict.ATOMIC_NUMBERS_KEY!r}, by which "
                f"their frames are matched to {self.training_file.path}"
            )
        sizes = batch[AtomicDataDict.NUM_NODES_KEY].cpu().numpy().reshape(-1)
        ptr = np.concatenate([[0], np.cumsum(sizes)])
        for start, stop in itertools.pairwise(ptr):
            config = self._validation_matcher.match(numbers[start:stop], positions[start:stop])
            if config >= 0:
                self._validation.add(config)

    def on_validation_epoch_end(self, trainer: lightning.Trainer, pl_module) -> None:
        if self._validation_matcher is not None and not trainer.sanity_checking:
            self._validation_matcher = None  # one full pass names every validation frame
            self.recorder.set_provenance(self._provenance())

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module) -> None:
        started = time.perf_counter()
        if self.training_file is not None:
            try:
                self.recorder.end_epoch(allow_missing=True)
            except LTAUInputError as exc:
                raise LTAUInputError(
                    f"no training atom of {self.training_file.path} was seen in this epoch: "
                    f"are nequip's training data read from it? ({exc})"
                ) from exc
        else:
            if self.atom_index is None:
                self._number_frame_atoms()
            self.recorder.end_epoch()
        self._logging += time.perf_counter() - started
        self.logging_seconds.append(self._logging)
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        if self.training_file is not None:
            self.recorder.set_provenance(self._provenance())

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

    def _number_frame_atoms(self) -> None:
        """Without a training file: number the atoms from the frames of the first epoch, then
        record that epoch."""
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
            self.recorder.record(self._frame_atom_ids(frames, sizes), errors)
        self._first_epoch = []

    def _frame_atom_ids(self, frames: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if frames.max() >= self.atom_index.n_configs or not np.array_equal(
            np.diff(self.atom_index.offsets)[frames], sizes
        ):
            raise LTAUInputError("a training frame changed its number of atoms between epochs")
        starts = np.repeat(self.atom_index.offsets[frames] - np.cumsum(sizes) + sizes, sizes)
        return starts + np.arange(int(sizes.sum()))


def _frame_atoms(batch: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch's positions ``(n, 3)`` Å and atomic numbers ``(n,)`` (None if absent)."""
    positions = batch[AtomicDataDict.POSITIONS_KEY].detach().cpu().numpy().astype(np.float64)
    numbers = batch.get(AtomicDataDict.ATOMIC_NUMBERS_KEY)
    if numbers is not None:
        numbers = numbers.detach().cpu().numpy().reshape(-1).astype(np.int64)
    return positions, numbers


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


TRAINED_FORMAT = "ltau-nequip-model"
TRAINED_FORMAT_VERSION = 2
"""ltau's NequIP file: ``torch.save`` of plain data only (strings, numbers, tensors)."""
_MODEL_CONFIG_KEYS = frozenset(
    {
        "seed",
        "model_dtype",
        "type_names",
        "r_max",
        "num_layers",
        "l_max",
        "num_features",
        "radial_mlp_width",
        "avg_num_neighbors",
        "per_type_energy_shifts",
        "per_type_energy_scales",
    }
)
"""The ``NequIPGNNModel`` arguments :func:`train_nequip` sets, and all a file may set."""


@dataclass
class TrainedNequIP(TrainingTimes):
    """A trained NequIP model (``nequip.nn.GraphModel``, in eval mode), the
    ``nequip.model.NequIPGNNModel`` arguments it was built with, and its timings."""

    model: torch.nn.Module
    settings: NequIPSettings
    model_config: dict[str, Any]
    epoch_seconds: list[float] = field(default_factory=list)
    logging_seconds: list[float] = field(default_factory=list)

    @property
    def type_names(self) -> list[str]:
        return list(self.model.type_names)

    def save(self, path: str | os.PathLike) -> None:
        """Save the weights and the settings as plain data: :meth:`load` rebuilds the model
        with nequip's ``NequIPGNNModel`` and runs no code from the file."""
        payload = {
            "format": TRAINED_FORMAT,
            "format_version": TRAINED_FORMAT_VERSION,
            "nequip_version": nequip.__version__,
            "model_config": json.dumps(self.model_config),
            "settings": json.dumps(asdict(self.settings)),
            "epoch_seconds": [float(t) for t in self.epoch_seconds],
            "logging_seconds": [float(t) for t in self.logging_seconds],
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        torch.save(payload, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str = "cpu", trusted: bool = False
    ) -> TrainedNequIP:
        """Load a file written by :meth:`save` and rebuild its model. A file that names any
        object other than plain data (strings, numbers, tensors), which unpickling it would
        create and which may run code, is refused unless ``trusted``."""
        path = Path(path)
        if not path.is_file():
            raise LTAUFileError(f"the model file {path} does not exist")
        try:
            carried = [] if trusted else torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if carried:
                raise LTAUFileError(
                    f"{path} is not a plain-data ltau NequIP file: it names "
                    f"{', '.join(sorted(carried)[:4])}{', ...' if len(carried) > 4 else ''}, "
                    f"whose unpickling may run code; {TRUST_HINT}"
                )
            payload = torch.load(path, map_location=device, weights_only=not trusted)
        except LTAUFileError:
            raise
        except Exception as exc:
            raise LTAUFileError(f"{path} is not a readable model file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != TRAINED_FORMAT:
            raise LTAUFileError(f"{path} was not written by TrainedNequIP.save")
        try:
            config = json.loads(payload["model_config"])
            settings = NequIPSettings(**json.loads(payload["settings"]))
            epoch_seconds = [float(t) for t in payload["epoch_seconds"]]
            logging_seconds = [float(t) for t in payload["logging_seconds"]]
            state = dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LTAUFileError(
                f"{path}: its settings are incomplete or malformed ({exc})"
            ) from exc
        model = _build_nequip_gnn(config, path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise LTAUFileError(f"{path}: its weights do not fit its settings: {exc}") from exc
        model = model.to(device).eval()
        return cls(model, settings, config, epoch_seconds, logging_seconds)


def _build_nequip_gnn(config: object, source: Path) -> torch.nn.Module:
    """nequip's ``NequIPGNNModel`` built with the arguments a file stored (checked first)."""
    from nequip.model import NequIPGNNModel

    if not isinstance(config, dict) or not set(config) <= _MODEL_CONFIG_KEYS:
        unknown = sorted(set(config) - _MODEL_CONFIG_KEYS) if isinstance(config, dict) else config
        raise LTAUFileError(f"{source}: its model settings are not ltau's ({unknown!r})")
    missing = sorted({"seed", "model_dtype", "type_names", "r_max"} - set(config))
    if missing:
        raise LTAUFileError(f"{source}: its model settings lack {missing}")
    set_global_state()
    try:
        return NequIPGNNModel(**config)
    except (AssertionError, TypeError, ValueError, KeyError) as exc:
        raise LTAUFileError(f"{source}: nequip cannot build its model ({exc!r})") from exc


MODEL_KINDS = ("ltau", "package", "checkpoint", "torchscript", "aotinductor")
"""What :func:`load_nequip_model` reads: ltau's own file, ``nequip-package``'s ``.nequip.zip``,
a training checkpoint, ``nequip-compile``'s TorchScript ``.nequip.pth`` and AOTInductor
``.nequip.pt2``."""


class NequIPModel:
    """A NequIP model ready to evaluate, eager or compiled, with what ltau needs to know.

    ``calculator``: nequip's ``NequIPCalculator`` on the model (its type mapping and neighbour
    list prepare the inputs); ``kind``: one of :data:`MODEL_KINDS`; ``columns``: the invariant
    columns of ``node_features``; ``fingerprint``: SHA-256 of the weights of an eager model
    (:func:`~ltau.integrations.model_files.state_fingerprint`), of the file for a compiled one
    (its weights are compiled in); ``batch_size``: structures per forward pass.
    """

    def __init__(
        self,
        calculator: NequIPCalculator,
        *,
        kind: str,
        source: str,
        type_names: Sequence[str],
        columns: np.ndarray,
        fingerprint: str,
        batch_size: int,
    ) -> None:
        self.calculator = calculator
        self.kind = kind
        self.source = source
        self.type_names = list(type_names)
        self.columns = columns
        self.fingerprint = fingerprint
        self.batch_size = batch_size

    @classmethod
    def from_calculator(
        cls, calculator: NequIPCalculator, *, kind: str = "ltau", source: str = "the model"
    ) -> NequIPModel:
        """Wrap an eager model's ``NequIPCalculator`` (its ``node_features`` irreps say which
        columns are invariant)."""
        model = calculator.model
        columns = _scalar_columns(model)
        return cls(
            calculator,
            kind=kind,
            source=source,
            type_names=_chemical_type_names(list(getattr(model, "type_names", [])), source),
            columns=columns,
            fingerprint=state_fingerprint(model),
            batch_size=20,
        )

    @classmethod
    def from_eager(
        cls, model: torch.nn.Module, *, kind: str, source: str, device: str = "cpu"
    ) -> NequIPModel:
        """An eager ``GraphModel`` (trained here, packaged or from a checkpoint)."""
        metadata = dict(model.metadata)
        type_names = _chemical_type_names(metadata["type_names"].split(" "), source)
        transforms = basic_transforms(
            metadata, float(metadata["r_max"]), type_names, {t: t for t in type_names}
        )
        calculator = NequIPCalculator(model.eval(), device=device, transforms=transforms)
        return cls.from_calculator(calculator, kind=kind, source=source)

    def frames(self, structures: Sequence[Atoms]) -> AtomicDataDict.Type:
        """The model's input for ``structures`` (one graph, or a batch), on its device."""
        frames = []
        for atoms in structures:
            bare = atoms.copy()
            bare.calc = None
            frames.append(self.calculator.atoms_to_data(bare))
        return frames[0] if len(frames) == 1 else AtomicDataDict.batched_from_list(frames)

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        """One forward pass; a model failure or a missing output is an LTAUFileError."""
        try:
            output = self.calculator.call_model(data)
        except Exception as exc:
            raise LTAUFileError(f"{self.source} failed on nequip's input: {exc}") from exc
        missing = [
            key
            for key in (
                AtomicDataDict.TOTAL_ENERGY_KEY,
                AtomicDataDict.FORCE_KEY,
                AtomicDataDict.NODE_FEATURES_KEY,
            )
            if key not in output
        ]
        if missing:
            raise LTAUFileError(f"{self.source} returns no {', '.join(missing)}")
        return output

    def descriptors(self, output: AtomicDataDict.Type) -> np.ndarray:
        """The invariant columns of ``node_features``, float32 ``(n_atoms, n_invariant)``."""
        features = output[AtomicDataDict.NODE_FEATURES_KEY].detach()
        return features[:, self.columns].cpu().numpy().astype(np.float32)


def load_nequip_model(
    path: str | os.PathLike, *, device: str = "cpu", trusted: bool = False
) -> NequIPModel:
    """Load any NequIP model file of :data:`MODEL_KINDS`, recognised by its content, on
    ``device``. Packages, checkpoints and AOTInductor files run code when loaded: they need
    ``trusted``."""
    path = Path(path)
    if not path.is_file():
        raise LTAUFileError(f"the model file {path} does not exist")
    kind = nequip_file_kind(path)
    if kind == "ltau":
        trained = TrainedNequIP.load(path, device=device, trusted=trusted)
        return NequIPModel.from_eager(trained.model, kind="ltau", source=str(path), device=device)
    if kind in ("package", "checkpoint", "aotinductor") and not trusted:
        what = {
            "package": "a nequip package (.nequip.zip): a torch.package archive of Python code",
            "checkpoint": "a nequip training checkpoint, whose config names the Python objects "
            "nequip builds from it",
            "aotinductor": "an AOTInductor model (.nequip.pt2), a native library",
        }[kind]
        raise LTAUFileError(f"{path} is {what}, which runs code when loaded; {TRUST_HINT}")
    if kind in ("package", "checkpoint"):
        return _saved_model(path, kind, device)
    return _compiled_model(path, kind, device)


def nequip_file_kind(path: Path) -> str:
    """Which of :data:`MODEL_KINDS` a file is, from its archive entries (or LTAUFileError)."""
    kind = archive_kind(path)
    if kind == "aotinductor":
        return "aotinductor"
    if kind == "nequip-torchscript":
        return "torchscript"
    if kind == "torch-package":
        return "package"
    if kind == "torchscript":
        raise LTAUFileError(
            f"{path} is a TorchScript model without nequip 0.19's metadata (a nequip 0.5/0.6 "
            "deployed model?): load it with ltau.integrations.deployed"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return "ltau"  # a pickled payload: TrainedNequIP.load refuses it unless trusted
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable PyTorch file: {exc}") from exc
    if isinstance(payload, dict) and payload.get("format") == TRAINED_FORMAT:
        return "ltau"
    info = payload.get("hyper_parameters", {}) if isinstance(payload, dict) else {}
    if isinstance(info, dict) and "info_dict" in info:
        return "checkpoint"
    raise LTAUFileError(
        f"{path} is none of the NequIP model files ltau reads (ltau's own, nequip-package's "
        ".nequip.zip, a nequip-train checkpoint, nequip-compile's .nequip.pth or .nequip.pt2)"
    )


def _saved_model(path: Path, kind: str, device: str) -> NequIPModel:
    """A package or checkpoint, loaded by nequip (trusted)."""
    from nequip.model.saved_models.load_utils import load_saved_model

    if kind == "package" and not path.name.endswith(".nequip.zip"):
        raise LTAUFileError(
            f"{path} is a nequip package, which nequip loads only from a name ending in "
            ".nequip.zip: rename it"
        )
    if kind == "checkpoint" and path.name.endswith(".nequip.zip"):
        raise LTAUFileError(f"{path} is a checkpoint named like a package: rename it")
    logger.warning("loading %s as trusted: it runs code", path)
    set_global_state()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            model = load_saved_model(str(path), model_key=None)
    except Exception as exc:
        raise LTAUFileError(f"nequip could not load {path}: {exc}") from exc
    names = list(model.keys())
    if names != ["sole_model"]:
        raise LTAUFileError(f"{path} holds the models {names}; ltau reads single-model files")
    return NequIPModel.from_eager(
        model["sole_model"].to(device), kind=kind, source=str(path), device=device
    )


def _compiled_model(path: Path, kind: str, device: str) -> NequIPModel:
    """A ``nequip-compile`` file, loaded with nequip's loader for its format."""
    from nequip.model.inference_models import load_aotinductor_model, load_torchscript_model

    if kind == "aotinductor":
        logger.warning("loading %s as trusted: it is a native library", path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*deprecated.*")
            if kind == "torchscript":
                module, metadata = load_torchscript_model(str(path), device)
            else:
                module, metadata = load_aotinductor_model(str(path), device)
    except Exception as exc:
        raise LTAUFileError(f"nequip could not load the compiled model {path}: {exc}") from exc
    tf32 = metadata.get("allow_tf32") or b"0"
    set_global_state(allow_tf32=bool(int(tf32.decode() if isinstance(tf32, bytes) else tf32)))
    outputs = str(metadata.get("nequip_aoti_outputs", "")).split()
    if kind == "aotinductor" and AtomicDataDict.NODE_FEATURES_KEY not in outputs:
        raise LTAUInputError(
            f"{path} was compiled to return only {', '.join(outputs)}: ltau's descriptors are "
            f"its node_features. Compile it with them ({COMPILE_FOR_LTAU}), or give ltau the "
            "packaged model (.nequip.zip) or checkpoint"
        )
    type_names = _chemical_type_names(list(metadata["type_names"]), str(path))
    transforms = basic_transforms(
        metadata, float(metadata["r_max"]), type_names, {t: t for t in type_names}
    )
    calculator = NequIPCalculator(module.eval(), device=device, transforms=transforms)
    model = NequIPModel(
        calculator,
        kind=kind,
        source=str(path),
        type_names=type_names,
        columns=np.empty(0, dtype=np.int64),
        fingerprint=file_sha256(path),
        batch_size=20 if kind == "torchscript" else 1,
    )
    model.columns = _checked_invariant_columns(model, float(metadata["r_max"]))
    return model


def _checked_invariant_columns(model: NequIPModel, r_max: float) -> np.ndarray:
    """All columns of a compiled model's ``node_features``, once a probe shows each to be
    unchanged when the structure is rotated (a compiled model does not declare its irreps)."""
    symbols = [model.type_names[i % len(model.type_names)] for i in range(4)]
    shape = np.array([[0.0, 0.0, 0.0], [1.1, 0.1, 0.0], [0.2, 1.0, 0.1], [0.3, 0.4, 1.2]])
    probe = Atoms(symbols, positions=0.3 * r_max * shape)
    rotated = probe.copy()
    rotated.rotate(37.0, (1.0, 2.0, 3.0), center="COP")
    features = [
        model.forward(model.frames([atoms]))[AtomicDataDict.NODE_FEATURES_KEY]
        .detach()
        .cpu()
        .double()
        .numpy()
        for atoms in (probe, rotated)
    ]
    change = np.max(np.abs(features[0] - features[1]), axis=0)
    varying = np.flatnonzero(change > 1e-4 + 1e-3 * np.max(np.abs(features[0])))
    if varying.size:
        raise LTAUFileError(
            f"{model.source}: node_features columns {varying.tolist()} change when the "
            "structure is rotated, and a compiled model does not say which columns are "
            "invariant; give ltau the packaged model (.nequip.zip) or checkpoint instead"
        )
    return np.arange(features[0].shape[1], dtype=np.int64)


def _chemical_type_names(type_names: list[str], source: str) -> list[str]:
    """The model's type names, which ltau maps to elements by symbol."""
    unknown = [name for name in type_names if name not in symbol_numbers]
    if unknown or not type_names:
        raise LTAUFileError(
            f"{source}: its type names {type_names} are not all chemical symbols; ltau maps "
            "each element to the type of the same name"
        )
    return type_names


def as_nequip_model(model: TrainedNequIP | NequIPModel) -> NequIPModel:
    """A :class:`NequIPModel` for either a trained model or a loaded one."""
    if isinstance(model, NequIPModel):
        return model
    if isinstance(model, TrainedNequIP):
        device = next(model.model.parameters()).device
        return NequIPModel.from_eager(model.model, kind="ltau", source="the model",
                                      device=str(device))  # fmt: skip
    raise LTAUInputError(f"expected a TrainedNequIP or NequIPModel; got {type(model).__name__}")


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
    train_file: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[TrainedNequIP, LTAUErrorLogger | None]:
    """Train a NequIP model with nequip's own Lightning module, logging errors into
    ``log_path`` with :class:`LTAUErrorLogger` (no logging without a path). ``train_file``:
    the file ``structures`` were read from (all or some of its configurations); the log is then
    tied to it, its atoms matched by position, as with nequip-train (see the logger).

    ``isolated_atom_energies``: E0s by atomic number (eV), the model's per-type energy shifts;
    without them they are fitted by least squares on the training energies. Returns the trained
    model and the logger (``logger.distributions()``; its atom ids are those of
    ``structures.index``, or of the file's atoms with ``train_file``).
    """
    settings = settings or NequIPSettings()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {epochs!r}")
    if structures.forces is None or structures.energies is None:
        raise LTAUInputError("training structures need reference energies and forces")
    if train_file is not None and log_path is None:
        raise LTAUInputError("train_file ties the error log to a file: give log_path too")
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
    model_config = {
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
    }
    module = NequIPLightningModule(
        model={"_target_": "nequip.model.NequIPGNNModel", **model_config},
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
    error_logger = None
    callbacks = []
    if log_path is not None:
        error_logger = LTAUErrorLogger(log_path, overwrite=overwrite, train_file=train_file)
        callbacks.append(error_logger)
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
    trained = TrainedNequIP(model, settings, model_config, timer.epoch_seconds)
    trained.logging_seconds = list(error_logger.logging_seconds) if error_logger else [0.0] * epochs
    return trained, error_logger


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
    model: TrainedNequIP | NequIPModel,
    structures: LabelledStructures,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> ForceFieldEvaluation:
    """Energies, forces, invariant descriptors (and force errors if labelled), ``batch_size``
    structures per pass (default: the model's, 1 for an AOTInductor file)."""
    model = as_nequip_model(model)
    _check_elements(structures.atomic_numbers, model.type_names)
    batch_size = batch_size or model.batch_size
    energies, forces, descriptors = [], [], []
    starts = range(0, len(structures.atoms), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        output = model.forward(model.frames(structures.atoms[start : start + batch_size]))
        energy = output[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().double().numpy()
        energies.append(energy.reshape(-1))
        forces.append(output[AtomicDataDict.FORCE_KEY].detach().cpu().double().numpy())
        descriptors.append(model.descriptors(output))
    return ForceFieldEvaluation.from_batches(structures, energies, forces, descriptors)


def _scalar_columns(model: torch.nn.Module) -> np.ndarray:
    irreps_out = getattr(model, "irreps_out", None)
    if not isinstance(irreps_out, dict) or AtomicDataDict.NODE_FEATURES_KEY not in irreps_out:
        raise LTAUInputError(
            "the model does not declare its node_features (a compiled model does not): "
            "load its file with load_nequip_model, or use the eager nequip model"
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
    cells, if the model returns it) and the invariant descriptors come from that one pass, and
    the LTAU results are those of :class:`~ltau.atomistic.calculator.LTAUCalculatorBase`.
    ``model``: a :class:`NequIPModel` (:func:`load_nequip_model`; any model file) or a
    ``NequIPCalculator`` on an eager model, which declares its ``node_features``. See also
    :meth:`from_trained`.
    """

    def __init__(
        self,
        model: NequIPModel | NequIPCalculator,
        estimator: LTAUEstimator,
        *,
        atol: float = 0.1,
        **kwargs,
    ) -> None:
        if isinstance(model, NequIPCalculator):
            model = NequIPModel.from_calculator(model)
        elif not isinstance(model, NequIPModel):
            raise LTAUInputError(
                "model must be a NequIPModel (see load_nequip_model) or a nequip NequIPCalculator"
            )
        self.model = model
        super().__init__(estimator, atol=atol, **kwargs)

    @classmethod
    def from_trained(
        cls, trained: TrainedNequIP, estimator: LTAUEstimator, *, atol: float = 0.1, **kwargs
    ) -> LTAUCalculator:
        """A calculator for a model from :func:`train_nequip`."""
        return cls(as_nequip_model(trained), estimator, atol=atol, **kwargs)

    @property
    def nequip(self) -> NequIPCalculator:
        """nequip's own calculator on the model."""
        return self.model.calculator

    @property
    def descriptor_size(self) -> int:
        return int(self.model.columns.size)

    @property
    def model_fingerprint(self) -> str:
        return self.model.fingerprint

    def evaluate_model(self, atoms: Atoms, compute_stress: bool) -> ModelOutput:
        _check_elements(atoms.numbers, self.model.type_names)
        output = self.model.forward(self.model.frames([atoms]))
        energy_unit = self.nequip.energy_units_to_eV
        force_unit = energy_unit / self.nequip.length_units_to_A
        stress = None
        if compute_stress and AtomicDataDict.STRESS_KEY in output:
            stress = output[AtomicDataDict.STRESS_KEY].detach().cpu().numpy().reshape(3, 3)
            stress = stress * energy_unit / self.nequip.length_units_to_A**3
        energy = output[AtomicDataDict.TOTAL_ENERGY_KEY].detach().cpu().sum()
        return ModelOutput(
            energy=energy_unit * float(energy),
            forces=force_unit * output[AtomicDataDict.FORCE_KEY].detach().cpu().numpy(),
            descriptors=self.model.descriptors(output),
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
        frame[AtomicDataDict.TOTAL_ENERGY_KEY] = torch.tensor(
            [[structures.energies[index]]], dtype=torch.float64
        )
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
    "COMPILE_FOR_LTAU",
    "FRAME_ID_KEY",
    "MODEL_KINDS",
    "DatasetSource",
    "FrameIndexedDataset",
    "LTAUCalculator",
    "LTAUErrorLogger",
    "NequIPModel",
    "NequIPSettings",
    "TrainedNequIP",
    "TrainingFile",
    "dataset_source",
    "evaluate_nequip",
    "load_nequip_model",
    "train_nequip",
]
