"""Reliability benchmark (issue 16): what ltau does with killed writers, racing writers,
malicious files, bad input and damaged files.

Parts, each run against the installed ltau in child processes, so that a crash, a hang or a
payload that runs is observed, not suffered:

1. **kill -9 during recording.** A child records epochs of known errors into a log and says
   after each committed epoch how many it has; it is killed at a random moment. The log must
   then open, hold every epoch the child had reported (none lost, none altered) and resume.
2. **kill -9 during saves.** A child saves an estimator (or distributions) over the same path
   again and again; it is killed at a random moment. The file at the path must load and be one
   of the complete versions; after the next load and save, no temporary file may remain.
3. **Two writers.** Two children start recording into one log at the same moment, each
   ``overwrite=True``; or one is recording when the other starts. A writer that exits 0 while
   another was writing the same log, and whose epochs are not in it, is a silent loss.
4. **Malicious files.** Model files carrying pickle payloads (in every place a payload can
   sit: the root, ltau's own format, a torch.fx graph module's source, a class imported into an
   allowed package, a TorchScript archive), ``.npy``/``.npz`` object arrays, HDF5 files that
   link outside themselves (to a FIFO, where a reader would hang), a pickled ASE trajectory and
   an extxyz file with code in its key-value pairs, each given to every entry point that reads
   such a file. Every payload creates a marker file if it runs.
5. **The bad-input matrix** (``benchmarks/_bad_inputs.py``) and **the fuzz**
   (``benchmarks/_fuzz.py``).

The last line printed is a JSON object with ``bad_inputs_tried``, ``bad_inputs_clean_error``,
``tracebacks``, ``silent_wrong``, ``kills``, ``epochs_lost``, ``files_unreadable``,
``orphan_temp_files``, ``fuzz_cases``, ``fuzz_crashes``, ``fuzz_hangs`` and
``malicious_files_executed``, with the details of each part; it is also written to
``benchmarks/results/reliability.json``.

Usage::

    python benchmarks/reliability.py                 # 10 kills each, 1000 fuzz cases per format
    python benchmarks/reliability.py --kills 3 --fuzz-cases 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("reliability")
HERE = Path(__file__).resolve().parent
ACAC = HERE.parent.parent / "shared" / "data" / "acac"
CHILD_TIMEOUT = 120.0


def epoch_errors(epoch: int, n_samples: int) -> np.ndarray:
    """The errors the recording child writes at ``epoch``, ``(n_samples,)`` float32."""
    return (np.arange(n_samples, dtype=np.float32) % 97 + 1) * np.float32(1e-3) * (epoch + 1)


_RECORDER = """
import sys
sys.path.insert(0, sys.argv[3])
from reliability import epoch_errors
from ltau import ErrorRecorder
path, n = sys.argv[1], int(sys.argv[2])
recorder = ErrorRecorder(n, log_path=path)
for epoch in range(100000):
    recorder.record_epoch(epoch_errors(epoch, n))
    print(epoch + 1, flush=True)
"""

_SAVER = """
import sys
import numpy as np
from ltau import ErrorDistributions, LTAUEstimator
from ltau.distributions import save_distributions
from ltau.histogram import Bins
path, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
counts = rng.integers(0, 50, size=(n, 100)).astype(np.uint16)
distributions = ErrorDistributions(Bins.log(1e-3, 10.0, 100), counts)
descriptors = rng.normal(size=(n, 16)).astype(np.float32)
estimator = LTAUEstimator(5).fit(descriptors, distributions) if kind == "estimator" else None
print("ready", flush=True)
for version in range(100000):
    if kind == "estimator":
        estimator.save(path, metadata={"version": version})
    else:
        save_distributions(distributions, path)
    print(version, flush=True)
"""

_RACER = """
import sys, time, pathlib
from ltau import ErrorRecorder
path, value, go = sys.argv[1], float(sys.argv[2]), pathlib.Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
start = time.time()
try:
    recorder = ErrorRecorder(50, log_path=path, overwrite=True)
    for _ in range(5):
        recorder.record_epoch([value] * 50)
        time.sleep(0.1)
    recorder.close()
except Exception as exc:
    print("refused", type(exc).__name__, exc, flush=True)
    sys.exit(3)
print("wrote", start, time.time(), flush=True)
"""


def _python(script: str, *arguments: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _kill_after(process: subprocess.Popen, delay: float, first: str | None = None) -> list[str]:
    """Collect ``process``'s lines (the clock starts when it prints ``first``, if given),
    SIGKILL it ``delay`` seconds later, and return the lines it printed."""
    lines: list[str] = []
    started = threading.Event()
    if first is None:
        started.set()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.strip())
            if line.strip() == first:
                started.set()
        started.set()  # the child ended before printing ``first``

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started.wait(CHILD_TIMEOUT)
    time.sleep(delay)
    process.kill()
    process.wait()
    reader.join(10)
    process.stdout.close()
    process.stderr.close()
    return [line for line in lines if line]


def _temporary_files(directory: Path, target: Path) -> list[Path]:
    return sorted(directory.glob(f".{target.name}.*"))


def kills_during_recording(workdir: Path, trials: int, n_samples: int, seed: int) -> dict:
    """Trial 1: kill -9 a recording child at random moments; count lost or altered epochs."""
    from ltau import ErrorLog, ErrorRecorder

    rng = random.Random(seed)
    result = {
        "kills": 0,
        "epochs_reported": 0,
        "epochs_lost": 0,
        "epochs_altered": 0,
        "files_unreadable": 0,
        "orphan_temp_files": 0,
        "errors": [],
    }
    for trial in range(trials):
        path = workdir / f"record-{trial}.h5"
        child = _python(_RECORDER, str(path), str(n_samples), str(HERE))
        lines = _kill_after(child, rng.uniform(1.5, 4.0))
        result["kills"] += 1
        reported = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        result["epochs_reported"] += reported
        try:
            with ErrorLog(path) as log:
                rows = log.to_array()
            for epoch, row in enumerate(rows):
                if not np.array_equal(row, epoch_errors(epoch, n_samples)):
                    result["epochs_altered"] += 1
            result["epochs_lost"] += max(0, reported - rows.shape[0])
            resumed = ErrorRecorder.resume(path)
            resumed.record_epoch(epoch_errors(rows.shape[0], n_samples))
            resumed.close()
        except Exception as exc:  # counted: a log that cannot be read or resumed
            result["files_unreadable"] += 1
            result["errors"].append(f"trial {trial}: {type(exc).__name__}: {exc}")
        result["orphan_temp_files"] += len(_temporary_files(workdir, path))
    return result


def kills_during_saves(workdir: Path, trials: int, n_samples: int, seed: int) -> dict:
    """Trial 2: kill -9 a child that saves over one path; the file must stay whole and no
    temporary file may survive the next load and save."""
    from ltau import LTAUEstimator
    from ltau.distributions import load_distributions, save_distributions

    rng = random.Random(seed)
    result = {
        "kills": 0,
        "files_unreadable": 0,
        "wrong_versions": 0,
        "orphan_temp_files_left_by_kills": 0,
        "orphan_temp_files": 0,
        "errors": [],
    }
    for trial in range(trials):
        kind = "estimator" if trial % 2 == 0 else "distributions"
        path = workdir / f"{kind}-{trial}.h5"
        child = _python(_SAVER, str(path), kind, str(n_samples))
        lines = _kill_after(child, rng.uniform(0.3, 2.5), first="ready")
        result["kills"] += 1
        saved = [int(line) for line in lines if line.isdigit()]
        result["orphan_temp_files_left_by_kills"] += len(_temporary_files(workdir, path))
        if not path.exists() and not saved:
            continue  # killed before the first save finished: nothing was promised
        try:
            if kind == "estimator":
                loaded = LTAUEstimator.load(path)
                version = loaded.metadata_["version"]
                if saved and not saved[-1] <= version <= saved[-1] + 1:
                    result["wrong_versions"] += 1
                loaded.save(path, metadata=loaded.metadata_)
            else:
                save_distributions(load_distributions(path), path)
        except Exception as exc:
            result["files_unreadable"] += 1
            result["errors"].append(f"trial {trial} ({kind}): {type(exc).__name__}: {exc}")
        result["orphan_temp_files"] += len(_temporary_files(workdir, path))
    return result


def writer_races(workdir: Path, trials: int) -> dict:
    """Trial 3: two writers on one log at once; a writer that exits 0 while the other wrote the
    same log, and whose epochs are not in it, lost them silently."""
    from ltau import ErrorLog

    result = {
        "races": 0,
        "silent_losses": 0,
        "refused_cleanly": 0,
        "tracebacks": 0,
        "sequential": 0,
        "errors": [],
    }
    for trial in range(trials):
        path, go = workdir / f"race-{trial}.h5", workdir / f"go-{trial}"
        racers = [_python(_RACER, str(path), str(value), str(go)) for value in (1.0, 2.0)]
        time.sleep(1.5)  # both children import ltau and wait at the barrier
        go.touch()
        outcomes = []
        for racer in racers:
            out, err = racer.communicate(timeout=CHILD_TIMEOUT)
            outcomes.append((racer.returncode, out.split(), err))
        result["races"] += 1
        wrote = {
            value: out
            for value, (code, out, _) in zip((1.0, 2.0), outcomes, strict=True)
            if code == 0
        }
        for code, _, err in outcomes:
            if "Traceback" in err:
                result["tracebacks"] += 1
                result["errors"].append(err.strip().splitlines()[-1])
            elif code == 3:
                result["refused_cleanly"] += 1
        if len(wrote) == 2:
            (start_a, end_a), (start_b, end_b) = (
                (float(out[1]), float(out[2])) for out in wrote.values()
            )
            if start_a < end_b and start_b < end_a:  # overlapping: both cannot be in the file
                with ErrorLog(path) as log:
                    present = set(np.unique(log.to_array()).tolist())
                result["silent_losses"] += sum(value not in present for value in wrote)
            else:
                result["sequential"] += 1
    return result


class _Payload:
    """Pickles as a call that creates ``marker``: proof, if the file exists, that loading ran
    code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _FxPayload:
    """Pickles as torch.fx's graph-module rebuild, with Python source that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        from torch.fx.graph_module import reduce_graph_module

        source = (
            "def forward(self, x):\n"
            f"    __import__('pathlib').Path({self.marker!r}).touch()\n"
            "    return x\n"
        )
        return reduce_graph_module, ({"_code": source, "training": False}, "import torch")


def _renamed_global(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data, old
    return data.replace(old, new)


def _rewrite_archive(source: bytes, target: Path, change) -> None:
    """Copy the zip archive ``source`` to ``target``, passing each ``data.pkl`` through
    ``change``."""
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(source)) as archive, zipfile.ZipFile(target, "w") as out:
        for entry in archive.infolist():
            data = archive.read(entry)
            out.writestr(
                entry.filename, change(data) if entry.filename.endswith("data.pkl") else data
            )


def _malicious_model_files(directory: Path, marker: Path) -> dict[str, Path]:
    """Model files whose loading would create ``marker`` if anything in them ran."""
    import io
    import pickle

    import sympy
    import torch

    files = {}

    def save(name: str, payload: object) -> None:
        files[name] = directory / f"{name}.model"
        torch.save(payload, files[name])

    save("root_payload", _Payload(marker))
    save("payload_in_dict", {"model": _Payload(marker)})
    save(
        "ltau_mace_v1_payload",
        {"format": "ltau-mace-model", "model": _Payload(marker), "settings": {}},
    )
    save(
        "ltau_mace_v2_payload",
        {
            "format": "ltau-mace-model",
            "format_version": 2,
            "settings": "{}",
            "architecture": "{}",
            "state_dict": {"w": _Payload(marker)},
        },
    )
    save(
        "ltau_nequip_payload",
        {"format": "ltau-nequip-model", "state_dict": {"w": _Payload(marker)}},
    )
    save("fx_graph_source", {"model": _FxPayload(marker)})

    class Poly:
        def __reduce__(self):
            return sympy.Poly, (f"__import__('pathlib').Path({str(marker)!r}).touch() or x",)

    buffer = io.BytesIO()
    torch.save({"model": Poly()}, buffer)
    files["class_imported_into_e3nn"] = directory / "class_imported_into_e3nn.model"
    _rewrite_archive(
        buffer.getvalue(),
        files["class_imported_into_e3nn"],
        lambda data: _renamed_global(
            data, b"sympy.polys.polytools\nPoly\n", b"e3nn.o3._angular_spherical_harmonics\nPoly\n"
        ),
    )
    script = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), script)
    files["torchscript_payload"] = directory / "torchscript_payload.pt"
    _rewrite_archive(
        script.getvalue(),
        files["torchscript_payload"],
        lambda data: pickle.dumps(_Payload(marker), protocol=2),
    )
    return files


def _malicious_arrays(directory: Path, marker: Path) -> dict[str, Path]:
    objects = np.array([_Payload(marker)], dtype=object)
    np.save(directory / "object_array.npy", objects, allow_pickle=True)
    np.savez(directory / "object_archive.npz", descriptors=objects, model_sha256=objects)
    return {
        "object_array": directory / "object_array.npy",
        "object_archive": directory / "object_archive.npz",
    }


def _outside_storage_files(directory: Path, originals: dict[str, Path]) -> dict[str, Path]:
    """Copies of valid ltau files with one dataset or link that reads a FIFO outside them."""
    import shutil

    import h5py

    fifo = directory / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    files = {}
    for kind, original in originals.items():
        for trick in ("external_link", "virtual_dataset", "external_storage"):
            target = directory / f"{kind}-{trick}.h5"
            shutil.copy(original, target)
            with h5py.File(target, "r+") as handle:
                if trick == "external_link":
                    handle["outside"] = h5py.ExternalLink(str(fifo), "/data")
                elif trick == "virtual_dataset":
                    layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
                    layout[:] = h5py.VirtualSource(str(fifo), "data", shape=(4,))
                    handle.create_virtual_dataset("outside", layout)
                else:
                    handle.create_dataset(
                        "outside", shape=(4,), dtype="f4", external=[(str(fifo), 0, 16)]
                    )
            files[f"{kind}_{trick}"] = target
    return files


_ENTRY = """
import sys
import mace  # before e3nn
from ltau.exceptions import LTAUFileError, LTAUInputError
path = sys.argv[1]
try:
{call}
except (LTAUFileError, LTAUInputError) as exc:
    print("refused:", exc)
    sys.exit(2)
print("loaded")
"""

_MODEL_ENTRY_POINTS = {
    "TrainedMACE.load": "    from ltau.integrations.mace import TrainedMACE\n    TrainedMACE.load(path)",
    "TrainedMACE.from_file": "    from ltau.integrations.mace import TrainedMACE\n"
    "    TrainedMACE.from_file(path)",
    "load_forcefield": "    from ltau.integrations.models import load_forcefield\n"
    "    load_forcefield(path)",
    "load_deployed_model": "    from ltau.integrations.deployed import load_deployed_model\n"
    "    load_deployed_model(path)",
    "check_foundation_model": "    from ltau.integrations.mace_train import check_foundation_model\n"
    "    check_foundation_model(path)",
}
_HDF5_ENTRY_POINTS = {
    "estimator": "    from ltau import LTAUEstimator\n    LTAUEstimator.load(path)",
    "distributions": "    from ltau.distributions import load_distributions\n"
    "    load_distributions(path)",
    "log": "    from ltau import ErrorLog\n    ErrorLog(path).close()",
    "log_resume": "    from ltau import ErrorRecorder\n    ErrorRecorder.resume(path).close()",
}


def _run_case(name: str, argv: list[str], marker: Path, workdir: Path) -> dict:
    """Run one malicious case; report whether its payload ran, it hung or it left a traceback."""
    marker.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT, cwd=workdir
        )
        outcome = {
            "case": name,
            "returncode": done.returncode,
            "hung": False,
            "traceback": "Traceback" in done.stderr,
            "message": (done.stdout + done.stderr).strip().splitlines()[-1:],
        }
    except subprocess.TimeoutExpired:
        outcome = {
            "case": name,
            "returncode": None,
            "hung": True,
            "traceback": False,
            "message": [],
        }
    outcome["executed"] = marker.exists()
    return outcome


def malicious_files(workdir: Path) -> dict:
    """Trial 4: every malicious file through every entry point that reads its kind."""
    from ltau import ErrorRecorder, LTAUEstimator
    from ltau.distributions import ErrorDistributions, save_distributions
    from ltau.histogram import Bins

    marker = workdir / "payload-ran"
    cases: list[tuple[str, list[str]]] = []
    ltau = [sys.executable, "-m", "ltau.cli"]
    structures = str(ACAC / "test_dihedral.xyz")

    rng = np.random.default_rng(0)
    distributions = ErrorDistributions(
        Bins.log(1e-3, 1.0, 20), rng.integers(0, 9, (40, 20)).astype(np.uint16)
    )
    originals = {
        "estimator": workdir / "estimator.h5",
        "distributions": workdir / "distributions.h5",
        "log": workdir / "log.h5",
    }
    LTAUEstimator(3).fit(rng.normal(size=(40, 4)).astype(np.float32), distributions).save(
        originals["estimator"]
    )
    save_distributions(distributions, originals["distributions"])
    with ErrorRecorder(40, log_path=originals["log"]) as recorder:
        recorder.record_epoch(np.full(40, 0.1))

    for name, path in _malicious_model_files(workdir, marker).items():
        for entry, call in _MODEL_ENTRY_POINTS.items():
            cases.append(
                (f"{name} -> {entry}", [sys.executable, "-c", _ENTRY.format(call=call), str(path)])
            )
        cases.append(
            (
                f"{name} -> ltau descriptors",
                [*ltau, "descriptors", structures, "--model", str(path), "-o", "d.npz"],
            )
        )
        cases.append(
            (
                f"{name} -> ltau relax",
                [
                    *ltau,
                    "relax",
                    structures,
                    "--model",
                    str(path),
                    "--estimator",
                    str(originals["estimator"]),
                    "-o",
                    "relaxed",
                ],
            )
        )
        cases.append(
            (
                f"{name} -> ltau mace-train --foundation_model",
                [
                    *ltau,
                    "mace-train",
                    "--log",
                    "mt.h5",
                    "--",
                    f"--foundation_model={path}",
                    f"--train_file={structures}",
                    "--name=evil",
                    "--max_num_epochs=1",
                ],
            )
        )
    for name, path in _malicious_arrays(workdir, marker).items():
        cases.append(
            (
                f"{name} -> ltau fit",
                [
                    *ltau,
                    "fit",
                    "--descriptors",
                    str(path),
                    "--distributions",
                    str(originals["distributions"]),
                    "-o",
                    "fitted.h5",
                ],
            )
        )
        cases.append(
            (
                f"{name} -> ltau predict",
                [
                    *ltau,
                    "predict",
                    str(originals["estimator"]),
                    "--descriptors",
                    str(path),
                    "-o",
                    "p.npy",
                ],
            )
        )
        cases.append(
            (
                f"{name} -> ltau calibrate",
                [
                    *ltau,
                    "calibrate",
                    str(originals["estimator"]),
                    "--descriptors",
                    str(path),
                    "--errors",
                    str(path),
                    "-o",
                    "c.h5",
                ],
            )
        )
    for name, path in _outside_storage_files(workdir, originals).items():
        kind = name.split("_")[0]
        points = {k: v for k, v in _HDF5_ENTRY_POINTS.items() if k.startswith(kind)}
        for entry, call in points.items():
            cases.append(
                (f"{name} -> {entry}", [sys.executable, "-c", _ENTRY.format(call=call), str(path)])
            )
        cases.append((f"{name} -> ltau describe", [*ltau, "describe", str(path)]))
    traj = workdir / "pickled.traj"
    traj.write_bytes(b"PickleTrajectory" + __import__("pickle").dumps(_Payload(marker)))
    xyz = workdir / "code_in_keys.xyz"
    xyz.write_text(
        "1\nProperties=species:S:1:pos:R:3 energy=1.0 "
        f"note=\"__import__('os').system('touch {marker}')\"\nH 0 0 0\n"
    )
    read = (
        "    from ltau.atomistic.structures import read_structures\n"
        "    read_structures(path, energy_key=None, forces_key=None, require_forces=False)"
    )
    for path in (traj, xyz):
        cases.append(
            (
                f"{path.name} -> read_structures",
                [sys.executable, "-c", _ENTRY.format(call=read), str(path)],
            )
        )

    outcomes = []
    for name, argv in cases:
        outcomes.append(_run_case(name, argv, marker, workdir))
        logger.info("%s: %s", name, "RAN" if outcomes[-1]["executed"] else "not run")
    return {
        "malicious_cases": len(outcomes),
        "malicious_files_executed": sum(o["executed"] for o in outcomes),
        "malicious_hangs": sum(o["hung"] for o in outcomes),
        "malicious_tracebacks": sum(o["traceback"] for o in outcomes),
        "malicious_loaded": [o["case"] for o in outcomes if o["returncode"] == 0],
        "failures": [o for o in outcomes if o["executed"] or o["hung"] or o["traceback"]],
    }


PARTS = ("recording", "saves", "races", "malicious", "bad_inputs", "fuzz")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="kill -9s of each kind (10)")
    parser.add_argument("--races", type=int, default=5, help="two-writer races (5)")
    parser.add_argument("--fuzz-cases", type=int, default=1000, help="per file format (1000)")
    parser.add_argument("--log-samples", type=int, default=200_000, help="samples per log row")
    parser.add_argument("--save-samples", type=int, default=200_000, help="samples per saved file")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "reliability.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.perf_counter()
    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ltau-reliability-") as scratch:
        workdir = Path(scratch)
        for part in args.parts:
            directory = workdir / part
            directory.mkdir()
            logger.info("part: %s", part)
            if part == "recording":
                parts[part] = kills_during_recording(
                    directory, args.kills, args.log_samples, args.seed
                )
            elif part == "saves":
                parts[part] = kills_during_saves(
                    directory, args.kills, args.save_samples, args.seed
                )
            elif part == "races":
                parts[part] = writer_races(directory, args.races)
            elif part == "malicious":
                parts[part] = malicious_files(directory)
            elif part == "bad_inputs":
                from _bad_inputs import run_matrix

                parts[part] = run_matrix(directory)
            else:
                from _fuzz import fuzz

                parts[part] = {
                    kind: fuzz(kind, args.fuzz_cases, seed=args.seed)
                    for kind in ("ltau-estimator", "ltau-distributions", "ltau-error-log")
                }
    summary = _summary(parts)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["parts"] = parts
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


def _summary(parts: dict[str, dict]) -> dict:
    """The issue's headline counts from the parts that ran (a part not run adds nothing)."""
    recording, saves = parts.get("recording", {}), parts.get("saves", {})
    races, malicious = parts.get("races", {}), parts.get("malicious", {})
    matrix, fuzzed = parts.get("bad_inputs", {}), parts.get("fuzz", {})
    return {
        "bad_inputs_tried": matrix.get("bad_inputs_tried", 0),
        "bad_inputs_clean_error": matrix.get("bad_inputs_clean_error", 0),
        "tracebacks": matrix.get("tracebacks", 0)
        + races.get("tracebacks", 0)
        + malicious.get("malicious_tracebacks", 0),
        "silent_wrong": matrix.get("silent_wrong", 0)
        + races.get("silent_losses", 0)
        + recording.get("epochs_altered", 0)
        + saves.get("wrong_versions", 0),
        "kills": recording.get("kills", 0) + saves.get("kills", 0),
        "epochs_lost": recording.get("epochs_lost", 0),
        "files_unreadable": recording.get("files_unreadable", 0) + saves.get("files_unreadable", 0),
        "orphan_temp_files": recording.get("orphan_temp_files", 0)
        + saves.get("orphan_temp_files", 0),
        "fuzz_cases": sum(part.get("cases", 0) for part in fuzzed.values()),
        "fuzz_crashes": sum(part.get("crashes", 0) for part in fuzzed.values()),
        "fuzz_hangs": sum(part.get("hangs", 0) for part in fuzzed.values()),
        "malicious_files_executed": malicious.get("malicious_files_executed", 0),
        "malicious_cases": malicious.get("malicious_cases", 0),
        "malicious_hangs": malicious.get("malicious_hangs", 0),
    }


if __name__ == "__main__":
    main()
