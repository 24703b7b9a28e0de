"""The CUDA C kernels (``deform_conv.cu``, ``ddf.cu``, ``roi.cu``, ``lsdfn.cu``,
``mimic_loss.cu``) on a GPU via CuPy (importable as ``refdyn.gpu.cupy``).

Each source is compiled by NVRTC through CuPy (:func:`compile_source`, with
:data:`NVRTC_OPTIONS`) once per device and kept as a loaded module.  This module is the
backend's adapter (:class:`refdyn.gpu.backend.Backend`: CuPy arrays, the launch sequences of
``<stem>_launch.py``) and one binding per operator of the ``<stem>_ops`` modules, with the same
functions and arguments as the NumPy reference.  NumPy arrays are copied to the device and the
results come back as NumPy arrays, while CuPy arrays stay on the device (the result is a CuPy
array when the first array argument after ``grad_output`` is one).
:func:`refdyn.gpu.backend_problem` says whether this can run here.

Floating point on the device is IEEE, as in the NumPy reference and the host build
(``refdyn.gpu.host``): no fused multiply-adds (``--fmad=false``) and float32 subnormals kept,
not flushed to zero (``-ftz=false``).  That is why the sources are not compiled by
``cupy.RawModule``: its compile appends ``-ftz=true`` after the caller's options, and NVRTC
obeys the last of conflicting options, so float32 subnormal inputs and results would become
zero.  tests/test_gpu_nvrtc.py compiles every source as here for an sm_90 device (H100/H200)
and checks the options NVRTC receives and the float instructions of the PTX.
"""

from __future__ import annotations

from functools import lru_cache

import cupy
import numpy as np
from cupy.cuda.compiler import compile_using_nvrtc
from cupy.cuda.function import Module

from . import active_conv_ops, ddf_ops, deform_conv_ops, lsdfn_ops, mimic_loss_ops, roi_ops
from .backend import Backend, map_arrays
from .cuda_c import SOURCE_DIR, KernelLog, source_of

#: Launch configuration: threads per block, and a cap on the blocks (the kernels' grid-stride
#: loops cover any remaining elements).
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535


#: The NVRTC options of every source; CuPy's compile_using_nvrtc appends the device's
#: architecture (``-arch=sm_XY``) and ``--device-as-default-execution-space``.
#: --fmad=false: no fused multiply-adds, so coordinates round as in the NumPy reference and
#: samples placed exactly on a kink or a skip line stay exactly there.
#: -ftz=false: float32 subnormals are kept (IEEE), as in the NumPy reference.
#: -I<this folder>: NVRTC compiles a source's text, not its file, so only the include path lets
#: a source's ``#include "common.cuh"`` find the header beside it.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false", "-ftz=false", f"-I{SOURCE_DIR}")


def compile_source(source_name: str, arch: str | None = None) -> bytes:
    """The CUDA C file ``source_name`` of this folder compiled by NVRTC with
    :data:`NVRTC_OPTIONS` for compute capability ``arch`` ("90" for sm_90; default: the current
    device's): a cubin, or PTX where CuPy is set to compile PTX (``CUPY_COMPILE_WITH_PTX=1``).
    Raises ``cupy.cuda.compiler.CompileException``, with NVRTC's log, when the source does not
    compile."""
    binary, _ = compile_using_nvrtc((SOURCE_DIR / source_name).read_text(), NVRTC_OPTIONS,
                                    arch=arch, filename=source_name)
    return binary


@lru_cache(maxsize=None)
def _module(source_name: str, device_id: int) -> Module:
    """The CUDA C file ``source_name`` of this folder compiled for device ``device_id`` (the
    current one) and loaded there."""
    module = Module()
    module.load(compile_source(source_name))
    return module


def launch(name: str, total_threads: int, args) -> None:
    """Run kernel ``name`` on the current stream with at least ``total_threads`` threads (up to
    MAX_BLOCKS blocks); ints are passed as long long, None as a null pointer."""
    blocks = max(1, min(-(-total_threads // THREADS_PER_BLOCK), MAX_BLOCKS))
    arguments = tuple(np.int64(value) if isinstance(value, int) else value for value in args)
    kernel = _module(source_of(name), cupy.cuda.Device().id).get_function(name)
    KERNEL_LOG.run(name, args, lambda: kernel((blocks,), (THREADS_PER_BLOCK,), arguments))


def _event():
    """A CUDA event recorded now on the current stream."""
    event = cupy.cuda.Event()
    event.record()
    return event


def _event_seconds(start, end) -> float:
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


#: The launches of this backend, timed with CUDA events inside ``kernel_times()``: each
#: kernel's device time, without the matrix products (cuBLAS) between them.
KERNEL_LOG = KernelLog(mark=_event, elapsed=_event_seconds)
kernel_times = KERNEL_LOG.timing


def _all_finite(array) -> bool:
    return bool(cupy.get_array_module(array).isfinite(array).all())


def _to_device(array):
    """An argument as a C-contiguous CuPy array (None stays None)."""
    return None if array is None else cupy.ascontiguousarray(cupy.asarray(array))


def _to_glue(array):
    """A NumPy argument copied to the device for the CuPy glue; anything else as it is (for the
    checks to judge)."""
    return cupy.asarray(array) if isinstance(array, np.ndarray) else array


def _to_host(array):
    """A CuPy array copied to the host (RoIs for the batch-index check); anything else as is."""
    return cupy.asnumpy(array) if isinstance(array, cupy.ndarray) else array


def _deliver(result, like):
    """The result (an array or a gradient record) as CuPy arrays when ``like`` is one, else
    copied to the host as NumPy arrays."""
    if isinstance(like, cupy.ndarray):
        return result
    return map_arrays(cupy.asnumpy, result)


BACKEND = Backend(module=__name__, sequences="_launch", launch_with=(cupy, launch),
                  to_device=_to_device, deliver=_deliver, all_finite=_all_finite,
                  to_host=_to_host, glue_xp=cupy, to_glue=_to_glue)

deform_conv2d = BACKEND.bind(deform_conv_ops.deform_conv2d)
deform_conv2d_backward = BACKEND.bind(deform_conv_ops.deform_conv2d_backward)
active_conv2d = BACKEND.bind(active_conv_ops.active_conv2d)
active_conv2d_backward = BACKEND.bind(active_conv_ops.active_conv2d_backward)
ddf = BACKEND.bind(ddf_ops.ddf)
ddf_backward = BACKEND.bind(ddf_ops.ddf_backward)
roi_align = BACKEND.bind(roi_ops.roi_align)
roi_align_backward = BACKEND.bind(roi_ops.roi_align_backward)
ps_roi_align = BACKEND.bind(roi_ops.ps_roi_align)
ps_roi_align_backward = BACKEND.bind(roi_ops.ps_roi_align_backward)
deform_roi_align = BACKEND.bind(roi_ops.deform_roi_align)
deform_roi_align_backward = BACKEND.bind(roi_ops.deform_roi_align_backward)
modulated_deform_roi_pool = BACKEND.bind(roi_ops.modulated_deform_roi_pool)
deform_roi_pool = BACKEND.bind(roi_ops.deform_roi_pool)
deform_roi_pool_backward = BACKEND.bind(roi_ops.deform_roi_pool_backward)
roi_pool = BACKEND.bind(roi_ops.roi_pool)
roi_pool_backward = BACKEND.bind(roi_ops.roi_pool_backward)
deform_ps_roi_pool = BACKEND.bind(roi_ops.deform_ps_roi_pool)
deform_ps_roi_pool_backward = BACKEND.bind(roi_ops.deform_ps_roi_pool_backward)
ps_roi_pool = BACKEND.bind(roi_ops.ps_roi_pool)
ps_roi_pool_backward = BACKEND.bind(roi_ops.ps_roi_pool_backward)
dfn = BACKEND.bind(lsdfn_ops.dfn)
dfn_backward = BACKEND.bind(lsdfn_ops.dfn_backward)
lsdfn_sample = BACKEND.bind(lsdfn_ops.lsdfn_sample)
lsdfn_sample_backward = BACKEND.bind(lsdfn_ops.lsdfn_sample_backward)
lsdfn = BACKEND.bind(lsdfn_ops.lsdfn)
lsdfn_backward = BACKEND.bind(lsdfn_ops.lsdfn_backward)
mimic_loss = BACKEND.bind(mimic_loss_ops.mimic_loss)
mimic_loss_backward = BACKEND.bind(mimic_loss_ops.mimic_loss_backward)

__all__ = BACKEND.bound
