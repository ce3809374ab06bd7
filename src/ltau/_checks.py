"""Shared argument checks that turn bad input into errors naming the problem.

Every check returns the validated value (converted to the type the caller computes with) or
raises :class:`~ltau.exceptions.LTAUInputError` with a message that names the argument. The
checks of probability mass on bins live beside :class:`~ltau.histogram.Bins`
(:func:`ltau.histogram.checked_mass`), which this module does not import.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ltau.exceptions import LTAUInputError

MAX_BINS = 100_000
"""The most histogram bins ltau builds: every sample's distribution holds one count per bin,
so memory grows as samples x bins; far fewer bins than recorded errors per sample are useful."""

_NOT_REAL = {
    "c": "complex numbers (the imaginary part would be dropped)",
    "U": "strings",
    "S": "bytes",
    "M": "dates",
    "m": "time spans",
    "V": "structured records",
}


def real_array(values: object, name: str, dtype: type = np.float64) -> np.ndarray:
    """``values`` as an array of real numbers of ``dtype``: the one conversion of numeric
    input. Complex numbers, strings, dates and records are refused rather than converted (NumPy
    would drop an imaginary part or parse ``"1.5"``), as are values that overflow ``dtype``."""
    try:
        raw = np.asarray(values)
        if raw.dtype.kind == "O":
            raw = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must be a numeric array: {exc}") from exc
    if raw.dtype.kind in _NOT_REAL:
        raise LTAUInputError(f"{name} must hold real numbers, not {_NOT_REAL[raw.dtype.kind]}")
    with np.errstate(over="ignore"):
        array = raw.astype(dtype, copy=False)
    if raw.dtype.kind == "f" and array.dtype != raw.dtype:
        overflow = np.isfinite(raw) & ~np.isfinite(array)
        if overflow.any():
            position = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise LTAUInputError(
                f"{name} holds {raw[position]} at index {position}, too large for {array.dtype}"
            )
    return array


def bin_count(value: object, name: str = "n_bins") -> int:
    """A number of histogram bins: an int in ``[1, MAX_BINS]``."""
    count = positive_int(value, name)
    if count > MAX_BINS:
        raise LTAUInputError(
            f"{name} must be at most {MAX_BINS} (each sample keeps one count per bin); got {count}"
        )
    return count


def as_float_matrix(values: object, name: str, *, dtype: type = np.float32) -> np.ndarray:
    """Return ``values`` as a C-contiguous 2-D float array, rejecting empty or non-finite input."""
    array = real_array(values, name, dtype)
    if array.ndim != 2:
        raise LTAUInputError(f"{name} must be 2-D (n_samples, n_features); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise LTAUInputError(f"{name} is empty (shape {array.shape})")
    check_finite(array, name)
    return np.ascontiguousarray(array)


def as_error_vector(values: object, name: str = "errors") -> np.ndarray:
    """Return ``values`` as a 1-D float32 array of finite, non-negative errors."""
    array = real_array(values, name, np.float32)
    if array.ndim != 1:
        raise LTAUInputError(f"{name} must be 1-D (one error per sample); got shape {array.shape}")
    check_finite(array, name)
    if array.size and float(array.min()) < 0:
        first = int(np.flatnonzero(array < 0)[0])
        raise LTAUInputError(
            f"{name} must be non-negative error magnitudes; entry {first} is {array[first]}"
        )
    return array


def as_index_vector(values: object, n_samples: int, name: str = "ids") -> np.ndarray:
    """Return ``values`` as 1-D int64 sample ids, each in ``[0, n_samples)``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise LTAUInputError(f"{name} must be 1-D; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise LTAUInputError(f"{name} must be integers; got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= n_samples):
        bad = array[(array < 0) | (array >= n_samples)][0]
        raise LTAUInputError(f"{name} must lie in [0, {n_samples}); found {bad}")
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise if ``array`` holds NaN or infinity, naming the first offending position."""
    finite = np.isfinite(array)
    if not finite.all():
        position = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise LTAUInputError(f"{name} contains {array[position]} at index {position}")


def as_probabilities(values: float | Iterable[float], name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array of numbers in [0, 1]."""
    array = np.atleast_1d(real_array(values, name))
    if array.ndim != 1 or array.size == 0:
        raise LTAUInputError(f"{name} must be a number or a non-empty list of numbers")
    if not np.all((array >= 0) & (array <= 1)):
        raise LTAUInputError(f"{name} must lie in [0, 1]; got {array.tolist()}")
    return array


def integer(value: object, name: str, minimum: int = 0, requirement: str | None = None) -> int:
    """``value`` as an int ``>= minimum`` (Python or NumPy integers; bools are refused).

    The error says ``"<name> must be <requirement>"``; by default "a positive integer" for
    ``minimum=1``, "a non-negative integer" for 0, else "an integer >= minimum".
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        if requirement is None:
            requirement = {0: "a non-negative integer", 1: "a positive integer"}.get(
                minimum, f"an integer >= {minimum}"
            )
        raise LTAUInputError(f"{name} must be {requirement}; got {value!r}")
    return int(value)


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as a positive int or raise."""
    return integer(value, name, 1)


def non_negative_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 0 or raise."""
    return integer(value, name, 0)


def is_real(value: object) -> bool:
    """True for a real number (Python or NumPy int or float), False for bools and the rest."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def non_negative_number(
    value: object, name: str, requirement: str = "a non-negative number"
) -> float:
    """``value`` as a finite float >= 0 (bools, strings, NaN and infinities are refused);
    the error says ``"<name> must be <requirement>"``."""
    return _real(value, name, False, requirement)


def positive_number(value: object, name: str, requirement: str = "a positive number") -> float:
    """``value`` as a finite float > 0 (bools, strings, NaN and infinities are refused);
    the error says ``"<name> must be <requirement>"``, e.g. ``"a positive number (eV/Å)"``."""
    return _real(value, name, True, requirement)


def _real(value: object, name: str, positive: bool, requirement: str) -> float:
    number = float(value) if is_real(value) else np.nan  # type: ignore[arg-type]
    if not np.isfinite(number) or number < 0 or (positive and number == 0):
        raise LTAUInputError(f"{name} must be {requirement}; got {value!r}")
    return number


def tolerances(atol: object) -> np.ndarray:
    """Error tolerances ``atol`` as float64: a 0-d array for a number, ``(m,)`` for a sequence.

    The rule used everywhere a tolerance is taken (``P(error > atol)``, exceedance flags,
    forgetting events): finite and ``>= 0``, in the error's unit. 0 is allowed: errors are
    magnitudes, so ``P(error > 0)`` and "any error counts" are well defined.
    """
    try:
        values = real_array(atol, "atol")
    except LTAUInputError:
        values = np.array([np.nan])
    if values.ndim > 1 or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise LTAUInputError(
            f"atol must be finite, non-negative numbers (error tolerances); got {atol!r}"
        )
    return values


def tolerance(atol: object) -> float:
    """One error tolerance (see :func:`tolerances`) as a float."""
    values = tolerances(atol)
    if values.ndim != 0:
        raise LTAUInputError(f"atol must be one number here; got {atol!r}")
    return float(values)


def group_labels(groups: object, n: int, what: str = "sample") -> np.ndarray:
    """``groups`` as int64 labels, one per ``what`` (shape ``(n,)``), e.g. structure ids."""
    array = np.asarray(groups)
    if array.shape != (n,):
        raise LTAUInputError(
            f"groups must give one label per {what}, shape ({n},); got {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise LTAUInputError(f"groups must be integer labels; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def paired_vectors(*arrays: Any, names: tuple[str, ...]) -> list[np.ndarray]:
    """``arrays`` as 1-D float64 arrays, each non-empty and finite, all of one length."""
    values = [real_array(array, name) for array, name in zip(arrays, names, strict=True)]
    for value, name in zip(values, names, strict=True):
        if value.ndim != 1:
            raise LTAUInputError(f"{name} must be 1-D; got shape {value.shape}")
        if value.size == 0:
            raise LTAUInputError(f"{name} is empty")
        if not np.all(np.isfinite(value)):
            raise LTAUInputError(f"{name} contains NaN or infinity")
    if len({value.size for value in values}) != 1:
        sizes = ", ".join(f"{n}={v.size}" for n, v in zip(names, values, strict=True))
        raise LTAUInputError(f"arrays must have equal length; got {sizes}")
    return values


def checked_errors(values: Any, name: str, n: int | None = None) -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array of finite errors >= 0, one per row of a mass
    array of ``n`` rows if ``n`` is given."""
    (array,) = paired_vectors(values, names=(name,))
    if n is not None and array.size != n:
        raise LTAUInputError(f"{name} has {array.size} entries but mass has {n} rows")
    if np.any(array < 0):
        first = int(np.flatnonzero(array < 0)[0])
        raise LTAUInputError(
            f"{name} must be non-negative error magnitudes; entry {first} is {array[first]}"
        )
    return array


def checked_pit(pit_values: Any) -> np.ndarray:
    """PIT values as a non-empty, finite 1-D float64 array in [0, 1]."""
    (pit,) = paired_vectors(pit_values, names=("pit_values",))
    if np.any((pit < 0) | (pit > 1)):
        raise LTAUInputError("pit_values must lie in [0, 1]")
    return pit


def checked_levels(levels: Any) -> np.ndarray:
    """Calibration levels (expected proportions) as a strictly increasing 1-D array in [0, 1]."""
    (array,) = paired_vectors(levels, names=("levels",))
    if np.any((array < 0) | (array > 1)):
        raise LTAUInputError(f"levels must lie in [0, 1]; got {array.tolist()}")
    if array.size > 1 and not np.all(np.diff(array) > 0):
        raise LTAUInputError("levels must be strictly increasing")
    return array


def non_negative_vector(values: Any, name: str, n: int) -> np.ndarray:
    """``values`` as float64 of shape ``(n,)``, finite and >= 0."""
    array = real_array(values, name)
    if array.shape != (n,):
        raise LTAUInputError(f"{name} must have shape ({n},); got {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise LTAUInputError(f"{name} must be finite and non-negative")
    return array


def number_pair(values: Any, name: str) -> tuple[float, float]:
    """Bounds ``(low, high)`` with ``0 < low < high``, both finite."""
    try:
        low, high = (float(value) for value in values)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must be two numbers (low, high); got {values!r}") from exc
    if not (np.isfinite(low) and np.isfinite(high) and 0 < low < high):
        raise LTAUInputError(f"{name} need 0 < low < high; got ({low}, {high})")
    return low, high


def boolean(value: object, name: str) -> bool:
    """``value`` if it is a bool, else an error (no truthiness: ``"no"`` is not False)."""
    if not isinstance(value, bool):
        raise LTAUInputError(f"{name} must be True or False; got {value!r}")
    return value
