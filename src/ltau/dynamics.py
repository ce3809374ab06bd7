"""Training dynamics: a per-sample (and per-group) map built from a recorded error log.

For every sample, over the epochs kept (all epochs of the chosen models, minus the first
``skip_epochs`` of each model), the map holds

* ``mean_error``: mean recorded error (error units, e.g. eV/Å for per-atom force errors);
* ``error_std``: its variability, the population standard deviation over epochs (same units);
* ``exceed_fraction``: fraction of epochs with error > ``atol``;
* ``forgetting_events``: how often the sample was forgotten: an epoch with error <= ``atol``
  followed by the next recorded epoch of the same model with error > ``atol``;
* ``last_error``: the error at each model's last recorded epoch, averaged over models;
* ``n_epochs``: the number of epochs in which the sample was recorded (NaN entries of the log
  are skipped, so a sample recorded in no kept epoch has NaN statistics).

With integer group ids (for a force field: the configuration of every atom, see
:func:`groups_from_sizes`) the same statistics are computed per group, from the group's error
of each epoch: the root mean square (or mean) of its samples' errors recorded that epoch (for
per-atom force-error norms and ``"rms"``: the configuration's force RMSE, eV/Å).

Everything is computed in one streaming pass over the epochs of the log; each epoch row is
processed in column blocks, so memory holds only the per-sample statistics.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from ltau._checks import group_labels, non_negative_int, positive_int, real_array, tolerance
from ltau.exceptions import LTAUInputError
from ltau.recording import ErrorLog
from ltau.sharded_log import open_error_log

GroupReduce = Literal["rms", "mean"]
_BLOCK = 1 << 20


@dataclass(frozen=True)
class DynamicsTable:
    """Training-dynamics statistics of ``n`` entities (samples or groups); arrays ``(n,)``.

    Errors are in the log's error units; fractions and counts are unitless.
    """

    mean_error: np.ndarray
    error_std: np.ndarray
    exceed_fraction: np.ndarray
    forgetting_events: np.ndarray
    last_error: np.ndarray
    n_epochs: np.ndarray

    def __len__(self) -> int:
        return int(self.mean_error.size)

    def columns(self) -> dict[str, np.ndarray]:
        """The named columns, in a fixed order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TrainingDynamics:
    """The map of one log: per-sample statistics and, if groups were given, per-group ones."""

    atol: float
    skip_epochs: int
    members: tuple[int, ...]
    samples: DynamicsTable
    groups: DynamicsTable | None = None
    group_reduce: GroupReduce | None = None


def groups_from_sizes(
    sizes: Sequence[int] | np.ndarray, n_samples: int | None = None
) -> np.ndarray:
    """Group id of every sample from group sizes (for example atoms per configuration), in
    order: ``[0] * sizes[0] + [1] * sizes[1] + ...``; int64 ``(sum(sizes),)``. With
    ``n_samples``, the sizes must sum to it (checked before anything is allocated)."""
    array = np.asarray(sizes)
    if not np.issubdtype(array.dtype, np.integer):
        array = real_array(sizes, "group sizes")
    if array.ndim != 1 or array.size == 0:
        raise LTAUInputError(f"group sizes must be a non-empty 1-D array; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise LTAUInputError(f"group sizes must be integers; got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 1:
        raise LTAUInputError(f"group sizes must be positive; found {int(array.min())}")
    total = sum(int(size) for size in array)
    if n_samples is not None and total != n_samples:
        raise LTAUInputError(f"the group sizes sum to {total} but there are {n_samples} samples")
    return np.repeat(np.arange(array.size, dtype=np.int64), array)


def training_dynamics(
    log: ErrorLog | str | os.PathLike,
    atol: float,
    *,
    skip_epochs: int = 0,
    members: Sequence[int] | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
    group_reduce: GroupReduce = "rms",
    progress: bool = False,
) -> TrainingDynamics:
    """Compute the training-dynamics map of a recorded error log in one pass over its epochs.

    ``atol``: tolerance (error units, >= 0) for exceedance and forgetting. ``skip_epochs``: leave
    out each model's first epochs. ``members``: models to use (default: all in the log).
    ``groups``: group id (>= 0) of every sample, ``(n_samples,)``.
    """
    atol = tolerance(atol)
    skip_epochs = non_negative_int(skip_epochs, "skip_epochs")
    if group_reduce not in ("rms", "mean"):
        raise LTAUInputError(f"group_reduce must be 'rms' or 'mean'; got {group_reduce!r}")
    if isinstance(log, ErrorLog):
        return _from_log(log, atol, skip_epochs, members, groups, group_reduce, progress)
    with open_error_log(log) as opened:
        return _from_log(opened, atol, skip_epochs, members, groups, group_reduce, progress)


def _from_log(
    log: ErrorLog,
    atol: float,
    skip_epochs: int,
    members: Sequence[int] | None,
    groups: Sequence[int] | np.ndarray | None,
    group_reduce: GroupReduce,
    progress: bool,
) -> TrainingDynamics:
    group_ids, n_groups = _check_groups(groups, log.n_samples)
    rows = log.rows(members, skip_epochs)
    row_members = log.members[rows]
    if rows.size == 0:
        raise LTAUInputError(
            f"{log.path} has no epoch left for these members after skipping {skip_epochs}"
        )
    member_ids = np.unique(row_members)
    slot_of = {int(m): slot for slot, m in enumerate(member_ids)}
    samples = _Accumulator(log.n_samples, member_ids.size, atol)
    grouped = _Accumulator(n_groups, member_ids.size, atol) if group_ids is not None else None
    epochs = log.epoch_rows(rows)
    if progress:
        epochs = tqdm(epochs, total=rows.size, desc="training dynamics", unit="epoch")
    for member, row in zip(row_members, epochs, strict=True):
        slot = slot_of[int(member)]
        sums = np.zeros(n_groups) if grouped is not None else None
        counts = np.zeros(n_groups) if grouped is not None else None
        for start in range(0, log.n_samples, _BLOCK):
            block = row[start : start + _BLOCK].astype(np.float64)
            samples.add(block, slot, start)
            if grouped is not None:
                recorded = ~np.isnan(block)
                ids = group_ids[start : start + _BLOCK][recorded]
                values = block[recorded]
                values = values * values if group_reduce == "rms" else values
                sums += np.bincount(ids, values, minlength=n_groups)
                counts += np.bincount(ids, minlength=n_groups)
        if grouped is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                group_row = sums / counts
            grouped.add(np.sqrt(group_row) if group_reduce == "rms" else group_row, slot, 0)
    return TrainingDynamics(
        atol=atol,
        skip_epochs=skip_epochs,
        members=tuple(int(m) for m in member_ids),
        samples=samples.table(),
        groups=grouped.table() if grouped is not None else None,
        group_reduce=group_reduce if grouped is not None else None,
    )


class _Accumulator:
    """Running per-entity statistics (Welford mean and variance, counts, forgetting state)."""

    def __init__(self, n: int, n_members: int, atol: float) -> None:
        self.atol = atol
        self.count = np.zeros(n, np.int64)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)
        self.n_exceed = np.zeros(n, np.int64)
        self.forgotten = np.zeros(n, np.int64)
        # Per model: was the last recorded epoch above atol (1), at or below it (0), or none (-1).
        self.state = np.full((n_members, n), -1, np.int8)
        self.last = np.full((n_members, n), np.nan)

    def add(self, values: np.ndarray, slot: int, start: int) -> None:
        """Add one epoch's values (NaN = not recorded) of entities ``start : start + len``."""
        span = slice(start, start + values.size)
        recorded = ~np.isnan(values)
        if not recorded.any():
            return
        index = np.flatnonzero(recorded) + start
        x = values[recorded]
        self.count[index] += 1
        delta = x - self.mean[index]
        self.mean[index] += delta / self.count[index]
        self.m2[index] += delta * (x - self.mean[index])
        above = x > self.atol
        self.n_exceed[index] += above
        previous = self.state[slot, span][recorded]
        self.forgotten[index] += (previous == 0) & above
        self.state[slot, index] = above
        self.last[slot, index] = x

    def table(self) -> DynamicsTable:
        seen = self.count > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(seen, self.mean, np.nan)
            std = np.where(seen, np.sqrt(np.maximum(self.m2, 0.0) / self.count), np.nan)
            exceed = np.where(seen, self.n_exceed / self.count, np.nan)
            last_seen = ~np.isnan(self.last)
            last = np.where(
                seen,
                np.nansum(self.last, axis=0) / np.maximum(last_seen.sum(axis=0), 1),
                np.nan,
            )
        return DynamicsTable(
            mean_error=mean,
            error_std=std,
            exceed_fraction=exceed,
            forgetting_events=self.forgotten,
            last_error=last,
            n_epochs=self.count,
        )


def _check_groups(
    groups: Sequence[int] | np.ndarray | None, n_samples: int
) -> tuple[np.ndarray | None, int]:
    if groups is None:
        return None, 0
    array = group_labels(groups, n_samples)
    if array.min() < 0:
        raise LTAUInputError(f"group ids must be non-negative; found {int(array.min())}")
    return array, positive_int(int(array.max()) + 1, "n_groups")


__all__ = ["DynamicsTable", "TrainingDynamics", "groups_from_sizes", "training_dynamics"]
