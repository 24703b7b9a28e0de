"""The Numba CUDA backend (importable as ``refdyn.gpu.numba``): every operator with a GPU mirror,
with the same functions, arguments, errors and results as the NumPy reference, computed by
``@cuda.jit`` kernels.

This module is the backend's adapter (:class:`refdyn.gpu.backend.Backend`) and one binding per
operator; the operators are written once for every backend in the ``<stem>_ops`` modules, and
the Numba kernels with their launch sequences live in ``<stem>_numba.py`` (deform_conv_numba,
roi_numba, ddf_numba, lsdfn_numba, mimic_loss_numba; what they share in numba_support).
Without a GPU the kernels run under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by
:func:`refdyn.gpu.use_numba_simulator_without_device` before Numba is imported); this module
refuses to import when neither is available.

Arguments are NumPy arrays (results are NumPy arrays) or Numba device arrays (results are
Numba device arrays; the kind of the first array argument after ``grad_output`` decides, other
arguments are copied to the device when they are on the host).  float32 and float64 both work
and every computation stays in the input dtype.  Compiled kernels are kept in Numba's on-disk
cache (``cache=True``), so only the first process on a machine pays the compilation
(docs/gpu.md gives the cost).

Every launch passes what a device accepts (:func:`refdyn.gpu.numba_support._launch`): device
arrays, integers, floats, booleans and tuples of them, never ``None``; an optional array that
is absent (a mask, a bias, an attention map, a gradient not asked for) travels as a zero-size
stand-in that device code tests with ``_given``.  Under the simulator the same rules are
checked, so a launch a device would refuse fails in the test suite too.

Active Convolution's glue around the deformable convolutions (broadcasts, channel slices,
concatenation) runs in NumPy on the host: Numba device arrays have none of these operations.
"""

from __future__ import annotations

import numpy as np

from . import active_conv_ops, ddf_ops, deform_conv_ops, lsdfn_ops, mimic_loss_ops, roi_ops
from .backend import Backend, map_arrays
from .numba_support import _all_finite, _is_device_array, _on_device, cuda


def _to_host(array):
    """A device array copied to the host; anything else as it is (for the checks to judge)."""
    return array.copy_to_host() if _is_device_array(array) else array


def _deliver(result, like):
    """The result (an array or a gradient record) as device arrays when ``like`` is a device
    array, else as NumPy arrays, wherever each is now."""
    device = _is_device_array(like)

    def move(array):
        if _is_device_array(array) == device:
            return array
        return cuda.to_device(array) if device else array.copy_to_host()
    return map_arrays(move, result)


BACKEND = Backend(module=__name__, sequences="_numba", launch_with=(),
                  to_device=_on_device, deliver=_deliver, all_finite=_all_finite,
                  to_host=_to_host, glue_xp=np, to_glue=_to_host)

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
