"""Shared argument checks that turn bad input into errors naming the problem."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ltau.exceptions import LTAUInputError


def as_float_matrix(values: object, name: str, *, dtype: type = np.float32) -> np.ndarray:
    """Return ``values`` as a C-contiguous 2-D float array, rejecting empty or non-finite input."""
    try:
        array = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must be a numeric array: {exc}") from exc
    if array.ndim != 2:
        raise LTAUInputError(f"{name} must be 2-D (n_samples, n_features); got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise LTAUInputError(f"{name} is empty (shape {array.shape})")
    check_finite(array, name)
    return np.ascontiguousarray(array)


def as_error_vector(values: object, name: str = "errors") -> np.ndarray:
    """Return ``values`` as a 1-D float32 array of finite, non-negative errors."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise LTAUInputError(f"{name} must be a numeric array: {exc}") from exc
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
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1 or array.size == 0:
        raise LTAUInputError(f"{name} must be a number or a non-empty list of numbers")
    if not np.all((array >= 0) & (array <= 1)):
        raise LTAUInputError(f"{name} must lie in [0, 1]; got {array.tolist()}")
    return array


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as a positive int or raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LTAUInputError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def non_negative_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 0 or raise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise LTAUInputError(f"{name} must be a non-negative integer; got {value!r}")
    return int(value)


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
