"""Force-field training and test data labelled by a physical oracle shipped with ASE (EMT).

Structures are small fcc(111) metal slabs (``ase.build.fcc111``, vacuum along z, the bottom
layer(s) held fixed) carrying one adsorbate (H, C, N, O, OH, CO, NO, CH, NH) on an ``ontop``,
``bridge``, ``fcc`` or ``hcp`` site. They are sampled by Langevin molecular dynamics
(:func:`make_md_dataset`), along BFGS/FIRE relaxations (:func:`make_relaxation_frames`), or left
unlabelled as starting points of a relaxation benchmark (:func:`make_initial_structures`).
:func:`default_splits` assembles the built-in dataset of ltau's demo; :func:`shifted_test_sets`
adds named shifted test sets beside it (hotter MD, unseen pairs, fcc(100) slabs, vacancies and
radical-like adsorbates, the last two by :func:`remove_one_atom`).

Labels. The oracle is ASE's effective-medium-theory calculator (:class:`ase.calculators.emt.EMT`;
elements Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O). Every labelled frame stores

* the reference energy (eV) as a float in ``atoms.info[energy_key]`` (default ``"REF_energy"``),
* the reference forces (eV/Å, shape ``(n_atoms, 3)``) in ``atoms.arrays[forces_key]``
  (default ``"REF_forces"``). They are the raw forces on *all* atoms, including the atoms that
  were held fixed during sampling (constraints are not applied to the labels),
* a boolean per-atom array ``atoms.arrays["fixed"]``: True for atoms held fixed while sampling,
* provenance in ``atoms.info``: ``config_type`` ("md" or "relaxation"), ``metal``,
  ``adsorbate``, ``site`` and sampling details (``temperature_K``, ``time_fs``, ...).

No calculator and no constraint is attached to labelled frames, so ``ase.io.write(...,
format="extxyz")`` writes exactly these keys, reading the file back returns them unchanged in
``info`` / ``arrays``, and attaching a model's calculator later gives forces on every atom,
comparable with the reference ones. The defaults match MACE's default ``--energy_key REF_energy``
and ``--forces_key REF_forces`` (``mace/tools/default_keys.py``); older MACE releases defaulted to
``energy`` / ``forces``, so pass both options explicitly when training. Names that ASE treats as
calculator results (``energy``, ``forces``, ``stress``, ...) are refused as keys: ASE's extxyz
reader would move them from ``info`` / ``arrays`` into a ``SinglePointCalculator``.

EMT energies are measured from the bulk fcc crystals of its parametrisation, so isolated atoms
have *positive* energies (:func:`isolated_atom_energies`; give them to MACE as ``--E0s``).

Everything is deterministic given ``seed``: each trajectory or relaxation gets its own
``numpy.random.Generator`` spawned from ``numpy.random.SeedSequence(seed)``, which drives the site
choice, the initial displacements, the Maxwell-Boltzmann velocities and the Langevin noise
(``Langevin(..., rng=generator)``).
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc100, fcc111
from ase.calculators.calculator import all_properties
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS, FIRE
from tqdm.auto import tqdm

from ltau._checks import integer, non_negative_number, positive_number
from ltau._io import atomic_path
from ltau.exceptions import LTAUInputError

__all__ = [
    "ADSORBATES",
    "DEFAULT_ADSORBATES",
    "DEFAULT_METALS",
    "EMT_ELEMENTS",
    "FACETS",
    "SHIFTED_SETS",
    "SITES",
    "SLAB_METALS",
    "UNSEEN_PAIRS",
    "default_splits",
    "isolated_atom_energies",
    "make_initial_structures",
    "make_md_dataset",
    "make_relaxation_frames",
    "remove_one_atom",
    "shifted_test_sets",
    "write_extxyz",
]

#: Elements parametrised by ASE's EMT calculator.
EMT_ELEMENTS: tuple[str, ...] = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O")
#: fcc metals (all EMT-parametrised) that can form the slab.
SLAB_METALS: tuple[str, ...] = ("Cu", "Pt", "Au", "Ni", "Pd", "Ag", "Al")
#: Adsorbates: (symbol, height in Å above the binding atom) per atom; the binding atom comes first.
ADSORBATES: dict[str, tuple[tuple[str, float], ...]] = {
    "H": (("H", 0.0),),
    "C": (("C", 0.0),),
    "N": (("N", 0.0),),
    "O": (("O", 0.0),),
    "OH": (("O", 0.0), ("H", 0.97)),
    "CO": (("C", 0.0), ("O", 1.15)),
    "NO": (("N", 0.0), ("O", 1.15)),
    "CH": (("C", 0.0), ("H", 1.09)),
    "NH": (("N", 0.0), ("H", 1.02)),
}
#: Adsorption sites of an fcc(111) slab built by ``ase.build.fcc111``.
SITES: tuple[str, ...] = ("ontop", "bridge", "fcc", "hcp")
#: Slab facets and their adsorption sites: fcc(111) (``ase.build.fcc111``, the default) and
#: fcc(100) (``ase.build.fcc100``).
FACETS: dict[str, tuple[str, ...]] = {"111": SITES, "100": ("ontop", "bridge", "hollow")}
#: Initial height (Å) of the binding atom above the top layer, per site (close to EMT minima).
SITE_HEIGHTS: dict[str, float] = {
    "ontop": 1.8,
    "bridge": 1.5,
    "fcc": 1.4,
    "hcp": 1.4,
    "hollow": 1.2,
}

#: Metals and adsorbates of the default training set (elements Cu, Pt, Au, H, C, O).
DEFAULT_METALS: tuple[str, ...] = ("Cu", "Pt", "Au")
DEFAULT_ADSORBATES: tuple[str, ...] = ("H", "O", "OH", "CO")
#: (metal, adsorbate) pairs left out of the default training set; they use only trained elements,
#: so a model trained on "train" can still evaluate them (a composition shift, not a new element).
UNSEEN_PAIRS: tuple[tuple[str, str], ...] = (("Au", "OH"), ("Au", "CO"))

#: The named shifted test sets of :func:`shifted_test_sets`, in order.
SHIFTED_SETS: tuple[str, ...] = (
    "md_900K",
    "md_1200K",
    "unseen_pairs",
    "fcc100",
    "vacancies",
    "radicals",
)

DEFAULT_SLAB_SIZE: tuple[int, int, int] = (3, 3, 3)
DEFAULT_VACUUM = 6.0
DEFAULT_ENERGY_KEY = "REF_energy"
DEFAULT_FORCES_KEY = "REF_forces"
FIXED_KEY = "fixed"
_RESERVED_KEYS = frozenset(all_properties) | {
    "numbers",
    "positions",
    "species",
    "pos",
    "Z",
    "tags",
    "momenta",
    "masses",
    "initial_magmoms",
    "initial_charges",
    "move_mask",
    "Lattice",
    "Properties",
    "pbc",
    FIXED_KEY,
}
_OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE}
_PROGRESS_DELAY_S = 2.0  # bars appear only when generation takes longer than this


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def make_md_dataset(
    metals: str | Iterable[str],
    adsorbates: str | Iterable[str],
    temperature_K: float,
    n_frames: int,
    seed: int,
    *,
    exclude_pairs: Iterable[tuple[str, str]] = (),
    sites: Iterable[str] | None = None,
    facet: str = "111",
    slab_size: tuple[int, int, int] = DEFAULT_SLAB_SIZE,
    vacuum: float = DEFAULT_VACUUM,
    n_fixed_layers: int = 1,
    timestep_fs: float = 1.0,
    friction_per_fs: float = 0.02,
    n_prerelax_steps: int = 20,
    n_equilibration_steps: int = 30,
    sample_interval: int = 20,
    frames_per_trajectory: int = 4,
    rattle_stdev: float = 0.0,
    energy_key: str = DEFAULT_ENERGY_KEY,
    forces_key: str = DEFAULT_FORCES_KEY,
    progress: bool = True,
    progress_desc: str | None = None,
) -> list[Atoms]:
    """Sample ``n_frames`` EMT-labelled frames from short Langevin MD runs at ``temperature_K``.

    Trajectories cycle through the (metal, adsorbate) pairs of the product ``metals`` x
    ``adsorbates`` (minus ``exclude_pairs``), every pair once per cycle in a random order. Each
    starts from a random site (free atoms optionally displaced by ``rattle_stdev`` Å), is
    pre-relaxed with at most ``n_prerelax_steps`` BFGS steps (fmax 0.1 eV/Å), and gets
    Maxwell-Boltzmann velocities at *twice* ``temperature_K``: near a minimum the kinetic energy
    shares itself with the potential energy, so the system starts close to equilibrium at
    ``temperature_K`` (a rattled start at ``temperature_K`` was measured to drift for >100 fs).
    After ``n_equilibration_steps`` it keeps one frame every ``sample_interval`` steps, at most
    ``frames_per_trajectory`` per trajectory; many short independent trajectories keep the frames
    decorrelated (with the defaults, consecutive frames of one trajectory have an energy
    correlation of about 0.7 and frames of different trajectories none). The bottom
    ``n_fixed_layers`` layers are held fixed (``FixAtoms``) but stay in the frames. See the module
    docstring for how labels are stored.

    Args:
        metals: slab metals, from :data:`SLAB_METALS`.
        adsorbates: adsorbate names, from :data:`ADSORBATES`.
        temperature_K: thermostat temperature (K), >= 0.
        n_frames: number of frames returned, >= 1.
        seed: non-negative integer seeding every random choice.
        exclude_pairs: (metal, adsorbate) pairs to leave out of the product.
        sites: adsorption sites drawn uniformly, from the facet's (:data:`FACETS`; default all).
        facet: slab facet, "111" (fcc(111), the default) or "100" (fcc(100); its frames
            carry ``info["facet"] = "100"``).
        slab_size: (nx, ny, n_layers) of the slab.
        vacuum: vacuum (Å) above and below the slab.
        n_fixed_layers: bottom layers held fixed, in ``[0, n_layers)``.
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction (1/fs).
        n_prerelax_steps: maximum BFGS steps before the MD (0: none).
        n_equilibration_steps: MD steps discarded at the start of each trajectory.
        sample_interval: steps between kept frames.
        frames_per_trajectory: frames kept per trajectory.
        rattle_stdev: standard deviation (Å) of the initial displacements.
        energy_key: ``atoms.info`` key of the reference energy (eV).
        forces_key: ``atoms.arrays`` key of the reference forces (eV/Å).
        progress: show a tqdm bar if generation takes more than a couple of seconds.
        progress_desc: label of the progress bar.

    Returns:
        ``n_frames`` labelled :class:`ase.Atoms` without calculator or constraints.
    """
    pairs = _pairs(metals, adsorbates, exclude_pairs)
    starts = _starts(
        pairs,
        sites,
        seed,
        rattle_stdev,
        slab_size,
        vacuum,
        n_fixed_layers,
        shuffled=True,
        facet=facet,
    )
    temperature = _non_negative_float(temperature_K, "temperature_K")
    n_frames = _positive_int(n_frames, "n_frames")
    timestep = _positive_float(timestep_fs, "timestep_fs")
    friction = _positive_float(friction_per_fs, "friction_per_fs")
    n_equilibration_steps = _non_negative_int(n_equilibration_steps, "n_equilibration_steps")
    sample_interval = _positive_int(sample_interval, "sample_interval")
    frames_per_trajectory = _positive_int(frames_per_trajectory, "frames_per_trajectory")
    n_prerelax_steps = _non_negative_int(n_prerelax_steps, "n_prerelax_steps")
    _check_keys(energy_key, forces_key)

    def trajectory(start: _Start, n_missing: int) -> Iterator[Atoms]:
        """Run one pre-relaxed Langevin trajectory; yield up to ``n_missing`` frames of it."""
        atoms = start.atoms
        if n_prerelax_steps:
            with _single_threaded_blas():
                BFGS(atoms, logfile=None).run(fmax=0.1, steps=n_prerelax_steps)
        thermalize_momenta(atoms, 2.0 * temperature, rng=start.rng)
        dynamics = Langevin(
            atoms,
            timestep=timestep * units.fs,
            temperature_K=temperature,
            friction=friction / units.fs,
            fixcm=False,
            rng=start.rng,
        )
        if n_equilibration_steps:
            dynamics.run(n_equilibration_steps)
        for _ in range(min(frames_per_trajectory, n_missing)):
            dynamics.run(sample_interval)
            info = {
                "config_type": "md",
                "temperature_K": temperature,
                "trajectory": start.index,
                "time_fs": dynamics.get_time() / units.fs,
            }
            yield _labelled_frame(atoms, start.fixed, info, energy_key, forces_key)

    desc = progress_desc or f"EMT MD at {temperature:g} K"
    return _collect_frames(starts, trajectory, n_frames, desc, progress)


def make_relaxation_frames(
    metals: str | Iterable[str],
    adsorbates: str | Iterable[str],
    n_frames: int,
    seed: int,
    *,
    exclude_pairs: Iterable[tuple[str, str]] = (),
    sites: Iterable[str] = SITES,
    optimizer: str = "BFGS",
    fmax: float = 0.05,
    max_steps: int = 200,
    frames_per_relaxation: int = 4,
    rattle_stdev: float = 0.15,
    slab_size: tuple[int, int, int] = DEFAULT_SLAB_SIZE,
    vacuum: float = DEFAULT_VACUUM,
    n_fixed_layers: int = 1,
    energy_key: str = DEFAULT_ENERGY_KEY,
    forces_key: str = DEFAULT_FORCES_KEY,
    progress: bool = True,
    progress_desc: str | None = None,
) -> list[Atoms]:
    """Sample ``n_frames`` EMT-labelled frames along EMT relaxations (near-relaxed geometries).

    Each relaxation starts from a structure like those of :func:`make_initial_structures` (pairs
    cycled as in :func:`make_md_dataset`, random site, displacements of ``rattle_stdev`` Å) and
    runs ``optimizer`` ("BFGS" or "FIRE") until the largest force on a free atom is below
    ``fmax`` (eV/Å) or for ``max_steps``. Up to ``frames_per_relaxation`` frames are taken at
    evenly spaced steps of the path, the initial structure excluded and the final one included. ``info`` records ``relax_step``,
    ``relax_n_steps`` and ``converged`` (of the whole relaxation). Other arguments and the label
    layout are as in :func:`make_md_dataset`.
    """
    pairs = _pairs(metals, adsorbates, exclude_pairs)
    starts = _starts(
        pairs, sites, seed, rattle_stdev, slab_size, vacuum, n_fixed_layers, shuffled=True
    )
    n_frames = _positive_int(n_frames, "n_frames")
    if optimizer not in _OPTIMIZERS:
        raise LTAUInputError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(_OPTIMIZERS)}"
        )
    fmax = _positive_float(fmax, "fmax")
    max_steps = _positive_int(max_steps, "max_steps")
    frames_per_relaxation = _positive_int(frames_per_relaxation, "frames_per_relaxation")
    _check_keys(energy_key, forces_key)

    def relaxation(start: _Start, n_missing: int) -> Iterator[Atoms]:
        """Relax one structure; yield up to ``n_missing`` evenly spaced frames of its path."""
        info = {"config_type": "relaxation", "optimizer": optimizer, "relaxation": start.index}
        path: list[Atoms] = []
        converged = False
        relaxer = _OPTIMIZERS[optimizer](start.atoms, logfile=None)
        with _single_threaded_blas():
            for step_converged in relaxer.irun(fmax=fmax, steps=max_steps):
                path.append(_labelled_frame(start.atoms, start.fixed, info, energy_key, forces_key))
                converged = step_converged
        n_steps = len(path) - 1
        wanted = min(frames_per_relaxation, n_missing)
        if n_steps == 0:  # converged at once: the (rattled) start is already relaxed
            chosen = [0]
        else:
            chosen = np.unique(np.rint(np.linspace(0, n_steps, wanted + 1)[1:]).astype(int))
        for step in chosen:
            frame = path[int(step)]
            frame.info.update(
                relax_step=int(step), relax_n_steps=n_steps, converged=bool(converged)
            )
            yield frame

    desc = progress_desc or f"EMT {optimizer} relaxations"
    return _collect_frames(starts, relaxation, n_frames, desc, progress)


def make_initial_structures(
    metals: str | Iterable[str],
    adsorbates: str | Iterable[str],
    n: int,
    seed: int,
    *,
    exclude_pairs: Iterable[tuple[str, str]] = (),
    sites: Iterable[str] = SITES,
    rattle_stdev: float = 0.05,
    slab_size: tuple[int, int, int] = DEFAULT_SLAB_SIZE,
    vacuum: float = DEFAULT_VACUUM,
    n_fixed_layers: int = 1,
) -> list[Atoms]:
    """Return ``n`` unlabelled starting structures for a relaxation benchmark.

    Structure ``i`` uses the ``i``-th (metal, adsorbate) pair of the product (cycling), a random
    site and Gaussian displacements (``rattle_stdev`` Å) of its free atoms. The bottom
    ``n_fixed_layers`` layers carry a ``FixAtoms`` constraint (relax with any ASE optimizer as
    is). No calculator is attached. For combinations absent from the default training set use
    e.g. ``make_initial_structures(["Au"], ["OH", "CO"], n, seed)`` (see :data:`UNSEEN_PAIRS`).
    """
    pairs = _pairs(metals, adsorbates, exclude_pairs)
    starts = _starts(
        pairs, sites, seed, rattle_stdev, slab_size, vacuum, n_fixed_layers, shuffled=False
    )
    n = _positive_int(n, "n")
    structures: list[Atoms] = []
    for start in itertools.islice(starts, n):
        start.atoms.info["config_type"] = "initial"
        structures.append(start.atoms)
    return structures


def isolated_atom_energies(elements: str | Iterable[str]) -> dict[str, float]:
    """Return the EMT energy (eV) of each isolated atom, e.g. for MACE's ``--E0s``.

    EMT's reference is the bulk crystal, so these are positive (about the cohesive energies).
    MACE expects atomic numbers as keys: ``{ase.data.atomic_numbers[s]: e for s, e in ...}``.
    """
    symbols = _as_names(elements, "elements")
    energies = {}
    for symbol in symbols:
        if symbol not in EMT_ELEMENTS:
            raise LTAUInputError(
                f"element {symbol!r} is not supported by EMT; supported: {', '.join(EMT_ELEMENTS)}"
            )
        atom = Atoms(symbol, positions=[(0.0, 0.0, 0.0)], pbc=False)
        atom.calc = EMT()
        energies[symbol] = float(atom.get_potential_energy())
    return energies


def default_splits(
    seed: int = 0,
    *,
    n_train_md: int = 160,
    n_train_relaxation: int = 40,
    n_test_md: int = 80,
    n_test_relaxation: int = 20,
    n_shifted_hot: int = 60,
    n_shifted_unseen: int = 40,
    train_temperature_K: float = 300.0,
    shifted_temperature_K: float = 900.0,
    slab_size: tuple[int, int, int] = DEFAULT_SLAB_SIZE,
    energy_key: str = DEFAULT_ENERGY_KEY,
    forces_key: str = DEFAULT_FORCES_KEY,
    progress: bool = True,
) -> dict[str, list[Atoms]]:
    """Build the built-in dataset of ltau's demo: train / in-domain test / shifted test.

    * ``"train"``: MD at ``train_temperature_K`` plus relaxation frames, on
      :data:`DEFAULT_METALS` x :data:`DEFAULT_ADSORBATES` minus :data:`UNSEEN_PAIRS`.
    * ``"test_in_domain"``: the same distribution with independent random streams.
    * ``"test_shifted"``: MD of the training pairs at ``shifted_temperature_K``
      (``info["shift"] == "temperature"``) followed by MD at ``train_temperature_K`` of the
      :data:`UNSEEN_PAIRS` (``info["shift"] == "composition"``, elements all seen in training).

    Every frame has ``info["split"]`` and ``info["shift"]`` (``"none"`` outside the shifted set).
    With the defaults (3x3x3 slabs, 28-29 atoms) this is 200 / 100 / 100 configurations.
    """
    streams = iter(int(s) for s in _seed_sequence(seed).generate_state(6))
    common = {
        "slab_size": slab_size,
        "energy_key": energy_key,
        "forces_key": forces_key,
        "progress": progress,
    }
    seen = {
        "metals": DEFAULT_METALS,
        "adsorbates": DEFAULT_ADSORBATES,
        "exclude_pairs": UNSEEN_PAIRS,
    }
    splits: dict[str, list[Atoms]] = {}
    for name, n_md, n_relaxation in (
        ("train", n_train_md, n_train_relaxation),
        ("test_in_domain", n_test_md, n_test_relaxation),
    ):
        md = make_md_dataset(
            **seen,
            temperature_K=train_temperature_K,
            n_frames=n_md,
            seed=next(streams),
            progress_desc=f"{name}: MD",
            **common,
        )
        relaxation = make_relaxation_frames(
            **seen,
            n_frames=n_relaxation,
            seed=next(streams),
            progress_desc=f"{name}: relaxations",
            **common,
        )
        splits[name] = md + relaxation
    hot = make_md_dataset(
        **seen,
        temperature_K=shifted_temperature_K,
        n_frames=n_shifted_hot,
        seed=next(streams),
        progress_desc="test_shifted: hot MD",
        **common,
    )
    unseen = make_md_dataset(
        metals=_unique(metal for metal, _ in UNSEEN_PAIRS),
        adsorbates=_unique(adsorbate for _, adsorbate in UNSEEN_PAIRS),
        temperature_K=train_temperature_K,
        n_frames=n_shifted_unseen,
        seed=next(streams),
        progress_desc="test_shifted: unseen pairs",
        **common,
    )
    for frame in hot:
        frame.info["shift"] = "temperature"
    for frame in unseen:
        frame.info["shift"] = "composition"
    splits["test_shifted"] = hot + unseen
    for name, frames in splits.items():
        for frame in frames:
            frame.info["split"] = name
            frame.info.setdefault("shift", "none")
    return splits


def remove_one_atom(
    frames: Sequence[Atoms],
    remove: str,
    n: int,
    seed: int,
    *,
    energy_key: str = DEFAULT_ENERGY_KEY,
    forces_key: str = DEFAULT_FORCES_KEY,
) -> list[Atoms]:
    """``n`` of ``frames`` (labelled slabs of this module), each with one atom removed and
    relabelled by EMT: a vacancy (``remove="metal"``: a random free slab atom) or a
    radical-like adsorbate (``remove="adsorbate"``: a random atom of an adsorbate of two or
    more atoms; frames with a one-atom adsorbate are not eligible).

    The frames are a random choice (without replacement, in their original order) among the
    eligible ones; ``info["defect"]`` is ``"vacancy"`` or ``"radical"`` and
    ``info["removed_symbol"]`` names the atom removed. The fixed mask loses the atom's entry.
    """
    if remove not in ("metal", "adsorbate"):
        raise LTAUInputError(f"remove must be 'metal' or 'adsorbate'; got {remove!r}")
    n = _positive_int(n, "n")
    _check_keys(energy_key, forces_key)
    frames = list(frames)
    for index, frame in enumerate(frames):
        if not isinstance(frame, Atoms) or FIXED_KEY not in frame.arrays:
            raise LTAUInputError(
                f"frames[{index}] is not a labelled slab of ltau.demo.emt_data "
                f"(an ase.Atoms with a {FIXED_KEY!r} array)"
            )
    candidates = [_removable(frame, remove) for frame in frames]
    eligible = [index for index, mask in enumerate(candidates) if mask.any()]
    if len(eligible) < n:
        raise LTAUInputError(
            f"only {len(eligible)} of the {len(frames)} frames have a removable {remove} atom; "
            f"{n} were asked for"
        )
    rng = np.random.default_rng(_seed_sequence(seed))
    chosen = np.sort(rng.choice(len(eligible), size=n, replace=False))
    defect = "vacancy" if remove == "metal" else "radical"
    result = []
    for index in (eligible[int(c)] for c in chosen):
        frame = frames[index]
        removed = int(rng.choice(np.flatnonzero(candidates[index])))
        keep = np.arange(len(frame)) != removed
        atoms = Atoms(
            numbers=frame.numbers[keep],
            positions=frame.positions[keep],
            cell=frame.cell.copy(),
            pbc=frame.pbc.copy(),
            tags=frame.get_tags()[keep],
        )
        info = {key: value for key, value in frame.info.items() if key != energy_key}
        atoms.info.update(info)
        atoms.calc = EMT()
        labelled = _labelled_frame(
            atoms, frame.arrays[FIXED_KEY][keep], info, energy_key, forces_key
        )
        labelled.info.update(defect=defect, removed_symbol=frame.get_chemical_symbols()[removed])
        result.append(labelled)
    return result


def shifted_test_sets(
    in_domain: Sequence[Atoms],
    seed: int = 0,
    *,
    n_per_set: int = 15,
    train_temperature_K: float = 300.0,
    hot_temperatures_K: tuple[float, float] = (900.0, 1200.0),
    slab_size: tuple[int, int, int] = DEFAULT_SLAB_SIZE,
    energy_key: str = DEFAULT_ENERGY_KEY,
    forces_key: str = DEFAULT_FORCES_KEY,
    progress: bool = True,
) -> dict[str, list[Atoms]]:
    """Named, EMT-labelled shifted test sets of ``n_per_set`` frames each, beside those of
    :func:`default_splits` (``in_domain``: its ``"test_in_domain"`` frames), in the order of
    :data:`SHIFTED_SETS`:

    * ``"md_900K"`` / ``"md_1200K"``: MD of the training pairs at the hotter temperatures;
    * ``"unseen_pairs"``: MD at ``train_temperature_K`` of :data:`UNSEEN_PAIRS`;
    * ``"fcc100"``: MD at ``train_temperature_K`` of the training pairs on fcc(100) slabs;
    * ``"vacancies"`` / ``"radicals"``: in-domain frames with one free metal atom / one atom of
      a two-atom adsorbate removed (:func:`remove_one_atom`).

    Their random streams come from ``SeedSequence(seed, spawn_key=(1,))``, apart from those of
    :func:`default_splits` (``SeedSequence(seed)``), which stay as they were. Every frame has
    ``info["split"]`` = its set's name and ``info["shift"]`` = the kind of shift.
    """
    n_per_set = _positive_int(n_per_set, "n_per_set")
    if len(hot_temperatures_K) != 2:
        raise LTAUInputError(
            f"hot_temperatures_K must be two temperatures; got {hot_temperatures_K!r}"
        )
    root = np.random.SeedSequence(_non_negative_int(seed, "seed"), spawn_key=(1,))
    streams = iter(int(s) for s in root.generate_state(len(SHIFTED_SETS)))
    common = {
        "slab_size": slab_size,
        "energy_key": energy_key,
        "forces_key": forces_key,
        "progress": progress,
    }
    seen = {
        "metals": DEFAULT_METALS,
        "adsorbates": DEFAULT_ADSORBATES,
        "exclude_pairs": UNSEEN_PAIRS,
    }
    sets: dict[str, tuple[str, list[Atoms]]] = {}
    for name, temperature in zip(SHIFTED_SETS[:2], hot_temperatures_K, strict=True):
        frames = make_md_dataset(
            **seen,
            temperature_K=temperature,
            n_frames=n_per_set,
            seed=next(streams),
            progress_desc=f"{name}: MD",
            **common,
        )
        sets[name] = ("temperature", frames)
    sets["unseen_pairs"] = (
        "composition",
        make_md_dataset(
            metals=_unique(metal for metal, _ in UNSEEN_PAIRS),
            adsorbates=_unique(adsorbate for _, adsorbate in UNSEEN_PAIRS),
            temperature_K=train_temperature_K,
            n_frames=n_per_set,
            seed=next(streams),
            progress_desc="unseen_pairs: MD",
            **common,
        ),
    )
    sets["fcc100"] = (
        "facet",
        make_md_dataset(
            **seen,
            temperature_K=train_temperature_K,
            n_frames=n_per_set,
            seed=next(streams),
            facet="100",
            progress_desc="fcc100: MD",
            **common,
        ),
    )
    for name, remove in (("vacancies", "metal"), ("radicals", "adsorbate")):
        frames = remove_one_atom(
            in_domain,
            remove,
            n_per_set,
            next(streams),
            energy_key=energy_key,
            forces_key=forces_key,
        )
        sets[name] = ("vacancy" if remove == "metal" else "radical", frames)
    for name, (shift, frames) in sets.items():
        for frame in frames:
            frame.info["split"] = name
            frame.info["shift"] = shift
    return {name: frames for name, (_, frames) in sets.items()}


def write_extxyz(atoms_list: Atoms | Sequence[Atoms], path: str | os.PathLike) -> Path:
    """Write frames to an extended-XYZ file atomically and return its path.

    The frames go to a temporary file in the destination directory, which then replaces ``path``
    in one ``os.replace``: readers see the old file or the complete new one, never a partial one.
    """
    frames = [atoms_list] if isinstance(atoms_list, Atoms) else list(atoms_list)
    if not frames:
        raise LTAUInputError("atoms_list is empty: nothing to write")
    for index, frame in enumerate(frames):
        if not isinstance(frame, Atoms):
            raise LTAUInputError(
                f"atoms_list[{index}] is a {type(frame).__name__}, not an ase.Atoms"
            )
    with atomic_path(path) as temporary:
        ase.io.write(temporary, frames, format="extxyz")
    return Path(path)


# --------------------------------------------------------------------------------------------
# Building and labelling
# --------------------------------------------------------------------------------------------


class _Start(NamedTuple):
    """A new starting structure: its number, the atoms, their fixed mask and its own generator."""

    index: int
    atoms: Atoms
    fixed: np.ndarray
    rng: np.random.Generator


def _starts(
    pairs: list[tuple[str, str]],
    sites: Iterable[str],
    seed: object,
    rattle_stdev: object,
    slab_size: object,
    vacuum: object,
    n_fixed_layers: object,
    *,
    shuffled: bool,
    facet: object = "111",
) -> Iterator[_Start]:
    """Validate the other structure arguments now; return an endless stream of new structures.

    ``pairs`` (from :func:`_pairs`) come in shuffled cycles if ``shuffled`` (the first stream
    spawned from ``seed`` orders them), else in their own order. Every structure then spawns its
    own generator, which draws the site and the displacements of the free atoms. No calculator
    is attached. ``facet``: a key of :data:`FACETS`; ``sites`` None means all of its sites.
    """
    facet_name = _facet(facet)
    site_list = _sites(FACETS[facet_name] if sites is None else sites, facet_name)
    root = _seed_sequence(seed)
    rattle = _non_negative_float(rattle_stdev, "rattle_stdev")
    size = _slab_size(slab_size)
    vacuum_A = _positive_float(vacuum, "vacuum")
    n_fixed = _fixed_layers(n_fixed_layers, size)
    if shuffled:
        pair_order = _shuffled_cycles(pairs, np.random.default_rng(root.spawn(1)[0]))
    else:
        pair_order = itertools.cycle(pairs)

    def stream() -> Iterator[_Start]:
        """Build, in pair order, each structure with its own generator."""
        for index, (metal, adsorbate) in enumerate(pair_order):
            rng = np.random.default_rng(root.spawn(1)[0])
            site = site_list[int(rng.integers(len(site_list)))]
            atoms, fixed = _build_structure(
                metal, adsorbate, site, size, vacuum_A, n_fixed, facet_name
            )
            _displace(atoms, fixed, rattle, rng)
            yield _Start(index, atoms, fixed, rng)

    return stream()


def _collect_frames(
    starts: Iterator[_Start],
    sample: Callable[[_Start, int], Iterable[Atoms]],
    n_frames: int,
    desc: str,
    progress: bool,
) -> list[Atoms]:
    """Attach EMT to each start and gather ``sample(start, n_missing)`` until ``n_frames``."""
    frames: list[Atoms] = []
    with _progress_bar(n_frames, desc, progress) as bar:
        for start in starts:
            start.atoms.calc = EMT()
            for frame in sample(start, n_frames - len(frames)):
                frames.append(frame)
                bar.update(1)
            if len(frames) >= n_frames:
                break
    return frames


def _build_structure(
    metal: str,
    adsorbate: str,
    site: str,
    slab_size: tuple[int, int, int],
    vacuum: float,
    n_fixed_layers: int,
    facet: str = "111",
) -> tuple[Atoms, np.ndarray]:
    """Return the ideal slab + adsorbate (bottom layers under ``FixAtoms``) and its fixed mask."""
    slab = (fcc100 if facet == "100" else fcc111)(metal, size=slab_size, vacuum=vacuum)
    # Both builders tag layers 1 (top) ... n_layers (bottom); adsorbate atoms get tag 0.
    fixed_slab = slab.get_tags() > slab_size[2] - n_fixed_layers
    molecule = Atoms(
        [symbol for symbol, _ in ADSORBATES[adsorbate]],
        positions=[(0.0, 0.0, z) for _, z in ADSORBATES[adsorbate]],
    )
    add_adsorbate(slab, molecule, SITE_HEIGHTS[site], position=site)
    del slab.info["adsorbate_info"]  # a dict: extxyz cannot store it
    fixed = np.concatenate([fixed_slab, np.zeros(len(molecule), dtype=bool)])
    slab.set_constraint(FixAtoms(mask=fixed))
    slab.info.update(metal=metal, adsorbate=adsorbate, site=site)
    if facet != "111":  # fcc(111) frames carry no facet key, as before facets existed
        slab.info["facet"] = facet
    return slab, fixed


def _shuffled_cycles(
    pairs: list[tuple[str, str]], rng: np.random.Generator
) -> Iterator[tuple[str, str]]:
    """Yield every pair once per cycle, in a fresh random order each cycle (balanced coverage)."""
    while True:
        for index in rng.permutation(len(pairs)):
            yield pairs[int(index)]


def _displace(atoms: Atoms, fixed: np.ndarray, stdev: float, rng: np.random.Generator) -> None:
    """Add Gaussian displacements of ``stdev`` Å to the free atoms."""
    if stdev > 0:
        shift = rng.normal(0.0, stdev, size=(len(atoms), 3))
        shift[fixed] = 0.0
        atoms.set_positions(atoms.positions + shift, apply_constraint=False)


def _labelled_frame(
    atoms: Atoms, fixed: np.ndarray, info: dict, energy_key: str, forces_key: str
) -> Atoms:
    """Copy ``atoms`` (no calculator, no constraint) with its EMT energy and raw forces stored."""
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    frame = Atoms(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.copy(),
        pbc=atoms.pbc.copy(),
        tags=atoms.get_tags(),
    )
    frame.info.update({key: atoms.info[key] for key in ("metal", "adsorbate", "site")})
    if "facet" in atoms.info:
        frame.info["facet"] = atoms.info["facet"]
    frame.info.update(info)
    frame.info[energy_key] = energy
    frame.arrays[forces_key] = forces
    frame.arrays[FIXED_KEY] = fixed.copy()
    return frame


def _removable(frame: Atoms, remove: str) -> np.ndarray:
    """``(n_atoms,)`` bool: the atoms :func:`remove_one_atom` may remove from ``frame``."""
    adsorbate = frame.get_tags() == 0
    if remove == "metal":
        return ~adsorbate & ~frame.arrays[FIXED_KEY]
    return adsorbate if adsorbate.sum() >= 2 else np.zeros_like(adsorbate)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread if threadpoolctl is installed (else do nothing).

    BFGS diagonalises a (3N, 3N) Hessian every step; for N ~ 30 a multi-threaded OpenBLAS on a
    busy 2-core machine was measured 50-100x slower than one thread (50-130 ms against ~1 ms).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, delay=_PROGRESS_DELAY_S)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _as_names(values: str | Iterable[str], name: str) -> tuple[str, ...]:
    """Return a non-empty tuple of unique strings; a single string counts as one name."""
    if isinstance(values, str):
        values = (values,)
    try:
        names = _unique(values)
    except TypeError as exc:
        raise LTAUInputError(f"{name} must be a string or an iterable of strings") from exc
    if not names:
        raise LTAUInputError(f"{name} is empty")
    for value in names:
        if not isinstance(value, str):
            raise LTAUInputError(f"{name} must hold strings; got {value!r}")
    return names


def _check_metal(metal: str) -> None:
    if metal not in SLAB_METALS:
        hint = "" if metal in EMT_ELEMENTS else " (and not an EMT element)"
        raise LTAUInputError(
            f"unknown metal {metal!r}{hint}; supported slab metals: {', '.join(SLAB_METALS)}"
        )


def _check_adsorbate(adsorbate: str) -> None:
    if adsorbate not in ADSORBATES:
        raise LTAUInputError(
            f"unknown adsorbate {adsorbate!r}; supported adsorbates: {', '.join(ADSORBATES)}"
        )


def _pairs(
    metals: str | Iterable[str],
    adsorbates: str | Iterable[str],
    exclude_pairs: Iterable[tuple[str, str]],
) -> list[tuple[str, str]]:
    """Validate names and return the (metal, adsorbate) product minus ``exclude_pairs``."""
    metal_names = _as_names(metals, "metals")
    adsorbate_names = _as_names(adsorbates, "adsorbates")
    for metal in metal_names:
        _check_metal(metal)
    for adsorbate in adsorbate_names:
        _check_adsorbate(adsorbate)
    excluded = set()
    for pair in exclude_pairs:
        if isinstance(pair, str) or len(pair) != 2:
            raise LTAUInputError(f"exclude_pairs must hold (metal, adsorbate) pairs; got {pair!r}")
        _check_metal(pair[0])
        _check_adsorbate(pair[1])
        excluded.add(tuple(pair))
    pairs = [p for p in itertools.product(metal_names, adsorbate_names) if p not in excluded]
    if not pairs:
        raise LTAUInputError("exclude_pairs removes every (metal, adsorbate) combination")
    return pairs


def _sites(sites: Iterable[str], facet: str = "111") -> tuple[str, ...]:
    names = _as_names(sites, "sites")
    allowed = FACETS[facet]
    for site in names:
        if site not in allowed:
            raise LTAUInputError(
                f"unknown site {site!r} on fcc({facet}); supported sites: {', '.join(allowed)}"
            )
    return names


def _facet(facet: object) -> str:
    if not isinstance(facet, str) or facet not in FACETS:
        raise LTAUInputError(f"unknown facet {facet!r}; supported facets: {', '.join(FACETS)}")
    return facet


def _check_keys(energy_key: str, forces_key: str) -> None:
    for name, key in (("energy_key", energy_key), ("forces_key", forces_key)):
        if not isinstance(key, str) or not key or any(c.isspace() or c in "=\"'" for c in key):
            raise LTAUInputError(
                f"{name} must be a non-empty string without spaces, quotes or '='; got {key!r}"
            )
        if key in _RESERVED_KEYS:
            raise LTAUInputError(
                f"{name}={key!r} is reserved by ASE (extxyz would move it into a calculator or "
                f"the structure); use e.g. {'REF_' + key!r}"
            )


def _non_negative_float(value: object, name: str) -> float:
    return non_negative_number(value, name, "non-negative (a finite number)")


def _positive_float(value: object, name: str) -> float:
    return positive_number(value, name, "positive (a finite number)")


def _non_negative_int(value: object, name: str) -> int:
    return integer(value, name, 0, "non-negative (an integer)")


def _positive_int(value: object, name: str) -> int:
    return integer(value, name, 1, "an integer >= 1")


def _seed_sequence(seed: object) -> np.random.SeedSequence:
    return np.random.SeedSequence(_non_negative_int(seed, "seed"))


def _slab_size(size: object) -> tuple[int, int, int]:
    try:
        values = tuple(size)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    if len(values) != 3 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values
    ):
        raise LTAUInputError(
            f"slab_size must be three positive integers (nx, ny, layers); got {size!r}"
        )
    if values[2] < 2:
        raise LTAUInputError(f"slab_size needs at least 2 layers; got {size!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _fixed_layers(n_fixed_layers: object, slab_size: tuple[int, int, int]) -> int:
    value = _non_negative_int(n_fixed_layers, "n_fixed_layers")
    if value >= slab_size[2]:
        raise LTAUInputError(
            f"n_fixed_layers={value} must be smaller than the number of layers ({slab_size[2]})"
        )
    return value
