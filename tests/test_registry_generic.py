"""Generic properties of every registered operator, on every backend this machine has.

Registering an operator in :mod:`refdyn.registry` is enough for it to be covered here:
backend equality with the vectorized reference, finite differences of every differentiable
input (float64; kinked inputs only on kink-free cases) and the adjoint test of its linear
inputs.  A backend that cannot run here is skipped with the reason (no GPU, package missing).
"""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refdyn.checks import ADJOINT_TOLERANCE, adjoint_residuals, compare_with_reference, \
    finite_difference_check
from refdyn.registry import OPERATORS, REFERENCE_BACKEND, load

OPERATOR_BACKENDS = [(op, backend) for op in OPERATORS.values() for backend in op.implementations]


def runnable(op, backend):
    """The implementation, or a skip naming why this machine cannot run it."""
    implementation = op.implementation(backend)
    problem = implementation.problem()
    if problem:
        pytest.skip(f"{backend} backend not available: {problem}")
    return implementation


def draw_case(data, op, **knobs):
    config = data.draw(load(op.configs)(**knobs), label="config")
    return load(op.make_case)(config)


@pytest.mark.parametrize(
    "op,backend", [(op, b) for op, b in OPERATOR_BACKENDS if b != REFERENCE_BACKEND],
    ids=lambda value: getattr(value, "name", value))
@given(data=st.data())
def test_backend_matches_reference(op, backend, data):
    implementation = runnable(op, backend)
    case = draw_case(data, op)
    comparison = compare_with_reference(op, implementation, case)
    assert comparison.ok, f"{case.description}\n" + "\n".join(comparison.failures)


@pytest.mark.parametrize("op", OPERATORS.values(), ids=lambda op: op.name)
@given(data=st.data())
def test_gradients_match_finite_differences_kink_free(op, data):
    case = draw_case(data, op, dtypes=("float64",), kink_free=True)
    result = finite_difference_check(op, op.implementation(REFERENCE_BACKEND), case)
    assert result.ok, f"{case.description}\n" + "\n".join(result.failures)


@pytest.mark.parametrize("op", OPERATORS.values(), ids=lambda op: op.name)
@given(data=st.data())
def test_smooth_inputs_match_finite_differences_on_any_case(op, data):
    """Inputs the output is smooth in (not the sampling coordinates) need no kink-free case."""
    case = draw_case(data, op, dtypes=("float64",))
    case.kink_free = False
    result = finite_difference_check(op, op.implementation(REFERENCE_BACKEND), case)
    assert result.ok, f"{case.description}\n" + "\n".join(result.failures)


@pytest.mark.parametrize("op,backend", OPERATOR_BACKENDS,
                         ids=lambda value: getattr(value, "name", value))
@given(data=st.data())
def test_adjoint_of_linear_inputs(op, backend, data):
    implementation = runnable(op, backend)
    case = draw_case(data, op, dtypes=("float64",))
    for name, residual in adjoint_residuals(op, implementation, case).items():
        assert residual <= ADJOINT_TOLERANCE, f"{name}: residual {residual:.3g}\n{case.description}"


@pytest.mark.parametrize("op", OPERATORS.values(), ids=lambda op: op.name)
def test_every_backend_is_listed_with_importable_numpy_paths(op):
    for backend in ("literal", "vectorized"):
        forward, backward = op.implementation(backend).load()
        assert callable(forward) and callable(backward)
    assert set(op.differentiable) >= set(op.linear) | set(op.kinked)


@pytest.mark.parametrize("op", OPERATORS.values(), ids=lambda op: op.name)
def test_example_configs_cover_a_kink_free_float64_case(op):
    cases = [load(op.make_case)(config) for config in load(op.examples)(False)]
    assert any(case.kink_free and case.grad_output.dtype == np.float64
               and case.grad_output.size for case in cases)
