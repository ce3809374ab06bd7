"""Error logging for any PyTorch model: the plain loop, the Lightning callback, descriptor hooks."""

from __future__ import annotations

import lightning
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ltau import Bins, ErrorLog, ErrorRecorder
from ltau.exceptions import LTAUInputError
from ltau.integrations.lightning import LTAUCallback
from ltau.integrations.torch import (
    LayerOutput,
    SampleErrorLogger,
    extract_descriptors,
    train_with_error_logging,
)

N_SAMPLES, N_INPUTS, EPOCHS = 40, 3, 2

pytestmark = [  # Lightning's advice on data-loader workers, and its own use of torch internals
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance.treespec, LeafSpec.` is deprecated"),
]


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(N_SAMPLES, N_INPUTS, generator=generator)
    targets = inputs.sin().sum(dim=1)
    return TensorDataset(inputs, targets, torch.arange(N_SAMPLES))


def _loader(shuffle: bool = True) -> DataLoader:
    return DataLoader(
        _data(), batch_size=8, shuffle=shuffle, generator=torch.Generator().manual_seed(1)
    )


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(N_INPUTS, 6), torch.nn.Tanh())
        self.head = torch.nn.Linear(6, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs)).squeeze(-1)


class Regressor(lightning.LightningModule):
    def __init__(self, return_outputs: bool = True) -> None:
        super().__init__()
        self.net = Net()
        self.return_outputs = return_outputs

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        inputs, targets, _ = batch
        outputs = self(inputs)
        loss = torch.nn.functional.mse_loss(outputs, targets)
        return {"loss": loss, "outputs": outputs} if self.return_outputs else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _absolute_error(outputs, targets):
    return (outputs - targets).abs()


def _ids(batch):
    return batch[2]


class OutputSpy:
    """Independent record of the net's training outputs: expected[epoch, id] = |out - y|."""

    def __init__(self, net: torch.nn.Module, batches_per_epoch: int) -> None:
        data = _data()
        self.row_of = {tuple(x.tolist()): i for i, x in enumerate(data.tensors[0])}
        self.targets = data.tensors[1].numpy()
        self.batches_per_epoch = batches_per_epoch
        self.calls = 0
        self.expected = np.full((EPOCHS, N_SAMPLES), np.nan)
        net.register_forward_hook(self._see)

    def _see(self, module, inputs, output) -> None:
        if not module.training:  # descriptor extraction, not a training step
            return
        epoch = self.calls // self.batches_per_epoch
        self.calls += 1
        for x, y in zip(inputs[0], output.detach().numpy(), strict=True):
            row = self.row_of[tuple(x.tolist())]
            self.expected[epoch, row] = abs(y - self.targets[row])


def _check_log(path, spy: OutputSpy) -> None:
    with ErrorLog(path) as log:
        recorded = log.to_array()
    assert recorded.shape == (EPOCHS, N_SAMPLES)  # one row per epoch, one column per sample
    assert spy.calls == EPOCHS * spy.batches_per_epoch  # no extra forward pass
    np.testing.assert_allclose(recorded, spy.expected, rtol=1e-6, atol=1e-7)


def test_plain_loop_logs_the_training_outputs_errors(tmp_path):
    net, loader = Net(), _loader()
    spy = OutputSpy(net, len(loader))
    recorder = ErrorRecorder(N_SAMPLES, log_path=tmp_path / "errors.h5")
    logger = SampleErrorLogger(recorder, error_fn=_absolute_error, ids_fn=_ids)
    losses = train_with_error_logging(
        net,
        loader,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_fn=torch.nn.functional.mse_loss,
        epochs=EPOCHS,
        logger=logger,
        progress=False,
    )
    recorder.close()
    assert len(losses) == EPOCHS
    _check_log(tmp_path / "errors.h5", spy)


def test_lightning_callback_logs_the_training_outputs_errors(tmp_path):
    module, loader = Regressor(), _loader()
    spy = OutputSpy(module.net, len(loader))
    recorder = ErrorRecorder(N_SAMPLES, log_path=tmp_path / "errors.h5")
    callback = LTAUCallback(recorder, error_fn=_absolute_error, ids_fn=_ids, layer="net.body")
    _trainer(callback).fit(module, loader)
    recorder.close()
    _check_log(tmp_path / "errors.h5", spy)
    descriptors = callback.descriptors(module, _loader(shuffle=True))  # placed by id
    with torch.no_grad():
        expected = module.net.body(_data().tensors[0]).numpy()
    np.testing.assert_allclose(descriptors, expected, rtol=1e-6)


def _trainer(callback: LTAUCallback) -> lightning.Trainer:
    return lightning.Trainer(
        max_epochs=EPOCHS,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_descriptor_hook_returns_the_layer_output():
    net = Net()
    inputs = _data().tensors[0]
    with torch.no_grad():
        hidden = net.body[0](inputs)
    in_order = extract_descriptors(net, "body.0", _loader(shuffle=False))
    np.testing.assert_allclose(in_order, hidden.numpy(), rtol=1e-6)
    by_id = extract_descriptors(net, net.body[0], _loader(shuffle=True), ids_fn=_ids)
    np.testing.assert_allclose(by_id, hidden.numpy(), rtol=1e-6)
    shuffled = extract_descriptors(net, "body.0", _loader(shuffle=True))
    assert not np.allclose(shuffled, hidden.numpy())  # without ids, rows follow the batches
    with LayerOutput(net, "body") as hook:
        net(inputs[:5])
    np.testing.assert_allclose(hook.output.numpy(), torch.tanh(hidden[:5]).numpy(), rtol=1e-6)
    assert net.training  # mode restored


def test_unknown_layer_is_refused():
    net = Net()
    with pytest.raises(LTAUInputError, match=r"has no layer 'body\.7'; its layers are"):
        extract_descriptors(net, "body.7", _loader())
    with pytest.raises(LTAUInputError, match="not a submodule"):
        LayerOutput(net, torch.nn.Linear(2, 2))
    logger = SampleErrorLogger(
        ErrorRecorder(N_SAMPLES, bins=_bins()), error_fn=_absolute_error, ids_fn=_ids
    )
    with pytest.raises(LTAUInputError, match="no descriptor layer"):
        logger.descriptors(net, _loader())


def test_incomplete_ids_in_descriptor_extraction_are_refused():
    with pytest.raises(LTAUInputError, match="exactly once"):
        extract_descriptors(Net(), "body", _loader(), ids_fn=lambda batch: batch[2] // 2)


def _bins() -> Bins:
    return Bins.log(1e-3, 10.0, 10)


@pytest.mark.parametrize(
    ("error_fn", "ids_fn", "message"),
    [
        (_absolute_error, lambda batch: batch[2] + N_SAMPLES, r"ids must lie in \[0, 40\)"),
        (_absolute_error, lambda batch: batch[2][:, None], "ids_fn must return one id per sample"),
        (lambda out, y: (out - y).abs()[:, None], _ids, r"error_fn returned shape \(8, 1\)"),
        (lambda out, y: (out - y).abs().mean(), _ids, r"error_fn returned shape \(\)"),
        (lambda out, y: (out - y).abs() * float("nan"), _ids, "errors returned by error_fn"),
        (lambda out, y: out - y - 10, _ids, "must be non-negative"),
    ],
)
def test_bad_error_or_ids_functions_are_refused(error_fn, ids_fn, message):
    net = Net()
    logger = SampleErrorLogger(
        ErrorRecorder(N_SAMPLES, bins=_bins()), error_fn=error_fn, ids_fn=ids_fn
    )
    with pytest.raises(LTAUInputError, match=message):
        train_with_error_logging(
            net,
            _loader(),
            optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            loss_fn=torch.nn.functional.mse_loss,
            epochs=1,
            logger=logger,
            progress=False,
        )


def test_callback_needs_the_training_step_outputs():
    callback = LTAUCallback(
        ErrorRecorder(N_SAMPLES, bins=_bins()), error_fn=_absolute_error, ids_fn=_ids
    )
    with pytest.raises(LTAUInputError, match="training_step must return a dict with 'loss' and"):
        _trainer(callback).fit(Regressor(return_outputs=False), _loader())


def test_bad_logger_arguments_are_refused():
    with pytest.raises(LTAUInputError, match="ErrorRecorder"):
        SampleErrorLogger("errors.h5", error_fn=_absolute_error, ids_fn=_ids)
    with pytest.raises(LTAUInputError, match="error_fn must be callable"):
        SampleErrorLogger(ErrorRecorder(N_SAMPLES, bins=_bins()), error_fn=None, ids_fn=_ids)
