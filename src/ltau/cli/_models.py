"""Options shared by the subcommands that run a model: the model file, its device and trust."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ltau.exceptions import LTAUInputError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--head`` and ``--trust-model``."""
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="model file: a mace .model (mace_run_train), a NequIP model (nequip-package's "
        ".nequip.zip, a nequip-train checkpoint, nequip-compile's .nequip.pth or .nequip.pt2), "
        "ltau's own MACE or NequIP file, or a deployed TorchScript model",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (cpu)")
    parser.add_argument("--head", help="head of a multihead mace model (default: its last)")
    parser.add_argument(
        "--trust-model",
        action="store_true",
        help="let the model file run code when it cannot be loaded safely, as nequip packages, "
        "checkpoints and AOTInductor files must (only for files whose origin you trust)",
    )


def check_device(device: str) -> str:
    """``device`` if torch knows it and it is present here (``cpu``, ``cuda``, ``cuda:1``...)."""
    import torch

    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LTAUInputError(f"--device {device!r} is not a torch device: {exc}") from exc
    if found.type == "cuda" and not torch.cuda.is_available():
        raise LTAUInputError(f"--device {device!r}: no CUDA device is available here")
    return device


def load_model(args: argparse.Namespace) -> Any:
    """The :class:`~ltau.integrations.models.ForceField` the model options name."""
    try:
        from ltau.integrations.models import load_forcefield
    except ImportError as exc:
        raise LTAUInputError(
            f"running a model needs torch (the 'mace' or 'nequip' extra): {exc}"
        ) from exc
    return load_forcefield(args.model, device=args.device, trusted=args.trust_model, head=args.head)
