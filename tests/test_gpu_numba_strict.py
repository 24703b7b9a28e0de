"""The strict simulator: every Numba kernel launch is held to what numba-cuda's dispatcher
accepts on a device (refdyn.gpu.numba_support._device_arguments), so a kernel call that a
device would refuse fails here too, and scalars reach the simulated kernel with the types the
device compiles them as."""

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")    # a module global: the simulator swaps it in kernels


@pytest.fixture(scope="module")
def support(nb):
    from refdyn.gpu import numba_support
    return numba_support


@pytest.mark.parametrize("value, message", [
    (None, r"argument 'flat' of kernel _fill_zero_kernel: None: numba-cuda's dispatcher "
           r"refuses None"),
    (np.zeros(3, np.float32), r"argument 'flat' .* a NumPy array; a device would copy it"),
    ([0.0, 0.0], r"argument 'flat' .* a list, which a device refuses"),
    ("zeros", r"argument 'flat' .* a str, which a device refuses"),
])
def test_a_launch_refuses_what_a_device_refuses(deform_conv_kernels, support, value, message):
    with pytest.raises(TypeError, match=message):
        support._launch(deform_conv_kernels._fill_zero_kernel, 2, value)


def test_integers_must_fit_the_kernels_64_bits(deform_conv_kernels, support):
    flat = cuda.to_device(np.ones(2, np.float32))
    with pytest.raises(TypeError, match=r"argument 'total' .* 18446744073709551616 does not fit"):
        support._launch(deform_conv_kernels._fill_zero_kernel, 2**64, flat)
    with pytest.raises(TypeError, match=r"item 1: None"):
        support._device_arguments(deform_conv_kernels._fill_zero_kernel, (1, (2, None)))


def test_a_valid_launch_runs_and_records_its_variant(deform_conv_kernels, support):
    flat = cuda.to_device(np.ones(5, np.float64))
    support._launch(deform_conv_kernels._fill_zero_kernel, 5, flat)
    np.testing.assert_array_equal(flat.copy_to_host(), np.zeros(5))
    from numba import types
    variants = support.LAUNCHED_VARIANTS["refdyn.gpu.deform_conv_numba", "_fill_zero_kernel"]
    assert (types.int64, types.Array(types.float64, 1, "C")) in variants


def test_python_floats_reach_the_kernel_as_float64_as_on_a_device(support):
    """float32 x a float scalar argument is a float64 product on a device (Numba types the
    scalar float64); NumPy alone would keep the Python float weak and round to float32."""
    @cuda.jit
    def scale_kernel(total, scale, values, out):
        for index in range(cuda.grid(1), total, cuda.gridsize(1)):
            out[index] = values[index] * scale

    values = np.float32([1.0, 2.0, 7.0, 1e-3])
    out = cuda.device_array(4, np.float64)
    support._launch(scale_kernel, 4, 1.0 / 3.0, cuda.to_device(values), out)
    np.testing.assert_array_equal(out.copy_to_host(), values.astype(np.float64) * (1.0 / 3.0))
