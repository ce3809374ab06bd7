"""Distributions and descriptors on a real local Ray cluster (2 CPUs, localhost only) equal
the single-process results."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("mace")
ray = pytest.importorskip("ray")

from ase.build import add_adsorbate, fcc111  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402

from ltau import Bins, ErrorRecorder, LTAUFileError, LTAUInputError  # noqa: E402
from ltau.atomistic.structures import read_structures  # noqa: E402
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace  # noqa: E402
from ltau.integrations.ray_build import descriptors_on_ray, distributions_on_ray  # noqa: E402
from ltau.sharded_log import new_log_id, open_error_log, shard_recorder  # noqa: E402

SETTINGS = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4, seed=1)


def test_ray_must_be_initialised(tmp_path):
    """Runs before the module's cluster starts."""
    if ray.is_initialized():
        pytest.skip("another test module left Ray running")
    with pytest.raises(LTAUInputError, match="Ray is not initialised"):
        distributions_on_ray(tmp_path / "x.h5")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ray.cluster_resources()["CPU"] == 2
    yield
    ray.shutdown()


def emt_structures(n: int, seed: int):
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(n):
        slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
        add_adsorbate(slab, "H", 1.5, "fcc")
        slab.positions += rng.normal(scale=0.08, size=slab.positions.shape)
        slab.calc = EMT()
        slab.info["REF_energy"] = slab.get_potential_energy()
        slab.arrays["REF_forces"] = slab.get_forces()
        slab.calc = None
        structures.append(slab)
    return read_structures(structures, energy_key="REF_energy", forces_key="REF_forces")


def sharded_log(tmp_path, errors: np.ndarray, world_size: int = 2):
    manifest = tmp_path / "errors.h5"
    log_id = new_log_id()
    rng = np.random.default_rng(0)
    ranks = [
        shard_recorder(
            manifest, rank=r, world_size=world_size, n_samples=errors.shape[1], log_id=log_id
        )
        for r in range(world_size)
    ]
    for row in errors:
        order = rng.permutation(errors.shape[1])
        for rank, recorder in enumerate(ranks):
            recorder.record(order[rank::world_size], row[order[rank::world_size]])
            recorder.end_epoch(member=0)
    for recorder in ranks:
        recorder.close()
    return manifest


@pytest.mark.parametrize("kind", ["one writer", "sharded"])
def test_distributions_on_ray_equal_the_single_process_ones(cluster, tmp_path, kind):
    rng = np.random.default_rng(5)
    errors = rng.lognormal(-2.0, 1.2, (9, 40)).astype(np.float32)
    if kind == "one writer":
        path = tmp_path / "errors.h5"
        with ErrorRecorder(40, log_path=path) as recorder:
            for row in errors:
                recorder.record_epoch(row)
    else:
        path = sharded_log(tmp_path, errors)
    with open_error_log(path) as log:
        for kwargs in ({}, {"skip_epochs": 2, "samples": [3, 0, 17]}):
            expected = log.distributions(**kwargs)
            got = distributions_on_ray(path, n_workers=3, **kwargs)
            assert got.bins == expected.bins
            np.testing.assert_array_equal(got.counts, expected.counts)
        clipping = Bins.log(0.05, 0.5, 20)
        with warnings.catch_warnings(record=True) as single:
            warnings.simplefilter("always")
            expected = log.distributions(clipping)
    with warnings.catch_warnings(record=True) as on_ray:
        warnings.simplefilter("always")
        got = distributions_on_ray(path, clipping, n_workers=2)
    np.testing.assert_array_equal(got.counts, expected.counts)
    assert (got.n_below, got.n_above) == (expected.n_below, expected.n_above) != (0, 0)
    assert len(on_ray) == 1 and [str(w.message) for w in on_ray] == [str(w.message) for w in single]


def test_descriptors_on_ray_equal_the_single_process_ones(cluster, tmp_path):
    structures = emt_structures(6, 0)
    trained = train_mace(structures, epochs=1, settings=SETTINGS, progress=False)
    model = tmp_path / "tiny.model"
    trained.save(model)
    expected = evaluate_mace(trained, structures).descriptors
    got = descriptors_on_ray(model, structures, n_workers=2)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_workers_file_error_reaches_the_caller_as_such(cluster, tmp_path):
    """Two ranks recorded sample 2 in the same epoch: found by the worker that reads it."""
    manifest = tmp_path / "errors.h5"
    log_id = new_log_id()
    for rank, ids in ((0, [0, 1, 2]), (1, [2, 3])):
        with shard_recorder(manifest, rank=rank, world_size=2, n_samples=4, log_id=log_id) as rec:
            rec.record(ids, [0.2] * len(ids))
            rec.end_epoch()
    with pytest.raises(LTAUFileError, match="sample 2 was recorded by rank 0 and rank 1"):
        distributions_on_ray(manifest, n_workers=2)


def test_bad_input(cluster, tmp_path):
    structures = emt_structures(1, 1)
    with pytest.raises(LTAUFileError, match="does not exist"):
        descriptors_on_ray(tmp_path / "missing.model", structures)
    with pytest.raises(LTAUFileError, match="does not exist"):
        distributions_on_ray(tmp_path / "absent.h5")
    with pytest.raises(LTAUInputError, match="LabelledStructures"):
        descriptors_on_ray(tmp_path / "missing.model", [1, 2])
    with pytest.raises(LTAUInputError, match="n_workers"):
        distributions_on_ray(tmp_path / "x.h5", n_workers=0)
    with pytest.raises(LTAUInputError, match="cpus_per_worker"):
        descriptors_on_ray(tmp_path / "missing.model", structures, cpus_per_worker=0)
