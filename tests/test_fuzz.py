"""A short fuzz of ltau's readers (the long one: ``python benchmarks/_fuzz.py``): every mutated
file is refused with an LTAUFileError naming it, or loads exactly the original content, and
no read hangs."""

from __future__ import annotations

import pytest
from _fuzz import FORMATS, MUTATIONS, _judge, fuzz


@pytest.mark.parametrize("file_format", FORMATS)
def test_mutated_files_are_refused_or_identical_and_never_hang(file_format):
    result = fuzz(file_format, n_cases=60, seed=7, timeout=60.0)
    assert result["cases"] == 60
    assert result["hangs"] == 0 and result["crashes"] == 0, result["failures"]
    assert result["clean_errors"] + result["loaded_identical"] == 60
    assert result["clean_errors"] >= 40  # the mutations do hit what matters
    assert set(result["by_mutation"]) == set(MUTATIONS)


def test_the_judge_counts_silent_changes_and_unclear_errors_as_crashes():
    name = "case-3.h5"
    assert _judge({"outcome": "loaded", "fingerprint": "a"}, "a", name)[0] == "loaded_identical"
    assert _judge({"outcome": "loaded", "fingerprint": "b"}, "a", name)[0] == "crashes"
    clean = {"outcome": "error", "type": "LTAUFileError", "message": f"/x/{name} is corrupted"}
    assert _judge(clean, "a", name)[0] == "clean_errors"
    unnamed = {"outcome": "error", "type": "LTAUFileError", "message": "corrupted"}
    assert _judge(unnamed, "a", name)[0] == "crashes"
    raw = {"outcome": "error", "type": "KeyError", "message": f"{name}: bad checksum"}
    assert _judge(raw, "a", name)[0] == "crashes"
    assert _judge({"outcome": "hang"}, "a", name)[0] == "hangs"
    assert _judge({"outcome": "died", "detail": "status -11"}, "a", name)[0] == "crashes"
