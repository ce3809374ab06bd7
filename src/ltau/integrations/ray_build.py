"""Distributions and descriptors built on Ray workers, equal to the single-process results.

Every function takes an already-initialised Ray: the caller runs ``ray.init()`` (a local
cluster on this machine) or ``ray.init(address="ray://head:10001")`` / ``address="auto"`` (a
multi-node cluster); the code is the same. Files are passed to the workers by path, so on a
cluster every node must see them at the same path (a shared file system).

* :func:`distributions_on_ray`: the log's epoch rows (of one writer's log or of a sharded log,
  see :mod:`ltau.sharded_log`) are split into contiguous row ranges, one per worker. The bins
  are fixed first, on the driver, from the per-row minima and maxima the log stores, so every
  worker histograms on the same bins; the workers' histograms are summed on the driver. The
  counts equal those of :meth:`ltau.recording.ErrorLog.distributions` exactly, and a clipping
  warning is raised once, on the driver, with the summed counts. Each worker holds one
  ``n_samples x n_bins`` count array (2 bytes per count).
* :func:`descriptors_on_ray`: the configurations are split into contiguous chunks; each worker
  loads the model from its file (:func:`ltau.integrations.models.load_forcefield`), sets torch
  to as many threads as it has CPUs, and computes its chunk's per-atom descriptors, which are
  concatenated in configuration order, as ``ltau descriptors`` writes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ray

from ltau._checks import positive_int
from ltau.atomistic.structures import LabelledStructures
from ltau.distributions import ErrorDistributions, HistogramAccumulator
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.histogram import Bins, Spacing
from ltau.recording import _checked_samples, add_rows
from ltau.sharded_log import open_error_log


def distributions_on_ray(
    log_path: str | os.PathLike,
    bins: Bins | None = None,
    *,
    n_bins: int = 100,
    spacing: Spacing = "log",
    members: Sequence[int] | None = None,
    skip_epochs: int = 0,
    samples: Sequence[int] | np.ndarray | None = None,
    n_workers: int | None = None,
) -> ErrorDistributions:
    """:meth:`ltau.recording.ErrorLog.distributions` of the log at ``log_path`` (either kind),
    its epoch rows histogrammed on ``n_workers`` Ray tasks (default: one per CPU Ray has)."""
    n_workers = _workers(n_workers, 1)
    path = Path(log_path).resolve()
    with open_error_log(path) as log:
        rows = log.rows(members, skip_epochs)
        if rows.size == 0:
            raise LTAUInputError(f"{path} holds no completed epoch for these members")
        bins = log.bins(rows, n_bins, spacing) if bins is None else bins
        ids = _checked_samples(samples, log.n_samples)
        n_samples = log.n_samples if ids is None else ids.size
    parts = [part for part in np.array_split(rows, min(n_workers, rows.size)) if part.size]
    futures = [_histogram_rows.remote(str(path), part, bins, ids, n_samples) for part in parts]
    total = HistogramAccumulator(bins, n_samples)
    for accumulator in ray.get(futures):
        total.merge(accumulator)
    return total.distributions()


@ray.remote(num_cpus=1)
def _histogram_rows(
    path: str, rows: np.ndarray, bins: Bins, samples: np.ndarray | None, n_samples: int
) -> HistogramAccumulator:
    """Histograms of the log rows ``rows`` (each row checked as it is read)."""
    accumulator = HistogramAccumulator(bins, n_samples)
    with open_error_log(path) as log:
        add_rows(accumulator, log.epoch_rows(rows), samples)
    accumulator.counts  # noqa: B018 - adds the buffered epochs: Ray returns arrays read-only
    return accumulator


def descriptors_on_ray(
    model_path: str | os.PathLike,
    structures: LabelledStructures,
    *,
    n_workers: int | None = None,
    cpus_per_worker: int = 1,
    device: str = "cpu",
    trusted: bool = False,
    head: str | None = None,
) -> np.ndarray:
    """Per-atom descriptors ``(n_atoms, d)`` float32 of ``structures`` by the model at
    ``model_path``, atoms in file order, computed on ``n_workers`` Ray tasks of
    ``cpus_per_worker`` CPUs each (default: as many as Ray's CPUs allow). Every worker must
    load the same model (its fingerprint is checked)."""
    if not isinstance(structures, LabelledStructures):
        raise LTAUInputError(
            f"structures must be LabelledStructures (ltau.atomistic.structures.read_structures);"
            f" got {type(structures).__name__}"
        )
    cpus_per_worker = positive_int(cpus_per_worker, "cpus_per_worker")
    n_workers = _workers(n_workers, cpus_per_worker)
    path = Path(model_path).resolve()
    if not path.is_file():
        raise LTAUFileError(f"the model file {path} does not exist")
    configs = np.arange(structures.index.n_configs)
    chunks = [c for c in np.array_split(configs, min(n_workers, configs.size)) if c.size]
    task = _descriptors_of.options(num_cpus=cpus_per_worker)
    futures = [
        task.remote(str(path), structures.subset(chunk), device, trusted, head, cpus_per_worker)
        for chunk in chunks
    ]
    results = ray.get(futures)
    fingerprints = {fingerprint for _, fingerprint in results}
    if len(fingerprints) > 1:
        raise LTAUFileError(
            f"the workers loaded different models from {path} (it changed during the run)"
        )
    return np.concatenate([descriptors for descriptors, _ in results])


@ray.remote
def _descriptors_of(
    path: str,
    structures: LabelledStructures,
    device: str,
    trusted: bool,
    head: str | None,
    threads: int,
) -> tuple[np.ndarray, str]:
    """The descriptors of ``structures`` and the fingerprint of the model that made them."""
    import torch

    from ltau.integrations.models import load_forcefield

    torch.set_num_threads(threads)
    forcefield = load_forcefield(path, device=device, trusted=trusted, head=head)
    return forcefield.evaluate(structures, False).descriptors, forcefield.fingerprint


def _workers(n_workers: int | None, cpus_per_worker: int) -> int:
    """``n_workers``, or as many as Ray's CPUs allow; Ray must be initialised."""
    if not ray.is_initialized():
        raise LTAUInputError(
            "Ray is not initialised: call ray.init() (this machine) or "
            "ray.init(address=...) (a cluster) first"
        )
    if n_workers is not None:
        return positive_int(n_workers, "n_workers")
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)


__all__ = ["descriptors_on_ray", "distributions_on_ray"]
