"""Argument checks shared by every operator and every backend.

Each check raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape or
value) with a message that names the argument and says what was expected.  The checks only
read ``.shape``, ``.dtype`` and, through a caller-supplied function, finiteness, so the GPU
backends run the same checks on their own device arrays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_pair(value, name: str) -> tuple[int, int]:
    """Return ``(v, v)`` for an int or the two ints of a pair; reject anything else."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in pair
    ):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_float_array(array, name: str, ndim: int, dtype=None) -> np.dtype:
    """Check that ``array`` is a float32/float64 array with ``ndim`` dimensions.

    With ``dtype`` given, the array must have exactly that dtype (all the arrays of one
    call share the input's dtype).  A masked array (``numpy.ma``) is refused: every backend would
    compute with the values under its mask, and each would treat a NaN hidden there otherwise.
    Returns the array's dtype.
    """
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(array).__name__}")
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array, not a masked array (numpy.ma): the "
                        "values under its mask would be computed with; pass array.filled(value)")
    array_dtype = np.dtype(array.dtype)
    if array_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {array_dtype}")
    if dtype is not None and array_dtype != dtype:
        raise TypeError(f"{name} has dtype {array_dtype} but input has dtype {dtype}; "
                        "all arrays of one call must share one dtype")
    if len(array.shape) != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(array.shape)}")
    return array_dtype


def check_shape(array, name: str, expected: tuple[int, ...], meaning: str) -> None:
    """Raise ``ValueError`` unless ``array.shape == expected``; ``meaning`` spells the axes."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, "
                         f"got {tuple(array.shape)}")


def check_grad_output(grad_output, expected_shape, dtype, meaning: str) -> None:
    """Check a backward's ``grad_output`` against the forward's output: a float array of
    ``dtype`` with shape ``expected_shape`` (``meaning`` names its axes in the message)."""
    check_float_array(grad_output, "grad_output", len(expected_shape), dtype)
    check_shape(grad_output, "grad_output", expected_shape, meaning)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int: TypeError unless it is an int (not a bool), ValueError if below
    ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_at_most(value: int, name: str, limit: int, what: str) -> int:
    """``value`` must not exceed ``limit``; ``what`` says what is counted and names the limit."""
    if value > limit:
        raise ValueError(f"{name} must be <= {limit} ({what}), got {value}")
    return value


def check_finite(array, name: str, all_finite: Callable) -> None:
    """Raise ``ValueError`` if ``array`` holds NaN or infinity (``all_finite(array) -> bool``)."""
    if not all_finite(array):
        raise ValueError(f"{name} must be finite (it contains NaN or infinity)")


def numpy_all_finite(array) -> bool:
    """The finiteness test used for NumPy arrays."""
    return bool(np.isfinite(array).all())
