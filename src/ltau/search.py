"""Nearest-neighbour search over training descriptors, with FAISS, behind one small interface.

Index kinds and their parameters (every one is applied; unknown names are an error):

* ``exact``: brute-force L2 (``faiss.IndexFlatL2``). No parameters.
* ``hnsw``: graph search (``faiss.IndexHNSWFlat``). ``M`` (links per node, 32),
  ``ef_construction`` (200), ``ef_search`` (64; must be >= k for good recall).
* ``ivfpq``: inverted file with product quantisation (``faiss.IndexIVFPQ`` over a flat coarse
  quantiser). ``nlist`` (cells, 256), ``m`` (sub-quantisers; must divide the descriptor size,
  8), ``nbits`` (bits per code, 8), ``nprobe`` (cells visited per query, 16).
* ``opq``: ``ivfpq`` after an OPQ rotation learnt to balance the sub-quantisers
  (``faiss.index_factory("OPQ{m},IVF{nlist},PQ{m}x{nbits}")``). Same parameters as ``ivfpq``.
* ``ivfsq``: inverted file with an 8-bit scalar quantiser per feature
  (``faiss.index_factory("IVF{nlist},SQ8")``, ``dim`` bytes per item). ``nlist`` (256),
  ``nprobe`` (16).

The compressed kinds (``ivfpq``, ``opq``, ``ivfsq``) store per item its code (``m`` bytes at
8 bits, or ``dim`` bytes for ``ivfsq``) plus an 8-byte id; ``docs/scale.md`` gives the measured
recall of each. :meth:`NeighborIndex.write` / :meth:`NeighborIndex.read` keep an index in its
own file; read with ``mmap=True``, the inverted lists of the IVF kinds are memory-mapped
(FAISS ``IO_FLAG_MMAP``: ``OnDiskInvertedLists`` over the file) rather than read into memory.

``auto`` is not an index but a rule applied when an estimator is fitted
(:func:`index_kind_for`): ``exact`` for at most :data:`AUTO_EXACT_LIMIT` training items,
else ``hnsw`` with its defaults. The limit is where, measured on this project's machine (one
FAISS thread, 64-d descriptors, 15 queries as in one MD step of a small molecule), the exact
search became slower than HNSW's: 207 µs against 331 µs at 3000 items, 691 µs against 380 µs
at 10 000, 10.4 ms against 1.5 ms at 100 000 (recall@10 of HNSW 1.0 throughout;
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
import os
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
    "opq": {"nlist": 256, "m": 8, "nbits": 8, "nprobe": 16},
    "ivfsq": {"nlist": 256, "nprobe": 16},
}
IVF_KINDS = frozenset({"ivfpq", "opq", "ivfsq"})
"""Kinds with inverted lists: ``nprobe`` applies and their lists can be memory-mapped."""
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
        dim = data.shape[1]
        if self.kind == "exact":
            index = faiss.IndexFlatL2(dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, self.params["M"])
            index.hnsw.efConstruction = self.params["ef_construction"]
        else:
            index = self._trained_ivf(data)
        index.add(data)
        self._index = index
        self._apply_search_params()
        return self

    def _trained_ivf(self, data: np.ndarray) -> Any:
        """A new IVF index of this kind trained on ``data`` ``(n_items, dim)``."""
        n_items, dim = data.shape
        nlist = self.params["nlist"]
        codebook = 0
        if self.kind == "ivfsq":
            factory = f"IVF{nlist},SQ8"
        else:
            m, nbits = self.params["m"], self.params["nbits"]
            if dim % m:
                raise LTAUInputError(f"{self.kind}: m={m} must divide the descriptor size {dim}")
            codebook = 2**nbits
            factory = f"IVF{nlist},PQ{m}x{nbits}"
            if self.kind == "opq":
                factory = f"OPQ{m},{factory}"
        if n_items < max(nlist, codebook):
            raise LTAUInputError(
                f"{self.kind}: {n_items} descriptors are too few to train nlist={nlist} cells"
                + (f" and {codebook}-entry codebooks" if codebook else "")
                + "; use fewer cells/bits or the exact index"
            )
        if self.kind == "ivfpq":
            index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, nbits)
        else:
            index = faiss.index_factory(dim, factory)
        index.train(data)
        return index

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
        with self._lists_in_memory() as index:
            return faiss.serialize_index(index)

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

    def write(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` in FAISS's own format (no pickle), for :meth:`read`."""
        with self._lists_in_memory() as index:
            faiss.write_index(index, os.fspath(path))

    @classmethod
    def read(
        cls, kind: str, params: dict[str, int], path: str | os.PathLike, *, mmap: bool = True
    ) -> NeighborIndex:
        """Read an index written by :meth:`write`, re-applying the search parameters.

        ``mmap``: memory-map the inverted lists of an IVF kind instead of reading them (the
        file must then stay in place while the index is used). Bytes after FAISS's own are
        ignored.
        """
        neighbor_index = cls(kind, dict(params))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            neighbor_index._index = faiss.read_index(os.fspath(path), flags)
        except RuntimeError as exc:
            raise LTAUInputError(f"the {kind} index in {path} could not be read: {exc}") from exc
        neighbor_index._apply_search_params()
        return neighbor_index

    @property
    def memory_mapped(self) -> bool:
        """Whether the inverted lists are memory-mapped from a file (see :meth:`read`)."""
        self._require_built()
        if self.kind not in IVF_KINDS:
            return False
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(self._index).invlists)
        return isinstance(lists, faiss.OnDiskInvertedLists)

    @contextlib.contextmanager
    def _lists_in_memory(self) -> Iterator[Any]:
        """The CPU index, inside the block with memory-mapped inverted lists swapped for an
        in-memory copy: FAISS would write a reference to the mapped file instead of the lists."""
        self._require_built()
        if not self.memory_mapped:
            yield self._index
            return
        ivf = faiss.extract_index_ivf(self._index)
        mapped = ivf.invlists
        copy = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        for number in range(ivf.nlist):
            size = mapped.list_size(number)
            if size:
                copy.add_entries(number, size, mapped.get_ids(number), mapped.get_codes(number))
        ivf.own_invlists = False
        ivf.replace_invlists(copy, False)
        try:
            yield self._index
        finally:
            ivf.replace_invlists(mapped, True)

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.params["ef_search"]
        elif self.kind in IVF_KINDS:
            for index in (self._index, self._gpu_index):
                if index is not None:
                    faiss.ParameterSpace().set_index_parameter(
                        index, "nprobe", self.params["nprobe"]
                    )

    def _require_built(self) -> None:
        if self._index is None:
            raise LTAUInputError("the index has not been built; call build(descriptors) first")
