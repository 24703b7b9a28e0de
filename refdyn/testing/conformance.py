"""Check a user's implementation of a registered operator against refdyn.

In a pytest suite (``my_deform_conv2d`` takes the arguments of :func:`refdyn.deform_conv2d`)::

    from refdyn.testing import check_forward
    def test_my_kernel(): check_forward(my_deform_conv2d, "deform_conv2d", dtypes=("float32",))

:func:`check_forward` and :func:`check_backward` draw configurations with the operator's
registered Hypothesis strategy (``refdyn.registry.Operator.configs``; every keyword argument
besides ``max_examples`` and ``derandomize`` is one of its knobs: ``dtypes``, ``kink_free``,
``offset_kinds``, ``boundaries``, ``coord_grads``, size limits ...), call the candidate with the
operator's public signature (refdyn's function without its refdyn-only options, which a
candidate receives only when its signature names them: :func:`call_candidate`), and compare
with the reference backend under the dtype-aware tolerances of :mod:`refdyn.testing.cases`.
An output element that differs from refdyn only because a sample sits within rounding of a
rule jump (a RoI sample at x = -1 computed as -1.0000001 in float32 reads 0 instead of the edge
pixel) is not a disagreement: it agrees with refdyn's one-sided limit across that jump
(extrapolated from every sample moved by a few units of the dtype's rounding,
``Operator.rounding_neighbours``), and is counted apart (:attr:`Conformance.near_jumps`).  On a disagreement Hypothesis shrinks
the configuration, and the AssertionError names the minimal one: the configuration, the worst
element, its sampling coordinates where the operator has them, expected and actual values.

A candidate in another layout (ONNX, mmcv, MXNet) is wrapped into refdyn's signature with the
functions of :mod:`refdyn.testing.adapters`.  :func:`run_conformance` is the non-raising form
that ``refdyn validate`` uses: it returns the largest errors seen and the counterexample.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
from hypothesis import HealthCheck, assume, given, settings

from ..registry import OPERATORS, REFERENCE_BACKEND, Operator, load
from .cases import TOLERANCES, Case, tolerance

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
    near_jumps: int = 0
    rejected: int = 0
    rejection: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.counterexample is None

    def record(self, actual: np.ndarray, expected: np.ndarray, excused: np.ndarray) -> None:
        """Keep the largest errors of one compared array, leaving out the ``excused`` elements
        (within rounding of a rule jump), which are counted instead."""
        if actual.shape != expected.shape or expected.size == 0:
            return
        self.near_jumps += int(np.count_nonzero(excused))
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        difference[excused] = 0.0
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


def accepted_keywords(function: Callable) -> Optional[frozenset]:
    """The arguments ``function`` accepts by name; None when it takes ``**kwargs`` (any name).
    A callable whose signature cannot be read (a compiled function) names none."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return frozenset(parameter.name for parameter in parameters
                     if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY))


def call_candidate(candidate: Callable, operator: Operator, direction: str, arguments: dict):
    """``candidate`` called with the operator's public signature: the arguments of refdyn's
    function in its order, by name when the candidate names them all (or takes ``**kwargs``),
    else by position (torchvision's ``roi_align`` calls the RoIs ``boxes``); a refdyn-only
    option (``Operator.options``) only when the candidate names it."""
    reference = operator.implementation(REFERENCE_BACKEND).load()[DIRECTIONS.index(direction)]
    accepted = accepted_keywords(candidate)
    options = {option.name for option in operator.options}
    names = [name for name in inspect.signature(reference).parameters if name in arguments]
    public = [name for name in names if name not in options]
    chosen = {name: arguments[name] for name in names
              if name in options and (accepted is None or name in accepted)}
    if accepted is None or set(public) <= accepted:
        return candidate(**{name: arguments[name] for name in public}, **chosen)
    return candidate(*(arguments[name] for name in public), **chosen)


def _arguments(direction: str, case: Case) -> dict:
    if direction == "forward":
        return case.forward_kwargs()
    return {"grad_output": case.grad_output, **case.backward_kwargs()}


def _reference_arrays(operator: Operator, direction: str, case: Case) -> dict:
    """The reference's output or gradients of ``case``, by name."""
    function = operator.implementation(REFERENCE_BACKEND).load()[DIRECTIONS.index(direction)]
    result = function(**_arguments(direction, case))
    return {"output": result} if direction == "forward" else _grads(result, operator)


def _one_sided_limits(operator: Operator, direction: str,
                      case: Case) -> dict[str, list[np.ndarray]]:
    """name -> the reference's values just across every rule jump near a sample: for each
    direction of ``Operator.rounding_neighbours`` (every sample moved by d and by 2 d, a few
    units of the dtype's rounding), the linear extrapolation 2 f(d) - f(2 d) back to the
    unmoved samples, which leaves out the smooth change over d.  Empty for an operator without
    rule jumps."""
    if operator.rounding_neighbours is None:
        return {}
    limits: dict[str, list[np.ndarray]] = {}
    for near, far in load(operator.rounding_neighbours)(case):
        at_far = _reference_arrays(operator, direction, far)
        for name, value in _reference_arrays(operator, direction, near).items():
            if value is not None:
                limits.setdefault(name, []).append(
                    2 * np.asarray(value, np.float64) - np.asarray(at_far[name], np.float64))
    return limits


def _excused(actual, expected, limits, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(agrees, excused) element by element: agrees within the dtype's tolerance of refdyn or,
    excused, outside it but within the tolerance of a one-sided limit across a rule jump
    (the jump the candidate's rounding crossed)."""
    actual = np.asarray(actual, np.float64)
    close = np.abs(actual - np.asarray(expected, np.float64)) <= tolerance(expected, dtype)
    across = np.zeros_like(close)
    for limit in limits:
        across |= np.abs(actual - limit) <= tolerance(limit, dtype)
    return close | across, ~close & across


def _compared_arrays(candidate: Callable, operator: Operator, direction: str, case: Case):
    """name -> (actual, expected) for the output or every gradient, and the problems found
    before comparing values (missing or extra gradients)."""
    expected = _reference_arrays(operator, direction, case)
    result = call_candidate(candidate, operator, direction, _arguments(direction, case))
    actual = {"output": result} if direction == "forward" else _grads(result, operator)
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
    sampling points (docs/conventions.md sections 1-2); empty for the others."""
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
                  actual: np.ndarray, expected: np.ndarray, agrees: np.ndarray) -> str:
    """The failure message: configuration, worst element that does not agree, its sampling
    points, values."""
    dtype = case.grad_output.dtype
    lines = [f"{direction} of {operator.name} disagrees with refdyn on the minimal "
             f"configuration Hypothesis found:", f"  configuration: {case.description}"]
    rois = case.arrays.get("rois")
    if rois is not None and len(rois) <= 8:     # the drawn RoIs, to reproduce without refdyn
        lines.append(f"  rois [batch_index, x1, y1, x2, y2]: "
                     f"{np.asarray(rois, np.float64).round(6).tolist()}")
    if actual.shape != expected.shape:
        return "\n".join(lines + [f"  {name}: shape {actual.shape}, expected {expected.shape}"])
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    difference[np.isnan(difference)] = np.inf
    difference[agrees] = -1.0
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    lines.append(f"  worst element: {name}[{', '.join(map(str, map(int, worst)))}]")
    lines += [f"    samples at {line}" for line in
              _sampling_coordinates(operator.name, case, name, tuple(map(int, worst)))]
    lines.append(f"  expected {float(expected[worst]):.10g}, got {float(actual[worst]):.10g} "
                 f"(|error| {float(difference[worst]):.3g}; {np.dtype(dtype)} tolerance "
                 f"rtol={rtol:g}, atol={atol:g} x max(1, max|expected|))")
    return "\n".join(lines)


#: Where ``refdyn validate all`` asks its worker to write each configuration before running it,
#: so that a framework that crashes or hangs is reported with the input it died on.
PROGRESS_FILE_VARIABLE = "REFDYN_VALIDATE_PROGRESS"


def _announce(description: str) -> None:
    path = os.environ.get(PROGRESS_FILE_VARIABLE)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(description)


def run_conformance(candidate: Callable, op: Union[str, Operator], direction: str = "forward",
                    *, max_examples: Optional[int] = None, derandomize: Optional[bool] = None,
                    skip: Optional[Callable[[object], bool]] = None,
                    rejections_allowed: bool = False, **knobs) -> Conformance:
    """Drive ``candidate`` with the operator's strategy and compare with refdyn.

    direction "forward": ``candidate(**arrays, **params)`` returns the output; "backward":
    ``candidate(grad_output, **arrays, **params, **backward_params)`` returns the gradients as
    attributes or a mapping ``grad_<input>``.  max_examples and derandomize default to the
    active Hypothesis profile's; ``skip(config)`` true leaves a configuration out (a known
    limitation of the candidate).  With ``rejections_allowed`` an exception the candidate
    raises is the framework rejecting that input: counted (:attr:`Conformance.rejected`, the
    first one described) and not compared; without, it is a failure.  Never raises for a
    disagreement: see :class:`Conformance`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    operator = _operator(op)
    accepted = accepted_keywords(candidate)
    for option in operator.options:     # an option the candidate cannot take: its default
        if option.knob not in knobs and accepted is not None and option.name not in accepted:
            knobs[option.knob] = (option.default,)
    strategy = load(operator.configs)(**knobs)
    make_case = load(operator.make_case)
    result = Conformance(operator.name, direction)
    chosen = {key: value for key, value in (("max_examples", max_examples),
                                              ("derandomize", derandomize)) if value is not None}

    @settings(deadline=None, database=None, report_multiple_bugs=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much], **chosen)
    @given(strategy)
    def conforms(config):
        assume(skip is None or not skip(config))
        case = make_case(config)
        result.examples += 1
        _announce(case.description)
        try:
            pairs, problems = _compared_arrays(candidate, operator, direction, case)
        except Exception as error:  # the candidate's own failure, reported with its configuration
            if rejections_allowed:
                result.rejected += 1
                result.rejection = result.rejection or (
                    f"{type(error).__name__}: {str(error).strip()[:300]}\n"
                    f"  configuration: {case.description}")
                return
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
            if actual.shape != expected.shape:
                raise AssertionError(_disagreement(operator, direction, case, name, actual,
                                                   expected, None))
        limits = _one_sided_limits(operator, direction, case)
        verdicts = {name: _excused(actual, expected, limits.get(name, []),
                                   case.grad_output.dtype)
                    for name, (actual, expected) in pairs.items()}
        for name, (actual, expected) in pairs.items():
            result.record(actual, expected, verdicts[name][1])
        for name, (actual, expected) in pairs.items():
            if not np.all(verdicts[name][0]):
                raise AssertionError(_disagreement(operator, direction, case, name, actual,
                                                   expected, verdicts[name][0]))

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
