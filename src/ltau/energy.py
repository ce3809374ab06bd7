"""Energy uncertainty: per-configuration energy-error logs and a per-structure estimator.

The energy log is an ordinary error log (:mod:`ltau.recording`, format ``ltau-error-log``)
whose samples are training *configurations*, not atoms: sample ``c`` holds configuration
``c``'s energy error at every epoch, in eV per structure (not per atom). Trainer hooks hand
the :class:`EnergyRecorder` signed errors ``E_pred - E_ref``; it logs
``|E_pred - E_ref - offset|``, the offset shared by the epoch's configurations removed
(:func:`centred_energy_errors`, the one rule; ``centring="none"`` logs ``|E_pred - E_ref|``).
It sits next to the per-atom force log (``errors.h5`` / ``energy_errors.h5``,
:func:`energy_log_path`), written, sealed and reloaded the same way. Its
``samples/configuration`` column names each sample's configuration and its signed provenance
says what it holds: ``{"error": ENERGY_ERROR, "unit": ENERGY_UNIT, "centring": ...,
"epoch_offsets": ...}``; :func:`open_energy_log` refuses a log that does not (a force log).

The energy estimator is an :class:`~ltau.estimator.LTAUEstimator` over configurations: each
structure's descriptor is the mean of its atoms' descriptors (:func:`structure_descriptors`),
and a query structure's energy-error distribution is the mean of its k nearest training
structures' distributions, widened and calibrated on validation structures as for atoms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ltau._checks import as_float_matrix, checked_errors, group_labels, positive_int, real_array
from ltau.distributions import ErrorDistributions
from ltau.estimator import LTAUEstimator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.metrics import crps_histogram
from ltau.recording import ErrorLog, ErrorRecorder

ENERGY_ERROR = "|E_pred - E_ref| per structure"
ENERGY_UNIT = "eV per structure"
ENERGY_LOG_NAME = "energy_errors.h5"
"""The energy log's file name beside a run's force log ``errors.h5``."""


def energy_log_path(force_log_path: str | os.PathLike) -> Path:
    """Where a run's energy log goes beside its force log: ``energy_`` + the force log's file
    name in its folder (``errors.h5`` -> :data:`ENERGY_LOG_NAME`)."""
    path = Path(force_log_path)
    return path.with_name(f"energy_{path.name}")


ENERGY_CENTRINGS = ("none", "epoch_mean", "epoch_median", "batch_mean")
"""How signed energy errors are centred before they are logged: not at all, by the epoch's
mean or median over its configurations, or by each training step's (each
:meth:`EnergyRecorder.record` call's) mean (see :func:`centred_energy_errors`)."""
DEFAULT_CENTRING = "batch_mean"
"""The centring chosen on acac validation (benchmarks/energy_offsets.py, docs/energy.md)."""


def centred_energy_errors(signed: np.ndarray, centring: str) -> tuple[np.ndarray, float]:
    """The one rule for what the energy log holds: signed errors ``E_pred - E_ref`` ``(n,)``
    (eV per structure) of the configurations of one epoch (``"epoch_mean"``,
    ``"epoch_median"``) or one step (``"batch_mean"``), minus their shared offset (their mean,
    or median; 0 for ``"none"``), in absolute value. Returns ``(|e - offset|, offset)``."""
    if centring not in ENERGY_CENTRINGS:
        raise LTAUInputError(f"centring must be one of {ENERGY_CENTRINGS}; got {centring!r}")
    values = real_array(signed, "signed energy errors").reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise LTAUInputError("signed energy errors must be finite, at least one")
    if centring == "none":
        offset = 0.0
    elif centring == "epoch_median":
        offset = float(np.median(values))
    else:
        offset = float(np.mean(values))
    return np.abs(values - offset), offset


class EnergyRecorder(ErrorRecorder):
    """An :class:`~ltau.recording.ErrorRecorder` of per-configuration energy errors. Trainer
    hooks :meth:`record` *signed* errors ``E_pred - E_ref`` (eV per structure), one call per
    training step; the shared offset (of each step for ``"batch_mean"``, else of the epoch at
    :meth:`end_epoch`) is removed by :func:`centred_energy_errors` and ``|e - offset|`` is
    logged. The centring and every epoch's offset (eV; for ``"batch_mean"`` the mean of its
    steps') are kept in the log's provenance (``centring``, ``epoch_offsets``:
    ``[member, offset]`` per epoch)."""

    def __init__(
        self,
        n_configs: int,
        log_path: str | os.PathLike,
        *,
        centring: str = DEFAULT_CENTRING,
        overwrite: bool = False,
        provenance: Mapping[str, object] | None = None,
    ) -> None:
        n_configs = positive_int(n_configs, "n_configs")
        if centring not in ENERGY_CENTRINGS:
            raise LTAUInputError(f"centring must be one of {ENERGY_CENTRINGS}; got {centring!r}")
        facts = dict(provenance or {})
        facts.update(error=ENERGY_ERROR, unit=ENERGY_UNIT, centring=centring, epoch_offsets=[])
        super().__init__(
            n_configs,
            log_path=log_path,
            overwrite=overwrite,
            samples={"configuration": np.arange(n_configs)},
            provenance=facts,
        )
        self.centring = centring
        self._signed = np.zeros(n_configs, dtype=np.float64)
        self._step_offsets: list[float] = []

    @classmethod
    def resume(cls, log_path: str | os.PathLike, *, bins=None) -> EnergyRecorder:
        """Reopen an energy log and continue recording with its centring."""
        recorder = super().resume(log_path, bins=bins)
        try:
            check_energy_log(recorder)
            recorder.centring = str(recorder.provenance.get("centring", "none"))
            if recorder.centring not in ENERGY_CENTRINGS:
                raise LTAUFileError(f"{log_path} names an unknown centring {recorder.centring!r}")
        except BaseException:
            recorder.close()
            raise
        recorder._signed = np.zeros(recorder.n_samples, dtype=np.float64)
        recorder._step_offsets = []
        return recorder

    def record(self, ids: np.ndarray, errors: np.ndarray) -> None:
        """Record the signed energy errors ``E_pred - E_ref`` (eV per structure, finite) of
        configurations ``ids`` in the current epoch."""
        signed = real_array(errors, "signed energy errors").reshape(-1)
        if not np.all(np.isfinite(signed)):
            raise LTAUInputError("signed energy errors must be finite (no NaN or infinity)")
        super().record(ids, np.abs(signed))
        if self.centring == "batch_mean" and signed.size:
            signed, offset = signed - np.mean(signed), float(np.mean(signed))
            self._step_offsets.append(offset)
        self._signed[np.asarray(ids, dtype=np.int64)] = signed

    def record_epoch(self, errors: np.ndarray, member: int = 0) -> int:
        """Record a whole epoch of signed energy errors, one per configuration in id order."""
        signed = real_array(errors, "signed energy errors").reshape(-1)
        if signed.size != self.n_samples:
            raise LTAUInputError(
                f"record_epoch needs {self.n_samples} signed energy errors; got {signed.size}"
            )
        self.record(np.arange(self.n_samples), signed)
        return self.end_epoch(member)

    def end_epoch(self, member: int = 0, *, allow_missing: bool = False) -> int:
        """Centre the epoch's signed errors (over the configurations recorded), log them, and
        close the epoch of model ``member``; returns its epoch number for that model."""
        seen = np.flatnonzero(self._seen)
        offset = 0.0
        if seen.size:
            by_epoch = "none" if self.centring == "batch_mean" else self.centring
            centred, offset = centred_energy_errors(self._signed[seen], by_epoch)
            self._buffer[seen] = centred
        if self.centring == "batch_mean":
            offset = float(np.mean(self._step_offsets)) if self._step_offsets else 0.0
        epoch = super().end_epoch(member, allow_missing=allow_missing)
        self._step_offsets = []
        facts = self.provenance
        facts["epoch_offsets"] = [*facts.get("epoch_offsets", []), [int(member), offset]]
        self.set_provenance(facts)
        return epoch


def energy_recorder(
    n_configs: int,
    log_path: str | os.PathLike,
    *,
    centring: str = DEFAULT_CENTRING,
    overwrite: bool = False,
    provenance: Mapping[str, object] | None = None,
) -> EnergyRecorder:
    """A recorder of per-configuration energy errors (eV per structure): one sample per
    training configuration ``0 .. n_configs - 1``, logged to ``log_path``; trainer hooks give
    it signed errors, it logs them centred by ``centring`` (see :class:`EnergyRecorder`).
    ``provenance``: further facts about the run (the energy facts cannot be overridden)."""
    return EnergyRecorder(
        n_configs, log_path, centring=centring, overwrite=overwrite, provenance=provenance
    )


def check_energy_log(log: ErrorLog | ErrorRecorder, n_configs: int | None = None) -> None:
    """Raise :class:`~ltau.exceptions.LTAUFileError` unless ``log`` holds energy errors (eV per
    structure), and :class:`~ltau.exceptions.LTAUInputError` unless it has ``n_configs``
    samples (when given)."""
    source = getattr(log, "path", None) or getattr(log, "log_path", None) or "the log"
    facts = log.provenance
    if facts.get("error") != ENERGY_ERROR or facts.get("unit") != ENERGY_UNIT:
        raise LTAUFileError(
            f"{source} is not an energy-error log (its provenance says error="
            f"{facts.get('error')!r}, unit={facts.get('unit')!r}); record one with "
            "ltau.energy.energy_recorder"
        )
    if n_configs is not None and log.n_samples != n_configs:
        raise LTAUInputError(
            f"the energy log {source} has {log.n_samples} configurations but the training "
            f"structures have {n_configs}"
        )


def open_energy_log(path: str | os.PathLike) -> ErrorLog:
    """Open an energy log, checked to hold energy errors (eV per structure)."""
    log = ErrorLog(path)
    try:
        check_energy_log(log)
    except BaseException:
        log.close()
        raise
    return log


def structure_descriptors(descriptors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each structure's descriptor, the mean of its atoms' descriptors: ``descriptors``
    ``(n_atoms, d)`` and the structure of each atom ``groups`` ``(n_atoms,)``, labels
    ``0 .. n_structures - 1`` each used at least once. Returns float32 ``(n_structures, d)``."""
    data = as_float_matrix(descriptors, "descriptors")
    labels = group_labels(groups, data.shape[0], "atom")
    if labels.size == 0 or labels.min() < 0:
        raise LTAUInputError("groups must be non-negative structure labels, at least one atom")
    n_structures = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_structures)
    if not counts.all():
        raise LTAUInputError(
            f"groups must number the structures 0 .. {n_structures - 1} without gaps; "
            f"structure {int(np.argmin(counts))} has no atoms"
        )
    sums = np.zeros((n_structures, data.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, data)
    return (sums / counts[:, None]).astype(np.float32)


def energy_errors(predicted: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """``|E_pred - E_ref|`` (eV per structure) of ``(n_structures,)`` predicted and reference
    energies; a clear error when the references are missing or the lengths differ."""
    if reference is None:
        raise LTAUInputError(
            "the structures carry no reference energies: energy errors need them "
            "(name the energy key of the file)"
        )
    e_pred = real_array(predicted, "predicted energies").reshape(-1)
    e_ref = real_array(reference, "reference energies").reshape(-1)
    if e_pred.shape != e_ref.shape:
        raise LTAUInputError(
            f"{e_pred.size} predicted energies but {e_ref.size} reference energies"
        )
    if not (np.all(np.isfinite(e_pred)) and np.all(np.isfinite(e_ref))):
        raise LTAUInputError("energies must be finite (no NaN or infinity)")
    return np.abs(e_pred - e_ref)


ENERGY_K_CANDIDATES = (3, 5, 10, 20)
"""k values tried for the energy estimator, chosen by validation CRPS (uncalibrated)."""
MIN_WIDENING_STRUCTURES = 10
"""Fewer validation structures than this fit only the calibration map, not the distance
widening (whose two terms need more points than that to be meaningful)."""


def fit_energy_estimator(
    descriptors: np.ndarray,
    distributions: ErrorDistributions,
    validation_descriptors: np.ndarray,
    validation_errors: np.ndarray,
    *,
    calibration: str = "isotonic",
    k_candidates: tuple[int, ...] = ENERGY_K_CANDIDATES,
) -> tuple[LTAUEstimator, dict]:
    """Fit the per-structure energy estimator on training structures' ``descriptors``
    ``(n_train, d)`` (see :func:`structure_descriptors`) and their energy-error
    ``distributions`` (eV per structure), choosing k by the CRPS (eV) of the uncalibrated
    prediction on the validation structures (``validation_descriptors`` ``(n_val, d)``, true
    errors ``validation_errors`` ``(n_val,)``), then widening (with at least
    :data:`MIN_WIDENING_STRUCTURES` of them) and calibrating on all of them.

    Returns ``(estimator, choice)``, ``choice`` = ``{"k": ..., "validation_crps": {k: ...},
    "widened": bool}``.
    """
    train = as_float_matrix(descriptors, "structure descriptors")
    if distributions.n_samples != train.shape[0]:
        raise LTAUInputError(
            f"{train.shape[0]} training structures but {distributions.n_samples} energy-error "
            "distributions"
        )
    queries = as_float_matrix(validation_descriptors, "validation structure descriptors")
    observed = checked_errors(validation_errors, "validation energy errors")
    if observed.size != queries.shape[0]:
        raise LTAUInputError(
            f"{queries.shape[0]} validation structures but {observed.size} energy errors"
        )
    usable = [k for k in k_candidates if k <= train.shape[0]]
    if not usable:
        raise LTAUInputError(f"too few training structures ({train.shape[0]}) for any k")
    scores = {}
    for k in usable:
        trial = LTAUEstimator(k).fit(train, distributions)
        raw = trial.predict(queries, return_pdf=True)
        scores[k] = crps_histogram(raw.pdf * trial.bins.widths, trial.bins, observed)
    best = min(scores, key=scores.__getitem__)
    estimator = LTAUEstimator(best).fit(train, distributions)
    widen = observed.size >= MIN_WIDENING_STRUCTURES
    estimator.calibrate(queries, observed, method=calibration, widen=widen)
    crps = {str(k): v for k, v in scores.items()}
    return estimator, {"k": best, "validation_crps": crps, "widened": widen}
