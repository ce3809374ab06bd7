"""The neighbour index in its own file beside the estimator, and its integrity check.

An estimator saved with a separate index file (``LTAUEstimator.save(..., index_file=True)``, or
by default above :data:`INDEX_FILE_MIN_ITEMS` items) keeps its FAISS index in
``<estimator file>.faiss``: FAISS's own serialisation (no pickle), then a trailer of
:data:`TRAILER_SIZE` bytes: the magic ``\\x89LTAUIX\\n``, a random 16-byte token and the length
of the FAISS bytes (uint64, big-endian). The estimator file records an :class:`IndexFileRecord`:
the file's name, size, token, the SHA-256 of all its bytes and of :data:`SAMPLED_BLOCKS`
blocks of :data:`BLOCK_BYTES` at offsets drawn from the token (the first and last block
always among them).

:func:`check_index_file` refuses a missing, truncated, foreign or other estimator's file with an
:class:`~ltau.exceptions.LTAUFileError`. Its quick check reads the trailer and the sampled blocks
(at most ``SAMPLED_BLOCKS * BLOCK_BYTES`` = 1 MiB whatever the index size), so a memory-mapped
load does not read the whole index; ``full=True`` hashes every byte (``ltau describe`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltau._io import atomic_path
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.search import NeighborIndex

INDEX_FILE_SUFFIX = ".faiss"
INDEX_FILE_MIN_ITEMS = 1_000_000
"""``save(index_file=None)`` writes a separate index file for indices of this many items on."""
SAMPLED_BLOCKS = 16
BLOCK_BYTES = 1 << 16
_MAGIC = b"\x89LTAUIX\n"
_TRAILER = struct.Struct(">8s16sQ")
TRAILER_SIZE = _TRAILER.size
_READ_BYTES = 1 << 22


@dataclass(frozen=True)
class IndexFileRecord:
    """What the estimator file knows of its index file (sizes in bytes, digests hex SHA-256).

    ``name``: the file name, beside the estimator file; ``blocks``: ``(offset, digest)`` of
    each sampled block of :data:`BLOCK_BYTES` (shorter at the end of a small file).
    """

    name: str
    size: int
    token: str
    sha256: str
    blocks: tuple[tuple[int, str], ...]

    def to_json(self) -> str:
        """The record as JSON (stored as an attribute of the estimator file)."""
        return json.dumps(
            {
                "name": self.name,
                "size": self.size,
                "token": self.token,
                "sha256": self.sha256,
                "blocks": [list(block) for block in self.blocks],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> IndexFileRecord:
        """Inverse of :meth:`to_json`; a malformed record is an :class:`LTAUInputError`."""
        try:
            raw = json.loads(text)
            record = cls(
                name=str(raw["name"]),
                size=int(raw["size"]),
                token=str(raw["token"]),
                sha256=str(raw["sha256"]),
                blocks=tuple((int(offset), str(digest)) for offset, digest in raw["blocks"]),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise LTAUInputError(f"the index file record is malformed: {exc}") from exc
        if Path(record.name).name != record.name or not record.name:
            raise LTAUInputError(f"the index file name {record.name!r} is not a plain file name")
        return record


def index_file_path(estimator_path: str | os.PathLike) -> Path:
    """The index file that belongs beside the estimator file ``estimator_path``."""
    path = Path(estimator_path)
    return path.with_name(path.name + INDEX_FILE_SUFFIX)


def write_index_file(neighbor_index: NeighborIndex, path: str | os.PathLike) -> IndexFileRecord:
    """Write ``neighbor_index`` to ``path`` atomically with a new token; return its record."""
    token = secrets.token_bytes(16)
    target = Path(path)
    with atomic_path(target) as temporary:
        neighbor_index.write(temporary)
        length = temporary.stat().st_size
        with open(temporary, "ab") as handle:
            handle.write(_TRAILER.pack(_MAGIC, token, length))
        size = temporary.stat().st_size
        with open(temporary, "rb") as handle:
            sha256 = _file_digest(handle)
            blocks = tuple(
                (offset, _block_digest(handle, offset)) for offset in _offsets(token, size)
            )
    return IndexFileRecord(target.name, size, token.hex(), sha256, blocks)


def check_index_file(path: str | os.PathLike, record: IndexFileRecord, full: bool = False) -> None:
    """Refuse an index file at ``path`` that is not the one ``record`` describes.

    Quick (default): its size, trailer and sampled blocks; ``full``: also every byte's SHA-256.
    """
    source = Path(path)
    if not source.is_file():
        raise LTAUFileError(
            f"the estimator's index file {source} is missing: it is saved beside the "
            "estimator file; keep the two together"
        )
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            trailer = b""
            if size >= TRAILER_SIZE:
                handle.seek(size - TRAILER_SIZE)
                trailer = handle.read(TRAILER_SIZE)
            magic, token, length = (
                _TRAILER.unpack(trailer) if len(trailer) == TRAILER_SIZE else (b"", b"", 0)
            )
            if magic != _MAGIC or length != size - TRAILER_SIZE:
                if size < record.size:
                    raise LTAUFileError(
                        f"{source} is truncated or another file: {size} bytes without the ltau "
                        f"trailer, {record.size} were written"
                    )
                raise LTAUFileError(f"{source} is not an ltau index file (no ltau trailer)")
            if token.hex() != record.token:
                raise LTAUFileError(
                    f"{source} belongs to another estimator (its token differs from the one the "
                    "estimator file records): save the estimator again to pair them"
                )
            if size != record.size:
                raise LTAUFileError(
                    f"{source} has {size} bytes but the estimator file records {record.size}"
                )
            for offset, digest in record.blocks:
                if _block_digest(handle, offset) != digest:
                    raise LTAUFileError(
                        f"{source} is corrupted: the block at byte {offset} fails its SHA-256"
                    )
            if full:
                handle.seek(0)
                if _file_digest(handle) != record.sha256:
                    raise LTAUFileError(f"{source} is corrupted: its SHA-256 differs")
    except OSError as exc:
        raise LTAUFileError(f"{source} cannot be read: {exc}") from exc


def read_index_file(
    path: str | os.PathLike,
    record: IndexFileRecord,
    kind: str,
    params: dict[str, int],
    *,
    mmap: bool = True,
    full: bool = False,
) -> NeighborIndex:
    """The index of ``kind`` / ``params`` in the file at ``path``, after
    :func:`check_index_file`; ``mmap``: memory-map its inverted lists (IVF kinds)."""
    check_index_file(path, record, full)
    try:
        return NeighborIndex.read(kind, params, path, mmap=mmap)
    except LTAUInputError as exc:
        raise LTAUFileError(str(exc)) from exc


def _offsets(token: bytes, size: int) -> list[int]:
    """The sampled block offsets of a file of ``size`` bytes, drawn from ``token``."""
    last = max(size - BLOCK_BYTES, 0)
    drawn = np.random.default_rng(int.from_bytes(token, "big")).integers(
        0, last + 1, SAMPLED_BLOCKS - 2
    )
    return sorted({0, last, *(int(offset) for offset in drawn)})


def _block_digest(handle, offset: int) -> str:
    handle.seek(offset)
    return hashlib.sha256(handle.read(BLOCK_BYTES)).hexdigest()


def _file_digest(handle) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(_READ_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()
