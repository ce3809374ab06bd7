"""HDF5 plumbing shared by every ltau file: atomic writes, seals and checked opening.

Every ltau file is HDF5 with root attributes ``format`` (what it is) and ``format_version``;
nothing is pickled. Arrays and the attributes that matter carry SHA-256 digests, verified on
read, so that corruption is detected rather than silently changing results.

Each file starts with a 512-byte HDF5 user block that holds its *seal*: a small header with
the format, the length and the SHA-256 of every byte after the user block. The seal is checked
before HDF5 parses anything, so a damaged file is refused in the time it takes to hash it
(HDF5 can spin forever on some damaged files). A file that cannot be checked that way (an
older version without a seal, or an error log whose writer was killed while it was adding an
epoch) is first parsed in a child process that is killed if it does not finish in time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ltau._version import __version__
from ltau.exceptions import LTAUFileError, LTAUInputError

logger = logging.getLogger(__name__)

FORMAT_VERSIONS = {
    "ltau-estimator": 3,
    "ltau-distributions": 2,
    "ltau-error-log": 2,
    "ltau-error-log-manifest": 1,
}
# The first version of each format that is sealed; older ones are read through the bounded path.
SEALED_SINCE = {
    "ltau-estimator": 3,
    "ltau-distributions": 2,
    "ltau-error-log": 2,
    "ltau-error-log-manifest": 1,
}
# Formats changed in place after they are written (the seal is re-written after each change).
_CHANGED_IN_PLACE = {"ltau-error-log"}

USERBLOCK_SIZE = 512
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SEAL_MAGIC = b"\x89LTAU\r\n\x1a"
# magic, seal version, state (0 sealed, 1 changing), format, payload length, payload SHA-256;
# followed by the SHA-256 of those bytes.
_SEAL = struct.Struct(">8sHB32sQ32s")
_SEAL_VERSION = 1
_SEALED, _CHANGING = 0, 1
_BLOCK = 1 << 22
# A child process parsing an unsealed file gets this long, plus 1 s per 50 MB of file.
BOUNDED_PARSE_SECONDS = 10.0
_TEMPORARY_MARK = ".ltau-tmp."
_TEMPORARY_LETTERS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


@contextlib.contextmanager
def reading(source: str | os.PathLike) -> Iterator[None]:
    """Turn any low-level failure while reading ``source`` into an :class:`LTAUFileError`."""
    try:
        yield
    except (LTAUFileError, LTAUInputError):
        raise
    except (
        OSError,
        KeyError,
        RuntimeError,
        ValueError,
        TypeError,
        IndexError,
        AttributeError,  # an object of another kind (a group or datatype for a dataset)
    ) as exc:
        raise LTAUFileError(f"{source} is corrupted or unreadable: {exc}") from exc


def check_output_path(path: str | os.PathLike) -> Path:
    """Refuse an output path that is a directory or whose directory does not exist."""
    target = Path(path)
    if target.is_dir():
        raise LTAUFileError(f"{target} is a directory, not a file path")
    if not target.parent.exists():
        raise LTAUFileError(f"directory {target.parent} does not exist")
    return target


# ------------------------------------------------------------------ temporary files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Readers of ``path`` see either the old content or the complete new one; on failure the
    temporary file is removed and ``path`` is untouched. The temporary file
    (``.<name>.ltau-tmp.XXXXXXXX``) is locked while its writer lives, so that one left by a
    killed writer is told apart from a concurrent writer's and removed by the next save or load
    of ``path`` (see :func:`sweep_temporaries`).
    """
    target = check_output_path(path)
    sweep_temporaries(target)
    descriptor, temporary = _locked_temporary(target)
    try:
        os.chmod(temporary, 0o666 & ~_current_umask())
        yield temporary
        with open(temporary, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    finally:
        os.close(descriptor)  # releases the lock


def _locked_temporary(target: Path) -> tuple[int, Path]:
    """Create and lock (``flock``) a new temporary file beside ``target``."""
    while True:
        try:
            descriptor, name = tempfile.mkstemp(
                prefix=f".{target.name}{_TEMPORARY_MARK}", dir=target.parent
            )
        except OSError as exc:
            raise LTAUFileError(
                f"cannot write {target.name} in the directory {target.parent} "
                f"({exc.strerror or exc})"
            ) from exc
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        # A sweep may have taken the file for an orphan between its creation and the lock.
        if _same_file(descriptor, name):
            return descriptor, Path(name)
        os.close(descriptor)


def _same_file(descriptor: int, path: str | os.PathLike) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def sweep_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left beside it; return them.

    Only ltau's own temporaries of this target (``.<name>.ltau-tmp.XXXXXXXX``) whose lock is
    free, i.e. whose writer is gone, are removed; a live writer's are left alone. A directory
    that cannot be listed or written is left as it is.
    """
    target = Path(path)
    prefix = f".{target.name}{_TEMPORARY_MARK}"
    removed = []
    try:
        entries = [entry.name for entry in os.scandir(target.parent)]
    except OSError:
        return removed
    for name in entries:
        suffix = name[len(prefix) :]
        if not name.startswith(prefix) or len(suffix) != 8 or set(suffix) - _TEMPORARY_LETTERS:
            continue
        candidate = target.parent / name
        try:
            descriptor = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(descriptor, candidate):
                os.unlink(candidate)
                removed.append(candidate)
                logger.info("removed %s, left by a writer of %s that was killed", name, target)
        except OSError:
            pass  # a live writer holds it, or the directory is read-only
        finally:
            os.close(descriptor)
    return removed


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- seals


def _payload_digest(descriptor: int, length: int) -> bytes:
    """SHA-256 of the ``length`` bytes after the user block of the open file ``descriptor``."""
    digest = hashlib.sha256()
    offset = USERBLOCK_SIZE
    end = USERBLOCK_SIZE + length
    while offset < end:
        block = os.pread(descriptor, min(_BLOCK, end - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return digest.digest()


def _write_seal(descriptor: int, file_format: str, state: int = _SEALED) -> None:
    """Write the seal of the open file ``descriptor`` into its user block. A seal marked
    "changing" keeps the length of the last sealed state (see :func:`changing`)."""
    if state == _SEALED:
        length = os.fstat(descriptor).st_size - USERBLOCK_SIZE
        payload = _payload_digest(descriptor, length)
    else:
        length, payload = _sealed_length(descriptor), bytes(32)
    fields = _SEAL.pack(_SEAL_MAGIC, _SEAL_VERSION, state, file_format.encode(), length, payload)
    os.pwrite(descriptor, fields + hashlib.sha256(fields).digest(), 0)


def _sealed_length(descriptor: int) -> int:
    """Payload length of the file ``descriptor`` when it was last sealed (0 if unknown)."""
    found = _read_seal(os.pread(descriptor, _SEAL.size + 32, 0))
    return 0 if found is None else found[2]


def _read_seal(head: bytes) -> tuple[int, str, int, bytes] | None:
    """``(state, format, payload length, payload SHA-256)`` of an intact seal, else None."""
    end = _SEAL.size + 32
    if len(head) < end or not head.startswith(_SEAL_MAGIC):
        return None
    fields = head[: _SEAL.size]
    if hashlib.sha256(fields).digest() != head[_SEAL.size : end]:
        return None
    _, version, state, name, length, payload = _SEAL.unpack(fields)
    if version != _SEAL_VERSION or state not in (_SEALED, _CHANGING):
        return None
    return state, name.rstrip(b"\0").decode("ascii", "replace"), length, payload


@contextlib.contextmanager
def changing(handle: h5py.File, *, seal_growth: float = 0.0) -> Iterator[None]:
    """Change a sealed file open for writing: mark its seal "changing", yield, flush the file
    and seal it again.

    A writer killed inside leaves a file marked changing, which is read through the bounded
    path. Sealing hashes the whole file, so with ``seal_growth`` > 0 the file is sealed again
    only once it has grown by that fraction since it was last sealed; until then it stays
    marked changing (:func:`close_sealed` seals it). Hashing then costs
    ``O(bytes added x (1 + 1 / seal_growth))`` in all, not ``O(file size)`` per change.
    """
    descriptor = handle.id.get_vfd_handle()
    if not _has_seal(descriptor):
        yield
        handle.flush()
        return
    file_format = _text(handle.attrs["format"])
    _write_seal(descriptor, file_format, _CHANGING)
    yield
    handle.flush()
    size = os.fstat(descriptor).st_size - USERBLOCK_SIZE
    if size >= (1.0 + seal_growth) * _sealed_length(descriptor):
        _write_seal(descriptor, file_format)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def atomic_h5(
    path: str | os.PathLike, file_format: str, *, libver: str = "latest"
) -> Iterator[h5py.File]:
    """Write a sealed ltau HDF5 file of ``file_format`` atomically (see :func:`atomic_path`).

    ``libver="latest"`` gives HDF5's checksummed internal structures; the error log, reopened
    for writing after a crash, uses ``"earliest"``, which has no "open for writing" flag that a
    killed writer would leave set. The file gets a user block of :data:`USERBLOCK_SIZE` bytes,
    where its seal is written once HDF5 has closed it.
    """
    with atomic_path(path) as temporary:
        # No HDF5 lock on the temporary: atomic_path holds its own (flock) on it.
        options = {"libver": libver, "userblock_size": USERBLOCK_SIZE, "locking": False}
        with h5py.File(temporary, "w", **options) as handle:
            handle.attrs["format"] = file_format
            handle.attrs["format_version"] = FORMAT_VERSIONS[file_format]
            handle.attrs["ltau_version"] = __version__
            yield handle
        seal(temporary, file_format)


def seal(path: str | os.PathLike, file_format: str) -> None:
    """Seal the closed HDF5 file at ``path`` (written with a user block) as ``file_format``."""
    descriptor = os.open(path, os.O_RDWR)
    try:
        _write_seal(descriptor, file_format)
    finally:
        os.close(descriptor)


def _verify_seal(descriptor: int, source: Path, file_format: str | None) -> tuple[str, str | None]:
    """Check the bytes of ``source`` against its seal before HDF5 parses any of them.

    Returns the status and the format the seal names (None without an intact seal). Status:
    ``"sealed"`` (every byte matches), ``"unsealed"`` (no user block: a version from before
    seals, or a file not written by ltau) or ``"unverified"`` (an error log whose writer was
    killed while adding an epoch, or whose seal is damaged); the last two must be parsed
    through :func:`_parse_bounded`. Certain damage raises :class:`LTAUFileError`.
    """
    what = file_format or "ltau"
    head = os.pread(descriptor, USERBLOCK_SIZE + len(_HDF5_SIGNATURE), 0)
    if head.startswith(_HDF5_SIGNATURE):
        return "unsealed", None
    found = _read_seal(head)
    lenient = file_format is None or file_format in _CHANGED_IN_PLACE
    if found is None:
        if head[USERBLOCK_SIZE:] != _HDF5_SIGNATURE:
            raise LTAUFileError(
                f"{source} is not a readable {what} file (not HDF5, truncated or corrupted)"
            )
        if lenient:
            return "unverified", None
        raise LTAUFileError(
            f"{source} is corrupted: its seal (the ltau header in its first {USERBLOCK_SIZE} "
            "bytes) is damaged"
        )
    state, name, length, payload = found
    if file_format is not None and name != file_format:
        raise LTAUFileError(f"{source} is a {name!r} file; expected an {file_format} file")
    if state == _CHANGING:
        if name in _CHANGED_IN_PLACE:
            return "unverified", name
        raise LTAUFileError(f"{source} is corrupted: its seal says it is still being written")
    size = os.fstat(descriptor).st_size - USERBLOCK_SIZE
    if size != length:
        raise LTAUFileError(
            f"{source} is truncated or corrupted: it holds {size} bytes after its header, "
            f"its seal says {length}"
        )
    if _payload_digest(descriptor, length) != payload:
        raise LTAUFileError(
            f"{source} is corrupted: its bytes do not match the SHA-256 in its seal"
        )
    return "sealed", name


def _parse_bounded(source: Path, what: str) -> None:
    """Parse every object of ``source`` in a child process, killed if it takes longer than
    :data:`BOUNDED_PARSE_SECONDS` (plus 1 s per 50 MB) or crashes: HDF5 can spin forever or
    crash on damaged files that no seal vouches for."""
    seconds = BOUNDED_PARSE_SECONDS + source.stat().st_size / 50e6
    command = [sys.executable, "-c", _WALK.read_text(), str(source)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as exc:
        raise LTAUFileError(
            f"{source} is corrupted: HDF5 did not finish parsing it within {seconds:.0f} s"
        ) from exc
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"the parser ended with status {result.returncode}"
        if "unable to lock file" in reason:
            raise _in_use(source)
        raise LTAUFileError(
            f"{source} is not a readable {what} file (not HDF5, truncated or corrupted): {reason}"
        )


_WALK = Path(__file__).with_name("_walk.py")


def _in_use(
    source: str | os.PathLike, consequence: str = "open it when that process has finished"
) -> LTAUFileError:
    return LTAUFileError(
        f"{source} is in use by another process (HDF5's lock on it is held); {consequence}"
    )


def _refuse_if_locked(
    descriptor: int,
    source: str | os.PathLike,
    consequence: str = "open it when that process has finished",
    *,
    exclusive: bool = False,
) -> None:
    """Raise if another process holds HDF5's lock (``flock``) on the open file ``descriptor``:
    a writer's, or with ``exclusive`` (before writing) any reader's too."""
    try:
        fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _in_use(source, consequence) from exc
        return  # a file system without locks: HDF5 opens it without them too
    fcntl.flock(descriptor, fcntl.LOCK_UN)


def open_checked(path: str | os.PathLike, file_format: str, mode: str = "r") -> h5py.File:
    """Open an ltau file, refusing missing, unreadable, foreign, damaged or too-new files
    clearly and in bounded time (the seal first; see the module docstring).

    ``mode="r+"`` (an error log to append to) checks the file read-only first, then reopens it
    for writing and seals it again at once (HDF5 changes a file it opens for writing); close
    such a handle with :func:`close_sealed`.
    """
    source = Path(path)
    if not source.exists():
        raise LTAUFileError(f"{source} does not exist")
    sweep_temporaries(source)
    descriptor = _open_regular(source)
    try:
        status, _ = _inspect(descriptor, source, file_format)
        if status in ("unsealed", "unverified"):
            _parse_bounded(source, file_format)
        if status == "unverified":
            logger.warning(
                "%s: its seal does not vouch for it (its writer was killed while adding epochs, "
                "or the seal is damaged); it was parsed in bounded time and each epoch row is "
                "checked against its own digest",
                source,
            )
        handle = _open_hdf5(source, file_format, "r", descriptor)
        try:
            _check_header(handle, source, file_format, status)
        finally:
            if mode != "r":
                handle.close()
        if mode != "r":
            handle = _open_for_writing(source, file_format, descriptor, status == "sealed")
    finally:
        os.close(descriptor)
    return handle


def _inspect(descriptor: int, source: Path, file_format: str | None) -> tuple[str, str | None]:
    """Status and sealed format of the open file ``descriptor`` (see :func:`_verify_seal`);
    ``"open here"`` if this process's HDF5 already has it open (a recorder writing it): HDF5
    then shares that open file, which was checked when it was opened, and parses nothing."""
    opened = os.fstat(descriptor)
    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            other = os.fstat(file_id.get_vfd_handle())
        except (OSError, ValueError, RuntimeError, TypeError):
            continue  # a file without a descriptor (in memory, a Python file object)
        if (other.st_dev, other.st_ino) == (opened.st_dev, opened.st_ino):
            return "open here", None
    _refuse_if_locked(descriptor, source)
    return _verify_seal(descriptor, source, file_format)


def _open_regular(source: Path) -> int:
    """Open ``source`` read-only, refusing anything but a regular file (a FIFO would block)."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise LTAUFileError(f"{source} cannot be opened ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        what = "a directory" if source.is_dir() else "not a regular file"
        raise LTAUFileError(f"{source} is {what}")
    return descriptor


def _check_header(handle: h5py.File, source: Path, file_format: str, status: str) -> None:
    """Check the format, version and storage of an open ltau file (see :func:`open_checked`)."""
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
        if status == "unsealed" and version >= SEALED_SINCE[file_format]:
            raise LTAUFileError(
                f"{source} is corrupted: {file_format} version {version} files are sealed, "
                "and its seal is missing"
            )
        refuse_outside_storage(handle, source)
    except BaseException:
        handle.close()
        raise


def _open_for_writing(source: Path, file_format: str, descriptor: int, verified: bool) -> h5py.File:
    """Reopen the checked file ``descriptor`` for writing: marked "changing" while HDF5 opens
    it, sealed again once it is open. A version from before seals stays without one."""
    writable = os.open(source, os.O_RDWR)
    try:
        if not _same_descriptors(writable, descriptor):
            raise LTAUFileError(f"{source} was replaced while it was being opened; open it again")
        _refuse_if_locked(writable, source, exclusive=True)
        sealed = _has_seal(writable)
        if sealed:
            _write_seal(writable, file_format, _CHANGING)
        try:
            handle = _open_hdf5(source, file_format, "r+", descriptor)
        except BaseException:
            if sealed and verified:  # unchanged: its bytes are still those just verified
                _write_seal(writable, file_format)
            raise
        if sealed:
            handle.flush()
            _write_seal(writable, file_format)
    finally:
        os.close(writable)
    return handle


def _has_seal(descriptor: int) -> bool:
    """Whether the open HDF5 file ``descriptor`` has a user block for a seal (files of versions
    from before seals have none)."""
    return os.pread(descriptor, len(_HDF5_SIGNATURE), 0) != _HDF5_SIGNATURE


def _same_descriptors(first: int, second: int) -> bool:
    one, other = os.fstat(first), os.fstat(second)
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def close_sealed(handle: h5py.File) -> None:
    """Close a file opened with ``open_checked(..., mode="r+")`` and seal it again (HDF5
    changes the file as it closes it)."""
    if not handle.id.valid:
        return
    descriptor = os.dup(handle.id.get_vfd_handle())
    try:
        if not _has_seal(descriptor):
            handle.close()
            return
        file_format = _text(handle.attrs["format"])
        _write_seal(descriptor, file_format, _CHANGING)
        handle.close()
        _write_seal(descriptor, file_format)
    finally:
        os.close(descriptor)


def _open_hdf5(source: Path, file_format: str, mode: str, descriptor: int) -> h5py.File:
    """Open ``source`` with h5py, making sure it is still the file checked as ``descriptor``."""
    try:
        handle = h5py.File(source, mode)
    except OSError as exc:
        if "unable to lock file" in str(exc):
            raise _in_use(source) from exc
        raise LTAUFileError(
            f"{source} is not a readable {file_format} file (not HDF5, truncated or corrupted): {exc}"
        ) from exc
    except (KeyError, ValueError, RuntimeError) as exc:
        raise LTAUFileError(
            f"{source} is not a readable {file_format} file (not HDF5, truncated or corrupted): {exc}"
        ) from exc
    if not _same_descriptors(handle.id.get_vfd_handle(), descriptor):
        handle.close()
        raise LTAUFileError(f"{source} was replaced while it was being opened; open it again")
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
    """The kind of ltau file at ``path`` (one of ``FORMAT_VERSIONS``), for ``ltau describe``;
    read in bounded time as :func:`open_checked` does (which then checks the whole file)."""
    source = Path(path)
    if not source.exists():
        raise LTAUFileError(f"{source} does not exist")
    descriptor = _open_regular(source)
    try:
        status, found = _inspect(descriptor, source, None)
    finally:
        os.close(descriptor)
    if found is None:
        if status != "open here":
            _parse_bounded(source, "ltau")
        try:
            with h5py.File(source, "r") as handle:
                found = handle.attrs.get("format")
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise LTAUFileError(
                f"{source} is not a readable ltau file (not HDF5, truncated or corrupted): {exc}"
            ) from exc
        found = _text(found) if found is not None else None
    if found not in FORMAT_VERSIONS:
        raise LTAUFileError(f"{source} was not written by ltau (no known 'format' attribute)")
    return found


def sealed_format(path: str | os.PathLike) -> str | None:
    """The format named by the seal of the file at ``path``, None without an intact seal or
    file: a cheap first look to route a file to its reader, which then checks all of it."""
    try:
        descriptor = _open_regular(Path(path))
    except (LTAUFileError, OSError):
        return None
    try:
        found = _read_seal(os.pread(descriptor, _SEAL.size + 32, 0))
    finally:
        os.close(descriptor)
    return None if found is None else found[1]


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
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        _refuse_if_locked(descriptor, path, "it is not replaced")
    finally:
        os.close(descriptor)


def inode(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path``, None if there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino
