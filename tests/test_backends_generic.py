"""Generic properties of every registered operator on every backend, derived from the registry
(refdyn.registry: OPERATORS, their make_case and example configurations):

- bad arguments: each array argument with a dimension dropped, of an integer dtype, of another
  float dtype than the others, non-finite; each option perturbed (0, -1, a float, a bool, an
  unknown name); plus each family's table of problems with the error and message it must
  give.  The NumPy reference rejects the structural problems naming an argument, and every
  backend (with NumPy or device arrays) raises exactly the reference's error;
- empty inputs: an empty batch (and an empty RoI list) gives empty or zero results of the right
  shape and dtype, forward and backward, without launching a kernel;
- device arrays: device arrays in, device arrays out, with the reference's values (Numba; CuPy
  where a GPU exists);
- reproducibility: a backward (the deterministic path where there is a choice; every other
  gradient is a gather) gives the same bits on every run and, on the host build, on any grid.

A backend that cannot run here is skipped with the reason (no GPU, package missing).
"""

import dataclasses
import importlib
import re
import sys

import numpy as np
import pytest

from refdyn.checks import compare_results
from refdyn.registry import BACKENDS, GPU_BACKENDS, OPERATORS, REFERENCE_BACKEND, load
from refdyn.testing.active_conv_cases import ActiveConvConfig
from refdyn.testing.ddf_cases import DDFConfig, bad_arguments as ddf_bad_arguments
from refdyn.testing.deform_conv_cases import DeformConvConfig
from refdyn.testing.lsdfn_cases import LSDFNConfig, bad_arguments as lsdfn_bad_arguments
from refdyn.testing.roi_cases import RoIPoolConfig

DEVICE_BACKENDS = ("numba", "cupy")
ids = lambda value: getattr(value, "name", value)  # noqa: E731


def device_kit(backend):
    """(to_device, to_host, is_device_array) of a backend that takes device arrays."""
    if backend == "numba":
        from numba import cuda
        return (lambda a: cuda.to_device(np.require(a, requirements="C")), lambda a: a.copy_to_host(),
                cuda.devicearray.is_cuda_ndarray)
    import cupy
    return cupy.asarray, cupy.asnumpy, lambda a: isinstance(a, cupy.ndarray)


def first_case(op):
    return load(op.make_case)(load(op.examples)(False)[0])


def grad_record(grads, convert):
    return type(grads)(**{k: None if v is None else convert(v) for k, v in vars(grads).items()})


def deterministic_options(op, backend):
    """The backward's ``deterministic`` choices: both on a GPU backend that has the switch."""
    if backend in GPU_BACKENDS and "deterministic" in op.gpu_extras:
        return [{"deterministic": False}, {"deterministic": True}]
    return [{}]


# --- bad arguments -----------------------------------------------------------------------------

@dataclasses.dataclass
class Problem:
    """Backward keyword arguments (grad_output included) with one problem.  ``error`` and
    ``message`` (a regex) fix the reference's error where given; ``named``: the reference must
    reject them with a message naming one of these arguments."""

    label: str
    arguments: dict
    backward_only: frozenset    # the names the forward does not take (grad_output, coord_grad)
    error: object = None
    message: object = None
    named: tuple = ()
    forward_rejects: bool = False   # the reference's forward rejects them too


def base_arguments(case):
    return {**case.arrays, **case.params, **case.backward_params, "grad_output": case.grad_output}


#: A NumPy-only problem: moving a masked array to a device drops its mask.
MASKED = "masked array"


def structural_problems(op):
    """Each array argument of the first example case with a dimension dropped (the first, the
    last), of an integer dtype, as float32 among float64 arrays and as a masked array (numpy.ma,
    with NaN under the mask): always rejected."""
    case = first_case(op)
    arguments, only = base_arguments(case), frozenset(["grad_output", *case.backward_params])
    arrays = [name for name, value in arguments.items() if isinstance(value, np.ndarray)]
    problems = []
    for name in arrays:
        value = arguments[name]
        others = tuple(a for a in arrays if a != name)
        hidden_nan = np.ma.masked_array(np.where(np.arange(value.size).reshape(value.shape) == 0,
                                                 np.nan, value), mask=value.size > 0)
        changes = {"integer dtype": (value.astype(np.int64), (name,)),
                   "float32 among float64": (value.astype(np.float32), (name,) + others),
                   MASKED: (hidden_nan, (name,))}
        if value.ndim:
            changes["first dimension dropped"] = (value[0], (name,) + others)
            changes["last dimension dropped"] = (value[..., 0], (name,) + others)
        for kind, (bad, named) in changes.items():
            problems.append(Problem(f"{name}: {kind}", {**arguments, name: bad}, only,
                                    named=named))
    return problems


def perturbed_values(value):
    if isinstance(value, str):
        return ["unknown"]
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, int):
        return [0, -1, 1.5, True]
    if isinstance(value, float):
        return [float("nan"), -1.0, 0.0]
    if isinstance(value, tuple):
        return [(value[0], 0), value + (1,)]
    return []


def value_problems(op):
    """Non-finite array entries and perturbed options of the first example case: compared with
    the reference wherever the reference rejects them."""
    case = first_case(op)
    arguments, only = base_arguments(case), frozenset(["grad_output", *case.backward_params])
    problems = []
    for name, value in arguments.items():
        if isinstance(value, np.ndarray) and value.size:
            bad = value.copy()
            bad.flat[bad.size // 2] = np.nan
            problems.append(Problem(f"{name}: NaN", {**arguments, name: bad}, only))
        for bad in perturbed_values(value):
            problems.append(Problem(f"{name}={bad!r}", {**arguments, name: bad}, only))
    return problems


def table(op, config, entries):
    """{label: (error, message, changes(arguments) -> dict)} on the case of ``config``."""
    case = load(op.make_case)(config)
    arguments = base_arguments(case)
    only = frozenset(["grad_output", "coord_grad", *case.backward_params])
    problems = []
    for label, (error, message, changes) in entries.items():
        changed = changes(arguments) if callable(changes) else changes
        problems.append(Problem(label, {**arguments, **changed}, only, error, message,
                                forward_rejects=not only & set(changed)))
    return problems


DEFORM_CONV_CONFIG = DeformConvConfig(batch=2, in_channels=4, out_channels=4, groups=2,
                                      offset_groups=2)
DDF_CONFIG = DDFConfig(batch=2, channels=4, head=2, height=6, width=5, stride=2)
LSDFN_CONFIG = LSDFNConfig(batch=2, channels=3, out_channels=2, samples=2)

# Each family's problems with the error and message the reference gives (and so every backend).
FAMILY_PROBLEMS = {
    "deform_conv2d": (DEFORM_CONV_CONFIG, {
        "input not an array": (TypeError, "input must be an array",
                               lambda a: dict(input=a["input"].tolist())),
        "input integer dtype": (TypeError, "input must have dtype float32 or float64",
                                lambda a: dict(input=a["input"].astype(np.int64))),
        "mixed dtypes": (TypeError, "weight has dtype float32 but input has dtype float64",
                         lambda a: dict(weight=a["weight"].astype(np.float32))),
        "input 3-D": (ValueError, "input must have 4 dimensions", lambda a: dict(input=a["input"][0])),
        "no input channels": (ValueError,
                              "input must have shape \\(N, C_in, H, W\\) with C_in, H, W >= 1",
                              lambda a: dict(input=a["input"][:, :0])),
        "empty image": (ValueError, "with C_in, H, W >= 1", lambda a: dict(input=a["input"][:, :, :0])),
        "channels do not divide": (ValueError, "input channels .* divisible by weight.shape",
                                   dict(weight=np.ones((4, 3, 3, 3)))),
        "out channels do not divide": (ValueError, "weight.shape\\[0\\] .* multiple of groups",
                                       dict(weight=np.ones((3, 2, 3, 3)), bias=np.ones(3))),
        "offset channels": (ValueError, "offset.shape\\[1\\] must be 2 \\* offset_groups",
                            lambda a: dict(offset=a["offset"][:, :17])),
        "offset groups do not divide": (ValueError, "divisible by offset groups",
                                        dict(offset=np.zeros((2, 54, 5, 5)), mask=None)),
        "offset spatial shape": (ValueError, "offset must have shape .*\\(2, 36, 5, 5\\)",
                                 lambda a: dict(offset=a["offset"][:, :, :4])),
        "offset batch": (ValueError, "offset must have shape", lambda a: dict(offset=a["offset"][:1])),
        "mask shape": (ValueError, "mask must have shape .*\\(2, 18, 5, 5\\)",
                       lambda a: dict(mask=a["mask"][:, :9])),
        "bias shape": (ValueError, "bias must have shape \\(C_out,\\)", dict(bias=np.ones(3))),
        "nan offset": (ValueError, "offset must be finite",
                       lambda a: dict(offset=np.where(a["offset"] > 0, np.nan, a["offset"]))),
        "inf mask": (ValueError, "mask must be finite",
                     lambda a: dict(mask=np.full_like(a["mask"], np.inf))),
        "negative padding": (ValueError, "padding must be >= 0", dict(padding=-1)),
        "zero stride": (ValueError, "stride must be >= 1", dict(stride=(1, 0))),
        "zero dilation": (ValueError, "dilation must be >= 1", dict(dilation=0)),
        "stride not int": (TypeError, "stride must be an int or a pair", dict(stride=1.5)),
        "stride bool": (TypeError, "stride must be an int or a pair", dict(stride=True)),
        "padding triple": (TypeError, "padding must be an int or a pair", dict(padding=(1, 1, 1))),
        "kernel larger than padded input": (
            ValueError, "larger than the padded input",
            dict(padding=0, dilation=3, offset=np.zeros((2, 36, 1, 1)),
                 mask=np.zeros((2, 18, 1, 1)))),
        "grad_output shape": (ValueError, r"grad_output must have shape .*\(2, 4, 5, 5\)",
                              lambda a: dict(grad_output=a["grad_output"][:, :3])),
        "grad_output dtype": (TypeError, "grad_output has dtype float32",
                              lambda a: dict(grad_output=a["grad_output"].astype(np.float32))),
        "coord_grad": (ValueError, "coord_grad must be one of", dict(coord_grad="caffe")),
    }),
    "active_conv2d": (ActiveConvConfig(out_channels=2), {
        "positions of 8 taps": (ValueError, r"positions must have shape \(K, 2\) or \(P, K, 2\)",
                                dict(positions=np.zeros((8, 2)))),
        "position groups do not divide": (ValueError, "divisible by the position groups",
                                          dict(positions=np.zeros((3, 9, 2)))),
        "nan positions": (ValueError, "positions must be finite",
                          dict(positions=np.full((9, 2), np.nan))),
        "float32 positions": (TypeError, "positions has dtype float32",
                              dict(positions=np.zeros((9, 2), np.float32))),
        "positions 3-D": (ValueError, r"positions must have shape", dict(positions=np.zeros((9, 2, 1)))),
        "zero stride": (ValueError, "stride must be >= 1", dict(stride=0)),
        "boundary": (ValueError, "boundary must be one of", dict(boundary="reflect")),
        "bias shape": (ValueError, r"bias must have shape \(C_out,\)", dict(bias=np.zeros(3))),
        "kernel larger than padded input": (ValueError, "larger than the padded input",
                                            dict(padding=0, input=np.zeros((1, 2, 2, 2)))),
    }),
    "ddf": (DDF_CONFIG, {
        "even kernel": (ValueError, "kernel_size must be odd", dict(kernel_size=2)),
        "zero kernel": (ValueError, "kernel_size must be >= 1", dict(kernel_size=0)),
        "negative kernel": (ValueError, "kernel_size must be >= 1", dict(kernel_size=-3)),
        "kernel not int": (TypeError, "kernel_size must be an int", dict(kernel_size=3.0)),
        "zero stride": (ValueError, "stride must be >= 1", dict(stride=0)),
        "negative dilation": (ValueError, "dilation must be >= 1", dict(dilation=-1)),
        "dilation pair": (TypeError, "dilation must be an int", dict(dilation=(1, 1))),
        "stride bool": (TypeError, "stride must be an int", dict(stride=True)),
        "kernel_combine": (ValueError, "kernel_combine must be one of", dict(kernel_combine="sum")),
        "features not an array": (TypeError, "features must be an array",
                                  lambda a: dict(features=a["features"].tolist())),
        "integer features": (TypeError, "features must have dtype float32 or float64",
                             lambda a: dict(features=a["features"].astype(np.int32))),
        "mixed dtypes": (TypeError, "spatial_filter has dtype float32 but input has dtype float64",
                         lambda a: dict(spatial_filter=a["spatial_filter"].astype(np.float32))),
        "features 3-D": (ValueError, "features must have 4 dimensions",
                         lambda a: dict(features=a["features"][0])),
        "no channels": (ValueError, "features must have shape \\(N, C, H, W\\) with C, H, W >= 1",
                        lambda a: dict(features=a["features"][:, :0])),
        "stride larger than image": (ValueError, "stride \\(7\\) must not exceed the image size",
                                     dict(stride=7)),
        "channel filter shape": (ValueError, "channel_filter must have shape \\(N, C, k, k\\)",
                                 lambda a: dict(channel_filter=a["channel_filter"][:, :, :2])),
        "spatial filter not k*k channels": (
            ValueError, "spatial_filter.shape\\[1\\] must be head \\* k \\* k",
            lambda a: dict(spatial_filter=a["spatial_filter"][:, :10])),
        "channels not divisible by heads": (
            ValueError, "channels \\(4\\) must be divisible by the number of heads \\(3",
            dict(spatial_filter=np.zeros((2, 27, 3, 2)))),
        "spatial filter size": (ValueError, "spatial_filter must have shape .*\\(2, 18, 3, 2\\)",
                                lambda a: dict(spatial_filter=a["spatial_filter"][..., :1])),
        "spatial filter batch": (ValueError, "spatial_filter must have shape",
                                 lambda a: dict(spatial_filter=a["spatial_filter"][:1])),
        "nan channel filter": (ValueError, "channel_filter must be finite", lambda a: dict(
            channel_filter=np.where(a["channel_filter"] > 0, np.nan, a["channel_filter"]))),
        "inf spatial filter": (ValueError, "spatial_filter must be finite", lambda a: dict(
            spatial_filter=np.full_like(a["spatial_filter"], -np.inf))),
        "grad_output shape": (ValueError, r"grad_output must have shape .*\(2, 4, 3, 2\)",
                              lambda a: dict(grad_output=a["grad_output"][:, :, :2])),
        "grad_output dtype": (TypeError, "grad_output has dtype float32",
                              lambda a: dict(grad_output=a["grad_output"].astype(np.float32))),
    }),
    "lsdfn": (LSDFN_CONFIG, {
        "samples 0": (ValueError, "samples must be >= 1", dict(samples=0)),
        "gamma float": (TypeError, "gamma must be an int", dict(gamma=1.5)),
        "residual not bool": (TypeError, "residual must be a bool", dict(residual=1)),
        "unknown attention": (ValueError, "attention must be one of", dict(attention="soft")),
        "unknown fuse": (ValueError, "fuse must be one of", dict(fuse="mean")),
        "unknown indexing": (ValueError, "indexing must be one of", dict(indexing="center")),
        "unknown kernel form": (ValueError, "kernel_form must be one of", dict(kernel_form="eq6")),
        "features not an array": (TypeError, "features must be an array", dict(features=[[1.0]])),
        "integer features": (TypeError, "features must have dtype float32 or float64",
                             dict(features=np.zeros((2, 3, 4, 5), int))),
        "u 4-D": (ValueError, "u must have 5 dimensions", dict(u=np.zeros((2, 2, 3, 4)))),
        "u channels": (ValueError, r"u must have shape \(N, C', C, H, W\) = \(2, 2, 3, 4, 5\)",
                       dict(u=np.zeros((2, 2, 1, 4, 5)))),
        "v taps": (ValueError, r"v must have shape \(N, C', k\*k, H, W\) = \(2, 2, 9, 4, 5\)",
                   dict(v=np.zeros((2, 2, 4, 4, 5)))),
        "mixed dtypes": (TypeError, "v has dtype float32 but input has dtype float64",
                         dict(v=np.zeros((2, 2, 9, 4, 5), np.float32))),
        "sample attention channels": (
            ValueError, r"sample_attention must have shape \(N, C' \* s \* s, H, W\) with C' = 2",
            dict(sample_attention=np.zeros((2, 4, 4, 5)))),
        "missing attention": (ValueError, "attention='factorized' needs position_attention",
                              dict(position_attention=None)),
        "extra attention": (ValueError, "attention=None takes no sample_attention",
                            dict(attention=None)),
        "nan u": (ValueError, "u must be finite", dict(u=np.full((2, 2, 3, 4, 5), np.nan))),
        "inf attention": (ValueError, "position_attention must be finite",
                          dict(position_attention=np.full((2, 18, 4, 5), np.inf))),
        "grad_output shape": (ValueError, r"grad_output must have shape \(N, C', H, W\)",
                              lambda a: dict(grad_output=a["grad_output"][:, :1])),
    }),
    "lsdfn_sample": (load(OPERATORS["lsdfn_sample"].examples)(False)[0], {
        "kernels shape": (ValueError, r"kernels must have shape \(N, C', C, k, k, H, W\)",
                          lambda a: dict(kernels=a["kernels"][..., :4])),
    }),
    "dfn": (load(OPERATORS["dfn"].examples)(False)[0], {
        "filters of 10 channels": (ValueError, r"filters must have shape \(N, k\*k, H, W\) or",
                                   dict(filters=np.zeros((1, 10, 4, 5)))),
        "softmax not a bool": (TypeError, "softmax must be a bool", dict(softmax="yes")),
    }),
}


def roi_problems(name):
    """Problems of the RoI operators (the reference fixes the errors): RoIs of a missing image,
    of 4 columns, offsets of another RoI count, channels PS RoIAlign cannot split."""
    extra = {"classes": 2, "part_size": 1} if name == "deform_ps_roi_pool" else {}
    config = RoIPoolConfig(operator=name, rois=2, **extra)

    def bad_index(a):
        rois = a["rois"].copy()
        rois[0, 0] = 3
        return dict(rois=rois)
    entries = {"batch index out of range": (None, None, bad_index),
               "rois of 4 columns": (None, None, lambda a: dict(rois=a["rois"][:, :4].copy())),
               "grad_output of one channel": (None, None, lambda a: dict(
                   grad_output=a["grad_output"][:, :1].copy()))}
    if name != "roi_align" and name != "ps_roi_align":
        entries["offset of a wrong shape"] = (None, None, lambda a: dict(offset=a["offset"][:1].copy()))
    if name == "ps_roi_align":
        entries["channels not a multiple of P_h P_w"] = (
            None, None, lambda a: dict(input=a["input"][:, 1:].copy()))
    return config, entries


def mimic_problems():
    config = load(OPERATORS["mimic_loss"].examples)(False)[0]
    return config, {"0-d features": (None, None, dict(features=np.asarray(1.0), target=np.asarray(1.0))),
                    "eps zero": (None, None, dict(eps=0.0)), "eps bool": (None, None, dict(eps=True)),
                    "grad_output not 0-d": (None, None, lambda a: dict(grad_output=a["grad_output"].reshape(1)))}


def family_problems(op):
    """FAMILY_PROBLEMS, and the problem lists refdyn.testing keeps for the GPU mirrors."""
    problems = []
    if op.name in FAMILY_PROBLEMS:
        problems += table(op, *FAMILY_PROBLEMS[op.name])
    if op.name == "ddf":
        problems += table(op, DDFConfig(batch=2, channels=4, head=2), {
            f"refdyn.testing: {label}": (None, None, arguments)
            for label, arguments in ddf_bad_arguments().items()})
    if op.name in ("lsdfn", "lsdfn_sample", "dfn"):
        config = load(op.examples)(False)[1]
        problems += table(op, config, {f"refdyn.testing: {label}": (None, None, arguments)
                                   for label, arguments in lsdfn_bad_arguments(op.name).items()})
    if op.name.endswith(("roi_align", "roi_pool")):
        problems += table(op, *roi_problems(op.name))
    if op.name == "mimic_loss":
        problems += table(op, *mimic_problems())
    return problems


def reference_error(function, arguments):
    try:
        function(**arguments)
    except (TypeError, ValueError) as error:
        return error
    return None


def split(problem):
    """(forward arguments, backward arguments) of a problem."""
    forward = {k: v for k, v in problem.arguments.items() if k not in problem.backward_only}
    return forward, problem.arguments


REFERENCE_PROBLEMS = [
    pytest.param(op, problem, id=f"{op.name}-{problem.label}")
    for op in OPERATORS.values() for problem in structural_problems(op) + family_problems(op)]


@pytest.mark.parametrize("op_name", FAMILY_PROBLEMS)
def test_the_valid_arguments_of_the_family_problems_are_valid(op_name):
    op = OPERATORS[op_name]
    case = load(op.make_case)(FAMILY_PROBLEMS[op_name][0])
    forward, backward = op.implementation(REFERENCE_BACKEND).load()
    forward(**case.forward_kwargs())
    backward(case.grad_output, **case.backward_kwargs())


@pytest.mark.parametrize("op,problem", REFERENCE_PROBLEMS)
def test_reference_rejects_bad_arguments_naming_them(op, problem):
    """The structural problems are rejected with a message naming the changed argument (or one
    it must agree with); the family tables' problems with their error and message."""
    forward, backward = op.implementation(REFERENCE_BACKEND).load()
    forward_arguments, backward_arguments = split(problem)
    calls = [(backward, backward_arguments)] + [(forward, forward_arguments)] * problem.forward_rejects
    for function, arguments in calls:
        error = reference_error(function, arguments)
        assert error is not None, f"{function.__name__} accepts {problem.label}"
        if problem.error is not None:
            assert type(error) is problem.error and re.search(problem.message, str(error)), error
        if problem.named:
            assert any(re.search(rf"\b{name}\b", str(error)) for name in problem.named), error


def placements(backends=BACKENDS):
    return [(op, backend, placement) for op in OPERATORS.values() for backend in backends
            if backend in op.implementations
            for placement in (("numpy", "device") if backend in DEVICE_BACKENDS else ("numpy",))]




def error_mismatches(op, backend, placement, problems, load_backend):
    """(mismatch reports, number of calls the reference rejects) of ``problems``."""
    forward, backward = load_backend(op, backend)
    reference_forward, reference_backward = op.implementation(REFERENCE_BACKEND).load()
    move = device_kit(backend)[0] if placement == "device" else (lambda array: array)
    mismatches, checked = [], 0
    for problem in problems:
        forward_arguments, backward_arguments = split(problem)
        for mirror, reference, arguments in [(backward, reference_backward, backward_arguments),
                                             (forward, reference_forward, forward_arguments)]:
            expected = reference_error(reference, arguments)
            if expected is None:
                continue
            checked += 1
            moved = {k: move(v) if isinstance(v, np.ndarray) else v for k, v in arguments.items()}
            actual = reference_error(mirror, moved)
            if (type(actual), str(actual)) != (type(expected), str(expected)):
                mismatches.append(f"{problem.label} ({reference.__name__}): expected "
                                  f"{expected!r}, got {actual!r}")
    return mismatches, checked


@pytest.mark.parametrize("op,backend,placement", [
    value for value in placements() if value[1] != REFERENCE_BACKEND], ids=ids)
def test_every_backend_raises_the_reference_error(op, backend, placement, load_backend):
    """Every problem the reference rejects: the same exception type and message, forward (when
    the reference's forward rejects it too) and backward, with NumPy or device arrays."""
    problems = [problem for problem in structural_problems(op) + value_problems(op)
                + family_problems(op) if placement == "numpy" or not problem.label.endswith(MASKED)]
    mismatches, checked = error_mismatches(op, backend, placement, problems, load_backend)
    assert checked > 20 and not mismatches, "\n".join(mismatches)


# --- empty inputs ------------------------------------------------------------------------------

def empty_cases(op):
    """Every example configuration with an empty batch, an empty RoI list, and both."""
    cases = {}
    for config in load(op.examples)(False):
        names = {field.name for field in dataclasses.fields(config)} & {"batch", "rois"}
        empties = [{"batch": 0}] if names == {"batch"} else [{"rois": 0}] + (
            [{"rois": 0, "batch": 0}] if "batch" in names else []) if names else []
        for empty in empties:
            case = load(op.make_case)(dataclasses.replace(config, **empty))
            cases.setdefault(case.description, case)
    return list(cases.values())


#: The backwards too slow under the Numba simulator to run twice in the device-array test.
NUMBA_SLOW_BACKWARDS = ("deform_conv2d", "active_conv2d")


def forbid_launches(monkeypatch):
    """Every kernel launcher of the GPU backends replaced by one that fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("launched a kernel for an empty input")
    for name, module in list(sys.modules.items()):
        if name.startswith("refdyn.gpu.") and name.endswith(("_numba", ".host", ".cupy")):
            for launcher in ("launch", "_launch"):
                if hasattr(module, launcher):
                    monkeypatch.setattr(module, launcher, refuse)


@pytest.mark.parametrize("op,backend,placement", [
    value for value in placements() if value[0].name != "bilinear_sample"], ids=ids)
def test_empty_inputs_give_empty_results_without_launching(op, backend, placement, monkeypatch,
                                                           load_backend):
    forward, backward = load_backend(op, backend)
    to_device, to_host, is_device = (device_kit(backend) if placement == "device" else
                                     (lambda a: a, lambda a: a, lambda a: isinstance(a, np.ndarray)))
    forbid_launches(monkeypatch)
    for case in empty_cases(op):
        dtype = case.grad_output.dtype
        arrays = {k: None if v is None else to_device(v) for k, v in case.arrays.items()}
        output = forward(**arrays, **case.params)
        assert is_device(output), type(output)
        output = np.asarray(to_host(output))
        assert output.shape == case.grad_output.shape and output.dtype == dtype, case.description
        assert not output.any(), case.description
        for options in deterministic_options(op, backend):
            grads = backward(to_device(case.grad_output), **arrays, **case.params,
                             **case.backward_params, **options)
            assert all(v is None or is_device(v) for v in vars(grads).values())
            grads = grad_record(grads, to_host)
            for name in op.differentiable:
                grad = getattr(grads, f"grad_{name}", None)
                if case.arrays.get(name) is None:
                    assert grad is None, f"grad_{name} without {name}"
                else:
                    assert grad.shape == case.arrays[name].shape and grad.dtype == dtype, name
                    assert not grad.any(), f"grad_{name}, {case.description}"
            comparison = compare_results(op, case, output, grads)
            assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


def test_every_gpu_operator_has_an_empty_case():
    assert all(empty_cases(op) for op in OPERATORS.values() if "host" in op.implementations)


# --- device arrays -----------------------------------------------------------------------------

@pytest.mark.parametrize("op,backend", [(op, backend) for op in OPERATORS.values()
                                        for backend in DEVICE_BACKENDS
                                        if backend in op.implementations], ids=ids)
def test_device_arrays_in_give_device_arrays_out(op, backend, load_backend):
    """All arrays on the device: device results with the reference's values.  The first array
    argument decides where a result lives: on the device with the others on the host, on the
    host with only the others on the device."""
    forward, backward = load_backend(op, backend)
    to_device, to_host, is_device = device_kit(backend)
    case = first_case(op)
    arrays = {k: None if v is None else to_device(v) for k, v in case.arrays.items()}
    output = forward(**arrays, **case.params)
    grads = backward(to_device(case.grad_output), **arrays, **case.params, **case.backward_params)
    assert is_device(output) and all(v is None or is_device(v) for v in vars(grads).values())
    comparison = compare_results(op, case, to_host(output), grad_record(grads, to_host))
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"
    first = next(iter(case.arrays))
    if backend != "numba" or op.name not in NUMBA_SLOW_BACKWARDS:
        grads = backward(case.grad_output, **arrays, **case.params, **case.backward_params)
        assert all(v is None or is_device(v) for v in vars(grads).values())
    assert is_device(forward(**{**case.arrays, first: arrays[first]}, **case.params))
    assert isinstance(forward(**{**arrays, first: case.arrays[first]}, **case.params), np.ndarray)


# --- reproducibility ---------------------------------------------------------------------------

def runs(backend):
    """Context managers of the runs compared: launch grids on the host build, repeats elsewhere."""
    if backend == "host":
        host = importlib.import_module("refdyn.gpu.host")
        return [host.launch_grid(*grid) for grid in [(1, 1), (2, 3), (5, 7)]]
    import contextlib
    return [contextlib.nullcontext(), contextlib.nullcontext()]


@pytest.mark.parametrize("op,backend", [(op, backend) for op in OPERATORS.values()
                                        for backend in GPU_BACKENDS
                                        if backend in op.implementations], ids=ids)
def test_backward_gives_the_same_bits_on_every_run(op, backend, load_backend):
    """No floating-point atomics on these paths (deform_conv2d and active_conv2d: the
    deterministic one): every run and, on the host build, every launch grid gives the same
    bits.  The host runs every example case; Numba (the simulator) only the first."""
    forward, backward = load_backend(op, backend)
    configs = load(op.examples)(False)
    cases = [load(op.make_case)(config) for config in (configs if backend != "numba" else configs[:1])]
    options = deterministic_options(op, backend)[-1]
    for case in cases:
        results = []
        for run in runs(backend):
            with run:
                results.append([np.asarray(forward(**case.forward_kwargs()))] + [
                    v for v in vars(backward(case.grad_output, **case.backward_kwargs(),
                                             **options)).values()])
        for result in results[1:]:
            for a, b in zip(results[0], result):
                assert (a is None) == (b is None) and (a is None or np.array_equal(
                    np.asarray(a), np.asarray(b), equal_nan=True)), case.description
