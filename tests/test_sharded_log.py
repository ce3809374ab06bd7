"""Sharded error logs (one shard per rank plus a manifest, read as one) and the log's storage
options (float16, compressed rows)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ltau import Bins, ErrorLog, ErrorRecorder, LTAUFileError, LTAUInputError
from ltau.cli import main
from ltau.distributions import load_distributions
from ltau.sharded_log import (
    ShardedErrorLog,
    new_log_id,
    open_error_log,
    shard_path,
    shard_recorder,
)

N_SAMPLES = 60
N_EPOCHS = 7


def errors_of(seed: int = 0) -> np.ndarray:
    """float32 errors ``(N_EPOCHS, N_SAMPLES)`` over a few decades, some exact zeros."""
    rng = np.random.default_rng(seed)
    errors = rng.lognormal(-2.0, 1.5, (N_EPOCHS, N_SAMPLES))
    errors[rng.random(errors.shape) < 0.03] = 0.0
    return errors.astype(np.float32)


def write_both(tmp_path, errors, world_size, members, **options):
    """The same epochs logged by one writer and by ``world_size`` ranks, each rank taking a
    freshly shuffled share of the samples every epoch (as a DistributedSampler does)."""
    rng = np.random.default_rng(world_size)
    single = ErrorRecorder(N_SAMPLES, log_path=tmp_path / "single.h5", **options)
    log_id = new_log_id()
    manifest = tmp_path / "sharded.h5"
    ranks = [
        shard_recorder(
            manifest, rank=r, world_size=world_size, n_samples=N_SAMPLES, log_id=log_id, **options
        )
        for r in range(world_size)
    ]
    for row, member in zip(errors, members, strict=True):
        single.record_epoch(row, member=member)
        order = rng.permutation(N_SAMPLES)
        for rank, recorder in enumerate(ranks):
            share = order[rank::world_size]
            for batch in np.array_split(share, 2):
                recorder.record(batch, row[batch])
            recorder.end_epoch(member=member)
    for recorder in [single, *ranks]:
        recorder.close()
    return tmp_path / "single.h5", manifest


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sharded_log_reads_as_the_single_writer_log(tmp_path, world_size):
    errors = errors_of()
    members = [0, 0, 1, 0, 1, 1, 0]
    single_path, manifest = write_both(tmp_path, errors, world_size, members)
    with open_error_log(single_path) as single, open_error_log(manifest) as sharded:
        assert isinstance(sharded, ShardedErrorLog) and not isinstance(single, ShardedErrorLog)
        assert sharded.n_epochs == N_EPOCHS and sharded.world_size == world_size
        np.testing.assert_array_equal(sharded.to_array(), errors)
        np.testing.assert_array_equal(sharded.members, single.members)
        subset = np.array([5, 1, 40, 33])
        for kwargs in (
            {},
            {"members": [1]},
            {"skip_epochs": 2},
            {"samples": subset},
            {"bins": Bins.log(0.01, 1.0, 20)},  # clips: the warning must match too
            {"n_bins": 30, "spacing": "linear"},
        ):
            with warnings.catch_warnings(record=True) as seen_single:
                warnings.simplefilter("always")
                expected = single.distributions(**kwargs)
            with warnings.catch_warnings(record=True) as seen_sharded:
                warnings.simplefilter("always")
                got = sharded.distributions(**kwargs)
            assert got.bins == expected.bins, kwargs
            np.testing.assert_array_equal(got.counts, expected.counts)
            assert (got.n_below, got.n_above) == (expected.n_below, expected.n_above)
            assert [str(w.message) for w in seen_sharded] == [str(w.message) for w in seen_single]
        np.testing.assert_array_equal(
            sharded.recorded_epochs(skip_epochs=1), single.recorded_epochs(skip_epochs=1)
        )


def test_cli_accepts_a_manifest(tmp_path, capsys):
    single_path, manifest = write_both(tmp_path, errors_of(1), 2, [0] * N_EPOCHS)
    for source, output in ((single_path, "one.h5"), (manifest, "two.h5")):
        assert main(["distributions", str(source), "-o", str(tmp_path / output)]) == 0
    one, two = load_distributions(tmp_path / "one.h5"), load_distributions(tmp_path / "two.h5")
    np.testing.assert_array_equal(one.counts, two.counts)
    capsys.readouterr()
    assert main(["describe", str(manifest)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "ltau-error-log-manifest"
    assert (summary["n_epochs"], summary["world_size"], summary["n_samples"]) == (
        N_EPOCHS,
        2,
        N_SAMPLES,
    )


def test_a_shard_alone_is_refused_by_error_log(tmp_path):
    _, manifest = write_both(tmp_path, errors_of(), 2, [0] * N_EPOCHS)
    with pytest.raises(LTAUFileError, match="rank 1 of 2 of a sharded log"):
        ErrorLog(shard_path(manifest, 1, 2))


def test_float16_log_stores_rounded_errors_and_histograms_them(tmp_path):
    errors = errors_of(2)
    path = tmp_path / "half.h5"
    with ErrorRecorder(
        N_SAMPLES, bins=Bins.log(1e-3, 10.0, 40), log_path=path, dtype="float16"
    ) as recorder:
        for row in errors:
            recorder.record_epoch(row)
        live = recorder.distributions()
    with h5py.File(path, "r") as handle:
        assert handle["errors"].dtype == np.float16
        assert handle.attrs["error_dtype"] == "float16"
    with ErrorLog(path) as log:
        assert log.dtype == "float16"
        stored = log.to_array()
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, errors.astype(np.float16).astype(np.float32))
        rebuilt = log.distributions(Bins.log(1e-3, 10.0, 40))
    np.testing.assert_array_equal(live.counts, rebuilt.counts)  # both from the stored values


def test_float16_refuses_errors_beyond_its_range(tmp_path):
    with ErrorRecorder(2, log_path=tmp_path / "half.h5", dtype="float16") as recorder:
        with pytest.raises(LTAUInputError, match="exceeds float16's range"):
            recorder.record_epoch([1.0, 7e4])


def test_compressed_shards_cost_less_than_plain_ones(tmp_path):
    rng = np.random.default_rng(3)
    n_samples, world_size = 20_000, 4
    sizes = {}
    for compression in (False, True):
        manifest = tmp_path / f"log-{compression}.h5"
        log_id = new_log_id()
        ranks = [
            shard_recorder(
                manifest,
                rank=r,
                world_size=world_size,
                n_samples=n_samples,
                log_id=log_id,
                compression=compression,
            )
            for r in range(world_size)
        ]
        for _ in range(4):
            # A DistributedSampler deals out configurations (here of 10 atoms each).
            order = rng.permutation(n_samples // 10)
            for rank, recorder in enumerate(ranks):
                share = (order[rank::world_size, None] * 10 + np.arange(10)).ravel()
                recorder.record(share, rng.lognormal(-2, 1, share.size))
                recorder.end_epoch()
        for recorder in ranks:
            recorder.close()
        sizes[compression] = 0
        for rank in range(world_size):
            with h5py.File(shard_path(manifest, rank, world_size), "r") as handle:
                sizes[compression] += handle["errors"].id.get_storage_size()
        with open_error_log(manifest) as log:
            assert np.count_nonzero(~np.isnan(log.to_array())) == 4 * n_samples
    # Rows stored: 4 ranks x 4 epochs x 20000 float32; the NaN runs of other ranks shrink.
    assert sizes[False] >= 4 * 4 * n_samples * 4
    assert sizes[True] < 0.5 * sizes[False], sizes


# ------------------------------------------------------------------ bad input


def test_a_missing_shard_is_named(tmp_path):
    _, manifest = write_both(tmp_path, errors_of(), 3, [0] * N_EPOCHS)
    shard_path(manifest, 2, 3).unlink()
    with pytest.raises(LTAUFileError, match=r"shard 2 of 3 .* is missing"):
        open_error_log(manifest)


def test_a_shard_of_another_log_is_named(tmp_path):
    _, manifest = write_both(tmp_path, errors_of(), 2, [0] * N_EPOCHS)
    other = tmp_path / "other"
    other.mkdir()
    _, foreign = write_both(other, errors_of(4), 2, [0] * N_EPOCHS)
    shard_path(foreign, 1, 2).replace(shard_path(manifest, 1, 2))
    with pytest.raises(LTAUFileError, match="belongs to another log"):
        open_error_log(manifest)


def test_a_one_writer_log_in_place_of_a_shard_is_named(tmp_path):
    single, manifest = write_both(tmp_path, errors_of(), 2, [0] * N_EPOCHS)
    single.replace(shard_path(manifest, 0, 2))
    with pytest.raises(LTAUFileError, match="one writer, not a shard"):
        open_error_log(manifest)


def test_shards_that_disagree_on_n_samples_are_named(tmp_path):
    manifest = tmp_path / "log.h5"
    log_id = new_log_id()
    with shard_recorder(manifest, rank=0, world_size=2, n_samples=10, log_id=log_id) as first:
        first.record([0, 1], [0.1, 0.2])
        first.end_epoch()
    with shard_recorder(manifest, rank=1, world_size=2, n_samples=12, log_id=log_id) as second:
        second.record([2], [0.3])
        second.end_epoch()
    with pytest.raises(LTAUFileError, match=r"disagree.*12 samples, the manifest 10"):
        open_error_log(manifest)


def test_shards_that_disagree_on_an_epochs_model_are_named(tmp_path):
    manifest = tmp_path / "log.h5"
    log_id = new_log_id()
    for rank, member in ((0, 0), (1, 1)):
        with shard_recorder(manifest, rank=rank, world_size=2, n_samples=4, log_id=log_id) as rec:
            rec.record([rank], [0.1])
            rec.end_epoch(member=member)
    with pytest.raises(LTAUFileError, match="disagree on epoch row 0"):
        open_error_log(manifest)


def test_overlapping_atoms_are_named(tmp_path):
    manifest = tmp_path / "log.h5"
    log_id = new_log_id()
    for rank, ids in ((0, [0, 1, 2]), (1, [2, 3])):
        with shard_recorder(manifest, rank=rank, world_size=2, n_samples=4, log_id=log_id) as rec:
            rec.record([0, 1, 2, 3], [0.1] * 4)
            rec.end_epoch()
            rec.record(ids, [0.2] * len(ids))
            rec.end_epoch()
    with open_error_log(manifest) as log:
        with pytest.raises(LTAUFileError, match="sample 0 was recorded by rank 0 and rank 1"):
            log.distributions()
        with pytest.raises(LTAUFileError, match=r"sample 2 .* epoch row 1"):
            next(log.epoch_rows([1]))


def test_a_killed_rank_leaves_the_epochs_every_rank_completed(tmp_path, caplog):
    """Rank 1 is killed (SIGKILL) while recording its fourth epoch; ranks 0 completed 5."""
    manifest = tmp_path / "log.h5"
    log_id = new_log_id()
    with shard_recorder(manifest, rank=0, world_size=2, n_samples=6, log_id=log_id) as rec:
        for epoch in range(5):
            rec.record([0, 1, 2], [0.1 * (epoch + 1)] * 3)
            rec.end_epoch()
    script = textwrap.dedent(
        f"""
        import os, signal
        from ltau.sharded_log import shard_recorder
        rec = shard_recorder({str(manifest)!r}, rank=1, world_size=2, n_samples=6,
                             log_id={log_id!r})
        for epoch in range(3):
            rec.record([3, 4, 5], [0.5] * 3)
            rec.end_epoch()
        rec.record([3], [0.7])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr
    with caplog.at_level(logging.WARNING), open_error_log(manifest) as log:
        assert log.n_epochs == 3
        rows = log.to_array()
    assert "ranks [0] completed more epochs" in caplog.text
    np.testing.assert_allclose(rows[:, :3], [[0.1] * 3, [0.2] * 3, [0.3] * 3], rtol=1e-6)
    np.testing.assert_array_equal(rows[:, 3:], 0.5)


def test_a_damaged_manifest_is_refused(tmp_path):
    _, manifest = write_both(tmp_path, errors_of(), 2, [0] * N_EPOCHS)
    data = bytearray(manifest.read_bytes())
    data[-100] ^= 0xFF
    manifest.write_bytes(bytes(data))
    with pytest.raises(LTAUFileError, match="corrupted"):
        open_error_log(manifest)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 2, "world_size": 2}, r"rank must lie in \[0, world_size=2\)"),
        ({"rank": -1, "world_size": 2}, "rank"),
        ({"rank": 0, "world_size": 0}, "world_size"),
        ({"rank": 0, "world_size": 1, "log_id": ""}, "log_id must be a non-empty string"),
        ({"rank": 1, "world_size": 2, "provenance": {"a": 1}}, "rank 0 only"),
        ({"rank": 0, "world_size": 1, "dtype": "float64"}, "dtype must be one of"),
        ({"rank": 0, "world_size": 1, "compression": "yes"}, "compression must be True or False"),
    ],
)
def test_shard_recorder_bad_input(tmp_path, kwargs, message):
    arguments = {"n_samples": 4, "log_id": "x"} | kwargs
    with pytest.raises(LTAUInputError, match=message):
        shard_recorder(tmp_path / "log.h5", **arguments)


def test_shard_recorder_refuses_to_replace_a_manifest(tmp_path):
    manifest = tmp_path / "log.h5"
    shard_recorder(manifest, rank=0, world_size=1, n_samples=4, log_id="a").close()
    with pytest.raises(LTAUFileError, match="exists"):
        shard_recorder(manifest, rank=0, world_size=1, n_samples=4, log_id="b")
    shard_recorder(manifest, rank=0, world_size=1, n_samples=4, log_id="b", overwrite=True).close()


# ------------------------------------------------------------------ a real multi-rank writer


def test_lightning_ddp_writes_one_shard_per_rank_read_as_one(tmp_path):
    """Two gloo processes (Lightning strategy="ddp" on CPU), each recording the samples its
    DistributedSampler gave it; the log read as one holds every rank's own outputs' errors."""
    pytest.importorskip("lightning")
    script = Path(__file__).with_name("ddp_lightning_train.py")
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [np.load(tmp_path / f"seen-rank{rank}.npy") for rank in range(2)]
    with open_error_log(tmp_path / "errors.h5") as log:
        assert isinstance(log, ShardedErrorLog) and log.world_size == 2
        logged = log.to_array()
    for rank in range(2):
        with h5py.File(shard_path(tmp_path / "errors.h5", rank, 2), "r") as handle:
            rows = handle["errors"][:]
        # Each rank trained on half of the samples each epoch and recorded exactly those.
        assert (np.count_nonzero(~np.isnan(rows), axis=1) == 24).all()
        np.testing.assert_array_equal(np.isnan(rows), np.isnan(seen[rank]))
    assert logged.shape == (3, 48) and not np.isnan(logged).any()
    np.testing.assert_allclose(logged, np.fmax(seen[0], seen[1]), rtol=1e-6)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("missing", "does not exist"), ("directory", "is a directory"), ("foreign", "not written by")],
)
def test_open_error_log_refuses_what_is_not_a_log(tmp_path, kind, message):
    path = tmp_path / "log.h5"
    if kind == "directory":
        path.mkdir()
    elif kind == "foreign":
        with h5py.File(path, "w") as handle:
            handle["x"] = [1, 2]
    with pytest.raises(LTAUFileError, match=message):
        open_error_log(path)


def test_merged_histograms_equal_one_accumulator_over_all_epochs():
    from ltau.distributions import HistogramAccumulator

    errors = errors_of(5)
    bins = Bins.log(0.02, 1.0, 15)  # clips on both sides
    whole, first, second = (HistogramAccumulator(bins, N_SAMPLES) for _ in range(3))
    for epoch, row in enumerate(errors):
        whole.add_checked(None, row)
        (first if epoch < 3 else second).add_checked(None, row)
    first.merge(second)
    np.testing.assert_array_equal(first.counts, whole.counts)
    assert first.clipping() == whole.clipping()
    with pytest.raises(LTAUInputError, match="same bins"):
        first.merge(HistogramAccumulator(Bins.log(0.02, 1.0, 16), N_SAMPLES))
    with pytest.raises(LTAUInputError, match="same bins and samples"):
        first.merge(HistogramAccumulator(bins, N_SAMPLES + 1))
    with pytest.raises(LTAUInputError, match="only a HistogramAccumulator"):
        first.merge(whole.distributions())


def test_lightning_callback_with_a_spec_has_its_recorder_only_once_fitting(tmp_path):
    pytest.importorskip("lightning")
    from ltau.integrations.lightning import LTAUCallback
    from ltau.sharded_log import ShardedLogSpec

    callback = LTAUCallback(
        ShardedLogSpec(tmp_path / "errors.h5", 4), error_fn=abs, ids_fn=lambda b: b[2]
    )
    with pytest.raises(LTAUInputError, match="made when the trainer fits"):
        callback.descriptors(None, [])
    with pytest.raises(LTAUInputError, match="ids_fn must be callable"):
        LTAUCallback(ShardedLogSpec(tmp_path / "errors.h5", 4), error_fn=abs, ids_fn=3)


def test_a_sharded_log_carries_the_trainers_facts_for_ltau_run(tmp_path):
    """What `ltau run` reads from a log besides its rows (the samples columns and provenance)
    comes from the manifest, as from a one-writer log."""
    import ase
    import ase.io

    from ltau._io import file_sha256
    from ltau.atomistic.structures import read_structures
    from ltau.atomistic.training_log import logged_training

    configs = [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]]) for i in range(3)]
    path = tmp_path / "train.xyz"
    ase.io.write(path, configs)
    train = read_structures(path, energy_key=None, forces_key=None, require_forces=False)
    samples = {"configuration": np.repeat([0, 1, 2], 2), "atom": np.tile([0, 1], 3)}
    facts = {
        "train_file_sha256": file_sha256(path),
        "trained_configurations": [0, 2],
        "validation_configurations": [1],
    }
    with ErrorRecorder(6, log_path=tmp_path / "one.h5", samples=samples, provenance=facts) as rec:
        rec.record([0, 1, 4, 5], [0.1, 0.2, 0.3, 0.4])
        rec.end_epoch(allow_missing=True)
    manifest = tmp_path / "sharded.h5"
    log_id = new_log_id()
    for rank, ids in ((0, [0, 1]), (1, [4, 5])):
        extra = {"samples": samples, "provenance": facts} if rank == 0 else {}
        with shard_recorder(
            manifest, rank=rank, world_size=2, n_samples=6, log_id=log_id, **extra
        ) as rec:
            rec.record(ids, [0.1, 0.2] if rank == 0 else [0.3, 0.4])
            rec.end_epoch()
    with open_error_log(tmp_path / "one.h5") as one, open_error_log(manifest) as sharded:
        expected, got = logged_training(one, train, path), logged_training(sharded, train, path)
        np.testing.assert_array_equal(sharded.to_array(), one.to_array())
    np.testing.assert_array_equal(got.sample_ids, expected.sample_ids)
    assert got.provenance == expected.provenance
    assert len(got.validation.atoms) == len(expected.validation.atoms) == 1
