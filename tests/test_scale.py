"""The compact form for large training sets: uint8 distributions, compressed indices, the index
in its own memory-mapped file with a sampled integrity check (see docs/scale.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ltau import ErrorDistributions, LTAUEstimator
from ltau.cli import main
from ltau.distributions import COMPRESSED_MAX, load_distributions, save_distributions
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.index_file import BLOCK_BYTES, IndexFileRecord, index_file_path
from ltau.search import NeighborIndex

IVFSQ = {"nlist": 16, "nprobe": 16}


@pytest.fixture(scope="module")
def many_observations():
    """2000 samples with 6000 log-normal errors each: most rows' peak counts exceed 255."""
    rng = np.random.default_rng(7)
    descriptors = rng.normal(size=(2000, 16)).astype(np.float32)
    log_median = 0.5 * descriptors[:, 0] - 2.0
    errors = np.exp(
        log_median[:, None] + rng.uniform(0.2, 0.6, (2000, 1)) * rng.normal(size=(2000, 6000))
    )
    return descriptors, ErrorDistributions.from_errors(errors, n_bins=60)


def test_compressed_counts_are_uint8_and_keep_every_statistic_close(many_observations):
    _, exact = many_observations
    compact = exact.compressed()
    assert exact.counts.max() > COMPRESSED_MAX  # rows really are rescaled
    assert compact.counts.dtype == np.uint8 and compact.is_compressed
    assert compact.counts.max() == COMPRESSED_MAX
    np.testing.assert_array_equal(compact.counts > 0, exact.counts > 0)  # support kept
    np.testing.assert_array_equal(compact.resolution(), exact.resolution())
    # Rounding moves each bin by <= 0.5 / 255 of the peak; keeping a rare tail bin at 1 (for
    # the support) weighs it up most: a mean shift of 1e-3, at most ~6e-3 on this data.
    relative = np.abs(compact.expected_error() / exact.expected_error() - 1)
    assert relative.mean() < 2e-3 and relative.max() < 1e-2
    for atol in (0.05, 0.2):
        assert np.abs(compact.exceedance(atol) - exact.exceedance(atol)).max() < 5e-3
    quantile = compact.quantile([0.05, 0.95]) / exact.quantile([0.05, 0.95])
    assert np.abs(quantile - 1).max() < 2e-2
    assert compact.compressed() is compact


def test_rows_within_255_are_kept_exactly():
    counts = np.array([[3, 0, 255, 1], [0, 1000, 500, 1]], dtype=np.uint16)
    from ltau.histogram import Bins

    compact = ErrorDistributions(Bins.from_range(0.1, 1.0, 4, "log"), counts).compressed()
    np.testing.assert_array_equal(compact.counts[0], counts[0])
    np.testing.assert_array_equal(compact.counts[1], [0, 255, 128, 1])  # 0.255 rounds up to 1


def test_compressed_distributions_round_trip_and_refuse_pooling(many_observations, tmp_path):
    _, exact = many_observations
    compact = exact.compressed()
    save_distributions(compact, tmp_path / "d.h5")
    back = load_distributions(tmp_path / "d.h5")
    assert back.is_compressed
    np.testing.assert_array_equal(back.counts, compact.counts)
    with pytest.raises(
        LTAUInputError, match=r"compressed \(uint8\) distributions cannot be pooled"
    ):
        compact.pooled(compact)
    with pytest.raises(LTAUInputError, match="cannot be pooled"):
        exact.pooled(compact)


def test_compressed_estimator_matches_the_exact_one(many_observations):
    descriptors, exact = many_observations
    queries = descriptors[:200] + 0.01
    reference = LTAUEstimator(8).fit(descriptors, exact)
    compact = LTAUEstimator(8, index="ivfsq", index_params=IVFSQ).fit(
        descriptors, exact.compressed()
    )
    assert compact.sample_expected_error_.dtype == np.float32
    assert reference.sample_expected_error_.dtype == np.float64
    options = {"atol": 0.15, "confidence": 0.9}
    got = compact.predict(queries, **options)
    exact_neighbours = reference.predict(queries, **options).neighbor_indices
    recall = np.mean(
        [np.isin(w, g).mean() for g, w in zip(got.neighbor_indices, exact_neighbours, strict=True)]
    )
    assert recall > 0.9
    # The counts' compression alone: the same index with the uncompressed counts.
    want = LTAUEstimator(8, index="ivfsq", index_params=IVFSQ).fit_searched(compact.index_, exact)
    want = want.predict(queries, **options)
    np.testing.assert_array_equal(got.neighbor_indices, want.neighbor_indices)
    np.testing.assert_allclose(got.expected_error, want.expected_error, rtol=1e-2)
    np.testing.assert_allclose(got.exceedance, want.exceedance, atol=5e-3)
    np.testing.assert_allclose(got.interval_upper, want.interval_upper, rtol=2e-2)


@pytest.mark.parametrize(("kind", "params"), [("exact", {}), ("ivfsq", IVFSQ), ("opq", {})])
def test_separate_index_file_round_trip(many_observations, tmp_path, kind, params):
    descriptors, exact = many_observations
    if kind == "opq":
        params = {"nlist": 8, "m": 4, "nbits": 6, "nprobe": 8}
    estimator = LTAUEstimator(5, index=kind, index_params=params).fit(
        descriptors, exact.compressed()
    )
    path = tmp_path / "estimator.h5"
    estimator.save(path, index_file=True)
    assert index_file_path(path).is_file()
    want = estimator.predict(descriptors[:50], atol=0.1, quantiles=[0.5], return_pdf=True)
    for mmap in (True, False):
        loaded = LTAUEstimator.load(path, mmap=mmap)
        assert loaded.index_file_ == index_file_path(path)
        assert loaded.index_.memory_mapped == (mmap and kind != "exact")
        got = loaded.predict(descriptors[:50], atol=0.1, quantiles=[0.5], return_pdf=True)
        for name in ("neighbor_indices", "expected_error", "exceedance", "quantiles", "pdf"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    # A memory-mapped index saved elsewhere carries its lists, not a reference to the old file.
    LTAUEstimator.load(path).save(tmp_path / "copy.h5", index_file=False)
    os.remove(index_file_path(path))
    copy = LTAUEstimator.load(tmp_path / "copy.h5")
    assert copy.index_file_ is None
    np.testing.assert_array_equal(
        copy.predict(descriptors[:50]).expected_error, want.expected_error
    )


def test_the_separate_file_is_used_by_default_only_for_large_indices(
    small_data, tmp_path, monkeypatch
):
    train, dist = small_data["train"], small_data["distributions"]
    estimator = LTAUEstimator(3).fit(train, dist)
    estimator.save(tmp_path / "small.h5")
    assert not index_file_path(tmp_path / "small.h5").exists()
    monkeypatch.setattr("ltau.estimator.INDEX_FILE_MIN_ITEMS", train.shape[0])
    estimator.save(tmp_path / "large.h5")
    assert index_file_path(tmp_path / "large.h5").exists()
    with pytest.raises(LTAUInputError, match="index_file must be"):
        estimator.save(tmp_path / "bad.h5", index_file="yes")


@pytest.fixture
def saved_pair(tmp_path):
    """An exact-index estimator (2.6 MB index file, more than the 16 sampled blocks) saved
    with its index beside it."""
    rng = np.random.default_rng(1)
    descriptors = rng.normal(size=(20000, 32)).astype(np.float32)
    counts = rng.integers(1, 9, size=(20000, 6)).astype(np.uint16)
    from ltau.histogram import Bins

    distributions = ErrorDistributions(Bins.from_range(0.01, 1.0, 6, "log"), counts)
    estimator = LTAUEstimator(3).fit(descriptors, distributions)
    path = tmp_path / "estimator.h5"
    estimator.save(path, index_file=True)
    return estimator, path, index_file_path(path)


def flip_byte(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([value[0] ^ 0xFF]))


def test_a_missing_truncated_or_foreign_index_file_is_refused(saved_pair, tmp_path):
    estimator, path, index_path = saved_pair
    data = index_path.read_bytes()
    index_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LTAUFileError, match=r"estimator.h5.faiss is truncated or another file"):
        LTAUEstimator.load(path)
    NeighborIndex("exact").build(np.zeros((4, 32), np.float32)).write(index_path)
    with pytest.raises(LTAUFileError, match=r"truncated or another file: \d+ bytes without"):
        LTAUEstimator.load(path)
    index_path.write_bytes(data + b"extra")
    with pytest.raises(LTAUFileError, match="is not an ltau index file"):
        LTAUEstimator.load(path)
    os.remove(index_path)
    with pytest.raises(LTAUFileError, match=r"index file .*estimator\.h5\.faiss is missing"):
        LTAUEstimator.load(path)
    # Another estimator's index file, even of the same kind and size, is told apart.
    estimator.save(tmp_path / "other.h5", index_file=True)
    os.replace(index_file_path(tmp_path / "other.h5"), index_path)
    with pytest.raises(LTAUFileError, match="belongs to another estimator"):
        LTAUEstimator.load(path)


def test_the_quick_check_reads_sampled_blocks_and_the_full_check_every_byte(saved_pair, capsys):
    _, path, index_path = saved_pair
    import h5py

    with h5py.File(path, "r") as handle:
        record = IndexFileRecord.from_json(handle["index"].attrs["file"])
    size = index_path.stat().st_size
    assert len(record.blocks) * BLOCK_BYTES < size / 2  # the quick check reads < half of it
    sampled = {offset for offset, _ in record.blocks}
    flip_byte(index_path, min(sampled) + 100)
    with pytest.raises(LTAUFileError, match="corrupted: the block at byte 0 fails its SHA-256"):
        LTAUEstimator.load(path)
    flip_byte(index_path, min(sampled) + 100)  # restored
    covered = np.zeros(size, bool)
    for offset in sampled:
        covered[offset : offset + BLOCK_BYTES] = True
    outside = int(np.flatnonzero(~covered[: size - 64])[len(np.flatnonzero(~covered)) // 2])
    flip_byte(index_path, outside)
    LTAUEstimator.load(path)  # not sampled: only the full check sees it
    with pytest.raises(LTAUFileError, match="corrupted: its SHA-256 differs"):
        LTAUEstimator.load(path, full_check=True)
    assert main(["describe", str(path)]) != 0
    assert "SHA-256 differs" in capsys.readouterr().err
    flip_byte(index_path, outside)
    assert main(["describe", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index_file"] == str(index_path)


def test_the_cli_fits_predicts_and_describes_with_a_separate_compressed_index(
    many_observations, tmp_path, capsys
):
    descriptors, exact = many_observations
    np.save(tmp_path / "train.npy", descriptors)
    np.save(tmp_path / "query.npy", descriptors[:30])
    save_distributions(exact, tmp_path / "dist.h5")
    fit = ["fit", "--descriptors", str(tmp_path / "train.npy")]
    fit += ["--distributions", str(tmp_path / "dist.h5"), "-o", str(tmp_path / "est.h5")]
    fit += ["--index", "ivfsq", "--index-param", "nlist=16", "--compress", "--index-file", "yes"]
    assert main(fit) == 0
    assert index_file_path(tmp_path / "est.h5").is_file()
    predict = ["predict", str(tmp_path / "est.h5"), "--descriptors", str(tmp_path / "query.npy")]
    assert main([*predict, "-o", str(tmp_path / "out.csv"), "--atol", "0.1"]) == 0
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "est.h5")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compressed"] and summary["counts_dtype"] == "uint8"
    assert summary["settings"]["index"] == "ivfsq"
    os.remove(index_file_path(tmp_path / "est.h5"))
    assert main([*predict, "-o", str(tmp_path / "again.csv")]) != 0
    assert "index file" in capsys.readouterr().err
