"""Fuzzing ltau's readers: a mutated estimator, distributions or error-log file must be refused
with a clean ``LTAUFileError`` that names the file, or load exactly the original content, and
every read must end in bounded time.

Use from Python (``benchmarks/`` on ``sys.path``)::

    from _fuzz import fuzz
    result = fuzz("ltau-estimator", n_cases=1000, seed=0, timeout=60.0)
    assert result["crashes"] == result["hangs"] == 0

or from the shell (one JSON object per format on standard output)::

    python benchmarks/_fuzz.py --cases 1000 --seed 0 ltau-estimator ltau-error-log

Each case is one good file mutated once (see :data:`MUTATIONS`); it is loaded in one of a few
long-lived worker processes, with a per-case timeout: a worker that does not answer in time is
killed (with its children) and counted as a hang, one that dies as a crash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORMATS = ("ltau-estimator", "ltau-distributions", "ltau-error-log")
MUTATIONS = (
    "flip",  # 1-8 random bits anywhere
    "run",  # 1-256 random bytes overwritten anywhere
    "truncate",  # cut at a random length
    "append",  # 1-4096 random bytes added at the end
    "zero",  # 16-4096 bytes zeroed anywhere
    "metadata",  # 1-32 bytes overwritten in HDF5's metadata (anything but raw array data)
    "superblock",  # 1-8 bytes overwritten in the HDF5 superblock
    "header",  # 1-8 bytes overwritten in the seal (the first 115 bytes)
)
_USERBLOCK = 512
_SEAL_BYTES = 115
_EXAMPLES = 10

logger = logging.getLogger(__name__)


def fuzz(
    file_format: str,
    n_cases: int,
    seed: int = 0,
    timeout: float = 60.0,
    *,
    workers: int = 2,
    good: str | os.PathLike | None = None,
) -> dict:
    """Load ``n_cases`` mutations of a good ``file_format`` file; count the outcomes.

    ``good``: the file to mutate (for example one written by an older ltau); by default a small
    one is written (see :func:`write_good`). ``timeout``: seconds per case before it counts as a
    hang (it must exceed ltau's own bound on parsing an unsealed file, 10 s for small files).

    Returns a dict: ``format``, ``cases``, ``clean_errors`` (refused with an ``LTAUFileError``
    naming the file), ``loaded_identical`` (loaded, content equal to the good file's),
    ``crashes`` (anything else: another exception, different content, a dead worker),
    ``hangs``, ``by_mutation`` (the same counts per mutation), ``failures`` (up to 10
    examples: case, mutation, outcome, detail) and ``seconds`` (wall time).
    """
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS}; got {file_format!r}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ltau-fuzz-") as directory:
        folder = Path(directory)
        source = Path(good) if good is not None else write_good(file_format, folder)
        raw = source.read_bytes()
        metadata = _metadata_ranges(source, len(raw))
        pool = _Pool(file_format, workers, timeout)
        try:
            reference = pool.run({-1: source})[-1]
            if reference.get("outcome") != "loaded":
                raise RuntimeError(f"the good file does not load: {reference}")
            rng = np.random.default_rng(seed)
            cases = {}
            kinds = {}
            for case in range(n_cases):
                kind = MUTATIONS[case % len(MUTATIONS)]
                path = folder / f"case-{case}.h5"
                path.write_bytes(_mutate(raw, kind, rng, metadata))
                cases[case], kinds[case] = path, kind
            results = pool.run(cases)
        finally:
            pool.close()
    counts = _counts()
    by_mutation = {kind: _counts() for kind in MUTATIONS}
    failures = []
    for case in range(n_cases):
        verdict, detail = _judge(results[case], reference["fingerprint"], f"case-{case}.h5")
        for tally in (counts, by_mutation[kinds[case]]):
            tally["cases"] += 1
            tally[verdict] += 1
        if verdict in ("crashes", "hangs") and len(failures) < _EXAMPLES:
            failures.append(
                {"case": case, "mutation": kinds[case], "outcome": verdict, "detail": detail}
            )
    return {
        "format": file_format,
        **counts,
        "by_mutation": by_mutation,
        "failures": failures,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _counts() -> dict[str, int]:
    return {"cases": 0, "clean_errors": 0, "loaded_identical": 0, "crashes": 0, "hangs": 0}


def _judge(result: dict, reference: str, name: str) -> tuple[str, str]:
    """The verdict on one case (a key of :func:`_counts`) and what happened."""
    outcome = result["outcome"]
    if outcome == "loaded":
        if result["fingerprint"] == reference:
            return "loaded_identical", ""
        return "crashes", "loaded different content without an error"
    if outcome == "error":
        detail = f"{result['type']}: {result['message'][:300]}"
        if result["type"] == "LTAUFileError" and name in result["message"]:
            return "clean_errors", detail
        return "crashes", detail
    return ("hangs" if outcome == "hang" else "crashes"), result.get("detail", outcome)


# ------------------------------------------------------------------------ good files


def write_good(file_format: str, folder: Path) -> Path:
    """Write a small but complete ``file_format`` file into ``folder``; return its path."""
    from ltau import ErrorDistributions, ErrorRecorder, LTAUEstimator
    from ltau.distributions import save_distributions

    rng = np.random.default_rng(0)
    path = folder / f"good-{file_format}.h5"
    n_samples = 120
    distributions = ErrorDistributions.from_errors(
        rng.lognormal(-2.0, 1.0, (n_samples, 25)), n_bins=24
    )
    if file_format == "ltau-distributions":
        save_distributions(distributions, path)
    elif file_format == "ltau-estimator":
        estimator = LTAUEstimator(5, distance_scale="local")
        estimator.fit(rng.normal(size=(n_samples, 6)).astype(np.float32), distributions)
        estimator.save(path, metadata={"unit": "eV/A", "note": "fuzz"})
    else:
        columns = {"configuration": np.arange(n_samples) // 4, "atom": np.arange(n_samples) % 4}
        with ErrorRecorder(
            n_samples, log_path=path, samples=columns, provenance={"run": "fuzz"}
        ) as recorder:
            for epoch in range(10):
                recorder.record_epoch(rng.lognormal(-2.0, 1.0, n_samples), member=epoch % 2)
            ids = np.arange(0, n_samples, 3)
            recorder.record(ids, rng.lognormal(-2.0, 1.0, ids.size))
            recorder.end_epoch(member=1, allow_missing=True)
    return path


def _metadata_ranges(path: Path, size: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``path`` that hold HDF5 metadata: everything after the
    user block (if any) that is not the raw data of a dataset."""
    import h5py

    raw_ranges = []
    with h5py.File(path, "r") as handle:
        base = handle.userblock_size
        datasets = []
        handle.visititems(
            lambda _, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None
        )
        for dataset in datasets:
            if dataset.chunks is None:
                offset = dataset.id.get_offset()
                if offset is not None:
                    raw_ranges.append((offset, offset + dataset.id.get_storage_size()))
                continue
            for index in range(dataset.id.get_num_chunks()):
                info = dataset.id.get_chunk_info(index)
                raw_ranges.append((info.byte_offset, info.byte_offset + info.size))
    ranges, cursor = [], base
    for start, end in sorted(raw_ranges):
        if start > cursor:
            ranges.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < size:
        ranges.append((cursor, size))
    return ranges


# ------------------------------------------------------------------------- mutations


def _mutate(
    raw: bytes, kind: str, rng: np.random.Generator, metadata: list[tuple[int, int]]
) -> bytes:
    """``raw`` with one mutation of ``kind`` (see :data:`MUTATIONS`)."""
    data = bytearray(raw)
    size = len(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(size))] ^= 1 << int(rng.integers(8))
    elif kind == "run":
        _overwrite(data, int(rng.integers(size)), int(rng.integers(1, 257)), rng)
    elif kind == "truncate":
        del data[int(rng.integers(size)) :]
    elif kind == "append":
        data += rng.integers(0, 256, int(rng.integers(1, 4097)), dtype=np.uint8).tobytes()
    elif kind == "zero":
        start = int(rng.integers(size))
        length = int(rng.integers(16, 4097))
        data[start : start + length] = bytes(len(data[start : start + length]))
    elif kind == "metadata":
        start, end = metadata[int(rng.integers(len(metadata)))]
        _overwrite(data, int(rng.integers(start, end)), int(rng.integers(1, 33)), rng)
    else:
        base = _USERBLOCK if raw[:8] != b"\x89HDF\r\n\x1a\n" else 0
        start, end = (base, base + 96) if kind == "superblock" else (0, _SEAL_BYTES)
        _overwrite(data, int(rng.integers(start, end)), int(rng.integers(1, 9)), rng)
    return bytes(data)


def _overwrite(data: bytearray, start: int, length: int, rng: np.random.Generator) -> None:
    """Overwrite ``data[start : start + length]`` with random bytes, each one changed."""
    end = min(start + length, len(data))
    for i in range(start, end):
        data[i] ^= int(rng.integers(1, 256))


# --------------------------------------------------------------------------- workers


class _Pool:
    """Long-lived worker processes that load files; a hung worker is killed and replaced."""

    def __init__(self, file_format: str, size: int, timeout: float) -> None:
        self.file_format, self.timeout = file_format, timeout
        self.workers = [self._start() for _ in range(max(1, size))]

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", self.file_format],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: a hang is killed with its children
        )

    def run(self, cases: dict[int, Path]) -> dict[int, dict]:
        """Load every file of ``cases`` (case -> path); return case -> result."""
        waiting = list(cases)
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (case, deadline)
        results: dict[int, dict] = {}
        while waiting or busy:
            for slot in range(len(self.workers)):
                if slot not in busy and waiting:
                    case = waiting.pop(0)
                    self.workers[slot].stdin.write(f"{cases[case]}\n")
                    self.workers[slot].stdin.flush()
                    busy[slot] = (case, time.monotonic() + self.timeout)
            soonest = min(deadline for _, deadline in busy.values())
            streams = {self.workers[slot].stdout: slot for slot in busy}
            ready, _, _ = select.select(list(streams), [], [], max(0.0, soonest - time.monotonic()))
            for stream in ready:
                slot = streams[stream]
                case, _ = busy.pop(slot)
                line = stream.readline()
                if line:
                    results[case] = json.loads(line)
                else:
                    code = self.workers[slot].wait()
                    results[case] = {"outcome": "died", "detail": f"worker exit status {code}"}
                    self.workers[slot] = self._start()
            now = time.monotonic()
            for slot, (case, deadline) in list(busy.items()):
                if now >= deadline and slot not in {streams[s] for s in ready}:
                    del busy[slot]
                    results[case] = {"outcome": "hang", "detail": f"no answer in {self.timeout} s"}
                    self._kill(slot)
                    self.workers[slot] = self._start()
        return results

    def _kill(self, slot: int) -> None:
        worker = self.workers[slot]
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait()

    def close(self) -> None:
        for worker in self.workers:
            worker.stdin.close()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill(self.workers.index(worker))


def _worker(file_format: str) -> None:
    """Load each path read from standard input; answer one JSON line per path."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to standard error
    load = _LOADERS[file_format]
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            answer = {"outcome": "loaded", "fingerprint": load(path)}
        except Exception as exc:
            answer = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def _digest(*parts: object) -> str:
    """SHA-256 over arrays (dtype, shape and bytes) and JSON-able values."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _distributions_fingerprint(distributions) -> str:
    return _digest(
        distributions.bins.edges,
        distributions.bins.spacing,
        distributions.counts.astype(np.int64),
        [int(distributions.n_below), int(distributions.n_above)],
    )


def _load_distributions(path: str) -> str:
    from ltau.distributions import load_distributions

    return _distributions_fingerprint(load_distributions(path))


def _load_estimator(path: str) -> str:
    from ltau import LTAUEstimator

    estimator = LTAUEstimator.load(path)
    queries = np.random.default_rng(1).normal(size=(16, estimator.n_features_in_))
    prediction = estimator.predict(queries.astype(np.float32))
    calibrator = getattr(estimator, "calibrator_", None)
    widening = getattr(estimator, "widening_", None)
    return _digest(
        estimator.get_params(),
        estimator.metadata_,
        _distributions_fingerprint(estimator.distributions_),
        np.frombuffer(estimator.index_.serialize(), np.uint8),
        estimator.local_scale_ if estimator.local_scale_ is not None else "none",
        calibrator.to_dict() if calibrator is not None else "none",
        widening.to_dict() if widening is not None else "none",
        prediction.expected_error,
        prediction.neighbor_indices,
    )


def _load_log(path: str) -> str:
    from ltau import ErrorLog

    with ErrorLog(path) as log:
        return _digest(
            [log.n_samples, log.n_epochs],
            log.members,
            {name: column.tolist() for name, column in log.samples.items()},
            log.provenance,
            log.to_array(),
        )


_LOADERS = {
    "ltau-estimator": _load_estimator,
    "ltau-distributions": _load_distributions,
    "ltau-error-log": _load_log,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fuzz ltau's file readers.")
    parser.add_argument("formats", nargs="*", help=f"some of {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--cases", type=int, default=1000, help="mutated files per format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--good", type=Path, help="mutate this file instead of a fresh one")
    parser.add_argument("--worker", choices=FORMATS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return
    for file_format in args.formats or FORMATS:
        result = fuzz(file_format, args.cases, args.seed, args.timeout, good=args.good)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
