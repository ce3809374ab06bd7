"""IS2RS-style benchmark: do LTAU's uncertainties predict where MACE-driven relaxations fail?

Everything is generated with ASE's EMT calculator as the oracle (no downloads):

* training data: fcc(111) slabs (3x3x3, bottom layer fixed) of Cu, Pt, Ni, Pd with H, O, OH,
  CO, N adsorbates, minus four held-out (metal, adsorbate) pairs; Langevin MD at 300, 600 and
  900 K plus frames along EMT relaxations;
* one MACE model (member 0) trained with per-atom error logging; LTAU fitted on its
  descriptors with k, the burn-in, the widening, the isotonic calibration and atol chosen on a
  10% validation split of the training data that holds out whole MD runs and relaxations
  (``ltau.atomistic.pipeline.fit_ltau``); M - 1 more members trained with
  other seeds on the same data for the ensemble baseline;
* test: initial structures of the training pairs (new random streams) and of the four held-out
  pairs, rattled by 0.1 Å, relaxed with member 0 + LTAU (FIRE, fmax 0.05 eV/Å, at most
  ``--steps`` steps) by ``ltau.atomistic.relaxation.relax``, every step written to extxyz and
  read back.

Along every trajectory the true per-atom force error ``||F_MACE - F_EMT||`` (eV/Å) is computed
with EMT. Reported:

* ``spearman_step_error``: Spearman of LTAU's predicted expected error and the true error over
  all atoms of all steps of all relaxations;
* failure prediction per relaxation, with two failure definitions fixed before any result was
  seen: (primary) the final structure's true EMT force on some moving atom exceeds
  ``FAILURE_FORCE`` = 0.2 eV/Å (4x the convergence criterion); (secondary) some moving atom of
  the final structure lies more than ``FAILURE_DISTANCE`` = 0.2 Å (minimum image) from the
  structure EMT reaches from the same start with the same optimizer. Scores, all at the final
  frame and maximised over the moving atoms (chosen a priori): LTAU's expected error, the
  ensemble spread ``sqrt(mean_m ||F_m - F_mean||^2)`` of the M members' forces
  (``_baselines.ensemble_force_spread``), and the OOD score (mean distance to
  the k nearest training atoms). AUROC and precision at recall 0.8 for each.

Usage::

    python benchmarks/relaxation.py
    python benchmarks/relaxation.py --epochs 2 --members 2 --n-seen 4 --n-unseen 4 --steps 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ase.io
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from _baselines import ensemble_force_spread
from ase.calculators.emt import EMT
from ase.data import atomic_numbers
from ase.geometry import find_mic
from ase.optimize import FIRE
from tqdm.auto import tqdm

from ltau import ErrorRecorder, metrics
from ltau.atomistic.pipeline import fit_ltau, split_validation
from ltau.atomistic.relaxation import relax
from ltau.atomistic.structures import read_structures
from ltau.demo.emt_data import (
    isolated_atom_energies,
    make_initial_structures,
    make_md_dataset,
    make_relaxation_frames,
)
from ltau.integrations.mace import LTAUCalculator, MACESettings, evaluate_mace, train_mace
from ltau.selection import burn_in_candidates

METALS = ("Cu", "Pt", "Ni", "Pd")
ADSORBATES = ("H", "O", "OH", "CO", "N")
UNSEEN = (("Ni", "CO"), ("Pd", "OH"), ("Cu", "N"), ("Pt", "O"))
FMAX = 0.05  # eV/Å, convergence criterion of the relaxations
FAILURE_FORCE = 0.2  # eV/Å, primary failure: true max force on a moving atom at the end
FAILURE_DISTANCE = 0.2  # Å, secondary failure: distance to the EMT-relaxed structure
RECALL = 0.8
RATTLE = 0.1  # Å, displacement of the initial structures
SCORES = ("ltau", "ensemble", "distance")


def training_data(seed: int, scale: float) -> list:
    """MD at 300/600/900 K and relaxation frames on the training pairs (EMT labels)."""
    streams = iter(int(s) for s in np.random.SeedSequence(seed).generate_state(4))
    common = {"exclude_pairs": UNSEEN, "progress": True}
    frames = []
    for temperature, n in ((300.0, 60), (600.0, 40), (900.0, 20)):
        frames += make_md_dataset(
            METALS, ADSORBATES, temperature, max(2, round(n * scale)), next(streams), **common
        )
    frames += make_relaxation_frames(
        METALS, ADSORBATES, max(2, round(40 * scale)), next(streams), **common
    )
    return frames


def initial_structures(seed: int, n_seen: int, n_unseen: int) -> list:
    """Initial structures: training pairs first, then the held-out pairs (``info['seen']``)."""
    seen_pairs = [(m, a) for m in METALS for a in ADSORBATES if (m, a) not in UNSEEN]
    structures = []
    for seen, pairs, n, stream in ((True, seen_pairs, n_seen, 1), (False, UNSEEN, n_unseen, 2)):
        for index in range(n):
            metal, adsorbate = pairs[index % len(pairs)]
            (atoms,) = make_initial_structures(
                metal, adsorbate, 1, seed * 1000 + stream * 100_000 + index, rattle_stdev=RATTLE
            )
            atoms.info["seen"] = seen
            structures.append(atoms)
    return structures


def moving_mask(atoms) -> np.ndarray:
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        free[constraint.index] = False
    return free


def emt_forces(atoms) -> np.ndarray:
    probe = atoms.copy()
    probe.set_constraint()
    probe.calc = EMT()
    return probe.get_forces()


def emt_relaxed(atoms, steps: int):
    reference = atoms.copy()
    reference.calc = EMT()
    FIRE(reference, logfile=None).run(fmax=FMAX, steps=steps)
    return reference


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ltau-relax-"))

    frames = training_data(args.seed, args.data_scale)
    train = read_structures(frames, energy_key="REF_energy", forces_key="REF_forces")
    fit_set, validation = split_validation(train, 0.1, args.seed)
    elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
    e0s = {atomic_numbers[e]: v for e, v in isolated_atom_energies(elements).items()}
    recorder = ErrorRecorder(fit_set.n_atoms, log_path=work / "errors.h5")
    members, train_seconds = [], []
    for member in range(args.members):
        tic = time.perf_counter()
        members.append(
            train_mace(
                fit_set,
                epochs=args.epochs,
                settings=replace(MACESettings(), seed=args.seed + member),
                isolated_atom_energies=e0s,
                recorder=recorder if member == 0 else None,
            )
        )
        train_seconds.append(time.perf_counter() - tic)
    model = members[0]
    candidates = burn_in_candidates(recorder)
    recorder.close()
    estimator, selection, atol = fit_ltau(
        evaluate_mace(model, fit_set).descriptors,
        candidates,
        evaluate_mace(model, validation),
        validation,
        "isotonic",
    )
    calculator = LTAUCalculator(model, estimator, atol=atol)

    starts = initial_structures(args.seed, args.n_seen, args.n_unseen)
    records = []
    relax_seconds = 0.0
    for index, start in enumerate(tqdm(starts, desc="MACE+LTAU relaxations", unit="relax")):
        atoms = start.copy()
        tic = time.perf_counter()
        result = relax(
            atoms,
            calculator,
            optimizer="FIRE",
            fmax=FMAX,
            steps=args.steps,
            trajectory=work / f"relax_{index:04d}.xyz",
        )
        relax_seconds += time.perf_counter() - tic
        records.append({"start": start, "result": result})

    step_predicted, step_true, step_spread, step_seen = [], [], [], []
    rows = []
    for index, record in enumerate(tqdm(records, desc="EMT along trajectories", unit="relax")):
        path = work / f"relax_{index:04d}.xyz"
        trajectory = ase.io.read(path, ":")
        free = moving_mask(trajectory[0])
        true_errors = np.stack(
            [np.linalg.norm(f.get_forces() - emt_forces(f), axis=1) for f in trajectory]
        )
        predicted = np.stack([f.arrays["ltau_expected_force_error"] for f in trajectory])
        labelled = read_structures(
            trajectory, energy_key=None, forces_key=None, require_forces=False
        )
        member_forces = [np.stack([f.get_forces() for f in trajectory]).reshape(-1, 3)]
        for other in members[1:]:
            member_forces.append(evaluate_mace(other, labelled).forces)
        spread = ensemble_force_spread(np.stack(member_forces)).reshape(true_errors.shape)
        seen = bool(record["start"].info["seen"])
        step_predicted.append(predicted.ravel())
        step_true.append(true_errors.ravel())
        step_spread.append(spread.ravel())
        step_seen.append(np.full(true_errors.size, seen))

        final = trajectory[-1]
        true_final_force = np.linalg.norm(emt_forces(final)[free], axis=1).max()
        reference = emt_relaxed(record["start"], steps=max(args.steps, 500))
        displacement, _ = find_mic(final.positions - reference.positions, final.cell, final.pbc)
        result = record["result"]
        rows.append(
            {
                "index": index,
                "metal": final.info["metal"],
                "adsorbate": final.info["adsorbate"],
                "seen": seen,
                "steps": result.n_steps,
                "converged": result.converged,
                "true_max_force_final": float(true_final_force),
                "distance_to_emt_relaxed": float(np.linalg.norm(displacement[free], axis=1).max()),
                "ltau": float(predicted[-1][free].max()),
                "ensemble": float(spread[-1][free].max()),
                "distance": float(final.arrays["ltau_ood_score"][free].max()),
                "true_max_error_final": float(true_errors[-1][free].max()),
                "predicted_max_error_path": result.maximum["expected_error"].tolist(),
                "true_max_error_path": true_errors[:, free].max(axis=1).tolist(),
            }
        )

    predicted_all = np.concatenate(step_predicted)
    true_all = np.concatenate(step_true)
    spread_all = np.concatenate(step_spread)
    seen_all = np.concatenate(step_seen)
    fail_force = np.array([r["true_max_force_final"] > FAILURE_FORCE for r in rows])
    fail_distance = np.array([r["distance_to_emt_relaxed"] > FAILURE_DISTANCE for r in rows])
    seen_rows = np.array([r["seen"] for r in rows])

    def failure_metrics(labels: np.ndarray, subset: np.ndarray | None = None) -> dict:
        subset = np.ones(labels.size, dtype=bool) if subset is None else subset
        out = {"n": int(subset.sum()), "failure_rate": float(labels[subset].mean())}
        for score in SCORES:
            values = np.array([r[score] for r in rows])[subset]
            both = labels[subset].any() and not labels[subset].all()
            out[f"auroc_{score}"] = metrics.auroc(values, labels[subset]) if both else None
            out[f"precision_at_recall_{score}"] = (
                metrics.precision_at_recall(values, labels[subset], RECALL)
                if labels[subset].any()
                else None
            )
        return out

    failure = {
        "force": {
            "all": failure_metrics(fail_force),
            "seen_pairs": failure_metrics(fail_force, seen_rows),
            "unseen_pairs": failure_metrics(fail_force, ~seen_rows),
        },
        "distance": {
            "all": failure_metrics(fail_distance),
            "seen_pairs": failure_metrics(fail_distance, seen_rows),
            "unseen_pairs": failure_metrics(fail_distance, ~seen_rows),
        },
    }
    primary = failure["force"]["all"]
    summary = {
        "n_relaxations": len(rows),
        "n_seen_pairs": int(seen_rows.sum()),
        "n_unseen_pairs": int((~seen_rows).sum()),
        "n_steps_total": int(sum(r["steps"] + 1 for r in rows)),
        "n_converged": int(sum(r["converged"] for r in rows)),
        "spearman_step_error": metrics.spearman(predicted_all, true_all),
        "spearman_step_error_seen": metrics.spearman(predicted_all[seen_all], true_all[seen_all]),
        "spearman_step_error_unseen": metrics.spearman(
            predicted_all[~seen_all], true_all[~seen_all]
        ),
        "spearman_step_error_ensemble": metrics.spearman(spread_all, true_all),
        "failure_definition": f"true EMT max force on a moving atom > {FAILURE_FORCE} eV/A "
        "at the final structure",
        "failure_rate": primary["failure_rate"],
        **{f"auroc_failure_{s}": primary[f"auroc_{s}"] for s in SCORES},
        **{
            f"precision_at_recall_{RECALL}_{s}": primary[f"precision_at_recall_{s}"] for s in SCORES
        },
        "members": args.members,
        "epochs": args.epochs,
    }
    details = {
        "summary": summary,
        "failure": failure,
        "settings": {
            "train_pairs": [f"{m}+{a}" for m in METALS for a in ADSORBATES if (m, a) not in UNSEEN],
            "unseen_pairs": [f"{m}+{a}" for m, a in UNSEEN],
            "n_train_configs": len(fit_set.atoms),
            "n_validation_configs": len(validation.atoms),
            "fmax_eV_per_A": FMAX,
            "max_steps": args.steps,
            "rattle_A": RATTLE,
            "failure_force_eV_per_A": FAILURE_FORCE,
            "failure_distance_A": FAILURE_DISTANCE,
            "scores": "final frame, max over moving atoms: LTAU expected error (calibrated), "
            "ensemble spread, OOD score",
        },
        "chosen_on_validation": {
            "k": estimator.n_neighbors,
            "skip_epochs": selection["skip_epochs"],
            "distance_scale": selection["distance_scale"],
            "cv_crps": selection["cv_crps"],
            "atol_eV_per_A": atol,
        },
        "timing_seconds": {
            "train_per_member": train_seconds,
            "relaxations": relax_seconds,
            "total": time.perf_counter() - started,
        },
        "relaxations": rows,
    }
    (output_dir / "results.json").write_text(json.dumps(details, indent=1))
    figures(rows, fail_force, output_dir)
    return summary


def figures(rows: list[dict], failed: np.ndarray, output_dir: Path) -> None:
    """Predicted vs true max error per relaxation; error along a few trajectories."""
    true = np.array([r["true_max_error_final"] for r in rows])
    seen = np.array([r["seen"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, score, label in zip(
        axes,
        SCORES,
        ("LTAU max expected error (eV/Å)", "ensemble max spread (eV/Å)", "max OOD score"),
        strict=True,
    ):
        values = np.array([r[score] for r in rows])
        ax.scatter(values[seen], true[seen], s=14, label="training pairs")
        ax.scatter(values[~seen], true[~seen], s=14, marker="^", label="held-out pairs")
        ax.axhline(FAILURE_FORCE, color="grey", ls="--", lw=1)
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.set_xscale("log")
    axes[0].set_ylabel("true max force error, final frame (eV/Å)")
    axes[0].legend()
    fig.suptitle(f"one point per relaxation; dashed: failure threshold {FAILURE_FORCE} eV/Å")
    fig.tight_layout()
    fig.savefig(output_dir / "final_predicted_vs_true.png", dpi=120)
    plt.close(fig)

    # the first two relaxations of each group, and the first two failures among the rest
    picks = [*np.flatnonzero(seen)[:2], *np.flatnonzero(~seen)[:2]]
    picks += [i for i in np.flatnonzero(failed) if i not in picks][:2]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.3 * len(picks), 3.2), squeeze=False)
    for ax, index in zip(axes[0], picks, strict=True):
        row = rows[index]
        ax.plot(row["true_max_error_path"], ".-", ms=3, label="true (EMT)")
        ax.plot(row["predicted_max_error_path"], ".-", ms=3, label="LTAU expected")
        ax.set_title(f"{row['metal']}+{row['adsorbate']} ({'seen' if row['seen'] else 'held out'})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    axes[0][0].set_ylabel("max force error, moving atoms (eV/Å)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(output_dir / "trajectories.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--members", type=int, default=3, help="ensemble size M (incl. model 0)")
    parser.add_argument("--n-seen", type=int, default=64, help="relaxations of training pairs")
    parser.add_argument("--n-unseen", type=int, default=48, help="relaxations of held-out pairs")
    parser.add_argument("--steps", type=int, default=150, help="maximum FIRE steps")
    parser.add_argument("--data-scale", type=float, default=1.0, help="training set size factor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", default=str(Path(__file__).parent / "results" / "relaxation")
    )
    summary = run(parser.parse_args())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
