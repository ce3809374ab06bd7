"""Time of :func:`ltau.selection.choose_configuration` (k, burn-in and distance scale by
cross-validated CRPS) on synthetic clustered descriptors, and its choice.

Every setting (4 burn-ins x 4 k x 2 distance scales) is scored over 2 folds x 5 repeats. The
last line printed is a JSON object: ``seconds``, the chosen configuration and the scores, so
that two versions of ltau can be compared on the same problem (same seed, same choice).

Usage::

    flock /tmp/ltau-cpu.lock python benchmarks/selection.py --train 5000 --validation 1000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ltau import ErrorDistributions
from ltau.selection import choose_configuration


def problem(n_train: int, n_validation: int, dim: int, seed: int) -> dict:
    """Clustered descriptors whose error scale varies by cluster; 16 epochs of training
    errors, the first half noise; validation structures of 15 atoms."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(40, dim))
    scale = np.exp(rng.uniform(-2.0, 1.0, 40))

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 40, n)
        return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), scale[labels]

    x_train, train_scale = sample(n_train)
    noise = np.exp(rng.uniform(-2, 2, (n_train, 8))) * np.abs(rng.normal(size=(n_train, 8)))
    signal = train_scale[:, None] * np.abs(rng.normal(size=(n_train, 8)))
    errors = np.concatenate([noise, signal], axis=1) + 1e-6
    whole = ErrorDistributions.from_errors(errors, n_bins=100)
    candidates = {
        skip: ErrorDistributions.from_errors(errors[:, skip:], whole.bins) for skip in (0, 4, 8, 12)
    }
    x_val, val_scale = sample(n_validation)
    val_errors = val_scale * np.abs(rng.normal(size=n_validation))
    groups = np.arange(n_validation) // 15
    return {
        "descriptors": x_train,
        "candidates": candidates,
        "validation_descriptors": x_val,
        "validation_errors": val_errors,
        "validation_groups": groups,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = problem(args.train, args.validation, args.dim, args.seed)
    started = time.perf_counter()
    chosen = choose_configuration(**data)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, **chosen}))


if __name__ == "__main__":
    main()
