"""Error-log storage per atom-epoch, one writer and sharded over 1, 2 and 4 ranks, and what
float16 storage changes in the histograms, on real force errors.

A small MACE model is trained on acac (``train_300K.xyz``) with ltau's logging hook, which
writes the reference log (float32, one writer). Its epochs are then written again the way DDP
ranks write them: every epoch the configurations are shuffled and dealt round-robin to the
ranks (as a DistributedSampler does), each rank recording its configurations' atoms into its
own shard. For every storage option (float32 or float16, rows plain or gzip-compressed) it
reports the bytes per atom-epoch of all the files (shards and manifest; ``bytes_per_atom_epoch``)
and of the rows alone (``row_bytes_per_atom_epoch``, without each file's fixed overhead), and
the time per epoch written as a ratio to plain float32 in the same run, and the time to build
the distributions from each log as a ratio to the one-writer float32 log. The float16 histograms
(100 log bins spanning the float32 log's range) are compared with the float32 ones: the share of
observations counted in another bin, and the change in each atom's expected error and
P(error > atol).

    python benchmarks/log_storage.py --epochs 20 --configs 200

Figures go to ``benchmarks/results/log_storage.json``; the last stdout line is a compact JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import mace  # noqa: F401  (before anything imports e3nn)
import numpy as np
from tqdm.auto import tqdm

from ltau import ErrorLog, ErrorRecorder
from ltau.atomistic.structures import read_structures
from ltau.integrations.mace import MACESettings, train_mace
from ltau.sharded_log import new_log_id, open_error_log, shard_path, shard_recorder

OPTIONS = {
    "float32": ("float32", False),
    "float32+gzip": ("float32", True),
    "float16": ("float16", False),
    "float16+gzip": ("float16", True),
}


def reference_log(data: Path, n_configs: int, epochs: int, folder: Path, seed: int):
    """Train MACE on the first ``n_configs`` acac configurations, logging every atom's force
    error (eV/Å) each epoch; return the log's errors ``(epochs, n_atoms)`` and atom sizes."""
    structures = read_structures(
        data / "train_300K.xyz", energy_key="energy", forces_key="forces"
    ).subset(range(n_configs))
    path = folder / "reference.h5"
    with ErrorRecorder(structures.n_atoms, log_path=path) as recorder:
        train_mace(
            structures,
            epochs=epochs,
            settings=MACESettings(num_channels=16, seed=seed),
            recorder=recorder,
            progress=True,
        )
    with ErrorLog(path) as log:
        errors = log.to_array()
    sizes = np.diff(structures.index.offsets)
    return errors, sizes


def write_sharded(errors, sizes, world_size, dtype, compression, folder, seed):
    """Write ``errors`` as ``world_size`` ranks would; return (total bytes, row bytes,
    seconds spent writing epochs)."""
    manifest = folder / f"log-w{world_size}-{dtype}-{compression}.h5"
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    log_id = new_log_id()
    ranks = [
        shard_recorder(
            manifest,
            rank=rank,
            world_size=world_size,
            n_samples=errors.shape[1],
            log_id=log_id,
            dtype=dtype,
            compression=compression,
        )
        for rank in range(world_size)
    ]
    rng = np.random.default_rng(seed)
    seconds = 0.0
    for row in errors:
        order = rng.permutation(sizes.size)
        for rank, recorder in enumerate(ranks):
            configs = order[rank::world_size]
            ids = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in configs])
            started = time.perf_counter()
            recorder.record(ids, row[ids])
            recorder.end_epoch()
            seconds += time.perf_counter() - started
    for recorder in ranks:
        recorder.close()
    files = [manifest] + [shard_path(manifest, r, world_size) for r in range(world_size)]
    total = sum(path.stat().st_size for path in files)
    rows = 0
    for path in files[1:]:
        with h5py.File(path, "r") as handle:
            rows += handle["errors"].id.get_storage_size()
    return manifest, total, rows, seconds


def build_seconds(path: Path, repeats: int = 3) -> float:
    """Best of ``repeats`` times to build the distributions (default bins) from a log."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with open_error_log(path) as log:
            log.distributions()
        times.append(time.perf_counter() - started)
    return min(times)


def histogram_change(reference: Path, half: Path, atol: float) -> dict[str, float]:
    """float16 against float32 histograms on the float32 log's own bins."""
    with open_error_log(reference) as log:
        bins = log.bins(log.rows())
        exact = log.distributions(bins)
    with open_error_log(half) as log:
        rounded = log.distributions(bins)
    moved = int(np.abs(exact.counts.astype(np.int64) - rounded.counts).sum()) // 2
    expected, expected16 = exact.expected_error(), rounded.expected_error()
    relative = np.abs(expected16 - expected) / expected
    exceed = exact.exceedance(atol)
    exceed16 = rounded.exceedance(atol)
    return {
        "observations": int(exact.counts.sum()),
        "observations_in_another_bin": moved,
        "share_in_another_bin": moved / int(exact.counts.sum()),
        "expected_error_rel_change_max": float(relative.max()),
        "expected_error_rel_change_median": float(np.median(relative)),
        "exceedance_abs_change_max": float(np.abs(exceed16 - exceed).max()),
        "atol": atol,
        "bin_width_ratio": float(bins.edges[1] / bins.edges[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared/data/acac")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--atol", type=float, default=0.1, help="eV/Å, for P(error > atol)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        errors, sizes = reference_log(args.data, args.configs, args.epochs, folder, args.seed)
        atom_epochs = errors.size
        storage: dict[str, dict[str, dict[str, float]]] = {}
        logs: dict[tuple[int, str], Path] = {}
        plain_seconds: dict[int, float] = {}
        runs = [(w, name) for w in (1, 2, 4) for name in OPTIONS]
        for world_size, name in tqdm(runs, desc="writing logs", unit="log"):
            dtype, compression = OPTIONS[name]
            manifest, total, rows, seconds = write_sharded(
                errors, sizes, world_size, dtype, compression, folder, args.seed
            )
            logs[world_size, name] = manifest
            if name == "float32":
                plain_seconds[world_size] = seconds
            storage.setdefault(f"ranks_{world_size}", {})[name] = {
                "bytes_per_atom_epoch": total / atom_epochs,
                "row_bytes_per_atom_epoch": rows / atom_epochs,
                "write_time_vs_float32": seconds / plain_seconds[world_size],
            }
        build = {key: build_seconds(path) for key, path in logs.items()}
        for (world_size, name), seconds in build.items():
            storage[f"ranks_{world_size}"][name]["build_time_vs_one_writer_float32"] = (
                seconds / build[1, "float32"]
            )
        # The sharded float32 log is the reference's errors exactly; float16 is compared to it.
        with open_error_log(logs[4, "float32+gzip"]) as log:
            same = bool(np.array_equal(log.to_array(), errors))
        change = histogram_change(logs[1, "float32"], logs[4, "float16+gzip"], args.atol)
    results = {
        "n_atoms": int(errors.shape[1]),
        "n_epochs": int(errors.shape[0]),
        "errors_eV_per_A": {
            "min": float(errors.min()),
            "median": float(np.median(errors)),
            "max": float(errors.max()),
        },
        "storage": storage,
        "sharded_float32_equals_reference": same,
        "float16_histograms": change,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "log_storage.json").write_text(json.dumps(results, indent=2) + "\n")
    compact = {
        "n_atoms": results["n_atoms"],
        "n_epochs": results["n_epochs"],
        **{
            f"bytes_per_atom_epoch_{ranks}_{name}": round(values["bytes_per_atom_epoch"], 3)
            for ranks, options in storage.items()
            for name, values in options.items()
            if name in ("float32", "float16+gzip")
        },
        "float16_share_in_another_bin": round(change["share_in_another_bin"], 5),
        "float16_expected_error_rel_change_max": change["expected_error_rel_change_max"],
        "sharded_float32_equals_reference": same,
    }
    print(json.dumps(compact, separators=(",", ":")))


if __name__ == "__main__":
    main()
