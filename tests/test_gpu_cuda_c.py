"""The CUDA C kernels (gpu/deform_conv.cu, gpu/ddf.cu) through both of their backends.

``refdyn.gpu.host`` runs the kernels on the CPU (g++ and gpu/cuda_host_compat.h), so the kernel
source itself is tested on every machine: against the NumPy reference for the forward and
every gradient, under both boundary rules and several launch grids, on the deterministic and
the atomic grad_input paths, Active Convolution assembled from them, and the DDF operation
(heads, stride, dilation, both kernel combinations, both dtypes).  ``refdyn.gpu.cupy`` runs the
same sources on a GPU; its tests run only where CuPy and a device exist.  The nvcc test checks
that each file also builds as CUDA.
(The registry-driven tests in test_registry_generic.py cover both backends generically.)
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refdyn
from refdyn.checks import compare_results
from refdyn.ddf_args import DDFGrads
from refdyn.gpu import backend_problem, host, host_compiler
from refdyn.registry import OPERATORS
from refdyn.testing.active_conv_cases import ActiveConvConfig, make_case as make_active_case
from refdyn.testing.cases import close_enough, mismatch_report
from refdyn.testing.ddf_cases import DDFConfig, bad_arguments as ddf_bad_arguments, \
    error_mismatches, make_case as make_ddf_case
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case
from refdyn.testing.strategies import ddf_configs, deform_conv2d_configs

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")
DDF_GRAD_NAMES = ("grad_features", "grad_channel_filter", "grad_spatial_filter")
KERNEL_DIR = Path(host.__file__).resolve().parent

pytestmark = pytest.mark.skipif(backend_problem("host") is not None,
                                reason=f"host backend: {backend_problem('host')}")


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


def test_launch_grid_sets_the_grid_of_every_launch_and_restores_it():
    before = host.GRID_BLOCKS, host.BLOCK_THREADS
    with host.launch_grid(4, 5):
        assert (host.GRID_BLOCKS, host.BLOCK_THREADS) == (4, 5)
    assert (host.GRID_BLOCKS, host.BLOCK_THREADS) == before != (4, 5)


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_offsets_sample_zero_without_overflow(dtype):
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


@pytest.mark.parametrize("boundary", ["zeros", "border"])
def test_deterministic_grad_input_is_bitwise_reproducible_on_any_grid(boundary):
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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_border_rule_at_the_edges_and_far_outside(border_edge_case, dtype):
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


@pytest.mark.parametrize("with_mask", [True, False])
def test_empty_batch_returns_empty_arrays_without_launching(monkeypatch, with_mask):
    def no_launch(*_):
        raise AssertionError("a kernel was launched for an empty batch")
    monkeypatch.setattr(host, "launch", no_launch)
    case = make_case(DeformConvConfig(batch=0, with_mask=with_mask, dtype="float32"))
    output = host.deform_conv2d(**case.forward_kwargs())
    assert output.shape == (0, 2, 5, 5) and output.dtype == np.float32
    for deterministic in (False, True):
        grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                            deterministic=deterministic)
        assert_matches_reference(case, output, grads)
        assert not grads.grad_weight.any() and not grads.grad_bias.any()


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


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", ACTIVE_CONFIGS)
def test_host_active_conv_matches_numpy_reference(name, deterministic):
    case = make_active_case(ACTIVE_CONFIGS[name])
    output = host.active_conv2d(**case.forward_kwargs())
    grads = host.active_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=deterministic)
    assert_matches_reference(case, output, grads, "active_conv2d")


def bad_arguments():
    case = make_case(DeformConvConfig(batch=2, in_channels=4, out_channels=4, offset_groups=2))
    a = {**case.arrays, **case.params, "grad_output": case.grad_output}
    nan_offset = a["offset"].copy()
    nan_offset[1, 3, 2, 2] = np.nan
    return {
        "nan offset": {**a, "offset": nan_offset},
        "inf mask": {**a, "mask": np.full_like(a["mask"], np.inf)},
        "mask shape": {**a, "mask": a["mask"][:, :9]},
        "weight dtype": {**a, "weight": a["weight"].astype(np.float32)},
        "offset groups do not divide channels": {**a, "offset": np.zeros((2, 54, 5, 5))},
        "zero stride": {**a, "stride": (1, 0)},
        "grad_output shape": {**a, "grad_output": a["grad_output"][:, :3]},
        "coord_grad": {**a, "coord_grad": "caffe"},
        "boundary": {**a, "boundary": "reflect"},
    }


@pytest.mark.parametrize("problem", list(bad_arguments()))
def test_bad_arguments_raise_the_numpy_errors(problem):
    arrays = bad_arguments()[problem]
    forward_arrays = {k: v for k, v in arrays.items() if k not in ("grad_output", "coord_grad")}
    for reference, mirror, kwargs in [
            (refdyn.deform_conv2d, host.deform_conv2d, forward_arrays),
            (refdyn.deform_conv2d_backward, host.deform_conv2d_backward, arrays)]:
        try:
            reference(**kwargs)
        except (TypeError, ValueError) as error:
            expected = error
        else:
            continue  # a backward-only problem: the forward accepts it
        with pytest.raises(type(expected)) as raised:
            mirror(**kwargs)
        assert str(raised.value) == str(expected)


def test_host_build_is_cached_per_source_and_rebuilt_when_ddf_cu_or_the_header_changes(
        tmp_path, monkeypatch):
    sources = tmp_path / "src"
    sources.mkdir()
    header, kernels = sources / host.COMPAT_HEADER.name, sources / "ddf.cu"
    shutil.copy(host.COMPAT_HEADER, header)
    shutil.copy(KERNEL_DIR / "ddf.cu", kernels)
    monkeypatch.setattr(host, "COMPAT_HEADER", header)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = host.build_library(kernels)
    assert first.parent == tmp_path / "cache" / "refdyn" and first.name.startswith("ddf-")
    built_at = first.stat().st_mtime_ns
    assert host.build_library(kernels) == first and first.stat().st_mtime_ns == built_at
    kernels.write_text(kernels.read_text() + "\n// changed\n")
    second = host.build_library(kernels)
    header.write_text(header.read_text() + "\n// changed\n")
    third = host.build_library(kernels)
    assert len({first, second, third}) == 3 and second.exists() and third.exists()
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(
        p.name for p in (first, second, third))


@pytest.mark.parametrize("source", ["deform_conv.cu", "ddf.cu", "roi_pool.cu",
                                    "mimic_loss.cu"])
def test_kernel_source_compiles_without_warnings_on_the_host(tmp_path, source):
    result = subprocess.run(
        [host_compiler(), *host.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-x", "c++",
         "-include", str(host.COMPAT_HEADER), str(KERNEL_DIR / source), "-o",
         str(tmp_path / "lib.so")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


EXPECTED_KERNELS = {
    "deform_conv.cu": {f"deform_conv_{name}_{suffix}" for suffix in ("f32", "f64") for name in (
        "columns", "grad_offset_mask", "grad_input_atomic", "count_contributions",
        "fill_contributions", "weigh_contributions", "grad_input_gather")
    } | {"deform_conv_sort_contributions"},
    "ddf.cu": {f"ddf_{name}_{suffix}" for suffix in ("f32", "f64") for name in (
        "forward", "grad_features", "grad_spatial_filter", "grad_channel_filter")},
    "roi_pool.cu": {f"roi_{name}_{suffix}" for suffix in ("f32", "f64") for name in (
        "forward", "grad_input", "grad_offset_mask")},
    "mimic_loss.cu": {f"mimic_{name}_{suffix}" for suffix in ("f32", "f64")
                      for name in ("rows", "sum", "backward")},
}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
@pytest.mark.parametrize("source", list(EXPECTED_KERNELS))
def test_kernel_source_compiles_with_nvcc(tmp_path, source):
    ptx = tmp_path / "kernels.ptx"
    result = subprocess.run(
        ["nvcc", "-std=c++17", "--ptx", "-arch=sm_80", "-Werror", "all-warnings",
         str(KERNEL_DIR / source), "-o", str(ptx)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    assert entries == EXPECTED_KERNELS[source]


# --- DDF (ddf.cu) on the host -------------------------------------------------------------------

# Heads (1, 2, 3, one per channel), strides that do and do not divide the image, dilations that
# reach past the border, kernel sizes 1, 3, 5, 7, both combinations, both dtypes, a 1 x 1 image.
DDF_CONFIGS = {
    "mul": DDFConfig(),
    "add float32": DDFConfig(kernel_combine="add", dtype="float32", seed=1),
    "two heads, stride 2, dilation 2": DDFConfig(
        batch=2, channels=4, height=7, width=6, head=2, stride=2, dilation=2, seed=2),
    "add, stride 3 not dividing": DDFConfig(
        kernel_combine="add", height=8, width=7, stride=3, seed=3),
    "a head per channel, k 5, float32": DDFConfig(
        channels=3, head=3, kernel_size=5, dtype="float32", seed=4),
    "k 1, stride 2, add": DDFConfig(kernel_size=1, height=4, width=3, stride=2,
                                    kernel_combine="add", seed=5),
    "three heads, stride 2, dilation 3, add float32": DDFConfig(
        batch=2, channels=6, height=9, width=8, head=3, stride=2, dilation=3,
        kernel_combine="add", dtype="float32", seed=6),
    "1 x 1 image": DDFConfig(height=1, width=1, seed=7),
    "k 7 wider than the image, dilation 2": DDFConfig(height=2, width=9, kernel_size=7,
                                                      dilation=2, seed=8),
}


@pytest.mark.parametrize("grid", [(2, 3), (1, 1)], ids=["grid-2x3", "grid-1x1"])
@pytest.mark.parametrize("name", DDF_CONFIGS)
def test_host_ddf_matches_numpy_reference(name, grid):
    case = make_ddf_case(DDF_CONFIGS[name])
    with host.launch_grid(*grid):
        output = host.ddf(**case.forward_kwargs())
        grads = host.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert isinstance(grads, DDFGrads)
    assert_matches_reference(case, output, grads, "ddf")


@settings(max_examples=20)
@given(config=ddf_configs(), grid=st.tuples(st.integers(1, 4), st.integers(1, 5)))
def test_host_ddf_matches_numpy_reference_on_any_config_and_grid(config, grid):
    case = make_ddf_case(config)
    with host.launch_grid(*grid):
        output = host.ddf(**case.forward_kwargs())
        grads = host.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert_matches_reference(case, output, grads, "ddf")


def test_host_ddf_gradients_are_bitwise_reproducible_on_any_grid():
    """Every gradient is a gather with a fixed summation order: the same bits whichever thread
    computes which element."""
    case = make_ddf_case(DDF_CONFIGS["three heads, stride 2, dilation 3, add float32"])
    runs = []
    for grid in [(2, 3), (1, 1), (4, 7)]:
        with host.launch_grid(*grid):
            runs.append(host.ddf_backward(case.grad_output, **case.backward_kwargs()))
    for run in runs[1:]:
        assert_grads_identical(runs[0], run, DDF_GRAD_NAMES)


def test_host_ddf_empty_batch_returns_empty_arrays_without_launching(monkeypatch):
    def no_launch(*_):
        raise AssertionError("a kernel was launched for an empty batch")
    monkeypatch.setattr(host, "launch", no_launch)
    case = make_ddf_case(DDFConfig(batch=0, head=2, stride=2, dtype="float32"))
    output = host.ddf(**case.forward_kwargs())
    assert output.shape == (0, 2, 2, 2) and output.dtype == np.float32
    grads = host.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert_matches_reference(case, output, grads, "ddf")


@pytest.mark.parametrize("problem", list(ddf_bad_arguments()))
def test_host_ddf_bad_arguments_raise_the_numpy_errors(problem):
    assert not error_mismatches(host.ddf, host.ddf_backward, ddf_bad_arguments()[problem])


# --- CuPy: the same kernels on a GPU ----------------------------------------------------------

needs_cupy = pytest.mark.skipif(backend_problem("cupy") is not None,
                                reason=f"cupy backend: {backend_problem('cupy')}")

CUPY_CONFIGS = ["dcnv2 kink-free", "dcnv2 float32", "groups, offset groups, stride, dilation",
                "offset groups across groups", "dcnv1 zero offsets torchvision rule",
                "dcnv1 zero offsets mmcv rule", "far offsets float32 mmcv", "border far offsets",
                "border integer offsets float32 mmcv"]


@needs_cupy
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


@needs_cupy
@pytest.mark.parametrize("name", ["groups, offset groups, stride, dilation", "dcnv2 float32"])
def test_cupy_device_arrays_in_and_out(name):
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    case = make_case(CONFIGS[name])
    on_device = {k: None if v is None else cupy.asarray(v) for k, v in case.arrays.items()}
    output = cupy_backend.deform_conv2d(**on_device, **case.params)
    grads = cupy_backend.deform_conv2d_backward(cupy.asarray(case.grad_output), **on_device,
                                                **case.params, **case.backward_params)
    assert isinstance(output, cupy.ndarray)
    assert all(isinstance(getattr(grads, n), (cupy.ndarray, type(None))) for n in GRAD_NAMES)
    assert_matches_reference(case, cupy.asnumpy(output), type(grads)(
        **{n: None if v is None else cupy.asnumpy(v) for n, v in vars(grads).items()}))


@needs_cupy
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


@needs_cupy
def test_cupy_empty_batch_and_finiteness_check_on_device():
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    empty = make_case(DeformConvConfig(batch=0))
    output = cupy_backend.deform_conv2d(**empty.forward_kwargs())
    assert output.shape == (0, 2, 5, 5)
    case = make_case(DeformConvConfig())
    offset = cupy.asarray(case.arrays["offset"])
    offset[0, 0, 0, 0] = cupy.nan
    with pytest.raises(ValueError, match="offset must be finite"):
        cupy_backend.deform_conv2d(**{**case.forward_kwargs(), "offset": offset})


@needs_cupy
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


@needs_cupy
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


@needs_cupy
@pytest.mark.parametrize("name", ["two position groups, groups, border, float32",
                                  "per output channel, groups, stride, mmcv, float32",
                                  "empty batch"])
def test_cupy_active_conv_device_arrays_in_and_out(name):
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    case = make_active_case(ACTIVE_CONFIGS[name])
    on_device = {k: None if v is None else cupy.asarray(v) for k, v in case.arrays.items()}
    output = cupy_backend.active_conv2d(**on_device, **case.params)
    grads = cupy_backend.active_conv2d_backward(cupy.asarray(case.grad_output), **on_device,
                                                **case.params, **case.backward_params)
    assert isinstance(output, cupy.ndarray)
    assert all(isinstance(value, (cupy.ndarray, type(None))) for value in vars(grads).values())
    assert_matches_reference(case, cupy.asnumpy(output), type(grads)(
        **{n: None if v is None else cupy.asnumpy(v) for n, v in vars(grads).items()}),
        "active_conv2d")


@needs_cupy
@pytest.mark.parametrize("name", DDF_CONFIGS)
def test_cupy_ddf_matches_numpy_reference_with_numpy_arrays(name):
    from refdyn.gpu import cupy as cupy_backend
    case = make_ddf_case(DDF_CONFIGS[name])
    output = cupy_backend.ddf(**case.forward_kwargs())
    grads = cupy_backend.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray)
    assert all(isinstance(getattr(grads, n), np.ndarray) for n in DDF_GRAD_NAMES)
    assert_matches_reference(case, output, grads, "ddf")


@needs_cupy
@pytest.mark.parametrize("name", ["two heads, stride 2, dilation 2",
                                  "three heads, stride 2, dilation 3, add float32"])
def test_cupy_ddf_device_arrays_in_and_out(name):
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    case = make_ddf_case(DDF_CONFIGS[name])
    on_device = {k: cupy.asarray(v) for k, v in case.arrays.items()}
    output = cupy_backend.ddf(**on_device, **case.params)
    grads = cupy_backend.ddf_backward(cupy.asarray(case.grad_output), **on_device, **case.params)
    assert isinstance(output, cupy.ndarray)
    assert all(isinstance(getattr(grads, n), cupy.ndarray) for n in DDF_GRAD_NAMES)
    assert_matches_reference(case, cupy.asnumpy(output), DDFGrads(
        **{n: cupy.asnumpy(v) for n, v in vars(grads).items()}), "ddf")


@needs_cupy
def test_cupy_ddf_empty_batch_and_bad_arguments_on_device():
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    empty = make_ddf_case(DDFConfig(batch=0))
    assert cupy_backend.ddf(**empty.forward_kwargs()).shape == (0, 2, 5, 5)
    grads = cupy_backend.ddf_backward(empty.grad_output, **empty.backward_kwargs())
    assert grads.grad_spatial_filter.shape == (0, 9, 5, 5)
    for arguments in ddf_bad_arguments().values():
        assert not error_mismatches(cupy_backend.ddf, cupy_backend.ddf_backward, arguments,
                                    cupy.asarray)


def test_kernel_times_records_each_launch_inside_the_block_only():
    case = make_case(CONFIGS["dcnv2 float32"])
    host.deform_conv2d(**case.forward_kwargs())
    with host.kernel_times() as times:
        host.deform_conv2d(**case.forward_kwargs())
        with host.kernel_times() as inner:
            host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=True)
    assert [t.name for t in times] == ["deform_conv_columns_f32"]   # the inner block's are apart
    assert [t.name for t in inner] == [f"deform_conv_{name}_f32" for name in (
        "grad_offset_mask", "count_contributions", "fill_contributions")] + [
        "deform_conv_sort_contributions"] + [f"deform_conv_{name}_f32" for name in (
            "weigh_contributions", "grad_input_gather", "columns")]
    assert all(t.seconds > 0 and t.bytes > 0 for t in times + inner)
    host.deform_conv2d(**case.forward_kwargs())
    assert len(times) == 1 and host.KERNEL_LOG.pending is None


@needs_cupy
def test_cupy_kernel_times_are_device_times_of_each_launch():
    from refdyn.gpu import cupy as cupy_backend
    case = make_case(CONFIGS["dcnv2 float32"])
    cupy_backend.deform_conv2d(**case.forward_kwargs())
    with cupy_backend.kernel_times() as times:
        cupy_backend.deform_conv2d_backward(case.grad_output, **case.backward_kwargs())
    assert [t.name for t in times] == [f"deform_conv_{name}_f32" for name in (
        "grad_offset_mask", "grad_input_atomic", "columns")]
    assert all(t.seconds > 0 and t.bytes > 0 for t in times)
