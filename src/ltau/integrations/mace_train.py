"""Error logging under mace's own trainer, ``mace_run_train``, unchanged.

mace has no callback list, but its loop is made of module-level functions of
``mace.tools.train``: ``train`` calls ``train_one_epoch``, which calls ``take_step``, which
calls the loss object with every training step's predictions. While :func:`run_mace_train`
runs mace's ``run(args)``, those three names (and ``evaluate``, to see mace's validation set)
are wrapped in place; nothing of mace is patched on disk or copied, and every mace option
keeps its meaning. The per-atom force-error norm ``||F_pred - F_ref||_2`` (eV/Å) comes from the
training step's own forward pass, and so does each configuration's signed energy error
``E_pred - E_ref`` (eV per structure), logged centred (:class:`ltau.energy.EnergyRecorder`) in
an energy log beside the force log (:func:`ltau.energy.energy_log_path`); configurations
whose energy mace does not fit (``energy_weight`` 0) are not recorded there, and a file
without energies gets no energy log.

mace's batches carry no configuration index, so each graph is matched to its configuration of
the training file by its atoms (:class:`~ltau.atomistic.matching.ConfigurationMatcher`: count,
elements and positions; mace does not move atoms). The log numbers the atoms of the training
file in order (configuration 0's atoms first) and stores, per sample, its ``configuration`` and ``atom``; its
provenance records the file's SHA-256, the configurations mace trained on and those it held out
for validation, mace's arguments and version, and the model files mace wrote. Graphs that match
no configuration of the file (the replay data of multihead fine-tuning) are not recorded.

``import mace`` must come before anything imports e3nn, so this module imports it first.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mace
import numpy as np
import torch

from ltau._io import file_sha256
from ltau.atomistic.matching import ConfigurationMatcher
from ltau.energy import DEFAULT_CENTRING, EnergyRecorder, check_energy_log, energy_log_path
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.model_files import load_pickled_model
from ltau.recording import ErrorRecorder

logger = logging.getLogger(__name__)

UNSUPPORTED = {
    "distributed": "mace's --distributed sets up only nccl (CUDA) or ccl (XPU) process groups "
    "and wraps DDP(model, device_ids=[local_rank]), which CPU modules refuse, so ltau cannot run "
    "and test it here; train on one process, or record several ranks with the Lightning callback "
    "and a sharded log (docs/distributed.md)",
    "lbfgs": "L-BFGS evaluates each batch several times per step, so one step has no single "
    "error per atom",
}
"""mace options that ``ltau mace-train`` refuses, with the reason."""


class MACETrainingLogger:
    """Records, while mace trains, every training atom's force-error norm per epoch.

    ``train_file``: the extxyz file mace trains on (``--train_file``); its atoms are the log's
    samples. ``log_path``: the error log to write (``overwrite`` to replace one; ``member``
    to add another model's epochs to an existing log of the same file). The energy log, one
    sample per configuration of the file, goes to :func:`ltau.energy.energy_log_path` of
    ``log_path``, created at the first step with a fitted energy, its errors centred by
    ``energy_centring``.
    """

    def __init__(
        self,
        train_file: str | os.PathLike,
        log_path: str | os.PathLike,
        *,
        member: int = 0,
        overwrite: bool = False,
        energy_centring: str = DEFAULT_CENTRING,
    ) -> None:
        import ase.io

        self.train_file = Path(train_file)
        if not self.train_file.is_file():
            raise LTAUFileError(f"the training file {self.train_file} does not exist")
        try:
            configs = ase.io.read(self.train_file, index=":")
        except Exception as exc:
            raise LTAUFileError(
                f"{self.train_file} could not be read as structures (ltau mace-train maps atoms "
                f"through an extxyz training file): {exc}"
            ) from exc
        if not configs:
            raise LTAUInputError(f"{self.train_file} holds no configurations")
        sizes = np.array([len(atoms) for atoms in configs], dtype=np.int64)
        self.matcher = ConfigurationMatcher(
            np.concatenate([atoms.numbers for atoms in configs]),
            np.concatenate([atoms.positions for atoms in configs]),
            sizes,
        )
        self.member = member
        self.sha256 = file_sha256(self.train_file)
        configuration = np.repeat(np.arange(sizes.size), sizes)
        atom = np.arange(sizes.sum()) - np.repeat(self.matcher.offsets[:-1], sizes)
        log_path = Path(log_path)
        self.energy_log_path = energy_log_path(log_path)
        self.energy_centring = energy_centring
        self.overwrite = overwrite
        self.energy_recorder: EnergyRecorder | None = None
        if member > 0 or (log_path.exists() and not overwrite):
            self.recorder = self._resume(log_path)
        else:
            self.recorder = ErrorRecorder(
                int(sizes.sum()),
                log_path=log_path,
                overwrite=overwrite,
                samples={"configuration": configuration, "atom": atom},
                provenance=self._provenance({}),
            )
        self.trained_configs: set[int] = set()
        self.validation_configs: set[int] = set()
        self.n_unmatched_graphs = 0
        self.epoch_seconds: list[float] = []
        self.logging_seconds: list[float] = []
        self._epoch_logging = 0.0
        self._seen_loaders: set[int] = set()

    def _resume(self, log_path: Path, kind: type[ErrorRecorder] = ErrorRecorder) -> ErrorRecorder:
        if not log_path.exists():
            raise LTAUFileError(
                f"member {self.member} adds to an existing log: {log_path} is absent"
            )
        recorder = kind.resume(log_path)
        stored = recorder.provenance.get("train_file_sha256")
        if stored != self.sha256:
            recorder.close()
            raise LTAUFileError(
                f"{log_path} belongs to another training file (SHA-256 {stored}), not "
                f"{self.train_file} ({self.sha256}); give a new --log or --overwrite"
            )
        if self.member in recorder.epochs_by_member:
            recorder.close()
            raise LTAUInputError(
                f"{log_path} already holds epochs of member {self.member}; choose another "
                f"--member (it holds {sorted(recorder.epochs_by_member)})"
            )
        return recorder

    def _provenance(self, run: dict[str, Any]) -> dict[str, Any]:
        return {
            "trainer": "mace_run_train",
            "mace_version": getattr(mace, "__version__", "unknown"),
            "train_file": str(self.train_file.resolve()),
            "train_file_sha256": self.sha256,
            "n_configurations": int(self.matcher.sizes.size),
            **run,
        }

    # The wrapped pieces of mace.tools.train.

    def wrap_loss(self, loss_fn: Callable, model: torch.nn.Module) -> Callable:
        """The loss object as mace calls it, recording the step's errors first."""

        def recording_loss(pred: dict, ref: Any) -> torch.Tensor:
            started = time.perf_counter()
            self._record(pred, ref, model)
            self._epoch_logging += time.perf_counter() - started
            return loss_fn(pred=pred, ref=ref)

        return recording_loss

    def _record(self, pred: dict, ref: Any, model: torch.nn.Module) -> None:
        errors = torch.linalg.vector_norm(pred["forces"].detach() - ref["forces"], dim=1)
        ptr = ref["ptr"].detach().cpu().numpy()
        numbers = _atomic_numbers(model, ref["node_attrs"])
        positions = ref["positions"].detach().cpu().numpy().astype(np.float64)
        weights = ref["forces_weight"].detach().cpu().numpy()
        errors = errors.cpu().numpy()
        configs = np.array(
            [
                self.matcher.match(numbers[ptr[g] : ptr[g + 1]], positions[ptr[g] : ptr[g + 1]])
                for g in range(len(ptr) - 1)
            ],
            dtype=np.int64,
        )
        self.n_unmatched_graphs += int(np.count_nonzero(configs < 0))
        self.trained_configs.update(configs[configs >= 0].tolist())
        ids, values = [], []
        for graph, config in enumerate(configs):
            if config < 0 or weights[graph] == 0:
                continue  # replay data, or forces mace ignores: no reference to err from
            first = self.matcher.offsets[config]
            ids.append(np.arange(first, first + ptr[graph + 1] - ptr[graph]))
            values.append(errors[ptr[graph] : ptr[graph + 1]])
        if ids:
            self.recorder.record(np.concatenate(ids), np.concatenate(values))
        self._record_energies(pred, ref, configs)

    def _record_energies(self, pred: dict, ref: Any, configs: np.ndarray) -> None:
        """Each matched graph's signed ``E_pred - E_ref`` (eV per structure) into the energy
        log, for graphs whose energy mace fits (``energy_weight`` > 0); ``configs``
        ``(n_graphs,)``: each graph's configuration, -1 for none."""
        if pred.get("energy") is None or "energy_weight" not in ref:
            return
        signed = (pred["energy"].detach() - ref["energy"]).cpu().numpy().astype(np.float64)
        fitted = (configs >= 0) & (ref["energy_weight"].detach().cpu().numpy() != 0)
        if fitted.any():
            self._energy_log().record(configs[fitted], signed[fitted])

    def _energy_log(self) -> EnergyRecorder:
        """The energy log, opened at its first use (resumed for a member > 0)."""
        if self.energy_recorder is None:
            path = self.energy_log_path
            if self.member > 0 or (path.exists() and not self.overwrite):
                self.energy_recorder = self._resume(path, EnergyRecorder)
                check_energy_log(self.energy_recorder, int(self.matcher.sizes.size))
            else:
                self.energy_recorder = EnergyRecorder(
                    int(self.matcher.sizes.size),
                    path,
                    centring=self.energy_centring,
                    overwrite=self.overwrite,
                    provenance=self._provenance({}),
                )
        return self.energy_recorder

    def wrap_take_step(self, take_step: Callable) -> Callable:
        @functools.wraps(take_step)
        def take_step_recording(*args: Any, **kwargs: Any) -> Any:
            bound = _bind(take_step, args, kwargs)
            bound["loss_fn"] = self.wrap_loss(bound["loss_fn"], bound["model"])
            return take_step(**bound)

        return take_step_recording

    def wrap_train_one_epoch(self, train_one_epoch: Callable) -> Callable:
        @functools.wraps(train_one_epoch)
        def train_one_epoch_recording(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self._epoch_logging = 0.0
            self.matcher.new_epoch()
            result = train_one_epoch(*args, **kwargs)
            closing = time.perf_counter()
            try:
                self.recorder.end_epoch(self.member, allow_missing=True)
            except LTAUInputError as exc:
                raise LTAUInputError(
                    f"no atom of {self.train_file} was seen in this training epoch: are the "
                    "training data mace used read from it? ({exc})"
                ) from exc
            if self.energy_recorder is not None:
                self.energy_recorder.end_epoch(self.member, allow_missing=True)
            self._epoch_logging += time.perf_counter() - closing
            self.epoch_seconds.append(time.perf_counter() - started)
            self.logging_seconds.append(self._epoch_logging)
            return result

        return train_one_epoch_recording

    def wrap_evaluate(self, evaluate: Callable) -> Callable:
        @functools.wraps(evaluate)
        def evaluate_noting_validation(*args: Any, **kwargs: Any) -> Any:
            bound = _bind(evaluate, args, kwargs)
            loader = bound["data_loader"]
            if id(loader) not in self._seen_loaders:
                self._seen_loaders.add(id(loader))
                self._note_validation(loader, bound["model"])
            return evaluate(**bound)

        return evaluate_noting_validation

    def _note_validation(self, loader: Any, model: torch.nn.Module) -> None:
        """Which configurations of the training file one validation loader holds."""
        matcher = ConfigurationMatcher(
            self.matcher.numbers, self.matcher.positions, self.matcher.sizes
        )
        for batch in loader:
            ptr = batch["ptr"].cpu().numpy()
            numbers = _atomic_numbers(model, batch["node_attrs"])
            positions = batch["positions"].cpu().numpy().astype(np.float64)
            for graph in range(len(ptr) - 1):
                config = matcher.match(
                    numbers[ptr[graph] : ptr[graph + 1]], positions[ptr[graph] : ptr[graph + 1]]
                )
                if config >= 0:
                    self.validation_configs.add(config)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap mace's training functions for the duration of the block, then restore them."""
        module = importlib.import_module("mace.tools.train")
        originals = {
            name: getattr(module, name) for name in ("take_step", "train_one_epoch", "evaluate")
        }
        module.take_step = self.wrap_take_step(originals["take_step"])
        module.train_one_epoch = self.wrap_train_one_epoch(originals["train_one_epoch"])
        module.evaluate = self.wrap_evaluate(originals["evaluate"])
        try:
            yield
        finally:
            for name, function in originals.items():
                setattr(module, name, function)

    def finish(self, run: dict[str, Any]) -> dict[str, Any]:
        """Store what the run showed (configurations trained on and held out, timings, ``run``
        facts) in the log's provenance, close the log and return the provenance."""
        previous = self.recorder.provenance
        members = dict(previous.get("members", {}))
        members[str(self.member)] = {
            "epochs": len(self.epoch_seconds),
            "epoch_seconds": self.epoch_seconds,
            "logging_seconds": self.logging_seconds,
            "unmatched_graphs": self.n_unmatched_graphs,
            **run,
        }
        provenance = previous | self._provenance(
            {
                "trained_configurations": sorted(
                    set(previous.get("trained_configurations", [])) | self.trained_configs
                ),
                "validation_configurations": sorted(
                    set(previous.get("validation_configurations", [])) | self.validation_configs
                ),
                "members": members,
            }
        )
        self.recorder.set_provenance(provenance)
        self.recorder.close()
        if self.energy_recorder is not None:
            energy = self.energy_recorder.provenance
            self.energy_recorder.set_provenance(
                provenance | {k: energy[k] for k in ("error", "unit", "centring", "epoch_offsets")}
            )
            self.energy_recorder.close()
        return provenance

    def close(self) -> None:
        """Close the logs (after a failed run)."""
        self.recorder.close()
        if self.energy_recorder is not None:
            self.energy_recorder.close()


def _bind(function: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    import inspect

    bound = inspect.signature(function).bind(*args, **kwargs)
    return dict(bound.arguments)


def _atomic_numbers(model: torch.nn.Module, node_attrs: torch.Tensor) -> np.ndarray:
    """Atomic numbers ``(n_atoms,)`` from mace's one-hot ``node_attrs`` and the model's table."""
    table = getattr(model, "module", model).atomic_numbers.detach().cpu().numpy()
    return table[node_attrs.detach().argmax(dim=1).cpu().numpy()].astype(np.int64)


def parse_mace_arguments(mace_argv: Sequence[str], *, trusted: bool = False) -> Any:
    """mace_run_train's own parser on ``mace_argv``; refuses what ltau cannot record yet, and
    a ``--foundation_model`` that is not a local file (nothing is downloaded) or that cannot
    be loaded without running code (unless ``trusted``: mace itself unpickles it fully)."""
    from mace import tools

    try:
        args = tools.build_default_arg_parser().parse_args(list(mace_argv))
    except SystemExit as exc:
        raise LTAUInputError(
            f"mace_run_train refused its arguments (exit status {exc.code}); see its message above"
        ) from exc
    for option, reason in UNSUPPORTED.items():
        if getattr(args, option, False):
            raise LTAUInputError(f"ltau mace-train does not support --{option}: {reason}")
    if not args.train_file:
        raise LTAUInputError("mace_run_train needs --train_file")
    if str(args.train_file).endswith((".h5", ".hdf5")) or os.path.isdir(args.train_file):
        raise LTAUInputError(
            f"--train_file {args.train_file} is preprocessed data: ltau mace-train maps atoms "
            "through the extxyz file itself"
        )
    if args.foundation_model is not None:
        check_foundation_model(args.foundation_model, trusted=trusted)
    return args


def check_foundation_model(path: str, *, trusted: bool = False) -> None:
    """A foundation model for fine-tuning must be a local mace model file; mace loads it with
    full unpickling, so ltau first loads it with the allowlist unless ``trusted``."""
    if not Path(path).is_file():
        raise LTAUInputError(
            f"--foundation_model {path} is not a local file: ltau mace-train downloads nothing; "
            "give the path of the foundation model's .model file"
        )
    if not trusted:
        model = load_pickled_model(path)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers"):
            raise LTAUFileError(f"--foundation_model {path} is not a mace model")


def run_mace_train(
    mace_argv: Sequence[str],
    log_path: str | os.PathLike,
    *,
    member: int = 0,
    overwrite: bool = False,
    trusted: bool = False,
    energy_centring: str = DEFAULT_CENTRING,
) -> dict[str, Any]:
    """Run ``mace_run_train`` with ``mace_argv`` (its own parser, loop and outputs), recording
    every training atom's force-error norm per epoch into ``log_path`` and every
    configuration's energy error into the energy log beside it (centred by
    ``energy_centring``, see :class:`ltau.energy.EnergyRecorder`); return the force log's
    provenance (see the module docstring). ``trusted``: accept a foundation model that cannot
    be loaded without running code."""
    from mace.cli import run_train

    args = parse_mace_arguments(mace_argv, trusted=trusted)
    recording = MACETrainingLogger(
        args.train_file,
        log_path,
        member=member,
        overwrite=overwrite,
        energy_centring=energy_centring,
    )
    started = time.perf_counter()
    try:
        with recording.installed():
            run_train.run(args)
    except BaseException:
        recording.close()
        raise
    model_dir = Path(args.model_dir or ".")
    written = sorted(
        str(path.resolve()) for path in model_dir.glob(f"{args.name}*.model") if path.is_file()
    )
    run = {
        "mace_arguments": list(mace_argv),
        "name": args.name,
        "seed": args.seed,
        "device": args.device,
        "valid_file": None if args.valid_file is None else str(Path(args.valid_file).resolve()),
        "valid_file_sha256": None if args.valid_file is None else file_sha256(args.valid_file),
        "valid_fraction": args.valid_fraction,
        "foundation_model": args.foundation_model,
        "model_files": written,
        "wall_seconds": time.perf_counter() - started,
    }
    provenance = recording.finish(run)
    logger.info(
        "recorded %d epochs of %d training configurations (%d held out for validation) into %s",
        len(recording.epoch_seconds),
        len(provenance["trained_configurations"]),
        len(provenance["validation_configurations"]),
        log_path,
    )
    return provenance
