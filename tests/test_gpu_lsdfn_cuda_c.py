"""The LS-DFN and DFN kernels of gpu/lsdfn.cu through both of their backends.

``refdyn.gpu.host`` runs the kernels on the CPU (g++ and gpu/cuda_host_compat.h) on every
machine: against the NumPy reference for the forward and every gradient on every option of
``dfn``, ``lsdfn_sample`` (Eq. 2) and ``lsdfn`` (Eq. 4-7), several launch grids, an empty batch,
bad arguments.  ``refdyn.gpu.cupy`` runs the same source on a GPU; its tests run only where
CuPy and a device exist.  The nvcc test checks that the file builds as CUDA and exports exactly
the kernels the launchers name.  (test_registry_generic.py covers every backend generically.)
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from refdyn.gpu import backend_problem, host, host_compiler
from refdyn.checks import compare_results
from refdyn.registry import OPERATORS as REGISTERED
from refdyn.testing.lsdfn_cases import DFNConfig, LSDFNConfig, LSDFNSampleConfig, \
    bad_arguments, error_mismatches, example_cases, make_dfn_case, make_lsdfn_case, \
    make_lsdfn_sample_case, references

OPERATORS = references()
CASES = example_cases()

KERNEL_DIR = Path(host.__file__).resolve().parent
needs_cupy = pytest.mark.skipif(backend_problem("cupy") is not None,
                                reason=f"cupy backend: {backend_problem('cupy')}")
pytestmark = pytest.mark.skipif(backend_problem("host") is not None,
                                reason=f"host backend: {backend_problem('host')}")


def assert_matches_reference(name, case, output, grads):
    """The forward output and every gradient close to the NumPy reference, same dtype and
    shape; None exactly where the reference has None."""
    comparison = compare_results(REGISTERED[name], case, output, grads)
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


@pytest.mark.parametrize("grid", [(2, 3), (1, 1), (5, 7)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("name,case", CASES, ids=lambda value: getattr(
    value, "description", value))
def test_host_lsdfn_and_dfn_match_numpy_reference(name, case, grid):
    with host.launch_grid(*grid):
        output = getattr(host, name)(**case.forward_kwargs())
        grads = getattr(host, f"{name}_backward")(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray)
    assert_matches_reference(name, case, output, grads)


def test_host_lsdfn_gradients_are_bitwise_reproducible_on_any_grid():
    """Gathers in a fixed order: the same bits whatever the launch grid."""
    name, case = next((n, c) for n, c in CASES if n == "lsdfn" and c.grad_output.size)
    runs = []
    for grid in [(1, 1), (2, 3), (4, 5)]:
        with host.launch_grid(*grid):
            runs.append(host.lsdfn_backward(case.grad_output, **case.backward_kwargs()))
    for field in vars(runs[0]):
        values = [getattr(run, field) for run in runs]
        assert all(v is None for v in values) or all(
            np.array_equal(values[0], v) for v in values), field


@pytest.mark.parametrize("name,config", [
    ("dfn", DFNConfig(batch=0, per_channel=True, softmax=True)),
    ("lsdfn_sample", LSDFNSampleConfig(batch=0, dtype="float32")),
    ("lsdfn", LSDFNConfig(batch=0, attention="full", fuse="max")),
], ids=["dfn", "lsdfn_sample", "lsdfn"])
def test_host_empty_batch_returns_empty_arrays_without_launching(monkeypatch, name, config):
    case = {"dfn": make_dfn_case, "lsdfn_sample": make_lsdfn_sample_case,
            "lsdfn": make_lsdfn_case}[name](config)

    def no_launch(*args):
        raise AssertionError("launched a kernel for an empty batch")

    monkeypatch.setattr(host, "launch", no_launch)
    output = getattr(host, name)(**case.forward_kwargs())
    grads = getattr(host, f"{name}_backward")(case.grad_output, **case.backward_kwargs())
    assert_matches_reference(name, case, output, grads)


@pytest.mark.parametrize("name,problem", [(name, problem) for name in OPERATORS
                                          for problem in bad_arguments(name)])
def test_host_lsdfn_bad_arguments_raise_the_numpy_errors(name, problem):
    assert not error_mismatches(name, getattr(host, name), getattr(host, f"{name}_backward"),
                                bad_arguments(name)[problem])


def test_lsdfn_source_compiles_without_warnings_on_the_host(tmp_path):
    result = subprocess.run(
        [host_compiler(), *host.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-x", "c++",
         "-include", str(host.COMPAT_HEADER), str(KERNEL_DIR / "lsdfn.cu"), "-o",
         str(tmp_path / "lib.so")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


EXPECTED_LSDFN_KERNELS = {f"{name}_{suffix}" for suffix in ("f32", "f64") for name in (
    "lsdfn_forward", "lsdfn_samples", "lsdfn_fusion_grads", "lsdfn_grad_features",
    "lsdfn_grad_kernel_parts", "lsdfn_grad_position_attention", "lsdfn_grad_full_attention",
    "lsdfn_sample_forward", "lsdfn_sample_grad_features", "lsdfn_sample_grad_kernels",
    "dfn_softmax", "dfn_softmax_backward", "dfn_forward", "dfn_grad_features",
    "dfn_grad_filters")}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_lsdfn_source_compiles_with_nvcc(tmp_path):
    ptx = tmp_path / "kernels.ptx"
    result = subprocess.run(
        ["nvcc", "-std=c++17", "--ptx", "-arch=sm_80", "-Werror", "all-warnings",
         str(KERNEL_DIR / "lsdfn.cu"), "-o", str(ptx)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(re.findall(r"\.entry\s+(\w+)", ptx.read_text())) == EXPECTED_LSDFN_KERNELS


# --- CuPy (GPU only) ----------------------------------------------------------------------------


@needs_cupy
@pytest.mark.parametrize("name,case", CASES, ids=lambda value: getattr(
    value, "description", value))
def test_cupy_lsdfn_and_dfn_match_numpy_reference(name, case):
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    forward = getattr(cupy_backend, name)
    backward = getattr(cupy_backend, f"{name}_backward")
    output = forward(**case.forward_kwargs())
    grads = backward(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray)
    assert_matches_reference(name, case, output, grads)
    on_device = {k: None if v is None else cupy.asarray(v) for k, v in case.arrays.items()}
    output = forward(**on_device, **case.params)
    grads = backward(cupy.asarray(case.grad_output), **on_device, **case.params)
    assert isinstance(output, cupy.ndarray)
    assert all(isinstance(v, (cupy.ndarray, type(None))) for v in vars(grads).values())
    assert_matches_reference(name, case, cupy.asnumpy(output), type(grads)(
        **{k: None if v is None else cupy.asnumpy(v) for k, v in vars(grads).items()}))


@needs_cupy
@pytest.mark.parametrize("name,problem", [(name, problem) for name in OPERATORS
                                          for problem in bad_arguments(name)])
def test_cupy_lsdfn_bad_arguments_raise_the_numpy_errors_on_device(name, problem):
    import cupy

    from refdyn.gpu import cupy as cupy_backend
    assert not error_mismatches(name, getattr(cupy_backend, name),
                                getattr(cupy_backend, f"{name}_backward"),
                                bad_arguments(name)[problem], cupy.asarray)
