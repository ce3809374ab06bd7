"""HDF5 plumbing shared by every ltau file: atomic writes and checked opening.

Every ltau file is HDF5 with root attributes ``format`` (what it is) and ``format_version``;
nothing is pickled. Arrays and the attributes that matter carry SHA-256 digests, verified on
read, so that corruption is detected rather than silently changing results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ltau._version import __version__
from ltau.exceptions import LTAUFileError, LTAUInputError

FORMAT_VERSIONS = {"ltau-estimator": 2, "ltau-distributions": 1, "ltau-error-log": 1}


@contextlib.contextmanager
def reading(source: str | os.PathLike) -> Iterator[None]:
    """Turn any low-level failure while reading ``source`` into an :class:`LTAUFileError`."""
    try:
        yield
    except (LTAUFileError, LTAUInputError):
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise LTAUFileError(f"{source} is corrupted or unreadable: {exc}") from exc


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
def atomic_h5(
    path: str | os.PathLike, file_format: str, *, libver: str = "latest"
) -> Iterator[h5py.File]:
    """Write an ltau HDF5 file of ``file_format`` atomically (see :func:`atomic_path`).

    ``libver="latest"`` gives HDF5's checksummed internal structures, so damage to the file's
    metadata is detected quickly; the error log, reopened for writing after a crash, uses
    ``"earliest"``, which has no "open for writing" flag that a killed writer would leave set.
    """
    with atomic_path(path) as temporary, h5py.File(temporary, "w", libver=libver) as handle:
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
        if "unable to lock file" in str(exc):
            raise LTAUFileError(
                f"{source} is in use by another process (a writer has it open); open it when "
                "that process has finished"
            ) from exc
        raise LTAUFileError(
            f"{source} is not a readable {file_format} file (not HDF5, truncated or corrupted): {exc}"
        ) from exc
    except (KeyError, ValueError, RuntimeError) as exc:
        raise LTAUFileError(
            f"{source} is not a readable {file_format} file (not HDF5, truncated or corrupted): {exc}"
        ) from exc
    try:
        try:
            found = handle.attrs.get("format")
            version = int(handle.attrs.get("format_version", -1))
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise LTAUFileError(f"{source}: the file header is corrupted ({exc})") from exc
        if isinstance(found, bytes):
            found = found.decode()
        if found != file_format:
            what = f"a {found!r} file" if found else "not written by ltau"
            raise LTAUFileError(f"{source} is {what}; expected an {file_format} file")
        supported = FORMAT_VERSIONS[file_format]
        if not 1 <= version <= supported:
            raise LTAUFileError(
                f"{source} has {file_format} format version {version}; this ltau reads up to "
                f"version {supported} (upgrade ltau to read it)"
            )
        refuse_outside_storage(handle, source)
    except BaseException:
        handle.close()
        raise
    return handle


def refuse_outside_storage(handle: h5py.File, source: str | os.PathLike) -> None:
    """Refuse a file whose objects live outside it: soft or external links, virtual datasets,
    or datasets in external raw files. ltau never writes these; following them would read
    other files (a FIFO among them hangs the reader)."""
    outside: list[str] = []
    damaged: list[str] = []

    def note(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
        # Nothing may raise inside HDF5's iteration: collect, then raise after it.
        if not isinstance(link, h5py.HardLink):
            outside.append(f"{name} is a {type(link).__name__}, which points outside the file")
            return
        try:
            item = handle.get(name)
            if isinstance(item, h5py.Dataset) and (item.is_virtual or item.external):
                outside.append(f"the dataset {name} keeps its data outside the file")
        except Exception as exc:  # reported below as damage
            damaged.append(f"{name} ({exc})")

    try:
        handle.visititems_links(note)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, SystemError) as exc:
        raise LTAUFileError(f"{source}: the file's structure is corrupted ({exc})") from exc
    if outside:
        raise LTAUFileError(
            f"{source}: {outside[0]} (virtual, external or linked storage); ltau files hold "
            "their data themselves"
        )
    if damaged:
        raise LTAUFileError(f"{source}: the file's structure is corrupted at {damaged[0]}")


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
    """Store ``data`` with its SHA-256 (verified on read; Fletcher-32 alone misses some
    corruptions) in a chunked dataset, gzip-compressed when large."""
    data = np.ascontiguousarray(data)
    compression = "gzip" if data.nbytes > (1 << 20) else None
    options = {"chunks": True, "compression": compression, "shuffle": bool(compression)}
    dataset = group.create_dataset(name, data=data, **(options if data.size else {}))
    dataset.attrs["sha256"] = _sha256(data)


def read_array(group: h5py.Group, name: str, source: str | os.PathLike) -> np.ndarray:
    """Read a dataset written by :func:`write_array`; a missing or damaged one is an error."""
    where = f"{group.name.rstrip('/')}/{name}"
    try:
        if name not in group:
            raise LTAUFileError(f"{source} is missing {where}")
        dataset = group[name]
        data = dataset[()]
        stored = dataset.attrs.get("sha256")
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise LTAUFileError(f"{source}: {where} is corrupted ({exc})") from exc
    if stored is None:
        raise LTAUFileError(f"{source}: {where} has no checksum")
    if isinstance(stored, bytes):
        stored = stored.decode()
    if _sha256(np.ascontiguousarray(data)) != stored:
        raise LTAUFileError(f"{source}: {where} is corrupted (checksum mismatch)")
    return data


def sign_attributes(node: h5py.Group, names: Sequence[str]) -> None:
    """Store a SHA-256 over the attributes ``names`` of ``node`` (see :func:`read_attributes`)."""
    node.attrs["attributes_sha256"] = _attributes_digest({name: node.attrs[name] for name in names})


def read_attributes(
    node: h5py.Group, names: Sequence[str], source: str | os.PathLike
) -> dict[str, object]:
    """The attributes ``names`` of ``node``, checked against :func:`sign_attributes`."""
    try:
        values = {name: node.attrs[name] for name in names}
        stored = node.attrs["attributes_sha256"]
    except (KeyError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise LTAUFileError(
            f"{source}: attributes of {node.name} are missing or damaged ({exc})"
        ) from exc
    if isinstance(stored, bytes):
        stored = stored.decode()
    if _attributes_digest(values) != stored:
        raise LTAUFileError(
            f"{source}: attributes of {node.name} are corrupted (checksum mismatch)"
        )
    return {
        name: value.decode() if isinstance(value, bytes) else value
        for name, value in values.items()
    }


def _attributes_digest(values: dict[str, object]) -> str:
    canonical = {
        name: value.decode() if isinstance(value, bytes) else np.asarray(value).tolist()
        for name, value in sorted(values.items())
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _sha256(data: np.ndarray) -> str:
    digest = hashlib.sha256(str(data.dtype.str).encode() + str(data.shape).encode())
    digest.update(memoryview(data).cast("B") if data.size else b"")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks: the fingerprint of a training file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refuse_if_in_use(path: str | os.PathLike) -> None:
    """Raise if another process has the HDF5 file at ``path`` open for writing (HDF5 holds a
    lock on it), before that file is replaced."""
    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        if "unable to lock file" in str(exc):
            raise LTAUFileError(
                f"{path} is in use by another process (a writer has it open); it is not replaced"
            ) from exc


def inode(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path``, None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino
