"""A trainer's error log, read against the training file it was recorded from.

A log written under a trainer (``ltau mace-train``, the NequIP callback) numbers the atoms of
the training file in order and says, per sample, which ``configuration`` and ``atom`` it is;
its provenance holds the file's SHA-256, the configurations the trainer trained on
(``trained_configurations``) and those it held out for validation
(``validation_configurations``, or a separate ``valid_file`` with its SHA-256). From these
:func:`logged_training` rebuilds the trainer's own split: every later choice is made on the
trainer's validation set, and a log is never used with another file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltau._io import file_sha256
from ltau.atomistic.pipeline import Evaluation, check_in_domain, run_pipeline
from ltau.atomistic.structures import LabelledStructures, read_structures
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.recording import ErrorLog
from ltau.sharded_log import open_error_log


@dataclass
class LoggedTraining:
    """The trainer's split of the training file.

    ``fit_set``: the configurations trained on, in file order; ``validation``: those held out
    (or the separate validation file's), None if the trainer had none; ``sample_ids``: the log
    sample of every ``fit_set`` atom, ``(fit_set.n_atoms,)``; ``provenance``: the log's facts.
    """

    fit_set: LabelledStructures
    validation: LabelledStructures | None
    sample_ids: np.ndarray
    provenance: dict


def logged_training(
    log: ErrorLog,
    train: LabelledStructures,
    train_path: str | os.PathLike,
    *,
    valid_file: LabelledStructures | None = None,
) -> LoggedTraining:
    """Check that ``log`` was recorded from ``train_path`` (read as ``train``) and rebuild the
    trainer's split. ``valid_file``: the structures of the trainer's separate validation file,
    when the provenance names one (its SHA-256 is checked by the caller that read it)."""
    provenance = log.provenance
    for key in ("train_file_sha256", "trained_configurations"):
        if key not in provenance:
            raise LTAUFileError(
                f"{log.path} does not say which training file and configurations it belongs to "
                f"(no {key!r} in its provenance): record it with 'ltau mace-train' or ltau's "
                "trainer callbacks"
            )
    found = file_sha256(train_path)
    if found != provenance["train_file_sha256"]:
        raise LTAUFileError(
            f"{log.path} was recorded from another training file: {train_path} has SHA-256 "
            f"{found[:16]}..., the log's file {provenance.get('train_file', '?')} had "
            f"{str(provenance['train_file_sha256'])[:16]}..."
        )
    columns = log.samples
    expected = {
        "configuration": train.index.configuration_of_atoms,
        "atom": np.arange(train.n_atoms)
        - np.repeat(train.index.offsets[:-1], np.diff(train.index.offsets)),
    }
    for name, values in expected.items():
        if name not in columns or not np.array_equal(columns[name], values):
            raise LTAUFileError(
                f"{log.path}: its samples/{name} does not match the atoms of {train_path}"
            )
    trained = _configurations(provenance["trained_configurations"], train, log.path)
    held_out = _configurations(provenance.get("validation_configurations", []), train, log.path)
    if np.intersect1d(trained, held_out).size:
        raise LTAUFileError(f"{log.path}: configurations are both trained on and held out")
    validation = train.subset(held_out) if held_out.size else valid_file
    fit_set = train.subset(trained)
    sample_ids = np.concatenate([train.index.ids_of(int(c)) for c in trained])
    return LoggedTraining(fit_set, validation, sample_ids, provenance)


def _configurations(values: object, train: LabelledStructures, source: Path) -> np.ndarray:
    configs = np.asarray(values, dtype=np.int64).reshape(-1)
    if configs.size and (configs.min() < 0 or configs.max() >= train.index.n_configs):
        raise LTAUFileError(f"{source}: it names configurations the training file does not have")
    return np.unique(configs)


def evaluate_logged_training(
    evaluate: Callable[[LabelledStructures, bool], Evaluation],
    log_path: str | os.PathLike,
    train_path: str | os.PathLike,
    tests: dict[str, LabelledStructures],
    output_dir: str | os.PathLike,
    *,
    energy_key: str,
    forces_key: str,
    in_domain: str,
    calibration: str = "isotonic",
    model_facts: dict | None = None,
    title: str = "LTAU-FF",
) -> dict:
    """LTAU for a model trained elsewhere: its trainer's error log ``log_path``, recorded from
    ``train_path``, gives the distributions; ``evaluate(structures, progress)`` runs the model.
    Every choice and the calibration use the trainer's own validation set; then the ``tests``
    are evaluated and the estimator, report and ``metrics.json`` written into ``output_dir``
    (see :func:`ltau.atomistic.pipeline.run_pipeline`)."""
    started = time.perf_counter()
    check_in_domain(tests, in_domain)
    train = read_structures(train_path, energy_key=energy_key, forces_key=forces_key)
    with open_error_log(log_path) as log:
        valid_file = _trainer_validation_file(log.provenance, energy_key, forces_key)
        logged = logged_training(log, train, train_path, valid_file=valid_file)
        if logged.validation is None:
            raise LTAUInputError(
                f"{log_path}: the trainer held out no validation set, on which ltau makes its "
                "choices; train with a validation fraction or file"
            )
        members = logged.provenance.get("members", {})
        epoch_seconds = [t for m in members.values() for t in m.get("epoch_seconds", [])]
        logging_seconds = [t for m in members.values() for t in m.get("logging_seconds", [])]
        total, logging_total = sum(epoch_seconds), sum(logging_seconds)
        training = {
            "trainer": logged.provenance.get("trainer"),
            "train_file": str(train_path),
            "validation": "the trainer's own validation set",
            "epoch_seconds_mean": float(np.mean(epoch_seconds)) if epoch_seconds else None,
            "logging_overhead": (
                logging_total / (total - logging_total) if total > logging_total else None
            ),
        }
        return run_pipeline(
            evaluate,
            log,
            logged.fit_set,
            logged.validation,
            tests,
            output_dir,
            training=training,
            in_domain=in_domain,
            calibration=calibration,
            title=title,
            started=started,
            samples=logged.sample_ids,
            model_facts=model_facts,
        )


def _trainer_validation_file(
    provenance: dict, energy_key: str, forces_key: str
) -> LabelledStructures | None:
    """The trainer's separate validation file, checked against its recorded SHA-256."""
    path = provenance.get("valid_file")
    if not path:
        return None
    if not Path(path).is_file():
        raise LTAUFileError(f"the trainer's validation file {path} is no longer there")
    if file_sha256(path) != provenance.get("valid_file_sha256"):
        raise LTAUFileError(f"the trainer's validation file {path} changed since training")
    return read_structures(path, energy_key=energy_key, forces_key=forces_key)
