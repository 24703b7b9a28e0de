"""What the Numba CUDA modules share (:mod:`refdyn.gpu.numba` and :mod:`refdyn.gpu._numba_ddf`):
the import guard, the launch shape of the grid-stride kernels, the flat-index split, and the
host-side helpers that move arrays between host and device and test finiteness on the device.

Importing this module fails (ImportError) unless Numba CUDA can run here: on a GPU, or under
the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by
:func:`refdyn.gpu.use_numba_simulator_without_device` before Numba is imported).
"""

from __future__ import annotations

import math

import numpy as np

from . import backend_problem

_PROBLEM = backend_problem("numba")
if _PROBLEM is not None:
    raise ImportError(f"refdyn.gpu.numba cannot run here: {_PROBLEM}")

import numba  # noqa: E402  (only once Numba CUDA is known to be usable)
from numba import cuda  # noqa: E402

if not cuda.is_available():
    raise ImportError("refdyn.gpu.numba cannot run here: Numba finds no usable CUDA device "
                      "(was numba imported before NUMBA_ENABLE_CUDASIM was set?)")

# Launch shape of every grid-stride kernel.  The simulator runs each thread as a Python thread,
# so it gets a few hundred threads per launch; a GPU gets enough to fill it.
if numba.config.ENABLE_CUDASIM:
    _THREADS, _MAX_BLOCKS = 64, 4
else:
    _THREADS, _MAX_BLOCKS = 256, 4096

_is_device_array = getattr(cuda, "is_cuda_array", None) or cuda.devicearray.is_cuda_ndarray


@cuda.jit(device=True)
def _split(index, size):
    """(index // size, index % size): peels the last axis off a flat index."""
    return index // size, index % size


@cuda.jit
def _find_nonfinite_kernel(total, array, found):
    """found[0] = 1 if the 4-D ``array`` holds NaN or infinity (every writer stores the same 1)."""
    d1, d2, d3 = array.shape[1], array.shape[2], array.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, i3 = _split(index, d3)
        rest, i2 = _split(rest, d2)
        i0, i1 = _split(rest, d1)
        if not math.isfinite(array[i0, i1, i2, i3]):
            found[0] = 1


def _launch(kernel, total, *args):
    """Run a grid-stride kernel over ``total`` elements (its first argument)."""
    blocks = max(1, min(_MAX_BLOCKS, -(-total // _THREADS)))
    kernel[blocks, _THREADS](total, *args)


def _all_finite(array) -> bool:
    """Finiteness test for the argument checks: a kernel for device arrays (viewed as 4-D when
    they have another rank, e.g. LS-DFN's 5-D and 7-D inputs), NumPy otherwise."""
    if not _is_device_array(array):
        return bool(np.isfinite(array).all())
    total = math.prod(array.shape)
    if total == 0:
        return True
    if len(array.shape) != 4:
        array = array.reshape(1, 1, 1, total)
    found = cuda.to_device(np.zeros(1, dtype=np.int32))
    _launch(_find_nonfinite_kernel, total, array, found)
    return not found.copy_to_host()[0]


def _on_device(array):
    """A device array for a kernel argument (None stays None)."""
    if array is None or _is_device_array(array):
        return array
    return cuda.to_device(np.ascontiguousarray(array))


def _deliver(device: bool, grads):
    """The gradients (a DeformConvGrads, ActiveConvGrads or DDFGrads) as device arrays
    (``device``) or as NumPy arrays, wherever each is now."""
    def move(array):
        if array is None or _is_device_array(array) == device:
            return array
        return cuda.to_device(array) if device else array.copy_to_host()
    return type(grads)(**{name: move(value) for name, value in vars(grads).items()})
