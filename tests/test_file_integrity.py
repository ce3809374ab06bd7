"""Seals, bounded reads and temporary files: every ltau file is checked against the SHA-256 in
its first 512 bytes before HDF5 parses it; files without a seal are parsed first in a child
process with a time bound; temporaries left by a killed writer are removed by the next save or
load, a live writer's are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

import ltau._io as io
from ltau import ErrorDistributions, ErrorLog, ErrorRecorder, LTAUEstimator, LTAUFileError
from ltau.distributions import load_distributions, save_distributions


@pytest.fixture
def files(tmp_path):
    """One file of each format, and what each holds."""
    rng = np.random.default_rng(4)
    distributions = ErrorDistributions.from_errors(rng.uniform(0.01, 1.0, (40, 6)), n_bins=8)
    descriptors = rng.normal(size=(40, 3))
    save_distributions(distributions, tmp_path / "dist.h5")
    estimator = LTAUEstimator(4).fit(descriptors, distributions)
    estimator.save(tmp_path / "est.h5")
    errors = rng.uniform(0.01, 1.0, (5, 40)).astype(np.float32)
    with ErrorRecorder(40, log_path=tmp_path / "log.h5") as recorder:
        for epoch, row in enumerate(errors):
            recorder.record_epoch(row, member=epoch % 2)
    return {
        "dist": tmp_path / "dist.h5",
        "est": tmp_path / "est.h5",
        "log": tmp_path / "log.h5",
        "distributions": distributions,
        "estimator": estimator,
        "errors": errors,
        "queries": rng.normal(size=(7, 3)),
    }


def content(kind: str, path, files) -> None:
    """Load ``path`` and check that it holds what the fixture wrote."""
    if kind == "dist":
        np.testing.assert_array_equal(
            load_distributions(path).counts, files["distributions"].counts
        )
    elif kind == "est":
        loaded = LTAUEstimator.load(path).predict(files["queries"]).expected_error
        expected = files["estimator"].predict(files["queries"]).expected_error
        np.testing.assert_array_equal(loaded, expected)
    else:
        with ErrorLog(path) as log:
            np.testing.assert_array_equal(log.to_array(), files["errors"])


@pytest.fixture
def bounded_parses(monkeypatch):
    """The paths parsed through the bounded child process, in order."""
    parsed = []
    original = io._parse_bounded

    def spy(source, what):
        parsed.append(source)
        original(source, what)

    monkeypatch.setattr(io, "_parse_bounded", spy)
    return parsed


@pytest.mark.parametrize("kind", ["dist", "est", "log"])
def test_files_are_sealed_and_damage_is_refused_before_hdf5_parses_anything(
    files, kind, monkeypatch, bounded_parses
):
    path = files[kind]
    assert path.read_bytes()[:8] == b"\x89LTAU\r\n\x1a"
    assert path.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"
    content(kind, path, files)
    assert bounded_parses == []  # a sealed file is opened directly
    size = path.stat().st_size

    def no_parsing(*args, **kwargs):
        raise AssertionError("HDF5 opened a file whose seal does not match")

    monkeypatch.setattr(io.h5py, "File", no_parsing)
    for offset in (512, 600, size // 2, size - 1):
        damaged = path.with_name(f"damaged-{offset}.h5")
        raw = bytearray(path.read_bytes())
        raw[offset] ^= 0x20
        damaged.write_bytes(bytes(raw))
        with pytest.raises(LTAUFileError, match="do not match the SHA-256 in its seal"):
            content(kind, damaged, files)
    truncated = path.with_name("truncated.h5")
    truncated.write_bytes(path.read_bytes()[: size - 100])
    with pytest.raises(LTAUFileError, match=f"it holds {size - 612} bytes after its header"):
        content(kind, truncated, files)


@pytest.mark.parametrize("kind", ["dist", "est"])
def test_a_damaged_seal_is_refused(files, kind):
    raw = bytearray(files[kind].read_bytes())
    raw[40] ^= 0x01  # inside the format name
    files[kind].write_bytes(bytes(raw))
    with pytest.raises(LTAUFileError, match=r"its seal .* is damaged"):
        content(kind, files[kind], files)


def test_a_log_with_a_damaged_seal_is_read_through_the_bounded_path(files, bounded_parses):
    raw = bytearray(files["log"].read_bytes())
    raw[40] ^= 0x01
    files["log"].write_bytes(bytes(raw))
    content("log", files["log"], files)  # the rows carry their own digests
    assert bounded_parses == [files["log"]]


def unsealed_copy(path, target, version: int) -> None:
    """Copy an ltau file into one without a user block (the layout of the versions written
    before seals), claiming ``version``."""
    with h5py.File(path, "r") as source, h5py.File(target, "w") as copy:
        for name, value in source.attrs.items():
            copy.attrs[name] = value
        for name in source:
            source.copy(source[name], copy, name=name)
        copy.attrs["format_version"] = version


@pytest.mark.parametrize(("kind", "old", "sealed"), [("dist", 1, 2), ("est", 2, 3), ("log", 1, 2)])
def test_versions_without_a_seal_load_through_the_bounded_path(
    files, tmp_path, kind, old, sealed, bounded_parses
):
    legacy = tmp_path / f"legacy-{kind}.h5"
    unsealed_copy(files[kind], legacy, old)
    content(kind, legacy, files)
    assert bounded_parses == [legacy]
    unsealed_copy(files[kind], legacy, sealed)
    with pytest.raises(LTAUFileError, match=f"version {sealed} files are sealed"):
        content(kind, legacy, files)


def test_a_log_without_a_seal_can_be_resumed(files, tmp_path):
    legacy = tmp_path / "legacy.h5"
    unsealed_copy(files["log"], legacy, 1)
    with ErrorRecorder.resume(legacy) as recorder:
        recorder.record_epoch(np.full(40, 0.5))
    with ErrorLog(legacy) as log:
        np.testing.assert_array_equal(log.to_array()[:5], files["errors"])
        assert log.n_epochs == 6 and log.to_array()[5, 0] == np.float32(0.5)
    assert legacy.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # still the old layout


def test_a_parse_that_hangs_is_killed_in_bounded_time(tmp_path, monkeypatch):
    """HDF5 opening a FIFO blocks forever: the child is killed and the file refused."""
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    monkeypatch.setattr(io, "BOUNDED_PARSE_SECONDS", 1.0)
    start = time.monotonic()
    with pytest.raises(LTAUFileError, match="did not finish parsing it within 1 s"):
        io._parse_bounded(fifo, "ltau-error-log")
    assert time.monotonic() - start < 20
    with pytest.raises(LTAUFileError, match="is not a regular file"):
        ErrorLog(fifo)


def test_a_closed_log_is_sealed_and_a_changing_one_is_marked(tmp_path, monkeypatch):
    path = tmp_path / "log.h5"
    monkeypatch.setattr("ltau.recording.SEAL_GROWTH", 1e9)  # reseal only on close
    recorder = ErrorRecorder(30, log_path=path)
    recorder.record_epoch(np.full(30, 0.1))  # the first epoch grows the log past any bound
    recorder.record_epoch(np.full(30, 0.2))
    assert path.read_bytes()[10] == 1  # marked changing since the last seal
    recorder.close()
    assert path.read_bytes()[10] == 0
    with ErrorLog(path) as log:
        assert log.n_epochs == 2


_UNCLOSED = """
import sys
import numpy as np
import ltau.recording
from ltau import ErrorRecorder

ltau.recording.SEAL_GROWTH = 0.0  # sealed after every epoch
recorder = ErrorRecorder(20, log_path=sys.argv[1])
for epoch in range(3):
    recorder.record_epoch(np.full(20, 0.1 * (epoch + 1)))
if sys.argv[2] == "collected":
    del recorder
"""


@pytest.mark.parametrize("end", ["exit", "collected"])
def test_a_recorder_never_closed_still_leaves_a_sealed_log(tmp_path, end, bounded_parses):
    """HDF5 changes the file as it closes it: a recorder closed by garbage collection or at
    exit must seal it again, or the next read would find bytes that do not match the seal."""
    path = tmp_path / "log.h5"
    subprocess.run([sys.executable, "-c", _UNCLOSED, str(path), end], check=True, timeout=120)
    assert path.read_bytes()[10] == 0  # sealed, not changing
    with ErrorLog(path) as log:
        assert log.n_epochs == 3
    assert bounded_parses == []


# -------------------------------------------------------------------- temporary files

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ltau import Bins, ErrorDistributions
    from ltau.distributions import save_distributions

    path = sys.argv[1]
    small = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 2], [3, 4]]))
    save_distributions(small, path)
    print("saved", flush=True)
    counts = np.random.default_rng(0).integers(0, 60000, (400_000, 40))
    large = ErrorDistributions(Bins.linear(0.0, 1.0, 40), counts)
    while True:
        save_distributions(large, path)
    """
)


def orphans(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def kill_mid_save(path) -> None:
    """Run a child that saves a small file at ``path``, then large ones over it; kill -9 it
    while a temporary file of a large save exists."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "saved"
        deadline = time.monotonic() + 60
        while not orphans(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # into the middle of the write
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("then", ["load", "save"])
def test_a_save_killed_midway_leaves_the_old_file_and_its_temporary_is_swept(tmp_path, then):
    path = tmp_path / "dist.h5"
    kill_mid_save(path)
    left = orphans(path)
    assert len(left) == 1 and left[0].startswith(".dist.h5.ltau-tmp.")
    if then == "load":
        assert load_distributions(path).counts.tolist() == [[1, 2], [3, 4]]  # the old file
    else:
        save_distributions(ErrorDistributions.from_errors(np.ones((3, 2)), n_bins=2), path)
        assert load_distributions(path).n_samples == 3
    assert orphans(path) == []


def test_only_dead_writers_temporaries_of_that_target_are_swept(tmp_path):
    target = tmp_path / "dist.h5"
    lookalikes = [
        tmp_path / ".dist.h5.backup",
        tmp_path / ".dist.h5.ltau-tmp.too-long-name",
        tmp_path / ".other.h5.ltau-tmp.abcd1234",
        tmp_path / "dist.h5.ltau-tmp.abcd1234",
    ]
    for path in lookalikes:
        path.write_text("not ltau's, or not this target's")
    dead = tmp_path / ".dist.h5.ltau-tmp.abcd1234"
    with io.atomic_path(target) as live:
        live.write_text("being written")
        dead.write_text("left by a killed writer (nobody holds its lock)")
        assert io.sweep_temporaries(target) == [dead]  # the live writer's stays
        assert live.exists()
    assert target.read_text() == "being written"
    assert all(path.exists() for path in lookalikes) and not dead.exists()


def test_a_directory_that_cannot_be_written_is_a_clear_error():
    directory = "/sys"  # not writable, even by root
    if not os.path.isdir(directory):
        pytest.skip("needs /sys")
    distributions = ErrorDistributions.from_errors(np.ones((3, 2)), n_bins=2)
    with pytest.raises(LTAUFileError, match="in the directory /sys"):
        save_distributions(distributions, f"{directory}/ltau-test.h5")


def test_an_object_of_another_kind_in_a_log_is_a_file_error(files, tmp_path):
    """Found by the fuzz of a version-1 log: a flipped bit turned a dataset into a committed
    datatype, and reading its shape raised AttributeError."""
    legacy = tmp_path / "legacy.h5"
    unsealed_copy(files["log"], legacy, 1)
    with h5py.File(legacy, "r+") as handle:
        del handle["row_max"]
        handle["row_max"] = np.dtype("f8")  # a committed datatype where a dataset belongs
    with pytest.raises(LTAUFileError, match="'row_max' is not a dataset"):
        ErrorLog(legacy)
