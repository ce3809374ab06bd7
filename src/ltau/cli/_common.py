"""Helpers shared by the subcommands: test-set options, numeric .npy input, CSV output,
NAME=VALUE pairs."""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltau._io import atomic_path, check_output_path
from ltau.exceptions import LTAUFileError, LTAUInputError


def add_test_set_options(parser: argparse.ArgumentParser) -> None:
    """``--test NAME=PATH`` (repeatable), ``--in-domain`` and the label keys of extxyz files."""
    parser.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="test extxyz, repeatable; sets without forces get OOD scores only",
    )
    parser.add_argument("--in-domain", help="name of the in-domain test set (default: the first)")
    parser.add_argument("--energy-key", default="REF_energy", help="info key of energies")
    parser.add_argument("--forces-key", default="REF_forces", help="arrays key of forces")


def input_file(path: Path) -> Path:
    """``path`` if it is a regular file (a directory or a FIFO, which would block reading,
    is refused)."""
    if not path.exists():
        raise LTAUFileError(f"{path} does not exist")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise LTAUFileError(f"{path} is {what}; expected a file")
    return path


def read_structure_file(path: Path) -> list:
    """Every structure of an ASE-readable file (``ase.io.read(path, index=":")``), refusing a
    missing, unreadable or empty file with a clear error."""
    import ase.io

    if not path.exists():
        raise LTAUFileError(f"{path} does not exist")
    try:
        structures = ase.io.read(path, index=":")
    except Exception as exc:
        raise LTAUFileError(f"{path} could not be read as structures: {exc}") from exc
    if not structures:
        raise LTAUInputError(f"{path} holds no structures")
    return structures


def writable_directory(path: Path) -> Path:
    """Refuse an output directory that cannot be created or written to, before any work; the
    directory itself is created later, by the command that fills it."""
    if path.exists() and not path.is_dir():
        raise LTAUFileError(f"{path} is a file, not a directory")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise LTAUFileError(f"{path} cannot be created: {existing} is a file")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".ltau-probe-", dir=existing)
    except OSError as exc:
        raise LTAUFileError(
            f"{path} cannot be written: {existing} is not writable ({exc.strerror})"
        ) from exc
    os.close(descriptor)
    os.unlink(probe)
    return path


def output_file(path: Path) -> Path:
    """Refuse, before any work, an output file path that is a directory, whose directory does
    not exist or cannot be written to."""
    check_output_path(path)
    writable_directory(path.parent)
    return path


def load_npy(path: Path) -> np.ndarray:
    """Load a numeric .npy array without pickle, with errors that name the file."""
    input_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise LTAUFileError(f"{path} is not a readable .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise LTAUFileError(f"{path} does not hold a numeric array")
    return array


def load_descriptors(path: Path, expected_model: str | None = None) -> np.ndarray:
    """Query descriptors from a .npy array or the .npz of ``ltau descriptors``; the latter's
    model fingerprint must equal ``expected_model`` (the estimator's) when both are known."""
    descriptors, found = read_descriptors(path)
    if expected_model and found and expected_model != found:
        raise LTAUInputError(
            f"{path} holds descriptors of another model (SHA-256 {found[:16]}...) than the "
            f"estimator was fitted on ({expected_model[:16]}...)"
        )
    return descriptors


def read_descriptors(path: Path) -> tuple[np.ndarray, str | None]:
    """Descriptors from a .npy array or the .npz of ``ltau descriptors``, and the SHA-256 of
    the model that computed them (None when the file does not say)."""
    if path.suffix.lower() != ".npz":
        return load_npy(path), None
    input_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            descriptors = archive["descriptors"]
            found = str(archive["model_sha256"]) if "model_sha256" in archive else None
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise LTAUFileError(
            f"{path} is not a descriptors archive of 'ltau descriptors': {exc}"
        ) from exc
    return descriptors, found


def write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write named columns of equal length as a CSV file with a header row, atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*(values.tolist() for values in columns.values()), strict=True))


def pairs(items: Sequence[str]) -> dict[str, str]:
    result = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not name:
            raise LTAUInputError(f"expected NAME=VALUE; got {item!r}")
        result[name] = value
    return result


def int_value(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise LTAUInputError(f"index parameter {name} must be an integer; got {value!r}") from exc
