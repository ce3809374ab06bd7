"""ErrorRecorder / ErrorLog: streaming histograms, the raw HDF5 log, members, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ltau_reference import PROPERTY, corruption_scan, histogram_rows, reseal

from ltau import (
    Bins,
    ErrorDistributions,
    ErrorLog,
    ErrorRecorder,
    LTAUEstimator,
    LTAUFileError,
    LTAUInputError,
)
from ltau._io import seal
from ltau.distributions import HistogramAccumulator, save_distributions
from ltau.recording import LOG_FORMAT


def trajectory(n_samples: int, n_epochs: int, seed: int) -> np.ndarray:
    """float32 errors ``(n_epochs, n_samples)`` spanning a few decades, with some exact zeros."""
    rng = np.random.default_rng(seed)
    errors = rng.lognormal(mean=-2.0, sigma=1.5, size=(n_epochs, n_samples))
    errors[rng.random(errors.shape) < 0.02] = 0.0
    return errors.astype(np.float32)


def record_epochs(recorder: ErrorRecorder, errors: np.ndarray, members, seed: int) -> None:
    """Feed each epoch in shuffled batches of random sizes (or whole, every third epoch)."""
    rng = np.random.default_rng(seed)
    n_samples = errors.shape[1]
    for epoch, (row, member) in enumerate(zip(errors, members, strict=True)):
        if epoch % 3 == 2:
            assert recorder.record_epoch(row, member=member) >= 0
            continue
        order = rng.permutation(n_samples)
        cuts = np.sort(rng.integers(0, n_samples + 1, size=rng.integers(0, 4)))
        for batch in np.split(order, cuts):
            recorder.record(batch, row[batch])
        recorder.end_epoch(member=member)


# ------------------------------------------------------------------ histograms


@PROPERTY
@given(
    n_samples=st.integers(1, 40),
    n_epochs=st.integers(1, 40),
    n_members=st.integers(1, 3),
    n_bins=st.integers(1, 50),
    spacing=st.sampled_from(["log", "linear"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_streaming_histograms_equal_histograms_of_the_full_array(
    n_samples, n_epochs, n_members, n_bins, spacing, seed
):
    errors = trajectory(n_samples, n_epochs, seed)
    # Bins narrower than the data, so that clipping and n_below / n_above are exercised.
    bins = Bins.log(0.01, 1.0, n_bins) if spacing == "log" else Bins.linear(0.0, 0.5, n_bins)
    members = np.random.default_rng(seed).integers(0, n_members, n_epochs)
    recorder = ErrorRecorder(n_samples, bins=bins)
    record_epochs(recorder, errors, members, seed)
    assert recorder.n_epochs == n_epochs
    assert recorder.epochs_by_member == {
        int(m): int(c) for m, c in zip(*np.unique(members, return_counts=True), strict=True)
    }
    dist = recorder.distributions()
    counts, n_below, n_above = histogram_rows(errors.T, bins.edges)
    np.testing.assert_array_equal(dist.counts, counts)
    assert (dist.n_below, dist.n_above) == (n_below, n_above)
    in_memory = ErrorDistributions.from_errors(errors.T, bins)
    np.testing.assert_array_equal(dist.counts, in_memory.counts)
    assert dist.bins == bins


def test_distributions_are_a_snapshot(tmp_path):
    errors = trajectory(30, 4, 1)
    recorder = ErrorRecorder(30, bins=Bins.log(1e-3, 10.0, 20))
    for row in errors[:2]:
        recorder.record_epoch(row)
    first = recorder.distributions()
    snapshot = first.counts.copy()
    for row in errors[2:]:
        recorder.record_epoch(row)
    np.testing.assert_array_equal(first.counts, snapshot)
    np.testing.assert_array_equal(recorder.distributions().n_observations, np.full(30, 4))


# ------------------------------------------------------------------------- log


@pytest.fixture
def two_member_log(tmp_path):
    """A log of 2 models x 9 epochs (interleaved) of 57 samples, with live histograms too."""
    n_samples = 57
    errors = trajectory(n_samples, 18, 2)
    members = np.array([0, 1] * 9)
    bins = Bins.log(1e-3, 1.0, 30)
    path = tmp_path / "log.h5"
    recorder = ErrorRecorder(n_samples, bins=bins, log_path=path)
    record_epochs(recorder, errors, members, 3)
    return recorder, errors, members, bins, path


def test_log_holds_every_epoch_tagged_by_member(two_member_log):
    recorder, errors, members, _, path = two_member_log
    assert recorder.epochs_by_member == {0: 9, 1: 9} and recorder.n_epochs == 18
    recorder.close()
    with ErrorLog(path) as log:
        assert (log.n_samples, log.n_epochs) == (57, 18)
        np.testing.assert_array_equal(log.members, members)
        stored = log.to_array()
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, errors)
        np.testing.assert_array_equal(log.to_array(members=[1]), errors[members == 1])
        np.testing.assert_array_equal(log.rows(members=[0]), np.flatnonzero(members == 0))
        np.testing.assert_array_equal(np.stack(list(log.epochs(members=[0]))), errors[::2])
        with pytest.raises(
            LTAUInputError, match=r"members \[7\] are not in .* \(it has \[0, 1\]\)"
        ):
            log.rows(members=[0, 7])


def test_end_epoch_returns_the_epoch_number_of_that_member(tmp_path):
    recorder = ErrorRecorder(3, log_path=tmp_path / "log.h5")
    assert recorder.record_epoch([0.1, 0.2, 0.3], member=2) == 0
    recorder.record([0, 1, 2], [0.1, 0.2, 0.3])
    assert recorder.end_epoch(member=2) == 1
    assert recorder.record_epoch([0.1, 0.2, 0.3]) == 0
    assert recorder.epochs_by_member == {2: 2, 0: 1}


def test_distributions_rebuilt_from_the_log_equal_in_memory_histograms(two_member_log):
    recorder, errors, _, bins, path = two_member_log
    live = recorder.distributions()
    np.testing.assert_array_equal(
        live.counts, ErrorDistributions.from_errors(errors.T, bins).counts
    )
    # Same bins through the log (a rebuild is forced by asking for the members explicitly).
    rebuilt = recorder.distributions(bins, members=[0, 1])
    np.testing.assert_array_equal(rebuilt.counts, live.counts)
    assert (rebuilt.n_below, rebuilt.n_above) == (live.n_below, live.n_above)

    other_bins = Bins.linear(0.0, 0.7, 13)
    cases = [
        (recorder.distributions(other_bins), ErrorDistributions.from_errors(errors.T, other_bins)),
        (
            recorder.distributions(n_bins=37),
            ErrorDistributions.from_errors(errors.T, n_bins=37),
        ),
        (
            recorder.distributions(n_bins=21, spacing="linear"),
            ErrorDistributions.from_errors(errors.T, n_bins=21, spacing="linear"),
        ),
        (
            recorder.distributions(spacing="log"),
            ErrorDistributions.from_errors(errors.T, n_bins=100, spacing="log"),
        ),
    ]
    for got, want in cases:
        assert got.bins == want.bins
        np.testing.assert_array_equal(got.counts, want.counts)
        assert (got.n_below, got.n_above) == (want.n_below, want.n_above)
        counts, n_below, n_above = histogram_rows(errors.T, want.bins.edges)
        np.testing.assert_array_equal(got.counts, counts)
        assert (got.n_below, got.n_above) == (n_below, n_above)
    recorder.close()
    with ErrorLog(path) as log:
        again = log.distributions(n_bins=37)
        np.testing.assert_array_equal(again.counts, cases[1][1].counts)
        assert again.bins == cases[1][1].bins


def test_member_subsets(two_member_log):
    recorder, errors, members, bins, _ = two_member_log
    for chosen in ([0], [1], [1, 0]):
        rows = np.isin(members, chosen)
        want = ErrorDistributions.from_errors(errors[rows].T, bins)
        got = recorder.distributions(bins, members=chosen)
        np.testing.assert_array_equal(got.counts, want.counts)
        assert (got.n_below, got.n_above) == (want.n_below, want.n_above)
        # Members pooled = sum of each member's histograms.
    pooled = recorder.distributions(bins, members=[0]).pooled(
        recorder.distributions(bins, members=[1])
    )
    np.testing.assert_array_equal(pooled.counts, recorder.distributions().counts)
    # Bins chosen from the selected epochs only.
    auto = recorder.distributions(members=[1], n_bins=17)
    want = ErrorDistributions.from_errors(errors[members == 1].T, n_bins=17)
    assert auto.bins == want.bins
    np.testing.assert_array_equal(auto.counts, want.counts)
    with pytest.raises(LTAUInputError, match=r"members \[3\] are not in"):
        recorder.distributions(bins, members=[3])


def test_burn_in_leaves_out_each_members_first_epochs(two_member_log):
    recorder, errors, members, bins, path = two_member_log
    epoch_of_row = np.array([np.count_nonzero(members[:row] == members[row]) for row in range(18)])
    for skip, chosen in ((0, None), (3, None), (3, [1]), (8, [0, 1])):
        rows = (epoch_of_row >= skip) & (np.isin(members, chosen) if chosen else True)
        want = ErrorDistributions.from_errors(errors[rows].T, bins)
        got = recorder.distributions(bins, members=chosen, skip_epochs=skip)
        np.testing.assert_array_equal(got.counts, want.counts)
        assert (got.n_below, got.n_above) == (want.n_below, want.n_above)
    recorder.close()
    with ErrorLog(path) as log:
        assert log.epochs_by_member == {0: 9, 1: 9}
        np.testing.assert_array_equal(log.rows(skip_epochs=7), np.arange(14, 18))
        got = log.distributions(n_bins=23, skip_epochs=5)
        want = ErrorDistributions.from_errors(errors[epoch_of_row >= 5].T, n_bins=23)
        assert got.bins == want.bins  # bins span the epochs kept
        np.testing.assert_array_equal(got.counts, want.counts)
        with pytest.raises(LTAUInputError, match=r"no completed epoch .* after skipping 9"):
            log.distributions(skip_epochs=9)
        for bad in (-1, 1.5, True, "2"):
            with pytest.raises(LTAUInputError, match="skip_epochs must be a non-negative"):
                log.rows(skip_epochs=bad)


def test_log_only_recorder_builds_distributions_from_the_log(tmp_path):
    errors = trajectory(20, 6, 4)
    with ErrorRecorder(20, log_path=tmp_path / "log.h5") as recorder:
        for row in errors:
            recorder.record_epoch(row)
        got = recorder.distributions()
        want = ErrorDistributions.from_errors(errors.T)
        assert got.bins == want.bins
        np.testing.assert_array_equal(got.counts, want.counts)


def test_allow_missing_leaves_missing_samples_out(tmp_path):
    n_samples = 12
    errors = trajectory(n_samples, 6, 5)
    present = np.ones(errors.shape, dtype=bool)
    present[1, [0, 5, 11]] = False
    present[4, 3] = False
    bins = Bins.log(1e-3, 1.0, 10)
    path = tmp_path / "log.h5"
    recorder = ErrorRecorder(n_samples, bins=bins, log_path=path)
    for row, mask in zip(errors, present, strict=True):
        ids = np.flatnonzero(mask)
        recorder.record(ids[::-1], row[ids][::-1])
        recorder.end_epoch(allow_missing=not mask.all())
    dist = recorder.distributions()
    np.testing.assert_array_equal(dist.n_observations, present.sum(axis=0))
    masked = np.where(present, errors, np.nan).T
    for sample in range(n_samples):
        values = masked[sample][~np.isnan(masked[sample])]
        np.testing.assert_array_equal(
            dist.counts[sample], histogram_rows(values[None], bins.edges)[0][0]
        )
    rebuilt = recorder.distributions(bins, members=[0])
    np.testing.assert_array_equal(rebuilt.counts, dist.counts)
    recorder.close()
    with ErrorLog(path) as log:
        stored = log.to_array()
    np.testing.assert_array_equal(np.isnan(stored), ~present)
    np.testing.assert_array_equal(stored[present], errors[present])


# ------------------------------------------------------------------- bad input


def test_bad_record_input_is_refused_and_leaves_the_epoch_intact(tmp_path):
    recorder = ErrorRecorder(10, bins=Bins.linear(0.0, 1.0, 4), log_path=tmp_path / "log.h5")
    recorder.record([0, 1], [0.1, 0.2])
    cases = [
        (([2, 3], [0.1, np.nan]), r"errors contains nan at index \(1,\)"),
        (([2, 3], [0.1, np.inf]), r"errors contains inf"),
        (([2, 3], [0.1, -0.5]), r"errors must be non-negative error magnitudes; entry 1 is -0.5"),
        (([2, 3], [0.1, 0.2, 0.3]), r"2 ids but 3 errors"),
        (([2, 10], [0.1, 0.2]), r"ids must lie in \[0, 10\); found 10"),
        (([-1], [0.1]), r"ids must lie in \[0, 10\); found -1"),
        (([2.0], [0.1]), r"ids must be integers"),
        (([[2]], [0.1]), r"ids must be 1-D"),
        (([2, 3, 2], [0.1, 0.2, 0.3]), r"sample 2 was recorded twice in one epoch"),
        (([3, 1], [0.1, 0.2]), r"sample 1 was recorded twice in one epoch"),
        ((["a"], [0.1]), r"ids must be integers"),
        (([2], ["x"]), r"errors must hold real numbers, not strings"),
    ]
    for (ids, errors), match in cases:
        with pytest.raises(LTAUInputError, match=match):
            recorder.record(np.asarray(ids), errors)
    # Nothing of the refused calls was kept: the rest of the epoch can still be recorded.
    recorder.record(np.arange(2, 10), np.full(8, 0.3))
    assert recorder.end_epoch() == 0
    dist = recorder.distributions()
    np.testing.assert_array_equal(dist.n_observations, np.ones(10))
    np.testing.assert_array_equal(dist.counts.sum(axis=0), [2, 8, 0, 0])
    recorder.close()
    with ErrorLog(tmp_path / "log.h5") as log:
        np.testing.assert_array_equal(
            log.to_array(), np.array([[0.1, 0.2] + [0.3] * 8], dtype=np.float32)
        )


def test_epoch_completeness_is_checked():
    recorder = ErrorRecorder(10, bins=Bins.linear(0.0, 1.0, 4))
    with pytest.raises(LTAUInputError, match="no errors were recorded in this epoch"):
        recorder.end_epoch()
    recorder.record([0, 4, 9], [0.1, 0.2, 0.3])
    with pytest.raises(
        LTAUInputError, match=r"7 of 10 samples were not recorded this epoch \(first ids: \[1, 2"
    ):
        recorder.end_epoch()
    with pytest.raises(LTAUInputError, match="already has errors from record"):
        recorder.record_epoch(np.zeros(10))
    assert recorder.end_epoch(allow_missing=True) == 0
    with pytest.raises(LTAUInputError, match="record_epoch needs 10 errors"):
        recorder.record_epoch(np.zeros(9))
    with pytest.raises(LTAUInputError, match="record_epoch needs 10 errors"):
        recorder.record_epoch([])
    with pytest.raises(LTAUInputError, match="errors must be 1-D"):
        recorder.record_epoch(np.zeros((10, 1)))
    with pytest.raises(LTAUInputError, match="member must be a non-negative integer"):
        recorder.record_epoch(np.zeros(10), member=-1)
    with pytest.raises(LTAUInputError, match="member must be a non-negative integer"):
        recorder.record_epoch(np.zeros(10), member=1.5)
    recorder.record([1], [0.5])
    with pytest.raises(LTAUInputError, match="member must be a non-negative integer"):
        recorder.end_epoch(member=True)
    # Samples never recorded in any epoch have no distribution: that is an error, not a zero row.
    with pytest.raises(LTAUInputError, match=r"7 samples have no recorded errors"):
        recorder.distributions()


def test_bad_recorder_settings(tmp_path):
    with pytest.raises(LTAUInputError, match=r"give bins .* a log_path .* or both"):
        ErrorRecorder(10)
    with pytest.raises(LTAUInputError, match="n_samples must be a positive integer"):
        ErrorRecorder(0, bins=Bins.linear(0.0, 1.0, 4))
    recorder = ErrorRecorder(4, bins=Bins.linear(0.0, 1.0, 4))
    with pytest.raises(LTAUInputError, match="no epoch has been completed yet"):
        recorder.distributions()
    recorder.record_epoch([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(LTAUInputError, match="need the raw log; create the recorder with log_path"):
        recorder.distributions(Bins.linear(0.0, 2.0, 4))
    with pytest.raises(LTAUInputError, match="need the raw log"):
        recorder.distributions(members=[0])
    with pytest.raises(LTAUInputError, match="a burn-in need the raw log"):
        recorder.distributions(skip_epochs=1)
    with pytest.raises(LTAUFileError, match="does not exist"):
        ErrorRecorder(4, log_path=tmp_path / "missing_dir" / "log.h5")


def test_existing_log_needs_overwrite_or_resume(tmp_path):
    path = tmp_path / "log.h5"
    with ErrorRecorder(3, log_path=path) as recorder:
        recorder.record_epoch([0.1, 0.2, 0.3])
    before = path.read_bytes()
    with pytest.raises(LTAUFileError, match=r"exists; use ErrorRecorder.resume\(\) to continue it"):
        ErrorRecorder(3, log_path=path)
    assert path.read_bytes() == before
    with ErrorRecorder(5, log_path=path, overwrite=True) as recorder:
        recorder.record_epoch([0.5] * 5)
    with ErrorLog(path) as log:
        assert (log.n_samples, log.n_epochs) == (5, 1)
    not_a_log = tmp_path / "other.txt"
    not_a_log.write_text("precious")
    with pytest.raises(LTAUFileError, match="exists"):
        ErrorRecorder(3, log_path=not_a_log)
    assert not_a_log.read_text() == "precious"


def test_reading_bad_log_files(tmp_path):
    good = tmp_path / "good.h5"
    with ErrorRecorder(4, log_path=good) as recorder:
        for _ in range(3):
            recorder.record_epoch([0.1, 0.2, 0.3, 0.4])
    text = tmp_path / "text.h5"
    text.write_text("hello")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle["errors"] = np.zeros((2, 2))
    estimator_file = tmp_path / "estimator.h5"
    dist = ErrorDistributions(Bins.linear(0.0, 1.0, 2), np.array([[1, 1], [1, 2]]))
    LTAUEstimator(1).fit(np.array([[0.0], [1.0]]), dist).save(estimator_file)
    distributions_file = tmp_path / "distributions.h5"
    save_distributions(dist, distributions_file)
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with h5py.File(newer, "r+") as handle:
        handle.attrs["format_version"] = 3
    seal(newer, LOG_FORMAT)  # as a newer ltau would have: only the version is wrong
    unsealed = tmp_path / "unsealed.h5"
    unsealed.write_bytes(newer.read_bytes())
    with h5py.File(unsealed, "r+") as handle:
        handle.attrs["n_complete"] = 2
    claims = tmp_path / "claims.h5"
    claims.write_bytes(good.read_bytes())
    with h5py.File(claims, "r+") as handle:
        handle.attrs["n_complete"] = 5
    seal(claims, LOG_FORMAT)
    missing = tmp_path / "missing_dataset.h5"
    missing.write_bytes(good.read_bytes())
    with h5py.File(missing, "r+") as handle:
        del handle["member"]
    seal(missing, LOG_FORMAT)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:1000])
    cases = [
        (tmp_path / "nothing.h5", "does not exist"),
        (text, "not a readable ltau-error-log file"),
        (truncated, "truncated or corrupted"),
        (foreign, "not written by ltau; expected an ltau-error-log file"),
        (estimator_file, "'ltau-estimator' file; expected an ltau-error-log file"),
        (distributions_file, "'ltau-distributions' file; expected an ltau-error-log file"),
        (newer, "ltau-error-log format version 3; this ltau reads up to version 2"),
        (unsealed, "do not match the SHA-256 in its seal"),
        (claims, "claims 5 complete epochs but holds 3"),
        (missing, "missing the dataset 'member'"),
    ]
    for path, match in cases:
        with pytest.raises(LTAUFileError, match=match):
            ErrorLog(path)
        with pytest.raises(LTAUFileError, match=match):
            ErrorRecorder.resume(path, bins=Bins.linear(0.0, 1.0, 3))


def test_a_corrupted_logged_epoch_is_reported(tmp_path):
    path = tmp_path / "log.h5"
    errors = trajectory(500, 3, 6)
    with ErrorRecorder(500, log_path=path) as recorder:
        for row in errors:
            recorder.record_epoch(row)
    with h5py.File(path, "r") as handle:
        info = handle["errors"].id.get_chunk_info(1)  # chunks are one epoch each
    assert info.chunk_offset == (1, 0)
    raw = bytearray(path.read_bytes())
    middle = info.byte_offset + info.size // 2
    for i in range(middle, middle + 8):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(LTAUFileError, match="do not match the SHA-256 in its seal"):
        ErrorLog(path)
    reseal(path)  # behind the seal, the row's own digest catches it
    with ErrorLog(path) as log:
        with pytest.raises(LTAUFileError, match="epoch row 1 is corrupted"):
            log.to_array()
        with pytest.raises(LTAUFileError, match="epoch row 1 is corrupted"):
            log.distributions(Bins.log(1e-3, 1.0, 5))


def test_corruption_anywhere_in_a_log_is_an_ltau_file_error(tmp_path):
    """Flip 16 bytes at ~250 places (densely over the HDF5 metadata): reading the log either
    raises LTAUFileError or returns exactly what was recorded (errors, members, histograms)."""
    good = tmp_path / "good.h5"
    errors = trajectory(200, 6, 10)
    with ErrorRecorder(200, log_path=good) as recorder:
        for epoch, row in enumerate(errors):
            recorder.record_epoch(row, member=epoch % 2)
    problems = corruption_scan("log", good, tmp_path)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:25])


def _flip_chunk_bytes(path: Path, dataset: str, pattern: int, start: int, n_bytes: int) -> bytes:
    """XOR ``n_bytes`` of the first chunk of ``dataset`` from byte ``start`` and reseal the
    file (so that the checks behind the seal are tested); return the old bytes."""
    with h5py.File(path, "r") as handle:
        info = handle[dataset].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    first = info.byte_offset + start
    old = bytes(raw[first : first + n_bytes])
    for i in range(first, first + n_bytes):
        raw[i] ^= pattern
    path.write_bytes(bytes(raw))
    reseal(path)
    return old


def test_corrupted_member_tags_are_detected(tmp_path):
    """The per-epoch member tags decide which epochs belong to which model; a damaged tag
    must be an error, not silently move epochs between models."""
    path = tmp_path / "log.h5"
    with ErrorRecorder(20, log_path=path) as recorder:
        for epoch, row in enumerate(trajectory(20, 6, 11)):
            recorder.record_epoch(row, member=epoch % 2)
    _flip_chunk_bytes(path, "member", 0x5A, 0, 8)  # the tags of epochs 0 and 1
    try:
        with ErrorLog(path) as log:
            members, rows = log.members, log.rows(members=[1])
    except LTAUFileError:
        return
    pytest.fail(f"corrupted member tags accepted: members {members}, epochs of model 1 {rows}")


def test_zero_errors_overwritten_with_ones_are_detected(tmp_path):
    """Exact-zero errors are 0x00000000; as 0xFFFFFFFF they read as NaN ("not recorded"), and
    Fletcher-32 cannot tell 0x0000 from 0xFFFF: the observations would silently vanish."""
    path = tmp_path / "log.h5"
    errors = trajectory(64, 2, 12)
    errors[0, :16] = 0.0  # a perfectly fitted block of samples
    with ErrorRecorder(64, log_path=path) as recorder:
        for row in errors:
            recorder.record_epoch(row)
    assert _flip_chunk_bytes(path, "errors", 0xFF, 0, 64) == bytes(64)
    try:
        with ErrorLog(path) as log:
            stored = log.to_array()
    except LTAUFileError:
        return
    pytest.fail(f"corruption not detected: {int(np.isnan(stored).sum())} errors now read as NaN")


# -------------------------------------------------------------- crash safety

_EPOCH_ERRORS = """
import numpy as np

def epoch_errors(epoch, n_samples):
    rng = np.random.default_rng(1000 + epoch)
    return rng.lognormal(mean=-2.0, sigma=1.0, size=n_samples).astype(np.float32)
"""

_WRITER = _EPOCH_ERRORS + textwrap.dedent(
    """
    import sys
    from ltau import ErrorRecorder

    path, n_samples = sys.argv[1], int(sys.argv[2])
    recorder = ErrorRecorder(n_samples, log_path=path)
    order = np.random.default_rng(0).permutation(n_samples)
    epoch = 0
    while True:
        errors = epoch_errors(epoch, n_samples)
        for batch in np.array_split(order, 5):
            recorder.record(batch, errors[batch])
        recorder.end_epoch(member=epoch % 2)
        epoch += 1
        print(epoch, flush=True)
    """
)


def _epoch_errors(epoch: int, n_samples: int) -> np.ndarray:
    namespace: dict = {}
    exec(_EPOCH_ERRORS, namespace)
    return namespace["epoch_errors"](epoch, n_samples)


def _check_resumed_log(path: Path, n_samples: int, at_least: int) -> None:
    """Resume a log written by the writer: complete epochs exact, recording continues."""
    bins = Bins.log(1e-3, 1.0, 25)
    recorder = ErrorRecorder.resume(path, bins=bins)
    n_done = recorder.n_epochs
    assert n_done >= at_least
    assert recorder.epochs_by_member == {0: (n_done + 1) // 2, 1: n_done // 2}
    expected = np.stack([_epoch_errors(e, n_samples) for e in range(n_done)])
    live = recorder.distributions()
    np.testing.assert_array_equal(live.counts, histogram_rows(expected.T, bins.edges)[0])
    np.testing.assert_array_equal(
        live.counts, ErrorDistributions.from_errors(expected.T, bins).counts
    )
    # Recording continues where it stopped.
    new = _epoch_errors(n_done, n_samples)
    recorder.record(np.arange(n_samples), new)
    assert recorder.end_epoch(member=n_done % 2) == n_done // 2
    assert recorder.n_epochs == n_done + 1
    recorder.record_epoch(new * 2, member=5)
    assert recorder.n_epochs == n_done + 2
    recorder.close()
    with ErrorLog(path) as log:
        assert log.n_epochs == n_done + 2
        np.testing.assert_array_equal(log.to_array(), np.vstack([expected, new, new * 2]))
        np.testing.assert_array_equal(log.members, [*(np.arange(n_done + 1) % 2), 5])


def test_log_survives_sigkill_of_the_writer(tmp_path):
    path, n_samples, at_least = tmp_path / "log.h5", 3000, 12
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(n_samples)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    completed = 0
    deadline = time.monotonic() + 60
    try:
        while completed < at_least and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            completed = int(line)
        time.sleep(0.02)  # let the writer get into the middle of its next epoch
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()
        stderr = process.stderr.read()
        process.stderr.close()
    assert completed >= at_least, f"writer stopped after {completed} epochs: {stderr}"
    assert process.returncode == -signal.SIGKILL
    _check_resumed_log(path, n_samples, completed)


def test_resume_drops_an_epoch_that_was_written_but_not_marked_complete(tmp_path):
    """Crash between writing an epoch's row and updating the count of complete epochs."""
    path, n_samples = tmp_path / "log.h5", 64
    script = _EPOCH_ERRORS + textwrap.dedent(
        """
        import os, signal, sys
        from ltau import ErrorRecorder

        from ltau._io import changing

        path, n_samples = sys.argv[1], int(sys.argv[2])
        recorder = ErrorRecorder(n_samples, log_path=path)
        for epoch in range(4):
            recorder.record_epoch(epoch_errors(epoch, n_samples), member=epoch % 2)
        handle = recorder._log
        with changing(handle):  # as the recorder does while it adds an epoch
            for name in ("errors", "member", "row_min_positive", "row_max"):
                handle[name].resize(5, axis=0)
            handle["errors"][4] = np.full(n_samples, 7.0, dtype=np.float32)
            handle["member"][4] = 0
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(n_samples)], capture_output=True, timeout=60
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    with h5py.File(path, "r") as handle:
        assert handle["errors"].shape[0] == 5 and handle.attrs["n_complete"] == 4
    with ErrorLog(path) as log:
        assert log.n_epochs == 4
    _check_resumed_log(path, n_samples, 4)


def test_resume_rebuilds_live_histograms_with_missing_samples(tmp_path):
    path = tmp_path / "log.h5"
    bins = Bins.log(1e-3, 1.0, 12)
    errors = trajectory(8, 5, 9)
    with ErrorRecorder(8, bins=bins, log_path=path) as recorder:
        for epoch, row in enumerate(errors):
            ids = np.arange(8) if epoch != 2 else np.arange(0, 8, 2)
            recorder.record(ids, row[ids])
            recorder.end_epoch(member=epoch % 2, allow_missing=epoch == 2)
        live = recorder.distributions()
    resumed = ErrorRecorder.resume(path, bins=bins)
    assert resumed.n_epochs == 5 and resumed.epochs_by_member == {0: 3, 1: 2}
    np.testing.assert_array_equal(resumed.distributions().counts, live.counts)
    assert (resumed.distributions().n_below, resumed.distributions().n_above) == (
        live.n_below,
        live.n_above,
    )
    resumed.close()
    without_bins = ErrorRecorder.resume(path)
    np.testing.assert_array_equal(
        without_bins.distributions(bins, members=[0, 1]).counts, live.counts
    )
    without_bins.close()


def test_recorder_works_in_a_fresh_directory_without_leftovers():
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "log.h5"
        with ErrorRecorder(3, log_path=path) as recorder:
            recorder.record_epoch([0.1, 0.2, 0.3])
        assert sorted(p.name for p in Path(directory).iterdir()) == ["log.h5"]


# ------------------------------------------------------------ count promotion


@pytest.mark.parametrize("mode", ["ids", "whole epochs"])
def test_counts_promote_from_uint16_to_uint32_past_65535(mode):
    bins = Bins.linear(0.0, 1.0, 4)
    accumulator = HistogramAccumulator(bins, 3)
    values = np.array([0.6, 0.1, 0.9], dtype=np.float32)
    ids = np.arange(3)

    def add() -> None:
        if mode == "ids":
            accumulator.add(ids, values)
        else:
            accumulator.add_checked(None, values)

    add()  # one real observation each, then pretend 65533 more were added the same way
    counts = accumulator.counts
    assert counts.dtype == np.uint16
    counts[ids, [2, 0, 3]] = 65534
    accumulator._max_observations = 65534
    add()  # 65535: the uint16 maximum
    assert accumulator.counts.dtype == np.uint16
    np.testing.assert_array_equal(accumulator.counts[ids, [2, 0, 3]], [65535] * 3)
    add()  # 65536: needs uint32
    add()
    final = accumulator.counts
    assert final.dtype == np.uint32
    np.testing.assert_array_equal(final[ids, [2, 0, 3]], [65537] * 3)
    assert final.sum() == 3 * 65537
    np.testing.assert_array_equal(accumulator.distributions().n_observations, [65537] * 3)


def test_sample_columns_and_provenance_round_trip_and_bad_input(tmp_path):
    from ltau import ErrorLog

    columns = {"configuration": np.repeat([0, 1], 3), "atom": np.tile([0, 1, 2], 2)}
    with ErrorRecorder(6, log_path=tmp_path / "a.h5", samples=columns, provenance={"x": 1}) as rec:
        rec.record_epoch(np.full(6, 0.1))
        rec.set_provenance({"x": 2, "files": ["t.xyz"]})
    with ErrorLog(tmp_path / "a.h5") as log:
        assert log.provenance == {"x": 2, "files": ["t.xyz"]}
        for name, values in columns.items():
            np.testing.assert_array_equal(log.samples[name], values)
    bad = [
        ({"samples": {"atom": np.arange(5)}}, "must hold 6 integers"),
        ({"samples": {"atom": np.linspace(0, 1, 6)}}, "must hold 6 integers"),
        ({"samples": {}}, "non-empty mapping"),
        ({"provenance": {"x": float("nan")}}, "JSON-serialisable"),
        ({"provenance": ["x"]}, "must be a mapping"),
    ]
    for index, (kwargs, message) in enumerate(bad):
        path = tmp_path / f"bad{index}.h5"
        with pytest.raises(LTAUInputError, match=message):
            ErrorRecorder(6, log_path=path, **kwargs)
        assert not path.exists()
    with pytest.raises(LTAUInputError, match="give a log_path"):
        ErrorRecorder(6, bins=Bins.log(1e-3, 1.0, 5), provenance={"x": 1})


def test_distributions_of_chosen_samples(tmp_path):
    from ltau import ErrorLog

    rng = np.random.default_rng(3)
    errors = rng.uniform(0.01, 1.0, (4, 8))
    with ErrorRecorder(8, log_path=tmp_path / "s.h5") as recorder:
        for row in errors:
            recorder.record_epoch(row)
    bins = Bins.log(1e-3, 2.0, 12)
    with ErrorLog(tmp_path / "s.h5") as log:
        whole = log.distributions(bins)
        chosen = log.distributions(bins, samples=[5, 2])
        np.testing.assert_array_equal(chosen.counts, whole.counts[[5, 2]])
        np.testing.assert_array_equal(log.recorded_epochs(samples=[5, 2], skip_epochs=1), [3, 3])
        for samples, message in (
            ([2, 2], "repeats sample 2"),
            ([8], r"\[0, 8\)"),
            ([], "at least one"),
        ):
            with pytest.raises(LTAUInputError, match=message):
                log.distributions(bins, samples=samples)
