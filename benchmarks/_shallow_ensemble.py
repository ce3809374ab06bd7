"""A shallow ensemble of MACE (Kellner and Ceriotti, Mach. Learn.: Sci. Technol. 5, 035006,
2024): one backbone, M readout heads, trained jointly.

The backbone is ltau's MACE (:func:`ltau.integrations.mace._build_model`, the settings of
:class:`~ltau.integrations.mace.MACESettings`). Its invariant node features of every layer
(mace's ``node_feats`` output) feed M heads at once: a linear map per layer but the last, and
for the last layer mace's non-linear readout with one shared hidden layer and M outputs, so
the heads differ only in their last linear maps. Head m's energy is the backbone's E0s plus
its scaled and shifted atomic energies (mace's own readouts are left unused); its forces are
minus the gradient of that energy (one backward pass per head). The heads are trained jointly
on the mean over heads of mace's weighted energy-and-forces loss, with the optimiser, learning
rate and weight average of :func:`ltau.integrations.mace.train_mace`; they start from
different random weights (one generator seeded by the run's seed), and the shared batches give
them the same data.

The prediction is the mean of the heads' forces, its uncertainty their spread
``sqrt(mean_m ||F_m - F_mean||^2)`` (eV/Å), as for a deep ensemble.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import mace  # noqa: F401  (must be imported before e3nn)
import numpy as np
import torch
from e3nn import o3
from mace import modules as mace_modules
from mace.tools import AtomicNumberTable, torch_geometric
from mace.tools.scatter import scatter_sum

from ltau.atomistic.structures import LabelledStructures
from ltau.exceptions import LTAUInputError
from ltau.integrations.mace import (
    MACESettings,
    _atomic_data,
    _atomic_energies,
    _build_model,
    default_dtype,
)
from ltau.recording import ErrorRecorder


class ShallowEnsembleMACE(torch.nn.Module):
    """A MACE backbone with ``n_heads`` energy heads on its invariant node features."""

    def __init__(self, backbone: torch.nn.Module, n_heads: int, mlp_channels: int) -> None:
        super().__init__()
        if n_heads < 2:
            raise LTAUInputError(f"a shallow ensemble needs at least 2 heads; got {n_heads}")
        self.backbone = backbone
        self.n_heads = n_heads
        outputs = o3.Irreps(f"{n_heads}x0e")
        layers = [o3.Irreps(str(product.linear.irreps_out)) for product in backbone.products]
        self.layer_sizes = [irreps.dim for irreps in layers]
        self.heads = torch.nn.ModuleList(
            [o3.Linear(irreps, outputs) for irreps in layers[:-1]]
            + [
                mace_modules.NonLinearReadoutBlock(
                    layers[-1], o3.Irreps(f"{mlp_channels}x0e"), torch.nn.functional.silu, outputs
                )
            ]
        )

    def forward(self, data: dict, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies ``(n_graphs, n_heads)`` (eV) and forces ``(n_heads, n_atoms, 3)`` (eV/Å)."""
        output = self.backbone(data, training=training, compute_force=False)
        e0 = (output["energy"] - output["interaction_energy"]).detach()
        layers = torch.split(output["node_feats"], self.layer_sizes, dim=-1)
        atomic = sum(head(layer) for head, layer in zip(self.heads, layers, strict=True))
        scale_shift = self.backbone.scale_shift
        atomic = scale_shift.scale.reshape(-1)[0] * atomic + scale_shift.shift.reshape(-1)[0]
        n_graphs = int(data["ptr"].numel() - 1)
        energies = e0[:, None] + scatter_sum(atomic, data["batch"], dim=0, dim_size=n_graphs)
        forces = [
            -torch.autograd.grad(
                energies[:, m].sum(),
                data["positions"],
                create_graph=training,
                retain_graph=training or m < self.n_heads - 1,
            )[0]
            for m in range(self.n_heads)
        ]
        return energies, torch.stack(forces)


@dataclass
class TrainedShallowEnsemble:
    """A trained shallow ensemble, its settings and elements, and its epoch times (s)."""

    model: ShallowEnsembleMACE
    settings: MACESettings
    atomic_numbers: list[int]
    epoch_seconds: list[float] = field(default_factory=list)


def train_shallow_ensemble(
    structures: LabelledStructures,
    *,
    epochs: int,
    n_heads: int,
    settings: MACESettings | None = None,
    isolated_atom_energies: dict[int, float] | None = None,
    recorder: ErrorRecorder | None = None,
) -> TrainedShallowEnsemble:
    """Train the backbone and ``n_heads`` heads jointly (see the module docstring);
    ``recorder`` (one sample per training atom) gets the force-error norm of the heads' mean
    at every training step, as :func:`~ltau.integrations.mace.train_mace` records."""
    settings = settings or MACESettings()
    if epochs < 1:
        raise LTAUInputError(f"epochs must be a positive integer; got {epochs}")
    if structures.forces is None or structures.energies is None:
        raise LTAUInputError("training structures need reference energies and forces")
    torch.manual_seed(settings.seed)
    with default_dtype(settings.dtype):
        z_table = AtomicNumberTable(sorted(set(structures.atomic_numbers.tolist())))
        dataset = _atomic_data(structures, z_table, settings.r_max)
        generator = torch.Generator().manual_seed(settings.seed)
        loader = torch_geometric.dataloader.DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
        e0s = _atomic_energies(structures, z_table, isolated_atom_energies)
        model = ShallowEnsembleMACE(
            _build_model(settings, z_table, e0s, loader), n_heads, settings.mlp_channels
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, amsgrad=True)
        averaged = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings.ema_decay),
        )
        trained = TrainedShallowEnsemble(model, settings, list(z_table.zs))
        for _ in range(epochs):
            started = time.perf_counter()
            model.train()
            for batch in loader:
                energies, forces = model(batch.to_dict(), training=True)
                n_atoms = (batch.ptr[1:] - batch.ptr[:-1])[:, None]
                energy_loss = torch.mean(((energies - batch.energy[:, None]) / n_atoms) ** 2)
                forces_loss = torch.mean((forces - batch.forces[None]) ** 2)
                loss = settings.energy_weight * energy_loss + settings.forces_weight * forces_loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                averaged.update_parameters(model)
                if recorder is not None:
                    errors = torch.linalg.vector_norm(forces.mean(dim=0) - batch.forces, dim=1)
                    recorder.record(batch.atom_ids.numpy(), errors.detach().numpy())
            if recorder is not None:
                recorder.end_epoch(0)
            trained.epoch_seconds.append(time.perf_counter() - started)
        trained.model = averaged.module
        trained.model.eval()
    return trained


def evaluate_shallow_ensemble(
    trained: TrainedShallowEnsemble, structures: LabelledStructures, batch_size: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Every head's energies ``(n_heads, n_configs)`` (eV) and forces ``(n_heads, n_atoms, 3)``
    (eV/Å), configurations and atoms in order."""
    z_table = AtomicNumberTable(trained.atomic_numbers)
    unknown = sorted(set(structures.atomic_numbers.tolist()) - set(trained.atomic_numbers))
    if unknown:
        raise LTAUInputError(f"the shallow ensemble was not trained on atomic numbers {unknown}")
    energies, forces = [], []
    with default_dtype(trained.settings.dtype):
        dataset = _atomic_data(structures, z_table, trained.settings.r_max)
        for batch in torch_geometric.dataloader.DataLoader(dataset, batch_size=batch_size):
            batch_energies, batch_forces = trained.model(batch.to_dict())
            energies.append(batch_energies.detach().numpy().T)
            forces.append(batch_forces.detach().numpy())
    return (
        np.concatenate(energies, axis=1).astype(np.float64),
        np.concatenate(forces, axis=1).astype(np.float64),
    )
