"""LTAU-FF with NequIP on real DFT data: acetylacetone (acac), end to end.

The acac pipeline of ``benchmarks/acac_mace.py`` with a small NequIP model trained by nequip's
own Lightning module and :class:`~ltau.integrations.nequip.LTAUErrorLogger`: train on
train_300K (10% held out as the validation split that chooses k, fits the calibration and sets
atol), test on test_MD_300K (in-domain) and test_MD_600K (shifted); the proton-transfer path and
the dihedral scan (energies only) get OOD scores. The logging overhead is measured two ways:
the callback's own time as a fraction of the epoch, and side by side, a few epochs trained
with and without the callback. Run it in the NequIP env (``scripts/setup_nequip.sh``); prints a
JSON object (the same keys as the MACE benchmark, plus the side-by-side timing) as its last line.

Usage::

    .venv-nequip/bin/python benchmarks/acac_nequip.py
    .venv-nequip/bin/python benchmarks/acac_nequip.py --epochs 3 --output-dir /tmp/acac-quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import headline_metrics

from ltau.atomistic.pipeline import run_pipeline, split_validation
from ltau.atomistic.structures import read_structures
from ltau.calibration import CALIBRATION_METHODS
from ltau.integrations.nequip import NequIPSettings, evaluate_nequip, train_nequip
from ltau.recording import ErrorLog

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"
TESTS = {
    "test_MD_300K": "test_MD_300K.xyz",
    "test_MD_600K": "test_MD_600K.xyz",
    "H_transfer": "test_H_transfer.xyz",
    "dihedral": "test_dihedral.xyz",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", choices=tuple(CALIBRATION_METHODS), default="isotonic")
    parser.add_argument(
        "--overhead-epochs", type=int, default=3, help="epochs of each side-by-side timing run"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "acac_nequip"
    )
    args = parser.parse_args(argv)
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    started = time.perf_counter()
    output_dir = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)

    train = read_structures(args.data / "train_300K.xyz")
    tests = {
        name: read_structures(args.data / file, energy_key=None, require_forces=False)
        for name, file in TESTS.items()
    }
    isolated = read_structures(
        args.data / "isolated_atoms.xyz", forces_key=None, require_forces=False
    )
    e0s = {
        int(a.numbers[0]): float(e) for a, e in zip(isolated.atoms, isolated.energies, strict=True)
    }
    fit_set, validation = split_validation(train, 0.1, args.seed)
    settings = NequIPSettings(seed=args.seed)

    trained, logger = train_nequip(
        fit_set,
        epochs=args.epochs,
        settings=settings,
        isolated_atom_energies=e0s,
        log_path=output_dir / "errors.h5",
        overwrite=True,
    )
    trained.save(output_dir / "model.pt")
    side_by_side = _side_by_side(fit_set, settings, e0s, args.overhead_epochs, output_dir)
    with ErrorLog(logger.log_path) as log:
        report = run_pipeline(
            lambda structures, progress: evaluate_nequip(trained, structures, progress=progress),
            log,
            fit_set,
            validation,
            tests,
            output_dir,
            training={
                "model": "NequIP (nequip 0.19, NequIPGNNModel)",
                "epoch_seconds_mean": float(np.mean(trained.epoch_seconds)),
                "logging_overhead": trained.logging_overhead,
                "side_by_side": side_by_side,
                "settings": vars(settings),
            },
            in_domain="test_MD_300K",
            calibration=args.calibration,
            title="LTAU-FF with NequIP on acetylacetone (acac)",
            started=started,
        )
    summary = headline_metrics(
        report, "test_MD_300K", "test_MD_600K", ood_only=("H_transfer", "dihedral")
    )
    summary["epoch_seconds_with_logger"] = side_by_side["epoch_seconds_with_logger"]
    summary["epoch_seconds_without_logger"] = side_by_side["epoch_seconds_without_logger"]
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def _side_by_side(fit_set, settings, e0s, epochs: int, output_dir: Path) -> dict:
    """Train ``epochs`` epochs with and without the logger, alternating, and compare the
    median epoch time (the first epoch of each run, with its warm-up, is left out)."""
    with_logger, without_logger = [], []
    for logged in (True, False, True, False):
        trained, _ = train_nequip(
            fit_set,
            epochs=epochs,
            settings=settings,
            isolated_atom_energies=e0s,
            log_path=output_dir / "timing_errors.h5" if logged else None,
            overwrite=True,
            progress=False,
        )
        (with_logger if logged else without_logger).extend(trained.epoch_seconds[1:])
    (output_dir / "timing_errors.h5").unlink()
    with_s, without_s = float(np.median(with_logger)), float(np.median(without_logger))
    return {
        "epoch_seconds_with_logger": with_s,
        "epoch_seconds_without_logger": without_s,
        "overhead_side_by_side": with_s / without_s - 1,
        "epochs_timed_each": len(with_logger),
    }


if __name__ == "__main__":
    main()
