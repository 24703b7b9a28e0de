"""The CUDA C kernels (gpu/deform_conv.cu) through both of their backends.

``refdyn.gpu.host`` runs the kernels on the CPU (g++ and gpu/cuda_host_compat.h), so the kernel
source itself is tested on every machine: against the NumPy reference for the forward and
every gradient, under both boundary rules and several launch grids, on the deterministic and
the atomic grad_input paths, and Active Convolution assembled from them.  ``refdyn.gpu.cupy``
runs the same source on a GPU; its tests run only where CuPy and a device exist.  The nvcc test
checks that the file also builds as CUDA.
(The registry-driven tests in test_registry_generic.py cover both backends generically.)
"""

import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import refdyn
from refdyn.active_conv import active_conv2d, active_conv2d_backward
from refdyn.gpu import backend_problem, host, host_compiler
from refdyn.testing.active_conv_cases import ActiveConvConfig, make_case as make_active_case
from refdyn.testing.cases import close_enough, mismatch_report
from refdyn.testing.deform_conv_cases import DeformConvConfig, make_case
from refdyn.testing.strategies import deform_conv2d_configs

GRAD_NAMES = ("grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask")
DEFORM_REFERENCE = (refdyn.deform_conv2d, refdyn.deform_conv2d_backward, GRAD_NAMES)
ACTIVE_REFERENCE = (active_conv2d, active_conv2d_backward,
                    ("grad_input", "grad_positions", "grad_weight", "grad_bias"))
KERNEL_SOURCE = Path(host.__file__).resolve().parent / "deform_conv.cu"

pytestmark = pytest.mark.skipif(backend_problem("host") is not None,
                                reason=f"host backend: {backend_problem('host')}")


@contextmanager
def launch_grid(blocks, threads):
    """Run the host kernels on a grid of ``blocks`` x ``threads``."""
    saved = host.GRID_BLOCKS, host.BLOCK_THREADS
    host.GRID_BLOCKS, host.BLOCK_THREADS = blocks, threads
    try:
        yield
    finally:
        host.GRID_BLOCKS, host.BLOCK_THREADS = saved


def assert_matches_reference(case, output, grads, reference=DEFORM_REFERENCE):
    """Forward output and every gradient close to the vectorized NumPy reference, same dtypes.

    reference: (forward, backward, gradient names) of deform_conv2d or active_conv2d."""
    forward, backward, grad_names = reference
    dtype = case.grad_output.dtype
    expected_output = forward(**case.forward_kwargs())
    expected = backward(case.grad_output, **case.backward_kwargs())
    pairs = [("output", output, expected_output)]
    pairs += [(name, getattr(grads, name), getattr(expected, name)) for name in grad_names]
    for name, actual, wanted in pairs:
        assert (actual is None) == (wanted is None), f"{name}\n{case.description}"
        if wanted is None:
            continue
        actual = np.asarray(actual)
        assert actual.dtype == dtype and actual.shape == wanted.shape, name
        assert close_enough(actual, wanted, dtype), \
            f"{mismatch_report(name, actual, wanted, dtype)}\n{case.description}"


def assert_grads_identical(a, b):
    for name in GRAD_NAMES:
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
    output = host.deform_conv2d(**case.forward_kwargs())
    grads = host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                        deterministic=deterministic, **chunking)
    assert_matches_reference(case, output, grads)


@settings(max_examples=20)
@given(config=deform_conv2d_configs(), deterministic=st.booleans(),
       grid=st.tuples(st.integers(1, 4), st.integers(1, 5)))
def test_host_matches_numpy_reference_on_any_config_and_grid(config, deterministic, grid):
    case = make_case(config)
    with launch_grid(*grid):
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
        with launch_grid(*grid):
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
    assert_matches_reference(case, output, grads, ACTIVE_REFERENCE)


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


def test_host_build_is_cached_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    sources = []
    for source in host.SOURCES:
        copy = tmp_path / "src" / source.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(source, copy)
        sources.append(copy)
    monkeypatch.setattr(host, "SOURCES", tuple(sources))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = host.build_library()
    assert first.parent == tmp_path / "cache" / "refdyn"
    built_at = first.stat().st_mtime_ns
    assert host.build_library() == first and first.stat().st_mtime_ns == built_at
    sources[1].write_text(sources[1].read_text() + "\n// changed\n")
    second = host.build_library()
    assert second != first and second.exists()
    assert sorted(p.name for p in second.parent.iterdir()) == sorted([first.name, second.name])


def test_kernel_source_compiles_without_warnings_on_the_host(tmp_path):
    result = subprocess.run(
        [host_compiler(), *host.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-x", "c++",
         "-include", str(host.SOURCES[0]), str(KERNEL_SOURCE), "-o", str(tmp_path / "lib.so")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


EXPECTED_KERNELS = {f"deform_conv_{name}_{suffix}" for suffix in ("f32", "f64") for name in (
    "forward", "col_grad", "grad_offset_mask", "grad_input_atomic", "count_contributions",
    "fill_contributions", "grad_input_gather", "grad_weight", "grad_bias")
} | {"deform_conv_sort_contributions"}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_kernel_source_compiles_with_nvcc(tmp_path):
    ptx = tmp_path / "deform_conv.ptx"
    result = subprocess.run(
        ["nvcc", "-std=c++17", "--ptx", "-arch=sm_80", "-Werror", "all-warnings",
         str(KERNEL_SOURCE), "-o", str(ptx)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    assert entries == EXPECTED_KERNELS


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
    assert_matches_reference(case, output, grads, ACTIVE_REFERENCE)


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
        ACTIVE_REFERENCE)
