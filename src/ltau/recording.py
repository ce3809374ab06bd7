"""Recording error trajectories: per-sample errors, epoch after epoch, for one or more models.

:class:`ErrorRecorder` takes each epoch's errors (in batches, by integer sample id; for a force
field one id per training atom) and keeps

* streaming per-sample histograms on fixed bins (memory independent of the number of epochs), and/or
* the raw log on disk (HDF5), from which distributions can be rebuilt with other bins.

The log is flushed after every epoch and the count of complete epochs is written last, so a log
whose writer was killed can be reopened with :meth:`ErrorRecorder.resume`: every completed
epoch is still there and recording continues. The file's seal (the SHA-256 of all its bytes, see
:mod:`ltau._io`) is written again whenever the log has grown by :data:`SEAL_GROWTH` since it
was last sealed, and when it is closed; a log whose writer was killed after its last seal is
read through a bounded-time parse instead. :class:`ErrorLog` reads a log.

Log layout (format ``ltau-error-log``, version 2; version 1 had no seal): ``errors`` float32
(or float16, the recorder's ``dtype``; root attribute ``error_dtype``) ``(n_epochs, n_samples)``
(NaN where a sample was not recorded that epoch; gzip-compressed rows with ``compression``),
``member`` int32 ``(n_epochs,)`` (which model each row belongs to), ``row_min_positive`` /
``row_max`` float64 ``(n_epochs,)``; root attributes ``n_samples`` and ``n_complete``. Optional: the group ``samples`` holds named int64 columns
``(n_samples,)`` that say what each sample is (for a force field: ``configuration`` and ``atom``,
its configuration in the training file and its atom within it), each with a SHA-256; the group
``provenance`` holds a signed JSON object of facts about the run (training file and its
fingerprint, held-out configurations, trainer arguments). A log that is one rank's shard of a
sharded log (see :mod:`ltau.sharded_log`) has the signed group ``shard`` (attributes ``log_id``,
``rank``, ``world_size``); its rows hold only that rank's samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from ltau._checks import as_error_vector, as_index_vector, non_negative_int, positive_int
from ltau._io import (
    atomic_h5,
    changing,
    close_sealed,
    inode,
    open_checked,
    read_array,
    read_attributes,
    reading,
    refuse_if_in_use,
    sign_attributes,
    write_array,
)
from ltau.distributions import ErrorDistributions, HistogramAccumulator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.histogram import Bins, Spacing

LOG_FORMAT = "ltau-error-log"
_ROW_CHUNK = 1 << 18
# Rows of the per-epoch tags per chunk: small, so a log of few epochs (a shard) stays small.
_TAG_CHUNK = 64
# The log is sealed again once it has grown by this fraction since its last seal (and when it
# is closed): hashing it after every epoch would cost O(log size) per epoch.
SEAL_GROWTH = 0.1
_PER_ROW = ("errors", "member", "row_min_positive", "row_max", "row_sha256", "meta_sha256")
ERROR_DTYPES = ("float32", "float16")
# float16's largest finite value: a larger error cannot be stored in a float16 log.
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_SHARD_ATTRIBUTES = ("log_id", "rank", "world_size")


class ErrorRecorder:
    """Record per-sample errors during training.

    Parameters
    ----------
    n_samples:
        Number of training samples (ids ``0 .. n_samples - 1``).
    bins:
        Bins for live streaming histograms. Without bins, distributions are built from the log.
    log_path:
        Where to keep the raw per-epoch log (HDF5). At least one of ``bins`` and ``log_path``
        must be given.
    overwrite:
        Replace an existing log at ``log_path`` (otherwise that is an error; see :meth:`resume`).
    samples:
        Named integer columns, each ``(n_samples,)``, stored in the log to say what every
        sample is (e.g. ``{"configuration": ..., "atom": ...}``); needs ``log_path``.
    provenance:
        JSON-serialisable facts about the run, stored in the log (see :meth:`set_provenance`).
    dtype:
        How the log stores errors: ``"float32"`` (4 bytes each) or ``"float16"`` (2 bytes,
        relative rounding at most 2**-11, finite up to 65504, below 6.1e-5 with less
        precision); the histograms are built from the stored values.
    compression:
        gzip-compress (with byte shuffling) the log's rows: rows that are mostly NaN, as a
        shard's are, shrink to a fraction.
    shard:
        ``{"log_id": str, "rank": int, "world_size": int}``: this log is one rank's shard of a
        sharded log (made by :func:`ltau.sharded_log.shard_recorder`); every epoch then accepts
        missing samples (the other ranks record them).

    Example
    -------
    >>> recorder = ErrorRecorder(n_atoms, bins=Bins.log(1e-3, 10.0), log_path="errors.h5")
    >>> for epoch in range(n_epochs):
    ...     for batch_ids, batch_errors in training_epoch():
    ...         recorder.record(batch_ids, batch_errors)
    ...     recorder.end_epoch()
    >>> distributions = recorder.distributions()
    """

    def __init__(
        self,
        n_samples: int,
        *,
        bins: Bins | None = None,
        log_path: str | os.PathLike | None = None,
        overwrite: bool = False,
        samples: Mapping[str, np.ndarray] | None = None,
        provenance: Mapping[str, object] | None = None,
        dtype: str = "float32",
        compression: bool = False,
        shard: Mapping[str, object] | None = None,
    ) -> None:
        self.n_samples = positive_int(n_samples, "n_samples")
        if bins is None and log_path is None:
            raise LTAUInputError("give bins (for live histograms), a log_path (raw log), or both")
        stored_in_log = samples is not None or provenance is not None or shard is not None
        if stored_in_log and log_path is None:
            raise LTAUInputError(
                "samples, provenance and the shard are stored in the log: give a log_path"
            )
        if dtype not in ERROR_DTYPES:
            raise LTAUInputError(f"dtype must be one of {ERROR_DTYPES}; got {dtype!r}")
        if not isinstance(compression, bool):
            raise LTAUInputError(f"compression must be True or False; got {compression!r}")
        columns = _checked_columns(samples, self.n_samples)
        facts = _checked_provenance(provenance)
        self.shard = _checked_shard(shard)
        self.dtype = dtype
        self._accumulator = HistogramAccumulator(bins, self.n_samples) if bins is not None else None
        self._buffer = np.full(self.n_samples, np.nan, dtype=np.float32)
        self._seen = np.zeros(self.n_samples, dtype=bool)
        self._epochs_by_member: dict[int, int] = {}
        self._log: h5py.File | None = None
        self._closed = False
        self.log_path = Path(log_path) if log_path is not None else None
        if self.log_path is not None:
            if self.log_path.is_dir():
                raise LTAUFileError(f"log_path {self.log_path} is a directory, not a file path")
            if self.log_path.exists() and not overwrite:
                raise LTAUFileError(
                    f"{self.log_path} exists; use ErrorRecorder.resume() to continue it, "
                    "or overwrite=True to replace it"
                )
            if self.log_path.exists():
                refuse_if_in_use(self.log_path)
            _create_log(
                self.log_path, self.n_samples, columns, facts, dtype, compression, self.shard
            )
            self._log = open_checked(self.log_path, LOG_FORMAT, mode="r+")
            self._closer = weakref.finalize(self, close_sealed, self._log)
        self._inode = None if self.log_path is None else inode(self.log_path)

    @classmethod
    def resume(cls, log_path: str | os.PathLike, *, bins: Bins | None = None) -> ErrorRecorder:
        """Reopen an existing log (for example after a crash) and continue recording.

        Rows of an epoch that was not completed are dropped. With ``bins``, live histograms are
        rebuilt from the completed epochs.
        """
        handle = open_checked(log_path, LOG_FORMAT, mode="r+")
        try:
            with reading(log_path):
                n_samples = int(handle.attrs["n_samples"])
                n_complete = _check_log(handle, log_path)
                with changing(handle):
                    for name in _PER_ROW:
                        handle[name].resize(n_complete, axis=0)
                members, counts = np.unique(handle["member"][:], return_counts=True)
                shard = _read_shard(handle, log_path)
        except BaseException:
            close_sealed(handle)
            raise
        recorder = cls.__new__(cls)
        recorder.n_samples = n_samples
        recorder.shard = shard
        recorder.dtype = str(handle["errors"].dtype)
        recorder.log_path = Path(log_path)
        recorder._log = handle
        recorder._closer = weakref.finalize(recorder, close_sealed, handle)
        recorder._closed = False
        recorder._buffer = np.full(n_samples, np.nan, dtype=np.float32)
        recorder._seen = np.zeros(n_samples, dtype=bool)
        recorder._epochs_by_member = {int(m): int(c) for m, c in zip(members, counts, strict=True)}
        recorder._accumulator = None
        recorder._inode = inode(log_path)
        if bins is not None:
            recorder._accumulator = HistogramAccumulator(bins, n_samples)
            for row in _FileRows(handle).read(np.arange(n_complete)):
                _add_row(recorder._accumulator, row)
        return recorder

    @property
    def n_epochs(self) -> int:
        """Completed epochs, summed over models."""
        return sum(self._epochs_by_member.values())

    @property
    def epochs_by_member(self) -> dict[int, int]:
        """Completed epochs of each model (member id -> count)."""
        return dict(self._epochs_by_member)

    def record(self, ids: Sequence[int] | np.ndarray, errors: Sequence[float] | np.ndarray) -> None:
        """Record the errors (finite, >= 0) of samples ``ids`` in the current epoch."""
        self._check_open()
        ids_array = as_index_vector(ids, self.n_samples)
        errors_array = as_error_vector(errors)
        if ids_array.shape != errors_array.shape:
            raise LTAUInputError(f"{ids_array.size} ids but {errors_array.size} errors")
        n_seen_before = int(np.count_nonzero(self._seen))
        already = self._seen[ids_array]
        self._seen[ids_array] = True
        if already.any() or np.count_nonzero(self._seen) - n_seen_before != ids_array.size:
            # Undo this call's marks so the epoch stays as it was before the bad call.
            self._seen[ids_array[~already]] = False
            repeated = ids_array[already][0] if already.any() else _first_repeat(ids_array)
            raise LTAUInputError(
                f"sample {repeated} was recorded twice in one epoch; call end_epoch() between epochs"
            )
        self._buffer[ids_array] = errors_array

    def end_epoch(self, member: int = 0, *, allow_missing: bool = False) -> int:
        """Close the current epoch of model ``member``; return its epoch number for that model.

        Every sample must have been recorded unless ``allow_missing`` or the log is a shard
        (then missing samples are stored as NaN in the log and left out of the histograms).
        """
        self._check_open()
        member = non_negative_int(member, "member")
        n_seen = int(np.count_nonzero(self._seen))
        if n_seen == 0:
            raise LTAUInputError("no errors were recorded in this epoch")
        if n_seen < self.n_samples and not (allow_missing or self.shard is not None):
            missing = np.flatnonzero(~self._seen)
            raise LTAUInputError(
                f"{missing.size} of {self.n_samples} samples were not recorded this epoch "
                f"(first ids: {missing[:5].tolist()}); pass allow_missing=True to accept that"
            )
        recorded = np.flatnonzero(self._seen) if n_seen < self.n_samples else None
        epoch = self._commit(self._buffer, recorded, member)
        self._buffer.fill(np.nan)
        self._seen.fill(False)
        return epoch

    def record_epoch(self, errors: Sequence[float] | np.ndarray, member: int = 0) -> int:
        """Record a whole epoch at once: ``errors`` has one entry per sample, in id order.

        Returns the epoch number for model ``member``. Cannot be mixed with :meth:`record`
        calls of the same epoch.
        """
        self._check_open()
        member = non_negative_int(member, "member")
        errors_array = as_error_vector(errors)
        if errors_array.size != self.n_samples:
            raise LTAUInputError(
                f"record_epoch needs {self.n_samples} errors (one per sample); "
                f"got {errors_array.size}"
            )
        if self._seen.any():
            raise LTAUInputError(
                "this epoch already has errors from record(); finish it with end_epoch() first"
            )
        return self._commit(errors_array, None, member)

    @property
    def provenance(self) -> dict[str, object]:
        """The facts about the run stored in the log (empty without a log or provenance)."""
        if self._log is None:
            return {}
        return _read_provenance(self._log, self.log_path)

    def set_provenance(self, provenance: Mapping[str, object]) -> None:
        """Replace the log's provenance with ``provenance`` (a JSON-serialisable mapping of
        facts about the run), signed and flushed at once."""
        if self._log is None:
            raise LTAUInputError("provenance is stored in the log: this recorder has none")
        facts = _checked_provenance(provenance)
        with changing(self._log):
            _write_provenance(self._log, facts)

    def _commit(self, errors: np.ndarray, recorded: np.ndarray | None, member: int) -> int:
        """Add one epoch (``recorded``: ids present, None = all) to histograms and log."""
        if self.dtype == "float16":
            errors = _as_float16(errors)
        if self._accumulator is not None:
            if recorded is None:
                self._accumulator.add_checked(None, errors)
            else:
                self._accumulator.add_checked(recorded, errors[recorded])
        if self._log is not None:
            if inode(self.log_path) != self._inode:
                raise LTAUFileError(
                    f"the log at {self.log_path} was replaced or removed by another process "
                    "since this recorder opened it: this epoch is not recorded there"
                )
            _append_row(self._log, errors, member)
        epoch = self._epochs_by_member.get(member, 0)
        self._epochs_by_member[member] = epoch + 1
        return epoch

    def distributions(
        self,
        bins: Bins | None = None,
        *,
        n_bins: int | None = None,
        spacing: Spacing | None = None,
        members: Sequence[int] | None = None,
        skip_epochs: int = 0,
        progress: bool = False,
        samples: Sequence[int] | np.ndarray | None = None,
    ) -> ErrorDistributions:
        """Per-sample error distributions pooled over the chosen models (default: all).

        With no arguments the live histograms are returned (as a copy). Other ``bins``, a bin
        count or spacing (bins then span the observed range; defaults 100, ``"log"``), a subset
        of ``members``, ``skip_epochs`` (leave out each model's first epochs, a burn-in) or
        ``samples`` (only these sample ids, in this order) rebuild the distributions from the
        log in one streaming pass. Errors outside the bins emit an
        :class:`~ltau.exceptions.LTAUClippingWarning` (see :mod:`ltau.distributions`).
        """
        if self.n_epochs == 0:
            raise LTAUInputError("no epoch has been completed yet")
        live = self._accumulator
        rebin = n_bins is not None or spacing is not None or members is not None
        rebin |= skip_epochs != 0 or samples is not None
        if live is not None and not rebin and (bins is None or bins == live.bins):
            return live.distributions(copy=True)
        if self._log is None:
            raise LTAUInputError(
                "other bins, a subset of members or a burn-in need the raw log; create the "
                "recorder with log_path"
            )
        return _distributions_from_log(
            _FileRows(self._log),
            bins,
            n_bins or 100,
            spacing or "log",
            members,
            skip_epochs,
            progress,
            _checked_samples(samples, self.n_samples),
        )

    def recorded_epochs(
        self,
        members: Sequence[int] | None = None,
        skip_epochs: int = 0,
        samples: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """In how many of the selected epochs each sample (or each of ``samples``) was
        recorded, ``(n,)`` int64 (see :meth:`distributions` for the selection)."""
        if self._log is None:
            raise LTAUInputError("recorded epochs are counted from the log: give a log_path")
        ids = _checked_samples(samples, self.n_samples)
        return _recorded_epochs(_FileRows(self._log), members, skip_epochs, ids)

    def close(self) -> None:
        """Close the log file (completed epochs are already on disk) and seal it. A recorder
        that is garbage-collected, or still open when Python exits, is closed the same way."""
        if self._log is not None:
            self._closer()
            self._log = None
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise LTAUInputError(
                "this recorder is closed; ErrorRecorder.resume(path) continues its log"
            )

    def __enter__(self) -> ErrorRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ErrorLog:
    """Read-only view of a recorded error log (see the module docstring for its layout).

    A shard of a sharded log is refused: open the log's manifest with
    :func:`ltau.sharded_log.open_error_log`, which reads both kinds.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        handle = open_checked(self.path, LOG_FORMAT)
        try:
            shard = _read_shard(handle, self.path)
            if shard is not None:
                raise LTAUFileError(
                    f"{self.path} is rank {shard['rank']} of {shard['world_size']} of a sharded "
                    "log: it holds only that rank's samples; read the log through its manifest "
                    "(ltau.sharded_log.open_error_log, or give the manifest to ltau)"
                )
            _check_log(handle, self.path)
            with reading(self.path):
                n_samples = int(handle.attrs["n_samples"])
                samples = _read_columns(handle, n_samples, self.path)
                provenance = _read_provenance(handle, self.path)
            self._attach(_FileRows(handle), samples, provenance)
        except BaseException:
            handle.close()
            raise

    def _attach(
        self, rows: _RowSource, samples: dict[str, np.ndarray], provenance: dict[str, object]
    ) -> None:
        """Read the log's epochs from ``rows``, a checked source of complete epoch rows."""
        self._rows = rows
        self.n_samples = rows.n_samples
        self.n_epochs = rows.n_complete()
        self.members = rows.members()
        self.samples = samples
        self.provenance = provenance
        self.dtype = rows.dtype

    @property
    def epochs_by_member(self) -> dict[int, int]:
        """Completed epochs of each model (member id -> count)."""
        ids, counts = np.unique(self.members, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}

    def rows(self, members: Sequence[int] | None = None, skip_epochs: int = 0) -> np.ndarray:
        """Indices of the log rows (epochs) that belong to ``members`` (default: all), leaving
        out the first ``skip_epochs`` of each model."""
        return _select_rows(self._rows, members, skip_epochs)

    def epochs(self, members: Sequence[int] | None = None) -> Iterator[np.ndarray]:
        """Yield each selected epoch's errors, float32 ``(n_samples,)``, NaN where not recorded."""
        yield from self._rows.read(self.rows(members))

    def epoch_rows(self, rows: Sequence[int] | np.ndarray) -> Iterator[np.ndarray]:
        """Yield the epochs at log row indices ``rows`` (see :meth:`rows`), each checked."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_epochs):
            raise LTAUInputError(f"log rows must lie in [0, {self.n_epochs})")
        yield from self._rows.read(rows)

    def to_array(self, members: Sequence[int] | None = None) -> np.ndarray:
        """All selected epochs in memory, float32 ``(n_epochs, n_samples)``; for small logs."""
        rows = self.rows(members)
        return (
            np.stack(list(self._rows.read(rows)))
            if rows.size
            else np.empty((0, self.n_samples), np.float32)
        )

    def distributions(
        self,
        bins: Bins | None = None,
        *,
        n_bins: int = 100,
        spacing: Spacing = "log",
        members: Sequence[int] | None = None,
        skip_epochs: int = 0,
        progress: bool = False,
        samples: Sequence[int] | np.ndarray | None = None,
    ) -> ErrorDistributions:
        """Build per-sample distributions in one streaming pass over the log, leaving out the
        first ``skip_epochs`` of each model (a burn-in); ``samples``: only these sample ids,
        in this order (e.g. the atoms a trainer trained on). Errors outside ``bins`` emit an
        :class:`~ltau.exceptions.LTAUClippingWarning`."""
        return _distributions_from_log(
            self._rows,
            bins,
            n_bins,
            spacing,
            members,
            skip_epochs,
            progress,
            _checked_samples(samples, self.n_samples),
        )

    def recorded_epochs(
        self,
        members: Sequence[int] | None = None,
        skip_epochs: int = 0,
        samples: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """In how many of the selected epochs each sample (or each of ``samples``) was
        recorded, ``(n,)`` int64."""
        ids = _checked_samples(samples, self.n_samples)
        return _recorded_epochs(self._rows, members, skip_epochs, ids)

    def bins(
        self,
        rows: np.ndarray,
        n_bins: int = 100,
        spacing: Spacing = "log",
    ) -> Bins:
        """Bins spanning the errors of log ``rows`` (from each row's stored minimum and
        maximum, without reading the rows): what :meth:`distributions` uses without bins."""
        return _bins_for_rows(self._rows, np.asarray(rows, dtype=np.int64), n_bins, spacing)

    def close(self) -> None:
        self._rows.close()

    def __enter__(self) -> ErrorLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _first_repeat(ids: np.ndarray) -> int:
    """The first id that occurs more than once in ``ids``."""
    values, counts = np.unique(ids, return_counts=True)
    return int(values[np.argmax(counts > 1)])


def _create_log(
    path: Path,
    n_samples: int,
    samples: dict[str, np.ndarray] | None = None,
    provenance: dict[str, object] | None = None,
    dtype: str = "float32",
    compression: bool = False,
    shard: dict[str, object] | None = None,
) -> None:
    with atomic_h5(path, LOG_FORMAT, libver="earliest") as handle:
        handle.attrs["n_samples"] = n_samples
        handle.attrs["n_complete"] = 0
        handle.attrs["error_dtype"] = dtype
        if samples:
            group = handle.create_group("samples")
            for name, column in samples.items():
                write_array(group, name, column)
        if provenance is not None:
            _write_provenance(handle, provenance)
        if shard is not None:
            group = handle.create_group("shard")
            for name in _SHARD_ATTRIBUTES:
                group.attrs[name] = shard[name]
            sign_attributes(group, _SHARD_ATTRIBUTES)
        packing = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        handle.create_dataset(
            "errors",
            shape=(0, n_samples),
            maxshape=(None, n_samples),
            dtype=np.dtype(dtype),
            chunks=(1, min(n_samples, _ROW_CHUNK)),
            fletcher32=True,
            **(packing if compression else {}),
        )
        handle.create_dataset(
            "member", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_TAG_CHUNK,)
        )
        for name in ("row_min_positive", "row_max"):
            handle.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(_TAG_CHUNK,)
            )
        for name in ("row_sha256", "meta_sha256"):
            handle.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype="S64", chunks=(_TAG_CHUNK,)
            )


def _as_float16(errors: np.ndarray) -> np.ndarray:
    """``errors`` rounded to float16 (as float32): the values a float16 log stores."""
    largest = float(np.nanmax(errors)) if np.any(~np.isnan(errors)) else 0.0
    if largest > _FLOAT16_MAX:
        raise LTAUInputError(
            f"error {largest:.6g} exceeds float16's range ({_FLOAT16_MAX:g}); record this log "
            "with dtype='float32'"
        )
    return errors.astype(np.float16).astype(np.float32)


def _checked_shard(shard: Mapping[str, object] | None) -> dict[str, object] | None:
    """A shard identity ``{"log_id", "rank", "world_size"}`` with ``0 <= rank < world_size``."""
    if shard is None:
        return None
    if not isinstance(shard, Mapping) or set(shard) != set(_SHARD_ATTRIBUTES):
        raise LTAUInputError(f"shard must be a mapping with exactly the keys {_SHARD_ATTRIBUTES}")
    log_id = shard["log_id"]
    if not isinstance(log_id, str) or not log_id:
        raise LTAUInputError(f"the shard's log_id must be a non-empty string; got {log_id!r}")
    world_size = positive_int(shard["world_size"], "world_size")
    rank = non_negative_int(shard["rank"], "rank")
    if rank >= world_size:
        raise LTAUInputError(f"rank must lie in [0, world_size={world_size}); got {rank}")
    return {"log_id": log_id, "rank": rank, "world_size": world_size}


def _read_shard(handle: h5py.File, source: object) -> dict[str, object] | None:
    """The shard identity stored in a log (None for a log with one writer)."""
    with reading(source):
        if "shard" not in handle:
            return None
        values = read_attributes(handle["shard"], _SHARD_ATTRIBUTES, source)
    return {
        "log_id": str(values["log_id"]),
        "rank": int(values["rank"]),
        "world_size": int(values["world_size"]),
    }


def _check_log(handle: h5py.File, source: object) -> int:
    """Validate a log's structure and per-epoch tags; return its number of complete epochs."""
    with reading(source):
        for name in _PER_ROW:
            if name not in handle:
                raise LTAUFileError(f"{source} is missing the dataset {name!r}")
            if not isinstance(handle[name], h5py.Dataset):
                raise LTAUFileError(f"{source}: {name!r} is not a dataset (the file is corrupted)")
        n_samples = int(handle.attrs.get("n_samples", -1))
        n_complete = int(handle.attrs.get("n_complete", -1))
        if handle["errors"].ndim != 2 or handle["errors"].shape[1] != n_samples:
            raise LTAUFileError(f"{source}: errors do not have shape (n_epochs, {n_samples})")
        if str(handle["errors"].dtype) not in ERROR_DTYPES:
            raise LTAUFileError(
                f"{source}: errors are stored as {handle['errors'].dtype}, not one of "
                f"{ERROR_DTYPES}"
            )
        shortest = min(handle[name].shape[0] for name in _PER_ROW)
        if not 0 <= n_complete <= shortest:
            raise LTAUFileError(
                f"{source}: it claims {n_complete} complete epochs but holds {shortest}"
            )
        members = handle["member"][:n_complete]
        minima = handle["row_min_positive"][:n_complete]
        maxima = handle["row_max"][:n_complete]
        digests = handle["meta_sha256"][:n_complete]
    for row in range(n_complete):
        if _meta_digest(members[row], minima[row], maxima[row]) != digests[row]:
            raise LTAUFileError(f"{source}: the tags of epoch row {row} are corrupted")
    return n_complete


def _meta_digest(member: int, minimum: float, maximum: float) -> bytes:
    values = np.array([member], np.int64).tobytes() + np.array([minimum, maximum]).tobytes()
    return hashlib.sha256(values).hexdigest().encode()


def _row_digest(row: np.ndarray) -> bytes:
    """SHA-256 of a row as float32 (a float16 row's values are exact in float32)."""
    return (
        hashlib.sha256(np.ascontiguousarray(row, dtype=np.float32).tobytes()).hexdigest().encode()
    )


def _append_row(handle: h5py.File, row: np.ndarray, member: int) -> None:
    """Append one epoch, then mark it complete, flush and seal: the count is written last.
    ``row`` holds values the log's dtype stores exactly (see :func:`_as_float16`)."""
    epoch = int(handle.attrs["n_complete"])
    positive = row[row > 0]
    minimum = float(positive.min()) if positive.size else np.nan
    maximum = float(np.nanmax(row))
    statistics = {
        "member": member,
        "row_min_positive": minimum,
        "row_max": maximum,
        "row_sha256": _row_digest(row),
        "meta_sha256": _meta_digest(member, minimum, maximum),
    }
    with changing(handle, seal_growth=SEAL_GROWTH):
        handle["errors"].resize(epoch + 1, axis=0)
        handle["errors"][epoch] = row.astype(handle["errors"].dtype)
        for name, value in statistics.items():
            handle[name].resize(epoch + 1, axis=0)
            handle[name][epoch] = value
        handle.attrs["n_complete"] = epoch + 1


class _RowSource:
    """The complete epoch rows of a log: one file (:class:`_FileRows`) or the shards of a
    sharded log read as one (:mod:`ltau.sharded_log`). Rows are float32 ``(n_samples,)``,
    NaN where not recorded, each checked against its SHA-256 as it is read."""

    name: str
    n_samples: int
    dtype: str

    def n_complete(self) -> int:
        """Complete epoch rows (a recorder's log grows)."""
        raise NotImplementedError

    def members(self) -> np.ndarray:
        """The model of each complete row, int64 ``(n_complete,)``."""
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each complete row's smallest positive and largest error, float64 ``(n_complete,)``
        (NaN where a row has no positive error)."""
        raise NotImplementedError

    def read(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """Yield rows ``rows`` (indices below :meth:`n_complete`), each checked."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _FileRows(_RowSource):
    """The rows of one log file, read through its open ``handle``."""

    def __init__(self, handle: h5py.File) -> None:
        self.handle = handle
        self.name = str(handle.filename)
        with reading(self.name):
            self.n_samples = int(handle.attrs["n_samples"])
            self.dtype = str(handle["errors"].dtype)

    def n_complete(self) -> int:
        with reading(self.name):
            return int(self.handle.attrs["n_complete"])

    def members(self) -> np.ndarray:
        with reading(self.name):
            return self.handle["member"][: self.n_complete()].astype(np.int64)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        n_complete = self.n_complete()
        with reading(self.name):
            minima = self.handle["row_min_positive"][:n_complete]
            maxima = self.handle["row_max"][:n_complete]
        return minima, maxima

    def read(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        for row in rows:
            try:
                values = self.handle["errors"][int(row)].astype(np.float32)
                digest = self.handle["row_sha256"][int(row)]
            except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise LTAUFileError(f"{self.name}: epoch row {row} is corrupted ({exc})") from exc
            if _row_digest(values) != digest:
                raise LTAUFileError(f"{self.name}: epoch row {row} is corrupted")
            yield values

    def close(self) -> None:
        self.handle.close()


def _select_rows(
    source: _RowSource, members: Sequence[int] | None, skip_epochs: int = 0
) -> np.ndarray:
    """Row indices of the complete epochs of ``members`` (default: all rows), without the
    first ``skip_epochs`` of each member."""
    skip_epochs = non_negative_int(skip_epochs, "skip_epochs")
    present = source.members()
    rows = np.arange(present.size)
    if members is not None:
        if isinstance(members, str | bytes) or not isinstance(members, Sequence | np.ndarray):
            raise LTAUInputError(f"members must be a sequence of model numbers; got {members!r}")
        wanted = as_index_vector(members, np.iinfo(np.int32).max, "members")
        unknown = np.setdiff1d(wanted, present)
        if unknown.size:
            raise LTAUInputError(
                f"members {unknown.tolist()} are not in {source.name} "
                f"(it has {np.unique(present).tolist()})"
            )
        rows = np.flatnonzero(np.isin(present, wanted))
    if skip_epochs:
        kept = np.ones(rows.size, dtype=bool)
        for member in np.unique(present[rows]):
            kept[np.flatnonzero(present[rows] == member)[:skip_epochs]] = False
        rows = rows[kept]
    return rows


def _add_row(accumulator: HistogramAccumulator, row: np.ndarray) -> None:
    """Add one logged epoch (NaN = not recorded) to ``accumulator``."""
    recorded = ~np.isnan(row)
    if recorded.all():
        accumulator.add_checked(None, as_error_vector(row, "logged errors"))
    elif recorded.any():
        ids = np.flatnonzero(recorded)
        accumulator.add_checked(ids, as_error_vector(row[ids], "logged errors"))


def _bins_for_rows(source: _RowSource, rows: np.ndarray, n_bins: int, spacing: Spacing) -> Bins:
    """Bins spanning the stored minima and maxima of ``rows``."""
    if rows.size == 0:
        raise LTAUInputError(f"{source.name}: no epoch rows were selected to span bins over")
    minima, maxima = source.bounds()
    if rows.min() < 0 or rows.max() >= minima.size:
        raise LTAUInputError(f"log rows must lie in [0, {minima.size})")
    low = np.nanmin(minima[rows]) if spacing == "log" else 0.0
    if not np.isfinite(low):
        raise LTAUInputError("all recorded errors are zero: log-spaced bins cannot span them")
    return Bins.from_range(float(low), float(np.nanmax(maxima[rows])), n_bins, spacing)


def add_rows(
    accumulator: HistogramAccumulator,
    rows: Iterator[np.ndarray],
    samples: np.ndarray | None = None,
) -> None:
    """Add logged epochs (each float32 ``(n_samples,)``, NaN = not recorded; only the entries
    ``samples``, in that order, if given) to ``accumulator``."""
    for row in rows:
        _add_row(accumulator, row if samples is None else row[samples])


def _distributions_from_log(
    source: _RowSource,
    bins: Bins | None,
    n_bins: int,
    spacing: Spacing,
    members: Sequence[int] | None,
    skip_epochs: int,
    progress: bool,
    samples: np.ndarray | None = None,
) -> ErrorDistributions:
    rows = _select_rows(source, members, skip_epochs)
    if rows.size == 0:
        raise LTAUInputError(
            f"{source.name} holds no completed epoch for these members"
            + (f" after skipping {skip_epochs} per model" if skip_epochs else "")
        )
    if bins is None:
        bins = _bins_for_rows(source, rows, n_bins, spacing)
    accumulator = HistogramAccumulator(bins, source.n_samples if samples is None else samples.size)
    rows_iter = source.read(rows)
    if progress:
        rows_iter = tqdm(rows_iter, total=rows.size, desc="building distributions", unit="epoch")
    add_rows(accumulator, rows_iter, samples)
    return accumulator.distributions()


def _recorded_epochs(
    source: _RowSource,
    members: Sequence[int] | None,
    skip_epochs: int,
    samples: np.ndarray | None,
) -> np.ndarray:
    rows = _select_rows(source, members, skip_epochs)
    counts = np.zeros(source.n_samples if samples is None else samples.size, dtype=np.int64)
    for row in source.read(rows):
        counts += ~np.isnan(row if samples is None else row[samples])
    return counts


def _checked_samples(
    samples: Sequence[int] | np.ndarray | None, n_samples: int
) -> np.ndarray | None:
    """Sample ids as an int64 vector within ``[0, n_samples)``, without repeats."""
    if samples is None:
        return None
    ids = as_index_vector(samples, n_samples, "samples")
    if ids.size == 0:
        raise LTAUInputError("samples must name at least one sample")
    if np.unique(ids).size != ids.size:
        raise LTAUInputError(f"samples repeats sample {_first_repeat(ids)}")
    return ids


def _checked_columns(
    samples: Mapping[str, np.ndarray] | None, n_samples: int
) -> dict[str, np.ndarray] | None:
    """Named integer columns of length ``n_samples``, as int64 arrays."""
    if samples is None:
        return None
    if not isinstance(samples, Mapping) or not samples:
        raise LTAUInputError("samples must be a non-empty mapping of column name to array")
    columns = {}
    for name, values in samples.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise LTAUInputError(f"sample column names must be non-empty strings; got {name!r}")
        array = np.asarray(values)
        if array.shape != (n_samples,) or not np.issubdtype(array.dtype, np.integer):
            raise LTAUInputError(
                f"sample column {name!r} must hold {n_samples} integers; got dtype "
                f"{array.dtype} and shape {array.shape}"
            )
        columns[name] = array.astype(np.int64)
    return columns


def _checked_provenance(provenance: Mapping[str, object] | None) -> dict[str, object] | None:
    if provenance is None:
        return None
    if not isinstance(provenance, Mapping):
        raise LTAUInputError(f"provenance must be a mapping; got {type(provenance).__name__}")
    try:
        return json.loads(json.dumps(dict(provenance), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"provenance must be JSON-serialisable: {exc}") from exc


def _write_provenance(handle: h5py.File, provenance: dict[str, object]) -> None:
    group = handle.require_group("provenance")
    group.attrs["json"] = json.dumps(provenance, sort_keys=True)
    sign_attributes(group, ["json"])


def _read_columns(handle: h5py.File, n_samples: int, source: Path) -> dict[str, np.ndarray]:
    if "samples" not in handle:
        return {}
    group = handle["samples"]
    columns = {name: read_array(group, name, source) for name in sorted(group)}
    for name, column in columns.items():
        if column.shape != (n_samples,):
            raise LTAUFileError(f"{source}: samples/{name} does not have {n_samples} entries")
    return columns


def _read_provenance(handle: h5py.File, source: Path) -> dict[str, object]:
    if "provenance" not in handle:
        return {}
    text = read_attributes(handle["provenance"], ["json"], source)["json"]
    try:
        provenance = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise LTAUFileError(f"{source}: its provenance is not valid JSON ({exc})") from exc
    if not isinstance(provenance, dict):
        raise LTAUFileError(f"{source}: its provenance is not a JSON object")
    return provenance
