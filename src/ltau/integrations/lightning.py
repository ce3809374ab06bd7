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

Under DDP (``strategy="ddp"``) every rank trains on its own share of the samples: give a
:class:`~ltau.sharded_log.ShardedLogSpec` instead of a recorder and each rank writes its own
shard of a sharded log (rank 0 also the manifest, with a log id it draws and broadcasts), read
as one log by :func:`ltau.sharded_log.open_error_log` and the ``ltau`` commands. Every training
sample must go to one rank per epoch: a DistributedSampler repeats samples to pad its last
batch unless the training set's size is a multiple of the world size (the reader names such
overlaps).

>>> callback = LTAUCallback(ShardedLogSpec("errors.h5", n_samples), error_fn=..., ids_fn=...)
>>> lightning.Trainer(strategy="ddp", devices=2, callbacks=[callback]).fit(module, loader)
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
    check_callables,
    default_inputs,
    default_targets,
)
from ltau.recording import ErrorRecorder
from ltau.sharded_log import ShardedLogSpec, new_log_id


class LTAUCallback(lightning.Callback):
    """Record per-sample training errors into ``recorder``; arguments as for
    :class:`~ltau.integrations.torch.SampleErrorLogger`, plus ``outputs_key``: the entry of
    ``training_step``'s returned dict that holds the model's outputs. With a
    :class:`~ltau.sharded_log.ShardedLogSpec` as ``recorder``, each rank's shard recorder is
    made when the trainer sets up fitting and closed when fitting ends."""

    def __init__(
        self,
        recorder: ErrorRecorder | ShardedLogSpec,
        *,
        error_fn: ErrorFunction,
        ids_fn: BatchFunction,
        targets_fn: BatchFunction = default_targets,
        layer: str | torch.nn.Module | None = None,
        member: int = 0,
        outputs_key: str = "outputs",
    ) -> None:
        super().__init__()
        self._options = {
            "error_fn": error_fn,
            "ids_fn": ids_fn,
            "targets_fn": targets_fn,
            "layer": layer,
            "member": member,
        }
        self._spec = recorder if isinstance(recorder, ShardedLogSpec) else None
        self._logger = None
        if self._spec is None:
            self._logger = SampleErrorLogger(recorder, **self._options)
        else:
            check_callables(error_fn=error_fn, ids_fn=ids_fn, targets_fn=targets_fn)
        self.outputs_key = outputs_key

    @property
    def logger(self) -> SampleErrorLogger:
        """The logger that records into this rank's recorder."""
        if self._logger is None:
            raise LTAUInputError("this rank's shard recorder is made when the trainer fits")
        return self._logger

    def setup(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str
    ) -> None:
        if self._spec is None or stage != "fit":
            return
        log_id = trainer.strategy.broadcast(new_log_id(), src=0)
        recorder = self._spec.recorder(trainer.global_rank, trainer.world_size, log_id)
        self._logger = SampleErrorLogger(recorder, **self._options)

    def teardown(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, stage: str
    ) -> None:
        if self._spec is not None and stage == "fit" and self._logger is not None:
            self._logger.recorder.close()

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
