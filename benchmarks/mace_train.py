"""`ltau mace-train` against plain `mace_run_train`, side by side, then `ltau run` on the model.

On acac train_300K (450 + 50 configurations; mace holds out 10% for validation), with the same
mace arguments and seed (the project's small MACE: 32 channels, max_L 0, 2 interactions,
float32, CPU), plain `mace_run_train` and `ltau mace-train` run in turn, ``--repeats`` times
each (ABAB...), one at a time. Epoch times are read the same way for both, from the
timestamps of mace's own "Epoch N" log lines (training plus validation of one epoch), so the
ratio compares like with like. Then `ltau run` fits, calibrates and evaluates LTAU for the last
model `ltau mace-train` wrote, on test_MD_300K (in-domain) and test_MD_600K (shifted).

The last line printed is a JSON object with ``logging_overhead`` (median epoch time with
ltau / without, minus 1; target at most 0.02), the epoch times behind it, and the headline
metrics of `ltau run`. Results go to --output-dir (default benchmarks/results/mace_train).

Usage::

    python benchmarks/mace_train.py                        # about 10 minutes on 2 cores
    python benchmarks/mace_train.py --epochs 3 --repeats 1 --output-dir /tmp/mt   # smallest
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
from _common import headline_metrics

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
EPOCH_LINE = re.compile(r"^(\S+ \S+) INFO: Epoch (\d+):")
E0S = "{1: -13.568422178253735, 6: -1026.8538996116154, 8: -2037.796869412825}"
"""The acac isolated-atom energies (eV), from isolated_atoms.xyz."""

logger = logging.getLogger("benchmarks.mace_train")


def mace_arguments(name: str, train: Path, epochs: int, seed: int) -> list[str]:
    """The same mace_run_train arguments for both runs."""
    return [
        *("--name", name, "--train_file", str(train), "--valid_fraction", "0.1"),
        *("--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", E0S),
        *("--model", "MACE", "--num_channels", "32", "--max_L", "0", "--num_interactions", "2"),
        *("--correlation", "3", "--r_max", "5.0", "--batch_size", "10"),
        *("--max_num_epochs", str(epochs), "--seed", str(seed), "--device", "cpu"),
        *("--default_dtype", "float32", "--eval_interval", "1"),
    ]


def epoch_seconds(log_file: Path) -> list[float]:
    """Seconds between consecutive "Epoch N" lines of a mace log."""
    stamps = []
    for line in log_file.read_text().splitlines():
        found = EPOCH_LINE.match(line)
        if found:
            stamps.append(datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


def write_labelled(source: Path, target: Path) -> Path:
    """The acac file with its labels under REF_ keys, as mace reads them."""
    frames = ase.io.read(source, ":")
    for atoms in frames:
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
    ase.io.write(target, frames, format="extxyz")
    return target


def run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed:\n{result.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "mace_train"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    work = args.output_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    train = write_labelled(args.data / "train_300K.xyz", work / "train_300K.xyz")
    tests = {
        name: write_labelled(args.data / f"{name}.xyz", work / f"{name}.xyz")
        for name in ("test_MD_300K", "test_MD_600K")
    }
    ltau = [sys.executable, "-m", "ltau.cli"]
    times: dict[str, list[float]] = {"plain": [], "ltau": []}
    for repeat in range(args.repeats):
        for kind in ("plain", "ltau"):
            name = f"{kind}{repeat}"
            mace = mace_arguments(name, train, args.epochs, args.seed)
            if kind == "plain":
                command = [str(Path(sys.executable).parent / "mace_run_train"), *mace]
            else:
                command = [*ltau, "-q", "mace-train", "--log", f"{name}.h5", "--overwrite"]
                command += ["--", *mace]
            logger.info("repeat %d: %s", repeat, kind)
            run(command, work)
            times[kind] += epoch_seconds(work / "logs" / f"{name}_run-{args.seed}.log")
    last = f"ltau{args.repeats - 1}"
    run(
        [
            *(*ltau, "-q", "run", "--model", f"{last}.model", "--log", f"{last}.h5"),
            *("--train", str(train), "--output-dir", str(args.output_dir)),
            *(f"--test=test_MD_300K={tests['test_MD_300K']}",),
            *(f"--test=test_MD_600K={tests['test_MD_600K']}",),
        ],
        work,
    )
    report = json.loads((args.output_dir / "metrics.json").read_text())
    plain, recorded = float(np.median(times["plain"])), float(np.median(times["ltau"]))
    summary = {
        "logging_overhead": recorded / plain - 1.0,
        "epoch_seconds_plain_median": plain,
        "epoch_seconds_ltau_median": recorded,
        "epoch_seconds_plain": times["plain"],
        "epoch_seconds_ltau": times["ltau"],
        "logging_share_own_timer": report["training"]["logging_overhead"],
        "epochs": args.epochs,
        "repeats": args.repeats,
        **{
            f"ltau_run_{key}": value
            for key, value in headline_metrics(report, "test_MD_300K", "test_MD_600K").items()
        },
    }
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
