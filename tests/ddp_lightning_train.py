"""Train a tiny regressor with Lightning DDP on CPU (gloo, 2 processes) while LTAUCallback
writes a sharded error log; run by tests/test_sharded_log.py as ``python THIS OUTPUT_DIR``.

Each rank also keeps its own record of |output - target| of every sample it trained on, by a
forward hook independent of ltau, saved as ``seen-rank<r>.npy`` (NaN where not trained on).
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ltau.integrations.lightning import LTAUCallback
from ltau.sharded_log import ShardedLogSpec

N_SAMPLES, EPOCHS = 48, 3


class Regressor(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
        )

    def training_step(self, batch, batch_idx):
        inputs, targets, _ = batch
        outputs = self.net(inputs).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(outputs, targets), "outputs": outputs}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Seen(lightning.Callback):
    """The errors of each training batch, by sample id, from the step's own outputs."""

    def __init__(self) -> None:
        self.errors = np.full((EPOCHS, N_SAMPLES), np.nan)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        errors = (outputs["outputs"].detach() - batch[1]).abs().numpy()
        self.errors[trainer.current_epoch, batch[2].numpy()] = errors


def main(output: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(N_SAMPLES, 3, generator=generator)
    data = TensorDataset(inputs, inputs.sin().sum(dim=1), torch.arange(N_SAMPLES))
    callback = LTAUCallback(
        ShardedLogSpec(output / "errors.h5", N_SAMPLES),
        error_fn=lambda out, y: (out - y).abs(),
        ids_fn=lambda batch: batch[2],
    )
    seen = Seen()
    trainer = lightning.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback, seen],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), DataLoader(data, batch_size=6, shuffle=True))
    np.save(output / f"seen-rank{trainer.global_rank}.npy", seen.errors)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
