"""Nearest-neighbour search over training descriptors, with FAISS, behind one small interface.

Index kinds and their parameters (every one is applied; unknown names are an error):

* ``exact``: brute-force L2 (``faiss.IndexFlatL2``). No parameters.
* ``hnsw``: graph search (``faiss.IndexHNSWFlat``). ``M`` (links per node, 32),
  ``ef_construction`` (200), ``ef_search`` (64; must be >= k for good recall).
* ``ivfpq``: inverted file with product quantisation (``faiss.IndexIVFPQ`` over a flat coarse
  quantiser). ``nlist`` (cells, 256), ``m`` (sub-quantisers; must divide the descriptor size,
  8), ``nbits`` (bits per code, 8), ``nprobe`` (cells visited per query, 16).

``auto`` is not an index but a rule applied when an estimator is fitted
(:func:`index_kind_for`): ``exact`` for at most :data:`AUTO_EXACT_LIMIT` training items,
else ``hnsw`` with its defaults. The limit is where, measured on this project's machine (one
FAISS thread, 64-d descriptors, 15 queries as in one MD step of a small molecule), the exact
search became slower than HNSW's: 171 µs against 283 µs at 3000 items, 570 µs against 222 µs
at 10 000, 9.5 ms against 0.35 ms at 100 000 (recall@10 of HNSW 1.0 throughout;
``benchmarks/inference.py`` prints the measurement as ``search_by_training_size``).

With faiss-gpu installed and a GPU present, :meth:`NeighborIndex.use_gpu` moves the search of
an ``exact`` or ``ivfpq`` index to the GPU (FAISS has no GPU HNSW); the CPU index stays the one
that is saved.

Distances returned are Euclidean (the square root of FAISS's squared L2). An approximate index
may find fewer than k neighbours for a query; those slots have index -1 and distance inf.

Searches of fewer than
:data:`SERIAL_QUERIES` queries run FAISS on one thread (the setting is restored afterwards):
on cores that other processes keep busy, FAISS's threads wait for each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from ltau._checks import as_float_matrix, positive_int
from ltau.exceptions import LTAUInputError

INDEX_DEFAULTS: dict[str, dict[str, int]] = {
    "exact": {},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 64},
    "ivfpq": {"nlist": 256, "m": 8, "nbits": 8, "nprobe": 16},
}
AUTO_EXACT_LIMIT = 5000
"""``index="auto"`` searches exactly up to this many training items, with HNSW above it."""
SERIAL_QUERIES = 64
"""Searches of fewer queries than this run FAISS on one thread."""


def index_kind_for(kind: str, n_items: int) -> str:
    """The index kind to build over ``n_items`` descriptors: ``kind`` itself, or for
    ``"auto"`` ``"exact"`` up to :data:`AUTO_EXACT_LIMIT` items and ``"hnsw"`` above."""
    if kind != "auto":
        return kind
    return "exact" if n_items <= AUTO_EXACT_LIMIT else "hnsw"


@contextlib.contextmanager
def serial_faiss(n_queries: int) -> Iterator[None]:
    """Run FAISS on one thread inside the block if ``n_queries < SERIAL_QUERIES``; restore
    the previous thread count afterwards."""
    if n_queries >= SERIAL_QUERIES:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@dataclass
class NeighborIndex:
    """A FAISS index over ``(n_items, dim)`` float32 descriptors."""

    kind: str = "exact"
    params: dict[str, int] = field(default_factory=dict)
    _index: Any = field(default=None, init=False, repr=False)
    _gpu_index: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in INDEX_DEFAULTS:
            raise LTAUInputError(
                f"unknown index type {self.kind!r}; choose one of {sorted(INDEX_DEFAULTS)}"
            )
        defaults = INDEX_DEFAULTS[self.kind]
        unknown = set(self.params) - set(defaults)
        if unknown:
            raise LTAUInputError(
                f"unknown parameters {sorted(unknown)} for a {self.kind!r} index; "
                f"it takes {sorted(defaults) or 'none'}"
            )
        self.params = {
            name: positive_int(self.params.get(name, default), f"{self.kind} parameter {name}")
            for name, default in defaults.items()
        }

    @property
    def dim(self) -> int:
        self._require_built()
        return int(self._index.d)

    @property
    def n_items(self) -> int:
        self._require_built()
        return int(self._index.ntotal)

    def build(self, descriptors: np.ndarray) -> NeighborIndex:
        """Index ``descriptors`` (shape ``(n_items, dim)``); returns ``self``."""
        data = as_float_matrix(descriptors, "descriptors")
        n_items, dim = data.shape
        if self.kind == "exact":
            index = faiss.IndexFlatL2(dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.params["M"])
            index.hnsw.efConstruction = self.params["ef_construction"]
        else:
            nlist, m, nbits = self.params["nlist"], self.params["m"], self.params["nbits"]
            if dim % m:
                raise LTAUInputError(f"ivfpq: m={m} must divide the descriptor size {dim}")
            if n_items < max(nlist, 2**nbits):
                raise LTAUInputError(
                    f"ivfpq: {n_items} descriptors are too few to train nlist={nlist} cells and "
                    f"{2**nbits}-entry codebooks; use fewer cells/bits or the exact index"
                )
            index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, nbits)
            index.train(data)
        index.add(data)
        self._index = index
        self._apply_search_params()
        return self

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query.

        Returns ``(distances, indices)``, both ``(n_queries, k)``: Euclidean distances (float32,
        ascending) and item indices (int64; -1 where an approximate index found fewer than k).
        """
        k = self.checked_k(k)
        data = as_float_matrix(queries, "query descriptors")
        if data.shape[1] != self.dim:
            raise LTAUInputError(
                f"query descriptors have {data.shape[1]} features; the index was built on {self.dim}"
            )
        return self.search_checked(data, k)

    def checked_k(self, k: int) -> int:
        """``k`` as an int in ``[1, n_items]``, or an error naming the problem."""
        self._require_built()
        k = positive_int(k, "k")
        if k > self.n_items:
            raise LTAUInputError(f"k={k} neighbours requested but only {self.n_items} are indexed")
        return k

    def search_checked(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` of queries already checked: a C-contiguous, finite float32
        ``(n_queries, dim)`` array and an int ``1 <= k <= n_items`` (the per-call path of
        :meth:`ltau.estimator.LTAUEstimator.predict`, which checks them once)."""
        searcher = self._gpu_index if self._gpu_index is not None else self._index
        with serial_faiss(queries.shape[0]):
            squared, indices = searcher.search(queries, k)
        distances = np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)
        if indices.min() < 0:
            distances[indices < 0] = np.inf
        return distances, indices

    @property
    def on_gpu(self) -> bool:
        """Whether searches run on the GPU (see :meth:`use_gpu`)."""
        return self._gpu_index is not None

    def use_gpu(self) -> NeighborIndex:
        """Search on every visible GPU from now on (faiss-gpu needed); returns ``self``."""
        self._require_built()
        if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
            raise LTAUInputError(
                "a GPU index needs faiss-gpu and a visible GPU; this FAISS sees "
                f"{faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0} GPUs "
                "(faiss-cpu searches on the CPU)"
            )
        if self.kind == "hnsw":
            raise LTAUInputError("FAISS has no GPU HNSW index: use the exact or ivfpq index")
        self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
        self._apply_search_params()
        return self

    def serialize(self) -> np.ndarray:
        """The index as a uint8 array (FAISS's own serialisation, no pickle)."""
        self._require_built()
        return faiss.serialize_index(self._index)

    @classmethod
    def deserialize(cls, kind: str, params: dict[str, int], data: np.ndarray) -> NeighborIndex:
        """Rebuild an index written by :meth:`serialize`, re-applying the search parameters."""
        neighbor_index = cls(kind, dict(params))
        try:
            neighbor_index._index = faiss.deserialize_index(np.ascontiguousarray(data, np.uint8))
        except RuntimeError as exc:
            raise LTAUInputError(f"the stored {kind} index could not be read: {exc}") from exc
        neighbor_index._apply_search_params()
        return neighbor_index

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.params["ef_search"]
        elif self.kind == "ivfpq":
            for index in (self._index, self._gpu_index):
                if index is not None:
                    index.nprobe = self.params["nprobe"]

    def _require_built(self) -> None:
        if self._index is None:
            raise LTAUInputError("the index has not been built; call build(descriptors) first")
