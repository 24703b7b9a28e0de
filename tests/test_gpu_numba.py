"""The Numba CUDA backend (refdyn.gpu.numba) against the NumPy reference: deformable convolution
under both boundary rules, Active Convolution assembled from it, and the DDF operation.

On a machine with a GPU the kernels run on the device; without one, conftest.py selects
Numba's CUDA simulator, where every thread is a Python thread: sizes stay tiny.
"""


import numpy as np
import pytest

import refdyn
from refdyn.active_conv import ActiveConvGrads, active_conv2d, active_conv2d_backward
from refdyn.ddf_args import DDFGrads
from refdyn.decoupled_dynamic_filter import ddf, ddf_backward
from refdyn.deform_conv import deform_conv2d_backward_literal, deform_conv2d_literal
from refdyn.deform_conv_args import check_deform_conv2d_args
from refdyn.gpu import backend_problem
from refdyn.testing.active_conv_cases import ActiveConvConfig, make_case as make_active_case
from refdyn.testing.cases import close_enough, mismatch_report
from refdyn.testing.ddf_cases import DDFConfig, bad_arguments as ddf_bad_arguments, \
    error_mismatches, make_case as make_ddf_case
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case

PROBLEM = backend_problem("numba")
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"numba backend: {PROBLEM}")

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")
ACTIVE_GRAD_NAMES = ("grad_input", "grad_positions", "grad_weight", "grad_bias")


def is_device_array(cuda, array):
    return cuda.devicearray.is_cuda_ndarray(array)


def assert_close(name, actual, expected, dtype):
    assert isinstance(actual, np.ndarray), f"{name}: {type(actual).__name__}"
    assert actual.dtype == expected.dtype == np.dtype(dtype), name
    assert close_enough(actual, expected, dtype), mismatch_report(name, actual, expected, dtype)


def assert_grads_close(actual, expected, dtype, names=GRAD_NAMES):
    for name in names:
        a, e = getattr(actual, name), getattr(expected, name)
        assert (a is None) == (e is None), name
        if e is not None:
            assert_close(name, a, e, dtype)


# Every feature at least once, in both dtypes, both boundary rules and both coordinate-gradient
# rules.
CONFIGS = [
    DeformConvConfig(),
    DeformConvConfig(batch=2, in_channels=4, out_channels=4, height=6, width=5, groups=2,
                     offset_groups=2, stride=(2, 1), dilation=(1, 2), dtype="float32",
                     coord_grad="mmcv", seed=1),
    DeformConvConfig(in_channels=4, out_channels=6, kernel=(1, 2), padding=(0, 1), groups=2,
                     offset_groups=4, with_bias=False, offset_kind="normal", seed=2),
    DeformConvConfig(offset_kind="integer", kernel=(2, 3), padding=(0, 2), with_mask=False,
                     dtype="float32", seed=3),
    DeformConvConfig(offset_kind="far", stride=(1, 2), padding=(2, 0), dilation=(2, 1),
                     coord_grad="mmcv", seed=4),
    DeformConvConfig(height=1, width=1, kernel=(1, 1), padding=(0, 0), offset_kind="normal",
                     dtype="float32", seed=5),
    # Far offsets under the border rule pile every sample onto the edge pixels: long lists for
    # the deterministic path, kept small here because the simulator sorts them in Python.
    DeformConvConfig(height=4, width=4, kernel=(2, 2), offset_kind="far", boundary="border",
                     seed=14),
    DeformConvConfig(in_channels=4, out_channels=4, height=3, width=4, groups=2,
                     offset_groups=2, kernel=(2, 2), offset_kind="integer", boundary="border",
                     coord_grad="mmcv", dtype="float32", seed=15),
]


@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda c: f"seed{c.seed}-{c.dtype}-{c.boundary}")
def test_forward_and_gradients_equal_numpy(nb, config):
    case = make_case(config)
    assert_close("output", nb.deform_conv2d(**case.forward_kwargs()),
                 refdyn.deform_conv2d(**case.forward_kwargs()), config.dtype)
    expected = refdyn.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    for deterministic in (False, True):
        actual = nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                           deterministic=deterministic)
        assert_grads_close(actual, expected, config.dtype)


def test_equals_the_literal_loops(nb):
    case = make_case(DeformConvConfig(kernel=(2, 2), offset_kind="normal", seed=6))
    assert_close("output", nb.deform_conv2d(**case.forward_kwargs()),
                 deform_conv2d_literal(**case.forward_kwargs()), "float64")
    assert_grads_close(nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs()),
                       deform_conv2d_backward_literal(case.grad_output, **case.backward_kwargs()),
                       "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_coordinate_gradient_rules_at_the_image_edge(nb, dtype):
    """Zero offsets with padding 1 sample exactly at -1: the two rules differ there, and each
    matches NumPy's."""
    case = make_case(DeformConvConfig(offset_kind="zero", with_mask=False, dtype=dtype, seed=7))
    grads = {}
    for rule in ("torchvision", "mmcv"):
        kwargs = {**case.backward_kwargs(), "coord_grad": rule}
        grads[rule] = nb.deform_conv2d_backward(case.grad_output, **kwargs)
        assert_grads_close(grads[rule], refdyn.deform_conv2d_backward(case.grad_output, **kwargs),
                           dtype)
    assert not np.array_equal(grads["torchvision"].grad_offset, grads["mmcv"].grad_offset)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_far_and_edge_offsets(nb, dtype):
    """Offsets far outside the image (up to the float32 maximum), and integers and halves that
    put samples exactly on the edges of the zeros rule and of the floor guard (-2, -1, H, H + 1)."""
    case = make_case(DeformConvConfig(height=4, width=4, dtype=dtype, seed=8))
    values = np.array([3e38, -3e38, 1e9, -1e9, -2.0, -1.0, 4.0, 5.0, -1.5, 0.5], dtype=dtype)
    picks = np.random.default_rng(8).integers(0, values.size, case.arrays["offset"].shape)
    case = case.with_arrays(offset=values[picks])
    assert_close("output", nb.deform_conv2d(**case.forward_kwargs()),
                 refdyn.deform_conv2d(**case.forward_kwargs()), dtype)
    for rule in ("torchvision", "mmcv"):
        kwargs = {**case.backward_kwargs(), "coord_grad": rule}
        actual = nb.deform_conv2d_backward(case.grad_output, **kwargs, deterministic=True)
        assert_grads_close(actual, refdyn.deform_conv2d_backward(case.grad_output, **kwargs), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_border_rule_at_the_edges_and_far_outside(nb, border_edge_case, dtype):
    """Samples exactly at 0 and H - 1 (W - 1), beyond every edge and up to the float32 maximum
    away: the value of the clamped point, the coordinate gradient times the clamp's right
    derivative (0 from H - 1 on), and every sample's unit weight scattered into the image."""
    edge = border_edge_case(dtype)
    assert_close("output", nb.deform_conv2d(**edge.case.forward_kwargs()), edge.expected_output,
                 dtype)
    expected = refdyn.deform_conv2d_backward(edge.case.grad_output, **edge.case.backward_kwargs())
    for deterministic in (False, True):
        grads = nb.deform_conv2d_backward(edge.case.grad_output, **edge.case.backward_kwargs(),
                                          deterministic=deterministic)
        assert_grads_close(grads, expected, dtype)
        assert_close("grad_offset", grads.grad_offset, edge.expected_grad_offset, dtype)
        assert grads.grad_input.sum() == pytest.approx(edge.case.grad_output.size, rel=1e-6)


@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_deterministic_grad_input_is_bitwise_reproducible(nb, boundary):
    """Many samples land on each pixel (long per-pixel lists; under the border rule the edge
    pixels collect every sample beyond them) and the image has more pixels than one chunk of the
    prefix sum (64): the deterministic path gives the same bits twice and agrees with the
    atomic scatter to rounding."""
    config = DeformConvConfig(batch=1, in_channels=1, out_channels=1, height=9, width=8,
                              kernel=(2, 2), padding=(0, 0), offset_groups=1,
                              offset_kind="normal", offset_scale=0.3, boundary=boundary,
                              dtype="float32", seed=9)
    case = make_case(config)
    first, second = (nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                                deterministic=True) for _ in range(2))
    for name in GRAD_NAMES:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    atomic = nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert_close("grad_input", first.grad_input, atomic.grad_input, config.dtype)
    expected = refdyn.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert_close("grad_input", first.grad_input, expected.grad_input, config.dtype)


def expected_contribution_lists(case, geo):
    """{(row, pixel): [ids]} of the scatter terms, id = ((k H_out + i) W_out + j) 4 + corner.
    Zeros rule: every neighbour inside the image of every sampling point strictly inside
    (-1, H) x (-1, W).  Border rule: every neighbour of every point clamped into the image, a
    neighbour beyond the last row or column listed at the edge pixel it reads."""
    offset = case.arrays["offset"]
    dtype = offset.dtype.type
    lists = {}
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = geo.stride, geo.padding, geo.dilation
    for n, g, k, i, j in np.ndindex(geo.batch, geo.offset_groups, geo.taps, geo.out_h, geo.out_w):
        a, b = divmod(k, geo.kernel_w)
        channel = 2 * (g * geo.taps + k)
        p_y = dtype(i * s_h - p_h + a * d_h) + offset[n, channel, i, j]
        p_x = dtype(j * s_w - p_w + b * d_w) + offset[n, channel + 1, i, j]
        if geo.boundary == "border":
            p_y, p_x = min(max(p_y, 0), geo.height - 1), min(max(p_x, 0), geo.width - 1)
        elif not (-1 < p_y < geo.height and -1 < p_x < geo.width):
            continue
        for corner, (down, right) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            y, x = int(np.floor(p_y)) + down, int(np.floor(p_x)) + right
            if geo.boundary == "border":
                y, x = min(y, geo.height - 1), min(x, geo.width - 1)
            if 0 <= y < geo.height and 0 <= x < geo.width:
                key = (n * geo.offset_groups + g, y * geo.width + x)
                lists.setdefault(key, []).append(((k * geo.out_h + i) * geo.out_w + j) * 4 + corner)
    return lists


@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_contribution_lists_hold_every_term_in_increasing_order(nb, cuda, boundary):
    """The lists the deterministic grad_input gathers from: exactly the terms of each pixel,
    sorted, so the summation order does not depend on which thread placed which term first."""
    case = make_case(DeformConvConfig(batch=2, height=9, width=8, kernel=(2, 2), padding=(0, 0),
                                      offset_groups=2, offset_kind="integer", offset_scale=1,
                                      boundary=boundary, seed=13))
    geo = check_deform_conv2d_args(**case.forward_kwargs())
    starts, entries = nb._contribution_lists(geo, cuda.to_device(case.arrays["input"]),
                                             cuda.to_device(case.arrays["offset"]))
    starts, entries = starts.copy_to_host(), entries.copy_to_host()
    expected = expected_contribution_lists(case, geo)
    for row, pixel in np.ndindex(starts.shape[0], starts.shape[1] - 1):
        listed = entries[row, starts[row, pixel]:starts[row, pixel + 1]].tolist()
        assert listed == expected.get((row, pixel), []), (row, pixel)
    assert any(len(ids) > 4 for ids in expected.values())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_device_arrays_in_and_out(nb, cuda, dtype):
    case = make_case(DeformConvConfig(batch=2, offset_groups=2, dtype=dtype, seed=10))
    on_device = {name: None if value is None else cuda.to_device(value)
                 for name, value in case.arrays.items()}
    grad_output = cuda.to_device(case.grad_output)
    out = nb.deform_conv2d(**on_device, **case.params)
    assert is_device_array(cuda, out)
    assert_close("output", out.copy_to_host(), refdyn.deform_conv2d(**case.forward_kwargs()), dtype)
    expected = refdyn.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    for deterministic in (False, True):
        grads = nb.deform_conv2d_backward(grad_output, **on_device, **case.params,
                                          **case.backward_params, deterministic=deterministic)
        assert all(is_device_array(cuda, getattr(grads, name)) for name in GRAD_NAMES)
        host = refdyn.DeformConvGrads(**{name: getattr(grads, name).copy_to_host()
                                         for name in GRAD_NAMES})
        assert_grads_close(host, expected, dtype)
    # The kind of `input` decides; other arguments may live on either side.
    mixed = nb.deform_conv2d(**{**case.arrays, "input": on_device["input"]}, **case.params)
    assert is_device_array(cuda, mixed)
    host_out = nb.deform_conv2d(**{**on_device, "input": case.arrays["input"]}, **case.params)
    assert isinstance(host_out, np.ndarray)


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "device"])
def test_empty_batch(nb, cuda, on_device):
    case = make_case(DeformConvConfig(batch=0, seed=11))
    arrays = {name: cuda.to_device(value) if on_device and value is not None else value
              for name, value in case.arrays.items()}
    grad_output = cuda.to_device(case.grad_output) if on_device else case.grad_output
    out = nb.deform_conv2d(**arrays, **case.params)
    grads = nb.deform_conv2d_backward(grad_output, **arrays, **case.params)
    expected_out = refdyn.deform_conv2d(**case.forward_kwargs())
    expected = refdyn.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    if on_device:
        assert is_device_array(cuda, out)
        out = out.copy_to_host()
        grads = refdyn.DeformConvGrads(**{name: getattr(grads, name).copy_to_host()
                                          for name in GRAD_NAMES})
    assert out.shape == expected_out.shape == (0, 2, 5, 5)
    assert_grads_close(grads, expected, "float64")
    assert not grads.grad_weight.any() and not grads.grad_bias.any()


def _bad_arguments():
    case = make_case(DeformConvConfig(seed=12))
    a = case.arrays
    nan_offset = a["offset"].copy()
    nan_offset[0, 3, 1, 2] = np.nan
    inf_mask = a["mask"].copy()
    inf_mask[0, 0, 0, 0] = np.inf
    return case, {
        "float32 weight": ({**a, "weight": a["weight"].astype(np.float32)}, {}),
        "NaN offset": ({**a, "offset": nan_offset}, {}),
        "infinite mask": ({**a, "mask": inf_mask}, {}),
        "offset channels": ({**a, "offset": np.ascontiguousarray(a["offset"][:, :17])}, {}),
        "zero stride": (a, {"stride": 0}),
        "coord_grad": (a, {"coord_grad": "caffe"}),
        "boundary": (a, {"boundary": "reflect"}),
    }


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "device"])
@pytest.mark.parametrize("bad", list(_bad_arguments()[1]))
def test_bad_arguments_raise_the_numpy_errors(nb, cuda, bad, on_device):
    case, bad_arguments = _bad_arguments()
    arrays, overrides = bad_arguments[bad]
    kwargs = {**case.params, **case.backward_params, **overrides}
    with pytest.raises((TypeError, ValueError)) as expected:
        refdyn.deform_conv2d_backward(case.grad_output, **arrays, **kwargs)
    if on_device:
        arrays = {name: cuda.to_device(value) for name, value in arrays.items()}
    with pytest.raises(expected.type) as actual:
        nb.deform_conv2d_backward(case.grad_output, **arrays, **kwargs)
    assert str(actual.value) == str(expected.value)
    if "coord_grad" not in overrides:  # the forward runs the same checks
        with pytest.raises(expected.type) as actual:
            nb.deform_conv2d(**arrays, **{**case.params, **overrides})
        assert str(actual.value) == str(expected.value)


# --- Active Convolution assembled from the kernels ---------------------------------------------

# Position groups P = 1, 2 and C_out, groups, both boundary rules, both dtypes.
ACTIVE_CONFIGS = [
    ActiveConvConfig(height=4, width=4),
    ActiveConvConfig(in_channels=4, out_channels=4, height=4, width=5, groups=2,
                     position_groups=2, boundary="border", dtype="float32", seed=1),
    ActiveConvConfig(out_channels=3, kernel=(2, 2), padding=(0, 1), position_groups=3,
                     position_kind="far", boundary="border", coord_grad="mmcv", seed=2),
    ActiveConvConfig(out_channels=4, height=4, width=4, stride=(2, 1), groups=2,
                     position_groups=4, position_kind="normal", with_bias=False, dtype="float32",
                     seed=3),
]


@pytest.mark.parametrize("config", ACTIVE_CONFIGS, ids=lambda c: (
    f"P{c.position_groups}-groups{c.groups}-{c.boundary}-{c.dtype}"))
def test_active_conv_equals_numpy(nb, config):
    case = make_active_case(config)
    assert_close("output", nb.active_conv2d(**case.forward_kwargs()),
                 active_conv2d(**case.forward_kwargs()), config.dtype)
    expected = active_conv2d_backward(case.grad_output, **case.backward_kwargs())
    for deterministic in (False, True):
        grads = nb.active_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                          deterministic=deterministic)
        assert_grads_close(grads, expected, config.dtype, ACTIVE_GRAD_NAMES)


@pytest.mark.parametrize("batch,on_device", [(2, True), (0, True), (0, False)],
                         ids=["device", "device-empty-batch", "numpy-empty-batch"])
def test_active_conv_device_arrays_in_and_out(nb, cuda, batch, on_device):
    """Device arrays in give device arrays out (NumPy in, NumPy out), also for an empty batch."""
    config = ActiveConvConfig(batch=batch, out_channels=4, height=4, width=4, position_groups=2,
                              boundary="border", dtype="float32", seed=4)
    case = make_active_case(config)
    arrays = {name: cuda.to_device(value) if on_device and value is not None else value
              for name, value in case.arrays.items()}
    grad_output = cuda.to_device(case.grad_output) if on_device else case.grad_output
    out = nb.active_conv2d(**arrays, **case.params)
    grads = nb.active_conv2d_backward(grad_output, **arrays, **case.params,
                                      **case.backward_params, deterministic=True)
    if on_device:
        assert is_device_array(cuda, out)
        assert all(is_device_array(cuda, getattr(grads, name)) for name in ACTIVE_GRAD_NAMES)
        out = out.copy_to_host()
        grads = ActiveConvGrads(**{name: getattr(grads, name).copy_to_host()
                                   for name in ACTIVE_GRAD_NAMES})
    assert_close("output", out, active_conv2d(**case.forward_kwargs()), config.dtype)
    assert_grads_close(grads, active_conv2d_backward(case.grad_output, **case.backward_kwargs()),
                       config.dtype, ACTIVE_GRAD_NAMES)


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "device"])
@pytest.mark.parametrize("bad", ["NaN positions", "float32 positions", "positions shape"])
def test_active_conv_bad_arguments_raise_the_numpy_errors(nb, cuda, bad, on_device):
    case = make_active_case(ActiveConvConfig(out_channels=2))
    positions = {"NaN positions": np.full((9, 2), np.nan),
                 "float32 positions": np.zeros((9, 2), np.float32),
                 "positions shape": np.zeros((3, 9, 2))}[bad]
    arrays = {**case.arrays, "positions": positions}
    with pytest.raises((TypeError, ValueError)) as expected:
        active_conv2d_backward(case.grad_output, **arrays, **case.params)
    if on_device:
        arrays = {name: None if value is None else cuda.to_device(value)
                  for name, value in arrays.items()}
    for call in (lambda: nb.active_conv2d(**arrays, **case.params),
                 lambda: nb.active_conv2d_backward(case.grad_output, **arrays, **case.params)):
        with pytest.raises(expected.type) as actual:
            call()
        assert str(actual.value) == str(expected.value)


# --- DDF (paper 003) ---------------------------------------------------------------------------

DDF_GRAD_NAMES = ("grad_features", "grad_channel_filter", "grad_spatial_filter")

# Heads (1, 2, one per channel), strides dividing the image and not, dilation past the border,
# kernel sizes 1, 3, 5, both combinations, both dtypes; tiny for the simulator.
DDF_CONFIGS = [
    DDFConfig(height=4, width=4),
    DDFConfig(batch=2, channels=4, height=5, width=4, head=2, stride=2, dilation=2,
              kernel_combine="add", dtype="float32", seed=1),
    DDFConfig(channels=3, head=3, height=5, width=3, kernel_size=5, stride=3, seed=2),
    DDFConfig(kernel_size=1, height=3, width=4, stride=2, kernel_combine="add", seed=3),
    DDFConfig(channels=2, head=2, height=4, width=5, dilation=3, dtype="float32", seed=4),
]


def assert_ddf_matches_numpy(case, output, grads):
    dtype = case.grad_output.dtype
    assert_close("output", output, ddf(**case.forward_kwargs()), dtype)
    assert_grads_close(grads, ddf_backward(case.grad_output, **case.backward_kwargs()), dtype,
                       DDF_GRAD_NAMES)


@pytest.mark.parametrize("config", DDF_CONFIGS, ids=lambda c: (
    f"head{c.head}-k{c.kernel_size}-s{c.stride}-d{c.dilation}-{c.kernel_combine}-{c.dtype}"))
def test_ddf_equals_numpy(nb, config):
    case = make_ddf_case(config)
    assert_ddf_matches_numpy(case, nb.ddf(**case.forward_kwargs()),
                             nb.ddf_backward(case.grad_output, **case.backward_kwargs()))


@pytest.mark.parametrize("batch", [2, 0], ids=["batch2", "empty-batch"])
def test_ddf_device_arrays_in_and_out(nb, cuda, batch):
    """Device ``features`` give device arrays out, also for an empty batch; the other arguments
    may live on either side."""
    case = make_ddf_case(DDFConfig(batch=batch, channels=4, height=4, width=4, head=2, stride=2,
                                   dtype="float32", seed=5))
    on_device = {name: cuda.to_device(value) for name, value in case.arrays.items()}
    out = nb.ddf(**on_device, **case.params)
    grads = nb.ddf_backward(cuda.to_device(case.grad_output), **on_device, **case.params)
    assert is_device_array(cuda, out)
    assert all(is_device_array(cuda, getattr(grads, name)) for name in DDF_GRAD_NAMES)
    assert_ddf_matches_numpy(case, out.copy_to_host(), DDFGrads(
        **{name: getattr(grads, name).copy_to_host() for name in DDF_GRAD_NAMES}))
    mixed = nb.ddf(**{**case.arrays, "features": on_device["features"]}, **case.params)
    assert is_device_array(cuda, mixed)
    host_grads = nb.ddf_backward(case.grad_output, **{**on_device, "features": case.arrays[
        "features"]}, **case.params)
    assert all(isinstance(getattr(host_grads, name), np.ndarray) for name in DDF_GRAD_NAMES)


def test_ddf_empty_batch_with_numpy_arrays(nb):
    case = make_ddf_case(DDFConfig(batch=0, head=1, stride=2, seed=6))
    out = nb.ddf(**case.forward_kwargs())
    assert out.shape == (0, 2, 2, 2)
    assert_ddf_matches_numpy(case, out, nb.ddf_backward(case.grad_output,
                                                         **case.backward_kwargs()))


@pytest.mark.parametrize("on_device", [False, True], ids=["numpy", "device"])
@pytest.mark.parametrize("bad", list(ddf_bad_arguments()))
def test_ddf_bad_arguments_raise_the_numpy_errors(nb, cuda, bad, on_device):
    move = cuda.to_device if on_device else (lambda array: array)
    assert not error_mismatches(nb.ddf, nb.ddf_backward, ddf_bad_arguments()[bad], move)
