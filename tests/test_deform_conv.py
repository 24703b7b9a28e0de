"""Properties of deform_conv2d beyond the generic registry checks, the kink conventions, the
chunked memory bound and the argument validation."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from refdyn import deform_conv2d, deform_conv2d_backward
from refdyn.deform_conv_numpy import extra_memory_bound
from refdyn.registry import DEFORM_CONV2D
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case
from refdyn.testing.independent import plain_conv2d
from refdyn.testing.strategies import deform_conv2d_configs

BACKENDS = list(DEFORM_CONV2D.implementations)


def grads_allclose(a, b, **tolerance):
    for name in ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, err_msg=name, **tolerance)


# --- equalities with independent computations --------------------------------------------------

@given(deform_conv2d_configs(dtypes=("float64",), offset_kinds=("zero",), boundaries=("zeros",)))
@example(DeformConvConfig(offset_kind="zero", with_mask=False))
def test_zero_offsets_without_mask_equal_plain_convolution(config):
    case = make_case(config).with_arrays(mask=None)
    a = case.arrays
    expected = plain_conv2d(a["input"], a["weight"], a["bias"], config.stride, config.padding,
                            config.dilation)
    np.testing.assert_allclose(deform_conv2d(**case.forward_kwargs()), expected, rtol=1e-12,
                               atol=1e-12)


@given(deform_conv2d_configs(dtypes=("float64",)))
def test_mask_of_ones_equals_dcnv1(config):
    case = make_case(config)
    ones = np.ones_like(case.arrays["mask"]) if case.arrays["mask"] is not None else None
    with_ones, without = case.with_arrays(mask=ones), case.with_arrays(mask=None)
    np.testing.assert_allclose(deform_conv2d(**with_ones.forward_kwargs()),
                               deform_conv2d(**without.forward_kwargs()), rtol=1e-13, atol=1e-13)
    a = deform_conv2d_backward(case.grad_output, **with_ones.backward_kwargs())
    b = deform_conv2d_backward(case.grad_output, **without.backward_kwargs())
    for name in ("grad_input", "grad_offset", "grad_weight"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)


@given(deform_conv2d_configs(dtypes=("float64",), offset_kinds=("zero",), boundaries=("zeros",)),
       st.integers(-3, 3), st.integers(-3, 3))
@example(DeformConvConfig(offset_kind="zero", with_mask=False), 1, -2)
def test_integer_offsets_equal_convolution_of_shifted_image(config, dy, dx):
    """Sampling at p + (dy, dx) for every tap is a plain convolution of the zero-padded image
    shifted by (-dy, -dx)."""
    case = make_case(config).with_arrays(mask=None)
    offset = np.zeros_like(case.arrays["offset"])
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    margin = 3                                       # >= |dy|, |dx|
    (ph, pw), (out_h, out_w) = config.padding, config.out_size
    padded = np.pad(case.arrays["input"],
                    ((0, 0), (0, 0), (ph + margin, ph + margin), (pw + margin, pw + margin)))
    shifted = padded[:, :, margin + dy:, margin + dx:]
    expected = plain_conv2d(shifted, case.arrays["weight"], case.arrays["bias"], config.stride,
                            (0, 0), config.dilation)[:, :, :out_h, :out_w]
    actual = deform_conv2d(**case.with_arrays(offset=offset).forward_kwargs())
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("coord_grad", ["torchvision", "mmcv"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_offsets_moving_every_sample_outside_give_the_bias(coord_grad, direction):
    config = DeformConvConfig(batch=2, in_channels=4, out_channels=2, offset_groups=2)
    case = make_case(config)
    far = np.full_like(case.arrays["offset"], direction * (config.height + config.width + 0.5))
    case = case.with_arrays(offset=far)
    out = deform_conv2d(**case.forward_kwargs())
    np.testing.assert_array_equal(out, np.broadcast_to(case.arrays["bias"][None, :, None, None],
                                                       out.shape))
    grads = deform_conv2d_backward(case.grad_output, **case.forward_kwargs(),
                                   coord_grad=coord_grad)
    for name in ("grad_input", "grad_offset", "grad_weight", "grad_mask"):
        assert not np.any(getattr(grads, name)), name
    np.testing.assert_allclose(grads.grad_bias, case.grad_output.sum(axis=(0, 2, 3)))


@given(deform_conv2d_configs(dtypes=("float64",), kink_free=True))
def test_coord_grad_rules_agree_away_from_the_edge_kinks(config):
    case = make_case(config)
    a = deform_conv2d_backward(case.grad_output, **case.forward_kwargs(), coord_grad="torchvision")
    b = deform_conv2d_backward(case.grad_output, **case.forward_kwargs(), coord_grad="mmcv")
    grads_allclose(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_elements", [1, 7, 100, 10**9])
def test_chunking_does_not_change_the_result(chunk_elements):
    case = make_case(DeformConvConfig(batch=2, in_channels=4, out_channels=4, height=6, width=7,
                                      groups=2, offset_groups=2, offset_kind="normal"))
    reference_out = deform_conv2d(**case.forward_kwargs())
    reference_grads = deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    out = deform_conv2d(**case.forward_kwargs(), chunk_elements=chunk_elements)
    grads = deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                   chunk_elements=chunk_elements)
    np.testing.assert_allclose(out, reference_out, rtol=1e-13, atol=1e-13)
    grads_allclose(grads, reference_grads, rtol=1e-12, atol=1e-12)


def peak_allocation(run):
    tracemalloc.start()
    try:
        result = run()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extra_memory_stays_within_the_documented_bound(dtype):
    """Peak allocation <= results + extra_memory_bound(...); without chunking the same layer
    needs more, so the bound is what chunking buys."""
    chunk_elements = 1 << 12
    config = DeformConvConfig(in_channels=16, out_channels=16, height=64, width=64,
                              offset_groups=2, offset_kind="normal", dtype=dtype)
    case = make_case(config)
    bound = extra_memory_bound(case.arrays["input"].shape, case.arrays["offset"].shape,
                               case.arrays["weight"].shape, chunk_elements)
    unchunked = 16 * 9 * 64 * 64
    for run in (lambda chunk: deform_conv2d(**case.forward_kwargs(), chunk_elements=chunk),
                lambda chunk: deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                                     chunk_elements=chunk)):
        peak, result = peak_allocation(lambda: run(chunk_elements))
        arrays = [result] if isinstance(result, np.ndarray) else [
            a for a in vars(result).values() if a is not None]
        results_bytes = sum(a.nbytes for a in arrays)
        assert peak <= results_bytes + bound, f"peak {peak} bytes > {results_bytes} + {bound}"
        assert peak_allocation(lambda: run(unchunked))[0] > results_bytes + bound


@pytest.mark.parametrize("config, chunk_elements", [
    (DeformConvConfig(batch=2, in_channels=64, out_channels=4, height=12, width=12,
                      offset_groups=4, offset_kind="normal"), 1),
    (DeformConvConfig(batch=3, in_channels=2, out_channels=2, height=96, width=96,
                      with_mask=False, offset_kind="normal"), 512),
    (DeformConvConfig(batch=2, in_channels=8, out_channels=8, height=20, width=20, groups=2,
                      offset_kind="normal", dtype="float32"), 1 << 30),
    # the corners where the stencils (4 G K per position), not the columns, fill a chunk
    (DeformConvConfig(in_channels=1, out_channels=1, height=64, width=64,
                      offset_kind="normal"), 4096),
    (DeformConvConfig(in_channels=16, out_channels=16, height=32, width=32, offset_groups=16,
                      offset_kind="normal"), 4096),
    (DeformConvConfig(in_channels=1, out_channels=1, height=64, width=64, kernel=(1, 1),
                      padding=(0, 0), offset_kind="normal"), 1024),
    (DeformConvConfig(in_channels=4, out_channels=4, height=32, width=32, kernel=(7, 7),
                      padding=(3, 3), offset_groups=4, offset_kind="normal"), 4096),
], ids=["one-position-chunks", "few-channels-large-image", "unchunked", "one-channel",
        "one-channel-per-offset-group", "one-channel-1x1", "7x7-offset-group-per-channel"])
def test_memory_bound_holds_from_tiny_chunks_to_none(config, chunk_elements):
    case = make_case(config)
    bound = extra_memory_bound(case.arrays["input"].shape, case.arrays["offset"].shape,
                               case.arrays["weight"].shape, chunk_elements)
    for run in (lambda: deform_conv2d(**case.forward_kwargs(), chunk_elements=chunk_elements),
                lambda: deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                               chunk_elements=chunk_elements)):
        peak, result = peak_allocation(run)
        arrays = [result] if isinstance(result, np.ndarray) else [
            a for a in vars(result).values() if a is not None]
        assert peak <= sum(a.nbytes for a in arrays) + bound


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", BACKENDS)
def test_outputs_keep_the_input_dtype(name, dtype, load_backend):
    forward, backward = load_backend(DEFORM_CONV2D, name)
    case = make_case(DeformConvConfig(dtype=np.dtype(dtype).name))
    assert forward(**case.forward_kwargs()).dtype == dtype
    grads = backward(case.grad_output, **case.backward_kwargs())
    for field in ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"):
        assert getattr(grads, field).dtype == dtype, field


# --- the kinks: integer sampling coordinates and the image edge --------------------------------

def single_tap_case(tap, image, offset_value=(0.0, 0.0), padding=1):
    """1 channel, 3x3 kernel with weight 1 at ``tap`` only, so each output reads one sample."""
    input = np.asarray(image, dtype=np.float64)[None, None]
    weight = np.zeros((1, 1, 3, 3))
    weight[0, 0][tap] = 1.0
    height, width = input.shape[2:]
    out_h, out_w = height + 2 * padding - 2, width + 2 * padding - 2
    offset = np.zeros((1, 18, out_h, out_w))
    k = tap[0] * 3 + tap[1]
    offset[0, 2 * k] = offset_value[0]
    offset[0, 2 * k + 1] = offset_value[1]
    return input, offset, weight


IMAGE = np.arange(1.0, 13.0).reshape(3, 4) ** 1.5   # distinct values, no two differences equal


@pytest.mark.parametrize("name", BACKENDS)
def test_samples_exactly_at_minus_one_follow_each_coord_grad_rule(name, load_backend):
    """Zero offsets, padding 1: output (0, j) tap (0, 1) samples row -1 exactly (pytorch/vision
    6885).  torchvision returns the right derivative (row 0 weighted); mmcv returns 0."""
    _, backward = load_backend(DEFORM_CONV2D, name)
    input, offset, weight = single_tap_case((0, 1), IMAGE)
    grad_output = np.zeros((1, 1, 3, 4))
    grad_output[0, 0, 0, 2] = 1.0                  # samples p = (-1, 2)
    vision = backward(grad_output, input, offset, weight, padding=1, coord_grad="torchvision")
    mmcv = backward(grad_output, input, offset, weight, padding=1, coord_grad="mmcv")
    k = 1
    assert vision.grad_offset[0, 2 * k, 0, 2] == pytest.approx(IMAGE[0, 2])   # d/dy = x[0,2] - 0
    assert vision.grad_offset[0, 2 * k + 1, 0, 2] == 0.0                      # row -1 reads zeros
    assert mmcv.grad_offset[0, 2 * k, 0, 2] == 0.0
    assert mmcv.grad_offset[0, 2 * k + 1, 0, 2] == 0.0
    np.testing.assert_array_equal(vision.grad_input, mmcv.grad_input)        # the value is 0 either way
    np.testing.assert_array_equal(vision.grad_input, 0.0)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("coord_grad", ["torchvision", "mmcv"])
def test_samples_exactly_at_the_last_row_and_column_use_the_right_derivative(name, coord_grad, load_backend):
    """p = (H-1, W-1): the right neighbours are outside and read 0, so d/dy = -x[H-1, W-1]."""
    _, backward = load_backend(DEFORM_CONV2D, name)
    input, offset, weight = single_tap_case((1, 1), IMAGE)   # centre tap: p = output position
    grad_output = np.zeros((1, 1, 3, 4))
    grad_output[0, 0, 2, 3] = 1.0
    grads = backward(grad_output, input, offset, weight, padding=1, coord_grad=coord_grad)
    k = 4
    assert grads.grad_offset[0, 2 * k, 2, 3] == pytest.approx(-IMAGE[2, 3])
    assert grads.grad_offset[0, 2 * k + 1, 2, 3] == pytest.approx(-IMAGE[2, 3])
    assert grads.grad_input[0, 0, 2, 3] == 1.0 and grads.grad_input.sum() == 1.0


@pytest.mark.parametrize("name", BACKENDS)
def test_integer_interior_samples_use_the_forward_difference(name, load_backend):
    _, backward = load_backend(DEFORM_CONV2D, name)
    input, offset, weight = single_tap_case((1, 1), IMAGE, offset_value=(1.0, 1.0))
    grad_output = np.zeros((1, 1, 3, 4))
    grad_output[0, 0, 0, 1] = 1.0                   # samples p = (1, 2)
    grads = backward(grad_output, input, offset, weight, padding=1)
    assert grads.grad_offset[0, 8, 0, 1] == pytest.approx(IMAGE[2, 2] - IMAGE[1, 2])
    assert grads.grad_offset[0, 9, 0, 1] == pytest.approx(IMAGE[1, 3] - IMAGE[1, 2])


