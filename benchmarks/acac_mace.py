"""LTAU-FF with MACE on real DFT data: acetylacetone (acac), end to end.

Train on train_300K (10% of it held out as the validation split that chooses k, fits the
calibration and sets atol), test on test_MD_300K (in-domain) and test_MD_600K (shifted); the
proton-transfer path and the dihedral scan (energies only) get OOD scores. Writes the report,
figures and metrics into --output-dir and prints a JSON object as its last line.

Usage::

    python benchmarks/acac_mace.py                 # about 10 minutes on 2 CPU cores
    python benchmarks/acac_mace.py --epochs 5 --output-dir /tmp/acac-quick
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import headline_metrics

from ltau.calibration import CALIBRATION_METHODS
from ltau.demo.forcefield import PipelineConfig, run_files
from ltau.integrations.mace import MACESettings

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "acac"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="acac dataset folder")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", choices=tuple(CALIBRATION_METHODS), default="isotonic")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).parent / "results" / "acac_mace"
    )
    args = parser.parse_args(argv)
    if not (args.data / "train_300K.xyz").exists():
        sys.exit(f"acac data not found in {args.data} (use --data)")
    tests = {
        "test_MD_300K": args.data / "test_MD_300K.xyz",
        "test_MD_600K": args.data / "test_MD_600K.xyz",
        "H_transfer": args.data / "test_H_transfer.xyz",
        "dihedral": args.data / "test_dihedral.xyz",
    }
    config = PipelineConfig(
        epochs=args.epochs,
        settings=MACESettings(seed=args.seed),
        calibration=args.calibration,
        in_domain="test_MD_300K",
        seed=args.seed,
    )
    report = run_files(
        args.output_dir,
        config,
        args.data / "train_300K.xyz",
        tests,
        energy_key="energy",
        forces_key="forces",
        isolated_atoms=args.data / "isolated_atoms.xyz",
    )
    summary = headline_metrics(
        report, "test_MD_300K", "test_MD_600K", ood_only=("H_transfer", "dihedral")
    )
    (args.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
