"""LTAU for any PyTorch regression model: per-sample errors from each training step's own
outputs, and descriptors from a chosen layer through a forward hook.

The user states what is specific to the task:

* ``error_fn(outputs, targets)``: each sample's error (finite, >= 0, shape ``(batch,)``, in the
  unit the distributions should have), e.g. ``(outputs - targets).abs()``;
* ``ids_fn(batch)``: the samples' integer ids in ``[0, n_samples)``, shape ``(batch,)``;
* ``targets_fn(batch)`` (default ``batch[1]``) and, for the plain loop and descriptor
  extraction, ``inputs_fn(batch)`` (default ``batch[0]``);
* ``layer``: the module, or its name in ``model.named_modules()``, whose output is the
  descriptor (flattened to ``(batch, d)``).

:class:`SampleErrorLogger` holds that logic once; the plain loop :func:`train_with_error_logging`
and the Lightning callback :class:`ltau.integrations.lightning.LTAUCallback` both use it. Errors
are recorded from the outputs the training step computed anyway: no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ltau._checks import check_finite, positive_int
from ltau.exceptions import LTAUInputError
from ltau.recording import ErrorRecorder

ErrorFunction = Callable[[Any, Any], Any]
BatchFunction = Callable[[Any], Any]


def default_inputs(batch: Any) -> Any:
    """``batch[0]``: the inputs of an ``(inputs, targets, ...)`` batch."""
    return batch[0]


def default_targets(batch: Any) -> Any:
    """``batch[1]``: the targets of an ``(inputs, targets, ...)`` batch."""
    return batch[1]


def check_callables(**functions: object) -> None:
    """Refuse any of ``functions`` (name -> function) that is not callable."""
    for name, function in functions.items():
        if not callable(function):
            raise LTAUInputError(f"{name} must be callable")


class SampleErrorLogger:
    """Record each training sample's error, batch by batch, into an :class:`ErrorRecorder`.

    ``member`` tells which model the epochs belong to (ensemble members, seeds). ``layer`` is
    optional; it is only needed for :meth:`descriptors`.
    """

    def __init__(
        self,
        recorder: ErrorRecorder,
        *,
        error_fn: ErrorFunction,
        ids_fn: BatchFunction,
        targets_fn: BatchFunction = default_targets,
        layer: str | torch.nn.Module | None = None,
        member: int = 0,
    ) -> None:
        if not isinstance(recorder, ErrorRecorder):
            raise LTAUInputError("recorder must be an ltau ErrorRecorder")
        check_callables(error_fn=error_fn, ids_fn=ids_fn, targets_fn=targets_fn)
        self.recorder = recorder
        self.error_fn = error_fn
        self.ids_fn = ids_fn
        self.targets_fn = targets_fn
        self.layer = layer
        self.member = member

    def record(self, outputs: Any, batch: Any) -> np.ndarray:
        """Record the errors of ``outputs`` (the model's outputs for ``batch``); return them."""
        ids = _as_numpy(self.ids_fn(batch), "ids_fn")
        if ids.ndim != 1:
            raise LTAUInputError(
                f"ids_fn must return one id per sample, 1-D; got shape {ids.shape}"
            )
        with torch.no_grad():
            errors = _as_numpy(self.error_fn(outputs, self.targets_fn(batch)), "error_fn")
        if errors.shape != ids.shape:
            raise LTAUInputError(
                f"error_fn returned shape {errors.shape} for a batch of {ids.size} samples; "
                f"it must return one error per sample, shape ({ids.size},)"
            )
        errors = errors.astype(np.float32)
        check_finite(errors, "the errors returned by error_fn")
        self.recorder.record(ids, errors)
        return errors

    def end_epoch(self, *, allow_missing: bool = False) -> int:
        """Close the epoch in the recorder; return its number for this model."""
        return self.recorder.end_epoch(self.member, allow_missing=allow_missing)

    def descriptors(
        self,
        model: torch.nn.Module,
        batches: Iterable[Any],
        *,
        inputs_fn: BatchFunction = default_inputs,
        by_id: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Descriptors of ``batches`` from :attr:`layer` (see :func:`extract_descriptors`);
        with ``by_id``, row i belongs to the sample that ``ids_fn`` calls i."""
        if self.layer is None:
            raise LTAUInputError("no descriptor layer was given (layer=...)")
        return extract_descriptors(
            model,
            self.layer,
            batches,
            inputs_fn=inputs_fn,
            ids_fn=self.ids_fn if by_id else None,
            progress=progress,
        )


def resolve_layer(model: torch.nn.Module, layer: str | torch.nn.Module) -> torch.nn.Module:
    """The submodule ``layer`` of ``model``, given by name or as the module itself."""
    if isinstance(layer, torch.nn.Module):
        if not any(module is layer for module in model.modules()):
            raise LTAUInputError("the descriptor layer is not a submodule of the model")
        return layer
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules:
        names = [name for name in modules if name]
        raise LTAUInputError(
            f"the model has no layer {layer!r}; its layers are {names[:20]}"
            + (" ..." if len(names) > 20 else "")
        )
    return modules[layer]


class LayerOutput:
    """A forward hook that keeps a layer's latest output, flattened to ``(batch, d)``.

    >>> with LayerOutput(model, "body") as hook:
    ...     predictions = model(inputs)
    >>> descriptors = hook.output
    """

    def __init__(self, model: torch.nn.Module, layer: str | torch.nn.Module) -> None:
        self.module = resolve_layer(model, layer)
        self._output: torch.Tensor | None = None
        self._handle = self.module.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise LTAUInputError(
                f"the descriptor layer returned {type(output).__name__}, not a tensor"
            )
        self._output = output.detach().flatten(start_dim=1) if output.dim() > 1 else output[:, None]

    @property
    def output(self) -> torch.Tensor:
        """The layer's output in the latest forward pass, ``(batch, d)``."""
        if self._output is None:
            raise LTAUInputError("the descriptor layer has not run yet")
        return self._output

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> LayerOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


@torch.no_grad()
def extract_descriptors(
    model: torch.nn.Module,
    layer: str | torch.nn.Module,
    batches: Iterable[Any],
    *,
    inputs_fn: BatchFunction = default_inputs,
    ids_fn: BatchFunction | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The output of ``layer`` for every sample of ``batches``, float32 ``(n, d)``.

    The model runs in eval mode (its mode is restored afterwards). Rows follow the batches'
    order; with ``ids_fn`` row i is the sample with id i, and the ids must be exactly
    ``0 .. n - 1``.
    """
    rows, ids = [], []
    was_training = model.training
    model.eval()
    try:
        with LayerOutput(model, layer) as hook:
            for batch in tqdm(batches, desc="descriptors", unit="batch", disable=not progress):
                model(inputs_fn(batch))
                rows.append(hook.output.cpu().numpy().astype(np.float32))
                if ids_fn is not None:
                    ids.append(_as_numpy(ids_fn(batch), "ids_fn").reshape(-1))
    finally:
        model.train(was_training)
    if not rows:
        raise LTAUInputError("no batches were given")
    descriptors = np.concatenate(rows)
    if ids_fn is None:
        return descriptors
    order = np.concatenate(ids).astype(np.int64)
    if order.size != len(descriptors) or not np.array_equal(np.sort(order), np.arange(order.size)):
        raise LTAUInputError(
            f"ids_fn must give every id 0 .. {len(descriptors) - 1} exactly once over the batches"
        )
    placed = np.empty_like(descriptors)
    placed[order] = descriptors
    return placed


def train_with_error_logging(
    model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    epochs: int,
    logger: SampleErrorLogger,
    inputs_fn: BatchFunction = default_inputs,
    progress: bool = True,
) -> list[float]:
    """A plain training loop that records every sample's error at every epoch.

    ``batches`` is iterated once per epoch (a ``DataLoader``). Each step computes
    ``outputs = model(inputs_fn(batch))`` and ``loss_fn(outputs, logger.targets_fn(batch))``,
    steps the optimiser and records the errors of those same outputs. Returns the mean loss
    of each epoch.
    """
    epochs = positive_int(epochs, "epochs")
    losses = []
    model.train()
    for _ in tqdm(
        range(epochs), desc="training (recording errors)", unit="epoch", disable=not progress
    ):
        total, n_batches = 0.0, 0
        for batch in batches:
            outputs = model(inputs_fn(batch))
            loss = loss_fn(outputs, logger.targets_fn(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            logger.record(outputs.detach() if isinstance(outputs, torch.Tensor) else outputs, batch)
            total += float(loss.detach())
            n_batches += 1
        logger.end_epoch()
        losses.append(total / max(n_batches, 1))
    return losses


def _as_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must return an array or tensor: {exc}") from exc


__all__ = [
    "LayerOutput",
    "SampleErrorLogger",
    "default_inputs",
    "default_targets",
    "extract_descriptors",
    "resolve_layer",
    "train_with_error_logging",
]
