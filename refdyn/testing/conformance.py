"""Check a user's implementation of a registered operator against refdyn.

In a pytest suite (``my_deform_conv2d`` takes the arguments of :func:`refdyn.deform_conv2d`)::

    from refdyn.testing import check_forward
    def test_my_kernel(): check_forward(my_deform_conv2d, "deform_conv2d", dtypes=("float32",))

:func:`check_forward` and :func:`check_backward` draw configurations with the operator's
registered Hypothesis strategy (``refdyn.registry.Operator.configs``; every keyword argument
besides ``max_examples`` and ``derandomize`` is one of its knobs: ``dtypes``, ``kink_free``,
``offset_kinds``, ``boundaries``, ``coord_grads``, size limits ...), call the candidate with the
same keyword arguments as refdyn's function, and compare with the reference backend under the
dtype-aware tolerances of :mod:`refdyn.testing.cases`.  On a disagreement Hypothesis shrinks
the configuration, and the AssertionError names the minimal one: the configuration, the worst
element, its sampling coordinates where the operator has them, expected and actual values.

A candidate in another layout (ONNX, mmcv, MXNet) is wrapped into refdyn's signature with the
functions of :mod:`refdyn.testing.adapters`.  :func:`run_conformance` is the non-raising form
that ``refdyn validate`` uses: it returns the largest errors seen and the counterexample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
from hypothesis import HealthCheck, assume, given, settings

from ..registry import OPERATORS, REFERENCE_BACKEND, Operator, load
from .cases import TOLERANCES, Case, close_enough

DIRECTIONS = ("forward", "backward")


@dataclass
class Conformance:
    """The outcome of one :func:`run_conformance`: examples run, the largest absolute error and
    the largest error relative to the expected array's largest magnitude over every compared
    array, and the minimal counterexample (None when every example agreed)."""

    operator: str
    direction: str
    examples: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    counterexample: Optional[str] = None
    error: Optional[BaseException] = None

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    def record(self, actual: np.ndarray, expected: np.ndarray) -> None:
        if actual.shape != expected.shape or expected.size == 0:
            return
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        largest = float(np.max(np.abs(expected)))
        worst = float(np.max(difference))
        self.max_abs_error = max(self.max_abs_error, worst)
        relative = worst / largest if largest > 0 else (0.0 if worst == 0 else np.inf)
        self.max_rel_error = max(self.max_rel_error, relative)


def _operator(op: Union[str, Operator]) -> Operator:
    if isinstance(op, Operator):
        return op
    if op not in OPERATORS:
        raise ValueError(f"unknown operator {op!r}; registered: {sorted(OPERATORS)}")
    return OPERATORS[op]


def _grads(result, operator: Operator) -> dict[str, Optional[np.ndarray]]:
    """grad_<name> of a backward result, an object with attributes or a mapping."""
    def get(name):
        return result.get(name) if isinstance(result, dict) else getattr(result, name, None)
    return {f"grad_{name}": get(f"grad_{name}") for name in operator.differentiable}


def _compared_arrays(candidate: Callable, operator: Operator, direction: str, case: Case):
    """name -> (actual, expected) for the output or every gradient, and the problems found
    before comparing values (missing or extra gradients)."""
    forward, backward = operator.implementation(REFERENCE_BACKEND).load()
    if direction == "forward":
        expected = {"output": forward(**case.forward_kwargs())}
        actual = {"output": candidate(**case.forward_kwargs())}
    else:
        expected = _grads(backward(case.grad_output, **case.backward_kwargs()), operator)
        actual = _grads(candidate(case.grad_output, **case.backward_kwargs()), operator)
    pairs, problems = {}, []
    for name, want in expected.items():
        got = actual[name]
        if want is None or got is None:
            if (want is None) != (got is None):
                problems.append(f"{name}: expected {'None' if want is None else 'an array'}, "
                                f"got {'None' if got is None else 'an array'}")
            continue
        pairs[name] = (np.asarray(got), np.asarray(want))
    return pairs, problems


def _sampling_coordinates(operator: str, case: Case, name: str, index: tuple) -> list[str]:
    """Where the element ``name[index]`` samples the image, for the operators with explicit
    sampling points (REFERENCE.md sections 1-2); empty for the others."""
    arrays = case.arrays
    if operator == "bilinear_sample":
        if name not in ("output", "grad_y", "grad_x"):
            return []
        point = index[len(index) - arrays["y"].ndim:]   # the output's trailing axes are the points
        return [f"p_y={float(arrays['y'][point]):.9g}, p_x={float(arrays['x'][point]):.9g}"]
    if operator != "deform_conv2d" or name not in ("output", "grad_offset", "grad_mask"):
        return []
    offset, weight = arrays["offset"], arrays["weight"]
    kh, kw = weight.shape[2:]
    taps = kh * kw
    stride, padding, dilation = (np.broadcast_to(case.params[key], 2)
                                 for key in ("stride", "padding", "dilation"))
    n, channel, i, j = index
    if name == "output":
        groups = arrays["input"].shape[1] // weight.shape[1]
        offset_groups = offset.shape[1] // (2 * taps)
        per_group = arrays["input"].shape[1] // groups
        first = (channel // (weight.shape[0] // groups)) * per_group
        last = first + per_group - 1
        per_offset_group = arrays["input"].shape[1] // offset_groups
        wanted = [(g, k) for g in range(first // per_offset_group, last // per_offset_group + 1)
                  for k in range(taps)]
    else:
        per_tap = 2 if name == "grad_offset" else 1
        wanted = [(channel // (per_tap * taps), (channel % (per_tap * taps)) // per_tap)]
    lines = []
    for g, k in wanted:
        a, b = divmod(k, kw)
        dy = float(offset[n, g * 2 * taps + 2 * k, i, j])
        dx = float(offset[n, g * 2 * taps + 2 * k + 1, i, j])
        p_y = i * int(stride[0]) - int(padding[0]) + a * int(dilation[0]) + dy
        p_x = j * int(stride[1]) - int(padding[1]) + b * int(dilation[1]) + dx
        lines.append(f"offset group {g}, tap ({a}, {b}): p_y={p_y:.9g}, p_x={p_x:.9g}"
                     + (f" (this entry is d/d p_{'yx'[channel % 2]})" if name == "grad_offset"
                        else ""))
    return lines


def _disagreement(operator: Operator, direction: str, case: Case, name: str,
                  actual: np.ndarray, expected: np.ndarray) -> str:
    """The failure message: configuration, worst element, its sampling points, values."""
    dtype = case.grad_output.dtype
    lines = [f"{direction} of {operator.name} disagrees with refdyn on the minimal "
             f"configuration Hypothesis found:", f"  configuration: {case.description}"]
    if actual.shape != expected.shape:
        return "\n".join(lines + [f"  {name}: shape {actual.shape}, expected {expected.shape}"])
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    difference[np.isnan(difference)] = np.inf
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    lines.append(f"  worst element: {name}[{', '.join(map(str, map(int, worst)))}]")
    lines += [f"    samples at {line}" for line in
              _sampling_coordinates(operator.name, case, name, tuple(map(int, worst)))]
    lines.append(f"  expected {float(expected[worst]):.10g}, got {float(actual[worst]):.10g} "
                 f"(|error| {float(difference[worst]):.3g}; {np.dtype(dtype)} tolerance "
                 f"rtol={rtol:g}, atol={atol:g} x max(1, max|expected|))")
    return "\n".join(lines)


def run_conformance(candidate: Callable, op: Union[str, Operator], direction: str = "forward",
                    *, max_examples: Optional[int] = None, derandomize: Optional[bool] = None,
                    skip: Optional[Callable[[object], bool]] = None, **knobs) -> Conformance:
    """Drive ``candidate`` with the operator's strategy and compare with refdyn.

    direction "forward": ``candidate(**arrays, **params)`` returns the output; "backward":
    ``candidate(grad_output, **arrays, **params, **backward_params)`` returns the gradients as
    attributes or a mapping ``grad_<input>``.  max_examples and derandomize default to the
    active Hypothesis profile's; ``skip(config)`` true leaves a configuration out (a known
    limitation of the candidate).  Never raises for a disagreement: see :class:`Conformance`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    operator = _operator(op)
    strategy = load(operator.configs)(**knobs)
    make_case = load(operator.make_case)
    result = Conformance(operator.name, direction)
    chosen = {key: value for key, value in (("max_examples", max_examples),
                                              ("derandomize", derandomize)) if value is not None}

    @settings(deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **chosen)
    @given(strategy)
    def conforms(config):
        assume(skip is None or not skip(config))
        case = make_case(config)
        result.examples += 1
        try:
            pairs, problems = _compared_arrays(candidate, operator, direction, case)
        except Exception as error:  # the candidate's own failure, reported with its configuration
            raise AssertionError(f"{direction} of {operator.name}: the candidate raised "
                                 f"{type(error).__name__}: {error}\n  configuration: "
                                 f"{case.description}") from error
        if problems:
            raise AssertionError(f"{direction} of {operator.name}: {'; '.join(problems)}\n"
                                 f"  configuration: {case.description}")
        for name, (actual, expected) in pairs.items():
            if actual.dtype != expected.dtype:
                raise AssertionError(f"{direction} of {operator.name}: {name} has dtype "
                                     f"{actual.dtype}, expected {expected.dtype}\n"
                                     f"  configuration: {case.description}")
            result.record(actual, expected)
        for name, (actual, expected) in pairs.items():
            if not close_enough(actual, expected, case.grad_output.dtype):
                raise AssertionError(_disagreement(operator, direction, case, name, actual,
                                                   expected))

    try:
        conforms()
    except AssertionError as error:
        result.counterexample = str(error)
        result.error = error
    return result


def check_forward(candidate: Callable, op: Union[str, Operator], **knobs) -> None:
    """Assert that ``candidate`` computes the forward of ``op`` like refdyn on every drawn
    configuration (see the module docstring); raises AssertionError with Hypothesis's minimal
    counterexample otherwise.

    Usage in a pytest suite::

        from refdyn.testing import check_forward
        def test_my_kernel(): check_forward(my_deform_conv2d, "deform_conv2d", dtypes=("float32",))
    """
    result = run_conformance(candidate, op, "forward", **knobs)
    if not result.ok:
        raise result.error


def check_backward(candidate: Callable, op: Union[str, Operator], **knobs) -> None:
    """Assert that ``candidate(grad_output, **arguments)`` returns refdyn's gradients (attributes
    or mapping ``grad_<input>``) on every drawn configuration; raises AssertionError with
    Hypothesis's minimal counterexample otherwise.  Kinks follow the drawn ``coord_grad`` rule:
    pass ``coord_grads=("torchvision",)`` or ``("mmcv",)`` for a kernel with one of them, or
    ``kink_free=True`` to keep samples off the kinks.

    Usage in a pytest suite::

        from refdyn.testing import check_backward
        def test_my_grads(): check_backward(my_backward, "deform_conv2d", coord_grads=("mmcv",))
    """
    result = run_conformance(candidate, op, "backward", **knobs)
    if not result.ok:
        raise result.error
