"""Structure relaxation with per-step, per-atom uncertainty from an LTAU calculator.

:func:`relax` drives any ASE optimizer (a class, or a name from ``ase.optimize`` such as
``"FIRE"``, ``"BFGS"``, ``"LBFGS"``) with a calculator derived from
:class:`~ltau.atomistic.calculator.LTAUCalculatorBase`. Every step (the initial structure is
step 0) becomes one extxyz frame holding the energy (eV) and forces (eV/Å) of the model, and per
atom the expected force error ``ltau_expected_force_error`` (eV/Å), the exceedance probability
``ltau_p_exceed`` (P(force error > the calculator's ``atol``)) and the OOD score
``ltau_ood_score`` (mean Euclidean distance to the k nearest training atoms in descriptor space).
``info`` holds ``relax_step``, ``relax_fmax`` and ``relax_converged``, and, on the frame where a
stop rule fired, ``ltau_stopped_by``.

A stop rule ends the relaxation at the first step where the maximum over the moving atoms of a
quantity exceeds its threshold: ``expected_error`` (eV/Å), ``p_exceed`` (in [0, 1]) or
``ood_score``. "Moving atoms" are those not fixed by an ``ase.constraints.FixAtoms``; per-step
maxima and means are over them too, as is ``relax_fmax``.

Crash safety: frames are appended, one complete frame per write and flushed, to
``<trajectory>.partial``; when the relaxation ends (converged, stopped or out of steps) that file
is synced and renamed to ``<trajectory>`` in one step. A reader of ``<trajectory>`` thus sees
the previous file or the finished one; after a crash ``<trajectory>.partial`` holds every step
written so far.
"""

from __future__ import annotations

import inspect
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ase.io
import ase.optimize
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize.optimize import Optimizer
from tqdm.auto import tqdm

from ltau._checks import integer, non_negative_number, positive_number
from ltau._io import check_output_path
from ltau.atomistic.calculator import LTAUCalculatorBase
from ltau.exceptions import LTAUInputError

#: Stop-rule and summary quantities, and the calculator result each one reads.
QUANTITIES: dict[str, str] = {
    "expected_error": "ltau_expected_force_error",
    "p_exceed": "ltau_p_exceed",
    "ood_score": "ltau_ood_score",
}


@dataclass
class RelaxationResult:
    """What a relaxation did. Per-step arrays have one entry per frame, ``(n_steps + 1,)``.

    ``maximum[q]`` / ``mean[q]``: maximum / mean over the moving atoms of quantity ``q`` (a key
    of :data:`QUANTITIES`) at each step. ``stopped_by``: the stop rules that fired (empty if
    none), at step ``stop_step``.
    """

    n_steps: int
    converged: bool
    stopped_by: tuple[str, ...]
    stop_step: int | None
    energies: np.ndarray  # (n_steps + 1,) eV
    fmax: np.ndarray  # (n_steps + 1,) largest force norm on a moving atom, eV/Å
    maximum: dict[str, np.ndarray] = field(default_factory=dict)
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    trajectory: Path | None = None


def optimizer_class(optimizer: str | type) -> type[Optimizer]:
    """The ASE optimizer class named ``optimizer`` (from ``ase.optimize``), or ``optimizer``
    itself if it is an optimizer class."""
    if isinstance(optimizer, str):
        found = getattr(ase.optimize, optimizer, None)
        if not (inspect.isclass(found) and issubclass(found, Optimizer)):
            raise LTAUInputError(
                f"unknown optimizer {optimizer!r}; choose one of {', '.join(optimizer_names())}"
            )
        return found
    if inspect.isclass(optimizer) and issubclass(optimizer, Optimizer):
        return optimizer
    raise LTAUInputError(
        f"optimizer must be an ASE optimizer class or name; got {type(optimizer).__name__}"
    )


def optimizer_names() -> list[str]:
    """Names of the optimizer classes in ``ase.optimize``."""
    return sorted(
        name
        for name, value in vars(ase.optimize).items()
        if inspect.isclass(value) and issubclass(value, Optimizer)
    )


def check_settings(optimizer: str | type, fmax: float, steps: int) -> type[Optimizer]:
    """Validate the optimizer, ``fmax`` (eV/Å, > 0) and ``steps`` (>= 1); return the class."""
    optimizer_type = optimizer_class(optimizer)
    positive_number(fmax, "fmax", "a positive number (eV/Å)")
    integer(steps, "steps", 1, "an integer >= 1")
    return optimizer_type


def check_stop_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """Validate stop thresholds ``{quantity: value}`` (quantities of :data:`QUANTITIES`)."""
    checked: dict[str, float] = {}
    for name, value in (thresholds or {}).items():
        if name not in QUANTITIES:
            raise LTAUInputError(
                f"unknown stop quantity {name!r}; choose from {', '.join(QUANTITIES)}"
            )
        threshold = non_negative_number(value, f"the {name} stop threshold")
        if name == "p_exceed" and threshold > 1:
            raise LTAUInputError(f"the p_exceed stop threshold must lie in [0, 1]; got {value}")
        checked[name] = threshold
    return checked


def relax(
    atoms: Atoms,
    calculator: LTAUCalculatorBase,
    *,
    optimizer: str | type = "FIRE",
    fmax: float = 0.05,
    steps: int = 200,
    trajectory: str | os.PathLike | None = None,
    stop: Mapping[str, float] | None = None,
    optimizer_kwargs: Mapping[str, object] | None = None,
    progress: bool = False,
) -> RelaxationResult:
    """Relax ``atoms`` in place with ``calculator`` attached, recording uncertainty per step.

    Args:
        atoms: the structure; its constraints are honoured, and it is left at the last step.
        calculator: an LTAU calculator (any subclass of ``LTAUCalculatorBase``).
        optimizer: an ASE optimizer class or its name in ``ase.optimize``.
        fmax: convergence criterion, largest force norm on a moving atom (eV/Å), > 0.
        steps: maximum optimizer steps, >= 1.
        trajectory: extxyz file receiving every step (see the module docstring), or None.
        stop: stop thresholds ``{"expected_error": eV/Å, "p_exceed": p, "ood_score": d}``;
            the relaxation stops at the first step where a moving atom's value exceeds one.
        optimizer_kwargs: extra arguments of the optimizer (``logfile`` defaults to None).
        progress: show a progress bar over the steps.
    """
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise LTAUInputError("atoms must be a non-empty ase.Atoms")
    if not isinstance(calculator, LTAUCalculatorBase):
        raise LTAUInputError(
            f"calculator must be an LTAU calculator (a subclass of LTAUCalculatorBase, e.g. "
            f"ltau.integrations.mace.LTAUCalculator); got {type(calculator).__name__}"
        )
    optimizer_type = check_settings(optimizer, fmax, steps)
    thresholds = check_stop_thresholds(stop)
    target = None if trajectory is None else check_output_path(trajectory)

    atoms.calc = calculator
    moving = _moving_atoms(atoms)
    kwargs = {"logfile": None, **(optimizer_kwargs or {})}
    try:
        relaxer = optimizer_type(atoms, **kwargs)
    except TypeError as exc:
        raise LTAUInputError(f"{optimizer_type.__name__} rejected its arguments: {exc}") from exc

    energies, fmaxes = [], []
    maximum: dict[str, list[float]] = {name: [] for name in QUANTITIES}
    mean: dict[str, list[float]] = {name: [] for name in QUANTITIES}
    converged, stopped_by, stop_step = False, (), None
    partial = None if target is None else target.with_name(target.name + ".partial")
    writer = None if partial is None else open(partial, "wb", buffering=0)
    try:
        bar = tqdm(total=steps, desc="relaxing", unit="step", disable=not progress)
        for step, converged in enumerate(relaxer.irun(fmax=float(fmax), steps=int(steps))):
            results = calculator.results
            forces = np.asarray(results["forces"], dtype=np.float64)
            energies.append(float(results["energy"]))
            fmaxes.append(float(np.linalg.norm(forces[moving], axis=1).max(initial=0.0)))
            for name, key in QUANTITIES.items():
                values = np.asarray(results[key], dtype=np.float64)[moving]
                maximum[name].append(float(values.max(initial=-np.inf)))
                mean[name].append(float(values.mean()) if values.size else math.nan)
            fired = tuple(n for n, limit in thresholds.items() if maximum[n][-1] > limit)
            if fired:
                stopped_by, stop_step = fired, step
            if writer is not None:
                writer.write(_frame_text(atoms, results, step, fmaxes[-1], converged, fired))
            if step:
                bar.update(1)
            if fired:
                break
        bar.close()
    finally:
        if writer is not None:
            writer.close()
    if partial is not None:
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
    return RelaxationResult(
        n_steps=len(energies) - 1,
        converged=bool(converged),
        stopped_by=stopped_by,
        stop_step=stop_step,
        energies=np.asarray(energies),
        fmax=np.asarray(fmaxes),
        maximum={name: np.asarray(values) for name, values in maximum.items()},
        mean={name: np.asarray(values) for name, values in mean.items()},
        trajectory=target,
    )


def _frame_text(
    atoms: Atoms,
    results: Mapping[str, object],
    step: int,
    fmax: float,
    converged: bool,
    fired: tuple[str, ...],
) -> bytes:
    """One extxyz frame: the structure, the model's energy and forces, the per-atom LTAU
    results, and the step's facts in ``info``."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.info.update(atoms.info)
    frame.set_constraint(atoms.constraints)
    if atoms.has("tags"):
        frame.set_tags(atoms.get_tags())
    for key in QUANTITIES.values():
        frame.arrays[key] = np.asarray(results[key], dtype=np.float64)
    frame.info.update(relax_step=step, relax_fmax=fmax, relax_converged=bool(converged))
    if fired:
        frame.info["ltau_stopped_by"] = ",".join(fired)
    frame.calc = SinglePointCalculator(
        frame, energy=float(results["energy"]), forces=np.asarray(results["forces"])
    )
    buffer = io.StringIO()
    ase.io.write(buffer, frame, format="extxyz")
    return buffer.getvalue().encode()


def _moving_atoms(atoms: Atoms) -> np.ndarray:
    """Boolean mask of the atoms not fixed by a ``FixAtoms`` constraint."""
    moving = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            moving[constraint.index] = False
    if not moving.any():
        raise LTAUInputError("every atom is fixed: there is nothing to relax")
    return moving


__all__ = [
    "QUANTITIES",
    "RelaxationResult",
    "check_settings",
    "check_stop_thresholds",
    "optimizer_class",
    "optimizer_names",
    "relax",
]
