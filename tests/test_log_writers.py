"""One writer per error log: a log another process is writing is neither read as "corrupted"
nor replaced, and a writer whose file was replaced under it says so instead of writing on."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ltau import ErrorLog, ErrorRecorder, LTAUFileError

WRITER = """
import sys, time, pathlib
from ltau import ErrorRecorder
log, go = sys.argv[1], pathlib.Path(sys.argv[2])
recorder = ErrorRecorder(10, log_path=log, overwrite=True)
recorder.record_epoch([0.1] * 10)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.05)
recorder.record_epoch([0.2] * 10)
recorder.close()
"""


def test_a_log_in_use_by_another_writer_is_not_read_or_replaced(tmp_path):
    log, go = tmp_path / "errors.h5", tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(log), str(go)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        for attempt in (
            lambda: ErrorLog(log),
            lambda: ErrorRecorder.resume(log),
            lambda: ErrorRecorder(10, log_path=log, overwrite=True),
        ):
            with pytest.raises(LTAUFileError, match="in use by another process"):
                attempt()
        go.touch()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
    with ErrorLog(log) as reader:  # the writer's two epochs are all there
        np.testing.assert_allclose(reader.to_array()[:, 0], [0.1, 0.2], rtol=1e-6)


@pytest.mark.parametrize("change", ["replaced", "removed"])
def test_a_writer_whose_file_was_replaced_stops(tmp_path, change):
    log = tmp_path / "errors.h5"
    recorder = ErrorRecorder(5, log_path=log)
    recorder.record_epoch(np.full(5, 0.1))
    time.sleep(0.01)
    if change == "replaced":
        other = tmp_path / "other.h5"
        ErrorRecorder(5, log_path=other).close()
        os.replace(other, log)
    else:
        log.unlink()
    with pytest.raises(LTAUFileError, match="replaced or removed by another process"):
        recorder.record_epoch(np.full(5, 0.2))
    recorder.close()
