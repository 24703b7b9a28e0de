"""The checkers themselves: they pass correct gradients and catch wrong ones.

The mutant backwards below are deliberately wrong versions of the deform_conv2d backward (dy and
dx swapped, an offset sign flipped, the mask forgotten, the transpose of the wrong group).  Each
must make the generic checks fail: this is how we know the suite bites.
"""

import dataclasses

import numpy as np
import pytest

from refdyn import deform_conv2d, deform_conv2d_backward
from refdyn.checks import ADJOINT_TOLERANCE, adjoint_residuals, compare_with_reference, \
    finite_difference_check
from refdyn.finite_differences import GradcheckError, adjoint_residual, gradcheck, kink_free_values
from refdyn.registry import DEFORM_CONV2D, Implementation
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case


def test_gradcheck_accepts_a_correct_gradient_and_reports_errors():
    def forward(a, b):
        return np.sin(a) * b

    def backward(grad_output, a, b):
        return {"a": grad_output * np.cos(a) * b, "b": grad_output * np.sin(a)}

    rng = np.random.default_rng(0)
    inputs = {"a": rng.standard_normal(5), "b": rng.standard_normal(5)}
    result = gradcheck(forward, backward, inputs)
    assert result.ok and max(result.max_abs_error.values()) < 1e-8

    def wrong_backward(grad_output, a, b):
        grads = backward(grad_output, a, b)
        grads["b"] = grads["b"].copy()
        grads["b"][3] += 1e-3
        return grads

    with pytest.raises(GradcheckError, match=r"grad_b\[3\]"):
        gradcheck(forward, wrong_backward, inputs)
    result = gradcheck(forward, wrong_backward, inputs, raise_on_failure=False)
    assert not result.ok and result.worst_index == {"b": (3,)}


def test_gradcheck_reports_a_wrong_shape():
    result = gradcheck(lambda a: 2 * a, lambda go, a: {"a": go[:2]}, {"a": np.ones(3)},
                       raise_on_failure=False)
    assert result.failures == ["grad_a has shape (2,), expected (3,)"]


def test_adjoint_residual_is_zero_for_a_transpose_and_not_otherwise():
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((4, 3))
    inputs = {"x": rng.standard_normal(3)}
    grad_output = rng.standard_normal(4)
    forward = lambda x: matrix @ x + 1.0     # noqa: E731  (affine: the test subtracts f(0))
    assert adjoint_residual(forward, lambda g, x: {"x": matrix.T @ g}, inputs, "x",
                            grad_output) < 1e-14
    assert adjoint_residual(forward, lambda g, x: {"x": matrix[:3].T @ g[:3]}, inputs, "x",
                            grad_output) > 1e-3


def test_kink_free_values_keep_their_margin():
    values = kink_free_values(np.random.default_rng(2), 10_000, -4, 4, margin=0.1)
    distance = np.abs(values - np.round(values))
    assert distance.min() >= 0.1 and values.min() >= -4 and values.max() < 4
    with pytest.raises(ValueError, match="margin"):
        kink_free_values(np.random.default_rng(2), 3, 0, 1, margin=0.5)


# --- mutants: each wrong backward must be caught --------------------------------------------

def swap_dy_dx(grads):
    offset = grads.grad_offset.copy()
    offset[:, 0::2], offset[:, 1::2] = grads.grad_offset[:, 1::2], grads.grad_offset[:, 0::2]
    return dataclasses.replace(grads, grad_offset=offset)


def flip_dx_sign(grads):
    offset = grads.grad_offset.copy()
    offset[:, 1::2] *= -1
    return dataclasses.replace(grads, grad_offset=offset)


def drop_mask_from_input_grad(grads, case):
    """grad_input as if dm = 1: recompute without the mask."""
    without = deform_conv2d_backward(case.grad_output, **case.with_arrays(mask=None).backward_kwargs())
    return dataclasses.replace(grads, grad_input=without.grad_input)


def transpose_weight_grad(grads):
    return dataclasses.replace(grads, grad_weight=np.swapaxes(grads.grad_weight, 2, 3).copy())


MUTANTS = {
    "dy and dx swapped": lambda grads, case: swap_dy_dx(grads),
    "dx sign flipped": lambda grads, case: flip_dx_sign(grads),
    "mask forgotten in grad_input": drop_mask_from_input_grad,
    "weight gradient transposed": lambda grads, case: transpose_weight_grad(grads),
}


def mutant_implementation(mutate, case):
    def backward(grad_output, *args, **kwargs):
        return mutate(deform_conv2d_backward(grad_output, *args, **kwargs), case)
    return Implementation(deform_conv2d, backward)


@pytest.mark.parametrize("mutant", MUTANTS)
def test_every_mutant_backward_fails_the_generic_checks(mutant):
    case = make_case(DeformConvConfig(in_channels=2, out_channels=2, kernel=(3, 2), seed=3))
    implementation = mutant_implementation(MUTANTS[mutant], case)
    assert not finite_difference_check(DEFORM_CONV2D, implementation, case).ok
    assert not compare_with_reference(DEFORM_CONV2D, implementation, case).ok


def test_the_correct_backward_passes_the_same_checks():
    case = make_case(DeformConvConfig(in_channels=2, out_channels=2, kernel=(3, 2), seed=3))
    implementation = Implementation(deform_conv2d, deform_conv2d_backward)
    assert finite_difference_check(DEFORM_CONV2D, implementation, case).ok
    assert compare_with_reference(DEFORM_CONV2D, implementation, case).ok
    assert max(adjoint_residuals(DEFORM_CONV2D, implementation, case).values()) < ADJOINT_TOLERANCE


def test_a_wrong_input_gradient_fails_the_adjoint_test():
    case = make_case(DeformConvConfig(seed=4))
    implementation = mutant_implementation(drop_mask_from_input_grad, case)
    assert adjoint_residuals(DEFORM_CONV2D, implementation, case)["input"] > 1e-3
