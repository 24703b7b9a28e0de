"""The GPU mirrors of deformable convolution and of Active Convolution assembled from it
(gpu/deform_conv.cu through refdyn.gpu.host and refdyn.gpu.cupy, gpu/deform_conv_numba.py
through refdyn.gpu.numba) against the NumPy reference.

``refdyn.gpu.host`` runs the CUDA C kernels on the CPU (g++ and gpu/cuda_host_compat.h) on every
machine: every feature under both boundary rules, several launch grids and chunkings, the
deterministic and the atomic grad_input paths.  ``refdyn.gpu.numba`` runs on a GPU or, without
one, under Numba's CUDA simulator (conftest.py), where every thread is a Python thread: sizes
stay tiny.  ``refdyn.gpu.cupy`` runs only where CuPy and a device exist.  Empty batches, bad
arguments, device arrays and reproducibility of every backend are in test_backends_generic.py;
the build and kernel-list checks of the CUDA C sources in test_gpu_cuda_c.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refdyn
from refdyn.active_conv_numpy import active_conv2d, active_conv2d_backward
from refdyn.checks import compare_results
from refdyn.deform_conv_args import check_deform_conv2d_args
from refdyn.deform_conv_numpy import deform_conv2d_backward_literal, deform_conv2d_literal
from refdyn.gpu import host
from refdyn.registry import OPERATORS
from refdyn.testing.active_conv_cases import ActiveConvConfig, make_case as make_active_case
from refdyn.testing import cases
from refdyn.testing.cases import assert_close, close_enough, mismatch_report
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case
from refdyn.testing.strategies import deform_conv2d_configs

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")
ACTIVE_GRAD_NAMES = ("grad_input", "grad_positions", "grad_weight", "grad_bias")



def assert_matches_reference(case, output, grads, operator="deform_conv2d"):
    """Forward output and every gradient close to the vectorized NumPy reference of the
    registered ``operator``, same dtypes and shapes."""
    comparison = compare_results(OPERATORS[operator], case, output, grads)
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


def assert_grads_identical(a, b, names=GRAD_NAMES):
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert np.array_equal(np.asarray(x), np.asarray(y)), f"{name} differs bitwise"


def assert_grads_close(actual, expected, dtype, names=GRAD_NAMES):
    cases.assert_grads_close(actual, expected, dtype, names)


# --- the CUDA C kernels on the host ------------------------------------------------------------

# Every feature at least once: both dtypes, both boundary rules, both coord_grad rules, mask and
# bias on and off, groups and offset groups, stride, padding, dilation, offsets on kinks (zero:
# samples exactly at -1 on the border; integer), far outside the image, and several images in
# several chunks.
CONFIGS = {
    "dcnv2 kink-free": DeformConvConfig(),
    "dcnv2 float32": DeformConvConfig(dtype="float32", seed=1),
    "groups, offset groups, stride, dilation": DeformConvConfig(
        batch=2, in_channels=4, out_channels=4, height=6, width=5, groups=2, offset_groups=2,
        stride=(2, 1), dilation=(1, 2), seed=2),
    "offset groups across groups": DeformConvConfig(
        batch=2, in_channels=6, out_channels=4, height=5, width=6, groups=2, offset_groups=3,
        kernel=(2, 3), padding=(0, 2), dtype="float32", offset_kind="normal", seed=3),
    "dcnv1 zero offsets torchvision rule": DeformConvConfig(
        offset_kind="zero", with_mask=False, coord_grad="torchvision", seed=4),
    "dcnv1 zero offsets mmcv rule": DeformConvConfig(
        offset_kind="zero", with_mask=False, coord_grad="mmcv", seed=4),
    "integer offsets mmcv rule float32": DeformConvConfig(
        offset_kind="integer", with_bias=False, coord_grad="mmcv", dtype="float32", seed=5),
    "integer offsets no bias": DeformConvConfig(offset_kind="integer", with_bias=False, seed=6),
    "far offsets": DeformConvConfig(offset_kind="far", batch=2, seed=7),
    "far offsets float32 mmcv": DeformConvConfig(
        offset_kind="far", dtype="float32", coord_grad="mmcv", seed=8),
    "1x1 image and kernel": DeformConvConfig(
        height=1, width=1, kernel=(1, 1), padding=(0, 0), offset_kind="normal", seed=9),
    "three images": DeformConvConfig(batch=3, offset_kind="normal", offset_scale=0.5, seed=10),
    "border far offsets": DeformConvConfig(offset_kind="far", boundary="border", batch=2, seed=14),
    "border integer offsets float32 mmcv": DeformConvConfig(
        offset_kind="integer", boundary="border", coord_grad="mmcv", dtype="float32", seed=15),
    "border zero offsets, groups, offset groups": DeformConvConfig(
        batch=2, in_channels=4, out_channels=4, groups=2, offset_groups=2, offset_kind="zero",
        boundary="border", with_mask=False, seed=16),
    "border normal offsets float32, stride, dilation": DeformConvConfig(
        height=6, width=5, stride=(2, 1), dilation=(1, 2), offset_kind="normal",
        boundary="border", dtype="float32", seed=17),
}


@pytest.mark.backend("host")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("chunk_elements", [1, None], ids=["one-image-chunks", "one-chunk"])
@pytest.mark.parametrize("name", CONFIGS)
def test_host_matches_numpy_reference(name, chunk_elements, deterministic):
    case = make_case(CONFIGS[name])
    chunking = {} if chunk_elements is None else {"chunk_elements": chunk_elements}
    output = host.deform_conv2d(**case.forward_kwargs(), **chunking)
    grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=deterministic, **chunking)
    assert_matches_reference(case, output, grads)


@pytest.mark.backend("host")
@settings(max_examples=20)
@given(config=deform_conv2d_configs(), deterministic=st.booleans(),
       grid=st.tuples(st.integers(1, 4), st.integers(1, 5)))
def test_host_matches_numpy_reference_on_any_config_and_grid(config, deterministic, grid):
    case = make_case(config)
    with host.launch_grid(*grid):
        output = host.deform_conv2d(**case.forward_kwargs())
        grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                            deterministic=deterministic)
    assert_matches_reference(case, output, grads)


@pytest.mark.backend("host")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_huge_offsets_sample_zero_without_overflow(dtype):
    """Coordinates far beyond the int64 range must not reach the float-to-integer conversion."""
    case = make_case(DeformConvConfig(batch=2, dtype=dtype, seed=11))
    offset = case.arrays["offset"].copy()
    offset.reshape(-1)[::3] = 1e30
    offset.reshape(-1)[1::3] = -1e30
    case = case.with_arrays(offset=offset)
    for deterministic in (False, True):
        output = host.deform_conv2d(**case.forward_kwargs())
        grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                            deterministic=deterministic)
        assert_matches_reference(case, output, grads)


@pytest.mark.backend("host")
@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_host_deterministic_grad_input_is_bitwise_reproducible_on_any_grid(boundary):
    """The ordered gather fixes the summation order: same bits for every launch configuration
    (which changes which thread adds which contribution first), and close to the atomic path.
    Under the border rule many samples beyond the edges pile onto the edge pixels."""
    case = make_case(DeformConvConfig(batch=2, in_channels=4, out_channels=4, height=6, width=6,
                                      offset_groups=2, offset_kind="normal", offset_scale=0.7,
                                      boundary=boundary, dtype="float32", seed=12))
    runs = []
    for grid in [(2, 3), (2, 3), (1, 1), (4, 7)]:
        with host.launch_grid(*grid):
            runs.append(host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                                    deterministic=True))
    for run in runs[1:]:
        assert_grads_identical(runs[0], run)
    atomic = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert close_enough(atomic.grad_input, runs[0].grad_input, np.float32)
    for name in ("grad_offset", "grad_weight", "grad_bias", "grad_mask"):
        assert np.array_equal(getattr(atomic, name), getattr(runs[0], name)), name


@pytest.mark.backend("host")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_host_border_rule_at_the_edges_and_far_outside(border_edge_case, dtype):
    """Samples exactly at 0 and H - 1 (W - 1), beyond every edge and up to the float32 maximum
    away: the value of the clamped point, the coordinate gradient times the clamp's right
    derivative (0 from H - 1 on), and every sample's unit weight scattered into the image."""
    edge = border_edge_case(dtype)
    output = host.deform_conv2d(**edge.case.forward_kwargs())
    assert close_enough(output, edge.expected_output, dtype), \
        mismatch_report("output", output, edge.expected_output, dtype)
    for deterministic in (False, True):
        grads = host.deform_conv2d_backward(edge.case.grad_output, **edge.case.backward_kwargs(),
                                            deterministic=deterministic)
        assert_matches_reference(edge.case, output, grads)
        assert close_enough(grads.grad_offset, edge.expected_grad_offset, dtype), \
            mismatch_report("grad_offset", grads.grad_offset, edge.expected_grad_offset, dtype)
        assert grads.grad_input.sum() == pytest.approx(edge.case.grad_output.size, rel=1e-6)


# Position groups P = 1, 2 and C_out, groups, both boundary rules, both dtypes, an empty batch.
ACTIVE_CONFIGS = {
    "one position group": ActiveConvConfig(),
    "two position groups, groups, border, float32": ActiveConvConfig(
        batch=2, in_channels=4, out_channels=4, groups=2, position_groups=2, boundary="border",
        dtype="float32", seed=1),
    "a position group per output channel, border, far": ActiveConvConfig(
        out_channels=3, position_groups=3, position_kind="far", boundary="border", seed=2),
    "per output channel, groups, stride, mmcv, float32": ActiveConvConfig(
        in_channels=4, out_channels=4, groups=2, position_groups=4, position_kind="normal",
        stride=(2, 1), coord_grad="mmcv", dtype="float32", seed=3),
    "zero positions, border, no bias": ActiveConvConfig(
        position_kind="zero", boundary="border", with_bias=False, seed=4),
    "empty batch": ActiveConvConfig(batch=0, out_channels=4, position_groups=2, seed=5),
}


@pytest.mark.backend("host")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", ACTIVE_CONFIGS)
def test_host_active_conv_matches_numpy_reference(name, deterministic):
    case = make_active_case(ACTIVE_CONFIGS[name])
    output = host.active_conv2d(**case.forward_kwargs())
    grads = host.active_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=deterministic)
    assert_matches_reference(case, output, grads, "active_conv2d")


# --- CuPy: the same kernels on a GPU ----------------------------------------------------------

CUPY_CONFIGS = ["dcnv2 kink-free", "dcnv2 float32", "groups, offset groups, stride, dilation",
                "offset groups across groups", "dcnv1 zero offsets torchvision rule",
                "dcnv1 zero offsets mmcv rule", "far offsets float32 mmcv", "border far offsets",
                "border integer offsets float32 mmcv"]


@pytest.mark.backend("cupy")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", CUPY_CONFIGS)
def test_cupy_matches_numpy_reference_with_numpy_arrays(name, deterministic):
    from refdyn.gpu import cupy as cupy_backend
    case = make_case(CONFIGS[name])
    output = cupy_backend.deform_conv2d(**case.forward_kwargs())
    grads = cupy_backend.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                                deterministic=deterministic)
    assert isinstance(output, np.ndarray)
    assert all(isinstance(getattr(grads, n), (np.ndarray, type(None))) for n in GRAD_NAMES)
    assert_matches_reference(case, output, grads)


@pytest.mark.backend("cupy")
@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_cupy_deterministic_grad_input_is_bitwise_reproducible(boundary):
    from refdyn.gpu import cupy as cupy_backend
    case = make_case(DeformConvConfig(batch=4, in_channels=8, out_channels=8, height=24, width=24,
                                      offset_groups=2, offset_kind="normal", offset_scale=0.5,
                                      boundary=boundary, dtype="float32", seed=13))
    first, second = (cupy_backend.deform_conv2d_backward(
        case.grad_output, **case.backward_kwargs(), deterministic=True) for _ in range(2))
    assert_grads_identical(first, second)
    atomic = cupy_backend.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert close_enough(atomic.grad_input, first.grad_input, np.float32)


@pytest.mark.backend("cupy")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_border_rule_at_the_edges_and_far_outside(border_edge_case, dtype):
    from refdyn.gpu import cupy as cupy_backend
    edge = border_edge_case(dtype)
    output = cupy_backend.deform_conv2d(**edge.case.forward_kwargs())
    assert close_enough(output, edge.expected_output, dtype)
    for deterministic in (False, True):
        grads = cupy_backend.deform_conv2d_backward(
            edge.case.grad_output, **edge.case.backward_kwargs(), deterministic=deterministic)
        assert_matches_reference(edge.case, output, grads)
        assert close_enough(grads.grad_offset, edge.expected_grad_offset, dtype)


@pytest.mark.backend("cupy")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", ACTIVE_CONFIGS)
def test_cupy_active_conv_matches_numpy_reference_with_numpy_arrays(name, deterministic):
    from refdyn.gpu import cupy as cupy_backend
    case = make_active_case(ACTIVE_CONFIGS[name])
    output = cupy_backend.active_conv2d(**case.forward_kwargs())
    grads = cupy_backend.active_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                                deterministic=deterministic)
    assert isinstance(output, np.ndarray)
    assert all(isinstance(value, (np.ndarray, type(None))) for value in vars(grads).values())
    assert_matches_reference(case, output, grads, "active_conv2d")


# --- Numba ------------------------------------------------------------------------------------

NUMBA_CONFIGS = [
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("config", NUMBA_CONFIGS,
                         ids=lambda c: f"seed{c.seed}-{c.dtype}-{c.boundary}")
def test_numba_forward_and_gradients_equal_numpy(nb, config):
    case = make_case(config)
    assert_close("output", nb.deform_conv2d(**case.forward_kwargs()),
                 refdyn.deform_conv2d(**case.forward_kwargs()), config.dtype)
    expected = refdyn.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    for deterministic in (False, True):
        actual = nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                           deterministic=deterministic)
        assert_grads_close(actual, expected, config.dtype)


@pytest.mark.backend("numba")
def test_numba_equals_the_literal_loops(nb):
    case = make_case(DeformConvConfig(kernel=(2, 2), offset_kind="normal", seed=6))
    assert_close("output", nb.deform_conv2d(**case.forward_kwargs()),
                 deform_conv2d_literal(**case.forward_kwargs()), "float64")
    assert_grads_close(nb.deform_conv2d_backward(case.grad_output, **case.backward_kwargs()),
                       deform_conv2d_backward_literal(case.grad_output, **case.backward_kwargs()),
                       "float64")


@pytest.mark.backend("numba")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_coordinate_gradient_rules_at_the_image_edge(nb, dtype):
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_far_and_edge_offsets(nb, dtype):
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_border_rule_at_the_edges_and_far_outside(nb, border_edge_case, dtype):
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_numba_deterministic_grad_input_is_bitwise_reproducible(nb, boundary):
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_numba_contribution_lists_hold_every_term_in_increasing_order(deform_conv_kernels, cuda,
                                                                       boundary):
    """The lists the deterministic grad_input gathers from: exactly the terms of each pixel,
    sorted, so the summation order does not depend on which thread placed which term first."""
    case = make_case(DeformConvConfig(batch=2, height=9, width=8, kernel=(2, 2), padding=(0, 0),
                                      offset_groups=2, offset_kind="integer", offset_scale=1,
                                      boundary=boundary, seed=13))
    geo = check_deform_conv2d_args(**case.forward_kwargs())
    starts, entries = deform_conv_kernels._contribution_lists(geo, cuda.to_device(case.arrays["input"]),
                                                              cuda.to_device(case.arrays["offset"]))
    starts, entries = starts.copy_to_host(), entries.copy_to_host()
    expected = expected_contribution_lists(case, geo)
    for row, pixel in np.ndindex(starts.shape[0], starts.shape[1] - 1):
        listed = entries[row, starts[row, pixel]:starts[row, pixel + 1]].tolist()
        assert listed == expected.get((row, pixel), []), (row, pixel)
    assert any(len(ids) > 4 for ids in expected.values())


NUMBA_ACTIVE_CONFIGS = [
    ActiveConvConfig(height=4, width=4),
    ActiveConvConfig(in_channels=4, out_channels=4, height=4, width=5, groups=2,
                     position_groups=2, boundary="border", dtype="float32", seed=1),
    ActiveConvConfig(out_channels=3, kernel=(2, 2), padding=(0, 1), position_groups=3,
                     position_kind="far", boundary="border", coord_grad="mmcv", seed=2),
    ActiveConvConfig(out_channels=4, height=4, width=4, stride=(2, 1), groups=2,
                     position_groups=4, position_kind="normal", with_bias=False, dtype="float32",
                     seed=3),
]


@pytest.mark.backend("numba")
@pytest.mark.parametrize("config", NUMBA_ACTIVE_CONFIGS, ids=lambda c: (
    f"P{c.position_groups}-groups{c.groups}-{c.boundary}-{c.dtype}"))
def test_numba_active_conv_equals_numpy(nb, config):
    case = make_active_case(config)
    assert_close("output", nb.active_conv2d(**case.forward_kwargs()),
                 active_conv2d(**case.forward_kwargs()), config.dtype)
    expected = active_conv2d_backward(case.grad_output, **case.backward_kwargs())
    for deterministic in (False, True):
        grads = nb.active_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                          deterministic=deterministic)
        assert_grads_close(grads, expected, config.dtype, ACTIVE_GRAD_NAMES)
