"""DCNv2's R-CNN feature mimic loss in Numba CUDA kernels: the kernels and the launch sequences
:func:`forward` and :func:`backward` that :mod:`refdyn.gpu.mimic_loss_ops` runs on the Numba
backend.

The kernels mirror ``mimic_loss.cu`` one for one (its header states the
equations).  RoI r's features f and target g are flattened into rows of D entries:

    L = sum_r [1 - cos_r],   cos_r = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)

(K1) one thread per RoI sums <f, g>, |f|^2, |g|^2 in increasing k; (K2) one thread sums the
terms in increasing r; (K3) one thread per element writes both gradients.  No floating-point
atomics: the same results on every run.  Unlike the other Numba kernels, every arithmetic step
runs in float64 for both dtypes (``float()`` of each entry), as the NumPy reference does; only
the stored results are in the arrays' dtype.  An empty RoI list launches nothing.
"""

from __future__ import annotations

import math

import numpy as np

from refdyn.mimic_loss_numpy import MimicLossGrads

from .numba_support import _launch, cuda


#: Columns of the (R, 4) float64 statistics: cos, N(f) N(g), |f|, |g| (enum MimicStat).
_COS, _NORM_PRODUCT, _LENGTH_F, _LENGTH_G = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _rows_kernel(total, features, target, stats, eps):
    """(K1): one thread per RoI r of the (R, D) rows."""
    size = features.shape[1]
    for r in range(cuda.grid(1), total, cuda.gridsize(1)):
        dot = 0.0
        square_f = 0.0
        square_g = 0.0
        for k in range(size):
            a = float(features[r, k])
            b = float(target[r, k])
            dot += a * b
            square_f += a * a
            square_g += b * b
        length_f = math.sqrt(square_f)
        length_g = math.sqrt(square_g)
        norm_product = max(length_f, eps) * max(length_g, eps)
        stats[r, _COS] = dot / norm_product
        stats[r, _NORM_PRODUCT] = norm_product
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
def _entry_grad(go, own, other, cos, norm_product, length, eps):
    """-go (other / (N(f) N(g)) - [|own| > eps] cos / |own|^2 own), in float64."""
    radial = cos / (length * length) if length > eps else 0.0
    return -go * (other / norm_product - radial * own)


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
        norm_product = stats[r, _NORM_PRODUCT]
        grad_features[r, k] = _entry_grad(go, f, g, cos, norm_product, stats[r, _LENGTH_F], eps)
        grad_target[r, k] = _entry_grad(go, g, f, cos, norm_product, stats[r, _LENGTH_G], eps)


# ---------------------------------------------------------------------------------------------
# Launch sequences (device arrays in and out; the checks are done before)
# ---------------------------------------------------------------------------------------------

def _sizes(features) -> tuple[int, int]:
    """(R, D): RoIs and entries per RoI."""
    return int(features.shape[0]), math.prod(int(n) for n in features.shape[1:])


def _statistics(features, target, rois, size, eps):
    """(K1): the (R, 4) float64 statistics and the (R, D) rows."""
    rows_f, rows_g = features.reshape(rois, size), target.reshape(rois, size)
    stats = cuda.device_array((rois, 4), dtype=np.float64)
    _launch(_rows_kernel, rois, rows_f, rows_g, stats, float(eps))
    return stats, rows_f, rows_g


def forward(dtype, features, target, eps):
    """The loss, a 0-d array of ``dtype``: the statistics per RoI, then their sum (K2)."""
    rois, size = _sizes(features)
    if rois == 0:
        return cuda.to_device(np.zeros((), dtype=dtype))
    stats, _, _ = _statistics(features, target, rois, size, eps)
    loss = cuda.device_array(1, dtype=dtype)
    _launch(_sum_kernel, 1, stats, loss)
    return loss.reshape(())


def backward(dtype, grad_output, features, target, eps) -> MimicLossGrads:
    """Both gradients: one thread per element, no atomics (K3)."""
    rois, size = _sizes(features)
    if rois == 0 or size == 0:
        return MimicLossGrads(cuda.device_array(features.shape, dtype=dtype),
                              cuda.device_array(target.shape, dtype=dtype))
    stats, rows_f, rows_g = _statistics(features, target, rois, size, eps)
    grad_f = cuda.device_array((rois, size), dtype=dtype)
    grad_g = cuda.device_array((rois, size), dtype=dtype)
    _launch(_backward_kernel, rois * size, rows_f, rows_g, stats, grad_output.reshape(1), grad_f,
            grad_g, float(eps))
    return MimicLossGrads(grad_f.reshape(features.shape), grad_g.reshape(target.shape))
