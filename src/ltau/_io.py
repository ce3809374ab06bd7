"""HDF5 plumbing shared by every ltau file: atomic writes and checked opening.

Every ltau file is HDF5 with root attributes ``format`` (what it is) and ``format_version``;
nothing is pickled. Datasets carry Fletcher-32 checksums so that corruption is detected on read.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ltau import __version__
from ltau.exceptions import LTAUFileError

FORMAT_VERSIONS = {"ltau-estimator": 1, "ltau-distributions": 1, "ltau-error-log": 1}


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output path that is a directory or whose directory does not exist."""
    target = Path(path)
    if target.is_dir():
        raise LTAUFileError(f"{target} is a directory, not a file path")
    if not target.parent.exists():
        raise LTAUFileError(f"directory {target.parent} does not exist")
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Readers of ``path`` see either the old content or the complete new one; on failure the
    temporary file is removed and ``path`` is untouched.
    """
    target = check_output_path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(descriptor)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())
        yield Path(temporary)
        with open(temporary, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, file_format: str) -> Iterator[h5py.File]:
    """Write an ltau HDF5 file of ``file_format`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        handle.attrs["format"] = file_format
        handle.attrs["format_version"] = FORMAT_VERSIONS[file_format]
        handle.attrs["ltau_version"] = __version__
        yield handle


def open_checked(path: str | os.PathLike, file_format: str, mode: str = "r") -> h5py.File:
    """Open an ltau file, refusing missing, unreadable, foreign or too-new files clearly."""
    source = Path(path)
    if not source.exists():
        raise LTAUFileError(f"{source} does not exist")
    try:
        handle = h5py.File(source, mode)
    except OSError as exc:
        raise LTAUFileError(
            f"{source} is not a readable {file_format} file (not HDF5, truncated or corrupted): {exc}"
        ) from exc
    try:
        found = handle.attrs.get("format")
        if isinstance(found, bytes):
            found = found.decode()
        if found != file_format:
            what = f"a {found!r} file" if found else "not written by ltau"
            raise LTAUFileError(f"{source} is {what}; expected an {file_format} file")
        version = int(handle.attrs.get("format_version", -1))
        supported = FORMAT_VERSIONS[file_format]
        if not 1 <= version <= supported:
            raise LTAUFileError(
                f"{source} has {file_format} format version {version}; this ltau reads up to "
                f"version {supported} (upgrade ltau to read it)"
            )
    except BaseException:
        handle.close()
        raise
    return handle


def file_format(path: str | os.PathLike) -> str:
    """The kind of ltau file at ``path`` (one of ``FORMAT_VERSIONS``), for ``ltau describe``."""
    source = Path(path)
    if not source.exists():
        raise LTAUFileError(f"{source} does not exist")
    try:
        with h5py.File(source, "r") as handle:
            found = handle.attrs.get("format")
    except OSError as exc:
        raise LTAUFileError(
            f"{source} is not a readable ltau file (not HDF5, truncated or corrupted)"
        ) from exc
    if isinstance(found, bytes):
        found = found.decode()
    if found not in FORMAT_VERSIONS:
        raise LTAUFileError(f"{source} was not written by ltau (no known 'format' attribute)")
    return found


def write_array(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """Store ``data`` with a checksum (chunked, Fletcher-32, gzip for large arrays)."""
    data = np.ascontiguousarray(data)
    if data.size == 0:
        group.create_dataset(name, data=data)
        return
    compression = "gzip" if data.nbytes > (1 << 20) else None
    group.create_dataset(
        name,
        data=data,
        fletcher32=True,
        chunks=True,
        compression=compression,
        shuffle=bool(compression),
    )


def read_array(group: h5py.Group, name: str, source: str | os.PathLike) -> np.ndarray:
    """Read a dataset, turning a missing name or a failed checksum into a clear error."""
    if name not in group:
        raise LTAUFileError(f"{source} is missing {group.name.rstrip('/')}/{name}")
    try:
        return group[name][()]
    except OSError as exc:
        raise LTAUFileError(f"{source}: {group.name}/{name} is corrupted ({exc})") from exc
