"""The launch sequence of the CUDA C kernels in ``mimic_loss.cu`` (DCNv2's R-CNN feature mimic
loss), run by :mod:`refdyn.gpu.mimic_loss_ops` on both CUDA C backends (:mod:`refdyn.gpu.cupy`,
:mod:`refdyn.gpu.host`), which pass their array module ``xp`` and their
``launch(kernel_name, total_threads, args)`` first.

Arrays reach this module validated (:func:`refdyn.mimic_loss_numpy.check_mimic_loss_args`),
C-contiguous and in ``xp``.  No kernel uses floating-point atomics, so there is nothing to zero
first and the results are the same on every run and grid.  An empty RoI list launches nothing.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from refdyn.mimic_loss_numpy import MimicLossGrads

from . import cuda_c

#: The fields of ``struct MimicGeometry`` in mimic_loss.cu, in order (3 values of 8 bytes; eps
#: is a double, carried as its bit pattern in the int64 array).
GEOMETRY_FIELDS = ("rois", "size", "eps")

#: ``STAT_COUNT`` of ``enum MimicStat`` in mimic_loss.cu: doubles per RoI of the statistics.
STAT_COUNT = 5


def geometry_array(xp, rois: int, size: int, eps: float):
    """``struct MimicGeometry`` as an int64 array of ``xp`` (eps as its double's bits)."""
    eps_bits = int(np.array([eps], dtype=np.float64).view(np.int64)[0])
    return xp.asarray(np.array([rois, size, eps_bits], dtype=np.int64))


#: The exported name of kernel ``name`` of mimic_loss.cu for a dtype (cuda_c.kernel_name).
kernel_name = partial(cuda_c.kernel_name, "mimic_loss")


def row_sizes(features) -> tuple[int, int]:
    """(R, D): RoIs and entries per RoI (also the Numba sequences')."""
    return int(features.shape[0]), math.prod(int(n) for n in features.shape[1:])


def _statistics(xp, launch, geometry, dtype, rois, features, target):
    """(K1): the (R, STAT_COUNT) double statistics of every RoI."""
    stats = xp.empty((rois, STAT_COUNT), dtype=np.float64)
    launch(kernel_name("rows", dtype), rois, [geometry, features, target, stats])
    return stats


def forward(xp, launch, dtype, features, target, eps):
    """L_mimic as a 0-d array of ``dtype``: (K1) then (K2); zero without RoIs (no launch)."""
    rois, size = row_sizes(features)
    if rois == 0:
        return xp.zeros((), dtype=dtype)
    geometry = geometry_array(xp, rois, size, eps)
    stats = _statistics(xp, launch, geometry, dtype, rois, features, target)
    loss = xp.empty((), dtype=dtype)
    launch(kernel_name("sum", dtype), 1, [geometry, stats, loss])
    return loss


def backward(xp, launch, dtype, grad_output, features, target, eps) -> MimicLossGrads:
    """Both gradients: (K1) then (K3), one thread per element; empty gradients and no launch
    without RoIs, and (K3) skipped when each RoI's features are empty."""
    rois, size = row_sizes(features)
    grads = MimicLossGrads(grad_features=xp.empty(features.shape, dtype=dtype),
                           grad_target=xp.empty(target.shape, dtype=dtype))
    if rois == 0 or size == 0:
        return grads
    geometry = geometry_array(xp, rois, size, eps)
    stats = _statistics(xp, launch, geometry, dtype, rois, features, target)
    launch(kernel_name("backward", dtype), rois * size,
           [geometry, features, target, stats, grad_output, grads.grad_features,
            grads.grad_target])
    return grads
