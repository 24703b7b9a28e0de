"""The GPU mirrors of the RoI pooling family (gpu/roi.cu through refdyn.gpu.host and
refdyn.gpu.cupy, gpu/roi_numba.py through refdyn.gpu.numba) against the NumPy reference.

Forward and every gradient of roi_align, ps_roi_align, deform_roi_align (with and without
offsets and mask),
deform_roi_pool and deform_ps_roi_pool on the fixed example configurations (both dtypes, RoIs
inside, partly and wholly outside, zero-size and integer RoIs, empty RoI lists), samples on the
official -0.5 / W - 0.5 skip lines, C rounding of half-pixel RoIs.  Empty RoI lists, bad
arguments, device arrays and reproducibility on any launch grid are in
test_backends_generic.py; test_registry_generic.py adds Hypothesis-drawn cases.  Sizes stay
tiny for Numba's simulator.
"""

import importlib

import numpy as np
import pytest

from refdyn.checks import compare_results
from refdyn.gpu import backend_problem
from refdyn.registry import OPERATORS
from refdyn.testing.cases import close_enough, mismatch_report
from refdyn.testing.roi_cases import ROI_OPERATORS, RoIPoolConfig, make_case, roi_align_examples, \
    deform_ps_roi_pool_examples, deform_roi_align_examples, deform_roi_pool_examples, \
    ps_roi_align_examples

EXAMPLES = {"roi_align": roi_align_examples, "ps_roi_align": ps_roi_align_examples,
            "deform_roi_align": deform_roi_align_examples,
            "deform_roi_pool": deform_roi_pool_examples,
            "deform_ps_roi_pool": deform_ps_roi_pool_examples}
PS_EXTRA = {"classes": 2, "part_size": 1}
GRAD_NAMES = ("grad_input", "grad_offset", "grad_mask")
RUNNABLE = [backend for backend in ("host", "numba") if backend_problem(backend) is None]


@pytest.fixture(scope="module", params=["host", "numba"])
def backend(request):
    problem = backend_problem(request.param)
    if problem:
        pytest.skip(f"{request.param} backend: {problem}")
    return importlib.import_module(f"refdyn.gpu.{request.param}")


def reference(name):
    return OPERATORS[name].implementation("vectorized").load()


def to_numpy(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else array


def assert_matches_reference(module, name, case, move=lambda array: array):
    """Forward and every gradient of ``module`` close to the vectorized reference, same dtypes;
    ``move`` places the array arguments (device arrays)."""
    arrays = {key: None if value is None else move(value) for key, value in case.arrays.items()}
    output = to_numpy(getattr(module, name)(**arrays, **case.params))
    grads = getattr(module, f"{name}_backward")(move(case.grad_output), **arrays, **case.params,
                                                **case.backward_params)
    host_grads = type(grads)(**{key: None if value is None else to_numpy(value)
                                for key, value in vars(grads).items()})
    comparison = compare_results(OPERATORS[name], case, output, host_grads)
    assert comparison.ok, "\n".join(comparison.failures)


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_example_configs_match_numpy(backend, name, index):
    assert_matches_reference(backend, name, make_case(EXAMPLES[name](False)[index]))


@pytest.mark.parametrize("kind", ["partly_outside", "outside", "zero_size", "integer"])
@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_roi_kinds_with_any_offsets_match_numpy(backend, name, kind):
    extra = PS_EXTRA if name == "deform_ps_roi_pool" else {}
    config = RoIPoolConfig(operator=name, roi_kind=kind, offset_kind="normal", rois=2,
                           sampling_ratio=0, dtype="float32" if kind == "integer" else "float64",
                           seed=11, **extra)
    assert_matches_reference(backend, name, make_case(config))


@pytest.mark.parametrize("with_offset,with_mask", [(False, True), (True, False), (False, False)])
def test_deform_roi_align_without_offset_or_mask(backend, with_offset, with_mask):
    config = RoIPoolConfig(operator="deform_roi_align", with_offset=with_offset,
                           with_mask=with_mask, seed=12)
    assert_matches_reference(backend, "deform_roi_align", make_case(config))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_deform_roi_align_mmcv_offset_gradient_rule(backend, dtype):
    """coord_grad="mmcv" reaches the kernels: RoIs across the edges put samples where the rule
    differs from the derivative, and the mirrors follow the reference under each rule."""
    config = RoIPoolConfig(operator="deform_roi_align", roi_kind="partly_outside",
                           offset_kind="normal", rois=3, coord_grad="mmcv", dtype=dtype, seed=13)
    case = make_case(config)
    assert_matches_reference(backend, "deform_roi_align", case)
    derivative = backend.deform_roi_align_backward(case.grad_output, **case.forward_kwargs())
    mmcv = backend.deform_roi_align_backward(case.grad_output, **case.backward_kwargs())
    assert not np.allclose(to_numpy(mmcv.grad_offset), to_numpy(derivative.grad_offset))


def ps_case(rois, offset, dtype="float64", height=4, width=5):
    """deform_ps_roi_pool on a 4 x 5 map, group_size 2, 2 x 2 bins, 2 samples per part."""
    rng = np.random.default_rng(0)
    input = rng.standard_normal((1, 8, height, width)).astype(dtype)
    grad_output = rng.standard_normal((len(rois), 2, 2, 2)).astype(dtype)
    params = {"spatial_scale": 1.0, "output_dim": 2, "group_size": 2, "pooled_size": 2,
              "part_size": 1, "sample_per_part": 2, "trans_std": 0.1}
    rois = np.array(rois, dtype=dtype)
    return input, rois, None if offset is None else np.array(offset, dtype=dtype), grad_output, params


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_official_samples_on_the_skip_lines(backend, dtype):
    """RoIs starting at x = 0 (first sample at -0.5) and x = W (W - 0.5) put samples exactly on
    the skip lines, which count; the offset then moves samples across them (4 / 0.1 x 0.1 = 0.5
    pixel per unit of roi_w = 5 and trans_std 0.1)."""
    rois = [[0, 0, 0, 4, 3], [0, 5, 4, 5, 4], [0, 0, 0, 0, 0]]
    offset = [[[[0.0]], [[0.0]]], [[[-2.0]], [[2.0]]], [[[1.0]], [[-1.0]]]]
    assert_ps_case_matches_reference(backend, *ps_case(rois, offset, dtype))


def assert_ps_case_matches_reference(backend, input, rois, offset, grad_output, params):
    """deform_ps_roi_pool of ``backend`` against the reference, with and without the offset and
    with ``no_trans`` on and off: forward and both gradients."""
    dtype = input.dtype
    forward, backward = reference("deform_ps_roi_pool")
    for moved in (None, offset):
        for no_trans in (False, True):
            output = backend.deform_ps_roi_pool(input, rois, moved, **params, no_trans=no_trans)
            expected = forward(input, rois, moved, **params, no_trans=no_trans)
            assert close_enough(output, expected, dtype), mismatch_report("out", output, expected, dtype)
            grads = backend.deform_ps_roi_pool_backward(grad_output, input, rois, moved, **params,
                                                        no_trans=no_trans)
            wanted = backward(grad_output, input, rois, moved, **params, no_trans=no_trans)
            for name in ("grad_input", "grad_offset"):
                a, e = getattr(grads, name), getattr(wanted, name)
                assert (a is None) == (e is None)
                assert e is None or close_enough(a, e, dtype), mismatch_report(name, a, e, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_official_rois_at_half_pixels_round_like_c(backend, dtype):
    """Corners at k + 0.5 round half away from zero on the device too (C's round, as the
    reference): the mirrors match the reference and the integer RoIs that rounding gives."""
    half = [[0, -0.5, 0.5, 2.5, 1.5], [0, 1.5, -0.5, 3.5, 2.5]]
    input, rois, offset, grad_output, params = ps_case(half, [[[[0.5]], [[-0.5]]]] * 2, dtype)
    assert_ps_case_matches_reference(backend, input, rois, offset, grad_output, params)
    away = np.array([[0, -1, 1, 3, 2], [0, 2, -1, 4, 3]], dtype=dtype)
    np.testing.assert_array_equal(backend.deform_ps_roi_pool(input, rois, offset, **params),
                                  backend.deform_ps_roi_pool(input, away, offset, **params))


@pytest.mark.backend("cupy")
@pytest.mark.parametrize("name", ROI_OPERATORS)
def test_cupy_matches_numpy_with_numpy_and_device_arrays(name):
    cp_backend = importlib.import_module("refdyn.gpu.cupy")
    cupy = importlib.import_module("cupy")
    for config in EXAMPLES[name](True):
        assert_matches_reference(cp_backend, name, make_case(config))
    case = make_case(EXAMPLES[name](False)[1])
    output = getattr(cp_backend, name)(**{key: None if value is None else cupy.asarray(value)
                                          for key, value in case.arrays.items()}, **case.params)
    assert isinstance(output, cupy.ndarray)
    expected = reference(name)[0](**case.forward_kwargs())
    assert close_enough(cupy.asnumpy(output), expected, expected.dtype)
