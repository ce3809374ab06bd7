"""The ``ltau`` command line: the whole flow, output formats, and bad input."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ltau_reference import reseal

from ltau import Bins, ErrorDistributions, ErrorLog, ErrorRecorder, LTAUEstimator
from ltau.cli import main
from ltau.distributions import load_distributions, save_distributions


@pytest.fixture
def recorded(tmp_path):
    """A small recorded log and matching training / query descriptors."""
    rng = np.random.default_rng(3)
    n_samples, dim = 300, 8
    descriptors = rng.normal(size=(n_samples, dim)).astype(np.float32)
    scale = np.exp(descriptors[:, 0])
    with ErrorRecorder(n_samples, log_path=tmp_path / "log.h5") as recorder:
        for member in (0, 1):
            for _ in range(15):
                recorder.record_epoch(np.abs(rng.normal(size=n_samples)) * scale, member=member)
    np.save(tmp_path / "train.npy", descriptors)
    np.save(tmp_path / "query.npy", rng.normal(size=(40, dim)).astype(np.float32))
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_full_flow_matches_python_api(recorded, capsys):
    d = recorded
    assert run(capsys, "distributions", d / "log.h5", "-o", d / "dist.h5", "--bins", 40)[0] == 0
    code, out, _ = run(
        capsys,
        *("fit", "--descriptors", d / "train.npy", "--distributions", d / "dist.h5"),
        *("-o", d / "est.h5", "-k", 7, "--metadata", "unit=eV/A"),
    )
    assert code == 0 and "est.h5" in out
    code, _, _ = run(
        capsys,
        *("predict", d / "est.h5", "--descriptors", d / "query.npy", "-o", d / "out.csv"),
        *("--atol", 0.5, 1.0, "--quantiles", 0.5, "--confidence", 0.9),
    )
    assert code == 0
    with open(d / "out.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40
    assert set(rows[0]) == {
        "expected_error",
        "ood_score",
        "below_resolution",
        "p_exceed_0.5",
        "p_exceed_1",
        "quantile_0.5",
        "interval_0.9_lower",
        "interval_0.9_upper",
    }

    distributions = load_distributions(d / "dist.h5")
    assert distributions.bins.n_bins == 40
    assert distributions.n_observations.tolist() == [30] * 300  # both members pooled
    expected = (
        LTAUEstimator(7)
        .fit(np.load(d / "train.npy"), distributions)
        .predict(np.load(d / "query.npy"), atol=[0.5, 1.0])
    )
    np.testing.assert_allclose([float(r["expected_error"]) for r in rows], expected.expected_error)
    np.testing.assert_allclose([float(r["p_exceed_1"]) for r in rows], expected.exceedance[:, 1])

    code, out, _ = run(capsys, "describe", d / "est.h5")
    summary = json.loads(out)
    assert summary["format"] == "ltau-estimator"
    assert summary["settings"]["n_neighbors"] == 7
    assert summary["metadata"] == {"unit": "eV/A"}
    assert summary["descriptor_dim"] == 8


def test_npy_and_npz_outputs(recorded, capsys):
    d = recorded
    run(capsys, "distributions", d / "log.h5", "-o", d / "dist.h5", "--members", 1)
    assert load_distributions(d / "dist.h5").n_observations.max() == 15
    run(capsys, "distributions", d / "log.h5", "-o", d / "late.h5", "--skip-epochs", 10)
    with ErrorLog(d / "log.h5") as log:
        late = log.distributions(skip_epochs=10)
    np.testing.assert_array_equal(load_distributions(d / "late.h5").counts, late.counts)
    assert late.n_observations.max() == 2 * 5
    run(
        capsys,
        "fit",
        "--descriptors",
        d / "train.npy",
        "--distributions",
        d / "dist.h5",
        "-o",
        d / "e.h5",
    )
    query = ("predict", d / "e.h5", "--descriptors", d / "query.npy")
    assert run(capsys, *query, "-o", d / "p.npy", "--atol", 0.3)[0] == 0
    table = np.load(d / "p.npy", allow_pickle=False)
    assert table.dtype.names == ("expected_error", "ood_score", "below_resolution", "p_exceed_0.3")
    assert run(capsys, *query, "-o", d / "p.npz", "--pdf")[0] == 0
    with np.load(d / "p.npz", allow_pickle=False) as archive:
        pdf, edges = archive["pdf"], archive["bin_edges"]
    np.testing.assert_allclose((pdf * np.diff(edges)).sum(axis=1), 1.0)
    # --distance-scale local: the same estimator as the Python API's.
    fit_local = ("fit", "--descriptors", d / "train.npy", "--distributions", d / "dist.h5")
    run(capsys, *fit_local, "-o", d / "local.h5", "--distance-scale", "local")
    local = LTAUEstimator.load(d / "local.h5")
    direct = LTAUEstimator(local.n_neighbors, distance_scale="local").fit(
        np.load(d / "train.npy"), load_distributions(d / "dist.h5")
    )
    np.testing.assert_array_equal(local.local_scale_, direct.local_scale_)
    with pytest.raises(SystemExit) as stopped:
        run(capsys, *fit_local, "-o", d / "bad.h5", "--distance-scale", "relative")
    assert stopped.value.code == 2
    assert "invalid choice: 'relative'" in capsys.readouterr().err
    assert not (d / "bad.h5").exists()


def test_calibrate_with_groups_matches_python_api(recorded, capsys):
    d = recorded
    rng = np.random.default_rng(5)
    validation = rng.normal(scale=1.5, size=(120, 8)).astype(np.float32)
    np.save(d / "val.npy", validation)
    np.save(d / "val_errors.npy", np.abs(rng.normal(size=120)) * np.exp(validation[:, 0]))
    np.save(d / "val_groups.npy", np.repeat(np.arange(30), 4))
    np.save(d / "query_groups.npy", np.repeat(np.arange(10), 4))
    run(capsys, "distributions", d / "log.h5", "-o", d / "dist.h5")
    run(capsys, "fit", "--descriptors", d / "train.npy", "--distributions", d / "dist.h5",
        "-o", d / "est.h5", "--metadata", "unit=eV/A")  # fmt: skip
    code, out, _ = run(
        capsys,
        *("calibrate", d / "est.h5", "--descriptors", d / "val.npy"),
        *("--errors", d / "val_errors.npy", "--groups", d / "val_groups.npy", "-o", d / "cal.h5"),
    )
    assert code == 0 and "distance widening exponents" in out
    code, _, _ = run(
        capsys,
        *("predict", d / "cal.h5", "--descriptors", d / "query.npy", "-o", d / "out.npy"),
        *("--groups", d / "query_groups.npy", "--atol", 1.0),
    )
    assert code == 0
    table = np.load(d / "out.npy")

    expected = LTAUEstimator.load(d / "est.h5").calibrate(
        validation, np.load(d / "val_errors.npy"), groups=np.load(d / "val_groups.npy")
    )
    direct = expected.predict(np.load(d / "query.npy"), groups=np.load(d / "query_groups.npy"),
                              atol=1.0)  # fmt: skip
    np.testing.assert_allclose(table["expected_error"], direct.expected_error)
    np.testing.assert_allclose(table["p_exceed_1"], direct.exceedance[:, 0])
    assert LTAUEstimator.load(d / "cal.h5").metadata_ == {"unit": "eV/A"}

    code, out, _ = run(
        capsys,
        *("calibrate", d / "est.h5", "--descriptors", d / "val.npy", "--no-widening"),
        *("--errors", d / "val_errors.npy", "--method", "scale", "-o", d / "plain.h5"),
    )
    assert code == 0 and "no distance widening" in out
    assert LTAUEstimator.load(d / "plain.h5").widening_ is None
    # --pdf of the scale-calibrated estimator: the densities come with the bins they live on.
    code, _, _ = run(
        capsys,
        *("predict", d / "plain.h5", "--descriptors", d / "query.npy", "-o", d / "pdf.npz"),
        "--pdf",
    )
    assert code == 0
    plain = LTAUEstimator.load(d / "plain.h5").predict(np.load(d / "query.npy"), return_pdf=True)
    with np.load(d / "pdf.npz", allow_pickle=False) as archive:
        np.testing.assert_allclose(archive["bin_edges"], plain.bins.edges)
        assert not np.allclose(archive["bin_edges"], LTAUEstimator.load(d / "plain.h5").bins.edges)
        mass = archive["pdf"] * np.diff(archive["bin_edges"])
        np.testing.assert_allclose(mass.sum(axis=1), 1.0)


def test_describe_log_and_distributions(recorded, capsys):
    d = recorded
    summary = json.loads(run(capsys, "describe", d / "log.h5")[1])
    assert summary["n_epochs"] == 30 and summary["epochs_by_member"] == {"0": 15, "1": 15}
    distributions = ErrorDistributions.from_errors(np.ones((5, 3)), Bins.linear(0, 2, 4))
    save_distributions(distributions, d / "dist.h5")
    summary = json.loads(run(capsys, "describe", d / "dist.h5")[1])
    assert summary["format"] == "ltau-distributions" and summary["n_samples"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("describe", "{d}/missing.h5"), "does not exist"),
        (("describe", "{d}/train.npy"), "not a readable ltau file"),
        (("distributions", "{d}/train.npy", "-o", "{d}/x.h5"), "not a readable ltau-error-log"),
        (("distributions", "{d}/log.h5", "-o", "{d}/x.h5", "--members", "7"), "members \\[7\\]"),
        (("distributions", "{d}/log.h5", "-o", "{d}/nodir/x.h5"), "does not exist"),
        (
            ("distributions", "{d}/log.h5", "-o", "{d}/x.h5", "--skip-epochs", "15"),
            "after skipping",
        ),
        (("distributions", "{d}/log.h5", "-o", "{d}/x.h5", "--skip-epochs", "-1"), "skip_epochs"),
        (
            ("distributions", "{d}/log.h5", "-o", "{d}/x.h5", "--range", "1", "0.5"),
            "invalid error range",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/query.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
            ),
            "40 descriptor rows but 300",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/train.npy",
                "--distributions",
                "{d}/log.h5",
                "-o",
                "{d}/e.h5",
            ),
            "expected an ltau-distributions",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/train.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
                "-k",
                "301",
            ),
            "exceeds the 300",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/train.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
                "--index",
                "exact",
                "--index-param",
                "M=4",
            ),
            "unknown parameters",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/train.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
                "--index-param",
                "ef_search=8",
            ),
            "index='auto' chooses the index and its parameters",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/train.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
                "--index",
                "hnsw",
                "--index-param",
                "M=x",
            ),
            "must be an integer",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/bad.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
            ),
            "not a readable .npy",
        ),
        (
            (
                "fit",
                "--descriptors",
                "{d}/nan.npy",
                "--distributions",
                "{d}/dist.h5",
                "-o",
                "{d}/e.h5",
            ),
            "contains nan",
        ),
        (
            ("predict", "{d}/est.h5", "--descriptors", "{d}/wide.npy", "-o", "{d}/p.csv"),
            "9 features; the estimator was fitted on 8",
        ),
        (
            ("predict", "{d}/est.h5", "--descriptors", "{d}/query.npy", "-o", "{d}/p.txt"),
            "must end in .csv",
        ),
        (
            ("predict", "{d}/est.h5", "--descriptors", "{d}/query.npy", "-o", "{d}/p.csv", "--pdf"),
            "needs an .npz",
        ),
        (
            (
                "predict",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "-o",
                "{d}/p.csv",
                "--atol",
                "-1",
            ),
            "atol must be",
        ),
        (
            (
                "predict",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "-o",
                "{d}/p.csv",
                "--quantiles",
                "1.5",
            ),
            "must lie in \\[0, 1\\]",
        ),
        (
            ("predict", "{d}/dist.h5", "--descriptors", "{d}/query.npy", "-o", "{d}/p.csv"),
            "expected an ltau-estimator",
        ),
        (
            (
                "predict",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "-o",
                "{d}/p.csv",
                "--groups",
                "{d}/short_groups.npy",
            ),
            "one label per query",
        ),
        (
            (
                "calibrate",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "--errors",
                "{d}/short_groups.npy",
                "-o",
                "{d}/c.h5",
            ),
            "3 entries but there are 40 descriptor rows",
        ),
        (
            (
                "calibrate",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "--errors",
                "{d}/query_errors.npy",
                "--groups",
                "{d}/float_groups.npy",
                "-o",
                "{d}/c.h5",
            ),
            "integer labels",
        ),
        (
            (
                "calibrate",
                "{d}/est.h5",
                "--descriptors",
                "{d}/query.npy",
                "--errors",
                "{d}/missing.npy",
                "-o",
                "{d}/c.h5",
            ),
            "does not exist",
        ),
    ],
)
def test_bad_input_is_named_and_writes_nothing(recorded, capsys, args, message):
    d = recorded
    (d / "bad.npy").write_bytes(b"not an npy file")
    np.save(d / "nan.npy", np.full((300, 8), np.nan))
    np.save(d / "wide.npy", np.zeros((4, 9)))
    np.save(d / "short_groups.npy", np.zeros(3, dtype=np.int64))
    np.save(d / "float_groups.npy", np.zeros(40))
    np.save(d / "query_errors.npy", np.ones(40))
    run(capsys, "distributions", d / "log.h5", "-o", d / "dist.h5")
    run(
        capsys,
        "fit",
        "--descriptors",
        d / "train.npy",
        "--distributions",
        d / "dist.h5",
        "-o",
        d / "est.h5",
    )
    before = sorted(p.name for p in d.iterdir())
    code, _, err = run(capsys, *(a.format(d=d) for a in args))
    assert code == 2
    assert f"ltau {args[0]}: error:" in err
    assert __import__("re").search(message, err), err
    assert sorted(p.name for p in d.iterdir()) == before  # nothing new, no temporary left


def _flip_byte(path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind", ["est", "dist", "log"])
def test_describe_refuses_a_file_with_one_flipped_byte(recorded, capsys, kind):
    d = recorded
    assert run(capsys, "distributions", d / "log.h5", "-o", d / "dist.h5")[0] == 0
    fit = ("fit", "--descriptors", d / "train.npy", "--distributions", d / "dist.h5")
    assert run(capsys, *fit, "-o", d / "est.h5")[0] == 0
    path = d / f"{kind}.h5"
    assert run(capsys, "describe", path)[0] == 0
    for offset in (600, path.stat().st_size // 2, path.stat().st_size - 3):
        damaged = d / f"damaged-{kind}-{offset}.h5"
        damaged.write_bytes(path.read_bytes())
        _flip_byte(damaged, offset)
        code, out, err = run(capsys, "describe", damaged)
        assert code == 2 and out == ""
        assert err.startswith("ltau describe: error: ") and str(damaged) in err
        assert "SHA-256" in err and "Traceback" not in err


def test_describe_counts_only_verified_epochs(recorded, capsys):
    """A damaged epoch row behind an intact seal (as the seal of a log whose writer was killed
    does not vouch for it) is an error, not one more intact epoch."""
    d = recorded
    with h5py.File(d / "log.h5", "r") as handle:
        info = handle["errors"].id.get_chunk_info(4)  # one chunk per epoch row
    raw = bytearray((d / "log.h5").read_bytes())
    raw[info.byte_offset + 8] ^= 0x5A
    (d / "log.h5").write_bytes(bytes(raw))
    reseal(d / "log.h5")
    code, out, err = run(capsys, "describe", d / "log.h5")
    assert code == 2 and out == "" and "epoch row 4 is corrupted" in err


_KILLED_WRITER = """
import os, signal, sys
import ltau.recording
from ltau import ErrorRecorder

ltau.recording.SEAL_GROWTH = 1e9  # never resealed after the first epoch
recorder = ErrorRecorder(50, log_path=sys.argv[1])
for epoch in range(4):
    recorder.record_epoch([0.1 * (epoch + 1)] * 50, member=epoch % 2)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_describe_reads_a_log_whose_writer_was_killed_after_its_last_seal(tmp_path, capsys):
    log = tmp_path / "killed.h5"
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(log)], capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert log.read_bytes()[10] == 1  # the seal is marked "changing": the bounded path reads it
    code, out, _ = run(capsys, "describe", log)
    assert code == 0
    summary = json.loads(out)
    assert summary["n_epochs"] == 4 and summary["epochs_by_member"] == {"0": 2, "1": 2}


def test_foreign_hdf5_is_refused(tmp_path, capsys):
    with h5py.File(tmp_path / "foreign.h5", "w") as handle:
        handle["x"] = np.arange(3)
    code, _, err = run(capsys, "describe", tmp_path / "foreign.h5")
    assert code == 2 and "not written by ltau" in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("distributions", "fit", "calibrate", "predict", "describe", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["descriptors", "{d}/s.xyz", "--model", "{d}/m.model", "-o", "{d}/d.csv"], ".npy or .npz"),
        (
            ["descriptors", "{d}/s.xyz", "--model", "{d}/absent.model", "-o", "{d}/d.npy"],
            "does not exist",
        ),
        (
            [
                "run",
                "--model",
                "{d}/m.model",
                "--log",
                "{d}/l.h5",
                "--train",
                "{d}/s.xyz",
                "--output-dir",
                "{d}/out",
            ],
            "at least one --test",
        ),
        (
            ["mace-train", "--log", "{d}/l.h5", "--member", "-1", "--", "--name", "x"],
            "--member must be 0 or more",
        ),
    ],
)
def test_model_commands_refuse_bad_input_before_work(tmp_path, capsys, argv, message):
    import ase
    import ase.io

    ase.io.write(tmp_path / "s.xyz", ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]]))
    (tmp_path / "m.model").write_bytes(b"not a model")
    code = main([a.format(d=tmp_path) for a in argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.glob("d.*")) and not (tmp_path / "out").exists()
