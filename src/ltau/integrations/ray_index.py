"""The neighbour index sharded across Ray workers: one actor per shard, a search that fans out
and merges the per-shard top k.

:class:`ShardedIndex` splits the training descriptors into shards (or takes shards with their
global sample ids, e.g. one per file or rank), builds each shard's
:class:`~ltau.search.NeighborIndex` inside its own Ray actor, and answers a search by asking
every shard for its k nearest and keeping the k nearest of all, as
``(distances, indices)`` with global sample ids, exactly like ``NeighborIndex.search``. With the
``exact`` kind the result equals the single-process index's (the same indices up to ties,
distances to float32 rounding); approximate kinds are searched per shard with their own
parameters.

It uses the Ray the caller has initialised: ``ray.init()`` on one machine, or
``ray.init(address="auto")`` / ``ray.init(address="ray://head:10001")`` on a cluster started with
``ray start --head`` (see ``docs/scale.md``); actors are placed wherever the cluster has room.
Bad input (more shards than items, wrong dimensions, shards with missing or overlapping ids, a
shard whose worker died) raises :class:`~ltau.exceptions.LTAUInputError`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import ray

from ltau._checks import as_float_matrix, positive_int
from ltau.exceptions import LTAUInputError
from ltau.search import NeighborIndex

logger = logging.getLogger(__name__)


class _Shard:
    """One shard's index inside a Ray actor: its descriptors and their global sample ids."""

    def __init__(self, kind: str, params: dict[str, int], threads: int) -> None:
        faiss.omp_set_num_threads(threads)
        self._index = NeighborIndex(kind, params)
        self._ids = np.empty(0, dtype=np.int64)

    def build(self, ids: np.ndarray, descriptors: np.ndarray) -> int:
        """Index ``descriptors`` ``(m, dim)`` whose global ids are ``ids`` ``(m,)``."""
        self._index.build(descriptors)
        self._ids = np.asarray(ids, dtype=np.int64)
        return self._index.n_items

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's ``min(k, n_items)`` nearest, with global ids (-1 where none)."""
        distances, local = self._index.search(queries, min(k, self._index.n_items))
        return distances, np.where(local >= 0, self._ids[np.maximum(local, 0)], -1)


class ShardedIndex:
    """A :class:`~ltau.search.NeighborIndex` of ``kind`` / ``params`` split over ``n_shards``
    Ray actors. Each actor holds ``cpus_per_shard`` of the cluster's CPUs for its lifetime (a
    fraction lets several shards share a CPU) and runs FAISS on that many threads (at least 1);
    shards that the cluster's CPUs cannot hold are refused rather than left waiting.

    Ray must be initialised by the caller. Build with :meth:`build` (one array, split into
    consecutive row blocks) or :meth:`build_shards` (shards with their global ids); release the
    actors with :meth:`shutdown`.
    """

    def __init__(
        self,
        n_shards: int,
        kind: str = "exact",
        params: dict[str, int] | None = None,
        *,
        cpus_per_shard: float = 1.0,
    ) -> None:
        self.n_shards = positive_int(n_shards, "n_shards")
        if not (isinstance(cpus_per_shard, int | float) and 0 < cpus_per_shard < float("inf")):
            raise LTAUInputError(
                f"cpus_per_shard must be a positive number; got {cpus_per_shard!r}"
            )
        self.cpus_per_shard = float(cpus_per_shard)
        self.kind = kind
        self.params = NeighborIndex(kind, dict(params or {})).params  # validates both
        self._actors: list[Any] = []
        self._n_items = 0
        self._dim = 0

    @property
    def n_items(self) -> int:
        self._require_built()
        return self._n_items

    @property
    def dim(self) -> int:
        self._require_built()
        return self._dim

    def build(self, descriptors: np.ndarray) -> ShardedIndex:
        """Index ``descriptors`` ``(n_items, dim)`` as ``n_shards`` consecutive row blocks
        (row i keeps id i); returns ``self``."""
        data = as_float_matrix(descriptors, "descriptors")
        if self.n_shards > data.shape[0]:
            raise LTAUInputError(
                f"{self.n_shards} shards requested for only {data.shape[0]} descriptors"
            )
        bounds = np.linspace(0, data.shape[0], self.n_shards + 1).astype(np.int64)
        shards = [
            (np.arange(start, stop), data[start:stop]) for start, stop in itertools.pairwise(bounds)
        ]
        return self.build_shards(shards)

    def build_shards(self, shards: Sequence[tuple[np.ndarray, np.ndarray]]) -> ShardedIndex:
        """Index ``n_shards`` shards ``(ids, descriptors)``: ``ids`` ``(m,)`` the global sample
        ids of the ``(m, dim)`` descriptors. Together the ids must be ``0..n_items-1``, each
        once. Each shard is built inside its actor; returns ``self``."""
        if not ray.is_initialized():
            raise LTAUInputError("Ray is not initialised: call ray.init(...) first")
        if len(shards) != self.n_shards:
            raise LTAUInputError(f"{len(shards)} shards given for an index of {self.n_shards}")
        checked = [self._checked_shard(number, shard) for number, shard in enumerate(shards)]
        dims = {descriptors.shape[1] for _, descriptors in checked}
        if len(dims) != 1:
            raise LTAUInputError(f"the shards' descriptors have different sizes {sorted(dims)}")
        _check_ids_partition([ids for ids, _ in checked])
        self.shutdown()
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if self.n_shards * self.cpus_per_shard > cpus:
            raise LTAUInputError(
                f"{self.n_shards} shards of {self.cpus_per_shard:g} CPUs need "
                f"{self.n_shards * self.cpus_per_shard:g} CPUs; the Ray cluster has {cpus:g}: "
                "use fewer shards, a smaller cpus_per_shard or a larger cluster"
            )
        actor_class = ray.remote(num_cpus=self.cpus_per_shard)(_Shard)
        threads = max(1, int(self.cpus_per_shard))
        self._actors = [actor_class.remote(self.kind, self.params, threads) for _ in checked]
        built = [
            actor.build.remote(ids, descriptors)
            for actor, (ids, descriptors) in zip(self._actors, checked, strict=True)
        ]
        self._n_items = sum(self._gathered(built, "build"))
        self._dim = dims.pop()
        logger.info("built %d shards of %d items on Ray", self.n_shards, self._n_items)
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query over all shards, as
        :meth:`ltau.search.NeighborIndex.search`: ``(distances, indices)`` ``(n_queries, k)``,
        Euclidean distances ascending (ties in id order) and global ids."""
        self._require_built()
        k = positive_int(k, "k")
        if k > self._n_items:
            raise LTAUInputError(f"k={k} neighbours requested but only {self._n_items} are indexed")
        data = as_float_matrix(queries, "query descriptors")
        if data.shape[1] != self._dim:
            raise LTAUInputError(
                f"query descriptors have {data.shape[1]} features; the index was built on "
                f"{self._dim}"
            )
        reference = ray.put(data)
        parts = self._gathered(
            [actor.search.remote(reference, k) for actor in self._actors], "search"
        )
        distances = np.concatenate([part[0] for part in parts], axis=1)
        indices = np.concatenate([part[1] for part in parts], axis=1)
        missing = indices < 0
        # Ascending distance, ties by id, missing slots last.
        order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, indices), distances), axis=1)
        order = order[:, :k]
        return (
            np.take_along_axis(distances, order, axis=1),
            np.take_along_axis(indices, order, axis=1),
        )

    def shutdown(self) -> None:
        """Stop the shards' actors (the index must be built again to be used)."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._n_items = 0

    def _gathered(self, references: list[Any], what: str) -> list[Any]:
        """``ray.get`` of one call per shard; a dead or failed shard is an LTAUInputError."""
        results = []
        for number, reference in enumerate(references):
            try:
                results.append(ray.get(reference))
            except ray.exceptions.RayActorError as exc:
                raise LTAUInputError(
                    f"shard {number} of {self.n_shards} is missing: its Ray worker died or was "
                    f"stopped ({type(exc).__name__}); build the index again"
                ) from exc
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, LTAUInputError):
                    raise LTAUInputError(f"shard {number}: {cause}") from exc
                raise
        return results

    @staticmethod
    def _checked_shard(number: int, shard: object) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64 (m,), descriptors float32 (m, dim))`` of shard ``number``."""
        if not isinstance(shard, tuple | list) or len(shard) != 2 or shard[1] is None:
            raise LTAUInputError(f"shard {number} is missing or is not a pair (ids, descriptors)")
        descriptors = as_float_matrix(shard[1], f"descriptors of shard {number}")
        ids = np.asarray(shard[0])
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise LTAUInputError(f"shard {number}: ids must be a 1-D integer array")
        if ids.size != descriptors.shape[0]:
            raise LTAUInputError(
                f"shard {number}: {ids.size} ids but {descriptors.shape[0]} descriptor rows"
            )
        return ids.astype(np.int64), descriptors

    def _require_built(self) -> None:
        if not self._actors:
            raise LTAUInputError("the sharded index has not been built; call build() first")


def _check_ids_partition(ids: list[np.ndarray]) -> None:
    """Refuse shards whose ids are not ``0..n-1`` each exactly once (overlaps or gaps)."""
    every = np.concatenate(ids)
    if every.size and every.min() < 0:
        raise LTAUInputError(f"shard ids must be >= 0; found {int(every.min())}")
    seen = np.bincount(every, minlength=every.size)
    overlapping = np.flatnonzero(seen > 1)
    if overlapping.size:
        owners = [number for number, part in enumerate(ids) if np.isin(overlapping[0], part)]
        raise LTAUInputError(
            f"{overlapping.size} sample ids are in more than one shard (id {int(overlapping[0])} "
            f"is in shards {owners})"
        )
    absent = np.flatnonzero(seen[: every.size] == 0)
    if absent.size:  # n distinct ids that are not 0..n-1 leave some of 0..n-1 out
        raise LTAUInputError(
            f"the shards do not cover the ids 0..{every.size - 1}: {absent.size} missing "
            f"(first {int(absent[0])}); is a shard missing?"
        )
