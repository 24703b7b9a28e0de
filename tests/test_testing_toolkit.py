"""refdyn.testing.check_forward / check_backward on correct and planted-bug candidates, and the
layout adapters of refdyn.testing.adapters."""

import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest

import refdyn
from refdyn.bilinear_numpy import bilinear_sample_backward_literal
from refdyn.deform_conv_numpy import deform_conv2d_backward_literal, deform_conv2d_literal
from refdyn.testing import adapters, check_backward, check_forward
from refdyn.testing.conformance import run_conformance
from refdyn.testing.roi_cases import RoIPoolConfig
from refdyn.testing.roi_cases import make_case as make_roi_case


def test_correct_candidates_pass():
    check_forward(deform_conv2d_literal, "deform_conv2d")
    check_backward(deform_conv2d_backward_literal, "deform_conv2d")
    check_forward(refdyn.roi_align, "roi_align", dtypes=("float32",))
    check_backward(bilinear_sample_backward_literal, "bilinear_sample")


# ---- a user's kernels with torchvision's signatures (no refdyn-only keyword) ----

def tv_deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                     dilation=(1, 1), mask=None):
    """A third-party deform_conv2d: torchvision's signature, refdyn's literal loops inside."""
    return deform_conv2d_literal(input, offset, weight, bias, stride, padding, dilation, mask)


def tv_deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=(1, 1),
                              padding=(0, 0), dilation=(1, 1), mask=None):
    return deform_conv2d_backward_literal(grad_output, input, offset, weight, bias, stride,
                                          padding, dilation, mask)


def tv_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's roi_align signature: the RoIs are called ``boxes``."""
    return refdyn.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchvision_signature_candidates_pass(dtype):
    check_forward(tv_deform_conv2d, "deform_conv2d", dtypes=(dtype,), max_examples=60,
                  derandomize=True)
    check_backward(tv_deform_conv2d_backward, "deform_conv2d", dtypes=(dtype,),
                   max_examples=60, derandomize=True)
    check_forward(tv_roi_align, "roi_align", dtypes=(dtype,), max_examples=60, derandomize=True)


def test_refdyn_options_reach_only_candidates_that_name_them():
    seen = []

    def named(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
              boundary="zeros"):
        seen.append(boundary)
        return refdyn.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask,
                                    boundary=boundary)

    assert run_conformance(named, "deform_conv2d", max_examples=30, derandomize=True).ok
    assert set(seen) == {"zeros", "border"}
    # chosen explicitly, a convention is compared without being passed
    result = run_conformance(tv_deform_conv2d_backward, "deform_conv2d", "backward",
                             coord_grads=("mmcv",), offset_kinds=("zero",), max_examples=20,
                             derandomize=True)
    assert not result.ok and "grad_offset" in result.counterexample


def swapped_dy_dx(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                  dilation=(1, 1), mask=None):
    pairs = offset.reshape(offset.shape[0], -1, 2, *offset.shape[2:])[:, :, ::-1]
    return tv_deform_conv2d(input, pairs.reshape(offset.shape), weight, bias, stride, padding,
                            dilation, mask)


def clipped_offsets(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0),
                    dilation=(1, 1), mask=None):
    return tv_deform_conv2d(input, np.clip(offset, -1, 1), weight, bias, stride, padding,
                            dilation, mask)


def batch_index_off_by_one(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1,
                           aligned=False):
    moved = boxes.copy()
    moved[:, 0] = (moved[:, 0] + 1) % input.shape[0]
    return tv_roi_align(input, moved, output_size, spatial_scale, sampling_ratio, aligned)


@pytest.mark.parametrize("candidate,operator,shrunk", [
    (swapped_dy_dx, "deform_conv2d", "in_channels=1, out_channels=1"),
    (clipped_offsets, "deform_conv2d", "in_channels=1, out_channels=1"),
    (batch_index_off_by_one, "roi_align", "batch=2, channels=1")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_planted_bugs_in_torchvision_signature_candidates_are_caught(candidate, operator,
                                                                      shrunk, dtype):
    with pytest.raises(AssertionError) as failure:
        check_forward(candidate, operator, dtypes=(dtype,), max_examples=200, derandomize=True)
    message = str(failure.value)
    assert f"forward of {operator} disagrees" in message and shrunk in message


def test_float32_samples_within_rounding_of_a_jump_are_excused_and_counted():
    """Integer RoIs crossing the edges put RoIAlign samples exactly on x = -1 or x = W; a
    correct kernel that computes the grid in float32 lands on either side.  Such a candidate
    (refdyn with every sample moved by 2**-20 of a pixel, a few float32 roundings) passes,
    the elements are counted, and the same candidate with a bug still fails."""
    def rounded_grid(input, rois, output_size, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=False):
        moved = rois.astype(np.float64) - np.array([0, 1, 1, 1, 1]) * 2.0 ** -20
        return refdyn.roi_align(input.astype(np.float64), moved, output_size, spatial_scale,
                                sampling_ratio, aligned).astype(input.dtype)

    result = run_conformance(rounded_grid, "roi_align", dtypes=("float32",),
                             roi_kinds=("integer_edges",), max_examples=300, derandomize=True)
    assert result.ok and result.examples == 300 and result.near_jumps > 0
    assert result.max_abs_error < 1e-5

    def rounded_and_wrong(**arguments):
        return rounded_grid(**arguments) * 1.01

    assert not run_conformance(rounded_and_wrong, "roi_align", dtypes=("float32",),
                               roi_kinds=("integer_edges",), max_examples=300,
                               derandomize=True).ok


def clamps_minus_one(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                     mask=None, boundary="zeros"):
    """A kernel with a planted boundary bug: a sample exactly at y = -1 reads row 0."""
    kh, kw = weight.shape[2:]
    s, p, d = (np.broadcast_to(v, 2) for v in (stride, padding, dilation))
    rows = (np.arange(offset.shape[2])[None, :] * s[0] - p[0]
            + np.arange(kh)[:, None] * d[0])                      # (kh, H_out) tap rows
    base = np.broadcast_to(rows[:, None, :, None], (kh, kw, offset.shape[2], offset.shape[3]))
    split = (offset.shape[0], offset.shape[1] // (2 * kh * kw), kh, kw, 2, *offset.shape[2:])
    dy = offset.reshape(split)[:, :, :, :, 0]
    moved = offset.copy().reshape(split)
    moved[:, :, :, :, 0] = np.where(base + dy == -1, dy + 1, dy)
    return refdyn.deform_conv2d(input, moved.reshape(offset.shape), weight, bias, stride,
                                padding, dilation, mask, boundary=boundary)


def test_boundary_bug_is_found_and_shrunk():
    with pytest.raises(AssertionError) as failure:
        check_forward(clamps_minus_one, "deform_conv2d", max_examples=200, derandomize=True)
    message = str(failure.value)
    assert "forward of deform_conv2d disagrees" in message
    assert re.search(r"worst element: output\[\d, \d, \d, \d\]", message)
    assert re.search(r"p_y=-1,", message)                       # the tap at the bug
    assert "expected" in message and "got" in message
    # shrunk: one image, one channel each way, no extras
    assert "batch=1, in_channels=1, out_channels=1" in message
    assert "with_bias=False" in message


def swapped_offset_gradient(grad_output, *args, **kwargs):
    grads = refdyn.deform_conv2d_backward(grad_output, *args, **kwargs)
    offset = grads.grad_offset
    pairs = offset.reshape(offset.shape[0], offset.shape[1] // 2, 2, *offset.shape[2:])[:, :, ::-1]
    return dataclasses.replace(grads, grad_offset=pairs.reshape(offset.shape).copy())


def test_swapped_offset_gradient_is_found():
    with pytest.raises(AssertionError) as failure:
        check_backward(swapped_offset_gradient, "deform_conv2d", derandomize=True)
    message = str(failure.value)
    assert "worst element: grad_offset[" in message
    assert re.search(r"tap \(0, 0\): p_y=\S+, p_x=\S+ \(this entry is d/d p_[yx]\)", message)
    assert "kernel=(1, 1)" in message and "height=1, width=1" in message


def test_wrong_dtype_and_crashing_candidates_fail_with_their_configuration():
    def promotes(**kwargs):
        return refdyn.roi_align(**kwargs).astype(np.float64)

    result = run_conformance(promotes, "roi_align", dtypes=("float32",), derandomize=True)
    assert not result.ok and "has dtype float64, expected float32" in result.counterexample

    def crashes(**kwargs):
        raise RuntimeError("kernel launch failed")

    result = run_conformance(crashes, "roi_align", derandomize=True)
    assert "the candidate raised RuntimeError: kernel launch failed" in result.counterexample
    assert "configuration: operator=roi_align" in result.counterexample


def test_knobs_reach_the_strategy():
    seen = []

    def spy(**kwargs):
        seen.append(kwargs["input"].dtype)
        return refdyn.deform_conv2d(**kwargs)

    result = run_conformance(spy, "deform_conv2d", dtypes=("float32",), offset_kinds=("far",),
                             max_examples=5, derandomize=True)
    assert result.ok and result.examples == len(seen) >= 1
    assert set(seen) == {np.dtype(np.float32)}
    assert result.max_abs_error < 1e-5


def test_importing_the_package_does_not_import_hypothesis():
    code = "import sys, refdyn.testing; assert 'hypothesis' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- adapters ----

def deform_case(**overrides):
    from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case
    return make_case(DeformConvConfig(batch=2, in_channels=4, out_channels=4, groups=2,
                                      offset_groups=2, stride=(2, 1), padding=(1, 2),
                                      dilation=(1, 2), width=7, **overrides))


def test_onnx_deform_conv_maps_attributes_both_ways():
    case = deform_case()
    a = case.arrays
    attributes = adapters.onnx_deform_conv_attributes(a["input"], a["offset"], a["weight"],
                                                      (2, 1), (1, 2), (1, 2))
    assert attributes == {"dilations": [1, 2], "group": 2, "kernel_shape": [3, 3],
                          "offset_group": 2, "pads": [1, 2, 1, 2], "strides": [2, 1]}
    actual = adapters.onnx_deform_conv(a["input"], a["weight"], a["offset"], a["bias"],
                                       a["mask"], **attributes)
    expected = refdyn.deform_conv2d(**{**case.arrays, "stride": (2, 1), "padding": (1, 2),
                                       "dilation": (1, 2)})
    np.testing.assert_array_equal(actual, expected)
    with pytest.raises(ValueError, match="asymmetric pads"):
        adapters.onnx_deform_conv(a["input"], a["weight"], a["offset"],
                                  **{**attributes, "pads": [1, 2, 0, 2]})
    with pytest.raises(ValueError, match="offset_group=1 contradicts"):
        adapters.onnx_deform_conv(a["input"], a["weight"], a["offset"],
                                  **{**attributes, "offset_group": 1})


@pytest.mark.parametrize("aligned", [True, False])
def test_onnx_roi_align_round_trip(aligned):
    case = make_roi_case(RoIPoolConfig(operator="roi_align", aligned=aligned, batch=2, rois=5,
                                       sampling_ratio=0))
    boxes, batch_indices, mode = adapters.onnx_roi_align_inputs(case.arrays["rois"], aligned)
    assert boxes.shape == (5, 4) and batch_indices.dtype == np.int64
    actual = adapters.onnx_roi_align(case.arrays["input"], boxes, batch_indices,
                                     coordinate_transformation_mode=mode, output_height=2,
                                     output_width=2, sampling_ratio=0, spatial_scale=0.5)
    np.testing.assert_array_equal(actual, refdyn.roi_align(**case.forward_kwargs()))
    with pytest.raises(ValueError, match="mode='avg'"):
        adapters.onnx_roi_align(case.arrays["input"], boxes, batch_indices, mode="max")


def test_mmcv_im2col_step_and_groups():
    case = deform_case(with_bias=False, with_mask=False)
    a = case.arrays
    kwargs = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2, deform_groups=2)
    results = [adapters.mmcv_deform_conv2d(a["input"], a["offset"], a["weight"], **kwargs,
                                           im2col_step=step) for step in (1, 2, 64)]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    with pytest.raises(ValueError, match="deform_groups=1 contradicts"):
        adapters.mmcv_deform_conv2d(a["input"], a["offset"], a["weight"],
                                    **{**kwargs, "deform_groups": 1})
    modulated = deform_case()
    m = modulated.arrays
    np.testing.assert_array_equal(
        adapters.mmcv_modulated_deform_conv2d(m["input"], m["offset"], m["mask"], m["weight"],
                                              m["bias"], **kwargs),
        refdyn.deform_conv2d(**{**m, "stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)}))


def test_mxnet_operators_map_their_parameter_names():
    case = deform_case()
    a = case.arrays
    np.testing.assert_array_equal(
        adapters.mxnet_deformable_convolution(
            a["input"], a["offset"], a["weight"], a["bias"], kernel=(3, 3), stride=(2, 1),
            dilate=(1, 2), pad=(1, 2), num_filter=4, num_group=2, num_deformable_group=2),
        refdyn.deform_conv2d(**{**a, "mask": None, "stride": (2, 1), "padding": (1, 2),
                                "dilation": (1, 2)}))
    roi = make_roi_case(RoIPoolConfig(operator="deform_ps_roi_pool", classes=2, part_size=1))
    params = roi.params
    actual = adapters.mxnet_deformable_psroi_pooling(
        roi.arrays["input"], roi.arrays["rois"], roi.arrays["offset"],
        spatial_scale=params["spatial_scale"], output_dim=params["output_dim"],
        group_size=params["group_size"], pooled_size=params["pooled_size"],
        part_size=params["part_size"], sample_per_part=params["sample_per_part"],
        trans_std=params["trans_std"])
    np.testing.assert_array_equal(actual, refdyn.deform_ps_roi_pool(**roi.forward_kwargs()))
