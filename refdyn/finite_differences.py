"""Finite-difference and adjoint checks for any NumPy function and its backward.

:func:`gradcheck` compares an analytic backward with central differences of the scalar loss
L = sum(grad_output * forward(...)); :func:`adjoint_residual` checks that a backward is the
transpose of a function that is linear (or affine) in one input:
<f(x) - f(0), g> = <x, f^T g>.

Bilinear sampling has kinks at integer coordinates (docs/conventions.md section 1), so a finite
difference of step ``eps`` is only meaningful when no sampling point lies within ``eps`` of an
integer.  :func:`kink_free_values` draws values whose fractional part keeps a margin from the
integers; added to an integer sampling grid they give kink-free sampling points.

Use float64 inputs: float32 finite differences are dominated by rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with finite differences; the message gives the worst entry."""


@dataclass
class GradcheckResult:
    """Per checked input: the largest absolute error, and the worst failing entry if any."""

    max_abs_error: dict[str, float] = field(default_factory=dict)
    worst_index: dict[str, tuple[int, ...]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _gradient_of(grads, name: str):
    """Read d L / d ``name`` from a mapping or from an object with ``grad_<name>`` attributes."""
    if isinstance(grads, Mapping):
        return grads[name]
    return getattr(grads, f"grad_{name}")


def gradcheck(forward: Callable, backward: Callable, inputs: Mapping[str, np.ndarray], *,
              wrt: Optional[Sequence[str]] = None, grad_output: Optional[np.ndarray] = None,
              eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
              max_entries: Optional[int] = None, seed: int = 0,
              raise_on_failure: bool = True) -> GradcheckResult:
    """Check ``backward`` against central finite differences of ``forward``.

    forward(**inputs) -> array y.  backward(grad_output, **inputs) -> the gradients, either a
    mapping name -> array or an object with ``grad_<name>`` attributes (as the refdyn backwards).
    wrt: the input names to check (default: every array input).  grad_output: dL/dy (default:
    standard normal, drawn with ``seed``).  Each checked entry i must satisfy
    |analytic_i - numeric_i| <= atol + rtol * |numeric_i|, where
    numeric_i = (L(x + eps e_i) - L(x - eps e_i)) / (2 eps).
    max_entries: check at most this many randomly chosen entries per input (default: all).
    Returns a :class:`GradcheckResult`; raises :class:`GradcheckError` on failure unless
    ``raise_on_failure`` is False.
    """
    rng = np.random.default_rng(seed)
    inputs = {name: value for name, value in inputs.items()}
    names = list(wrt) if wrt is not None else [
        name for name, value in inputs.items() if isinstance(value, np.ndarray)]
    output = np.asarray(forward(**inputs))
    if grad_output is None:
        grad_output = rng.standard_normal(output.shape).astype(output.dtype)
    grads = backward(grad_output, **inputs)

    def loss(name: str, perturbed: np.ndarray) -> float:
        return float(np.sum(np.asarray(forward(**{**inputs, name: perturbed})) * grad_output,
                            dtype=np.float64))

    result = GradcheckResult()
    for name in names:
        value = inputs[name]
        analytic = np.asarray(_gradient_of(grads, name))
        if analytic.shape != value.shape:
            result.failures.append(f"grad_{name} has shape {analytic.shape}, "
                                   f"expected {value.shape}")
            continue
        flat_indices = np.arange(value.size)
        if max_entries is not None and value.size > max_entries:
            flat_indices = rng.choice(value.size, size=max_entries, replace=False)
        max_error, worst_excess, worst_index, worst_pair = 0.0, 0.0, (), (0.0, 0.0)
        for flat in flat_indices:
            index = np.unravel_index(flat, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric = (loss(name, plus) - loss(name, minus)) / (2 * eps)
            error = abs(float(analytic[index]) - numeric)
            max_error = max(max_error, error)
            excess = error - (atol + rtol * abs(numeric))
            if excess > worst_excess:
                worst_excess, worst_index = excess, tuple(int(i) for i in index)
                worst_pair = (float(analytic[index]), numeric)
        result.max_abs_error[name] = max_error
        if worst_index:
            result.worst_index[name] = worst_index
            result.failures.append(
                f"grad_{name}{list(worst_index)}: analytic {worst_pair[0]:.10g}, finite "
                f"difference {worst_pair[1]:.10g} (|error| {abs(worst_pair[0] - worst_pair[1]):.3g} > "
                f"atol {atol:g} + rtol {rtol:g} * |numeric|)")
    if raise_on_failure and not result.ok:
        raise GradcheckError("gradient check failed:\n  " + "\n  ".join(result.failures))
    return result


def adjoint_residual(forward: Callable, backward: Callable, inputs: Mapping[str, np.ndarray],
                     name: str, grad_output: np.ndarray) -> float:
    """Relative residual of the dot-product test for an input the forward is affine in.

    With f(x) = forward(**inputs) as a function of inputs[name] and g = grad_output:
    lhs = <f(x) - f(0), g>, rhs = <x, backward(g)[name]>; returns |lhs - rhs| / max(|lhs|, |rhs|, tiny).
    """
    value = inputs[name]
    at_x = np.asarray(forward(**inputs), dtype=np.float64)
    at_zero = np.asarray(forward(**{**inputs, name: np.zeros_like(value)}), dtype=np.float64)
    lhs = float(np.sum((at_x - at_zero) * grad_output))
    gradient = np.asarray(_gradient_of(backward(grad_output, **inputs), name), dtype=np.float64)
    rhs = float(np.sum(value * gradient))
    return abs(lhs - rhs) / max(abs(lhs), abs(rhs), np.finfo(np.float64).tiny)


def kink_free_values(rng: np.random.Generator, shape, low: float, high: float,
                     margin: float = 0.05, dtype=np.float64) -> np.ndarray:
    """Values in [floor(low), ceil(high)) whose distance to every integer is at least ``margin``.

    An integer part uniform in [floor(low), ceil(high)) plus a fractional part uniform in
    [margin, 1 - margin].  Added to integer
    sampling positions (a convolution grid) they give points at least ``margin`` from every
    kink of bilinear sampling; use ``margin`` > the finite-difference step.
    """
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be in (0, 0.5), got {margin}")
    whole = rng.integers(int(np.floor(low)), max(int(np.ceil(high)), int(np.floor(low)) + 1),
                         size=shape)
    fraction = rng.uniform(margin, 1 - margin, size=shape)
    return (whole + fraction).astype(dtype)
