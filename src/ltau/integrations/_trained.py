"""What the force-field integrations' trained-model classes share: training timings and the
torch model file they are saved in."""

from __future__ import annotations

import os
from typing import Any

import torch

from ltau.exceptions import LTAUFileError


class TrainingTimes:
    """Mixin for a dataclass with ``epoch_seconds`` and ``logging_seconds`` (lists of float):
    wall time of each training epoch and the part of it spent recording errors."""

    epoch_seconds: list[float]
    logging_seconds: list[float]

    @property
    def logging_overhead(self) -> float:
        """Time spent recording errors as a fraction of the training time without it."""
        total, logging = sum(self.epoch_seconds), sum(self.logging_seconds)
        return logging / (total - logging) if total > logging else float("nan")


def read_model_file(path: str | os.PathLike, file_format: str, writer: str) -> dict[str, Any]:
    """The dict saved by ``torch.save`` in ``path`` (a trusted file: torch unpickles it), which
    must carry ``"format": file_format``; ``writer`` names the method that writes such files."""
    try:
        payload = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:
        raise LTAUFileError(f"{path} is not a readable model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise LTAUFileError(f"{path} was not written by {writer}")
    return payload
