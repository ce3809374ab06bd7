"""Training dynamics (map from a recorded log, per group), its CLI, the tuning strategy, and
per-configuration loss weights in MACE training."""

from __future__ import annotations

import csv
import warnings

import h5py
import numpy as np
import pytest

from ltau import ErrorRecorder
from ltau.cli import main
from ltau.dynamics import DynamicsTable, groups_from_sizes, training_dynamics
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.recording import ErrorLog
from ltau.tuning import TuningStrategy, hardness_weights, suspicious_configs

ATOL = 0.5
SIZES = np.array([3, 5, 1, 4, 7])  # 20 samples in 5 groups


@pytest.fixture
def log_path(tmp_path):
    """Two models (members 0 and 1, 9 and 6 epochs, interleaved), with unrecorded entries."""
    rng = np.random.default_rng(7)
    n = int(SIZES.sum())
    path = tmp_path / "errors.h5"
    scale = rng.uniform(0.1, 1.5, n)
    with ErrorRecorder(n, log_path=path) as recorder:
        for epoch in range(15):
            member = 0 if epoch % 5 < 3 else 1
            errors = scale * rng.uniform(0.2, 1.8, n)
            recorded = rng.random(n) > 0.2
            recorded[3] = epoch == 4  # sample 3: recorded once, by member 1
            recorder.record(np.flatnonzero(recorded), errors[recorded])
            recorder.end_epoch(member, allow_missing=True)
    return path


def reference(errors: np.ndarray, members: np.ndarray, skip: int) -> dict[str, np.ndarray]:
    """Direct computation on the whole (epochs, samples) array."""
    keep = np.concatenate([np.flatnonzero(members == m)[skip:] for m in np.unique(members)])
    keep.sort()
    kept, kept_members = errors[keep], members[keep]
    recorded = ~np.isnan(kept)
    forgetting = np.zeros(errors.shape[1], np.int64)
    last = np.zeros(errors.shape[1])
    n_last = np.zeros(errors.shape[1])
    for member in np.unique(kept_members):
        own = kept[kept_members == member]
        for sample in range(errors.shape[1]):
            trajectory = own[:, sample][~np.isnan(own[:, sample])]
            above = trajectory > ATOL
            forgetting[sample] += np.count_nonzero(~above[:-1] & above[1:])
            if trajectory.size:
                last[sample] += trajectory[-1]
                n_last[sample] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN is expected
        return {
            "mean_error": np.nanmean(kept, axis=0),
            "error_std": np.nanstd(kept, axis=0),
            "exceed_fraction": np.sum(kept > ATOL, axis=0) / recorded.sum(axis=0),
            "forgetting_events": forgetting,
            "last_error": last / n_last,
            "n_epochs": recorded.sum(axis=0),
        }


@pytest.mark.parametrize("skip", [0, 2])
def test_map_matches_direct_computation(log_path, skip):
    with ErrorLog(log_path) as log:
        errors, members = log.to_array().astype(np.float64), log.members
        result = training_dynamics(log, ATOL, skip_epochs=skip)
    expected = reference(errors, members, skip)
    assert result.members == (0, 1) and result.groups is None
    for name, values in result.samples.columns().items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-10, equal_nan=True, err_msg=name)
    assert result.samples.forgetting_events.sum() > 0  # the check above is not vacuous
    # Sample 3 was recorded once, in member 1's second epoch: skipped with skip = 2.
    assert result.samples.n_epochs[3] == (1 if skip == 0 else 0)
    assert np.isnan(result.samples.mean_error[3]) == (skip > 0)


def test_members_select_rows(log_path):
    with ErrorLog(log_path) as log:
        errors, members = log.to_array().astype(np.float64), log.members
    result = training_dynamics(log_path, ATOL, members=[1])
    only = errors[members == 1]
    np.testing.assert_allclose(result.samples.mean_error, np.nanmean(only, axis=0), rtol=1e-10)
    assert result.members == (1,)


def test_group_aggregation_is_per_epoch_rms(log_path):
    groups = groups_from_sizes(SIZES)
    with ErrorLog(log_path) as log:
        errors, members = log.to_array().astype(np.float64), log.members
    result = training_dynamics(log_path, ATOL, groups=groups)
    warnings.simplefilter("ignore", RuntimeWarning)  # epochs where a group is unrecorded
    squared = np.stack([np.nanmean(errors[:, groups == g] ** 2, axis=1) for g in range(5)], 1)
    expected = reference(np.sqrt(squared), members, 0)
    for name, values in result.groups.columns().items():
        np.testing.assert_allclose(values, expected[name], rtol=1e-10, err_msg=name)
    assert len(result.groups) == 5 and result.group_reduce == "rms"
    mean_groups = training_dynamics(log_path, ATOL, groups=groups, group_reduce="mean").groups
    direct = np.stack([np.nanmean(errors[:, groups == g], axis=1) for g in range(5)], 1)
    np.testing.assert_allclose(mean_groups.mean_error, np.nanmean(direct, axis=0), rtol=1e-10)


def test_zero_tolerance_counts_every_positive_error(log_path):
    """atol follows the library's one rule (finite, >= 0): 0 counts every positive error."""
    samples = training_dynamics(log_path, 0.0).samples
    recorded = samples.n_epochs > 0
    np.testing.assert_array_equal(samples.exceed_fraction[recorded], 1.0)
    np.testing.assert_array_equal(samples.forgetting_events, 0)


def test_bad_inputs(log_path, tmp_path):
    for atol in (-1.0, np.nan, "x", [0.5]):
        with pytest.raises(LTAUInputError, match="atol"):
            training_dynamics(log_path, atol)
    with pytest.raises(LTAUInputError, match="skip_epochs"):
        training_dynamics(log_path, ATOL, skip_epochs=-1)
    with pytest.raises(LTAUInputError, match="no epoch left"):
        training_dynamics(log_path, ATOL, skip_epochs=9)
    with pytest.raises(LTAUInputError, match="members"):
        training_dynamics(log_path, ATOL, members=[4])
    with pytest.raises(LTAUInputError, match="one label per sample"):
        training_dynamics(log_path, ATOL, groups=np.zeros(19, int))
    with pytest.raises(LTAUInputError, match="non-negative"):
        training_dynamics(log_path, ATOL, groups=np.full(20, -1))
    with pytest.raises(LTAUInputError, match="integer labels"):
        training_dynamics(log_path, ATOL, groups=np.zeros(20))
    with pytest.raises(LTAUInputError, match="positive"):
        groups_from_sizes([3, 0, 2])
    with pytest.raises(LTAUFileError, match="does not exist"):
        training_dynamics(tmp_path / "missing.h5", ATOL)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_map_groups_and_figure(log_path, tmp_path, capsys):
    np.save(tmp_path / "sizes.npy", SIZES)
    code, out, err = run(
        capsys,
        *("dynamics", log_path, "-o", tmp_path / "map.csv", "--atol", ATOL),
        *("--skip-epochs", 1, "--groups", tmp_path / "sizes.npy"),
        *("--figure", tmp_path / "map.png"),
    )
    assert code == 0, err
    assert "20 samples" in out and "5 groups" in out
    expected = training_dynamics(log_path, ATOL, skip_epochs=1, groups=groups_from_sizes(SIZES))
    with open(tmp_path / "map.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and list(rows[0])[:2] == ["group", "mean_error"]
    np.testing.assert_allclose(
        [float(r["mean_error"]) for r in rows], expected.samples.mean_error, equal_nan=True
    )
    with open(tmp_path / "map.groups.csv") as handle:
        group_rows = list(csv.DictReader(handle))
    assert [int(r["forgetting_events"]) for r in group_rows] == (
        expected.groups.forgetting_events.tolist()
    )
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{d}/missing.h5", "--atol", "0.5"], "does not exist"),
        (["{d}/foreign.h5", "--atol", "0.5"], "expected an ltau-error-log"),
        (["{log}", "--atol", "-0.1"], "atol"),
        (["{log}", "--atol", "nan"], "atol"),
        (["{log}", "--atol", "0.5", "--groups", "{d}/short.npy"], "sum to 19"),
        (["{log}", "--atol", "0.5", "--figure", "{d}/map.pdf"], ".png"),
        (["{log}", "--atol", "0.5", "--group-output", "{d}/g.csv"], "needs --groups"),
    ],
)
def test_cli_bad_input(log_path, tmp_path, capsys, args, message):
    with h5py.File(tmp_path / "foreign.h5", "w") as handle:
        handle["x"] = np.arange(3)
    np.save(tmp_path / "short.npy", np.array([3, 5, 1, 4, 6]))
    argv = [a.format(d=tmp_path, log=log_path) for a in args]
    code, _, err = run(capsys, "dynamics", *argv, "-o", tmp_path / "map.csv")
    assert code == 2 and message in err
    assert not (tmp_path / "map.csv").exists()


def test_hardness_weights_have_mean_one_and_bounds():
    rng = np.random.default_rng(0)
    mean_error = np.exp(rng.normal(size=500))
    weights = hardness_weights(mean_error, power=1.5, low=0.25, high=2.5)
    assert weights.mean() == pytest.approx(1.0, abs=1e-12)
    assert weights.min() >= 0.25 - 1e-12 and weights.max() <= 2.5 + 1e-12
    assert np.isclose(weights.max(), 2.5) and np.isclose(weights.min(), 0.25)  # bounds bind
    order = np.argsort(mean_error)
    assert np.all(np.diff(weights[order]) >= -1e-12)  # harder -> heavier
    np.testing.assert_allclose(hardness_weights(np.full(4, 0.3)), 1.0)
    with pytest.raises(LTAUInputError):
        hardness_weights(np.array([0.1, np.nan]))
    with pytest.raises(LTAUInputError):
        hardness_weights(np.array([0.1, 0.0]))


def test_strategy_drops_persistent_high_error_configs(log_path):
    mean = np.array([0.1, 0.2, 0.3, 0.2, 5.0, 4.0, 0.25, 0.15])
    std = np.array([0.05, 0.1, 0.1, 0.1, 0.1, 3.0, 0.1, 0.08])
    # Config 4: high error, steady (suspicious); config 5: high error but fluctuating (kept).
    assert np.flatnonzero(suspicious_configs(mean, std, 0.25)).tolist() == [4]
    ones = np.ones(8, np.int64)
    table = DynamicsTable(mean, std, ones * 0.5, ones, mean, ones * 10)
    plan = TuningStrategy(drop_quantile=0.25, low=0.5, high=2.0).plan(table)
    assert plan.dropped.tolist() == [4] and plan.kept.tolist() == [0, 1, 2, 3, 5, 6, 7]
    assert plan.weights[4] == 0.0
    assert plan.kept_weights.mean() == pytest.approx(1.0)
    assert np.all((plan.kept_weights >= 0.5 - 1e-12) & (plan.kept_weights <= 2.0 + 1e-12))
    assert plan.weights.argmax() == 5  # the hardest kept configuration weighs most
    plain = TuningStrategy(reweight=False).plan(table)
    np.testing.assert_array_equal(plain.weights, 1.0)
    assert plain.dropped.size == 0
    with pytest.raises(LTAUInputError, match="low"):
        TuningStrategy(low=1.5)
    with pytest.raises(LTAUInputError, match="drop_quantile"):
        TuningStrategy(drop_quantile=1.0)
    unrecorded = training_dynamics(log_path, ATOL, skip_epochs=2).samples
    with pytest.raises(LTAUInputError, match="never recorded"):
        TuningStrategy().plan(unrecorded)


def test_mace_config_weights_are_used_and_validated():
    pytest.importorskip("mace")
    import torch
    from test_mace import emt_structures

    from ltau.atomistic.structures import read_structures
    from ltau.integrations.mace import MACESettings, train_mace

    settings = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=3, seed=1)
    structures = read_structures(
        emt_structures(3, 0), energy_key="REF_energy", forces_key="REF_forces"
    )

    def parameters(weights):
        model = train_mace(
            structures, epochs=1, settings=settings, config_weights=weights, progress=False
        ).model
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = parameters(None)
    # Unit weights change nothing (up to float32 summation order); others change the steps.
    assert (parameters(np.ones(3)) - plain).abs().max() < 1e-5
    assert (parameters(np.array([0.1, 0.1, 2.8])) - plain).abs().max() > 1e-3
    for bad, message in [
        (np.ones(2), "one weight per configuration"),
        (np.array([1.0, -0.5, 1.0]), ">= 0"),
        (np.array([1.0, np.nan, 1.0]), "finite"),
        (np.zeros(3), "all zero"),
    ]:
        with pytest.raises(LTAUInputError, match=message):
            train_mace(structures, epochs=1, settings=settings, config_weights=bad)
