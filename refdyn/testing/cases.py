"""A test case of one operator call, and the tolerances that compare two implementations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


class Config:
    """Base of the configuration dataclasses: a one-line description for failure reports."""

    def describe(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in asdict(self).items())


@dataclass
class Case:
    """The arguments of one forward/backward call.

    arrays: the array arguments by name (None for an absent optional one, e.g. no bias);
    params: the other forward arguments (stride, padding, ...); backward_params: arguments
    only the backward takes (e.g. ``coord_grad``); grad_output: dL/d output for the backward;
    description: one line naming the configuration, shown in failure reports; kink_free: every
    sampling point keeps a margin from the kinks, so finite differences through the sampling
    coordinates are valid.
    """

    arrays: dict[str, Optional[np.ndarray]]
    params: dict[str, object]
    grad_output: np.ndarray
    backward_params: dict[str, object] = field(default_factory=dict)
    description: str = ""
    kink_free: bool = False

    def forward_kwargs(self) -> dict[str, object]:
        return {**self.arrays, **self.params}

    def backward_kwargs(self) -> dict[str, object]:
        return {**self.arrays, **self.params, **self.backward_params}

    def with_arrays(self, **arrays) -> "Case":
        """A copy with some arrays replaced."""
        return Case({**self.arrays, **arrays}, self.params, self.grad_output,
                    self.backward_params, self.description, self.kink_free)


#: (rtol, atol) per dtype for comparing two implementations; atol is relative to the largest
#: magnitude of the expected array (sums of many float32 terms lose digits in proportion).
TOLERANCES = {np.dtype(np.float64): (1e-10, 1e-11), np.dtype(np.float32): (2e-4, 2e-5)}


def scaled_error(actual, expected) -> float:
    """max |actual - expected| / max(1, max |expected|): the error the tolerances bound."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def tolerance(expected, dtype) -> np.ndarray:
    """atol * max(1, max|expected|) + rtol * |expected|, element by element."""
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    return atol * scale + rtol * np.abs(expected)


def close_enough(actual, expected, dtype) -> bool:
    """|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected| everywhere."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return False
    return bool(np.all(np.abs(actual - expected) <= tolerance(expected, dtype)))


def mismatch_report(name: str, actual, expected, dtype) -> str:
    """Where two arrays disagree most: index, expected and actual values, tolerance."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape}, expected {expected.shape}"
    difference = np.abs(actual - expected)
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    return (f"{name}{list(map(int, worst))}: expected {expected[worst]:.10g}, got "
            f"{actual[worst]:.10g} (scaled error {scaled_error(actual, expected):.3g}; "
            f"{np.dtype(dtype)} tolerance rtol={rtol:g}, atol={atol:g} x scale)")


def assert_close(name: str, actual, expected, dtype) -> None:
    """Assert that ``actual`` is a NumPy array of ``dtype`` (as ``expected`` is) within
    :func:`close_enough` of ``expected``; the message is :func:`mismatch_report`'s."""
    assert isinstance(actual, np.ndarray), f"{name}: {type(actual).__name__}"
    assert actual.dtype == expected.dtype == np.dtype(dtype), name
    assert close_enough(actual, expected, dtype), mismatch_report(name, actual, expected, dtype)


def assert_grads_close(actual, expected, dtype, names) -> None:
    """:func:`assert_close` on each gradient ``names`` of two gradient records, which must be
    None in both or in neither."""
    for name in names:
        a, e = getattr(actual, name), getattr(expected, name)
        assert (a is None) == (e is None), name
        if e is not None:
            assert_close(name, a, e, dtype)


def _raised_error(function, kwargs):
    """The TypeError or ValueError ``function(**kwargs)`` raises, or None."""
    try:
        function(**kwargs)
    except (TypeError, ValueError) as error:
        return error
    return None


def error_mismatches(reference_forward, reference_backward, forward, backward, arguments,
                     on_device=lambda array: array) -> list[str]:
    """Where a backend's ``forward`` and ``backward`` fail to raise the NumPy reference's error,
    same type and message, on the bad ``arguments`` (which hold grad_output) with every array
    moved by ``on_device``: empty when all match.  The forward is called without grad_output,
    and only where the reference's forward fails (a bad grad_output only reaches the backward)."""
    moved = {k: on_device(v) if isinstance(v, np.ndarray) else v for k, v in arguments.items()}
    forward_names = [name for name in arguments if name != "grad_output"]
    mismatches = []
    for reference, mirror, names in [(reference_backward, backward, list(arguments)),
                                     (reference_forward, forward, forward_names)]:
        expected = _raised_error(reference, {name: arguments[name] for name in names})
        if expected is None:
            if reference is reference_backward:
                mismatches.append("the NumPy reference accepts these arguments")
            continue
        actual = _raised_error(mirror, {name: moved[name] for name in names})
        if (type(actual), str(actual)) != (type(expected), str(expected)):
            mismatches.append(f"{reference.__name__}: expected {expected!r}, got {actual!r}")
    return mismatches
