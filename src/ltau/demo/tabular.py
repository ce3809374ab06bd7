"""LTAU end to end on a plain regression task with a PyTorch MLP.

It shows that the method is not tied to force fields. Two datasets that ship with
scikit-learn: ``friedman`` (default; Friedman #1 benchmark function, 2000 samples, 10 inputs of
which 5 matter, Gaussian noise sigma 0.1) and ``diabetes`` (442 real patients; small and
noisy). The 15% of samples with the largest value of one relevant input (``x0`` for friedman,
BMI for diabetes) are held out as a shifted test set; the rest is split 60/20/20 into train /
validation / in-domain test. While the network trains, each training sample's absolute error is recorded from the
training step's own forward pass. LTAU is fitted on the network's last hidden layer with the
library's default choices, all made on the validation split only: k and the burn-in by
cross-validated CRPS, then the distance widening and the isotonic calibration. The estimator
is then evaluated on both test sets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_diabetes, make_friedman1
from torch.utils.data import DataLoader, TensorDataset

from ltau import metrics
from ltau._checks import positive_int
from ltau.estimator import LTAUEstimator, LTAUPrediction
from ltau.exceptions import LTAUInputError
from ltau.integrations.torch import LayerOutput, SampleErrorLogger, train_with_error_logging
from ltau.recording import ErrorRecorder
from ltau.report import SetResults, write_report
from ltau.selection import burn_in_candidates, choose_configuration

logger = logging.getLogger(__name__)

K_CANDIDATES = (1, 2, 5, 10, 20, 40)
CONFIDENCE = 0.9
SHIFT_QUANTILE = 0.85  # samples above this quantile of the shift feature form the shifted set
DATASETS = {
    "friedman": "Friedman #1 (scikit-learn make_friedman1, 2000 samples, noise 0.1); "
    "shifted = top 15% of x0",
    "diabetes": "scikit-learn diabetes (442 patients); shifted = top 15% BMI",
}


@dataclass
class Split:
    """Standardised inputs ``(n, n_inputs)`` and targets ``(n,)`` in original units."""

    inputs: np.ndarray
    targets: np.ndarray


class MLP(torch.nn.Module):
    """n_inputs -> 64 -> 64 -> 1 network; the output of ``body`` is the 64-d latent space LTAU
    searches."""

    def __init__(self, n_inputs: int, width: int = 64) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_inputs, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(width, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs)).squeeze(-1)


def load_splits(dataset: str, seed: int) -> dict[str, Split]:
    """Train / validation / in-domain test / shifted splits of ``dataset``."""
    if dataset == "friedman":
        inputs, targets = make_friedman1(n_samples=2000, noise=0.1, random_state=seed)
        shift_feature = inputs[:, 0]
    elif dataset == "diabetes":
        inputs, targets = load_diabetes(return_X_y=True)
        shift_feature = inputs[:, 2]
    else:
        raise LTAUInputError(f"unknown demo dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    shifted = shift_feature > np.quantile(shift_feature, SHIFT_QUANTILE)
    rng = np.random.default_rng(seed)
    in_domain = rng.permutation(np.flatnonzero(~shifted))
    n_test = n_val = len(in_domain) // 5
    parts = {
        "test": in_domain[:n_test],
        "validation": in_domain[n_test : n_test + n_val],
        "train": in_domain[n_test + n_val :],
        "shifted": np.flatnonzero(shifted),
    }
    mean = inputs[parts["train"]].mean(axis=0)
    std = inputs[parts["train"]].std(axis=0)
    return {
        name: Split(((inputs[rows] - mean) / std).astype(np.float32), targets[rows])
        for name, rows in parts.items()
    }


def train_with_recording(
    train: Split, epochs: int, seed: int, log_path: Path
) -> tuple[MLP, ErrorRecorder]:
    """Train the MLP, recording each sample's |error| (target units) from every training step."""
    torch.manual_seed(seed)
    model = MLP(train.inputs.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scale = float(train.targets.std())
    offset = float(train.targets.mean())
    targets = torch.from_numpy(((train.targets - offset) / scale).astype(np.float32))
    dataset = TensorDataset(torch.from_numpy(train.inputs), targets, torch.arange(len(targets)))
    batches = DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    recorder = ErrorRecorder(len(train.targets), log_path=log_path, overwrite=True)
    logger = SampleErrorLogger(
        recorder,
        error_fn=lambda outputs, standardised: (outputs - standardised).abs() * scale,
        ids_fn=lambda batch: batch[2],
    )
    train_with_error_logging(
        model,
        batches,
        optimizer=optimizer,
        loss_fn=torch.nn.functional.mse_loss,
        epochs=epochs,
        logger=logger,
    )
    model.prediction_offset, model.prediction_scale = offset, scale
    return model, recorder


@torch.no_grad()
def evaluate_model(model: MLP, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Latent descriptors ``(n, 64)`` (the output of ``body``) and absolute errors ``(n,)``."""
    with LayerOutput(model, "body") as hook:
        predictions = model(torch.from_numpy(split.inputs)).numpy()
    predictions = predictions * model.prediction_scale + model.prediction_offset
    return hook.output.numpy(), np.abs(predictions - split.targets)


def run_tabular_demo(
    output_dir: Path, *, dataset: str = "friedman", epochs: int = 300, seed: int = 0
) -> dict:
    """Run the whole demo, write the report into ``output_dir`` and return the metrics."""
    positive_int(epochs, "epochs")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(dataset, seed)
    model, recorder = train_with_recording(splits["train"], epochs, seed, output_dir / "errors.h5")
    candidates = burn_in_candidates(recorder, n_bins=100, progress=True)
    recorder.close()
    evaluated = {name: evaluate_model(model, split) for name, split in splits.items()}

    # Every choice is made on the validation split only (folds by sample: no structures here).
    train_descriptors = evaluated["train"][0]
    validation_descriptors, validation_errors = evaluated["validation"]
    chosen = choose_configuration(
        train_descriptors,
        candidates,
        validation_descriptors,
        validation_errors,
        None,
        k_candidates=K_CANDIDATES,
    )
    estimator = LTAUEstimator(chosen["k"], distance_scale=chosen["distance_scale"]).fit(
        train_descriptors, candidates[chosen["skip_epochs"]]
    )
    estimator.calibrate(validation_descriptors, validation_errors)
    estimator.save(
        output_dir / "estimator.h5",
        metadata={
            "task": f"{dataset} regression demo",
            "error_unit": "target units",
            "skip_epochs": chosen["skip_epochs"],
        },
    )

    atol = float(np.median(validation_errors))
    predictions = {
        name: estimator.predict(evaluated[name][0], atol=atol, confidence=CONFIDENCE)
        for name in ("validation", "test", "shifted")
    }
    report = {
        "dataset": DATASETS[dataset],
        "n_train": len(splits["train"].targets),
        "n_epochs_recorded": recorder.n_epochs,
        "k_chosen_on_validation": chosen["k"],
        "skip_epochs_chosen_on_validation": chosen["skip_epochs"],
        "distance_scale_chosen_on_validation": chosen["distance_scale"],
        "validation_cv_crps": chosen["cv_crps"],
        "atol": atol,
        "atol_rule": "median absolute validation error",
    }
    for name in ("test", "shifted"):
        report[name] = split_metrics(predictions[name], evaluated[name][1], atol)
    in_domain_ood = predictions["test"].ood_score
    shifted_ood = predictions["shifted"].ood_score
    report["auroc_ood_score_shifted_vs_test"] = metrics.auroc(
        np.concatenate([shifted_ood, in_domain_ood]),
        np.r_[np.ones(len(shifted_ood)), np.zeros(len(in_domain_ood))],
    )
    sets = [
        SetResults(
            name,
            predictions[name].expected_error,
            predictions[name].ood_score,
            evaluated[name][1],
            estimator.probability_integral_transform(*evaluated[name]),
            predictions[name].interval_lower,
            predictions[name].interval_upper,
        )
        for name in ("test", "shifted")
    ]
    shifted_table = {"auroc_ood_score_vs_in_domain": report["auroc_ood_score_shifted_vs_test"]}
    write_report(
        output_dir,
        "LTAU on a plain regression task",
        _report_summary(report),
        report,
        sets,
        per_set={"test": report["test"], "shifted": report["shifted"] | shifted_table},
        in_domain="test",
        error_unit="target units",
        confidence=CONFIDENCE,
    )
    logger.info(summary_text(report, output_dir))
    return report


def split_metrics(prediction: LTAUPrediction, errors: np.ndarray, atol: float) -> dict:
    """Uncertainty metrics of one test split (errors are absolute, in target units):
    :func:`ltau.metrics.uq_metrics` and the split's error and prediction averages.

    ``spearman_expected_vs_true_error``, ``auroc_exceedance_flags_error_above_atol`` and
    ``coverage_0.9_interval`` repeat ``spearman``, ``auroc_error_flag`` and ``coverage90``
    under the names of earlier metrics.json files.
    """
    bundle = prediction.uq_metrics(errors, atol=atol)
    coverage = metrics.coverage_key(prediction.confidence)
    return {
        **bundle,
        "rmse": metrics.rmse(errors),
        "mean_abs_error": float(errors.mean()),
        "mean_expected_error": float(prediction.expected_error.mean()),
        "mean_ood_score": float(prediction.ood_score.mean()),
        "spearman_expected_vs_true_error": bundle["spearman"],
        "auroc_exceedance_flags_error_above_atol": bundle["auroc_error_flag"],
        f"coverage_{prediction.confidence:g}_interval": bundle[coverage],
    }


def _report_summary(report: dict) -> str:
    """The report's opening paragraph: data, training and the choices made on validation."""
    return (
        f"{report['dataset']}. {report['n_train']} training samples, "
        f"{report['n_epochs_recorded']} epochs recorded, k = {report['k_chosen_on_validation']}"
        f", the first {report['skip_epochs_chosen_on_validation']} epochs left out and "
        f"{report['distance_scale_chosen_on_validation']} distances (chosen on validation); "
        f"calibrated on validation; atol = {report['atol']:.3g} ({report['atol_rule']})."
    )


def summary_text(report: dict, output_dir: Path) -> str:
    test, shifted = report["test"], report["shifted"]
    return (
        f"LTAU demo (k={report['k_chosen_on_validation']}, first "
        f"{report['skip_epochs_chosen_on_validation']} epochs left out; chosen on validation)\n"
        f"  Spearman(expected, true |error|): in-domain {test['spearman_expected_vs_true_error']:.3f}, "
        f"shifted {shifted['spearman_expected_vs_true_error']:.3f}\n"
        f"  RMSE: in-domain {test['rmse']:.1f}, shifted {shifted['rmse']:.1f}\n"
        f"  90% interval coverage: in-domain {test['coverage_0.9_interval']:.3f}, "
        f"shifted {shifted['coverage_0.9_interval']:.3f}\n"
        f"  AUROC of OOD score (shifted vs in-domain): "
        f"{report['auroc_ood_score_shifted_vs_test']:.3f}\n"
        f"  report: {output_dir / 'report.html'}, metrics: {output_dir / 'metrics.json'}"
    )
