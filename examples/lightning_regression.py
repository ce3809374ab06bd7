"""LTAU for a plain PyTorch Lightning regressor (not a force field), through LTAUCallback.

Data: scikit-learn's Friedman #3 function (4 inputs, noise 0.05), split at random into 60%
training, 20% validation and 20% test. An MLP is trained with Lightning while the callback
records every training sample's |error| at every epoch from the training step's own outputs.
LTAU is fitted on the network's last hidden layer with the library's default choices, all made
on the validation split: k and the burn-in by cross-validated CRPS, then the distance widening
and the isotonic calibration. The test split, which played no part in any choice, gives the
metrics.

    .venv/bin/python examples/lightning_regression.py [--epochs 100]

The last line printed is a JSON object with the metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lightning
import numpy as np
import torch
from sklearn.datasets import make_friedman3
from torch.utils.data import DataLoader, TensorDataset

from ltau import ErrorRecorder, LTAUEstimator, metrics
from ltau.integrations.lightning import LTAUCallback
from ltau.integrations.torch import LayerOutput
from ltau.selection import burn_in_candidates, choose_configuration


class Regressor(lightning.LightningModule):
    """n_inputs -> 64 -> 64 -> 1; the output of ``body`` is LTAU's descriptor."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_inputs, 64),
            torch.nn.SiLU(),
            torch.nn.Linear(64, 64),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(64, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        inputs, targets, _ids = batch
        outputs = self(inputs)
        loss = torch.nn.functional.mse_loss(outputs, targets)
        return {"loss": loss, "outputs": outputs.detach()}  # the callback reads "outputs"

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(epochs: int, seed: int) -> dict:
    lightning.seed_everything(seed, verbose=False)
    inputs, targets = make_friedman3(n_samples=2000, noise=0.05, random_state=seed)
    order = np.random.default_rng(seed).permutation(len(targets))
    train, validation, test = np.split(order, [len(order) * 3 // 5, len(order) * 4 // 5])
    mean, std = inputs[train].mean(axis=0), inputs[train].std(axis=0)
    x = torch.tensor((inputs - mean) / std, dtype=torch.float32)
    y = torch.tensor(targets, dtype=torch.float32)
    train_set = TensorDataset(x[train], y[train], torch.arange(len(train)))  # ids 0..n-1

    with tempfile.TemporaryDirectory() as folder:
        recorder = ErrorRecorder(len(train), log_path=Path(folder) / "errors.h5")
        callback = LTAUCallback(
            recorder,
            error_fn=lambda outputs, batch_targets: (outputs - batch_targets).abs(),
            ids_fn=lambda batch: batch[2],
            layer="body",
        )
        model = Regressor(x.shape[1])
        trainer = lightning.Trainer(
            max_epochs=epochs,
            callbacks=[callback],
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
        )
        trainer.fit(model, DataLoader(train_set, batch_size=32, shuffle=True))
        candidates = burn_in_candidates(recorder, n_bins=100)  # {epochs skipped: distributions}
        recorder.close()

    train_descriptors = callback.descriptors(model, DataLoader(train_set, batch_size=256))
    model.eval()
    outputs, descriptors = {}, {}
    with torch.no_grad(), LayerOutput(model, "body") as hook:
        for name, rows in (("validation", validation), ("test", test)):
            outputs[name] = model(x[rows])
            descriptors[name] = hook.output.numpy()
    errors = {
        "validation": (outputs["validation"] - y[validation]).abs().numpy(),
        "test": (outputs["test"] - y[test]).abs().numpy(),
    }
    chosen = choose_configuration(
        train_descriptors, candidates, descriptors["validation"], errors["validation"], None
    )
    estimator = LTAUEstimator(chosen["k"], distance_scale=chosen["distance_scale"]).fit(
        train_descriptors, candidates[chosen["skip_epochs"]]
    )
    estimator.calibrate(descriptors["validation"], errors["validation"])
    prediction = estimator.predict(descriptors["test"], confidence=0.9)
    return {
        "n_train": len(train),
        "n_validation": len(validation),
        "n_test": len(test),
        "epochs": epochs,
        "k": chosen["k"],
        "skip_epochs": chosen["skip_epochs"],
        "distance_scale": chosen["distance_scale"],
        "test_rmse": metrics.rmse(errors["test"]),
        "test_spearman_expected_vs_true_error": metrics.spearman(
            prediction.expected_error, errors["test"]
        ),
        "test_coverage_0.9_interval": metrics.interval_coverage(
            errors["test"], prediction.interval_lower, prediction.interval_upper
        ),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.epochs, arguments.seed)))
