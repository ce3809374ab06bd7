"""What sealing costs the error log: seconds per epoch of ``ErrorRecorder.record_epoch`` with the
seal as shipped (resealed at 10 % growth), resealed after every epoch, and with no hashing.

Use from Python (``benchmarks/`` on ``sys.path``): ``seal_cost(1_000_000, 50, folder)``, or
from the shell: ``python benchmarks/_seal_cost.py --samples 1000000 --epochs 50`` (one JSON
object). The log of 10⁶ samples x 50 epochs takes 210 MB in ``folder`` (default: a temporary
directory), removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

import ltau._io
import ltau.recording
from ltau import ErrorLog, ErrorRecorder


def seal_cost(n_samples: int, n_epochs: int, folder: str | os.PathLike | None = None) -> dict:
    """Per-epoch seconds (mean, max, mean of the last 10), total and close time, per scheme;
    the log's size in MB and the time to open it, seal checked."""
    rng = np.random.default_rng(0)
    rows = [rng.lognormal(-2.0, 1.0, n_samples).astype(np.float32) for _ in range(4)]
    schemes = {
        "no hashing": mock.patch.object(ltau._io, "_payload_digest", lambda *_: bytes(32)),
        "sealed after every epoch": mock.patch.object(ltau.recording, "SEAL_GROWTH", 0.0),
        "sealed at 10% growth (shipped)": mock.patch.object(ltau.recording, "SEAL_GROWTH", 0.1),
    }
    result: dict[str, object] = {"n_samples": n_samples, "n_epochs": n_epochs}
    with tempfile.TemporaryDirectory(dir=folder) as directory:
        path = Path(directory) / "log.h5"
        for name, scheme in schemes.items():  # the shipped scheme last: its log is read below
            with scheme:
                times = []
                recorder = ErrorRecorder(n_samples, log_path=path, overwrite=True)
                for epoch in range(n_epochs):
                    start = time.perf_counter()
                    recorder.record_epoch(rows[epoch % len(rows)])
                    times.append(time.perf_counter() - start)
                start = time.perf_counter()
                recorder.close()
                closing = time.perf_counter() - start
            result[name] = {
                "mean_s": round(float(np.mean(times)), 4),
                "max_s": round(float(np.max(times)), 4),
                "last_10_mean_s": round(float(np.mean(times[-10:])), 4),
                "total_s": round(float(np.sum(times)), 2),
                "close_s": round(closing, 3),
            }
        result["log_MB"] = round(path.stat().st_size / 1e6, 1)
        start = time.perf_counter()
        with ErrorLog(path) as log:
            assert log.n_epochs == n_epochs
        result["open_with_seal_check_s"] = round(time.perf_counter() - start, 3)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Cost of the error log's seal per epoch.")
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--folder", type=Path, help="where to write the log (default: /tmp)")
    args = parser.parse_args(argv)
    sys.stdout.write(json.dumps(seal_cost(args.samples, args.epochs, args.folder)) + "\n")


if __name__ == "__main__":
    main()
