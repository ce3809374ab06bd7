"""The EMT oracle: labels match EMT, survive extxyz, are deterministic, and inputs are checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("ase")

import ase.io
from ase.build import fcc100, fcc111
from ase.calculators.emt import EMT, parameters
from ase.constraints import FixAtoms

from ltau.demo import emt_data as oracle
from ltau.exceptions import LTAUInputError

SMALL = {"slab_size": (2, 2, 3), "progress": False}


@pytest.fixture(scope="module")
def md_frames():
    return oracle.make_md_dataset(
        ["Cu", "Pt"], ["CO", "H"], 300.0, 8, seed=1, frames_per_trajectory=2, **SMALL
    )


@pytest.fixture(scope="module")
def relaxation_frames():
    return oracle.make_relaxation_frames(["Au"], ["OH", "O"], 6, seed=2, **SMALL)


def _assert_labels_match_emt(frame, energy_key="REF_energy", forces_key="REF_forces"):
    fresh = frame.copy()
    fresh.calc = EMT()
    assert frame.calc is None and not frame.constraints
    assert isinstance(frame.info[energy_key], float)
    assert frame.info[energy_key] == pytest.approx(fresh.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(frame.arrays[forces_key], fresh.get_forces(), atol=1e-9)


def test_md_labels_match_fresh_emt(md_frames):
    assert len(md_frames) == 8
    for frame in md_frames:
        _assert_labels_match_emt(frame)
        assert frame.info["config_type"] == "md"
        assert frame.info["temperature_K"] == 300.0
        assert frame.info["metal"] in {"Cu", "Pt"} and frame.info["adsorbate"] in {"CO", "H"}
        assert frame.info["site"] in oracle.SITES
        # the raw forces are stored, also on the atoms held fixed during the MD
        assert np.abs(frame.arrays["REF_forces"][frame.arrays["fixed"]]).max() > 0
    # 4 trajectories of 2 frames: one full cycle over the 4 (metal, adsorbate) pairs
    pairs = [(frame.info["metal"], frame.info["adsorbate"]) for frame in md_frames]
    assert set(pairs) == {("Cu", "CO"), ("Cu", "H"), ("Pt", "CO"), ("Pt", "H")}
    assert pairs[0::2] == pairs[1::2]


def test_relaxation_frames_match_emt_and_end_near_relaxed(relaxation_frames):
    assert len(relaxation_frames) == 6
    for frame in relaxation_frames:
        _assert_labels_match_emt(frame)
        assert frame.info["config_type"] == "relaxation"
        assert 1 <= frame.info["relax_step"] <= frame.info["relax_n_steps"]
    finals = [f for f in relaxation_frames if f.info["relax_step"] == f.info["relax_n_steps"]]
    assert finals
    for frame in finals:
        assert frame.info["converged"]
        free_forces = frame.arrays["REF_forces"][~frame.arrays["fixed"]]
        assert np.linalg.norm(free_forces, axis=1).max() < 0.05
    fire = oracle.make_relaxation_frames("Cu", "H", 2, seed=0, optimizer="FIRE", **SMALL)
    _assert_labels_match_emt(fire[-1])


def test_extxyz_round_trip_keeps_reference_keys(md_frames, relaxation_frames, tmp_path):
    frames = md_frames[:3] + relaxation_frames[:2]
    path = tmp_path / "data.extxyz"
    assert oracle.write_extxyz(frames, path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["data.extxyz"]  # no temporary left behind
    back = ase.io.read(path, index=":", format="extxyz")
    assert len(back) == len(frames)
    for original, read in zip(frames, back, strict=True):
        assert read.info["REF_energy"] == pytest.approx(original.info["REF_energy"], abs=1e-8)
        np.testing.assert_allclose(
            read.arrays["REF_forces"], original.arrays["REF_forces"], atol=1e-8
        )
        np.testing.assert_array_equal(read.arrays["fixed"], original.arrays["fixed"])
        np.testing.assert_allclose(read.positions, original.positions, atol=1e-8)
        assert read.info["metal"] == original.info["metal"]
        assert read.calc is None
    # overwriting replaces the file as a whole
    oracle.write_extxyz(frames[0], path)
    assert len(ase.io.read(path, index=":", format="extxyz")) == 1


def test_custom_keys_round_trip(tmp_path):
    frames = oracle.make_md_dataset(
        "Ni", "N", 300.0, 2, seed=0, energy_key="dft_E", forces_key="dft_F", **SMALL
    )
    _assert_labels_match_emt(frames[0], "dft_E", "dft_F")
    assert "REF_energy" not in frames[0].info
    oracle.write_extxyz(frames, tmp_path / "custom.xyz")
    back = ase.io.read(tmp_path / "custom.xyz", index=":", format="extxyz")
    assert back[1].info["dft_E"] == pytest.approx(frames[1].info["dft_E"], abs=1e-8)
    np.testing.assert_allclose(back[1].arrays["dft_F"], frames[1].arrays["dft_F"], atol=1e-8)


def test_deterministic_for_a_seed(md_frames):
    again = oracle.make_md_dataset(
        ["Cu", "Pt"], ["CO", "H"], 300.0, 8, seed=1, frames_per_trajectory=2, **SMALL
    )
    for a, b in zip(md_frames, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info
    other = oracle.make_md_dataset(
        ["Cu", "Pt"], ["CO", "H"], 300.0, 8, seed=2, frames_per_trajectory=2, **SMALL
    )
    assert any(
        a.info["REF_energy"] != b.info["REF_energy"] for a, b in zip(md_frames, other, strict=True)
    )
    first = oracle.make_initial_structures(["Cu"], ["CO"], 3, seed=5, slab_size=(2, 2, 3))
    second = oracle.make_initial_structures(["Cu"], ["CO"], 3, seed=5, slab_size=(2, 2, 3))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)


def test_fixed_atoms_stay_at_ideal_positions(md_frames, relaxation_frames):
    for frame in md_frames + relaxation_frames:
        slab = fcc111(frame.info["metal"], size=(2, 2, 3), vacuum=oracle.DEFAULT_VACUUM)
        fixed = frame.arrays["fixed"]
        bottom = slab.get_tags() == 3
        np.testing.assert_array_equal(fixed[: len(slab)], bottom)
        assert not fixed[len(slab) :].any()  # adsorbate atoms are free
        np.testing.assert_allclose(frame.positions[fixed], slab.positions[bottom], atol=1e-12)
        moved = np.linalg.norm(frame.positions[: len(slab)] - slab.positions, axis=1)
        assert moved[~bottom].max() > 1e-3  # free slab atoms did move


def test_initial_structures_carry_constraints_and_unseen_pairs():
    structures = oracle.make_initial_structures(
        ["Au"], ["OH", "CO"], 4, seed=0, slab_size=(2, 2, 3), n_fixed_layers=2
    )
    assert [s.info["adsorbate"] for s in structures] == ["OH", "CO", "OH", "CO"]
    for atoms in structures:
        assert atoms.calc is None and "REF_energy" not in atoms.info
        (constraint,) = atoms.constraints
        assert isinstance(constraint, FixAtoms)
        assert sorted(constraint.get_indices()) == list(np.flatnonzero(atoms.get_tags() >= 2))
    train_pairs = {
        (m, a)
        for m in oracle.DEFAULT_METALS
        for a in oracle.DEFAULT_ADSORBATES
        if (m, a) not in oracle.UNSEEN_PAIRS
    }
    assert {(s.info["metal"], s.info["adsorbate"]) for s in structures}.isdisjoint(train_pairs)


def test_hotter_md_has_larger_forces():
    cold = oracle.make_md_dataset("Cu", "O", 300.0, 8, seed=3, **SMALL)
    hot = oracle.make_md_dataset("Cu", "O", 900.0, 8, seed=3, **SMALL)

    def mean_force(frames):
        return np.mean([np.linalg.norm(f.arrays["REF_forces"], axis=1).mean() for f in frames])

    assert mean_force(hot) > 1.3 * mean_force(cold)


def test_default_splits_structure():
    sizes = {
        "n_train_md": 4,
        "n_train_relaxation": 2,
        "n_test_md": 2,
        "n_test_relaxation": 1,
        "n_shifted_hot": 2,
        "n_shifted_unseen": 2,
    }
    splits = oracle.default_splits(seed=0, slab_size=(2, 2, 3), progress=False, **sizes)
    assert list(splits) == ["train", "test_in_domain", "test_shifted"]
    assert [len(v) for v in splits.values()] == [6, 3, 4]
    for name, frames in splits.items():
        assert all(f.info["split"] == name for f in frames)
    train_pairs = {(f.info["metal"], f.info["adsorbate"]) for f in splits["train"]}
    assert train_pairs.isdisjoint(oracle.UNSEEN_PAIRS)
    shifted = splits["test_shifted"]
    hot = [f for f in shifted if f.info["shift"] == "temperature"]
    unseen = [f for f in shifted if f.info["shift"] == "composition"]
    assert len(hot) == len(unseen) == 2
    assert all(f.info["temperature_K"] == 900.0 for f in hot)
    assert all((f.info["metal"], f.info["adsorbate"]) in oracle.UNSEEN_PAIRS for f in unseen)
    # the unseen pairs only combine elements present in the training pairs
    seen = set(oracle.DEFAULT_METALS) | {
        symbol for name in oracle.DEFAULT_ADSORBATES for symbol, _ in oracle.ADSORBATES[name]
    }
    assert {s for f in unseen for s in f.get_chemical_symbols()} <= seen


# Energies (eV) of these tiny default splits as generated before the named shifted sets and the
# fcc(100) facet were added: the original sets (and models trained on them) must stay valid.
GOLDEN_DEFAULT_SPLITS = {
    "train": [2.974627468, 3.042207943, 3.073588841, 3.067445875, 2.717701468, 2.437450506],
    "test_in_domain": [2.127777506, 2.152788371, 2.885245194],
    "test_shifted": [4.133358058, 3.999530095, 2.356965479, 2.463402189],
}


def test_default_splits_unchanged():
    sizes = {
        "n_train_md": 4,
        "n_train_relaxation": 2,
        "n_test_md": 2,
        "n_test_relaxation": 1,
        "n_shifted_hot": 2,
        "n_shifted_unseen": 2,
    }
    splits = oracle.default_splits(seed=0, slab_size=(2, 2, 3), progress=False, **sizes)
    for name, energies in GOLDEN_DEFAULT_SPLITS.items():
        observed = [frame.info["REF_energy"] for frame in splits[name]]
        np.testing.assert_allclose(observed, energies, rtol=0, atol=2e-9, err_msg=name)
        assert all("facet" not in frame.info for frame in splits[name])


@pytest.fixture(scope="module")
def in_domain_frames():
    return oracle.make_md_dataset(
        ["Cu", "Pt"], ["OH", "H"], 300.0, 6, seed=4, frames_per_trajectory=2, **SMALL
    )


@pytest.fixture(scope="module")
def shifted_sets(in_domain_frames):
    return oracle.shifted_test_sets(in_domain_frames, seed=0, n_per_set=2, **SMALL)


def test_shifted_test_sets_are_named_labelled_and_sized(shifted_sets, in_domain_frames):
    assert tuple(shifted_sets) == oracle.SHIFTED_SETS
    assert all(len(frames) == 2 for frames in shifted_sets.values())
    shifts = {
        "md_900K": "temperature",
        "md_1200K": "temperature",
        "unseen_pairs": "composition",
        "fcc100": "facet",
        "vacancies": "vacancy",
        "radicals": "radical",
    }
    for name, frames in shifted_sets.items():
        for frame in frames:
            _assert_labels_match_emt(frame)
            assert frame.info["split"] == name and frame.info["shift"] == shifts[name]
            assert frame.arrays["fixed"].shape == (len(frame),)
    assert [f.info["temperature_K"] for f in shifted_sets["md_1200K"]] == [1200.0, 1200.0]
    assert all(
        (f.info["metal"], f.info["adsorbate"]) in oracle.UNSEEN_PAIRS
        for f in shifted_sets["unseen_pairs"]
    )
    for frame in shifted_sets["fcc100"]:
        assert frame.info["facet"] == "100" and frame.info["site"] in oracle.FACETS["100"]
        slab = frame[frame.get_tags() > 0]
        ideal = fcc100(frame.info["metal"], size=(2, 2, 3), vacuum=oracle.DEFAULT_VACUUM)
        fixed = frame.arrays["fixed"][frame.get_tags() > 0]
        np.testing.assert_allclose(slab.positions[fixed], ideal.positions[fixed], atol=1e-12)
    parents = {(f.info["trajectory"], f.info["time_fs"]): f for f in in_domain_frames}
    for name, symbols in (("vacancies", {"Cu", "Pt"}), ("radicals", {"O", "H"})):
        for frame in shifted_sets[name]:
            parent = parents[(frame.info["trajectory"], frame.info["time_fs"])]
            assert len(frame) == len(parent) - 1
            assert frame.info["removed_symbol"] in symbols
            assert frame.info["REF_energy"] != parent.info["REF_energy"]
    assert all(f.info["adsorbate"] == "OH" for f in shifted_sets["radicals"])


def test_shifted_test_sets_are_deterministic(shifted_sets, in_domain_frames):
    again = oracle.shifted_test_sets(in_domain_frames, seed=0, n_per_set=2, **SMALL)
    other = oracle.shifted_test_sets(in_domain_frames, seed=1, n_per_set=2, **SMALL)
    for name in oracle.SHIFTED_SETS:
        for a, b in zip(shifted_sets[name], again[name], strict=True):
            np.testing.assert_array_equal(a.positions, b.positions)
    assert any(
        a.info["REF_energy"] != b.info["REF_energy"]
        for a, b in zip(shifted_sets["md_900K"], other["md_900K"], strict=True)
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: oracle.remove_one_atom(f, "slab", 1, 0), "remove must be 'metal' or"),
        (
            lambda f: oracle.remove_one_atom(f, "adsorbate", 5, 0),
            "only 4 of the 6 frames have a removable adsorbate",
        ),
        (lambda f: oracle.remove_one_atom(f, "metal", 0, 0), "n must be an integer >= 1"),
        (lambda f: oracle.remove_one_atom([fcc111("Cu", (2, 2, 3))], "metal", 1, 0), "labelled"),
        (lambda f: oracle.shifted_test_sets(f, n_per_set=0), "n_per_set must be"),
        (lambda f: oracle.shifted_test_sets(f, hot_temperatures_K=(900.0,)), "two temperat"),
        (lambda f: oracle.make_md_dataset("Cu", "O", 300, 1, 0, facet="110"), "unknown facet"),
        (
            lambda f: oracle.make_md_dataset("Cu", "O", 300, 1, 0, sites=["hollow"]),
            "unknown site 'hollow' on fcc\\(111\\)",
        ),
    ],
)
def test_shifted_set_bad_inputs_raise(call, message, in_domain_frames):
    with pytest.raises(LTAUInputError, match=message):
        call(in_domain_frames)


def test_isolated_atom_energies():
    assert set(oracle.EMT_ELEMENTS) == set(parameters)
    energies = oracle.isolated_atom_energies(oracle.EMT_ELEMENTS)
    assert list(energies) == list(oracle.EMT_ELEMENTS)
    assert all(math.isfinite(e) and e > 0 for e in energies.values())
    assert oracle.isolated_atom_energies("Cu") == {"Cu": energies["Cu"]}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: oracle.make_md_dataset(["Fe"], ["O"], 300, 1, 0),
            "unknown metal 'Fe'.*not an EMT",
        ),
        (lambda: oracle.make_md_dataset(["H"], ["O"], 300, 1, 0), "unknown metal 'H'"),
        (lambda: oracle.make_md_dataset("Cu", "CH4", 300, 1, 0), "unknown adsorbate 'CH4'"),
        (lambda: oracle.make_md_dataset("Cu", [], 300, 1, 0), "adsorbates is empty"),
        (lambda: oracle.make_md_dataset("Cu", "O", -5.0, 1, 0), "temperature_K must be non-neg"),
        (lambda: oracle.make_md_dataset("Cu", "O", float("nan"), 1, 0), "temperature_K must be"),
        (lambda: oracle.make_md_dataset("Cu", "O", 300, 0, 0), "n_frames must be an integer >= 1"),
        (lambda: oracle.make_md_dataset("Cu", "O", 300, 2.5, 0), "n_frames must be an integer"),
        (lambda: oracle.make_md_dataset("Cu", "O", 300, 1, -1), "seed must be non-negative"),
        (lambda: oracle.make_md_dataset("Cu", "O", 300, 1, 0, sites=["x"]), "unknown site 'x'"),
        (
            lambda: oracle.make_md_dataset("Cu", "O", 300, 1, 0, energy_key="energy"),
            "energy_key='energy' is reserved",
        ),
        (
            lambda: oracle.make_md_dataset("Cu", "O", 300, 1, 0, exclude_pairs=[("Cu", "O")]),
            "removes every",
        ),
        (
            lambda: oracle.make_md_dataset(
                "Cu", "O", 300, 1, 0, slab_size=(2, 2, 2), n_fixed_layers=2
            ),
            "n_fixed_layers=2 must be smaller",
        ),
        (lambda: oracle.make_relaxation_frames("Cu", "O", 0, 0), "n_frames must be"),
        (lambda: oracle.make_relaxation_frames("Cu", "O", 1, 0, optimizer="LBFGS"), "optimizer"),
        (lambda: oracle.make_initial_structures("Zn", "O", 1, 0), "unknown metal 'Zn'"),
        (lambda: oracle.isolated_atom_energies(["Cu", "Fe"]), "'Fe' is not supported by EMT"),
        (lambda: oracle.write_extxyz([], "x.xyz"), "atoms_list is empty"),
    ],
)
def test_bad_inputs_raise(call, message):
    with pytest.raises(LTAUInputError, match=message) as info:
        call()
    assert isinstance(info.value, ValueError)
