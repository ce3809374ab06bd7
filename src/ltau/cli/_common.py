"""Helpers shared by the subcommands: test-set options, numeric .npy input, CSV output,
NAME=VALUE pairs."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ltau._io import atomic_path
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


def load_npy(path: Path) -> np.ndarray:
    """Load a numeric .npy array without pickle, with errors that name the file."""
    if not path.exists():
        raise LTAUFileError(f"{path} does not exist")
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
    if path.suffix.lower() != ".npz":
        return load_npy(path)
    if not path.exists():
        raise LTAUFileError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            descriptors = archive["descriptors"]
            found = str(archive["model_sha256"]) if "model_sha256" in archive else None
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise LTAUFileError(
            f"{path} is not a descriptors archive of 'ltau descriptors': {exc}"
        ) from exc
    if expected_model and found and expected_model != found:
        raise LTAUInputError(
            f"{path} holds descriptors of another model (SHA-256 {found[:16]}...) than the "
            f"estimator was fitted on ({expected_model[:16]}...)"
        )
    return descriptors


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
