"""Active learning with the EMT oracle: LTAU-driven selection against distance and random.

Data (ltau's built-in EMT generator, :func:`ltau.demo.emt_data.default_splits`): the tests are
the seed's in-domain and shifted sets (hotter MD and unseen metal/adsorbate pairs); the
candidate pool is another seed's training and shifted sets (MD at the training and the hot
temperature, relaxations, unseen pairs), its labels dropped; the first labelled set is a
random draw of ``--initial`` configurations of the seed's training set (topped up until
it holds every element).

Each round trains one MACE model on the labelled set (its validation split held out, by whole
MD runs), measures the force RMSE (eV/Å) of both tests, picks ``--batch`` pool structures by
the rule, labels them with EMT and adds them. Rules:

* ``ltau``: the structure's predicted error (largest atom expected force error) of an LTAU
  estimator fitted and calibrated with every choice (k, burn-in, distance scale, widening,
  isotonic map) made on the validation split (:func:`ltau.atomistic.pipeline.fit_ltau`),
  through :func:`ltau.atomistic.active_learning.select_structures`;
* ``distance``: the largest atom OOD score (mean distance to the k nearest training atoms,
  with LTAU's validated k and distance scale), from an uncalibrated estimator;
* ``random``: a uniform draw.

Compute is counted per rule as wall seconds of training, selection (model evaluation of the
pool and scoring) and EMT labelling, all measured in the same run. The last stdout line is a
JSON object: per rule, the final test RMSEs, the area under the learning curve (mean RMSE over
the rounds, trapezoidal in labelled configurations) and the compute, averaged over seeds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import mace  # noqa: F401  (must be imported before e3nn)
import matplotlib
import numpy as np
from ase.calculators.emt import EMT
from ase.data import atomic_numbers
from tqdm.auto import tqdm

from ltau import ErrorRecorder, LTAUEstimator
from ltau.atomistic.active_learning import select_structures
from ltau.atomistic.pipeline import fit_ltau, split_validation
from ltau.atomistic.structures import read_structures
from ltau.demo.emt_data import default_splits, isolated_atom_energies
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace
from ltau.integrations.models import load_forcefield
from ltau.selection import burn_in_candidates

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RULES = ("ltau", "distance", "random")
KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces"}
TINY = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4)


def build_data(seed: int, scale: float, slab: tuple[int, int, int], n_initial: int) -> dict:
    """The first labelled frames, the unlabelled pool and the two test sets."""
    sizes = {
        name: max(2, round(scale * value))
        for name, value in {
            "n_train_md": 160,
            "n_train_relaxation": 40,
            "n_test_md": 80,
            "n_test_relaxation": 20,
            "n_shifted_hot": 60,
            "n_shifted_unseen": 40,
        }.items()
    }
    own = default_splits(seed, slab_size=slab, progress=False, **sizes)
    other = default_splits(seed + 1000, slab_size=slab, progress=False, **sizes)
    pool = []
    for frame in other["train"] + other["test_shifted"]:
        frame = frame.copy()
        frame.info.pop("REF_energy", None)
        frame.arrays.pop("REF_forces", None)
        pool.append(frame)
    # a random draw, topped up so that every training element is labelled from the start
    everything = {s for frame in own["train"] for s in frame.get_chemical_symbols()}
    needed = {s for frame in pool + own["test_shifted"] for s in frame.get_chemical_symbols()}
    if not needed <= everything:
        raise SystemExit(
            f"the training set has no {sorted(needed - everything)}: raise --data-scale"
        )
    initial, seen = [], set()
    for i in np.random.default_rng(seed).permutation(len(own["train"])):
        symbols = set(own["train"][i].get_chemical_symbols())
        if len(initial) < n_initial or not symbols <= seen:
            initial.append(own["train"][i])
            seen |= symbols
        if len(initial) >= n_initial and seen == everything:
            break
    return {
        "initial": initial,
        "pool": pool,
        "tests": {
            "in_domain": read_structures(own["test_in_domain"], **KEYS),
            "shifted": read_structures(own["test_shifted"], **KEYS),
        },
    }


def label(atoms):
    """EMT energy and forces of ``atoms`` as the reference labels."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    atoms.info["REF_energy"] = atoms.get_potential_energy()
    atoms.arrays["REF_forces"] = atoms.get_forces()
    atoms.calc = None
    return atoms


def fit_and_validation(frames: list, seed: int):
    """A validation split (whole runs) whose fit part has every element of the labelled set."""
    structures = read_structures(frames, **KEYS)
    elements = set(structures.atomic_numbers.tolist())
    for attempt in range(20):
        fit_set, validation = split_validation(structures, 0.15, seed + attempt)
        if set(fit_set.atomic_numbers.tolist()) == elements:
            return fit_set, validation
    raise RuntimeError("no validation split leaves every element in the fit set")


def rmse(trained, tests: dict) -> dict:
    """Test force RMSE (eV/Å) per test set."""
    return {
        name: float(np.sqrt(np.mean(evaluate_mace(trained, s).force_errors ** 2)))
        for name, s in tests.items()
    }


def pick(rule: str, forcefield, fit_set, validation, recorder, pool, batch, rng):
    """Pool positions of the ``batch`` structures ``rule`` picks."""
    known = set(forcefield.elements)
    usable = [i for i, atoms in enumerate(pool) if set(atoms.get_chemical_symbols()) <= known]
    if rule == "random":
        return [usable[i] for i in rng.choice(len(usable), batch, replace=False)]
    descriptors = forcefield.evaluate(fit_set).descriptors
    candidates = burn_in_candidates(recorder, n_bins=60)
    estimator, chosen, _ = fit_ltau(
        descriptors, candidates, forcefield.evaluate(validation), validation
    )
    if rule == "distance":
        estimator = LTAUEstimator(chosen["k"], distance_scale=chosen["distance_scale"]).fit(
            descriptors, candidates[chosen["skip_epochs"]]
        )
    score_rule = "expected_error" if rule == "ltau" else "structure_ood"
    picked = select_structures(
        estimator, forcefield, [pool[i] for i in usable], batch, rule=score_rule
    )
    return [usable[i] for i in picked.indices]


def run_rule(rule: str, data: dict, args, seed: int, work: Path, bar) -> dict:
    """One rule's learning curve: labelled configurations, RMSEs and seconds per round."""
    labelled, pool = list(data["initial"]), list(data["pool"])
    rng = np.random.default_rng(seed)
    settings = TINY if args.tiny_model else MACESettings()
    elements = sorted({s for a in labelled + pool for s in a.get_chemical_symbols()})
    e0s = {atomic_numbers[e]: v for e, v in isolated_atom_energies(elements).items()}
    curve = {"n_labelled": [], "in_domain": [], "shifted": [], "seconds": []}
    spent = 0.0
    for round_ in range(args.rounds + 1):
        started = time.perf_counter()
        fit_set, validation = fit_and_validation(labelled, seed + round_)
        log = work / f"{rule}_errors.h5"
        recorder = ErrorRecorder(fit_set.n_atoms, log_path=log, overwrite=True)
        trained = train_mace(
            fit_set,
            epochs=args.epochs,
            settings=replace(settings, seed=seed + round_),
            isolated_atom_energies=e0s,
            recorder=recorder,
            progress=False,
        )
        spent += time.perf_counter() - started
        errors = rmse(trained, data["tests"])
        curve["n_labelled"].append(len(labelled))
        curve["in_domain"].append(errors["in_domain"])
        curve["shifted"].append(errors["shifted"])
        curve["seconds"].append(spent)
        bar.update()
        if round_ == args.rounds:
            recorder.close()
            break
        started = time.perf_counter()
        trained.save(work / f"{rule}_model.pt")
        forcefield = load_forcefield(work / f"{rule}_model.pt")
        chosen = pick(rule, forcefield, fit_set, validation, recorder, pool, args.batch, rng)
        recorder.close()
        labelled += [label(pool[i]) for i in chosen]
        pool = [atoms for i, atoms in enumerate(pool) if i not in set(chosen)]
        spent += time.perf_counter() - started
    return curve


def area(curve: dict, name: str) -> float:
    """Mean RMSE over the labelled range (trapezoidal area divided by the range), eV/Å."""
    x, y = np.asarray(curve["n_labelled"], float), np.asarray(curve[name])
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if x[-1] > x[0] else float(y[0])


def summarise(per_seed: list[dict]) -> dict:
    """Per rule, the seed means of the final RMSEs, learning-curve areas and compute."""
    summary = {}
    for rule in per_seed[0]:
        curves = [seed[rule] for seed in per_seed]
        summary[rule] = {
            "final_rmse_in_domain": float(np.mean([c["in_domain"][-1] for c in curves])),
            "final_rmse_shifted": float(np.mean([c["shifted"][-1] for c in curves])),
            "area_in_domain": float(np.mean([area(c, "in_domain") for c in curves])),
            "area_shifted": float(np.mean([area(c, "shifted") for c in curves])),
            "compute_seconds": float(np.mean([c["seconds"][-1] for c in curves])),
            "n_labelled_final": int(curves[0]["n_labelled"][-1]),
        }
    return summary


def figure(per_seed: list[dict], path: Path) -> None:
    """Test force RMSE against labelled configurations, per rule (seed mean)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for rule in per_seed[0]:
        x = per_seed[0][rule]["n_labelled"]
        for axis, name in zip(axes, ("in_domain", "shifted"), strict=True):
            y = np.mean([seed[rule][name] for seed in per_seed], axis=0)
            axis.plot(x, y, marker="o", label=rule)
            axis.set_title(f"test {name.replace('_', '-')}")
            axis.set_xlabel("labelled configurations")
    axes[0].set_ylabel("force RMSE (eV/Å)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10, help="structures picked per round")
    parser.add_argument("--initial", type=int, default=20, help="first labelled set")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data-scale", type=float, default=1.0, help="EMT set size factor")
    parser.add_argument("--slab", type=int, nargs=3, default=[3, 3, 3])
    parser.add_argument("--tiny-model", action="store_true", help="8-channel MACE (checks)")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "active_learning"
    )
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    per_seed = []
    bar = tqdm(total=len(args.seeds) * len(args.rules) * (args.rounds + 1), unit="round")
    for seed in args.seeds:
        data = build_data(seed, args.data_scale, tuple(args.slab), args.initial)
        per_seed.append(
            {rule: run_rule(rule, data, args, seed, args.output_dir, bar) for rule in args.rules}
        )
    bar.close()
    summary = summarise(per_seed)
    figure(per_seed, args.output_dir / "learning_curves.png")
    (args.output_dir / "results.json").write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items()},
                "curves": per_seed,
                "summary": summary,
            },
            indent=1,
        )
    )
    print(
        f"{'rule':10s} {'RMSE in':>9s} {'RMSE shift':>10s} {'area in':>9s} {'area shift':>10s} "
        f"{'seconds':>8s}"
    )
    for rule, row in summary.items():
        print(
            f"{rule:10s} {row['final_rmse_in_domain']:9.4f} {row['final_rmse_shifted']:10.4f} "
            f"{row['area_in_domain']:9.4f} {row['area_shifted']:10.4f} "
            f"{row['compute_seconds']:8.1f}"
        )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
