"""Deployed TorchScript force fields (nequip 0.5/0.6 dict interface), with a toy model scripted
here: a smooth pair potential whose forces are minus the gradient of its energy."""

from __future__ import annotations

import itertools
from typing import Dict  # noqa: UP035  (TorchScript needs typing.Dict on older torch)

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ltau import Bins, ErrorRecorder, LTAUEstimator
from ltau.atomistic.structures import LabelledStructures
from ltau.exceptions import LTAUFileError, LTAUInputError
from ltau.integrations.deployed import (
    DeployedModel,
    LTAUCalculator,
    evaluate_deployed,
    load_deployed_model,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated")

R_MAX = 3.0
TYPE_NAMES = ("Cu", "H", "O")
N_TYPE_FEATURES, N_RADIAL = 4, 3  # node_features: 4 + 3 scalars, then one vector (1x1o)
IRREPS = f"{N_TYPE_FEATURES + N_RADIAL}x0e+1x1o"


class ToyPairPotential(torch.nn.Module):
    """E = sum over pairs of s_a s_b (1 - r/rc)^3 + per-type energies; forces = -dE/dpos."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.strength = torch.nn.Parameter(torch.rand(len(TYPE_NAMES), generator=generator) + 0.5)
        self.type_energy = torch.nn.Parameter(torch.randn(len(TYPE_NAMES), generator=generator))
        self.type_features = torch.nn.Parameter(
            torch.randn(len(TYPE_NAMES), N_TYPE_FEATURES, generator=generator)
        )
        self.centres = torch.nn.Parameter(torch.linspace(0.5, R_MAX, N_RADIAL))
        self.r_max = R_MAX

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:  # noqa: UP006
        pos = data["pos"].clone().requires_grad_(True)
        types = data["atom_types"].view(-1)
        centre, neighbour = data["edge_index"][0], data["edge_index"][1]
        if "batch" in data:
            batch = data["batch"]
            n_graphs = data["ptr"].numel() - 1
            cells = data["cell"][batch[centre]]
            shift = torch.einsum("ei,eij->ej", data["edge_cell_shift"], cells)
        else:
            batch = torch.zeros(pos.shape[0], dtype=torch.int64)
            n_graphs = 1
            shift = data["edge_cell_shift"] @ data["cell"]
        vectors = pos[neighbour] - pos[centre] + shift
        lengths = torch.linalg.norm(vectors, dim=1)
        envelope = (1.0 - lengths / self.r_max).clamp(min=0.0)
        pair = 0.5 * self.strength[types[centre]] * self.strength[types[neighbour]] * envelope**3
        atomic = self.type_energy[types].index_add(0, centre, pair)
        energy = torch.zeros(n_graphs, dtype=pos.dtype).index_add(0, batch, atomic)
        gradient = torch.autograd.grad([energy.sum()], [pos])[0]
        assert gradient is not None
        radial = torch.exp(-((lengths.unsqueeze(1) - self.centres) ** 2)) * envelope.unsqueeze(1)
        n_atoms = pos.shape[0]
        density = torch.zeros(n_atoms, radial.shape[1], dtype=pos.dtype).index_add(
            0, centre, radial
        )
        weights = (envelope**2).unsqueeze(1) * vectors
        vector = torch.zeros(n_atoms, 3, dtype=pos.dtype).index_add(0, centre, weights)
        features = torch.cat([self.type_features[types], density, vector], dim=1)
        return {
            "total_energy": energy.view(-1, 1),
            "forces": -gradient,
            "node_features": features.detach(),
        }


def _metadata(**changes: str | None) -> dict[str, bytes]:
    entries = {
        "r_max": str(R_MAX),
        "type_names": " ".join(TYPE_NAMES),
        "n_species": str(len(TYPE_NAMES)),
        "nequip_version": "0.6.0",
        "node_irreps": IRREPS,
    }
    entries.update(changes)
    return {k: v.encode("ascii") for k, v in entries.items() if v is not None}


def _save(path, metadata: dict[str, bytes]) -> str:
    torch.jit.save(torch.jit.script(ToyPairPotential().double()), str(path), _extra_files=metadata)
    return str(path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("deployed") / "toy.pth", _metadata())


def _structures() -> list[Atoms]:
    rng = np.random.default_rng(0)
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)  # periodic, 4 atoms, triclinic-free
    copper.rattle(0.1, rng=rng)
    slab = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # periodic, primitive (non-orthogonal) cell
    slab.rattle(0.1, rng=rng)
    water = molecule("H2O")  # not periodic
    hydroxyl = Atoms("OH", positions=[[0, 0, 0], [0, 0.2, 0.95]], cell=[6, 6, 6], pbc=True)
    return [copper, slab, water, hydroxyl]


def _brute_force_edges(atoms: Atoms, r_max: float) -> set[tuple[int, int, int, int, int]]:
    """Every (i, j, shift) with |pos_j + shift @ cell - pos_i| < r_max, except i = j unshifted."""
    reach = [int(np.ceil(r_max / 2.0)) + 2 if p else 0 for p in atoms.pbc]
    edges = set()
    for shift in itertools.product(*(range(-n, n + 1) for n in reach)):
        offset = np.asarray(shift) @ atoms.cell.array
        for i, j in itertools.product(range(len(atoms)), repeat=2):
            if i == j and not any(shift):
                continue
            if np.linalg.norm(atoms.positions[j] + offset - atoms.positions[i]) < r_max:
                edges.add((i, j, *shift))
    return edges


def test_neighbour_list_matches_brute_force(model_path):
    model = load_deployed_model(model_path)
    for atoms in _structures():
        data = model.graph([atoms])
        edges = {
            (int(i), int(j), *(int(s) for s in shift))
            for (i, j), shift in zip(
                data["edge_index"].T.tolist(), data["edge_cell_shift"].round().int(), strict=True
            )
        }
        assert edges == _brute_force_edges(atoms, R_MAX)
        assert data["atom_types"].shape == (len(atoms), 1)
        assert data["pbc"].tolist() == atoms.pbc.tolist()


def test_metadata_is_read(model_path):
    model = load_deployed_model(model_path)
    assert model.r_max == R_MAX
    assert model.type_names == list(TYPE_NAMES)
    assert model.dtype == torch.float64
    assert model.metadata["nequip_version"] == "0.6.0"
    assert model.type_indices(["O", "Cu", "H"]).tolist() == [2, 0, 1]


def test_energy_matches_independent_pair_sum_and_forces_are_its_gradient(model_path):
    model = load_deployed_model(model_path)
    module = torch.jit.load(model_path)
    strength = module.strength.detach().numpy()
    type_energy = module.type_energy.detach().numpy()
    for atoms in _structures():
        types = model.type_indices(atoms.get_chemical_symbols())
        expected = type_energy[types].sum()
        for i, j, *shift in _brute_force_edges(atoms, R_MAX):
            vector = atoms.positions[j] + np.asarray(shift) @ atoms.cell.array - atoms.positions[i]
            envelope = 1 - np.linalg.norm(vector) / R_MAX
            expected += 0.5 * strength[types[i]] * strength[types[j]] * envelope**3
        output = model.forward([atoms])
        assert output.energies[0] == pytest.approx(expected, rel=1e-10)

        step, numeric = 1e-5, np.zeros((len(atoms), 3))
        for atom, axis in itertools.product(range(len(atoms)), range(3)):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, axis] += sign * step
                energies.append(model.forward([moved]).energies[0])
            numeric[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
        np.testing.assert_allclose(output.forces, numeric, atol=1e-7)


def test_descriptors_choose_invariant_columns(model_path):
    atoms = _structures()[0]
    full = load_deployed_model(model_path).forward([atoms]).descriptors
    assert full.shape == (len(atoms), N_TYPE_FEATURES + N_RADIAL + 3)  # default: every column
    by_irreps = load_deployed_model(model_path, irreps_key="node_irreps")
    by_count = load_deployed_model(model_path, scalar_channels=N_TYPE_FEATURES + N_RADIAL)
    assert by_irreps.descriptor_size == by_count.descriptor_size == N_TYPE_FEATURES + N_RADIAL
    np.testing.assert_array_equal(by_irreps.forward([atoms]).descriptors, full[:, :7])
    np.testing.assert_array_equal(by_count.forward([atoms]).descriptors, full[:, :7])
    assert load_deployed_model(model_path).descriptor_size == full.shape[1]  # probe pass


def test_batched_evaluation_equals_one_by_one(model_path):
    model = load_deployed_model(model_path, irreps_key="node_irreps")
    atoms_list = _structures()
    reference = [a.copy() for a in atoms_list]
    forces = np.concatenate([model.forward([a]).forces for a in atoms_list]) + 0.01
    structures = LabelledStructures(reference, energies=None, forces=forces)
    one = evaluate_deployed(model, structures)
    batched = evaluate_deployed(model, structures, batch_size=3)
    np.testing.assert_allclose(batched.energies, one.energies, rtol=1e-12)
    np.testing.assert_allclose(batched.forces, one.forces, atol=1e-12)
    np.testing.assert_allclose(batched.descriptors, one.descriptors, atol=1e-6)
    assert one.descriptors.shape == (structures.n_atoms, 7)
    np.testing.assert_allclose(one.force_errors, np.sqrt(3) * 0.01, rtol=1e-6)


def _estimator(descriptors: np.ndarray) -> LTAUEstimator:
    rng = np.random.default_rng(1)
    recorder = ErrorRecorder(len(descriptors), bins=Bins.log(1e-3, 1.0, 20))
    for _ in range(5):
        recorder.record_epoch(rng.uniform(0.01, 0.5, len(descriptors)))
    return LTAUEstimator(2).fit(descriptors, recorder.distributions())


def test_calculator_results_round_trip_through_extxyz(model_path, tmp_path):
    model = load_deployed_model(model_path, irreps_key="node_irreps")
    train = LabelledStructures(_structures()[:2])
    estimator = _estimator(evaluate_deployed(model, train).descriptors)
    atoms = _structures()[2]
    atoms.calc = LTAUCalculator(model, estimator, atol=0.2)
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, model.forward([atoms]).forces)
    results = atoms.calc.results
    for name in ("ltau_expected_force_error", "ltau_p_exceed", "ltau_ood_score"):
        assert results[name].shape == (len(atoms),)
    ase.io.write(tmp_path / "out.xyz", atoms, format="extxyz")
    read = ase.io.read(tmp_path / "out.xyz")
    for name in ("ltau_expected_force_error", "ltau_p_exceed", "ltau_ood_score"):
        np.testing.assert_allclose(read.arrays[name], results[name])
    np.testing.assert_allclose(read.get_forces(), forces)
    periodic = _structures()[0]
    periodic.calc = LTAUCalculator(model, estimator)
    assert periodic.get_potential_energy() == pytest.approx(model.forward([periodic]).energies[0])


def test_estimator_of_another_descriptor_size_is_refused(model_path):
    model = load_deployed_model(model_path, irreps_key="node_irreps")  # 7 columns
    estimator = _estimator(np.random.default_rng(0).normal(size=(20, 10)))
    with pytest.raises(LTAUInputError, match="10-dimensional descriptors but this model gives 7"):
        LTAUCalculator(model, estimator)


@pytest.mark.parametrize("missing", ["r_max", "type_names"])
def test_missing_metadata_is_refused(tmp_path, missing):
    path = _save(tmp_path / "model.pth", _metadata(**{missing: None}))
    with pytest.raises(LTAUFileError, match=f"no '{missing}' in its metadata"):
        load_deployed_model(path)


def test_inconsistent_or_bad_metadata_is_refused(tmp_path):
    path = _save(tmp_path / "a.pth", _metadata(n_species="5"))
    with pytest.raises(LTAUFileError, match="n_species is 5 but type_names lists 3"):
        load_deployed_model(path)
    path = _save(tmp_path / "b.pth", _metadata(r_max="five"))
    with pytest.raises(LTAUFileError, match="r_max is not a number"):
        load_deployed_model(path)
    path = _save(tmp_path / "c.pth", _metadata())
    with pytest.raises(LTAUFileError, match="no metadata entry 'absent'"):
        load_deployed_model(path, irreps_key="absent")
    with pytest.raises(LTAUInputError, match="not both"):
        load_deployed_model(path, irreps_key="node_irreps", scalar_channels=3)


def test_not_torchscript_is_refused(tmp_path):
    pickled = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, pickled)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a model")
    for path in (pickled, garbage):
        with pytest.raises(LTAUFileError, match="is not a TorchScript model file"):
            load_deployed_model(path)
    with pytest.raises(LTAUFileError, match="does not exist"):
        load_deployed_model(tmp_path / "absent.pth")


def test_unknown_element_is_named(model_path):
    model = load_deployed_model(model_path)
    with pytest.raises(
        LTAUInputError, match=r"does not know element\(s\) Pt; its type names are Cu H O"
    ):
        model.forward([Atoms("CuPt", positions=[[0, 0, 0], [0, 0, 2]])])
    mapped = load_deployed_model(model_path, species_to_type_name={"Pt": "Cu"})
    assert mapped.type_indices(["Pt", "O"]).tolist() == [0, 2]
    with pytest.raises(LTAUInputError, match="not among the model's type names"):
        load_deployed_model(model_path, species_to_type_name={"Pt": "Au"})


def test_model_without_the_needed_outputs_is_refused(tmp_path):
    class EnergyOnly(torch.nn.Module):
        def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:  # noqa: UP006
            return {"total_energy": data["pos"].sum().view(1, 1)}

    path = tmp_path / "energy_only.pth"
    torch.jit.save(torch.jit.script(EnergyOnly()), str(path), _extra_files=_metadata())
    model = DeployedModel.load(path)
    with pytest.raises(LTAUFileError, match=r"returns no \['forces', 'node_features'\]"):
        model.forward([molecule("H2O")])


def test_load_forcefield_serves_a_deployed_model(model_path):
    """The one model-file entry point recognises TorchScript and checks the estimator's model."""
    from ltau.integrations.models import load_forcefield

    forcefield = load_forcefield(model_path)
    assert forcefield.kind == "deployed" and len(forcefield.fingerprint) == 64
    train = LabelledStructures(_structures()[:2])
    estimator = _estimator(forcefield.evaluate(train).descriptors)
    atoms = _structures()[2]
    atoms.calc = forcefield.calculator(estimator, atol=0.2)
    np.testing.assert_allclose(atoms.get_forces(), forcefield.model.forward([atoms]).forces)
    estimator.metadata_["model_sha256"] = forcefield.fingerprint
    forcefield.calculator(estimator)
    estimator.metadata_["model_sha256"] = "0" * 64
    with pytest.raises(LTAUInputError, match="another model"):
        forcefield.calculator(estimator)
    with pytest.raises(LTAUInputError, match="run on the CPU"):
        load_forcefield(model_path, device="cuda")
