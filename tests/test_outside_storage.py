"""ltau files hold their data themselves: links that point elsewhere, virtual datasets and
external raw storage are refused on load, before anything is read through them."""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
import pytest
from ltau_reference import reseal

from ltau import ErrorDistributions, ErrorLog, ErrorRecorder, LTAUEstimator, LTAUFileError
from ltau.distributions import load_distributions, save_distributions


@pytest.fixture
def files(tmp_path):
    """A fresh error log, distributions file and estimator file."""
    rng = np.random.default_rng(0)
    log = tmp_path / "log.h5"
    with ErrorRecorder(20, log_path=log) as recorder:
        for _ in range(3):
            recorder.record_epoch(rng.uniform(0.01, 1.0, 20))
    distributions = ErrorDistributions.from_errors(rng.uniform(0.01, 1.0, (20, 5)), n_bins=8)
    save_distributions(distributions, tmp_path / "dist.h5")
    estimator = LTAUEstimator(3).fit(rng.normal(size=(20, 4)), distributions)
    estimator.save(tmp_path / "est.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.arange(20, dtype=np.float32)
    return {"log": log, "dist": tmp_path / "dist.h5", "est": tmp_path / "est.h5", "other": other}


LOADERS = {
    "log": lambda path: ErrorLog(path).close(),
    "resume": lambda path: ErrorRecorder.resume(path).close(),
    "dist": load_distributions,
    "est": LTAUEstimator.load,
}
KIND_OF_LOADER = {"log": "log", "resume": "log", "dist": "dist", "est": "est"}


def plant(path, how: str, other) -> None:
    """Add to an ltau file one object whose data lives outside it, and seal the result (as a
    deliberate edit would: the seal alone refuses an edit that is not resealed)."""
    with h5py.File(path, "a") as handle:
        if how == "external_link":
            handle["planted"] = h5py.ExternalLink(str(other), "/x")
        elif how == "soft_link":
            handle["planted"] = h5py.SoftLink("/nowhere")
        elif how == "virtual":
            layout = h5py.VirtualLayout(shape=(20,), dtype=np.float32)
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(20,))
            handle.create_virtual_dataset("planted", layout)
        else:
            handle.create_dataset(
                "planted", shape=(4,), dtype=np.uint8, external=[(str(other), 0, 4)]
            )
    reseal(path)


@pytest.mark.parametrize("how", ["external_link", "soft_link", "virtual", "external_raw"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_objects_stored_outside_the_file_are_refused(files, loader, how):
    path = files[KIND_OF_LOADER[loader]]
    LOADERS[loader](path)  # loads before the change
    plant(path, how, files["other"])
    with pytest.raises(LTAUFileError, match="outside"):
        LOADERS[loader](path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_link_to_a_fifo_is_refused_without_hanging(files, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with h5py.File(files["log"], "a") as handle:
        del handle["errors"]
        handle["errors"] = h5py.ExternalLink(str(fifo), "/errors")
    reseal(files["log"])
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            ErrorLog(files["log"]).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "loading hung on the FIFO"
    assert isinstance(outcome[0], LTAUFileError) and "ExternalLink" in str(outcome[0])
