"""`ltau mace-train`: run mace's own trainer, ``mace_run_train``, recording every training
atom's force error per epoch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ltau.exceptions import LTAUInputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``mace-train`` subcommand to ``commands``."""
    parser = commands.add_parser(
        "mace-train",
        help="train with mace_run_train (any of its options) while recording per-atom errors",
        description="Run mace's own training (mace_run_train: its parser, data handling, model, "
        "loop, scheduler, EMA/SWA, checkpoints and outputs, unchanged) and record every "
        "training atom's force-error norm from each training step's own forward pass into "
        "LOG. Everything after '--' goes to mace_run_train. Not supported yet: --distributed, "
        "--lbfgs, preprocessed (.h5) training data.",
        usage="ltau mace-train --log LOG [--overwrite] [--member M] [--trust-model] -- "
        "MACE_RUN_TRAIN_ARGUMENTS",
    )
    parser.add_argument("--log", type=Path, required=True, help="error log to write (.h5)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing log")
    parser.add_argument(
        "--member",
        type=int,
        default=0,
        help="model number in the log; M > 0 adds another model's epochs to an existing log "
        "of the same training file (an ensemble or seeds, pooled per atom)",
    )
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="accept a --foundation_model that cannot be loaded without running code (mace "
        "unpickles it fully; only for files whose origin you trust)",
    )
    parser.add_argument("mace_arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Train with mace, recording into ``args.log``."""
    mace_arguments = list(args.mace_arguments)
    if mace_arguments[:1] == ["--"]:
        mace_arguments = mace_arguments[1:]
    if not mace_arguments:
        raise LTAUInputError("give mace_run_train's arguments after '--'")
    if args.member < 0:
        raise LTAUInputError(f"--member must be 0 or more; got {args.member}")
    try:
        from ltau.integrations.mace_train import run_mace_train
    except ImportError as exc:
        raise LTAUInputError(
            f"mace-train needs the 'mace' extra (pip install 'ltau[mace]'): {exc}"
        ) from exc
    run_mace_train(
        mace_arguments,
        args.log,
        member=args.member,
        overwrite=args.overwrite,
        trusted=args.trust_model,
    )
