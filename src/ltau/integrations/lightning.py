"""LTAU for any PyTorch Lightning regression model: a callback that records every training
sample's error at every epoch from the training step's own outputs.

The LightningModule's ``training_step`` returns a dict with the loss and the model's outputs
for the batch, e.g. ``{"loss": loss, "outputs": predictions}``; the callback computes the
per-sample errors from those outputs (no extra forward pass) with the same
:class:`~ltau.integrations.torch.SampleErrorLogger` that the plain loop uses, and closes the
recorder's epoch at the end of each training epoch.

>>> callback = LTAUCallback(recorder, error_fn=lambda out, y: (out - y).abs(),
...                         ids_fn=lambda batch: batch[2], layer="body")
>>> lightning.Trainer(max_epochs=50, callbacks=[callback]).fit(module, train_loader)
>>> descriptors = callback.descriptors(module, ordered_train_loader)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lightning
import numpy as np
import torch

from ltau.exceptions import LTAUInputError
from ltau.integrations.torch import (
    BatchFunction,
    ErrorFunction,
    SampleErrorLogger,
    default_inputs,
    default_targets,
)
from ltau.recording import ErrorRecorder


class LTAUCallback(lightning.Callback):
    """Record per-sample training errors into ``recorder``; arguments as for
    :class:`~ltau.integrations.torch.SampleErrorLogger`, plus ``outputs_key``: the entry of
    ``training_step``'s returned dict that holds the model's outputs."""

    def __init__(
        self,
        recorder: ErrorRecorder,
        *,
        error_fn: ErrorFunction,
        ids_fn: BatchFunction,
        targets_fn: BatchFunction = default_targets,
        layer: str | torch.nn.Module | None = None,
        member: int = 0,
        outputs_key: str = "outputs",
    ) -> None:
        super().__init__()
        self.logger = SampleErrorLogger(
            recorder,
            error_fn=error_fn,
            ids_fn=ids_fn,
            targets_fn=targets_fn,
            layer=layer,
            member=member,
        )
        self.outputs_key = outputs_key

    def on_train_batch_end(
        self,
        trainer: lightning.Trainer,
        pl_module: lightning.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not isinstance(outputs, Mapping) or self.outputs_key not in outputs:
            raise LTAUInputError(
                f"training_step must return a dict with 'loss' and {self.outputs_key!r} (the "
                "model's outputs for the batch), so that errors are recorded from them"
            )
        self.logger.record(outputs[self.outputs_key], batch)

    def on_train_epoch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self.logger.end_epoch()

    def descriptors(
        self,
        model: torch.nn.Module,
        batches: Iterable[Any],
        *,
        inputs_fn: BatchFunction = default_inputs,
        by_id: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Descriptors from the callback's layer; see :meth:`SampleErrorLogger.descriptors`."""
        return self.logger.descriptors(
            model, batches, inputs_fn=inputs_fn, by_id=by_id, progress=progress
        )


__all__ = ["LTAUCallback"]
