"""Bad input: a fast part of the bad-input matrix (benchmarks/_bad_inputs.py), and one focused
test per defect the matrix found."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from _bad_inputs import ELSEWHERE, all_cases, read_only_dir, release, run_matrix

from ltau import Bins, ErrorDistributions, LTAUEstimator, LTAUInputError
from ltau._checks import MAX_BINS, as_float_matrix, real_array, tolerances
from ltau.cli import main
from ltau.distributions import save_distributions
from ltau.dynamics import groups_from_sizes
from ltau.metrics import auroc
from ltau.selection import burn_in_candidates, choose_configuration
from ltau.tuning import hardness_weights, suspicious_configs

FAST_EVERY = 5
"""The fast part runs every FAST_EVERY-th case of the matrix that needs no model."""


def fast_cases():
    """Every FAST_EVERY-th case without a model, except those failing in code that colleagues
    own (listed, with their cause, in ``_bad_inputs.ELSEWHERE``; the full matrix runs them)."""
    cases = all_cases(model=False)
    return [case for case in cases[::FAST_EVERY] if case.name not in ELSEWHERE]


def test_fast_part_of_the_matrix_has_no_traceback_and_nothing_silently_wrong(tmp_path):
    summary = run_matrix(tmp_path, model=False, cases=fast_cases())
    assert summary["bad_inputs_tried"] >= 100
    problems = {
        name: failure
        for name, failure in summary["failures"].items()
        if summary["failure_areas"][name] == "badinput"
    }
    assert problems == {}
    assert summary["tracebacks"] == summary["silent_wrong"] == summary["hangs"] == 0


def test_known_failures_elsewhere_name_real_cases():
    names = {case.name for case in all_cases()}
    assert set(ELSEWHERE) <= names
    assert all(area.split(":")[0] in ("integrity", "numerics") for area in ELSEWHERE.values())


# ----------------------------------------------------------- regressions
@pytest.fixture
def fitted(small_data):
    return LTAUEstimator(5).fit(small_data["train"], small_data["distributions"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.ones((4, 6), np.complex64), "not complex numbers"),
        (np.ones((4, 6)) * (1 + 1j), "not complex numbers"),
        (np.full((4, 6), "1.5"), "not strings"),
        (np.full((4, 6), np.datetime64("2020-01-01")), "not dates"),
        (np.full((4, 6), 1e300), "too large for float32"),
    ],
)
def test_descriptors_must_be_real_numbers(fitted, small_data, values, message):
    with pytest.raises(LTAUInputError, match=message):
        LTAUEstimator(3).fit(values, ErrorDistributions.from_errors(np.ones((4, 2)) * 0.5))
    with pytest.raises(LTAUInputError, match=message):
        fitted.predict(values)


def test_integer_boolean_and_list_input_stay_numbers(fitted, small_data):
    queries = small_data["queries"]
    expected = fitted.predict(queries).expected_error
    np.testing.assert_array_equal(fitted.predict(queries.tolist()).expected_error, expected)
    np.testing.assert_array_equal(as_float_matrix([[1, 0]], "x"), [[1.0, 0.0]])
    np.testing.assert_array_equal(real_array(np.array([True, False]), "x"), [1.0, 0.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, q: e.predict(q, atol="0.1"), "atol must be"),
        (lambda e, q: e.predict(q, quantiles=0.5j), "quantiles must hold real numbers"),
        (lambda e, q: e.predict(q, quantiles="median"), "quantiles must hold real numbers"),
        (lambda e, q: e.predict(q, confidence=[0.5, 0.9]), "confidence must be one number"),
        (lambda e, q: e.calibrate(q, np.ones(len(q), complex)), "errors must hold real"),
    ],
)
def test_prediction_options_are_refused_not_converted(fitted, small_data, call, message):
    with pytest.raises(LTAUInputError, match=message):
        call(fitted, small_data["queries"])
    with pytest.raises(LTAUInputError, match="atol must be"):
        tolerances("0.1")


def test_bins_are_bounded(tmp_path, capsys):
    for build in (Bins.log, Bins.linear):
        assert build(0.1, 1.0, MAX_BINS).n_bins == MAX_BINS
        with pytest.raises(LTAUInputError, match=f"n_bins must be at most {MAX_BINS}"):
            build(0.1, 1.0, MAX_BINS + 1)
    with pytest.raises(LTAUInputError, match="n_bins must be at most"):
        ErrorDistributions.from_errors(np.ones((2, 3)), n_bins=10**10)
    with pytest.raises(LTAUInputError, match="bin edges must hold real numbers"):
        Bins(np.array([0.0, 1.0 + 1j]))
    log = tmp_path / "log.h5"
    from ltau import ErrorRecorder

    with ErrorRecorder(3, log_path=log) as recorder:
        recorder.record_epoch([0.1, 0.2, 0.3])
    capsys.readouterr()
    code = main(["distributions", str(log), "-o", str(tmp_path / "x.h5"), "--bins", "1000000000"])
    assert code == 2 and "n_bins must be at most" in capsys.readouterr().err


@pytest.fixture
def locked(tmp_path):
    """A read-only directory (also for root), released afterwards."""
    read_only_dir("ro")(tmp_path, tmp_path)
    yield tmp_path / "ro"
    release(tmp_path)


def test_read_only_and_impossible_outputs_are_refused_before_work(tmp_path, locked, capsys):
    np.save(tmp_path / "e.npy", np.abs(np.random.default_rng(0).normal(size=(20, 4))))
    save_distributions(
        ErrorDistributions.from_errors(np.load(tmp_path / "e.npy")), tmp_path / "d.h5"
    )
    np.save(tmp_path / "x.npy", np.zeros((20, 3), np.float32))
    (tmp_path / "afile").write_text("x")
    fit = ["fit", "--descriptors", str(tmp_path / "x.npy"), "--distributions"]
    for output in (locked / "e.h5", tmp_path / "afile" / "e.h5"):
        assert main([*fit, str(tmp_path / "d.h5"), "-o", str(output)]) == 2
        err = capsys.readouterr().err
        assert "ltau fit: error:" in err and ("not writable" in err or "is a file" in err)
    for argv in (
        ["demo", "--output-dir", str(locked / "out"), "--epochs", "1"],
        ["demo", "--output-dir", str(tmp_path / "afile"), "--epochs", "1"],
        ["demo", "--output-dir", str(tmp_path / "out"), "--models", "0"],
        ["demo", "--output-dir", str(tmp_path / "out"), "--device", "tpu"],
        ["demo", "--output-dir", str(tmp_path / "out"), "--in-domain", "elsewhere"],
    ):
        assert main(argv) == 2, argv
        assert "ltau demo: error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_operating_system_errors_are_reported_without_a_traceback(tmp_path, monkeypatch, capsys):
    import ltau.cli.describe as describe

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(describe, "file_format", refuse)
    assert main(["describe", str(tmp_path / "x.h5")]) == 2
    assert "cannot access" in capsys.readouterr().err


def test_a_fifo_is_not_read_as_an_array(tmp_path, capsys):
    os.mkfifo(tmp_path / "q.npy")
    code = main(["fit", "--descriptors", str(tmp_path / "q.npy"), "--distributions",
                 str(tmp_path / "d.h5"), "-o", str(tmp_path / "e.h5")])  # fmt: skip
    assert code == 2 and "not a regular file" in capsys.readouterr().err


def test_fit_records_the_model_of_a_descriptors_archive(tmp_path, small_data, capsys):
    save_distributions(small_data["distributions"], tmp_path / "d.h5")
    np.savez(tmp_path / "t.npz", descriptors=small_data["train"], model_sha256=np.array("a" * 64))
    np.savez(tmp_path / "q.npz", descriptors=small_data["queries"], model_sha256=np.array("b" * 64))
    fit = [
        "fit",
        "--descriptors",
        str(tmp_path / "t.npz"),
        "--distributions",
        str(tmp_path / "d.h5"),
    ]
    assert main([*fit, "-o", str(tmp_path / "e.h5")]) == 0
    assert LTAUEstimator.load(tmp_path / "e.h5").metadata_["model_sha256"] == "a" * 64
    assert main([*fit, "-o", str(tmp_path / "f.h5"), "--metadata", "model_sha256=c"]) == 2
    capsys.readouterr()
    code = main(["predict", str(tmp_path / "e.h5"), "--descriptors", str(tmp_path / "q.npz"),
                 "-o", str(tmp_path / "p.csv")])  # fmt: skip
    assert code == 2 and "another model" in capsys.readouterr().err


def test_dynamics_checks_group_sizes_before_allocating(tmp_path, capsys):
    with pytest.raises(LTAUInputError, match="sum to 12000000000000000 but there are 60"):
        groups_from_sizes(np.full(12, 10**15), 60)
    with pytest.raises(LTAUInputError, match="group sizes must hold real numbers"):
        groups_from_sizes(np.array([2 + 0j]))
    assert groups_from_sizes([2, 1], 3).tolist() == [0, 0, 1]


def test_analysis_arguments_are_checked():
    with pytest.raises(LTAUInputError, match="labels must be binary"):
        auroc(np.linspace(0, 1, 4), np.arange(4))
    for kwargs in ({"power": float("nan")}, {"power": -1.0}, {"low": 2.0}, {"high": 0.5}):
        with pytest.raises(LTAUInputError, match=r"power|low"):
            hardness_weights(np.arange(1.0, 5.0), **kwargs)
    with pytest.raises(LTAUInputError, match="quantile must lie in"):
        suspicious_configs(np.ones(4), np.ones(4), 2.0)
    with pytest.raises(LTAUInputError, match="equal length"):
        suspicious_configs(np.ones(4), np.ones(3), 0.1)
    with pytest.raises(LTAUInputError, match="positive"):
        suspicious_configs(np.zeros(4), np.ones(4), 0.1)
    with pytest.raises(LTAUInputError, match="source must be an ErrorLog"):
        burn_in_candidates(np.ones((3, 3)))
    with pytest.raises(LTAUInputError, match="candidates is empty"):
        choose_configuration(np.ones((5, 2)), {}, np.ones((5, 2)), np.ones(5), None)


def test_predict_output_of_a_valid_run_is_complete(tmp_path, small_data):
    """The matrix's 'works' check of predict, on its own: every row written, all finite."""
    save_distributions(small_data["distributions"], tmp_path / "d.h5")
    np.save(tmp_path / "t.npy", small_data["train"])
    np.save(tmp_path / "q.npy", small_data["queries"].astype(np.float64))
    assert main(["fit", "--descriptors", str(tmp_path / "t.npy"), "--distributions",
                 str(tmp_path / "d.h5"), "-o", str(tmp_path / "e.h5")]) == 0  # fmt: skip
    assert main(["predict", str(tmp_path / "e.h5"), "--descriptors", str(tmp_path / "q.npy"),
                 "-o", str(tmp_path / "p.csv"), "--atol", "0"]) == 0  # fmt: skip
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(small_data["queries"])
    flags = [row.pop("below_resolution") for row in rows]
    assert set(flags) <= {"True", "False"}
    assert np.all(np.isfinite([[float(v) for v in row.values()] for row in rows]))


def test_core_entry_points_refuse_what_the_matrix_found(tmp_path):
    """The 15 failures the matrix found outside the command line, one check each kind."""
    from ltau import ErrorLog, ErrorRecorder, LTAUFileError
    from ltau.calibration import DistanceWidening

    with pytest.raises(LTAUFileError, match="is a directory"):
        ErrorRecorder(3, log_path=tmp_path)
    recorder = ErrorRecorder(3, log_path=tmp_path / "log.h5")
    recorder.record_epoch([0.1, 0.2, 0.3])
    recorder.close()
    for late in (lambda: recorder.record_epoch([0.1] * 3), lambda: recorder.record([0], [0.1])):
        with pytest.raises(LTAUInputError, match="recorder is closed"):
            late()
    with ErrorLog(tmp_path / "log.h5") as log:
        assert log.n_epochs == 1
        with pytest.raises(LTAUInputError, match="sequence of model numbers"):
            log.to_array(members="01")
    with pytest.raises(LTAUInputError, match="needs ErrorDistributions"):
        save_distributions(np.ones((3, 4)), tmp_path / "d.h5")
    for errors in (np.ones((2, 3)) * (1 + 1j), np.array([["0.1", "0.2"]]), np.ones((2, 3)) + 0j):
        with pytest.raises(LTAUInputError, match="real numbers"):
            ErrorDistributions.from_errors(errors, Bins.log(1e-3, 1.0, 4))
    with pytest.raises(LTAUInputError, match="Bins"):
        ErrorRecorder(3, bins=[0.1, 1.0])
    ones = np.ones(10)
    with pytest.raises(LTAUInputError, match="OOD scores are all 0"):
        DistanceWidening.fit(np.zeros(10), None, ones, ones)
    assert not (tmp_path / "d.h5").exists()
