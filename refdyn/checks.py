"""The generic checks every registered operator gets, on any backend.

Used by ``refdyn check`` and by the registry-driven tests, so both apply the same criteria:

- :func:`compare_with_reference`: forward output and every gradient against the vectorized
  NumPy reference, with dtype-aware tolerances (:data:`refdyn.testing.cases.TOLERANCES`);
- :func:`finite_difference_check`: the backend's backward against central differences of its
  own forward (float64, kink-free cases only for the ``kinked`` inputs);
- :func:`adjoint_residuals`: the dot-product test for each input the operator is linear in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .finite_differences import GradcheckResult, adjoint_residual, gradcheck
from .registry import REFERENCE_BACKEND, Implementation, Operator
from .testing.cases import Case, close_enough, mismatch_report, scaled_error

#: Largest relative dot-product residual accepted in float64.
ADJOINT_TOLERANCE = 1e-10
#: Finite-difference step and tolerances (float64; kink-free cases keep a 0.05 margin).
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-5, 1e-7


@dataclass
class Comparison:
    """Scaled errors (see :func:`refdyn.testing.cases.scaled_error`) per output, and failures."""

    errors: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def max_error(self, names) -> float:
        return max((self.errors[name] for name in names if name in self.errors), default=0.0)


def run_forward(implementation: Implementation, case: Case):
    forward, _ = implementation.load()
    return np.asarray(forward(**case.forward_kwargs()))


def run_backward(implementation: Implementation, case: Case):
    _, backward = implementation.load()
    return backward(case.grad_output, **case.backward_kwargs())


def compare_with_reference(op: Operator, implementation: Implementation, case: Case) -> Comparison:
    """Forward and gradients of ``implementation`` against the reference backend on ``case``."""
    return compare_results(op, case, run_forward(implementation, case),
                           run_backward(implementation, case))


def compare_results(op: Operator, case: Case, output, actual_grads) -> Comparison:
    """A forward ``output`` and gradient record ``actual_grads`` computed on ``case`` (by any
    backend, on any launch grid) against the reference backend: same dtype and shape, close
    within the dtype's tolerances, None exactly where the reference's gradient record has
    None (a gradient the call has no input for, such as a RoI pooling's offset)."""
    reference = op.implementation(REFERENCE_BACKEND)
    dtype = case.grad_output.dtype
    result = Comparison()
    outputs = {"output": (np.asarray(output), run_forward(reference, case))}
    expected_grads = run_backward(reference, case)
    for name, expected in vars(expected_grads).items():     # grad_<each differentiable input>
        actual = getattr(actual_grads, name, None)
        if expected is None or actual is None:
            if (expected is None) != (actual is None):
                result.failures.append(f"{name}: expected {'None' if expected is None else 'an array'}")
            continue
        outputs[name] = (np.asarray(actual), np.asarray(expected))
    for name, (actual, expected) in outputs.items():
        if actual.dtype != dtype:
            result.failures.append(f"{name}: dtype {actual.dtype}, expected {dtype}")
        if actual.shape != expected.shape:
            result.failures.append(mismatch_report(name, actual, expected, dtype))
            continue
        result.errors[name] = scaled_error(actual, expected)
        if not close_enough(actual, expected, dtype):
            result.failures.append(mismatch_report(name, actual, expected, dtype))
    return result


def finite_difference_check(op: Operator, implementation: Implementation, case: Case,
                            max_entries: Optional[int] = None) -> GradcheckResult:
    """Backward against central differences of the forward, for every differentiable input
    present in ``case`` (the ``kinked`` ones only when the case is kink-free).  Needs float64."""
    if case.grad_output.dtype != np.float64:
        raise ValueError("finite-difference checks need a float64 case")
    forward, backward = implementation.load()
    wrt = [name for name in op.differentiable if case.arrays.get(name) is not None
           and (case.kink_free or name not in op.kinked)]
    return gradcheck(
        lambda **arrays: forward(**arrays, **case.params),
        lambda grad_output, **arrays: backward(grad_output, **arrays, **case.params,
                                               **case.backward_params),
        {name: value for name, value in case.arrays.items() if value is not None},
        wrt=wrt, grad_output=case.grad_output, eps=FD_EPS, rtol=FD_RTOL, atol=FD_ATOL,
        max_entries=max_entries, raise_on_failure=False)


def adjoint_residuals(op: Operator, implementation: Implementation, case: Case) -> dict[str, float]:
    """Relative dot-product residual of each linear input present in ``case``."""
    forward, backward = implementation.load()
    arrays = {name: value for name, value in case.arrays.items() if value is not None}
    return {
        name: adjoint_residual(
            lambda **a: forward(**a, **case.params),
            lambda grad_output, **a: backward(grad_output, **a, **case.params,
                                              **case.backward_params),
            arrays, name, case.grad_output)
        for name in op.linear if name in arrays
    }
