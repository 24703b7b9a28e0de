"""The GPU mirrors of LS-DFN (Wu et al., ECCV 2018) and DFN: gpu/lsdfn.cu through
refdyn.gpu.host and refdyn.gpu.cupy, gpu/lsdfn_numba.py through refdyn.gpu.numba.

``refdyn.gpu.host`` runs the kernels on the CPU (g++ and gpu/cuda_host_compat.h) on every
machine: against the NumPy reference for the forward and every gradient on every option of
``dfn``, ``lsdfn_sample`` (Eq. 2) and ``lsdfn`` (Eq. 4-7), several launch grids.
``refdyn.gpu.numba`` runs every non-thorough example configuration (on a GPU, or under the CUDA
simulator, where the sizes stay tiny).  ``refdyn.gpu.cupy`` runs the same source on a GPU; its
tests run only where CuPy and a device exist.  The nvcc test checks that the file builds as CUDA
and exports exactly the kernels the launchers name.  Empty batches, bad arguments, device arrays
and reproducibility are in test_backends_generic.py.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from refdyn.gpu import cuda_c, host, host_compiler
from refdyn.checks import compare_results
from refdyn.registry import OPERATORS as REGISTERED
from refdyn.testing.lsdfn_cases import example_cases

CASES = example_cases()

KERNEL_DIR = Path(host.__file__).resolve().parent


def assert_matches_reference(name, case, output, grads):
    """The forward output and every gradient close to the NumPy reference, same dtype and
    shape; None exactly where the reference has None."""
    comparison = compare_results(REGISTERED[name], case, output, grads)
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


@pytest.mark.backend("host")
@pytest.mark.parametrize("grid", [(2, 3), (1, 1), (5, 7)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("name,case", CASES, ids=lambda value: getattr(
    value, "description", value))
def test_host_lsdfn_and_dfn_match_numpy_reference(name, case, grid):
    with host.launch_grid(*grid):
        output = getattr(host, name)(**case.forward_kwargs())
        grads = getattr(host, f"{name}_backward")(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray)
    assert_matches_reference(name, case, output, grads)


@pytest.mark.backend("host")
def test_lsdfn_source_compiles_without_warnings_on_the_host(tmp_path):
    result = subprocess.run(
        [host_compiler(), *host.COMPILE_FLAGS, "-Wall", "-Wextra", "-Werror", "-x", "c++",
         "-include", str(host.COMPAT_HEADER), str(KERNEL_DIR / "lsdfn.cu"), "-o",
         str(tmp_path / "lib.so")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")
def test_lsdfn_source_compiles_with_nvcc(tmp_path):
    ptx = tmp_path / "kernels.ptx"
    result = subprocess.run(
        ["nvcc", "-std=c++17", "--ptx", "-arch=sm_80", "-Werror", "all-warnings",
         str(KERNEL_DIR / "lsdfn.cu"), "-o", str(ptx)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert set(re.findall(r"\.entry\s+(\w+)", ptx.read_text())) == \
        cuda_c.exported_kernels()["lsdfn.cu"]


# --- CuPy (GPU only) ----------------------------------------------------------------------------


@pytest.mark.backend("cupy")
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


# --- Numba (tiny: without a GPU every thread is a Python thread of the simulator) ---------------

@pytest.mark.backend("numba")
@pytest.mark.parametrize("name,case", example_cases(thorough=False),
                         ids=lambda value: getattr(value, "description", value))
def test_numba_lsdfn_and_dfn_match_numpy_reference(nb, name, case):
    output = getattr(nb, name)(**case.forward_kwargs())
    grads = getattr(nb, f"{name}_backward")(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray) and all(
        isinstance(value, (np.ndarray, type(None))) for value in vars(grads).values())
    assert_matches_reference(name, case, output, grads)
