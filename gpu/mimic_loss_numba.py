"""DCNv2's R-CNN feature mimic loss in Numba CUDA kernels: the kernels and the launch sequences
:func:`forward` and :func:`backward` that :mod:`refdyn.gpu.mimic_loss_ops` runs on the Numba
backend.

The kernels mirror ``mimic_loss.cu`` one for one (its header states the equations).  RoI r's
features f and target g are flattened into rows of D entries:

    L = sum_r [1 - cos_r],   cos_r = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)

computed, as in the NumPy reference, on each row divided by its largest |entry| (scale-invariant
up to the dtype's range).  (K1) one thread per RoI finds those scales and sums <f^, g^>, |f^|^2,
|g^|^2 in increasing k; (K2) one thread sums the
terms in increasing r; (K3) one thread per element writes both gradients.  No floating-point
atomics: the same results on every run.  Unlike the other Numba kernels, every arithmetic step
runs in float64 for both dtypes (``float()`` of each entry), as the NumPy reference does; only
the stored results are in the arrays' dtype.  An empty RoI list launches nothing.
"""

from __future__ import annotations

import math

import numpy as np

from refdyn.mimic_loss_numpy import MimicLossGrads

from .mimic_loss_launch import row_sizes
from .numba_support import _launch, cuda


#: Columns of the (R, 5) float64 statistics: cos, s_f, s_g, |f^|, |g^| (enum MimicStat).
_COS, _SCALE_F, _SCALE_G, _LENGTH_F, _LENGTH_G = 0, 1, 2, 3, 4
_STAT_COUNT = 5


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _vector_scale(rows, r):
    """The largest |entry| of row r, 1 for a zero row (the scale s of the module docstring)."""
    peak = 0.0
    for k in range(rows.shape[1]):
        peak = max(peak, abs(float(rows[r, k])))
    return peak if peak > 0.0 else 1.0


@cuda.jit(cache=True)
def _rows_kernel(total, features, target, stats, eps):
    """(K1): one thread per RoI r of the (R, D) rows: the scales, then the sums of the scaled
    entries in increasing k."""
    size = features.shape[1]
    for r in range(cuda.grid(1), total, cuda.gridsize(1)):
        scale_f = _vector_scale(features, r)
        scale_g = _vector_scale(target, r)
        dot = 0.0
        square_f = 0.0
        square_g = 0.0
        for k in range(size):
            a = float(features[r, k]) / scale_f
            b = float(target[r, k]) / scale_g
            dot += a * b
            square_f += a * a
            square_g += b * b
        length_f = math.sqrt(square_f)
        length_g = math.sqrt(square_g)
        stats[r, _COS] = dot / max(length_f, eps / scale_f) / max(length_g, eps / scale_g)
        stats[r, _SCALE_F] = scale_f
        stats[r, _SCALE_G] = scale_g
        stats[r, _LENGTH_F] = length_f
        stats[r, _LENGTH_G] = length_g


@cuda.jit(cache=True)
def _sum_kernel(total, stats, loss):
    """(K2): loss[0] = sum_r (1 - cos_r) in increasing r, by the grid's first thread."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        acc = 0.0
        for r in range(stats.shape[0]):
            acc += 1.0 - stats[r, _COS]
        loss[index] = acc


@cuda.jit(device=True)
def _entry_grad(go, own, other, cos, scale, length, other_scale, other_length, eps):
    """-go (other^ / N(own) / n_other - [|own^| > eps / s_own] cos / (s_own |own^|) / |own^|
    own^), in float64 (own^ = own / s_own, likewise other^)."""
    radial = cos / (scale * length) / length if length > eps / scale else 0.0
    return -go * (other / other_scale / max(scale * length, eps)
                  / max(other_length, eps / other_scale) - radial * own / scale)


@cuda.jit(cache=True)
def _backward_kernel(total, features, target, stats, grad_output, grad_features, grad_target,
                     eps):
    """(K3): one thread per element (r, k) of the (R, D) rows writes both gradients."""
    size = features.shape[1]
    go = float(grad_output[0])
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        r = index // size
        k = index % size
        f = float(features[r, k])
        g = float(target[r, k])
        cos = stats[r, _COS]
        scale_f, scale_g = stats[r, _SCALE_F], stats[r, _SCALE_G]
        length_f, length_g = stats[r, _LENGTH_F], stats[r, _LENGTH_G]
        grad_features[r, k] = _entry_grad(go, f, g, cos, scale_f, length_f, scale_g, length_g,
                                          eps)
        grad_target[r, k] = _entry_grad(go, g, f, cos, scale_g, length_g, scale_f, length_f,
                                        eps)


# ---------------------------------------------------------------------------------------------
# Launch sequences (device arrays in and out; the checks are done before)
# ---------------------------------------------------------------------------------------------

def _statistics(features, target, rois, size, eps):
    """(K1): the (R, 5) float64 statistics and the (R, D) rows."""
    rows_f, rows_g = features.reshape(rois, size), target.reshape(rois, size)
    stats = cuda.device_array((rois, _STAT_COUNT), dtype=np.float64)
    _launch(_rows_kernel, rois, rows_f, rows_g, stats, float(eps))
    return stats, rows_f, rows_g


def forward(dtype, features, target, eps):
    """The loss, a 0-d array of ``dtype``: the statistics per RoI, then their sum (K2)."""
    rois, size = row_sizes(features)
    if rois == 0:
        return cuda.to_device(np.zeros((), dtype=dtype))
    stats, _, _ = _statistics(features, target, rois, size, eps)
    loss = cuda.device_array(1, dtype=dtype)
    _launch(_sum_kernel, 1, stats, loss)
    return loss.reshape(())


def backward(dtype, grad_output, features, target, eps) -> MimicLossGrads:
    """Both gradients: one thread per element, no atomics (K3)."""
    rois, size = row_sizes(features)
    if rois == 0 or size == 0:
        return MimicLossGrads(cuda.device_array(features.shape, dtype=dtype),
                              cuda.device_array(target.shape, dtype=dtype))
    stats, rows_f, rows_g = _statistics(features, target, rois, size, eps)
    grad_f = cuda.device_array((rois, size), dtype=dtype)
    grad_g = cuda.device_array((rois, size), dtype=dtype)
    _launch(_backward_kernel, rois * size, rows_f, rows_g, stats, grad_output.reshape(1), grad_f,
            grad_g, float(eps))
    return MimicLossGrads(grad_f.reshape(features.shape), grad_g.reshape(target.shape))
