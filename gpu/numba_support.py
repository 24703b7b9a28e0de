"""What the Numba CUDA modules share (:mod:`refdyn.gpu.numba` and every ``<stem>_numba`` module):
the import guard, the launch shape of the grid-stride kernels, the flat-index split, the
host-side helpers that move arrays between host and device and test finiteness on the device,
and the strict simulator: under the CUDA simulator every launch is held to what numba-cuda's
dispatcher accepts on a device (see :func:`_device_arguments`).

Importing this module fails (ImportError) unless Numba CUDA can run here: on a GPU, or under
the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by
:func:`refdyn.gpu.use_numba_simulator_without_device` before Numba is imported).
"""

from __future__ import annotations

import functools
import inspect
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

# A device function for the small helpers called in the kernels' innermost loops: compiled
# on a device; under the simulator a plain function, since the simulator's device functions
# swap module globals on every call (75x slower RoI kernels with two such helpers).
_device_function = (lambda function: function) if numba.config.ENABLE_CUDASIM \
    else cuda.jit(device=True)

# A float64 product rounded on its own.  On a device NVVM contracts a product followed by an
# addition into one fused multiply-add (one rounding instead of two); libdevice's dmul_rn is
# never contracted.  The simulator computes every product apart anyway.
if numba.config.ENABLE_CUDASIM:
    import operator  # noqa: E402
    _dmul_rn = operator.mul
else:
    from numba.cuda.libdevice import dmul_rn as _dmul_rn  # noqa: E402


@_device_function
def _rounded_product(a, b):
    """a * b in float64, rounded before the addition that follows it, as NumPy computes it: a
    fused multiply-add would round once, and a sample could then fall on the other side of a
    kink or skip line than in the reference (the PTX test checks the RoI coordinates)."""
    return _dmul_rn(float(a), float(b))


@cuda.jit(device=True)
def _split(index, size):
    """(index // size, index % size): peels the last axis off a flat index."""
    return index // size, index % size


@cuda.jit(cache=True)
def _find_nonfinite_kernel(total, array, found):
    """found[0] = 1 if the 4-D ``array`` holds NaN or infinity (every writer stores the same 1)."""
    d1, d2, d3 = array.shape[1], array.shape[2], array.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, i3 = _split(index, d3)
        rest, i2 = _split(rest, d2)
        i0, i1 = _split(rest, d1)
        if not math.isfinite(array[i0, i1, i2, i3]):
            found[0] = 1


#: Every kernel variant launched in this process: (module, kernel name) -> the set of argument
#: type tuples it was launched with, each a variant a device compiles (the test suite compiles
#: each one to PTX for compute capability 9.0).
LAUNCHED_VARIANTS: dict[tuple[str, str], set[tuple]] = {}


def _launch(kernel, total, *args):
    """Run a grid-stride kernel over ``total`` elements (its first argument), its arguments held
    to the device's rules first (:func:`_device_arguments`)."""
    blocks = max(1, min(_MAX_BLOCKS, -(-total // _THREADS)))
    kernel[blocks, _THREADS](*_device_arguments(kernel, (total, *args)))


@functools.lru_cache(maxsize=None)
def _parameters(function) -> tuple[str, ...]:
    """The parameter names of a kernel's Python function."""
    return tuple(inspect.signature(function).parameters)


def _device_arguments(kernel, args) -> tuple:
    """The arguments of a launch as a device sees them, checked by the rules of numba-cuda's
    dispatcher, and the launch recorded in :data:`LAUNCHED_VARIANTS`.

    The simulator runs a kernel as plain Python and accepts anything; numba-cuda's dispatcher on
    a device takes device arrays, integers, floats, booleans and tuples of these, and refuses
    ``None`` and every other object (NotImplementedError at launch).  refdyn is stricter in two
    ways: a NumPy array (which the device would copy there and back at every launch) is a
    missing copy, since refdyn moves every array itself, and an integer must fit int64 (the
    dispatcher would type a larger one uint64).  Each refusal is a TypeError here, on a device
    and under the simulator alike.  Python floats become ``numpy.float64``, the type the device
    compiles them as, so that under the simulator arithmetic with float32 values widens as it
    does on the device (NumPy would keep a Python float weak).
    """
    function = kernel.py_func    # on a device and under the simulator alike
    converted, argument_types = [], []
    for name, value in zip(_parameters(function), args, strict=True):
        value, argument_type = _device_argument(value, f"argument {name!r} of kernel "
                                                       f"{function.__qualname__}")
        converted.append(value)
        argument_types.append(argument_type)
    LAUNCHED_VARIANTS.setdefault((function.__module__, function.__qualname__), set()).add(
        tuple(argument_types))
    return tuple(converted)


def _device_argument(value, where: str):
    """(value as the device receives it, its Numba type); TypeError where a device refuses it."""
    if _is_device_array(value):
        if not hasattr(value, "flags"):  # another library's device array (CUDA array interface)
            value = cuda.as_cuda_array(value)
        try:
            element = numba.from_dtype(value.dtype)
        except NotImplementedError:
            raise TypeError(f"{where}: a device array of dtype {value.dtype}, which Numba "
                            "cannot pass to a kernel") from None
        layout = ("C" if value.flags["C_CONTIGUOUS"]
                  else "F" if value.flags["F_CONTIGUOUS"] else "A")
        return value, numba.types.Array(element, len(value.shape), layout)
    if isinstance(value, np.ndarray):
        raise TypeError(f"{where}: a NumPy array; a device would copy it there and back at "
                        "every launch (move it with cuda.to_device first)")
    if isinstance(value, (bool, np.bool_)):
        return value, numba.types.boolean
    if isinstance(value, (int, np.integer)):
        if not np.iinfo(np.int64).min <= value <= np.iinfo(np.int64).max:
            raise TypeError(f"{where}: the integer {value} does not fit the kernel's 64 bits")
        return value, (numba.types.int64 if isinstance(value, int)
                       else numba.from_dtype(np.dtype(type(value))))
    if isinstance(value, (float, np.floating)):
        value = value if isinstance(value, np.floating) else np.float64(value)
        return value, numba.from_dtype(value.dtype)
    if isinstance(value, tuple):
        pairs = [_device_argument(item, f"{where}, item {i}") for i, item in enumerate(value)]
        return (tuple(item for item, _ in pairs),
                numba.types.BaseTuple.from_types([item_type for _, item_type in pairs]))
    refusal = ("None: numba-cuda's dispatcher refuses None at launch (pass an empty array and a "
               "flag)" if value is None else f"a {type(value).__name__}, which a device refuses")
    raise TypeError(f"{where}: {refusal}")


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


@_device_function
def _given(array):
    """Whether an optional array was given: a kernel cannot take None, so an absent one arrives
    as the zero-size stand-in of :func:`_optional` (a given one has elements wherever a kernel
    runs: no launch happens for an empty batch or RoI list)."""
    return array.size > 0


def _optional(array, ndim: int, dtype):
    """A kernel argument for an optional array: ``array`` on the device, or for None a
    zero-size device array of rank ``ndim`` and ``dtype`` (the same compiled variant either way
    up to the rank; device code tests it with :func:`_given`)."""
    if array is None:
        return cuda.device_array((0,) * ndim, dtype=dtype)
    return _on_device(array)


def _on_device(array):
    """A device array for a kernel argument (None stays None)."""
    if array is None or _is_device_array(array):
        return array
    return cuda.to_device(np.ascontiguousarray(array))
