"""Active learning with the EMT oracle: which rule picks the configurations worth labelling.

Data (ltau's built-in EMT generator, :func:`ltau.demo.emt_data.default_splits`): the tests are
the seed's in-domain and shifted sets (hotter MD and unseen metal/adsorbate pairs); the
candidate pool is another seed's training and shifted sets (MD at the training and the hot
temperature, relaxations, unseen pairs), its labels dropped; the first labelled set is a
random draw of ``--initial`` configurations of the seed's training set (topped up until
it holds every element).

Each round trains on the labelled set (its validation split held out, by whole MD runs),
measures the force RMSE (eV/Å) of one model on both tests, picks ``--batch`` pool structures
by the rule, labels them with EMT and adds them. Rules (a structure's score is its largest
atom score unless said otherwise):

* ``ltau``: the structure's predicted error (largest atom expected force error) of an LTAU
  estimator fitted and calibrated with every choice (k, burn-in, distance scale, widening,
  isotonic map) made on the validation split (:func:`ltau.atomistic.pipeline.fit_ltau`),
  through :func:`ltau.atomistic.active_learning.select_structures`;
* ``ensemble``: the spread of ``--members`` models trained on the same labelled set with
  different seeds, ``sqrt(mean_m ||F_m - F_mean||^2)`` (eV/Å); the RMSE reported is its
  first member's (trained as the other rules' one model is), the ensemble mean's beside it;
* ``gmm``: the latent GMM of Zhu et al. (2023) (``_single_model_baselines.gmm_latent``,
  components per element by validation NLL), an atom's negative log-likelihood less the mean
  NLL of its element's training atoms (so that elements compare);
* ``distance``: the mean distance to the k nearest training atoms, with LTAU's validated k and
  distance scale, from an uncalibrated estimator;
* ``random``: a uniform draw.

Compute is counted per rule as wall seconds of training, selection (model evaluation of the
pool and scoring) and EMT labelling, and as the number of models trained; a round's point is
the compute spent through that round, its picking and labelling of the next batch included. ``--jobs`` runs
(seed, rule) jobs in that many processes of one torch thread each, so all rules are timed in
the same run under the same load. The last stdout line is a JSON object: per rule, the final
test RMSEs, the area under the learning curve (mean RMSE over the labelled range,
trapezoidal) and the compute, averaged over seeds, with the compute as a ratio to the
ensemble rule's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import mace  # noqa: F401  (must be imported before e3nn)
import matplotlib
import numpy as np
import torch
from _single_model_baselines import gmm_latent
from ase.calculators.emt import EMT
from ase.data import atomic_numbers
from tqdm.auto import tqdm

from ltau import ErrorRecorder, LTAUEstimator
from ltau.atomistic.active_learning import select_structures
from ltau.atomistic.pipeline import fit_ltau, split_validation
from ltau.atomistic.structures import LabelledStructures, read_structures
from ltau.demo.emt_data import default_splits, isolated_atom_energies
from ltau.integrations.mace import MACESettings, evaluate_mace, train_mace
from ltau.integrations.models import load_forcefield
from ltau.selection import burn_in_candidates

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RULES = ("ltau", "ensemble", "gmm", "distance", "random")
KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces"}
TINY = MACESettings(r_max=4.0, num_channels=8, mlp_channels=8, batch_size=4)
MEMBER_SEED_STRIDE = 1000  # ensemble member m of round r trains with seed + r + m * stride


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


def rmse(force_errors: np.ndarray) -> float:
    """Root mean square of force-error norms (eV/Å)."""
    return float(np.sqrt(np.mean(np.asarray(force_errors) ** 2)))


def largest_per_structure(atom_scores: np.ndarray, structures: LabelledStructures) -> np.ndarray:
    """Each structure's largest atom score ``(n_structures,)`` from ``(n_atoms,)``."""
    groups = structures.index.configuration_of_atoms
    scores = np.full(len(structures.atoms), -np.inf)
    np.maximum.at(scores, groups, atom_scores)
    return scores


def top(scores: np.ndarray, batch: int) -> list[int]:
    """Positions of the ``batch`` highest scores, best first (ties: earlier position)."""
    return np.argsort(-scores, kind="stable")[:batch].tolist()


def ensemble_spread(members: list, structures: LabelledStructures) -> np.ndarray:
    """Per-atom force spread ``sqrt(mean_m ||F_m - F_mean||^2)`` (eV/Å) of the members."""
    forces = np.stack([evaluate_mace(m, structures).forces for m in members])
    return np.sqrt(np.mean(np.sum((forces - forces.mean(axis=0)) ** 2, axis=2), axis=0))


def gmm_scores(trained, fit_set, validation, structures: LabelledStructures, seed: int):
    """Per-atom NLL of the latent GMM, less the mean NLL of the element's training atoms."""
    train_descriptors = evaluate_mace(trained, fit_set).descriptors
    held_out = evaluate_mace(trained, validation)
    gmm = gmm_latent(
        train_descriptors,
        held_out.descriptors,
        held_out.force_errors,
        train_elements=fit_set.atomic_numbers,
        validation_elements=validation.atomic_numbers,
        seed=seed,
        without_validation="bic",
    )
    train_nll = gmm.score(train_descriptors, fit_set.atomic_numbers)
    offset = {z: train_nll[fit_set.atomic_numbers == z].mean() for z in gmm.mixtures}
    nll = gmm.score(evaluate_mace(trained, structures).descriptors, structures.atomic_numbers)
    return nll - np.array([offset[z] for z in structures.atomic_numbers.tolist()])


def pick(rule: str, models: list, model_file: Path, data: dict, batch: int, seed: int, rng):
    """Pool positions of the ``batch`` structures of ``data["pool"]`` that ``rule`` picks;
    ``data`` also holds this round's ``fit_set``, ``validation`` and ``recorder``."""
    pool, fit_set, validation = data["pool"], data["fit_set"], data["validation"]
    if rule == "random":
        return rng.choice(len(pool), batch, replace=False).tolist()
    pool_structures = LabelledStructures([atoms.copy() for atoms in pool])
    if rule == "ensemble":
        spread = ensemble_spread(models, pool_structures)
        return top(largest_per_structure(spread, pool_structures), batch)
    if rule == "gmm":
        scores = gmm_scores(models[0], fit_set, validation, pool_structures, seed)
        return top(largest_per_structure(scores, pool_structures), batch)
    models[0].save(model_file)
    forcefield = load_forcefield(model_file)
    descriptors = forcefield.evaluate(fit_set).descriptors
    candidates = burn_in_candidates(data["recorder"], n_bins=60)
    estimator, chosen, _ = fit_ltau(
        descriptors, candidates, forcefield.evaluate(validation), validation
    )
    if rule == "distance":
        estimator = LTAUEstimator(chosen["k"], distance_scale=chosen["distance_scale"]).fit(
            descriptors, candidates[chosen["skip_epochs"]]
        )
    score_rule = "expected_error" if rule == "ltau" else "structure_ood"
    return select_structures(estimator, forcefield, pool, batch, rule=score_rule).indices.tolist()


def train_round(rule: str, fit_set, args, seed: int, e0s: dict, log: Path):
    """The models ``rule`` trains in one round (the recorded one first) and the recorder."""
    settings = TINY if args.tiny_model else MACESettings()
    recorder = None
    if rule in ("ltau", "distance"):
        recorder = ErrorRecorder(fit_set.n_atoms, log_path=log, overwrite=True)
    n_models = args.members if rule == "ensemble" else 1
    models = [
        train_mace(
            fit_set,
            epochs=args.epochs,
            settings=replace(settings, seed=seed + m * MEMBER_SEED_STRIDE),
            isolated_atom_energies=e0s,
            recorder=recorder if m == 0 else None,
            progress=False,
        )
        for m in range(n_models)
    ]
    return models, recorder


def run_rule(job: tuple) -> tuple[int, str, dict]:
    """One (seed, rule) learning curve: labelled configurations, RMSEs and compute per round."""
    seed, rule, data, args, work = job
    torch.set_num_threads(args.threads)
    labelled, pool = list(data["initial"]), list(data["pool"])
    rng = np.random.default_rng(seed)
    elements = sorted({s for a in labelled + pool for s in a.get_chemical_symbols()})
    e0s = {atomic_numbers[e]: v for e, v in isolated_atom_energies(elements).items()}
    curve = {"n_labelled": [], "in_domain": [], "shifted": [], "seconds": [], "models": []}
    if rule == "ensemble":
        curve |= {"in_domain_ensemble_mean": [], "shifted_ensemble_mean": []}
    spent, trained_models = 0.0, 0
    for round_ in range(args.rounds + 1):
        started = time.perf_counter()
        fit_set, validation = fit_and_validation(labelled, seed + round_)
        log = work / f"seed{seed}_{rule}_errors.h5"
        models, recorder = train_round(rule, fit_set, args, seed + round_, e0s, log)
        trained_models += len(models)
        spent += time.perf_counter() - started
        curve["n_labelled"].append(len(labelled))
        for name, test in data["tests"].items():
            evaluations = [evaluate_mace(m, test) for m in models]
            curve[name].append(rmse(evaluations[0].force_errors))
            if rule == "ensemble":
                mean_forces = np.mean([e.forces for e in evaluations], axis=0)
                curve[f"{name}_ensemble_mean"].append(
                    rmse(np.linalg.norm(mean_forces - test.forces, axis=1))
                )
        if round_ < args.rounds:
            started = time.perf_counter()
            model_file = work / f"seed{seed}_{rule}_model.pt"
            state = {"pool": pool, "fit_set": fit_set, "validation": validation}
            state["recorder"] = recorder
            chosen = pick(rule, models, model_file, state, args.batch, seed + round_, rng)
            labelled += [label(pool[i]) for i in chosen]
            pool = [atoms for i, atoms in enumerate(pool) if i not in set(chosen)]
            spent += time.perf_counter() - started
        if recorder is not None:
            recorder.close()
        curve["seconds"].append(spent)
        curve["models"].append(trained_models)
    return seed, rule, curve


def area(curve: dict, name: str) -> float:
    """Mean RMSE over the labelled range (trapezoidal area divided by the range), eV/Å."""
    x, y = np.asarray(curve["n_labelled"], float), np.asarray(curve[name])
    return float(np.trapezoid(y, x) / (x[-1] - x[0])) if x[-1] > x[0] else float(y[0])


def summarise(per_seed: dict[int, dict]) -> dict:
    """Per rule, the seed means of the final RMSEs, learning-curve areas and compute."""
    summary = {}
    rules = next(iter(per_seed.values()))
    for rule in rules:
        curves = [seed[rule] for seed in per_seed.values()]
        summary[rule] = {
            "final_rmse_in_domain": float(np.mean([c["in_domain"][-1] for c in curves])),
            "final_rmse_shifted": float(np.mean([c["shifted"][-1] for c in curves])),
            "final_rmse_in_domain_per_seed": [c["in_domain"][-1] for c in curves],
            "final_rmse_shifted_per_seed": [c["shifted"][-1] for c in curves],
            "area_in_domain": float(np.mean([area(c, "in_domain") for c in curves])),
            "area_shifted": float(np.mean([area(c, "shifted") for c in curves])),
            "compute_seconds": float(np.mean([c["seconds"][-1] for c in curves])),
            "models_trained": int(curves[0]["models"][-1]),
            "n_labelled_final": int(curves[0]["n_labelled"][-1]),
        }
        if rule == "ensemble":
            for name in ("in_domain", "shifted"):
                summary[rule][f"final_rmse_{name}_ensemble_mean"] = float(
                    np.mean([c[f"{name}_ensemble_mean"][-1] for c in curves])
                )
    if "ensemble" in summary:
        for row in summary.values():
            row["compute_ratio_to_ensemble"] = (
                row["compute_seconds"] / summary["ensemble"]["compute_seconds"]
            )
    return summary


def figure(per_seed: dict[int, dict], path: Path) -> None:
    """Test force RMSE against labelled configurations and against compute (seed means)."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    rules = next(iter(per_seed.values()))
    for rule in rules:
        curves = [seed[rule] for seed in per_seed.values()]
        labelled = curves[0]["n_labelled"]
        seconds = np.mean([c["seconds"] for c in curves], axis=0)
        for column, name in enumerate(("in_domain", "shifted")):
            y = np.mean([c[name] for c in curves], axis=0)
            axes[0, column].plot(labelled, y, marker="o", label=rule)
            axes[1, column].plot(seconds, y, marker="o", label=rule)
            axes[0, column].set_title(f"test {name.replace('_', '-')}")
            axes[0, column].set_xlabel("labelled configurations")
            axes[1, column].set_xlabel("compute (s: training, selection, labelling)")
            axes[1, column].set_xscale("log")
    for row in axes:
        row[0].set_ylabel("force RMSE (eV/Å)")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10, help="structures picked per round")
    parser.add_argument("--initial", type=int, default=20, help="first labelled set")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--members", type=int, default=5, help="ensemble size (ensemble rule)")
    parser.add_argument("--data-scale", type=float, default=1.0, help="EMT set size factor")
    parser.add_argument("--slab", type=int, nargs=3, default=[3, 3, 3])
    parser.add_argument("--tiny-model", action="store_true", help="8-channel MACE (checks)")
    parser.add_argument("--jobs", type=int, default=1, help="(seed, rule) jobs run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "active_learning"
    )
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error("--members must be at least 2")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    datasets = {
        seed: build_data(seed, args.data_scale, tuple(args.slab), args.initial)
        for seed in tqdm(args.seeds, desc="EMT data", unit="seed")
    }
    # the ensemble's jobs are the longest: start them first
    order = sorted(args.rules, key=lambda rule: rule != "ensemble")
    jobs = [(s, r, datasets[s], args, args.output_dir) for r in order for s in args.seeds]
    per_seed: dict[int, dict] = {seed: {} for seed in args.seeds}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(run_rule, job) for job in jobs]
        for future in tqdm(
            as_completed(futures), total=len(jobs), desc="learning curves", unit="curve"
        ):
            seed, rule, curve = future.result()
            per_seed[seed][rule] = curve
    per_seed = {s: {r: per_seed[s][r] for r in args.rules} for s in args.seeds}
    summary = summarise(per_seed)
    figure(per_seed, args.output_dir / "learning_curves.png")
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.output_dir / "results.json").write_text(
        json.dumps({"settings": settings, "curves": per_seed, "summary": summary}, indent=1)
    )
    header = f"{'rule':10s} {'RMSE in':>9s} {'RMSE shift':>10s} {'area in':>9s} {'area shift':>10s}"
    print(f"{header} {'seconds':>8s} {'models':>6s}")
    for rule, row in summary.items():
        print(
            f"{rule:10s} {row['final_rmse_in_domain']:9.4f} {row['final_rmse_shifted']:10.4f} "
            f"{row['area_in_domain']:9.4f} {row['area_shifted']:10.4f} "
            f"{row['compute_seconds']:8.1f} {row['models_trained']:6d}"
        )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
