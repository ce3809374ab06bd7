"""Error logs written by several ranks (DDP) and read as one.

Ranks cannot share one HDF5 writer, and under DDP every rank sees a different subset of the
training samples each epoch. A *sharded log* is therefore

* one ordinary error log per rank (a *shard*, sealed as any log; see :mod:`ltau.recording`),
  of width ``n_samples``, holding NaN for every sample the rank did not see, gzip-compressed by
  default so that the NaN-heavy rows cost little, and tagged with the log's id, its rank and
  the world size (a signed group); and
* a *manifest* written by rank 0 (format ``ltau-error-log-manifest``, sealed): the log id,
  the world size, ``n_samples`` and the shard file names (signed attributes), plus the samples
  columns and provenance that a one-writer log holds.

A logical epoch is the union of the ranks' rows of that epoch (their ``k``-th rows). The
logical log has the epochs that *every* rank completed, so a log whose rank was killed
mid-epoch still reads every epoch before it (a warning names the ranks that are ahead). A
shard that is missing, one that belongs to another log or rank, shards that disagree (on
``n_samples``, storage, or which model an epoch belongs to) and a sample recorded by two
shards in the same epoch are :class:`~ltau.exceptions.LTAUFileError`\\ s naming the problem
(the last when that epoch is read).

>>> log_id = new_log_id()  # on rank 0, broadcast to the other ranks
>>> recorder = shard_recorder("errors.h5", rank=rank, world_size=world, n_samples=n,
...                           log_id=log_id)
>>> ...  # record(ids, errors) for the rank's samples, end_epoch() after each epoch
>>> with open_error_log("errors.h5") as log:  # either kind of log
...     distributions = log.distributions()
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltau._checks import non_negative_int, positive_int
from ltau._io import (
    atomic_h5,
    check_output_path,
    open_checked,
    read_attributes,
    reading,
    refuse_if_in_use,
    sealed_format,
    sign_attributes,
    write_array,
)
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.recording import (
    LOG_FORMAT,
    ErrorLog,
    ErrorRecorder,
    _check_log,
    _checked_columns,
    _checked_provenance,
    _FileRows,
    _read_columns,
    _read_provenance,
    _read_shard,
    _RowSource,
    _write_provenance,
)

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "ltau-error-log-manifest"
_MANIFEST_ATTRIBUTES = ("log_id", "world_size", "n_samples", "shards")


def new_log_id() -> str:
    """A fresh random id for a sharded log (made once, on rank 0, and given to every rank)."""
    return uuid.uuid4().hex


def shard_path(manifest_path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its shard: beside the manifest,
    ``<stem>.rank<r>-of-<w>.h5``."""
    manifest = Path(manifest_path)
    return manifest.with_name(f"{manifest.stem}.rank{rank}-of-{world_size}.h5")


def shard_recorder(
    manifest_path: str | os.PathLike,
    *,
    rank: int,
    world_size: int,
    n_samples: int,
    log_id: str,
    dtype: str = "float32",
    compression: bool = True,
    overwrite: bool = False,
    samples: Mapping[str, np.ndarray] | None = None,
    provenance: Mapping[str, object] | None = None,
) -> ErrorRecorder:
    """The recorder of rank ``rank``'s shard of the sharded log ``manifest_path``.

    Every rank calls this with the same ``log_id`` (see :func:`new_log_id`), world size and
    ``n_samples``; rank 0 also writes the manifest (with ``samples`` and ``provenance``, which
    only rank 0 needs to pass). Each rank records only the samples it trains on; its epochs
    accept missing samples. ``dtype`` and ``compression`` as for
    :class:`~ltau.recording.ErrorRecorder`.
    """
    world_size = positive_int(world_size, "world_size")
    rank = non_negative_int(rank, "rank")
    n_samples = positive_int(n_samples, "n_samples")
    if rank >= world_size:
        raise LTAUInputError(f"rank must lie in [0, world_size={world_size}); got {rank}")
    if rank != 0 and (samples is not None or provenance is not None):
        raise LTAUInputError("samples and provenance are written to the manifest by rank 0 only")
    if rank == 0 and Path(manifest_path).exists() and not overwrite:
        raise LTAUFileError(f"{manifest_path} exists; pass overwrite=True to replace it")
    shard = {"log_id": log_id, "rank": rank, "world_size": world_size}
    recorder = ErrorRecorder(
        n_samples,
        log_path=shard_path(manifest_path, rank, world_size),
        overwrite=overwrite,
        dtype=dtype,
        compression=compression,
        shard=shard,
    )
    if rank == 0:
        try:
            _write_manifest(
                Path(manifest_path), log_id, world_size, n_samples, samples, provenance, overwrite
            )
        except BaseException:
            recorder.close()
            raise
    return recorder


@dataclass(frozen=True)
class ShardedLogSpec:
    """What a trainer needs to write a sharded log once it knows its rank: the arguments of
    :func:`shard_recorder` other than the rank, the world size and the log id."""

    manifest_path: str | os.PathLike
    n_samples: int
    dtype: str = "float32"
    compression: bool = True
    overwrite: bool = False

    def recorder(self, rank: int, world_size: int, log_id: str) -> ErrorRecorder:
        """The recorder of rank ``rank``'s shard (rank 0 also writes the manifest)."""
        return shard_recorder(
            self.manifest_path,
            rank=rank,
            world_size=world_size,
            n_samples=self.n_samples,
            log_id=log_id,
            dtype=self.dtype,
            compression=self.compression,
            overwrite=self.overwrite,
        )


def _write_manifest(
    path: Path,
    log_id: str,
    world_size: int,
    n_samples: int,
    samples: Mapping[str, np.ndarray] | None,
    provenance: Mapping[str, object] | None,
    overwrite: bool,
) -> None:
    target = check_output_path(path)
    if target.exists():
        if not overwrite:
            raise LTAUFileError(f"{target} exists; pass overwrite=True to replace it")
        refuse_if_in_use(target)
    columns = _checked_columns(samples, n_samples)
    facts = _checked_provenance(provenance)
    names = [shard_path(target, rank, world_size).name for rank in range(world_size)]
    with atomic_h5(target, MANIFEST_FORMAT) as handle:
        handle.attrs["log_id"] = log_id
        handle.attrs["world_size"] = world_size
        handle.attrs["n_samples"] = n_samples
        handle.attrs["shards"] = json.dumps(names)
        sign_attributes(handle, _MANIFEST_ATTRIBUTES)
        if columns:
            group = handle.create_group("samples")
            for name, column in columns.items():
                write_array(group, name, column)
        if facts is not None:
            _write_provenance(handle, facts)


def open_error_log(path: str | os.PathLike) -> ErrorLog:
    """Open an error log of either kind: one writer's log, or a sharded log's manifest
    (see :class:`ShardedErrorLog`)."""
    if sealed_format(path) == MANIFEST_FORMAT:
        return ShardedErrorLog(path)
    return ErrorLog(path)


class ShardedErrorLog(ErrorLog):
    """A sharded log read as one :class:`~ltau.recording.ErrorLog` (every method of which it
    has): the epochs all ranks completed, each the union of the ranks' rows."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest = open_checked(self.path, MANIFEST_FORMAT)
        try:
            with reading(self.path):
                values = read_attributes(manifest, _MANIFEST_ATTRIBUTES, self.path)
                self.log_id = str(values["log_id"])
                self.world_size = int(values["world_size"])
                n_samples = int(values["n_samples"])
                names = json.loads(values["shards"])
                samples = _read_columns(manifest, n_samples, self.path)
                provenance = _read_provenance(manifest, self.path)
        finally:
            manifest.close()
        if not isinstance(names, list) or len(names) != self.world_size:
            raise LTAUFileError(f"{self.path}: its list of shards does not have world_size entries")
        rows = _ShardedRows(self.path, names, self.log_id, n_samples)
        try:
            self._attach(rows, samples, provenance)
        except BaseException:
            rows.close()
            raise


class _ShardedRows(_RowSource):
    """The epoch rows of a sharded log: shard ``r`` is rank ``r``'s log; logical row ``k`` is
    the union of the shards' rows ``k``, for ``k`` below the least count of complete rows."""

    def __init__(self, manifest: Path, names: list[str], log_id: str, n_samples: int) -> None:
        self.name = str(manifest)
        self.n_samples = n_samples
        self._shards: list[_FileRows] = []
        try:
            for rank, name in enumerate(names):
                self._shards.append(_open_shard(manifest, name, rank, len(names), log_id))
            self._check_agreement()
        except BaseException:
            self.close()
            raise

    def _check_agreement(self) -> None:
        """Shards agree on ``n_samples``, storage and the model of each common epoch; the
        logical log has the epochs every shard completed."""
        for rank, shard in enumerate(self._shards):
            if shard.n_samples != self.n_samples:
                raise LTAUFileError(
                    f"{self.name}: the shards disagree: {shard.name} (rank {rank}) has "
                    f"{shard.n_samples} samples, the manifest {self.n_samples}"
                )
        dtypes = {shard.dtype for shard in self._shards}
        if len(dtypes) > 1:
            raise LTAUFileError(f"{self.name}: the shards disagree on storage ({sorted(dtypes)})")
        self.dtype = dtypes.pop()
        completed = [shard.n_complete() for shard in self._shards]
        self._n_complete = min(completed)
        ahead = [rank for rank, count in enumerate(completed) if count > self._n_complete]
        if ahead:
            logger.warning(
                "%s: ranks %s completed more epochs than the others (%s); the log holds the "
                "%d epochs every rank completed (a rank was stopped mid-epoch?)",
                self.name,
                ahead,
                completed,
                self._n_complete,
            )
        first = self._shards[0].members()[: self._n_complete]
        for rank, shard in enumerate(self._shards[1:], start=1):
            members = shard.members()[: self._n_complete]
            if not np.array_equal(members, first):
                row = int(np.flatnonzero(members != first)[0])
                raise LTAUFileError(
                    f"{self.name}: the shards disagree on epoch row {row}: rank 0 recorded it "
                    f"for model {first[row]}, rank {rank} for model {members[row]}"
                )
        self._members = first

    def n_complete(self) -> int:
        return self._n_complete

    def members(self) -> np.ndarray:
        return self._members.copy()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        minima, maxima = zip(*(shard.bounds() for shard in self._shards), strict=True)
        stop = self._n_complete
        # fmin / fmax ignore NaN (a shard row without a positive error).
        return (
            np.fmin.reduce([values[:stop] for values in minima]),
            np.fmax.reduce([values[:stop] for values in maxima]),
        )

    def read(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        for row in rows:
            row = int(row)
            merged = np.full(self.n_samples, np.nan, dtype=np.float32)
            owner = np.full(self.n_samples, -1, dtype=np.int64)
            for rank, shard in enumerate(self._shards):
                values = next(shard.read(np.array([row])))
                recorded = ~np.isnan(values)
                clash = recorded & (owner >= 0)
                if clash.any():
                    sample = int(np.flatnonzero(clash)[0])
                    raise LTAUFileError(
                        f"{self.name}: sample {sample} was recorded by rank {owner[sample]} and "
                        f"rank {rank} in epoch row {row} ({int(clash.sum())} samples overlap): "
                        "every sample must belong to one rank per epoch (a DistributedSampler "
                        "pads the last batch with repeated samples unless the dataset's size "
                        "is a multiple of the world size, or drop_last=True)"
                    )
                merged[recorded] = values[recorded]
                owner[recorded] = rank
            yield merged

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def _open_shard(manifest: Path, name: object, rank: int, world_size: int, log_id: str) -> _FileRows:
    """Open and check the shard of ``rank`` named ``name`` in the manifest's directory."""
    if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
        raise LTAUFileError(f"{manifest}: shard name {name!r} is not a file name")
    path = manifest.parent / name
    if not path.exists():
        raise LTAUFileError(
            f"{manifest}: shard {rank} of {world_size} ({path}) is missing; a sharded log "
            "needs the shard of every rank"
        )
    handle = open_checked(path, LOG_FORMAT)
    try:
        _check_log(handle, path)
        identity = _read_shard(handle, path)
        if identity is None:
            raise LTAUFileError(f"{path} is a log with one writer, not a shard of {manifest}")
        if identity["log_id"] != log_id:
            raise LTAUFileError(
                f"{path} belongs to another log (log id {identity['log_id']}), not to {manifest} "
                f"(log id {log_id})"
            )
        if identity["rank"] != rank or identity["world_size"] != world_size:
            raise LTAUFileError(
                f"{path} is rank {identity['rank']} of {identity['world_size']}; {manifest} "
                f"expects rank {rank} of {world_size} there"
            )
        return _FileRows(handle)
    except BaseException:
        handle.close()
        raise


__all__ = [
    "MANIFEST_FORMAT",
    "ShardedErrorLog",
    "ShardedLogSpec",
    "new_log_id",
    "open_error_log",
    "shard_path",
    "shard_recorder",
]
