"""The GPU mirrors of DDF (Zhou et al., CVPR 2021): gpu/ddf.cu through refdyn.gpu.host and
refdyn.gpu.cupy, gpu/ddf_numba.py through refdyn.gpu.numba, against the NumPy reference: heads,
stride, dilation, both kernel combinations, both dtypes, several launch grids.  Without a GPU the
Numba kernels run under the CUDA simulator (conftest.py): sizes stay tiny.  Empty batches, bad
arguments, device arrays and reproducibility are in test_backends_generic.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refdyn.checks import compare_results
from refdyn.ddf_args import DDFGrads
from refdyn.ddf_numpy import ddf, ddf_backward
from refdyn.gpu import host
from refdyn.registry import OPERATORS
from refdyn.testing import cases
from refdyn.testing.cases import assert_close
from refdyn.testing.ddf_cases import DDFConfig, make_case as make_ddf_case
from refdyn.testing.strategies import ddf_configs

DDF_GRAD_NAMES = ("grad_features", "grad_channel_filter", "grad_spatial_filter")



def assert_matches_reference(case, output, grads, operator="ddf"):
    comparison = compare_results(OPERATORS[operator], case, output, grads)
    assert comparison.ok, "\n".join(comparison.failures) + f"\n{case.description}"


def assert_grads_close(actual, expected, dtype, names=DDF_GRAD_NAMES):
    cases.assert_grads_close(actual, expected, dtype, names)


# --- the CUDA C kernels on the host ------------------------------------------------------------

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


@pytest.mark.backend("host")
@pytest.mark.parametrize("grid", [(2, 3), (1, 1)], ids=["grid-2x3", "grid-1x1"])
@pytest.mark.parametrize("name", DDF_CONFIGS)
def test_host_ddf_matches_numpy_reference(name, grid):
    case = make_ddf_case(DDF_CONFIGS[name])
    with host.launch_grid(*grid):
        output = host.ddf(**case.forward_kwargs())
        grads = host.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert isinstance(grads, DDFGrads)
    assert_matches_reference(case, output, grads, "ddf")


@pytest.mark.backend("host")
@settings(max_examples=20)
@given(config=ddf_configs(), grid=st.tuples(st.integers(1, 4), st.integers(1, 5)))
def test_host_ddf_matches_numpy_reference_on_any_config_and_grid(config, grid):
    case = make_ddf_case(config)
    with host.launch_grid(*grid):
        output = host.ddf(**case.forward_kwargs())
        grads = host.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert_matches_reference(case, output, grads, "ddf")


# --- CuPy -------------------------------------------------------------------------------------

@pytest.mark.backend("cupy")
@pytest.mark.parametrize("name", DDF_CONFIGS)
def test_cupy_ddf_matches_numpy_reference_with_numpy_arrays(name):
    from refdyn.gpu import cupy as cupy_backend
    case = make_ddf_case(DDF_CONFIGS[name])
    output = cupy_backend.ddf(**case.forward_kwargs())
    grads = cupy_backend.ddf_backward(case.grad_output, **case.backward_kwargs())
    assert isinstance(output, np.ndarray)
    assert all(isinstance(getattr(grads, n), np.ndarray) for n in DDF_GRAD_NAMES)
    assert_matches_reference(case, output, grads, "ddf")


# --- Numba ------------------------------------------------------------------------------------

# Heads (1, 2, one per channel), strides dividing the image and not, dilation past the border,
# kernel sizes 1, 3, 5, both combinations, both dtypes; tiny for the simulator.
NUMBA_DDF_CONFIGS = [
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


@pytest.mark.backend("numba")
@pytest.mark.parametrize("config", NUMBA_DDF_CONFIGS, ids=lambda c: (
    f"head{c.head}-k{c.kernel_size}-s{c.stride}-d{c.dilation}-{c.kernel_combine}-{c.dtype}"))
def test_numba_ddf_equals_numpy(nb, config):
    case = make_ddf_case(config)
    assert_ddf_matches_numpy(case, nb.ddf(**case.forward_kwargs()),
                             nb.ddf_backward(case.grad_output, **case.backward_kwargs()))
