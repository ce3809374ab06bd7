"""What LTAU adds to a force-field call: the ASE calculator on one small structure (an MD step)
and the batched prediction, against the MACE model's own forward, measured in one run.

The model and estimator are the demo's configuration: ltau's small MACE (default
``MACESettings``) trained with error logging on acetylacetone (``/work/shared/data/acac``,
15 atoms per structure), ``LTAUEstimator(distance_scale="local")`` on the training atoms'
descriptors and error distributions, calibrated (isotonic, with the distance widening, the
structures as groups) on held-out structures; or ``--model`` / ``--estimator`` files.

Measurements (every one interleaved, ABAB..., medians):

* **MD step**: ``atoms.get_forces()`` on successive frames of an MD trajectory, once with
  :class:`ltau.integrations.mace.LTAUCalculator` and once with the same calculator reduced to
  the model's forward (``ForwardOnly``: the same ASE plumbing and ``evaluate_model``, without
  the estimator). LTAU's added time per call is the median of the paired differences;
  ``ltau_share_md_step`` divides it by the forward's median. Measured on a quiet machine and
  again while a child process keeps one core busy (``*_loaded``; torch then on one thread:
  on both cores its forward waits seconds for the busy one). The search alone
  (``kneighbors``) is also timed with FAISS on one thread and on all threads.
  ``predict_alone_us`` is ``LTAUEstimator.predict`` on one step's descriptors called again
  and again (warm caches), for comparison with the added time right after a forward.
* **Batched**: ``evaluate_mace`` on ``--batch-structures`` structures (the forward, batches of
  20) against ``LTAUEstimator.predict`` on all their atoms at once, per atom.
* **Search by training-set size** (``search_by_training_size``): one MD step's 15 queries
  against synthetic clustered descriptors of the estimator's size, 1e3 to 1e5 items, exact and
  HNSW (``M=32, ef_search=64``) on one FAISS thread, with HNSW's recall@k: the measurement
  behind ``index="auto"`` (:data:`ltau.search.AUTO_EXACT_LIMIT`).

``--size mace_run_train`` trains the size of model ``mace_run_train`` builds by default
(128 channels, ``128x0e + 128x1o`` hidden irreps) instead of ltau's small demo MACE.

The last line printed is a JSON object with the results (also written to ``--output``).

Usage::

    flock /tmp/ltau-cpu.lock python benchmarks/inference.py
    python benchmarks/inference.py --model model.pt --estimator estimator.h5 --structure s.xyz
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ase.io
import faiss
import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from tqdm.auto import tqdm

from ltau import ErrorRecorder, LTAUEstimator
from ltau.atomistic.structures import read_isolated_atom_energies, read_structures
from ltau.integrations.mace import (
    LTAUCalculator,
    MACESettings,
    TrainedMACE,
    evaluate_mace,
    train_mace,
)
from ltau.search import NeighborIndex, index_kind_for, serial_faiss

DATA = Path("/work/shared/data/acac")
logger = logging.getLogger("inference")


class ForwardOnly(LTAUCalculator):
    """The LTAU calculator without the estimator: ASE plumbing plus the model's forward."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        Calculator.calculate(self, atoms, properties, system_changes)
        output = self.evaluate_model(self.atoms, compute_stress=bool(self.atoms.pbc.all()))
        self.results = {
            "energy": float(output.energy),
            "free_energy": float(output.energy),
            "forces": np.asarray(output.forces, dtype=np.float64),
        }


MODEL_SIZES = {
    "demo": MACESettings(),
    "mace_run_train": MACESettings(num_channels=128, max_L=1),
}
"""ltau's small demo MACE, and the size ``mace_run_train`` builds by default."""


def train_demo(
    n_train: int, n_validation: int, epochs: int, settings: MACESettings
) -> tuple[TrainedMACE, LTAUEstimator]:
    """The demo's configuration on acetylacetone: MACE of ``settings``, then a local-scale,
    widened and isotonically calibrated estimator."""
    frames = read_structures(DATA / "train_300K.xyz")
    fit_set = frames.subset(range(n_train))
    validation = frames.subset(range(n_train, n_train + n_validation))
    e0s = read_isolated_atom_energies(DATA / "isolated_atoms.xyz", energy_key="energy")
    with (
        tempfile.TemporaryDirectory() as folder,
        ErrorRecorder(fit_set.n_atoms, log_path=Path(folder) / "errors.h5") as recorder,
    ):
        trained = train_mace(
            fit_set,
            epochs=epochs,
            settings=settings,
            isolated_atom_energies=e0s,
            recorder=recorder,
            progress=False,
        )
        distributions = recorder.distributions(n_bins=100)
    training = evaluate_mace(trained, fit_set)
    estimator = LTAUEstimator(10, distance_scale="local").fit(training.descriptors, distributions)
    held_out = evaluate_mace(trained, validation)
    estimator.calibrate(
        held_out.descriptors,
        held_out.force_errors,
        groups=validation.index.configuration_of_atoms,
        widen=True,
    )
    return trained, estimator


def interleaved(calls: list[Callable[[], None]], repeats: int) -> np.ndarray:
    """Seconds of each call ``(repeats, len(calls))``, the order reversed every repeat."""
    times = np.empty((repeats, len(calls)))
    for repeat in range(repeats):
        order = range(len(calls)) if repeat % 2 == 0 else reversed(range(len(calls)))
        for column in order:
            started = time.perf_counter()
            calls[column]()
            times[repeat, column] = time.perf_counter() - started
    return times


def md_step(
    trained: TrainedMACE,
    estimator: LTAUEstimator,
    frames: list[Atoms],
    repeats: int,
) -> dict:
    """Per-call times of the forward and the LTAU calculator (µs) and LTAU's share."""
    atoms = frames[0].copy()
    forward, ltau = ForwardOnly(trained, estimator), LTAUCalculator(trained, estimator)
    step = iter(range(10**9))

    def call(calculator: Calculator) -> Callable[[], None]:
        def run() -> None:
            atoms.positions = frames[next(step) % len(frames)].positions
            atoms.calc = calculator
            atoms.get_forces()

        return run

    interleaved([call(forward), call(ltau)], 10)  # warm-up
    times = interleaved([call(forward), call(ltau)], repeats) * 1e6
    forward_us = float(np.median(times[:, 0]))
    added_us = float(np.median(times[:, 1] - times[:, 0]))
    descriptors = forward.evaluate_model(atoms, compute_stress=False).descriptors
    groups = np.zeros(len(atoms), dtype=np.int64)
    search = interleaved(
        [
            lambda: estimator.kneighbors(descriptors),
            lambda: _threaded_search(estimator, descriptors),
            lambda: estimator.predict(descriptors, groups=groups, atol=ltau.atol),
        ],
        repeats,
    )
    return {
        "n_atoms": len(atoms),
        "forward_us": forward_us,
        "ltau_calculator_us": float(np.median(times[:, 1])),
        "ltau_added_us": added_us,
        "ltau_share": added_us / forward_us,
        "kneighbors_us": float(np.median(search[:, 0]) * 1e6),
        "kneighbors_all_threads_us": float(np.median(search[:, 1]) * 1e6),
        "predict_alone_us": float(np.median(search[:, 2]) * 1e6),
    }


def _threaded_search(estimator: LTAUEstimator, descriptors: np.ndarray) -> None:
    """The FAISS search of ``kneighbors`` on FAISS's own thread count (no serial setting)."""
    estimator.index_._index.search(descriptors, estimator.n_neighbors)


def batched(
    trained: TrainedMACE, estimator: LTAUEstimator, path: Path, n_structures: int, repeats: int
) -> dict:
    """Per-atom times (µs) of the batched forward and of ``predict`` on the same atoms."""
    structures = read_structures(ase.io.read(path, index=f":{n_structures}"))
    descriptors = evaluate_mace(trained, structures).descriptors
    groups = structures.index.configuration_of_atoms
    times = interleaved(
        [
            lambda: evaluate_mace(trained, structures),
            lambda: estimator.predict(descriptors, groups=groups, atol=0.1),
            lambda: estimator.kneighbors(descriptors),
        ],
        repeats,
    )
    per_atom = np.median(times, axis=0) * 1e6 / structures.n_atoms
    return {
        "n_atoms": structures.n_atoms,
        "forward_us_per_atom": float(per_atom[0]),
        "predict_us_per_atom": float(per_atom[1]),
        "kneighbors_us_per_atom": float(per_atom[2]),
        "ltau_share": float(per_atom[1] / per_atom[0]),
    }


def search_by_training_size(dim: int, k: int, sizes: tuple[int, ...], repeats: int) -> list:
    """Per-call search time (µs) of 15 queries, exact and HNSW, and HNSW's recall@k, over
    synthetic clustered descriptors of ``dim`` features, one FAISS thread."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(200, dim))
    rows = []
    for n_items in tqdm(sizes, desc="search by training-set size"):
        items = (centres[rng.integers(0, 200, n_items)] + rng.normal(size=(n_items, dim))).astype(
            np.float32
        )
        step = (items[:15] + rng.normal(scale=0.3, size=(15, dim))).astype(np.float32)
        exact = NeighborIndex("exact").build(items)
        hnsw = NeighborIndex("hnsw", {"M": 32, "ef_search": 64}).build(items)
        times = interleaved(
            [partial(exact.search, step, k), partial(hnsw.search, step, k)], repeats
        )
        probes = (
            items[rng.integers(0, n_items, 500)] + rng.normal(scale=0.3, size=(500, dim))
        ).astype(np.float32)
        found, truth = hnsw.search(probes, k)[1], exact.search(probes, k)[1]
        recall = np.mean([np.intersect1d(a, b).size / k for a, b in zip(found, truth, strict=True)])
        rows.append(
            {
                "n_items": n_items,
                "exact_us": float(np.median(times[:, 0]) * 1e6),
                "hnsw_us": float(np.median(times[:, 1]) * 1e6),
                "hnsw_recall_at_k": float(recall),
                "auto_chooses": index_kind_for("auto", n_items),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a TrainedMACE file (default: train one)")
    parser.add_argument("--estimator", type=Path, help="an LTAUEstimator file for --model")
    parser.add_argument("--structure", type=Path, default=DATA / "test_MD_300K.xyz")
    parser.add_argument("--train-structures", type=int, default=100)
    parser.add_argument("--validation-structures", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=300, help="MD-step calls per calculator")
    parser.add_argument("--batch-structures", type=int, default=100)
    parser.add_argument("--batch-repeats", type=int, default=5)
    parser.add_argument("--save", type=Path, help="write the trained model and estimator here")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="demo", help="model size")
    parser.add_argument(
        "--search-sizes",
        type=int,
        nargs="*",
        default=[1000, 3000, 10000, 30000, 100000],
        help="training-set sizes of the search measurement (none: skip it)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if (args.model is None) != (args.estimator is None):
        parser.error("--model and --estimator go together")
    if args.model is None:
        logger.info("training the demo model and estimator on acetylacetone")
        trained, estimator = train_demo(
            args.train_structures, args.validation_structures, args.epochs, MODEL_SIZES[args.size]
        )
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            trained.save(args.save / "model.pt")
            estimator.save(args.save / "estimator.h5", {"model_sha256": trained.fingerprint})
    else:
        trained, estimator = TrainedMACE.load(args.model), LTAUEstimator.load(args.estimator)
    frames = ase.io.read(args.structure, index=":")
    logger.info("MD step, quiet")
    quiet = md_step(trained, estimator, frames, args.repeats)
    logger.info("MD step, one core kept busy")
    # torch on every core waits for the busy one (seconds per call): the loaded run gives
    # the model one thread, as a shared machine would.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        loaded = md_step(trained, estimator, frames, args.repeats)
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(torch_threads)
    logger.info("batched")
    batch = batched(trained, estimator, args.structure, args.batch_structures, args.batch_repeats)
    with serial_faiss(1):
        by_size = search_by_training_size(
            estimator.n_features_in_, estimator.n_neighbors, tuple(args.search_sizes), 200
        )
    results = {
        "ltau_share_md_step": quiet["ltau_share"],
        "ltau_share_md_step_loaded": loaded["ltau_share"],
        "ltau_share_batched": batch["ltau_share"],
        "md_step": quiet,
        "md_step_loaded": loaded,
        "batched": batch,
        "search_by_training_size": by_size,
        "model_channels": trained.settings.num_channels,
        "model_max_L": trained.settings.max_L,
        "training_atoms": estimator.index_.n_items,
        "descriptor_dim": estimator.n_features_in_,
        "n_neighbors": estimator.n_neighbors,
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch_threads": torch_threads,
        "torch_threads_loaded": 1,
    }
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
