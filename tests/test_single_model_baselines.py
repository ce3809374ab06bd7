"""Single-model baselines (benchmarks/_single_model_baselines.py) on planted cases."""

from __future__ import annotations

import numpy as np
import pytest
from _baselines import calibrate_and_predict, maxwell_mass
from _single_model_baselines import fit_log_linear_scale, gmm_latent, llpr

from ltau.exceptions import LTAUInputError
from ltau.histogram import Bins


def maxwell_errors(rng, scale: np.ndarray) -> np.ndarray:
    """Norms of isotropic Gaussian 3-vectors with ``E||e||^2 = scale^2``."""
    return np.linalg.norm(rng.normal(size=(scale.size, 3)) * (scale[:, None] / np.sqrt(3)), axis=1)


def blobs(rng, n: int, centres: np.ndarray) -> np.ndarray:
    return centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.3, size=(n, 4))


def test_gmm_gives_a_far_outlier_the_highest_score():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(3, 4))
    train, validation = blobs(rng, 600, centres), blobs(rng, 200, centres)
    model = gmm_latent(train, validation, rng.lognormal(size=200) * 0.1, components=(1, 2, 4))
    queries = np.vstack([blobs(rng, 50, centres), centres[0] + 40.0])
    nll = model.score(queries)
    assert np.argmax(nll) == 50 and nll[50] > nll[:50].max() + 100
    assert np.argmax(model.uncertainty(queries)) == 50


def test_gmm_picks_more_components_for_multimodal_data():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6.0, size=(4, 4))
    errors = rng.lognormal(size=300) * 0.1
    modal = gmm_latent(blobs(rng, 800, centres), blobs(rng, 300, centres), errors)
    single = gmm_latent(rng.normal(size=(800, 4)), rng.normal(size=(300, 4)), errors)
    assert modal.n_components[0] >= 4
    assert single.n_components[0] <= 2
    assert set(modal.validation_nll[0]) == {1, 2, 4, 8, 16}


def test_gmm_fits_one_mixture_per_element():
    rng = np.random.default_rng(2)
    copper, hydrogen = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) + 8.0
    train = np.vstack([copper, hydrogen])
    elements = np.array(["Cu"] * 300 + ["H"] * 300)
    model = gmm_latent(
        train,
        train[::3],
        np.full(200, 0.1),
        train_elements=elements,
        validation_elements=elements[::3],
        components=(1, 2),
    )
    assert set(model.mixtures) == {"Cu", "H"}
    # a hydrogen atom sitting in copper's cloud is atypical for hydrogen
    assert model.score(copper[:1], ["H"])[0] > model.score(copper[:1], ["Cu"])[0] + 10
    with pytest.raises(LTAUInputError, match="element"):
        model.score(copper[:1], ["O"])


def test_gmm_chooses_by_bic_for_an_element_without_validation_atoms():
    rng = np.random.default_rng(4)
    centres = rng.normal(scale=6.0, size=(3, 4))
    copper, hydrogen = rng.normal(size=(300, 4)), blobs(rng, 600, centres) + 20.0
    train = np.vstack([copper, hydrogen])
    elements = np.array(["Cu"] * 300 + ["H"] * 600)
    model = gmm_latent(
        train,
        copper[:50],
        np.full(50, 0.1),
        train_elements=elements,
        validation_elements=["Cu"] * 50,
        components=(1, 2, 3, 4),
        without_validation="bic",
    )
    # three planted clusters: BIC on the training atoms finds them
    assert model.n_components["H"] == 3
    assert model.validation_nll["H"][3] == min(model.validation_nll["H"].values())


def test_log_linear_scale_recovers_a_planted_law():
    rng = np.random.default_rng(3)
    score = rng.normal(size=4000)
    errors = maxwell_errors(rng, 0.2 * np.exp(0.5 * score))
    fitted = fit_log_linear_scale(score, errors)
    assert fitted.b * 1.0 / fitted.spread == pytest.approx(0.5, abs=0.05)
    assert np.exp(fitted.c - fitted.b * fitted.centre / fitted.spread) == pytest.approx(0.2, 0.05)


def trained_subspace(rng, n: int) -> np.ndarray:
    """Features ``(n, 5)`` spanning only the first three directions."""
    features = np.zeros((n, 5))
    features[:, :3] = rng.normal(size=(n, 3))
    return features


def test_llpr_variance_grows_along_a_direction_absent_from_training():
    rng = np.random.default_rng(4)
    train, validation = trained_subspace(rng, 500), trained_subspace(rng, 200)
    # one small lambda: the geometry alone (uninformative validation errors would choose a
    # large lambda, i.e. a flat variance, which the next test covers)
    model = llpr(train, validation, rng.lognormal(size=200) * 0.1, lambdas=(1e-6,))
    steps = np.linspace(0.5, 3.0, 6)
    trained = model.uncertainty(steps[:, None] * np.eye(5)[0])
    absent = model.uncertainty(steps[:, None] * np.eye(5)[3])
    assert np.all(np.diff(absent) > 0)
    assert np.all(absent > 100 * trained)
    # along a trained direction it matches the exact formula
    exact = np.linalg.solve(train.T @ train + model.lam * np.eye(5), np.eye(5)[0])[0]
    assert model.rigidity_variance(np.eye(5)[:1])[0] == pytest.approx(exact, rel=1e-6)


def test_llpr_alpha_and_lambda_come_from_validation():
    rng = np.random.default_rng(5)
    train = rng.normal(size=(2000, 3)) * np.array([1.0, 1.0, 0.01])
    validation = rng.normal(size=(1000, 3)) * np.array([1.0, 1.0, 0.3])
    reference = llpr(train, validation, np.ones(1000))
    unit = reference.eigenvalues.mean()
    # errors drawn from the rigidity of lambda = 1e-3 * mean eigenvalue and alpha = 0.01
    planted = np.sqrt(0.01 * reference.rigidity_variance(validation, 1e-3 * unit))
    model = llpr(train, validation, maxwell_errors(rng, planted))
    assert model.lam / unit == pytest.approx(1e-3)
    assert model.alpha == pytest.approx(0.01, rel=0.1)
    assert min(model.validation_nll, key=model.validation_nll.get) == pytest.approx(1e-3)


def test_scales_feed_the_shared_calibration():
    rng = np.random.default_rng(6)
    train, validation, test = (trained_subspace(rng, n) for n in (400, 300, 300))
    scale = 0.1 * (1 + np.abs(validation[:, 0]))
    model = llpr(train, validation, maxwell_errors(rng, scale))
    bins = Bins.log(1e-4, 10.0, 60)
    test_errors = maxwell_errors(rng, 0.1 * (1 + np.abs(test[:, 0])))
    result = calibrate_and_predict(
        maxwell_mass(model.uncertainty(validation), bins),
        maxwell_errors(rng, scale),
        maxwell_mass(model.uncertainty(test), bins),
        test_errors,
        bins,
        atol=0.2,
    )
    assert result.expected_error.shape == (300,) and np.all(result.expected_error > 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"train": np.full((10, 3), np.nan)}, "NaN"),
        ({"train": np.zeros((0, 3))}, "non-empty"),
        ({"train": np.zeros(10)}, "2-D"),
        ({"validation": np.zeros((5, 4))}, "expected 3"),
        ({"errors": np.zeros(5)}, "not all zero"),
        ({"errors": np.ones(4)}, "shape"),
        ({"errors": -np.ones(5)}, "non-negative"),
    ],
)
def test_bad_input_is_named(bad, message):
    rng = np.random.default_rng(7)
    args = {"train": rng.normal(size=(40, 3)), "validation": rng.normal(size=(5, 3))}
    args["errors"] = np.ones(5)
    args.update(bad)
    with pytest.raises(LTAUInputError, match=message):
        llpr(args["train"], args["validation"], args["errors"])
    with pytest.raises(LTAUInputError, match=message):
        gmm_latent(args["train"], args["validation"], args["errors"], components=(1,))


def test_bad_settings_and_queries_are_named():
    rng = np.random.default_rng(8)
    train, validation = rng.normal(size=(40, 3)), rng.normal(size=(5, 3))
    with pytest.raises(LTAUInputError, match="components"):
        gmm_latent(train, validation, np.ones(5), components=(0,))
    with pytest.raises(LTAUInputError, match="lambdas"):
        llpr(train, validation, np.ones(5), lambdas=(-1.0,))
    with pytest.raises(LTAUInputError, match="validation atoms of element"):
        gmm_latent(
            train,
            validation,
            np.ones(5),
            train_elements=["Cu"] * 20 + ["H"] * 20,
            validation_elements=["Cu"] * 5,
        )
    with pytest.raises(LTAUInputError, match="without_validation"):
        gmm_latent(train, validation, np.ones(5), without_validation="skip")
    model = llpr(train, validation, np.ones(5))
    with pytest.raises(LTAUInputError, match="NaN"):
        model.uncertainty(np.full((2, 3), np.nan))
    with pytest.raises(LTAUInputError, match="expected 3"):
        model.uncertainty(np.ones((2, 4)))


@pytest.fixture(scope="module")
def tiny_mace():
    """A one-epoch MACE on six Cu+H frames, and those frames as labelled structures."""
    pytest.importorskip("mace")
    from ltau.atomistic.structures import read_structures
    from ltau.demo.emt_data import make_md_dataset
    from ltau.integrations.mace import MACESettings, train_mace

    frames = make_md_dataset(["Cu"], ["H"], 300.0, 6, seed=3, progress=False, slab_size=(2, 2, 2))
    train = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    settings = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4, seed=2)
    return train_mace(train, epochs=1, settings=settings, progress=False), train


def test_mace_last_layer_features_carry_the_readout_energies_linearly(tiny_mace):
    from _single_model_baselines import mace_last_layer_features

    from ltau.integrations.mace import evaluate_mace

    trained, train = tiny_mace
    features = mace_last_layer_features(trained, train)
    readout_energies = []
    hooks = [
        readout.register_forward_hook(
            lambda _m, _i, out: readout_energies.append(out.detach().double().numpy()[:, 0])
        )
        for readout in trained.model.readouts
    ]
    try:
        evaluate_mace(trained, train, batch_size=len(train.atoms))
    finally:
        for hook in hooks:
            hook.remove()
    atomic = np.sum(readout_energies, axis=0)
    assert features.shape == (train.n_atoms, 16) and features.dtype == np.float64
    coefficients = np.linalg.lstsq(features, atomic, rcond=None)[0]
    assert np.abs(features @ coefficients - atomic).max() < 1e-5 * np.abs(atomic).max()


def test_ensemble_benchmark_fits_both_baselines_on_its_splits(tiny_mace):
    """The benchmark's wiring: each set's scale is the baseline fitted on the training atoms'
    descriptors / features and chosen on the validation split, applied to that set."""
    from _single_model_baselines import mace_last_layer_features
    from ensemble import single_model_baselines

    from ltau.atomistic.structures import read_structures
    from ltau.demo.emt_data import make_md_dataset
    from ltau.integrations.mace import evaluate_mace

    trained, train = tiny_mace
    hot = make_md_dataset(["Cu"], ["H"], 900.0, 2, seed=5, progress=False, slab_size=(2, 2, 2))
    sets = {
        "validation": train.subset([4, 5]),
        "in_domain": train.subset([3]),
        "hot": read_structures(hot, energy_key="REF_energy", forces_key="REF_forces"),
    }
    fit = train.subset([0, 1, 2, 3])
    fit_descriptors = evaluate_mace(trained, fit).descriptors
    evaluations = {name: evaluate_mace(trained, s) for name, s in sets.items()}
    scales, record = single_model_baselines(
        trained, fit, fit_descriptors, sets, evaluations, seed=1
    )
    validation = evaluations["validation"]
    gmm = gmm_latent(
        fit_descriptors,
        validation.descriptors,
        validation.force_errors,
        train_elements=fit.chemical_symbols,
        validation_elements=sets["validation"].chemical_symbols,
        seed=1,
    )
    rigidity = llpr(
        mace_last_layer_features(trained, fit),
        mace_last_layer_features(trained, sets["validation"]),
        validation.force_errors,
    )
    for name, structures in sets.items():
        expected = gmm.uncertainty(evaluations[name].descriptors, structures.chemical_symbols)
        np.testing.assert_allclose(scales["gmm_latent"][name], expected, rtol=1e-9)
        expected = rigidity.uncertainty(mace_last_layer_features(trained, structures))
        np.testing.assert_allclose(scales["llpr"][name], expected, rtol=1e-9)
    chosen = record["gmm_latent"]["components_per_element"]
    assert set(chosen) == {"Cu", "H"} and chosen == {str(e): n for e, n in gmm.n_components.items()}
    assert record["llpr"]["alpha"] == pytest.approx(rigidity.alpha)
    assert record["llpr"]["lambda"] == pytest.approx(rigidity.lam)
    assert record["gmm_latent"]["added_inference_ratio"] > 0
    assert record["llpr"]["fit_seconds"] > 0


@pytest.fixture(scope="module")
def tiny_shallow():
    """A three-head shallow ensemble (float64) trained for 15 epochs on six Cu+H frames."""
    pytest.importorskip("mace")
    from _shallow_ensemble import train_shallow_ensemble

    from ltau.atomistic.structures import read_structures
    from ltau.demo.emt_data import make_md_dataset
    from ltau.integrations.mace import MACESettings

    frames = make_md_dataset(["Cu"], ["H"], 300.0, 6, seed=3, progress=False, slab_size=(2, 2, 2))
    train = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    settings = MACESettings(
        r_max=4.0, num_channels=8, mlp_channels=8, batch_size=2, seed=2, dtype="float64"
    )
    return train_shallow_ensemble(train, epochs=15, n_heads=3, settings=settings), frames


def test_shallow_ensemble_heads_forces_are_their_energy_gradients(tiny_shallow):
    from _shallow_ensemble import evaluate_shallow_ensemble

    from ltau.atomistic.structures import read_structures

    trained, frames = tiny_shallow
    step, atom = 1e-5, 3
    plus, minus = frames[0].copy(), frames[0].copy()
    plus.positions[atom, 0] += step
    minus.positions[atom, 0] -= step
    keys = {"energy_key": None, "forces_key": None, "require_forces": False}
    energies, forces = evaluate_shallow_ensemble(
        trained, read_structures([frames[0], plus, minus], **keys)
    )
    assert energies.shape == (3, 3) and forces.shape == (3, 3 * len(frames[0]), 3)
    assert np.ptp(forces, axis=0).max() > 0  # the heads differ
    numeric = -(energies[:, 1] - energies[:, 2]) / (2 * step)
    assert np.allclose(forces[:, atom, 0], numeric, rtol=1e-5, atol=1e-7)


def test_shallow_ensemble_spread_grows_off_the_training_data(tiny_shallow):
    from _shallow_ensemble import evaluate_shallow_ensemble

    from ltau.atomistic.structures import read_structures

    trained, frames = tiny_shallow
    squeezed = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.set_cell(atoms.cell * 0.75, scale_atoms=True)
        squeezed.append(atoms)
    keys = {"energy_key": None, "forces_key": None, "require_forces": False}

    def spread(structures) -> float:
        _, forces = evaluate_shallow_ensemble(trained, structures)
        return float(np.mean(np.linalg.norm(forces - forces.mean(axis=0), axis=2)))

    # bonds 25% shorter than any the heads were fitted on: they disagree at least twice as much
    assert spread(read_structures(squeezed, **keys)) > 2 * spread(read_structures(frames, **keys))


def test_shallow_ensemble_bad_input_is_named(tiny_shallow):
    from _shallow_ensemble import (
        ShallowEnsembleMACE,
        evaluate_shallow_ensemble,
        train_shallow_ensemble,
    )
    from ase.build import molecule

    from ltau.atomistic.structures import read_structures

    trained, frames = tiny_shallow
    with pytest.raises(LTAUInputError, match="at least 2 heads"):
        ShallowEnsembleMACE(trained.model.backbone, 1, 8)
    water = read_structures(
        [molecule("H2O")], energy_key=None, forces_key=None, require_forces=False
    )
    with pytest.raises(LTAUInputError, match="atomic numbers \\[8\\]"):
        evaluate_shallow_ensemble(trained, water)
    unlabelled = read_structures(frames, energy_key=None, forces_key=None, require_forces=False)
    with pytest.raises(LTAUInputError, match="reference energies and forces"):
        train_shallow_ensemble(unlabelled, epochs=1, n_heads=2)
    with pytest.raises(LTAUInputError, match="epochs"):
        train_shallow_ensemble(unlabelled, epochs=0, n_heads=2)
