"""The bad-input matrix: hundreds of bad inputs over every ``ltau`` command and public entry
point, each of which must end in a clean error that names the problem (or, for the few inputs
that are odd but valid, in a right result).

A :class:`Case` is data: a name, the entry point, how to build its input in a fresh case
directory, and the expected outcome. :func:`run_matrix` builds the shared fixtures once (a
recorded log, distributions, estimators, a tiny MACE model; in a subprocess), runs every case
in a child process of its own with a timeout and classifies it:

* ``clean``: an error that names the problem. For a command: exit status 2, no
  ``Traceback`` on standard error, the expected pattern in the message, and nothing new left
  in the case directory. For a Python call: an :class:`~ltau.exceptions.LTAUInputError` /
  :class:`~ltau.exceptions.LTAUFileError` (or the case's documented standard exception) whose
  message matches the pattern;
* ``correct``: a case that must work did, and its result passed the case's check;
* ``traceback``: a command printed a traceback (or died by a signal), a Python call raised an
  exception of an undocumented type;
* ``silent_wrong``: a bad input was accepted (exit 0 / a return value), a working case's
  result was wrong, or a refused command left a file (half) written;
* ``unclear``: an error whose message does not name the problem;
* ``hang``: the case did not finish within its timeout.

Children are forked from a process that has already imported ltau (and, for the model cases,
mace), so a case costs a fraction of a second; ``fresh_interpreter=True`` runs every command in
a new ``python -m ltau.cli`` instead (slower, the most faithful to a user's shell).

Run it as ``python benchmarks/_bad_inputs.py [--only SUBSTRING] [--no-model]``; it prints the
summary as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CLI_TIMEOUT = 30.0
"""Seconds a command may take (the model commands load a model; nothing here trains)."""
PYTHON_TIMEOUT = 20.0
"""Seconds a Python call may take."""
FIXTURE_TIMEOUT = 600.0
"""Seconds the fixtures (including one tiny MACE training of one epoch) may take to build."""

N_SAMPLES, DIM = 60, 4
"""The recorded log's samples and the descriptors' width."""


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One input and its expected outcome.

    ``argv`` (a command: ``ltau`` arguments, with ``{f}`` for the fixtures directory and ``{c}``
    for the case's own directory) or ``call`` (Python: ``call(fixtures, case_dir)``).
    ``setup(fixtures, case_dir)`` builds the bad input first. ``message``: a regular expression
    (case-insensitive) the error must match; None for a case that must work, whose ``check``
    (``check(fixtures, case_dir, result)``: the return value of ``call``, or the command's
    standard output) returns a description of what is wrong, or None. ``allowed``: standard
    exception types a Python call may raise instead of ltau's own (documented behaviour).
    """

    name: str
    entry: str
    argv: tuple[str, ...] | None = None
    call: Callable[[Path, Path], Any] | None = None
    message: str | None = None
    setup: Callable[[Path, Path], Any] | None = None
    check: Callable[[Path, Path, Any], str | None] | None = None
    allowed: tuple[type[BaseException], ...] = ()
    needs_model: bool = False
    timeout: float | None = None

    @property
    def is_cli(self) -> bool:
        return self.argv is not None


def cli(
    name: str,
    argv: Sequence[str] | str,
    message: str | None,
    setup: Callable[[Path, Path], Any] | None = None,
    check: Callable[[Path, Path, Any], str | None] | None = None,
    **options: Any,
) -> Case:
    """A command case; ``argv`` as a list or a space-separated string."""
    words = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    return Case(
        name, f"ltau {words[0]}", argv=words, message=message, setup=setup, check=check, **options
    )


def py(
    name: str,
    entry: str,
    call: Callable[[Path, Path], Any],
    message: str | None,
    check: Callable[[Path, Path, Any], str | None] | None = None,
    **options: Any,
) -> Case:
    """A Python case."""
    return Case(name, entry, call=call, message=message, check=check, **options)


# ------------------------------------------------------------------ bad files
def write_bytes(name: str, data: bytes) -> Callable[[Path, Path], None]:
    return lambda f, c: (c / name).write_bytes(data)


def save_array(name: str, array: Any, *, allow_pickle: bool = False) -> Callable:
    return lambda f, c: np.save(c / name, array, allow_pickle=allow_pickle)


def make_dir(name: str) -> Callable[[Path, Path], None]:
    return lambda f, c: (c / name).mkdir()


def make_fifo(name: str) -> Callable[[Path, Path], None]:
    return lambda f, c: os.mkfifo(c / name)


def truncated(source: str, name: str, fraction: float = 0.5) -> Callable[[Path, Path], None]:
    def build(f: Path, c: Path) -> None:
        data = (f / source).read_bytes()
        (c / name).write_bytes(data[: int(len(data) * fraction)])

    return build


def flipped(source: str, name: str, position: float = 0.6) -> Callable[[Path, Path], None]:
    """A copy of a fixture with one byte inverted (in the data, past the header)."""

    def build(f: Path, c: Path) -> None:
        data = bytearray((f / source).read_bytes())
        data[int(len(data) * position)] ^= 0xFF
        (c / name).write_bytes(bytes(data))

    return build


def flipped_data(source: str, name: str) -> Callable[[Path, Path], None]:
    """A copy of an HDF5 fixture with one byte of its largest dataset's stored values inverted
    (uncompressed storage): a change to the content, which must be detected."""

    def build(f: Path, c: Path) -> None:
        import h5py

        found: list[tuple[int, int]] = []

        def visit(item_name: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset) and item.size:
                if item.chunks:  # the stored values of the first chunk, not its spare room
                    used = np.minimum(item.chunks, item.shape).prod() * item.dtype.itemsize
                    found.append((int(used), item.id.get_chunk_info(0).byte_offset))
                elif item.id.get_offset() is not None:
                    found.append((item.id.get_storage_size(), item.id.get_offset()))

        with h5py.File(f / source, "r") as handle:
            handle.visititems(visit)
        size, offset = max(found)
        data = bytearray((f / source).read_bytes())
        data[offset + size // 2] ^= 0xFF
        (c / name).write_bytes(bytes(data))

    return build


def foreign_h5(name: str) -> Callable[[Path, Path], None]:
    def build(f: Path, c: Path) -> None:
        import h5py

        with h5py.File(c / name, "w") as handle:
            handle["x"] = np.arange(3)

    return build


def read_only_dir(name: str) -> Callable[[Path, Path], None]:
    """A directory nobody may add files to (``chmod 555``, and ``chattr +i`` for root, whom
    permissions do not stop); an error if neither works here."""

    def build(f: Path, c: Path) -> None:
        target = c / name
        target.mkdir()
        target.chmod(0o555)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(target)], check=False, capture_output=True)
        probe = target / ".probe"
        try:
            probe.touch()
        except OSError:
            return
        probe.unlink()
        raise RuntimeError(f"cannot make {target} read-only here")

    return build


def release(case_dir: Path) -> None:
    """Undo :func:`read_only_dir` below ``case_dir`` so that it can be removed."""
    for path in [case_dir, *case_dir.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
            with contextlib.suppress(OSError):
                path.chmod(0o755)


def then(step: Callable[[Path, Path], Any] | None, f: Path, c: Path) -> bool:
    """Run a setup ``step`` (if any) inside a Python case; True, to chain the call with and."""
    if step is not None:
        step(f, c)
    return True


def both(*steps: Callable[[Path, Path], Any] | None) -> Callable[[Path, Path], None]:
    def build(f: Path, c: Path) -> None:
        for step in steps:
            if step is not None:
                step(f, c)

    return build


BAD_FILES: dict[str, tuple[Callable[[str], Callable[[Path, Path], Any] | None], str]] = {
    "missing": (lambda name: None, r"does not exist"),
    "directory": (make_dir, r"director|not a (readable|file)|is not a"),
    "empty": (lambda name: write_bytes(name, b""), r"not a readable|empty|corrupt|truncat"),
    "garbage": (
        lambda name: write_bytes(name, bytes(range(256)) * 4),
        r"not a readable|corrupt|not written by ltau",
    ),
    "text": (
        lambda name: write_bytes(name, b"1.0,2.0\n3.0,4.0\n"),
        r"not a readable|corrupt|not written by ltau",
    ),
}
"""Generic bad files: kind -> (builder of the file named ``name``, what the error says)."""


# --------------------------------------------------------------- bad arrays
def _complex() -> np.ndarray:
    return (np.ones((N_SAMPLES, DIM)) + 1j).astype(np.complex64)


BAD_MATRICES: dict[str, tuple[Callable[[int, int], Any], str, bool]] = {
    "nan": (lambda n, d: np.full((n, d), np.nan, np.float32), r"nan", False),
    "inf": (lambda n, d: np.full((n, d), np.inf), r"inf", False),
    "neg_inf": (lambda n, d: np.full((n, d), -np.inf), r"inf", False),
    "one_nan": (
        lambda n, d: np.where(np.arange(n * d).reshape(n, d) == 5, np.nan, 1.0),
        r"nan",
        False,
    ),
    "complex": (lambda n, d: np.ones((n, d), np.complex128) * (1 + 2j), r"complex", False),
    "complex_zero_imag": (lambda n, d: np.ones((n, d), np.complex64), r"complex", False),
    "huge": (lambda n, d: np.full((n, d), 1e300), r"float32|too large|inf|range", False),
    "strings": (lambda n, d: np.full((n, d), "1.0"), r"real numbers|numeric", False),
    "bool": (lambda n, d: np.ones((n, d), bool), r"real numbers|numeric|bool", False),
    "datetime": (
        lambda n, d: np.full((n, d), np.datetime64("2020-01-01")),
        r"real numbers|numeric|dates",
        False,
    ),
    "structured": (
        lambda n, d: np.zeros(n, dtype=[("a", "f4"), ("b", "f4")]),
        r"real numbers|numeric|records",
        False,
    ),
    "pickled_objects": (
        lambda n, d: np.array([[object()] * d] * n, dtype=object),
        r"real numbers|numeric|readable|pickle",
        True,
    ),
    "one_d": (lambda n, d: np.ones(n, np.float32), r"2-D|shape|1-D", False),
    "three_d": (lambda n, d: np.ones((n, d, 2), np.float32), r"2-D|shape|1-D", False),
    "scalar": (lambda n, d: np.float32(1.0), r"2-D|shape|1-D", False),
    "no_rows": (lambda n, d: np.ones((0, d), np.float32), r"empty|shape|entries|rows", False),
    "no_columns": (lambda n, d: np.ones((n, 0), np.float32), r"empty|shape|features", False),
}
"""Bad descriptor arrays: kind -> (array of n rows and d columns, what the error says, whether
it needs pickle to be saved)."""

BAD_VECTORS: dict[str, tuple[Callable[[int], Any], str, bool]] = {
    "nan": (lambda n: np.full(n, np.nan), r"nan", False),
    "inf": (lambda n: np.full(n, np.inf), r"inf", False),
    "negative": (lambda n: -np.ones(n), r"non-negative|negative|must be", False),
    "complex": (lambda n: np.ones(n, np.complex128), r"complex", False),
    "strings": (lambda n: np.full(n, "1"), r"real numbers|numeric", False),
    "two_d": (lambda n: np.ones((n, 2)), r"1-D|shape", False),
    "short": (lambda n: np.ones(max(n - 3, 1)), r"entries|rows|length|shape", False),
    "empty": (lambda n: np.ones(0), r"empty|entries|rows|shape", False),
    "pickled_objects": (
        lambda n: np.array([object()] * n),
        r"real numbers|numeric|readable|pickle",
        True,
    ),
}
"""Bad per-query error vectors: kind -> (vector of length n, what the error says, pickle)."""

BAD_LABELS: dict[str, tuple[Callable[[int], Any], str, bool]] = {
    "float": (lambda n: np.zeros(n), r"integer", False),
    "nan": (lambda n: np.full(n, np.nan), r"integer|nan", False),
    "complex": (lambda n: np.zeros(n, np.complex64), r"integer|complex", False),
    "two_d": (lambda n: np.zeros((n, 2), np.int64), r"shape|one label", False),
    "short": (lambda n: np.zeros(max(n - 1, 1), np.int64), r"shape|one label", False),
    "empty": (lambda n: np.zeros(0, np.int64), r"shape|one label|empty", False),
    "strings": (lambda n: np.full(n, "a"), r"real numbers|numeric|integer", False),
    "bool": (lambda n: np.zeros(n, bool), r"real numbers|numeric|integer|bool", False),
}
"""Bad group labels (one per query): kind -> (labels for n queries, what the error says, pickle)."""


# ------------------------------------------------------------------- fixtures
def build_fixtures(directory: Path, *, model: bool = True) -> None:
    """Write the shared inputs into ``directory`` (``done`` marks a complete set; the model's
    ``model_done``)."""
    from ltau import ErrorRecorder, LTAUEstimator
    from ltau.distributions import save_distributions

    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "done").exists():
        rng = np.random.default_rng(0)
        train = rng.normal(size=(N_SAMPLES, DIM)).astype(np.float32)
        scale = np.exp(train[:, 0])
        with ErrorRecorder(N_SAMPLES, log_path=directory / "log.h5", overwrite=True) as recorder:
            for member in (0, 1):
                for _ in range(6):
                    recorder.record_epoch(np.abs(rng.normal(size=N_SAMPLES)) * scale, member)
            distributions = recorder.distributions(n_bins=20)
        save_distributions(distributions, directory / "dist.h5")
        np.save(directory / "train.npy", train)
        np.save(directory / "query.npy", rng.normal(size=(10, DIM)).astype(np.float32))
        validation = rng.normal(size=(30, DIM)).astype(np.float32)
        np.save(directory / "val.npy", validation)
        np.save(
            directory / "val_errors.npy", np.abs(rng.normal(size=30)) * np.exp(validation[:, 0])
        )
        np.save(directory / "val_groups.npy", np.repeat(np.arange(10), 3))
        np.save(directory / "query_groups.npy", np.repeat(np.arange(5), 2))
        np.save(directory / "sizes.npy", np.full(12, 5))
        estimator = LTAUEstimator(5).fit(train, distributions)
        estimator.save(directory / "est.h5", metadata={"unit": "eV/A"})
        estimator.calibrate(validation, np.load(directory / "val_errors.npy"), "scale")
        estimator.save(directory / "cal.h5")
        (directory / "done").touch()
    if model and not (directory / "model_done").exists():
        _build_model_fixtures(directory)
        (directory / "model_done").touch()


def _emt_slabs(n: int, seed: int, adsorbate: str = "H") -> list:
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 1), vacuum=4.0)
        add_adsorbate(slab, adsorbate, 1.5, "fcc")
        slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
        slab.calc = EMT()
        slab.info["REF_energy"] = slab.get_potential_energy()
        slab.arrays["REF_forces"] = slab.get_forces()
        slab.calc = None
        frames.append(slab)
    return frames


def _build_model_fixtures(directory: Path) -> None:
    """A tiny MACE model (one epoch on six Cu/H slabs), its training log and data, and
    estimators fitted on its descriptors (with and without its fingerprint, and with a
    fingerprint of another model)."""
    import ase.io

    from ltau import ErrorRecorder, LTAUEstimator
    from ltau.atomistic.structures import read_structures
    from ltau.integrations.mace import MACESettings, train_mace
    from ltau.integrations.models import load_forcefield

    frames = _emt_slabs(6, 1)
    ase.io.write(directory / "train.xyz", frames, format="extxyz")
    ase.io.write(directory / "structures.xyz", frames[:2], format="extxyz")
    ase.io.write(directory / "oxygen.xyz", _emt_slabs(1, 2, "O"), format="extxyz")
    structures = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    settings = MACESettings(
        r_max=3.5,
        num_channels=4,
        mlp_channels=4,
        batch_size=3,
        seed=1,
        num_interactions=1,
        correlation=1,
    )
    recorder = ErrorRecorder(structures.n_atoms, log_path=directory / "mace_log.h5", overwrite=True)
    with recorder:
        trained = train_mace(
            structures, epochs=1, settings=settings, recorder=recorder, progress=False
        )
        distributions = recorder.distributions(n_bins=10)
    trained.save(directory / "model.pt")
    forcefield = load_forcefield(directory / "model.pt")
    descriptors = forcefield.evaluate(structures).descriptors
    np.savez(
        directory / "model_desc.npz",
        descriptors=descriptors,
        structure=structures.index.configuration_of_atoms,
        model_sha256=np.array(forcefield.fingerprint),
    )
    np.save(directory / "model_desc.npy", descriptors)
    estimator = LTAUEstimator(3).fit(descriptors, distributions)
    estimator.save(
        directory / "model_est.h5",
        metadata={"model_sha256": forcefield.fingerprint, "atol_eV_per_A": 0.1},
    )
    estimator.save(
        directory / "other_model_est.h5", metadata={"model_sha256": "0" * 64, "atol_eV_per_A": 0.1}
    )
    estimator.save(directory / "no_atol_est.h5", metadata={"model_sha256": forcefield.fingerprint})
    shifted = descriptors + 3.0
    LTAUEstimator(3).fit(shifted, distributions).save(directory / "unmarked_est.h5")
    np.savez(
        directory / "other_desc.npz",
        descriptors=shifted,
        structure=structures.index.configuration_of_atoms,
        model_sha256=np.array("0" * 64),
    )
    wide = np.hstack([descriptors, descriptors[:, :1]])
    LTAUEstimator(3).fit(wide, distributions).save(
        directory / "wide_est.h5", metadata={"atol_eV_per_A": 0.1}
    )


# ------------------------------------------------------------------ checks
def _nothing_new(c: Path, before: set[str]) -> str | None:
    new = sorted(str(p.relative_to(c)) for p in c.rglob("*") if str(p.relative_to(c)) not in before)
    return f"left {new} behind" if new else None


def csv_rows(
    name: str, n_rows: int, finite: bool = True
) -> Callable[[Path, Path, Any], str | None]:
    """A check: ``{c}/name`` is a CSV of ``n_rows`` rows, every value finite."""

    def check(f: Path, c: Path, result: Any) -> str | None:
        import csv

        path = c / name
        if not path.is_file():
            return f"{name} was not written"
        with open(path) as handle:
            rows = list(csv.DictReader(handle))
        if len(rows) != n_rows:
            return f"{name} has {len(rows)} rows, not {n_rows}"
        if finite:
            values = np.array(
                [[float(v) for v in r.values() if v not in ("", "True", "False")] for r in rows]
            )
            if not np.all(np.isfinite(values)):
                return f"{name} holds NaN or infinity"
        return None

    return check


def same_prediction(f: Path, c: Path, result: Any) -> str | None:
    """A check: the prediction equals the fixtures' float32 query prediction."""
    from ltau import LTAUEstimator

    expected = LTAUEstimator.load(f / "est.h5").predict(np.load(f / "query.npy"), atol=0.5)
    if not np.allclose(result.expected_error, expected.expected_error, rtol=1e-5):
        return "expected errors differ from the float32 query's"
    if not np.allclose(result.exceedance, expected.exceedance, atol=1e-6):
        return "exceedance differs from the float32 query's"
    return None


def finite_result(f: Path, c: Path, result: Any) -> str | None:
    values = np.asarray(result, dtype=np.float64)
    return None if np.all(np.isfinite(values)) else f"result holds NaN or infinity: {values}"


def warns(pattern: str) -> Callable[[Path, Path, Any], str | None]:
    """A check of a command that must work but warn: ``pattern`` on standard error."""

    def check(f: Path, c: Path, result: Any) -> str | None:
        _, _, err = result
        return None if re.search(pattern, err, re.I) else f"no warning matching {pattern!r}"

    return check


# -------------------------------------------------------------- command cases
NPY_SLOTS = {
    # slot -> (argv with {x} for the bad file, kind of array, rows expected, name in messages)
    "fit_descriptors": (
        "fit --descriptors {x} --distributions {f}/dist.h5 -o {c}/e.h5",
        "matrix",
        N_SAMPLES,
        r"descriptors",
    ),
    "predict_descriptors": (
        "predict {f}/est.h5 --descriptors {x} -o {c}/p.csv",
        "matrix",
        10,
        r"descriptors",
    ),
    "calibrate_descriptors": (
        "calibrate {f}/est.h5 --descriptors {x} --errors {f}/val_errors.npy -o {c}/c.h5",
        "matrix",
        30,
        r"descriptors",
    ),
    "calibrate_errors": (
        "calibrate {f}/est.h5 --descriptors {f}/val.npy --errors {x} -o {c}/c.h5",
        "vector",
        30,
        r"errors",
    ),
    "predict_groups": (
        "predict {f}/est.h5 --descriptors {f}/query.npy --groups {x} -o {c}/p.csv",
        "labels",
        10,
        r"groups",
    ),
    "calibrate_groups": (
        "calibrate {f}/est.h5 --descriptors {f}/val.npy --errors {f}/val_errors.npy "
        "--groups {x} -o {c}/c.h5",
        "labels",
        30,
        r"groups",
    ),
    "dynamics_groups": (
        "dynamics {f}/log.h5 -o {c}/d.csv --atol 0.5 --groups {x}",
        "sizes",
        12,
        r"group sizes|groups",
    ),
}

BAD_SIZES: dict[str, tuple[Callable[[int], Any], str, bool]] = {
    "zero": (lambda n: np.zeros(n, np.int64), r"positive", False),
    "negative": (lambda n: -np.ones(n, np.int64), r"positive", False),
    "fractional": (lambda n: np.full(n, 2.5), r"integer", False),
    "nan": (lambda n: np.full(n, np.nan), r"integer|nan", False),
    "complex": (lambda n: np.full(n, 5 + 0j), r"integer|complex", False),
    "wrong_sum": (lambda n: np.full(n, 4, np.int64), r"sum to 48", False),
    "two_d": (lambda n: np.full((n, 1), 5, np.int64), r"1-D", False),
    "empty": (lambda n: np.zeros(0, np.int64), r"non-empty|empty", False),
    "strings": (lambda n: np.full(n, "5"), r"real numbers|numeric|integer", False),
    "huge": (lambda n: np.full(n, 10**15, np.int64), r"sum to", False),
}
"""Bad group sizes (for ``ltau dynamics --groups``)."""

ARRAY_KINDS = {"matrix": None, "vector": BAD_VECTORS, "labels": BAD_LABELS, "sizes": BAD_SIZES}


def _saver(make: Callable[[], Any], pickle: bool) -> Callable[[Path, Path], None]:
    return lambda f, c: np.save(c / "bad.npy", make(), allow_pickle=pickle)


def _both_named(label: str, pattern: str) -> str:
    """A pattern matching a message that names the input (``label`` or the file) and the
    problem (``pattern``), in either order."""
    return rf"(?=.*(?:{label}|bad\.npy))(?=.*(?:{pattern}))"


def npy_cases() -> list[Case]:
    """Every bad array and bad file in every .npy input of the commands."""
    cases = []
    for slot, (template, kind, rows, label) in NPY_SLOTS.items():
        if kind == "matrix":
            variants = {
                name: (lambda build=build, n=rows: build(n, DIM), pattern, pickle)
                for name, (build, pattern, pickle) in BAD_MATRICES.items()
            }
            if slot != "fit_descriptors":  # fit sets the width: any width is valid there
                variants["wrong_width"] = (
                    lambda n=rows: np.ones((n, DIM + 1), np.float32),
                    r"features|fitted on|rows",
                    False,
                )
        else:
            variants = {
                name: (lambda build=build, n=rows: build(n), pattern, pickle)
                for name, (build, pattern, pickle) in ARRAY_KINDS[kind].items()
            }
        argv = template.replace("{x}", "{c}/bad.npy")
        for name, (make, pattern, pickle) in variants.items():
            cases.append(
                cli(f"{slot}/{name}", argv, _both_named(label, pattern), _saver(make, pickle))
            )
        for name, (builder, pattern) in BAD_FILES.items():
            cases.append(cli(f"{slot}/file_{name}", argv, pattern, builder("bad.npy")))
        cases.append(
            cli(
                f"{slot}/file_truncated",
                argv,
                r"not a readable",
                truncated(_slot_source(slot), "bad.npy"),
            )
        )
        cases.append(
            cli(
                f"{slot}/file_npz_archive",
                template.replace("{x}", "{c}/bad.npz"),
                r"not a descriptors archive|numeric array|\.npy",
                lambda f, c: np.savez(c / "bad.npz", x=np.ones(3)),
            )
        )
    cases.append(
        cli(
            "predict_descriptors/file_fifo",
            "predict {f}/est.h5 --descriptors {c}/bad.npy -o {c}/p.csv",
            r"not a (regular )?file|not a readable",
            make_fifo("bad.npy"),
            timeout=10.0,
        )
    )
    return cases


def _slot_source(slot: str) -> str:
    return {
        "fit_descriptors": "train.npy",
        "predict_descriptors": "query.npy",
        "calibrate_descriptors": "val.npy",
        "calibrate_errors": "val_errors.npy",
        "predict_groups": "query_groups.npy",
        "calibrate_groups": "val_groups.npy",
        "dynamics_groups": "sizes.npy",
    }[slot]


H5_SLOTS = {
    # slot -> (argv with {x} for the bad file, a good file of the expected kind, a wrong kind)
    "distributions_log": ("distributions {x} -o {c}/d.h5", "log.h5", "dist.h5"),
    "dynamics_log": ("dynamics {x} -o {c}/d.csv --atol 0.5", "log.h5", "est.h5"),
    "fit_distributions": (
        "fit --descriptors {f}/train.npy --distributions {x} -o {c}/e.h5",
        "dist.h5",
        "log.h5",
    ),
    "predict_estimator": (
        "predict {x} --descriptors {f}/query.npy -o {c}/p.csv",
        "est.h5",
        "dist.h5",
    ),
    "calibrate_estimator": (
        "calibrate {x} --descriptors {f}/val.npy --errors {f}/val_errors.npy -o {c}/c.h5",
        "est.h5",
        "log.h5",
    ),
    "describe": ("describe {x}", "est.h5", None),
}


def _same_log_rows(f: Path, c: Path, _: Any) -> str | None:
    """None if the accepted log ``c/bad.h5`` reads as exactly the rows of the good log."""
    from ltau import ErrorLog

    with ErrorLog(f / "log.h5") as good, ErrorLog(c / "bad.h5") as accepted:
        same = np.array_equal(good.to_array(), accepted.to_array(), equal_nan=True)
    return None if same else "the accepted log reads other rows than the good one"


def h5_cases() -> list[Case]:
    """Every bad file in every ltau-file input of the commands."""
    cases = []
    for slot, (template, good, wrong) in H5_SLOTS.items():
        argv = template.replace("{x}", "{c}/bad.h5")
        for name, (builder, pattern) in BAD_FILES.items():
            cases.append(cli(f"{slot}/{name}", argv, pattern, builder("bad.h5")))
        cases.append(
            cli(
                f"{slot}/truncated",
                argv,
                r"corrupt|truncat|not a readable",
                truncated(good, "bad.h5"),
            )
        )
        cases.append(
            cli(
                f"{slot}/truncated_header",
                argv,
                r"corrupt|truncat|not a readable",
                truncated(good, "bad.h5", 0.02),
            )
        )
        cases.append(
            cli(
                f"{slot}/flipped_data_byte",
                argv,
                r"corrupt|checksum|damaged|not a readable",
                flipped_data(good, "bad.h5"),
            )
        )
        if good == "log.h5":
            # A log's seal can be torn by a writer killed while resealing: a damaged seal sends
            # the log through the bounded parse and its row digests, so intact rows still load.
            cases.append(
                cli(
                    f"{slot}/flipped_seal_byte",
                    argv,
                    None,
                    flipped(good, "bad.h5", 0.0),
                    check=_same_log_rows,
                )
            )
        else:
            cases.append(
                cli(
                    f"{slot}/flipped_seal_byte",
                    argv,
                    r"corrupt|checksum|damaged|not a readable",
                    flipped(good, "bad.h5", 0.0),
                )
            )
        cases.append(
            cli(f"{slot}/foreign_hdf5", argv, r"not written by ltau", foreign_h5("bad.h5"))
        )
        cases.append(
            cli(
                f"{slot}/npy_file",
                argv,
                r"not a readable",
                lambda f, c: shutil.copy(f / "train.npy", c / "bad.h5"),
            )
        )
        if wrong is not None:
            cases.append(
                cli(
                    f"{slot}/wrong_ltau_format",
                    argv,
                    r"expected an ltau-",
                    lambda f, c, wrong=wrong: shutil.copy(f / wrong, c / "bad.h5"),
                )
            )
    cases.append(
        cli(
            "predict_estimator/fifo",
            "predict {c}/bad.h5 --descriptors {f}/query.npy -o {c}/p.csv",
            r"not a (regular )?file|not a readable",
            make_fifo("bad.h5"),
            timeout=10.0,
        )
    )
    return cases


OUTPUT_SLOTS = {
    # slot -> argv with {o} for the output path, and its suffix
    "distributions": ("distributions {f}/log.h5 -o {o}", ".h5"),
    "fit": ("fit --descriptors {f}/train.npy --distributions {f}/dist.h5 -o {o}", ".h5"),
    "calibrate": (
        "calibrate {f}/est.h5 --descriptors {f}/val.npy --errors {f}/val_errors.npy -o {o}",
        ".h5",
    ),
    "predict_csv": ("predict {f}/est.h5 --descriptors {f}/query.npy -o {o}", ".csv"),
    "predict_npz": ("predict {f}/est.h5 --descriptors {f}/query.npy --pdf -o {o}", ".npz"),
    "dynamics": ("dynamics {f}/log.h5 --atol 0.5 -o {o}", ".csv"),
    "dynamics_figure": ("dynamics {f}/log.h5 --atol 0.5 -o {c}/d.csv --figure {o}", ".png"),
    "dynamics_group_output": (
        "dynamics {f}/log.h5 --atol 0.5 -o {c}/d.csv --groups {f}/sizes.npy --group-output {o}",
        ".csv",
    ),
}


def output_cases() -> list[Case]:
    """Bad output locations of the file-writing commands."""
    cases = []
    for slot, (template, suffix) in OUTPUT_SLOTS.items():

        def argv(path: str, template: str = template) -> str:
            return template.replace("{o}", path)

        cases += [
            cli(f"{slot}/output_missing_dir", argv(f"{{c}}/nodir/out{suffix}"), r"does not exist"),
            cli(
                f"{slot}/output_is_dir",
                argv(f"{{c}}/out{suffix}"),
                r"is a directory",
                make_dir(f"out{suffix}"),
            ),
            cli(
                f"{slot}/output_read_only",
                argv(f"{{c}}/ro/out{suffix}"),
                r"permission|not permitted|read-only|not writable|cannot write",
                read_only_dir("ro"),
            ),
            cli(
                f"{slot}/output_under_a_file",
                argv(f"{{c}}/afile/out{suffix}"),
                r"does not exist|not a directory",
                write_bytes("afile", b"x"),
            ),
        ]
    cases += [
        cli(
            "predict/output_suffix_txt",
            "predict {f}/est.h5 --descriptors {f}/query.npy -o {c}/p.txt",
            r"must end in \.csv",
        ),
        cli(
            "predict/output_no_suffix",
            "predict {f}/est.h5 --descriptors {f}/query.npy -o {c}/p",
            r"must end in \.csv",
        ),
        cli(
            "predict/pdf_with_csv",
            "predict {f}/est.h5 --descriptors {f}/query.npy --pdf -o {c}/p.csv",
            r"needs an \.npz",
        ),
        cli(
            "dynamics/output_suffix_h5",
            "dynamics {f}/log.h5 --atol 0.5 -o {c}/d.h5",
            r"must end in \.csv",
        ),
        cli(
            "dynamics/figure_suffix_pdf",
            "dynamics {f}/log.h5 --atol 0.5 -o {c}/d.csv --figure {c}/f.pdf",
            r"must be a \.png",
        ),
        cli(
            "dynamics/group_output_without_groups",
            "dynamics {f}/log.h5 --atol 0.5 -o {c}/d.csv --group-output {c}/g.csv",
            r"--group-output needs --groups",
        ),
    ]
    return cases


DIST = "distributions {f}/log.h5 -o {c}/d.h5"
FIT = "fit --descriptors {f}/train.npy --distributions {f}/dist.h5 -o {c}/e.h5"
CAL = "calibrate {f}/est.h5 --descriptors {f}/val.npy --errors {f}/val_errors.npy -o {c}/c.h5"
PRED = "predict {f}/est.h5 --descriptors {f}/query.npy -o {c}/p.csv"
DYN = "dynamics {f}/log.h5 -o {c}/d.csv"
USAGE = r"usage: ltau"
"""What argparse says when it refuses an option's value."""


def option_cases() -> list[Case]:
    """Bad values of the commands' numeric and choice options."""
    table = [
        ("distributions/bins_zero", f"{DIST} --bins 0", r"n_bins must be a positive integer"),
        ("distributions/bins_negative", f"{DIST} --bins -5", r"n_bins must be a positive integer"),
        ("distributions/bins_huge", f"{DIST} --bins 1000000000", r"n_bins must be at most"),
        ("distributions/bins_10_to_30", f"{DIST} --bins 1" + "0" * 30, r"n_bins must be at most"),
        ("distributions/bins_float", f"{DIST} --bins 2.5", USAGE),
        ("distributions/bins_text", f"{DIST} --bins many", USAGE),
        (
            "distributions/bins_huge_with_range",
            f"{DIST} --bins 1000000000 --range 0.1 1",
            r"n_bins must be at most",
        ),
        ("distributions/spacing_unknown", f"{DIST} --spacing cubic", USAGE),
        ("distributions/range_reversed", f"{DIST} --range 1 0.5", r"invalid error range"),
        ("distributions/range_nan", f"{DIST} --range nan 1", r"invalid error range"),
        ("distributions/range_inf", f"{DIST} --range 0.1 inf", r"invalid error range"),
        (
            "distributions/range_negative",
            f"{DIST} --range -1 1 --spacing linear",
            r"linear bins need 0 <= low",
        ),
        ("distributions/range_zero_low_log", f"{DIST} --range 0 1", r"log bins need 0 < low"),
        ("distributions/range_one_value", f"{DIST} --range 1", USAGE),
        ("distributions/range_text", f"{DIST} --range a b", USAGE),
        ("distributions/skip_epochs_negative", f"{DIST} --skip-epochs -1", r"skip_epochs"),
        ("distributions/skip_epochs_all", f"{DIST} --skip-epochs 6", r"after skipping"),
        ("distributions/skip_epochs_huge", f"{DIST} --skip-epochs 99999999999", r"after skipping"),
        ("distributions/members_absent", f"{DIST} --members 7", r"members \[7\]"),
        ("distributions/members_negative", f"{DIST} --members -1", r"members"),
        ("distributions/members_text", f"{DIST} --members one", USAGE),
        ("fit/k_zero", f"{FIT} -k 0", r"n_neighbors must be a positive integer"),
        ("fit/k_negative", f"{FIT} -k -3", r"n_neighbors must be a positive integer"),
        ("fit/k_too_many", f"{FIT} -k 61", r"exceeds the 60 training samples"),
        ("fit/k_huge", f"{FIT} -k 100000000000", r"exceeds the 60 training samples"),
        ("fit/k_float", f"{FIT} -k 2.5", USAGE),
        ("fit/weights_unknown", f"{FIT} --weights cubic", USAGE),
        ("fit/distance_scale_unknown", f"{FIT} --distance-scale relative", USAGE),
        ("fit/index_unknown", f"{FIT} --index annoy", USAGE),
        (
            "fit/index_param_unknown",
            f"{FIT} --index exact --index-param M=4",
            r"unknown parameters",
        ),
        ("fit/index_param_with_auto", f"{FIT} --index-param ef_search=8", r"index='auto' chooses"),
        ("fit/index_param_not_int", f"{FIT} --index hnsw --index-param M=x", r"must be an integer"),
        ("fit/index_param_no_equals", f"{FIT} --index hnsw --index-param M", r"NAME=VALUE"),
        ("fit/index_param_negative", f"{FIT} --index hnsw --index-param M=-4", r"\bM\b"),
        ("fit/index_param_zero", f"{FIT} --index ivfpq --index-param nlist=0", r"nlist"),
        (
            "fit/index_param_huge_nlist",
            f"{FIT} --index ivfpq --index-param nlist=1000000 --index-param m=2",
            r"nlist",
        ),
        ("fit/metadata_no_equals", f"{FIT} --metadata unit", r"KEY=VALUE|NAME=VALUE"),
        ("fit/metadata_empty_key", f"{FIT} --metadata =x", r"KEY=VALUE|NAME=VALUE"),
        ("calibrate/method_unknown", f"{CAL} --method quantile", USAGE),
        ("predict/atol_negative", f"{PRED} --atol -1", r"atol must be"),
        ("predict/atol_nan", f"{PRED} --atol nan", r"atol must be"),
        ("predict/atol_inf", f"{PRED} --atol inf", r"atol must be"),
        ("predict/atol_text", f"{PRED} --atol big", USAGE),
        (
            "predict/quantiles_above_one",
            f"{PRED} --quantiles 1.5",
            r"quantiles must lie in \[0, 1\]",
        ),
        ("predict/quantiles_negative", f"{PRED} --quantiles -0.1", r"quantiles must lie"),
        ("predict/quantiles_nan", f"{PRED} --quantiles nan", r"quantiles must lie"),
        ("predict/confidence_two", f"{PRED} --confidence 2", r"confidence"),
        ("predict/confidence_nan", f"{PRED} --confidence nan", r"confidence"),
        ("predict/confidence_negative", f"{PRED} --confidence -0.5", r"confidence"),
        ("predict/confidence_text", f"{PRED} --confidence high", USAGE),
        ("dynamics/atol_missing", DYN, r"--atol"),
        ("dynamics/atol_negative", f"{DYN} --atol -1", r"atol must be"),
        ("dynamics/atol_nan", f"{DYN} --atol nan", r"atol must be"),
        ("dynamics/atol_inf", f"{DYN} --atol inf", r"atol must be"),
        ("dynamics/skip_epochs_negative", f"{DYN} --atol 0.5 --skip-epochs -2", r"skip_epochs"),
        ("dynamics/skip_epochs_all", f"{DYN} --atol 0.5 --skip-epochs 50", r"skip|epochs"),
        ("dynamics/members_absent", f"{DYN} --atol 0.5 --members 9", r"members"),
        ("dynamics/color_by_unknown", f"{DYN} --atol 0.5 --color-by size", USAGE),
        ("cli/no_command", "", USAGE),
        ("cli/unknown_command", "train", USAGE),
        ("cli/unknown_option", f"{PRED} --frobnicate", USAGE),
        ("predict/descriptors_missing_option", "predict {f}/est.h5 -o {c}/p.csv", USAGE),
        (
            "fit/output_missing_option",
            "fit --descriptors {f}/train.npy --distributions {f}/dist.h5",
            USAGE,
        ),
        (
            "calibrate/errors_of_other_length",
            "calibrate {f}/est.h5 --descriptors {f}/val.npy --errors {f}/query_groups.npy -o {c}/c.h5",
            r"10 entries but there are 30",
        ),
        (
            "calibrate/descriptors_for_other_estimator",
            "calibrate {f}/est.h5 --descriptors {f}/train.npy --errors {f}/val_errors.npy -o {c}/c.h5",
            r"30 entries but there are 60",
        ),
        (
            "predict/groups_of_calibration_set",
            "predict {f}/est.h5 --descriptors {f}/query.npy --groups {f}/val_groups.npy -o {c}/p.csv",
            r"one label per query",
        ),
        (
            "fit/descriptors_of_other_set",
            "fit --descriptors {f}/query.npy --distributions {f}/dist.h5 -o {c}/e.h5",
            r"10 descriptor rows but 60",
        ),
        (
            "dynamics/groups_of_other_log",
            "dynamics {f}/log.h5 --atol 0.5 -o {c}/d.csv --groups {f}/val_groups.npy",
            r"sum to|group sizes",
        ),
    ]
    cases = []
    for name, argv, pattern in table:
        words = argv.split()
        cases.append(
            Case(
                name,
                f"ltau {words[0]}" if name.split("/")[0] != "cli" else "ltau",
                argv=tuple(words),
                message=pattern,
            )
        )
    return cases


MODEL = "--model {f}/model.pt"
RELAX = f"relax {{f}}/structures.xyz {MODEL} --estimator {{f}}/model_est.h5 -o {{c}}/out"
DESC = f"descriptors {{f}}/structures.xyz {MODEL} -o {{c}}/d.npy"
RUN = (
    f"run {MODEL} --log {{f}}/mace_log.h5 --train {{f}}/train.xyz --test in={{f}}/structures.xyz "
    "--output-dir {c}/out"
)
MACE_TRAIN = "mace-train --log {c}/l.h5"
DEMO = "demo --output-dir {c}/out"


BAD_MODEL_FILES: dict[str, tuple[str, str, Callable | None]] = {
    "missing": ("{c}/absent.pt", r"does not exist", None),
    "garbage": ("{c}/m.pt", r"not a readable|model file", write_bytes("m.pt", b"not a model")),
    "zip_garbage": (
        "{c}/m.pt",
        r"not a readable|model file",
        write_bytes("m.pt", b"PK\x03\x04garbage"),
    ),
    "empty": ("{c}/m.pt", r"not a readable|model file|empty", write_bytes("m.pt", b"")),
    "directory": ("{c}/m.pt", r"does not exist|director", make_dir("m.pt")),
    "truncated": ("{c}/m.pt", r"not a readable|corrupt|model file", truncated("model.pt", "m.pt")),
    "is_estimator": ("{f}/est.h5", r"not a readable|model file|not a", None),
}
"""Bad files given as ``--model`` to every command that takes one: the replacement of
``{f}/model.pt``, the message expected, the setup."""


def model_cases() -> list[Case]:
    """Bad input of the commands that run (or train) a model; none of them may start work."""
    table: list[tuple[str, str, str, Callable | None]] = [
        (
            "relax/estimator_of_other_model",
            RELAX.replace("model_est.h5", "other_model_est.h5"),
            r"another model",
            None,
        ),
        (
            "relax/estimator_wider",
            RELAX.replace("model_est.h5", "wide_est.h5"),
            r"dimensional descriptors",
            None,
        ),
        (
            "relax/estimator_without_atol",
            RELAX.replace("model_est.h5", "no_atol_est.h5"),
            r"--atol",
            None,
        ),
        (
            "relax/estimator_is_distributions",
            RELAX.replace("{f}/model_est.h5", "{f}/dist.h5"),
            r"expected an ltau-estimator",
            None,
        ),
        (
            "relax/estimator_missing",
            RELAX.replace("{f}/model_est.h5", "{c}/absent.h5"),
            r"does not exist",
            None,
        ),
        (
            "relax/estimator_flipped_byte",
            RELAX.replace("{f}/model_est.h5", "{c}/bad.h5"),
            r"corrupt|checksum",
            flipped_data("model_est.h5", "bad.h5"),
        ),
        (
            "relax/unknown_element",
            RELAX.replace("structures.xyz", "oxygen.xyz"),
            r"element\(s\) O",
            None,
        ),
        (
            "relax/structures_missing",
            RELAX.replace("{f}/structures.xyz", "{c}/absent.xyz"),
            r"does not exist",
            None,
        ),
        (
            "relax/structures_directory",
            RELAX.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"director|could not be read|not a file",
            make_dir("s.xyz"),
        ),
        (
            "relax/structures_empty",
            RELAX.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"no structures|could not be read",
            write_bytes("s.xyz", b""),
        ),
        (
            "relax/structures_garbage",
            RELAX.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"could not be read",
            write_bytes("s.xyz", b"\x00\x01garbage\n" * 10),
        ),
        (
            "relax/structures_truncated",
            RELAX.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"could not be read",
            truncated("structures.xyz", "s.xyz", 0.4),
        ),
        ("relax/fmax_negative", f"{RELAX} --fmax -0.1", r"fmax", None),
        ("relax/fmax_nan", f"{RELAX} --fmax nan", r"fmax", None),
        ("relax/fmax_zero", f"{RELAX} --fmax 0", r"fmax", None),
        ("relax/steps_negative", f"{RELAX} --steps -1", r"steps", None),
        ("relax/optimizer_unknown", f"{RELAX} --optimizer Newton", r"optimizer|Newton", None),
        ("relax/atol_negative", f"{RELAX} --atol -1", r"atol", None),
        ("relax/atol_nan", f"{RELAX} --atol nan", r"atol", None),
        ("relax/stop_p_exceed_above_one", f"{RELAX} --stop-p-exceed 1.5", r"p_exceed", None),
        (
            "relax/stop_expected_error_negative",
            f"{RELAX} --stop-expected-error -1",
            r"expected_error|threshold",
            None,
        ),
        ("relax/stop_ood_nan", f"{RELAX} --stop-ood-score nan", r"ood_score|threshold", None),
        (
            "relax/output_is_file",
            RELAX.replace("{c}/out", "{c}/afile"),
            r"is a file",
            write_bytes("afile", b"x"),
        ),
        (
            "relax/output_read_only",
            RELAX.replace("{c}/out", "{c}/ro/out"),
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        (
            "relax/output_read_only_existing",
            RELAX.replace("{c}/out", "{c}/ro"),
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        ("relax/device_unknown", f"{RELAX} --device tpu", r"device|tpu", None),
        ("relax/head_unknown", f"{RELAX} --head nonexistent", r"head", None),
        ("descriptors/output_suffix", DESC.replace("d.npy", "d.csv"), r"\.npy or \.npz", None),
        (
            "descriptors/output_missing_dir",
            DESC.replace("{c}/d.npy", "{c}/no/d.npy"),
            r"does not exist",
            None,
        ),
        ("descriptors/output_is_dir", DESC, r"is a directory", make_dir("d.npy")),
        (
            "descriptors/output_read_only",
            DESC.replace("{c}/d.npy", "{c}/ro/d.npy"),
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        (
            "descriptors/structures_missing",
            DESC.replace("{f}/structures.xyz", "{c}/a.xyz"),
            r"does not exist",
            None,
        ),
        (
            "descriptors/structures_garbage",
            DESC.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"could not|cannot|not read|s\.xyz",
            write_bytes("s.xyz", b"\x00garbage\n" * 5),
        ),
        (
            "descriptors/structures_directory",
            DESC.replace("{f}/structures.xyz", "{c}/s.xyz"),
            r"s\.xyz",
            make_dir("s.xyz"),
        ),
        (
            "descriptors/unknown_element",
            DESC.replace("structures.xyz", "oxygen.xyz"),
            r"\bO\b",
            None,
        ),
        (
            "predict/descriptors_of_other_model",
            "predict {f}/model_est.h5 --descriptors {f}/other_desc.npz -o {c}/p.csv",
            r"another model",
            None,
        ),
        (
            "fit/descriptors_archive_records_model",
            "fit --descriptors {f}/other_desc.npz --distributions {f}/dist.h5 -o {c}/e.h5",
            r"\d+ descriptor rows but 60",
            None,
        ),
        (
            "run/no_test",
            RUN.replace("--test in={f}/structures.xyz", ""),
            r"at least one --test",
            None,
        ),
        (
            "run/test_without_equals",
            RUN.replace("in={f}/structures.xyz", "{f}/structures.xyz"),
            r"NAME=VALUE",
            None,
        ),
        (
            "run/test_missing_file",
            RUN.replace("in={f}/structures.xyz", "in={c}/absent.xyz"),
            r"absent\.xyz",
            None,
        ),
        (
            "run/test_unknown_element",
            RUN.replace("structures.xyz", "oxygen.xyz"),
            r"element\(s\) O",
            None,
        ),
        (
            "run/output_is_file",
            RUN.replace("{c}/out", "{c}/afile"),
            r"is a file",
            write_bytes("afile", b"x"),
        ),
        (
            "run/output_read_only",
            RUN.replace("{c}/out", "{c}/ro/out"),
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        ("run/log_missing", RUN.replace("{f}/mace_log.h5", "{c}/absent.h5"), r"absent\.h5", None),
        (
            "run/log_is_estimator",
            RUN.replace("{f}/mace_log.h5", "{f}/est.h5"),
            r"expected an ltau-error-log",
            None,
        ),
        ("run/log_without_provenance", RUN, r"provenance|trained|log", None),
        ("run/in_domain_unknown", f"{RUN} --in-domain elsewhere", r"elsewhere", None),
        ("run/calibration_unknown", f"{RUN} --calibration quantile", USAGE, None),
        ("mace-train/no_arguments", MACE_TRAIN, r"after '--'", None),
        (
            "mace-train/member_negative",
            f"{MACE_TRAIN} --member -1 -- --name x",
            r"--member must be 0 or more",
            None,
        ),
        ("mace-train/no_train_file", f"{MACE_TRAIN} -- --name x", r"--train_file", None),
        (
            "mace-train/train_file_h5",
            f"{MACE_TRAIN} -- --name x --train_file {{f}}/log.h5",
            r"preprocessed",
            None,
        ),
        (
            "mace-train/train_file_missing",
            f"{MACE_TRAIN} -- --name x --train_file {{c}}/absent.xyz",
            r"absent\.xyz|does not exist",
            None,
        ),
        (
            "mace-train/unknown_mace_option",
            f"{MACE_TRAIN} -- --name x --frobnicate 3",
            r"mace_run_train refused",
            None,
        ),
        (
            "mace-train/distributed",
            f"{MACE_TRAIN} -- --name x --train_file {{f}}/train.xyz --distributed",
            r"does not support --distributed",
            None,
        ),
        (
            "mace-train/foundation_not_local",
            f"{MACE_TRAIN} -- --name x --train_file {{f}}/train.xyz --foundation_model small",
            r"not a local file",
            None,
        ),
        (
            "mace-train/foundation_garbage",
            f"{MACE_TRAIN} -- --name x --train_file {{f}}/train.xyz "
            "--foundation_model {c}/f.model",
            r"f\.model",
            write_bytes("f.model", b"junk"),
        ),
        (
            "mace-train/foundation_not_mace",
            f"{MACE_TRAIN} -- --name x --train_file "
            "{f}/train.xyz --foundation_model {f}/est.h5",
            r"est\.h5",
            None,
        ),
        (
            "mace-train/log_missing_dir",
            "mace-train --log {c}/no/l.h5 -- --name x --train_file {f}/train.xyz",
            r"does not exist",
            None,
        ),
        (
            "mace-train/log_is_dir",
            "mace-train --log {c}/l.h5 -- --name x --train_file {f}/train.xyz",
            r"director",
            make_dir("l.h5"),
        ),
        (
            "mace-train/log_exists",
            "mace-train --log {c}/l.h5 -- --name x --train_file {f}/train.xyz",
            r"exists|belongs to another training file",
            lambda f, c: shutil.copy(f / "log.h5", c / "l.h5"),
        ),
        (
            "mace-train/log_read_only",
            "mace-train --log {c}/ro/l.h5 -- --name x --train_file {f}/train.xyz",
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        (
            "mace-train/member_without_log",
            "mace-train --log {c}/l.h5 --member 1 -- --name x --train_file {f}/train.xyz",
            r"member|l\.h5",
            None,
        ),
        ("demo/epochs_zero", f"{DEMO} --epochs 0", r"epochs must be a positive integer", None),
        ("demo/epochs_negative", f"{DEMO} --epochs -3", r"epochs must be a positive", None),
        (
            "demo/test_without_train",
            f"{DEMO} --test a={{f}}/structures.xyz",
            r"--test needs --train",
            None,
        ),
        (
            "demo/train_without_test",
            f"{DEMO} --train {{f}}/train.xyz",
            r"needs at least one --test",
            None,
        ),
        ("demo/models_zero", f"{DEMO} --models 0", r"models|n_models", None),
        ("demo/models_negative", f"{DEMO} --models -2", r"models|n_models", None),
        (
            "demo/train_missing",
            f"{DEMO} --train {{c}}/absent.xyz --test a={{f}}/structures.xyz",
            r"absent\.xyz",
            None,
        ),
        (
            "demo/test_missing",
            f"{DEMO} --train {{f}}/train.xyz --test a={{c}}/absent.xyz",
            r"absent\.xyz",
            None,
        ),
        (
            "demo/isolated_atoms_missing",
            f"{DEMO} --train {{f}}/train.xyz --test "
            "a={f}/structures.xyz --isolated-atoms {c}/absent.xyz",
            r"absent\.xyz",
            None,
        ),
        (
            "demo/in_domain_unknown",
            f"{DEMO} --train {{f}}/train.xyz --test a={{f}}/structures.xyz --in-domain b",
            r"\bb\b",
            None,
        ),
        (
            "demo/train_no_forces_key",
            f"{DEMO} --train {{f}}/train.xyz --test a={{f}}/structures.xyz --forces-key nope",
            r"nope",
            None,
        ),
        (
            "demo/output_is_file",
            DEMO.replace("{c}/out", "{c}/afile"),
            r"is a file|afile",
            write_bytes("afile", b"x"),
        ),
        (
            "demo/output_read_only",
            DEMO.replace("{c}/out", "{c}/ro/out"),
            r"permission|not permitted|read-only|not writable|cannot",
            read_only_dir("ro"),
        ),
        ("demo/tabular_epochs_zero", f"{DEMO} --task tabular --epochs 0", r"epochs", None),
        ("demo/task_unknown", f"{DEMO} --task images", USAGE, None),
        ("demo/device_unknown", f"{DEMO} --device tpu --epochs 1", r"device|tpu", None),
    ]
    for command, template in (("relax", RELAX), ("descriptors", DESC), ("run", RUN)):
        for kind, (replacement, pattern, setup) in BAD_MODEL_FILES.items():
            table.append(
                (f"{command}/model_{kind}", template.replace("{f}/model.pt", replacement),
                 pattern, setup)
            )  # fmt: skip
    return [
        Case(
            name,
            f"ltau {argv.split()[0]}",
            argv=tuple(argv.split()),
            message=pattern,
            setup=setup,
            needs_model=True,
        )
        for name, argv, pattern, setup in table
    ]


def working_cases() -> list[Case]:
    """Inputs that are unusual but valid: each must work and give the right result."""
    return [
        cli(
            "works/distributions",
            DIST,
            None,
            check=lambda f, c, r: None if (c / "d.h5").is_file() else "no output",
        ),
        cli(
            "works/distributions_one_bin",
            f"{DIST} --bins 1",
            None,
            check=lambda f, c, r: None if (c / "d.h5").is_file() else "no output",
        ),
        cli(
            "works/fit",
            FIT,
            None,
            check=lambda f, c, r: None if (c / "e.h5").is_file() else "no output",
        ),
        cli(
            "works/fit_integer_descriptors",
            "fit --descriptors {c}/i.npy --distributions {f}/dist.h5 -o {c}/e.h5",
            None,
            save_array("i.npy", np.arange(N_SAMPLES * DIM).reshape(N_SAMPLES, DIM)),
            check=lambda f, c, r: None if (c / "e.h5").is_file() else "no output",
        ),
        cli(
            "works/predict",
            f"{PRED} --atol 0 0.5 --quantiles 0 1 --confidence 0.9",
            None,
            check=csv_rows("p.csv", 10),
        ),
        cli(
            "works/predict_float64",
            "predict {f}/est.h5 --descriptors {c}/q.npy -o {c}/p.csv --atol 0.5",
            None,
            lambda f, c: np.save(c / "q.npy", np.load(f / "query.npy").astype(np.float64)),
            check=csv_rows("p.csv", 10),
        ),
        cli(
            "works/predict_calibrated_groups",
            "predict {f}/cal.h5 --descriptors {f}/query.npy --groups {f}/query_groups.npy "
            "-o {c}/p.csv --atol 0.5",
            None,
            check=csv_rows("p.csv", 10),
        ),
        cli(
            "works/calibrate",
            CAL,
            None,
            check=lambda f, c, r: None if (c / "c.h5").is_file() else "no output",
        ),
        cli(
            "works/dynamics",
            f"{DYN} --atol 0.5 --groups {{f}}/sizes.npy",
            None,
            check=csv_rows("d.csv", N_SAMPLES),
        ),
        cli(
            "works/describe",
            "describe {f}/est.h5",
            None,
            check=lambda f, c, r: None if '"ltau-estimator"' in r[1] else "no format",
        ),
        Case(
            "works/relax",
            "ltau relax",
            argv=tuple(f"{RELAX} --steps 2".split()),
            check=csv_rows("out/summary.csv", 2, finite=False),
            needs_model=True,
        ),
        Case(
            "works/relax_unmarked_estimator_warns",
            "ltau relax",
            argv=tuple(
                f"{RELAX} --steps 1 --atol 0.1".replace("model_est.h5", "unmarked_est.h5").split()
            ),
            check=warns(r"fingerprint"),
            needs_model=True,
        ),
        Case(
            "works/descriptors_npz",
            "ltau descriptors",
            argv=tuple(DESC.replace("d.npy", "d.npz").split()),
            needs_model=True,
            check=lambda f, c, r: None if (c / "d.npz").is_file() else "no output",
        ),
        Case(
            "works/fit_from_descriptors_archive_records_model",
            "ltau fit",
            argv=tuple(
                "fit --descriptors {f}/model_desc.npz --distributions {c}/d.h5 -o {c}/e.h5".split()
            ),
            setup=lambda f, c: _log_distributions(f / "mace_log.h5", c / "d.h5"),
            check=_records_fingerprint,
            needs_model=True,
        ),
    ]


def _log_distributions(log: Path, output: Path) -> None:
    from ltau import ErrorLog
    from ltau.distributions import save_distributions

    with ErrorLog(log) as opened:
        save_distributions(opened.distributions(n_bins=10), output)


def _records_fingerprint(f: Path, c: Path, result: Any) -> str | None:
    from ltau import LTAUEstimator

    if not (c / "e.h5").is_file():
        return "no output"
    with np.load(f / "model_desc.npz") as archive:
        expected = str(archive["model_sha256"])
    found = LTAUEstimator.load(c / "e.h5").metadata_.get("model_sha256")
    return None if found == expected else f"the estimator records model {found!r}"


# --------------------------------------------------------------- python cases
def _estimator(f: Path, name: str = "est.h5") -> Any:
    from ltau import LTAUEstimator

    return LTAUEstimator.load(f / name)


def _distributions(f: Path) -> Any:
    from ltau.distributions import load_distributions

    return load_distributions(f / "dist.h5")


def _train(f: Path) -> np.ndarray:
    return np.load(f / "train.npy")


def _query(f: Path) -> np.ndarray:
    return np.load(f / "query.npy")


def _fit(descriptors: Any = None, k: int = 5, **settings: Any) -> Callable[[Path, Path], Any]:
    from ltau import LTAUEstimator

    def call(f: Path, c: Path) -> Any:
        data = _train(f) if descriptors is None else descriptors
        return LTAUEstimator(k, **settings).fit(data, _distributions(f))

    return call


def _mass(n: int = 4, n_bins: int = 5) -> np.ndarray:
    return np.full((n, n_bins), 1.0 / n_bins)


def _bins(n_bins: int = 5) -> Any:
    from ltau import Bins

    return Bins.linear(0.0, 1.0, n_bins)


def estimator_cases() -> list[Case]:
    """LTAUEstimator: fit, predict, calibrate, PIT, save, load, set_params."""
    from ltau import LTAUEstimator

    fit, predict = "LTAUEstimator.fit", "LTAUEstimator.predict"
    cases = [
        py(
            f"estimator_fit/{name}",
            fit,
            _fit(build(N_SAMPLES, DIM)),
            rf"descriptors.*({pattern})|({pattern}).*descriptors",
        )
        for name, (build, pattern, _) in BAD_MATRICES.items()
        if name != "bool"  # booleans are numbers (0 and 1) to NumPy and to ltau's Python API
    ]
    cases += [
        py("estimator_fit/ragged_lists", fit, _fit([[1.0, 2.0], [3.0]]), r"descriptors"),
        py("estimator_fit/list_with_none", fit, _fit([[1.0, None]] * N_SAMPLES), r"descriptors"),
        py("estimator_fit/string", fit, _fit("descriptors"), r"descriptors"),
        py("estimator_fit/dict", fit, _fit({"a": 1}), r"descriptors"),
        py(
            "estimator_fit/rows_mismatch",
            fit,
            _fit(np.ones((N_SAMPLES - 1, DIM))),
            r"59 descriptor rows but 60",
        ),
        py(
            "estimator_fit/distributions_array",
            fit,
            lambda f, c: LTAUEstimator(5).fit(_train(f), np.ones((N_SAMPLES, 5))),
            r"ErrorDistributions",
        ),
        py("estimator_fit/k_zero", fit, _fit(k=0), r"n_neighbors must be a positive integer"),
        py("estimator_fit/k_negative", fit, _fit(k=-2), r"n_neighbors"),
        py("estimator_fit/k_bool", fit, _fit(k=True), r"n_neighbors"),
        py("estimator_fit/k_float", fit, _fit(k=2.5), r"n_neighbors"),
        py("estimator_fit/k_string", fit, _fit(k="5"), r"n_neighbors"),
        py("estimator_fit/k_nan", fit, _fit(k=float("nan")), r"n_neighbors"),
        py("estimator_fit/k_too_many", fit, _fit(k=10**12), r"exceeds the 60"),
        py("estimator_fit/weights", fit, _fit(weights="gaussian"), r"weights"),
        py("estimator_fit/distance_scale", fit, _fit(distance_scale="relative"), r"distance_scale"),
        py("estimator_fit/index", fit, _fit(index="annoy"), r"annoy|index"),
        py("estimator_fit/index_params_list", fit, _fit(index_params=[1]), r"index_params"),
        py(
            "estimator_fit/index_params_unknown",
            fit,
            _fit(index="hnsw", index_params={"x": 1}),
            r"unknown parameters|\bx\b",
        ),
        py(
            "estimator_fit/index_params_negative",
            fit,
            _fit(index="hnsw", index_params={"ef_search": -1}),
            r"ef_search",
        ),
        py(
            "estimator_fit/index_params_float",
            fit,
            _fit(index="hnsw", index_params={"M": 2.5}),
            r"\bM\b",
        ),
        py("estimator_fit/batch_size_zero", fit, _fit(batch_size=0), r"batch_size"),
        py(
            "estimator/set_params_unknown",
            "LTAUEstimator.set_params",
            lambda f, c: LTAUEstimator().set_params(k=3),
            r"unknown parameters",
        ),
        py(
            "estimator/unfitted_predict",
            predict,
            lambda f, c: LTAUEstimator().predict(_query(f)),
            r"not fitted",
        ),
        py(
            "estimator/unfitted_save",
            "LTAUEstimator.save",
            lambda f, c: LTAUEstimator().save(c / "e.h5"),
            r"not fitted",
        ),
        py(
            "estimator/unfitted_calibrate",
            "LTAUEstimator.calibrate",
            lambda f, c: LTAUEstimator().calibrate(_query(f), np.ones(10)),
            r"not fitted",
        ),
        py(
            "works/estimator_fit_integer",
            fit,
            _fit(np.arange(N_SAMPLES * DIM).reshape(N_SAMPLES, DIM)),
            None,
            check=lambda f, c, r: None if r.n_features_in_ == DIM else "wrong width",
        ),
        py(
            "works/estimator_predict_float64",
            predict,
            lambda f, c: _estimator(f).predict(_query(f).astype(np.float64), atol=0.5),
            None,
            check=same_prediction,
        ),
        py(
            "works/estimator_predict_list",
            predict,
            lambda f, c: _estimator(f).predict(_query(f).tolist(), atol=0.5),
            None,
            check=same_prediction,
        ),
    ]
    for name, (build, pattern, _) in BAD_MATRICES.items():
        if name in ("no_columns", "structured", "bool"):
            continue
        cases.append(
            py(
                f"estimator_predict/{name}",
                predict,
                lambda f, c, build=build: _estimator(f).predict(build(10, DIM)),
                rf"descriptors.*({pattern})|({pattern}).*descriptors",
            )
        )
    options: list[tuple[str, dict, str]] = [
        ("atol_nan", {"atol": float("nan")}, r"atol"),
        ("atol_negative", {"atol": -0.1}, r"atol"),
        ("atol_inf", {"atol": float("inf")}, r"atol"),
        ("atol_string", {"atol": "0.1"}, r"atol"),
        ("atol_complex", {"atol": 0.1 + 1j}, r"atol"),
        ("atol_matrix", {"atol": [[0.1]]}, r"atol"),
        ("quantiles_above_one", {"quantiles": 1.5}, r"quantiles"),
        ("quantiles_nan", {"quantiles": [0.5, float("nan")]}, r"quantiles"),
        ("quantiles_empty", {"quantiles": []}, r"quantiles"),
        ("quantiles_complex", {"quantiles": 0.5j}, r"quantiles"),
        ("quantiles_string", {"quantiles": "median"}, r"quantiles"),
        ("confidence_two", {"confidence": 2.0}, r"confidence"),
        ("confidence_nan", {"confidence": float("nan")}, r"confidence"),
        ("confidence_list", {"confidence": [0.5, 0.9]}, r"confidence"),
        ("return_pdf_string", {"return_pdf": "yes"}, r"return_pdf"),
        ("groups_float", {"groups": np.zeros(10)}, r"groups"),
        ("groups_short", {"groups": np.zeros(3, np.int64)}, r"groups"),
        ("groups_two_d", {"groups": np.zeros((10, 1), np.int64)}, r"groups"),
        ("groups_complex", {"groups": np.zeros(10, np.complex64)}, r"groups"),
        ("groups_strings", {"groups": np.array(["a"] * 10)}, r"groups"),
    ]
    for name, kwargs, pattern in options:
        cases.append(
            py(
                f"estimator_predict/{name}",
                predict,
                lambda f, c, kwargs=kwargs: _estimator(f).predict(_query(f), **kwargs),
                pattern,
            )
        )
    calibrate = "LTAUEstimator.calibrate"
    validation = lambda f: np.load(f / "val.npy")  # noqa: E731
    for name, (build, pattern, _) in BAD_VECTORS.items():
        cases.append(
            py(
                f"estimator_calibrate/errors_{name}",
                calibrate,
                lambda f, c, build=build: _estimator(f).calibrate(validation(f), build(30)),
                rf"errors.*({pattern})|({pattern}).*errors",
            )
        )
    cases += [
        py(
            "estimator_calibrate/method",
            calibrate,
            lambda f, c: _estimator(f).calibrate(validation(f), np.ones(30), "quantile"),
            r"quantile|method",
        ),
        py(
            "estimator_calibrate/widen_string",
            calibrate,
            lambda f, c: _estimator(f).calibrate(validation(f), np.ones(30), widen="no"),
            r"widen",
        ),
        py(
            "estimator_calibrate/groups_float",
            calibrate,
            lambda f, c: _estimator(f).calibrate(validation(f), np.ones(30), groups=np.zeros(30)),
            r"groups",
        ),
        py(
            "estimator_calibrate/all_errors_zero",
            calibrate,
            lambda f, c: _estimator(f).calibrate(validation(f), np.zeros(30), "scale"),
            r"zero|positive|errors",
        ),
        py(
            "estimator_pit/errors_negative",
            "LTAUEstimator.probability_integral_transform",
            lambda f, c: _estimator(f).probability_integral_transform(validation(f), -np.ones(30)),
            r"non-negative",
        ),
        py(
            "estimator_pit/errors_complex",
            "LTAUEstimator.probability_integral_transform",
            lambda f, c: _estimator(f).probability_integral_transform(
                validation(f), np.ones(30, complex)
            ),
            r"complex",
        ),
    ]
    save, load = "LTAUEstimator.save", "LTAUEstimator.load"
    cases += [
        py(
            "estimator_save/metadata_list",
            save,
            lambda f, c: _estimator(f).save(c / "e.h5", metadata=[1]),
            r"metadata must be a dict",
        ),
        py(
            "estimator_save/metadata_not_json",
            save,
            lambda f, c: _estimator(f).save(c / "e.h5", metadata={"a": {1, 2}}),
            r"JSON",
        ),
        py(
            "estimator_save/path_is_dir",
            save,
            lambda f, c: (c / "e.h5").mkdir() or _estimator(f).save(c / "e.h5"),
            r"is a directory",
        ),
        py(
            "estimator_save/missing_dir",
            save,
            lambda f, c: _estimator(f).save(c / "no" / "e.h5"),
            r"does not exist",
        ),
        py(
            "estimator_save/read_only_dir",
            save,
            lambda f, c: read_only_dir("ro")(f, c) or _estimator(f).save(c / "ro" / "e.h5"),
            r"permission|not permitted|read-only|not writable",
        ),
    ]
    for name, (builder, pattern) in BAD_FILES.items():
        cases.append(
            py(
                f"estimator_load/{name}",
                load,
                lambda f, c, builder=builder: (
                    then(builder("bad.h5"), f, c) and LTAUEstimator.load(c / "bad.h5")
                ),
                pattern,
            )
        )
    for name, build in (
        ("truncated", truncated("est.h5", "bad.h5")),
        ("flipped_byte", flipped_data("est.h5", "bad.h5")),
        ("foreign_hdf5", foreign_h5("bad.h5")),
        ("distributions_file", lambda f, c: shutil.copy(f / "dist.h5", c / "bad.h5")),
    ):
        cases.append(
            py(
                f"estimator_load/{name}",
                load,
                lambda f, c, build=build: then(build, f, c) and LTAUEstimator.load(c / "bad.h5"),
                r"corrupt|checksum|not a readable|not written by ltau|expected an",
            )
        )
    return cases


def recording_cases() -> list[Case]:
    """ErrorRecorder, ErrorLog, ErrorDistributions, Bins and the distributions files."""
    from ltau import Bins, ErrorDistributions, ErrorLog, ErrorRecorder
    from ltau.distributions import load_distributions, save_distributions

    def recorder(c: Path, n: int = 5) -> Any:
        return ErrorRecorder(n, bins=Bins.linear(0, 1, 4))

    new, rec, epoch = "ErrorRecorder", "ErrorRecorder.record", "ErrorRecorder.record_epoch"
    cases = [
        py(
            "recorder/n_samples_zero",
            new,
            lambda f, c: ErrorRecorder(0, log_path=c / "l.h5"),
            r"n_samples must be a positive integer",
        ),
        py(
            "recorder/n_samples_negative",
            new,
            lambda f, c: ErrorRecorder(-4, log_path=c / "l.h5"),
            r"n_samples",
        ),
        py(
            "recorder/n_samples_float",
            new,
            lambda f, c: ErrorRecorder(2.5, log_path=c / "l.h5"),
            r"n_samples",
        ),
        py(
            "recorder/n_samples_bool",
            new,
            lambda f, c: ErrorRecorder(True, log_path=c / "l.h5"),
            r"n_samples",
        ),
        py(
            "recorder/n_samples_string",
            new,
            lambda f, c: ErrorRecorder("9", log_path=c / "l.h5"),
            r"n_samples",
        ),
        py("recorder/no_bins_no_log", new, lambda f, c: ErrorRecorder(5), r"bins|log_path"),
        py("recorder/bins_not_bins", new, lambda f, c: ErrorRecorder(5, bins=[0, 1, 2]), r"bins"),
        py(
            "recorder/log_missing_dir",
            new,
            lambda f, c: ErrorRecorder(5, log_path=c / "no" / "l.h5"),
            r"does not exist",
        ),
        py(
            "recorder/log_is_dir",
            new,
            lambda f, c: (c / "l.h5").mkdir() or ErrorRecorder(5, log_path=c / "l.h5"),
            r"director",
        ),
        py(
            "recorder/log_exists",
            new,
            lambda f, c: (
                shutil.copy(f / "log.h5", c / "l.h5") and ErrorRecorder(5, log_path=c / "l.h5")
            ),
            r"exists",
        ),
        py(
            "recorder/log_read_only",
            new,
            lambda f, c: read_only_dir("ro")(f, c) or ErrorRecorder(5, log_path=c / "ro" / "l.h5"),
            r"permission|not permitted|read-only|not writable",
        ),
        py(
            "recorder/samples_without_log",
            new,
            lambda f, c: ErrorRecorder(5, bins=Bins.linear(0, 1, 4), samples={"a": np.arange(5)}),
            r"log_path",
        ),
        py(
            "recorder/samples_wrong_length",
            new,
            lambda f, c: ErrorRecorder(5, log_path=c / "l.h5", samples={"a": np.arange(3)}),
            r"\ba\b|samples",
        ),
        py(
            "recorder/samples_float",
            new,
            lambda f, c: ErrorRecorder(5, log_path=c / "l.h5", samples={"a": np.zeros(5)}),
            r"integer|\ba\b",
        ),
        py(
            "recorder/provenance_not_json",
            new,
            lambda f, c: ErrorRecorder(5, log_path=c / "l.h5", provenance={"a": object()}),
            r"JSON|provenance",
        ),
        py(
            "recorder/resume_missing",
            "ErrorRecorder.resume",
            lambda f, c: ErrorRecorder.resume(c / "absent.h5"),
            r"does not exist",
        ),
        py(
            "recorder/resume_distributions_file",
            "ErrorRecorder.resume",
            lambda f, c: (
                shutil.copy(f / "dist.h5", c / "d.h5") and ErrorRecorder.resume(c / "d.h5")
            ),
            r"expected an ltau-error-log",
        ),
        py(
            "recorder/record_ids_out_of_range",
            rec,
            lambda f, c: recorder(c).record([5], [0.1]),
            r"ids must lie in \[0, 5\)",
        ),
        py(
            "recorder/record_ids_negative",
            rec,
            lambda f, c: recorder(c).record([-1], [0.1]),
            r"ids",
        ),
        py(
            "recorder/record_ids_float",
            rec,
            lambda f, c: recorder(c).record([0.5], [0.1]),
            r"ids must be integers",
        ),
        py(
            "recorder/record_ids_two_d",
            rec,
            lambda f, c: recorder(c).record([[0]], [0.1]),
            r"ids must be 1-D",
        ),
        py(
            "recorder/record_length_mismatch",
            rec,
            lambda f, c: recorder(c).record([0, 1], [0.1]),
            r"2 ids but 1 errors",
        ),
        py(
            "recorder/record_twice",
            rec,
            lambda f, c: recorder(c).record([0, 0], [0.1, 0.2]),
            r"recorded twice",
        ),
        py(
            "recorder/end_epoch_empty",
            "ErrorRecorder.end_epoch",
            lambda f, c: recorder(c).end_epoch(),
            r"no errors were recorded",
        ),
        py(
            "recorder/end_epoch_missing",
            "ErrorRecorder.end_epoch",
            lambda f, c: (r := recorder(c)).record([0], [0.1]) or r.end_epoch(),
            r"not recorded this epoch",
        ),
        py(
            "recorder/end_epoch_member_negative",
            "ErrorRecorder.end_epoch",
            lambda f, c: (r := recorder(c)).record(np.arange(5), np.ones(5)) or r.end_epoch(-1),
            r"member",
        ),
        py(
            "recorder/record_epoch_wrong_length",
            epoch,
            lambda f, c: recorder(c).record_epoch(np.ones(4)),
            r"needs 5 errors",
        ),
        py(
            "recorder/record_epoch_member_string",
            epoch,
            lambda f, c: recorder(c).record_epoch(np.ones(5), member="0"),
            r"member",
        ),
        py(
            "recorder/distributions_none_recorded",
            "ErrorRecorder.distributions",
            lambda f, c: recorder(c).distributions(),
            r"no |epoch|recorded",
        ),
        py(
            "recorder/record_after_close",
            rec,
            lambda f, c: (
                (r := ErrorRecorder(5, log_path=c / "l.h5")).close() or r.record_epoch(np.ones(5))
            ),
            r"closed",
        ),
    ]
    for name, (build, pattern, _) in BAD_VECTORS.items():
        if name in ("short", "empty", "two_d"):
            continue
        cases.append(
            py(
                f"recorder/record_epoch_{name}",
                epoch,
                lambda f, c, build=build: recorder(c).record_epoch(build(5)),
                rf"errors.*({pattern})|({pattern}).*errors",
            )
        )
        cases.append(
            py(
                f"recorder/record_{name}",
                rec,
                lambda f, c, build=build: recorder(c).record(np.arange(5), build(5)),
                rf"errors.*({pattern})|({pattern}).*errors",
            )
        )
    log_distributions = "ErrorLog.distributions"

    def opened(f: Path) -> Any:
        return ErrorLog(f / "log.h5")

    cases += [
        py(
            "error_log/missing",
            "ErrorLog",
            lambda f, c: ErrorLog(c / "absent.h5"),
            r"does not exist",
        ),
        py(
            "error_log/estimator_file",
            "ErrorLog",
            lambda f, c: ErrorLog(f / "est.h5"),
            r"expected an ltau-error-log",
        ),
        py(
            "error_log/truncated",
            "ErrorLog",
            lambda f, c: truncated("log.h5", "l.h5")(f, c) or ErrorLog(c / "l.h5"),
            r"corrupt|truncat|not a readable",
        ),
        py(
            "error_log/n_bins_zero",
            log_distributions,
            lambda f, c: opened(f).distributions(n_bins=0),
            r"n_bins must be a positive integer",
        ),
        py(
            "error_log/n_bins_huge",
            log_distributions,
            lambda f, c: opened(f).distributions(n_bins=10**9),
            r"n_bins must be at most",
        ),
        py(
            "error_log/n_bins_float",
            log_distributions,
            lambda f, c: opened(f).distributions(n_bins=10.5),
            r"n_bins",
        ),
        py(
            "error_log/spacing",
            log_distributions,
            lambda f, c: opened(f).distributions(spacing="cubic"),
            r"spacing",
        ),
        py(
            "error_log/members_absent",
            log_distributions,
            lambda f, c: opened(f).distributions(members=[3]),
            r"members",
        ),
        py(
            "error_log/members_string",
            log_distributions,
            lambda f, c: opened(f).distributions(members="0"),
            r"members",
        ),
        py(
            "error_log/skip_negative",
            log_distributions,
            lambda f, c: opened(f).distributions(skip_epochs=-1),
            r"skip_epochs",
        ),
        py(
            "error_log/skip_all",
            log_distributions,
            lambda f, c: opened(f).distributions(skip_epochs=6),
            r"after skipping",
        ),
        py(
            "error_log/samples_out_of_range",
            log_distributions,
            lambda f, c: opened(f).distributions(samples=[60]),
            r"samples|\[0, 60\)",
        ),
        py(
            "error_log/bins_not_bins",
            log_distributions,
            lambda f, c: opened(f).distributions(bins=(0, 1)),
            r"bins",
        ),
        py(
            "error_log/to_array_members_absent",
            "ErrorLog.to_array",
            lambda f, c: opened(f).to_array(members=[5]),
            r"members",
        ),
    ]
    from_errors = "ErrorDistributions.from_errors"
    for name, (build, pattern, _) in BAD_MATRICES.items():
        if name in ("structured", "pickled_objects", "no_columns", "bool"):
            continue
        cases.append(
            py(
                f"distributions_from_errors/{name}",
                from_errors,
                lambda f, c, build=build: ErrorDistributions.from_errors(build(6, 5)),
                rf"errors.*({pattern})|({pattern}).*errors",
            )
        )
    cases += [
        py(
            "distributions_from_errors/negative",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(-np.ones((3, 4))),
            r"non-negative",
        ),
        py(
            "distributions_from_errors/n_bins_zero",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(np.ones((3, 4)), n_bins=0),
            r"n_bins",
        ),
        py(
            "distributions_from_errors/n_bins_huge",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(np.ones((3, 4)), n_bins=10**10),
            r"n_bins must be at most",
        ),
        py(
            "distributions_from_errors/spacing",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(np.ones((3, 4)), spacing="cubic"),
            r"spacing",
        ),
        py(
            "distributions_from_errors/all_zero_log",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(np.zeros((3, 4))),
            r"zero",
        ),
        py(
            "distributions/counts_negative",
            "ErrorDistributions",
            lambda f, c: ErrorDistributions(_bins(), -np.ones((2, 5), np.int64)),
            r"counts",
        ),
        py(
            "distributions/counts_float",
            "ErrorDistributions",
            lambda f, c: ErrorDistributions(_bins(), np.ones((2, 5))),
            r"counts",
        ),
        py(
            "distributions/counts_wrong_width",
            "ErrorDistributions",
            lambda f, c: ErrorDistributions(_bins(), np.ones((2, 4), np.int64)),
            r"counts",
        ),
        py(
            "distributions/counts_empty_row",
            "ErrorDistributions",
            lambda f, c: ErrorDistributions(_bins(), np.zeros((2, 5), np.int64)),
            r"no recorded",
        ),
        py(
            "distributions/no_samples",
            "ErrorDistributions",
            lambda f, c: ErrorDistributions(_bins(), np.zeros((0, 5), np.int64)),
            r"at least one",
        ),
        py(
            "distributions/exceedance_nan",
            "ErrorDistributions.exceedance",
            lambda f, c: _distributions(f).exceedance(float("nan")),
            r"atol",
        ),
        py(
            "distributions/quantile_two",
            "ErrorDistributions.quantile",
            lambda f, c: _distributions(f).quantile(2.0),
            r"levels|quantile|\[0, 1\]",
        ),
        py(
            "distributions/subset_out_of_range",
            "ErrorDistributions.subset",
            lambda f, c: _distributions(f).subset(np.array([99])),
            r"rows|ids|\[0, 60\)",
        ),
        py(
            "distributions/pooled_other_bins",
            "ErrorDistributions.pooled",
            lambda f, c: _distributions(f).pooled(ErrorDistributions.from_errors(np.ones((60, 2)))),
            r"bins",
        ),
        py("bins/log_low_zero", "Bins.log", lambda f, c: Bins.log(0.0, 1.0), r"0 < low"),
        py("bins/log_nan", "Bins.log", lambda f, c: Bins.log(float("nan"), 1.0), r"low"),
        py(
            "bins/linear_reversed", "Bins.linear", lambda f, c: Bins.linear(1.0, 0.5), r"low < high"
        ),
        py(
            "bins/n_bins_huge",
            "Bins.linear",
            lambda f, c: Bins.linear(0, 1, 10**9),
            r"n_bins must be at most",
        ),
        py("bins/n_bins_zero", "Bins.log", lambda f, c: Bins.log(0.1, 1, 0), r"n_bins"),
        py(
            "bins/edges_decreasing",
            "Bins",
            lambda f, c: Bins(np.array([1.0, 0.5])),
            r"strictly increasing",
        ),
        py("bins/edges_nan", "Bins", lambda f, c: Bins(np.array([0.0, np.nan])), r"finite"),
        py("bins/edges_negative", "Bins", lambda f, c: Bins(np.array([-1.0, 1.0])), r">= 0"),
        py("bins/edges_complex", "Bins", lambda f, c: Bins(np.array([0.0, 1.0 + 1j])), r"complex"),
        py("bins/spacing", "Bins", lambda f, c: Bins(np.array([0.0, 1.0]), "cubic"), r"spacing"),
        py(
            "distributions_save/not_distributions",
            "save_distributions",
            lambda f, c: save_distributions(np.ones(3), c / "d.h5"),
            r"ErrorDistributions",
        ),
        py(
            "distributions_save/missing_dir",
            "save_distributions",
            lambda f, c: save_distributions(_distributions(f), c / "no" / "d.h5"),
            r"does not exist",
        ),
        py(
            "distributions_save/read_only_dir",
            "save_distributions",
            lambda f, c: (
                read_only_dir("ro")(f, c)
                or save_distributions(_distributions(f), c / "ro" / "d.h5")
            ),
            r"permission|not permitted|read-only|not writable",
        ),
        py(
            "distributions_load/missing",
            "load_distributions",
            lambda f, c: load_distributions(c / "absent.h5"),
            r"does not exist",
        ),
        py(
            "distributions_load/log_file",
            "load_distributions",
            lambda f, c: load_distributions(f / "log.h5"),
            r"expected an ltau-distributions",
        ),
        py(
            "distributions_load/flipped_byte",
            "load_distributions",
            lambda f, c: flipped_data("dist.h5", "d.h5")(f, c) or load_distributions(c / "d.h5"),
            r"corrupt|checksum|not a readable",
        ),
        py(
            "works/distributions_from_errors_linear_zeros",
            from_errors,
            lambda f, c: ErrorDistributions.from_errors(np.zeros((3, 4)), spacing="linear"),
            None,
            check=lambda f, c, r: (
                None
                if np.allclose(r.expected_error(), r.bins.edges[1] / 2)
                else "expected errors of all-zero trajectories are not the first bin's centre"
            ),
        ),
        py(
            "works/bins_one",
            "Bins.log",
            lambda f, c: Bins.log(0.1, 1.0, 1),
            None,
            check=lambda f, c, r: None if r.n_bins == 1 else "not one bin",
        ),
    ]
    return cases


def calibration_and_metric_cases() -> list[Case]:
    """Calibrators, the distance widening and every metric."""
    from ltau import metrics
    from ltau.calibration import (
        DistanceWidening,
        ErrorScaleCalibrator,
        IsotonicCalibrator,
        calibrator_from_dict,
        make_calibrator,
    )

    cases = []
    for cls in (IsotonicCalibrator, ErrorScaleCalibrator):
        entry = f"{cls.__name__}.fit"
        tag = cls.__name__
        bad = [
            ("mass_nan", lambda: np.full((4, 5), np.nan), _bins, lambda: np.ones(4), r"mass"),
            ("mass_not_summing", lambda: np.ones((4, 5)), _bins, lambda: np.ones(4), r"sum to 1"),
            ("mass_wrong_width", lambda: _mass(4, 3), _bins, lambda: np.ones(4), r"shape"),
            (
                "mass_complex",
                lambda: _mass().astype(complex),
                _bins,
                lambda: np.ones(4),
                r"complex",
            ),
            ("mass_negative", lambda: _mass() * -1, _bins, lambda: np.ones(4), r"non-negative"),
            ("bins_not_bins", _mass, lambda: np.linspace(0, 1, 6), lambda: np.ones(4), r"bins"),
            ("observed_negative", _mass, _bins, lambda: -np.ones(4), r"non-negative"),
            ("observed_nan", _mass, _bins, lambda: np.full(4, np.nan), r"NaN"),
            ("observed_short", _mass, _bins, lambda: np.ones(3), r"3 entries but mass has 4"),
            ("observed_complex", _mass, _bins, lambda: np.ones(4, complex), r"complex"),
        ]
        for name, mass, bins, observed, pattern in bad:
            cases.append(
                py(
                    f"{tag}/{name}",
                    entry,
                    lambda f, c, cls=cls, m=mass, b=bins, o=observed: cls().fit(m(), b(), o()),
                    pattern,
                )
            )
        cases.append(
            py(
                f"{tag}/unfitted",
                f"{tag}.exceedance",
                lambda f, c, cls=cls: cls().exceedance(_mass(), _bins(), 0.5),
                r"not fitted|fit",
            )
        )
        cases.append(
            py(
                f"{tag}/from_dict_wrong_version",
                f"{tag}.from_dict",
                lambda f, c, cls=cls: cls.from_dict({"kind": cls.kind, "format_version": 99}),
                r"format_version",
            )
        )
    widening = "DistanceWidening.fit"
    ones = np.ones(10)
    cases += [
        py(
            "calibrator_from_dict/not_dict",
            "calibrator_from_dict",
            lambda f, c: calibrator_from_dict([1]),
            r"must be a dict",
        ),
        py(
            "calibrator_from_dict/unknown_kind",
            "calibrator_from_dict",
            lambda f, c: calibrator_from_dict({"kind": "magic"}),
            r"unknown calibrator kind",
        ),
        py(
            "make_calibrator/unknown",
            "make_calibrator",
            lambda f, c: make_calibrator("quantile"),
            r"unknown calibration method",
        ),
        py(
            "make_calibrator/not_string",
            "make_calibrator",
            lambda f, c: make_calibrator(None),
            r"unknown calibration method",
        ),
        py(
            "widening/nan_scores",
            widening,
            lambda f, c: DistanceWidening.fit(np.full(10, np.nan), None, ones, ones),
            r"OOD scores",
        ),
        py(
            "widening/zero_scores",
            widening,
            lambda f, c: DistanceWidening.fit(np.zeros(10), None, ones, ones),
            r"OOD scores",
        ),
        py(
            "widening/length_mismatch",
            widening,
            lambda f, c: DistanceWidening.fit(np.ones(9), None, ones, ones),
            r"OOD scores|shape",
        ),
        py(
            "widening/negative_errors",
            widening,
            lambda f, c: DistanceWidening.fit(ones, None, ones, -ones),
            r"non-negative",
        ),
        py(
            "widening/complex_errors",
            widening,
            lambda f, c: DistanceWidening.fit(ones, None, ones, ones * 1j),
            r"complex",
        ),
        py(
            "widening/negative_exponent",
            "DistanceWidening",
            lambda f, c: DistanceWidening(-1.0, 0.0, 1.0, 1.0),
            r"exponent",
        ),
    ]
    pair = [
        ("len_mismatch", np.ones(5), np.ones(4), r"equal length"),
        ("nan", np.full(5, np.nan), np.ones(5), r"NaN"),
        ("empty", np.ones(0), np.ones(0), r"empty"),
        ("complex", np.ones(5, complex), np.ones(5), r"complex"),
        ("two_d", np.ones((5, 2)), np.ones(5), r"1-D"),
        ("strings", np.array(["a"] * 5), np.ones(5), r"real numbers|numeric"),
    ]
    for name, a, b, pattern in pair:
        cases.append(
            py(
                f"metrics/spearman_{name}",
                "metrics.spearman",
                lambda f, c, a=a, b=b: metrics.spearman(a, b),
                pattern,
            )
        )
        cases.append(
            py(
                f"metrics/auroc_{name}",
                "metrics.auroc",
                lambda f, c, a=a, b=b: metrics.auroc(a, b),
                pattern,
            )
        )
    labels = np.arange(20) % 2
    scores = np.linspace(0, 1, 20)
    cases += [
        py(
            "metrics/auroc_labels_not_binary",
            "metrics.auroc",
            lambda f, c: metrics.auroc(scores, np.arange(20)),
            r"labels",
        ),
        py(
            "metrics/precision_recall_above_one",
            "metrics.precision_at_recall",
            lambda f, c: metrics.precision_at_recall(scores, labels, 1.5),
            r"recall",
        ),
        py(
            "metrics/precision_recall_nan",
            "metrics.precision_at_recall",
            lambda f, c: metrics.precision_at_recall(scores, labels, float("nan")),
            r"recall",
        ),
        py(
            "metrics/interval_coverage_mismatch",
            "metrics.interval_coverage",
            lambda f, c: metrics.interval_coverage(np.ones(3), np.ones(2), np.ones(3)),
            r"length",
        ),
        py("metrics/rmse_empty", "metrics.rmse", lambda f, c: metrics.rmse([]), r"empty"),
        py("metrics/rmse_complex", "metrics.rmse", lambda f, c: metrics.rmse([1j]), r"complex"),
        py("metrics/rmse_inf", "metrics.rmse", lambda f, c: metrics.rmse([np.inf]), r"infinity"),
        py(
            "metrics/miscalibration_pit_above_one",
            "metrics.miscalibration_area",
            lambda f, c: metrics.miscalibration_area([0.5, 1.5]),
            r"\[0, 1\]",
        ),
        py(
            "metrics/miscalibration_levels_decreasing",
            "metrics.miscalibration_area",
            lambda f, c: metrics.miscalibration_area([0.5], [0.9, 0.1]),
            r"increasing",
        ),
        py(
            "metrics/miscalibration_one_level",
            "metrics.miscalibration_area",
            lambda f, c: metrics.miscalibration_area([0.5], [0.5]),
            r"2 levels",
        ),
        py(
            "metrics/calibration_curve_nan",
            "metrics.calibration_curve",
            lambda f, c: metrics.calibration_curve([np.nan]),
            r"NaN",
        ),
        py(
            "metrics/crps_bad_mass",
            "metrics.crps_histogram",
            lambda f, c: metrics.crps_histogram(np.ones((2, 5)), _bins(), np.ones(2)),
            r"sum to 1",
        ),
        py(
            "metrics/nll_observed_short",
            "metrics.nll_histogram",
            lambda f, c: metrics.nll_histogram(_mass(), _bins(), np.ones(2)),
            r"entries",
        ),
        py(
            "metrics/nll_density_floor_negative",
            "metrics.nll_histogram",
            lambda f, c: metrics.nll_histogram(_mass(), _bins(), np.ones(4), density_floor=-1),
            r"density_floor",
        ),
        py(
            "metrics/ause_n_steps_zero",
            "metrics.ause",
            lambda f, c: metrics.ause(scores, scores, n_steps=0),
            r"n_steps",
        ),
        py(
            "metrics/ence_n_bins_zero",
            "metrics.expected_normalized_calibration_error",
            lambda f, c: metrics.expected_normalized_calibration_error(scores, scores, 0),
            r"n_bins",
        ),
        py(
            "metrics/binned_too_many_bins",
            "metrics.binned_error_calibration",
            lambda f, c: metrics.binned_error_calibration(scores, scores, 50),
            r"n_bins|points",
        ),
        py(
            "metrics/uq_lower_without_upper",
            "metrics.uq_metrics",
            lambda f, c: metrics.uq_metrics(scores, scores, lower=scores),
            r"lower with upper",
        ),
        py(
            "metrics/uq_exceedance_without_atol",
            "metrics.uq_metrics",
            lambda f, c: metrics.uq_metrics(scores, scores, exceedance=scores),
            r"atol",
        ),
        py(
            "metrics/uq_confidence_one",
            "metrics.uq_metrics",
            lambda f, c: metrics.uq_metrics(
                scores, scores, lower=scores, upper=scores, confidence=1.0
            ),
            r"confidence",
        ),
        py(
            "metrics/uq_observed_negative",
            "metrics.uq_metrics",
            lambda f, c: metrics.uq_metrics(-scores, scores),
            r"non-negative",
        ),
        py(
            "works/metrics_spearman_constant",
            "metrics.spearman",
            lambda f, c: metrics.spearman(np.ones(20), scores),
            None,
            check=lambda f, c, r: (
                None
                if r is None or not np.isfinite(r) or r == 0
                else f"spearman of a constant prediction is {r}"
            ),
        ),
    ]
    return cases


def analysis_cases() -> list[Case]:
    """Selection, tuning and training dynamics."""
    from ltau import ErrorLog
    from ltau.dynamics import DynamicsTable, groups_from_sizes, training_dynamics
    from ltau.selection import RepeatedGroupFolds, burn_in_candidates, choose_configuration
    from ltau.tuning import TuningStrategy, hardness_weights, suspicious_configs

    dyn = "training_dynamics"
    log = lambda f: f / "log.h5"  # noqa: E731
    cases = [
        py(
            "selection/folds_one",
            "RepeatedGroupFolds",
            lambda f, c: RepeatedGroupFolds(1),
            r"n_folds",
        ),
        py(
            "selection/folds_string",
            "RepeatedGroupFolds",
            lambda f, c: RepeatedGroupFolds("5"),
            r"n_folds",
        ),
        py(
            "selection/repeats_zero",
            "RepeatedGroupFolds",
            lambda f, c: RepeatedGroupFolds(3, 0),
            r"n_repeats",
        ),
        py(
            "selection/too_few_groups",
            "RepeatedGroupFolds.fold_assignments",
            lambda f, c: RepeatedGroupFolds(5).fold_assignments(np.zeros(10, np.int64)),
            r"at least 5 groups",
        ),
        py(
            "selection/groups_nan",
            "RepeatedGroupFolds.fold_assignments",
            lambda f, c: RepeatedGroupFolds(2).fold_assignments(np.full(10, np.nan)),
            r"groups",
        ),
        py(
            "selection/burn_in_source",
            "burn_in_candidates",
            lambda f, c: burn_in_candidates(np.ones((3, 3))),
            r"source|ErrorLog",
        ),
        py(
            "selection/burn_in_n_bins_zero",
            "burn_in_candidates",
            lambda f, c: burn_in_candidates(ErrorLog(log(f)), n_bins=0),
            r"n_bins",
        ),
        py(
            "selection/burn_in_members_absent",
            "burn_in_candidates",
            lambda f, c: burn_in_candidates(ErrorLog(log(f)), members=[4]),
            r"members|epoch",
        ),
        py(
            "selection/choose_no_candidates",
            "choose_configuration",
            lambda f, c: choose_configuration(
                _train(f), {}, np.load(f / "val.npy"), np.load(f / "val_errors.npy"), None
            ),
            r"candidates",
        ),
        py(
            "selection/choose_errors_short",
            "choose_configuration",
            lambda f, c: choose_configuration(
                _train(f), {0: _distributions(f)}, np.load(f / "val.npy"), np.ones(3), None
            ),
            r"entries|errors",
        ),
        py(
            "selection/choose_k_zero",
            "choose_configuration",
            lambda f, c: choose_configuration(
                _train(f),
                {0: _distributions(f)},
                np.load(f / "val.npy"),
                np.load(f / "val_errors.npy"),
                None,
                k_candidates=(0,),
            ),
            r"n_neighbors|k",
        ),
        py(
            "selection/choose_distance_scale",
            "choose_configuration",
            lambda f, c: choose_configuration(
                _train(f),
                {0: _distributions(f)},
                np.load(f / "val.npy"),
                np.load(f / "val_errors.npy"),
                None,
                distance_scales=("relative",),
            ),
            r"distance_scale",
        ),
        py(
            "tuning/hardness_nan",
            "hardness_weights",
            lambda f, c: hardness_weights(np.array([1.0, np.nan])),
            r"finite",
        ),
        py(
            "tuning/hardness_zero",
            "hardness_weights",
            lambda f, c: hardness_weights(np.array([1.0, 0.0])),
            r"positive",
        ),
        py(
            "tuning/hardness_empty",
            "hardness_weights",
            lambda f, c: hardness_weights([]),
            r"non-empty",
        ),
        py(
            "tuning/hardness_power_nan",
            "hardness_weights",
            lambda f, c: hardness_weights(np.arange(1.0, 5.0), power=float("nan")),
            r"power",
        ),
        py(
            "tuning/hardness_power_negative",
            "hardness_weights",
            lambda f, c: hardness_weights(np.arange(1.0, 5.0), power=-1.0),
            r"power",
        ),
        py(
            "tuning/hardness_low_above_one",
            "hardness_weights",
            lambda f, c: hardness_weights(np.arange(1.0, 5.0), low=2.0),
            r"low",
        ),
        py(
            "tuning/hardness_high_below_one",
            "hardness_weights",
            lambda f, c: hardness_weights(np.arange(1.0, 5.0), high=0.5),
            r"high",
        ),
        py(
            "tuning/hardness_complex",
            "hardness_weights",
            lambda f, c: hardness_weights(np.ones(4) * 1j),
            r"complex",
        ),
        py(
            "tuning/suspicious_quantile_two",
            "suspicious_configs",
            lambda f, c: suspicious_configs(np.ones(4), np.ones(4), 2.0),
            r"quantile",
        ),
        py(
            "tuning/suspicious_zero_mean",
            "suspicious_configs",
            lambda f, c: suspicious_configs(np.zeros(4), np.ones(4), 0.1),
            r"mean|positive",
        ),
        py(
            "tuning/suspicious_mismatch",
            "suspicious_configs",
            lambda f, c: suspicious_configs(np.ones(4), np.ones(3), 0.1),
            r"length|shape",
        ),
        py(
            "tuning/strategy_power_nan",
            "TuningStrategy",
            lambda f, c: TuningStrategy(power=float("nan")),
            r"power",
        ),
        py(
            "tuning/strategy_low_zero",
            "TuningStrategy",
            lambda f, c: TuningStrategy(low=0.0),
            r"low",
        ),
        py(
            "tuning/strategy_drop_quantile_one",
            "TuningStrategy",
            lambda f, c: TuningStrategy(drop_quantile=1.0),
            r"drop_quantile",
        ),
        py(
            "tuning/plan_not_table",
            "TuningStrategy.plan",
            lambda f, c: TuningStrategy().plan(np.ones(3)),
            r"table|DynamicsTable",
        ),
        py(
            "dynamics_api/sizes_zero",
            "groups_from_sizes",
            lambda f, c: groups_from_sizes([3, 0]),
            r"positive",
        ),
        py(
            "dynamics_api/sizes_float",
            "groups_from_sizes",
            lambda f, c: groups_from_sizes([2.5]),
            r"integers",
        ),
        py(
            "dynamics_api/sizes_empty",
            "groups_from_sizes",
            lambda f, c: groups_from_sizes([]),
            r"non-empty",
        ),
        py(
            "dynamics_api/sizes_complex",
            "groups_from_sizes",
            lambda f, c: groups_from_sizes(np.array([2 + 0j])),
            r"integers|complex",
        ),
        py(
            "dynamics_api/sizes_nan",
            "groups_from_sizes",
            lambda f, c: groups_from_sizes(np.array([np.nan])),
            r"integers",
        ),
        py(
            "dynamics_api/atol_nan",
            dyn,
            lambda f, c: training_dynamics(log(f), float("nan")),
            r"atol",
        ),
        py("dynamics_api/atol_string", dyn, lambda f, c: training_dynamics(log(f), "0.1"), r"atol"),
        py(
            "dynamics_api/skip_negative",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, skip_epochs=-1),
            r"skip_epochs",
        ),
        py(
            "dynamics_api/skip_all",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, skip_epochs=6),
            r"skip|epoch",
        ),
        py(
            "dynamics_api/members_absent",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, members=[5]),
            r"members",
        ),
        py(
            "dynamics_api/groups_short",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, groups=np.zeros(5, np.int64)),
            r"groups",
        ),
        py(
            "dynamics_api/groups_negative",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, groups=-np.ones(60, np.int64)),
            r"group",
        ),
        py(
            "dynamics_api/groups_float",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, groups=np.zeros(60)),
            r"groups",
        ),
        py(
            "dynamics_api/group_reduce",
            dyn,
            lambda f, c: training_dynamics(log(f), 0.1, group_reduce="max"),
            r"group_reduce",
        ),
        py(
            "dynamics_api/log_missing",
            dyn,
            lambda f, c: training_dynamics(c / "absent.h5", 0.1),
            r"does not exist",
        ),
        py(
            "dynamics_api/log_is_estimator",
            dyn,
            lambda f, c: training_dynamics(f / "est.h5", 0.1),
            r"expected an ltau-error-log",
        ),
    ]
    del DynamicsTable
    return cases


def atomistic_cases() -> list[Case]:
    """The ASE calculator, the model loaders, structure reading, relaxation and the pipeline."""

    def trained(f: Path) -> Any:
        from ltau.integrations.mace import TrainedMACE

        return TrainedMACE.load(f / "model.pt")

    def calculator(f: Path, estimator: Any, **kwargs: Any) -> Any:
        from ltau.integrations.mace import LTAUCalculator

        return LTAUCalculator(trained(f), estimator, **kwargs)

    def structure(f: Path, name: str = "structures.xyz") -> Any:
        import ase.io

        return ase.io.read(f / name, index=0)

    def energy_of(f: Path, atoms: Any) -> Any:
        atoms.calc = calculator(f, _estimator(f, "model_est.h5"))
        return atoms.get_potential_energy()

    def with_nan_position(f: Path) -> Any:
        atoms = structure(f)
        atoms.positions[0, 0] = np.nan
        return atoms

    def load_ff(path: Callable[[Path, Path], Path], **kwargs: Any) -> Callable[[Path, Path], Any]:
        def call(f: Path, c: Path) -> Any:
            from ltau.integrations.models import load_forcefield

            return load_forcefield(path(f, c), **kwargs)

        return call

    def zip_file(f: Path, c: Path) -> Path:
        import zipfile

        with zipfile.ZipFile(c / "m.pt", "w") as archive:
            archive.writestr("hello.txt", "not a model")
        return c / "m.pt"

    def read(path: Callable[[Path, Path], Path], **kwargs: Any) -> Callable[[Path, Path], Any]:
        def call(f: Path, c: Path) -> Any:
            from ltau.atomistic.structures import read_structures

            return read_structures(path(f, c), **kwargs)

        return call

    def relax_with(**kwargs: Any) -> Callable[[Path, Path], Any]:
        def call(f: Path, c: Path) -> Any:
            from ltau.atomistic.relaxation import relax

            atoms = kwargs.pop("atoms", None) or structure(f)
            return relax(atoms, calculator(f, _estimator(f, "model_est.h5")), **kwargs)

        return call

    def split(fraction: Any) -> Callable[[Path, Path], Any]:
        def call(f: Path, c: Path) -> Any:
            from ltau.atomistic.pipeline import split_validation
            from ltau.atomistic.structures import read_structures

            frames = read_structures(
                f / "train.xyz", energy_key="REF_energy", forces_key="REF_forces"
            )
            return split_validation(frames, fraction, 0)

        return call

    calc, ff, rs = "LTAUCalculator", "load_forcefield", "read_structures"
    table = [
        py("calculator/not_estimator", calc, lambda f, c: calculator(f, "est.h5"), r"estimator"),
        py(
            "calculator/unfitted_estimator",
            calc,
            lambda f, c: calculator(f, __import__("ltau").LTAUEstimator()),
            r"not fitted",
        ),
        py(
            "calculator/estimator_width",
            calc,
            lambda f, c: calculator(f, _estimator(f, "wide_est.h5")),
            r"5-dimensional descriptors",
        ),
        py(
            "calculator/estimator_of_other_model",
            calc,
            lambda f, c: calculator(f, _estimator(f, "other_model_est.h5")),
            r"another model",
        ),
        py(
            "calculator/atol_nan",
            calc,
            lambda f, c: calculator(f, _estimator(f, "model_est.h5"), atol=float("nan")),
            r"atol",
        ),
        py(
            "calculator/atol_negative",
            calc,
            lambda f, c: calculator(f, _estimator(f, "model_est.h5"), atol=-1),
            r"atol",
        ),
        py(
            "calculator/unknown_element",
            "LTAUCalculator.calculate",
            lambda f, c: energy_of(f, structure(f, "oxygen.xyz")),
            r"element\(s\) O",
        ),
        py(
            "calculator/nan_position",
            "LTAUCalculator.calculate",
            lambda f, c: energy_of(f, with_nan_position(f)),
            r"position|NaN|finite",
        ),
        py(
            "calculator/no_atoms",
            "LTAUCalculator.calculate",
            lambda f, c: energy_of(f, __import__("ase").Atoms()),
            r"atoms|empty",
        ),
        py("load_forcefield/missing", ff, load_ff(lambda f, c: c / "absent.pt"), r"does not exist"),
        py("load_forcefield/directory", ff, load_ff(lambda f, c: f), r"does not exist|director"),
        py(
            "load_forcefield/empty",
            ff,
            load_ff(lambda f, c: ((c / "m.pt").write_bytes(b"") and c / "m.pt") or c / "m.pt"),
            r"not a readable|model file|empty",
        ),
        py(
            "load_forcefield/garbage",
            ff,
            load_ff(lambda f, c: (c / "m.pt").write_bytes(b"\x00" * 100) and c / "m.pt"),
            r"not a readable|model file",
        ),
        py(
            "load_forcefield/zip_not_torch",
            ff,
            load_ff(zip_file),
            r"not a readable|model file|m\.pt",
        ),
        py(
            "load_forcefield/estimator_file",
            ff,
            load_ff(lambda f, c: f / "est.h5"),
            r"not a readable|model file|est\.h5",
        ),
        py(
            "load_forcefield/npy_file",
            ff,
            load_ff(lambda f, c: f / "train.npy"),
            r"not a readable|model file|train\.npy",
        ),
        py(
            "load_forcefield/truncated",
            ff,
            load_ff(lambda f, c: truncated("model.pt", "m.pt")(f, c) or c / "m.pt"),
            r"not a readable|corrupt|model file|m\.pt",
        ),
        py(
            "load_forcefield/device",
            ff,
            load_ff(lambda f, c: f / "model.pt", device="tpu"),
            r"device|tpu",
        ),
        py(
            "load_forcefield/head", ff, load_ff(lambda f, c: f / "model.pt", head="absent"), r"head"
        ),
        py(
            "trained_mace/garbage",
            "TrainedMACE.load",
            lambda f, c: (
                (c / "m.pt").write_bytes(b"x")
                and __import__("ltau.integrations.mace", fromlist=["x"]).TrainedMACE.load(
                    c / "m.pt"
                )
            ),
            r"not a readable model file",
        ),
        py("read_structures/missing", rs, read(lambda f, c: c / "absent.xyz"), r"absent\.xyz"),
        py("read_structures/directory", rs, read(lambda f, c: f), r"director|not a file|read"),
        py(
            "read_structures/garbage",
            rs,
            read(lambda f, c: (c / "s.xyz").write_bytes(b"\x00\x01" * 50) and c / "s.xyz"),
            r"s\.xyz",
        ),
        py(
            "read_structures/empty",
            rs,
            read(lambda f, c: (c / "s.xyz").write_bytes(b"") or c / "s.xyz"),
            r"s\.xyz|no structures|empty",
        ),
        py(
            "read_structures/forces_key",
            rs,
            read(lambda f, c: f / "train.xyz", energy_key=None, forces_key="nope"),
            r"'nope'",
        ),
        py(
            "read_structures/energy_key",
            rs,
            read(lambda f, c: f / "train.xyz", energy_key="nope", forces_key="REF_forces"),
            r"'nope'",
        ),
        py("read_structures/empty_list", rs, read(lambda f, c: []), r"no structures|empty"),
        py("relax_api/fmax_negative", "relax", relax_with(fmax=-1.0), r"fmax"),
        py("relax_api/steps_float", "relax", relax_with(steps=2.5), r"steps"),
        py("relax_api/optimizer", "relax", relax_with(optimizer="Newton"), r"optimizer|Newton"),
        py("relax_api/stop_unknown", "relax", relax_with(stop={"energy": 1.0}), r"energy|stop"),
        py(
            "relax_api/stop_nan",
            "relax",
            relax_with(stop={"ood_score": float("nan")}),
            r"ood_score",
        ),
        py(
            "relax_api/trajectory_missing_dir",
            "relax",
            lambda f, c: relax_with(trajectory=c / "no" / "t.xyz", steps=1)(f, c),
            r"does not exist",
        ),
        py(
            "relax_api/optimizer_kwargs",
            "relax",
            relax_with(optimizer_kwargs={"bogus": 1}),
            r"rejected its arguments",
        ),
        py("pipeline/split_fraction_zero", "split_validation", split(0.0), r"fraction"),
        py("pipeline/split_fraction_above_one", "split_validation", split(1.5), r"fraction"),
        py("pipeline/split_fraction_nan", "split_validation", split(float("nan")), r"fraction"),
    ]
    return [Case(**{**case.__dict__, "needs_model": True}) for case in table]


def all_cases(*, model: bool = True) -> list[Case]:
    """Every case of the matrix (without those needing the tiny model if not ``model``)."""
    cases = [
        *npy_cases(),
        *h5_cases(),
        *output_cases(),
        *option_cases(),
        *model_cases(),
        *working_cases(),
        *estimator_cases(),
        *recording_cases(),
        *calibration_and_metric_cases(),
        *analysis_cases(),
        *atomistic_cases(),
    ]
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RuntimeError(f"duplicate case names: {duplicates}")
    return [case for case in cases if model or not case.needs_model]


ELSEWHERE: dict[str, str] = {}
"""Known failures in code outside the command line and argument checks: case -> the area and
the cause (none at present; the 15 found when the matrix was written are fixed).
:func:`summarize` reports each failure with its area (``badinput`` for the rest)."""


# --------------------------------------------------------------------- runner
@dataclass
class Outcome:
    """What one case did: ``category`` (see the module docstring) and a short ``detail``."""

    category: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class _Files:
    stdout: Path
    stderr: Path
    result: Path

    @classmethod
    def beside(cls, directory: Path) -> _Files:
        return cls(directory / "stdout", directory / "stderr", directory / "result.json")


def _redirect(files: _Files) -> None:
    """Point this (child) process's standard output and error at ``files``."""
    for stream, path, fd in ((sys.stdout, files.stdout, 1), (sys.stderr, files.stderr, 2)):
        with contextlib.suppress(Exception):
            stream.flush()
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _cli_child(argv: list[str], files: _Files) -> None:
    """Run ``ltau argv`` as the interpreter would, then exit with its status."""
    _redirect(files)
    from ltau.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            sys.stderr.write(exc.code + "\n")
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _python_child(case: Case, fixtures: Path, case_dir: Path, files: _Files) -> None:
    """Call the case's function and write what happened as JSON."""
    _redirect(files)
    from ltau.exceptions import LTAUFileError, LTAUInputError

    try:
        value = case.call(fixtures, case_dir)
    except BaseException as exc:  # every outcome is recorded, none escapes
        record = {
            "raised": type(exc).__name__,
            "ltau": isinstance(exc, (LTAUInputError, LTAUFileError)),
            "allowed": isinstance(exc, case.allowed) if case.allowed else False,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    else:
        try:
            problem = case.check(fixtures, case_dir, value) if case.check else None
        except Exception as exc:
            problem = f"its check raised {type(exc).__name__}: {exc}"
        record = {"returned": True, "problem": problem}
    files.result.write_text(json.dumps(record))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def _cli_outcome(
    case: Case, code: int, out: str, err: str, before: set[str], case_dir: Path, fixtures: Path
) -> Outcome:
    if "Traceback (most recent call last)" in err or code < 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"signal {-code}"
        return Outcome("traceback", last)
    if case.message is None:
        if code != 0:
            return Outcome("refused_valid", err.strip()[-300:])
        problem = case.check(fixtures, case_dir, (code, out, err)) if case.check else None
        return Outcome("silent_wrong", problem) if problem else Outcome("correct")
    if code == 0:
        return Outcome("silent_wrong", "accepted (exit status 0)")
    left = _nothing_new(case_dir, before | {"stdout", "stderr"})
    if left:
        return Outcome("silent_wrong", f"refused but {left}")
    if code != 2 or not re.search(case.message, err, re.I | re.S):
        return Outcome("unclear", f"exit {code}: {err.strip()[-300:]}")
    return Outcome("clean", err.strip().splitlines()[-1])


def _python_outcome(case: Case, record: dict) -> Outcome:
    if record.get("returned"):
        if case.message is not None:
            return Outcome("silent_wrong", "accepted (returned a value)")
        problem = record.get("problem")
        return Outcome("silent_wrong", problem) if problem else Outcome("correct")
    summary = f"{record['raised']}: {record['message']}"[:300]
    if not (record["ltau"] or record["allowed"]):
        return Outcome("traceback", summary)
    if case.message is None:
        return Outcome("refused_valid", summary)
    if not re.search(case.message, record["message"], re.I | re.S):
        return Outcome("unclear", summary)
    return Outcome("clean", summary)


def run_case(
    case: Case, fixtures: Path, case_dir: Path, *, fresh_interpreter: bool = False
) -> Outcome:
    """Build the case's input in ``case_dir`` (created empty), run it in a child process with
    its timeout and classify what happened."""
    case_dir.mkdir(parents=True)
    started = time.perf_counter()
    try:
        if case.setup is not None:
            case.setup(fixtures, case_dir)
    except Exception as exc:
        return Outcome("harness_error", f"setup failed: {exc}")
    before = _listing(case_dir)
    files = _Files.beside(case_dir.parent / f".{case_dir.name}.io")
    files.stdout.parent.mkdir()
    timeout = case.timeout or (CLI_TIMEOUT if case.is_cli else PYTHON_TIMEOUT)
    try:
        if case.is_cli:
            argv = [word.format(f=fixtures, c=case_dir) for word in case.argv]
            code = _run_child(argv, case, fixtures, case_dir, files, timeout, fresh_interpreter)
            if code is None:
                return Outcome("hang", f"no exit within {timeout:g} s")
            out, err = (
                files.stdout.read_text(errors="replace"),
                files.stderr.read_text(errors="replace"),
            )
            outcome = _cli_outcome(case, code, out, err, before, case_dir, fixtures)
        else:
            code = _run_child(None, case, fixtures, case_dir, files, timeout, False)
            if code is None:
                return Outcome("hang", f"no return within {timeout:g} s")
            if not files.result.exists():
                err = files.stderr.read_text(errors="replace").strip()
                return Outcome("traceback", f"the process died (status {code}): {err[-300:]}")
            outcome = _python_outcome(case, json.loads(files.result.read_text()))
    finally:
        release(case_dir)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run_child(
    argv: list[str] | None,
    case: Case,
    fixtures: Path,
    case_dir: Path,
    files: _Files,
    timeout: float,
    fresh: bool,
) -> int | None:
    """Exit status of the child running the case, or None if it was killed at ``timeout``."""
    if fresh and argv is not None:
        with open(files.stdout, "wb") as out, open(files.stderr, "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "ltau.cli", *argv],
                stdout=out,
                stderr=err,
                env=_child_environment(),
            )
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                return None
    context = multiprocessing.get_context("fork")
    if argv is not None:
        child = context.Process(target=_cli_child, args=(argv, files))
    else:
        child = context.Process(target=_python_child, args=(case, fixtures, case_dir, files))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return child.exitcode


def _child_environment() -> dict[str, str]:
    """The environment of a fresh interpreter: this one's, with the ltau it imported first
    on the path and one thread per library."""
    import ltau

    source = str(Path(ltau.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (source, path) if p),
        "OMP_NUM_THREADS": "1",
    }


def prepare_fixtures(directory: Path, *, model: bool = True) -> None:
    """Build the fixtures in a separate interpreter (torch and faiss then never run in the
    process that forks the cases)."""
    if (directory / "done").exists() and (not model or (directory / "model_done").exists()):
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--build-fixtures", str(directory)]
    if not model:
        command.append("--no-model")
    result = subprocess.run(
        command, env=_child_environment(), capture_output=True, text=True, timeout=FIXTURE_TIMEOUT
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the fixtures failed:\n{result.stderr[-3000:]}")


def run_matrix(
    workdir: str | os.PathLike,
    *,
    model: bool = True,
    only: Iterable[str] | None = None,
    fresh_interpreter: bool = False,
    cases: Sequence[Case] | None = None,
) -> dict[str, Any]:
    """Run the bad-input matrix in ``workdir`` (fixtures are built there once and reused).

    ``model=False`` leaves out the cases that need the tiny MACE model (and its training);
    ``only``: run just the cases whose name contains one of these substrings; ``cases``: run
    these instead of :func:`all_cases`. Returns a JSON-serialisable summary:
    ``bad_inputs_tried`` (cases that must be refused), ``bad_inputs_clean_error`` (refused
    cleanly, naming the problem), ``valid_inputs_tried`` / ``valid_inputs_correct`` (odd but
    valid inputs and how many gave the right result), ``tracebacks``, ``silent_wrong``,
    ``hangs``, ``unclear_errors``, ``refused_valid``, ``harness_errors``, ``entry_points``,
    ``failures`` (case name -> "category: detail"), ``failure_areas`` (case name -> who owns
    the code at fault, see :data:`ELSEWHERE`) and ``seconds``.
    """
    started = time.perf_counter()
    root = Path(workdir)
    fixtures = root / "fixtures"
    selected = list(cases) if cases is not None else all_cases(model=model)
    if only:
        patterns = list(only)
        selected = [case for case in selected if any(p in case.name for p in patterns)]
    needs_model = any(case.needs_model for case in selected)
    prepare_fixtures(fixtures, model=needs_model)
    _preload(needs_model)
    runs = Path(tempfile.mkdtemp(prefix="cases-", dir=root))
    outcomes: dict[str, Outcome] = {}
    for position, case in enumerate(selected):
        directory = runs / f"{position:04d}"
        outcomes[case.name] = run_case(
            case, fixtures, directory, fresh_interpreter=fresh_interpreter
        )
        logger.debug(
            "%s: %s %s", case.name, outcomes[case.name].category, outcomes[case.name].detail
        )
    shutil.rmtree(runs, ignore_errors=True)
    return summarize(selected, outcomes, time.perf_counter() - started)


def summarize(cases: Sequence[Case], outcomes: dict[str, Outcome], seconds: float) -> dict:
    """The summary :func:`run_matrix` returns."""

    def count(category: str) -> int:
        return sum(outcome.category == category for outcome in outcomes.values())

    bad = [case for case in cases if case.message is not None]
    return {
        "bad_inputs_tried": len(bad),
        "bad_inputs_clean_error": count("clean"),
        "valid_inputs_tried": len(cases) - len(bad),
        "valid_inputs_correct": count("correct"),
        "tracebacks": count("traceback"),
        "silent_wrong": count("silent_wrong"),
        "hangs": count("hang"),
        "unclear_errors": count("unclear"),
        "refused_valid": count("refused_valid"),
        "harness_errors": count("harness_error"),
        "entry_points": sorted({case.entry for case in cases}),
        "failures": {
            name: f"{outcome.category}: {outcome.detail}"
            for name, outcome in outcomes.items()
            if outcome.category not in ("clean", "correct")
        },
        "failure_areas": {
            name: ELSEWHERE.get(name, "badinput").split(":")[0]
            for name, outcome in outcomes.items()
            if outcome.category not in ("clean", "correct")
        },
        "seconds": round(seconds, 1),
    }


def _preload(model: bool) -> None:
    """Import what the children need once, here, so that each fork starts at once; one thread
    per library (forked children inherit it)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ltau.cli

    if model:
        import torch

        import ltau.integrations.mace
        import ltau.integrations.models  # noqa: F401

        torch.set_num_threads(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the bad-input matrix; print its summary.")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where fixtures and cases go (default: a temporary directory, removed afterwards)",
    )
    parser.add_argument("--only", action="append", help="cases whose name contains this")
    parser.add_argument("--no-model", action="store_true", help="leave out the model cases")
    parser.add_argument(
        "--fresh-interpreter",
        action="store_true",
        help="run every command in a new 'python -m ltau.cli'",
    )
    parser.add_argument("--build-fixtures", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_fixtures is not None:
        build_fixtures(args.build_fixtures, model=not args.no_model)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        summary = run_matrix(
            workdir,
            model=not args.no_model,
            only=args.only,
            fresh_interpreter=args.fresh_interpreter,
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
