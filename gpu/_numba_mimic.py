"""DCNv2's R-CNN feature mimic loss in Numba CUDA kernels, exposed as
:func:`refdyn.gpu.numba.mimic_loss` and :func:`refdyn.gpu.numba.mimic_loss_backward`.

The same functions, arguments, errors and results as :mod:`refdyn.feature_mimic`, computed by
``@cuda.jit`` kernels that mirror ``mimic_loss.cu`` one for one (its header states the
equations).  RoI r's features f and target g are flattened into rows of D entries:

    L = sum_r [1 - cos_r],   cos_r = <f, g> / (N(f) N(g)),   N(v) = max(|v|, eps)

(K1) one thread per RoI sums <f, g>, |f|^2, |g|^2 in increasing k; (K2) one thread sums the
terms in increasing r; (K3) one thread per element writes both gradients.  No floating-point
atomics: the same results on every run.  Unlike the other Numba kernels, every arithmetic step
runs in float64 for both dtypes (``float()`` of each entry), as the NumPy reference does; only
the stored results are in the arrays' dtype.  NumPy arrays in give NumPy arrays out; a Numba
device array ``features`` gives device arrays (other arguments are copied to the device when
they are on the host).  An empty RoI list launches nothing.
"""

from __future__ import annotations

import math

import numpy as np

from refdyn._checks import check_float_array
from refdyn.feature_mimic import MimicLossGrads, check_mimic_loss_args

from ._numba_support import _all_finite, _deliver, _is_device_array, _launch, _on_device, cuda

__all__ = ["mimic_loss", "mimic_loss_backward"]

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
# Host side
# ---------------------------------------------------------------------------------------------

def _sizes(features) -> tuple[int, int]:
    """(R, D): RoIs and entries per RoI."""
    return int(features.shape[0]), math.prod(int(n) for n in features.shape[1:])


def _rows(array, rois, size):
    """The (R, D) device rows of a (R, ...) array (copied to the device when on the host)."""
    return _on_device(array).reshape(rois, size)


def _statistics(features, target, rois, size, eps):
    """(K1) on the device: the (R, 4) float64 statistics and the (R, D) rows."""
    rows_f, rows_g = _rows(features, rois, size), _rows(target, rois, size)
    stats = cuda.device_array((rois, 4), dtype=np.float64)
    _launch(_rows_kernel, rois, rows_f, rows_g, stats, float(eps))
    return stats, rows_f, rows_g


def mimic_loss(features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])] on the GPU.

    Same arguments, checks and result as :func:`refdyn.feature_mimic.mimic_loss` (a 0-d array of
    the dtype; a 0-d device array when ``features`` is one).
    """
    dtype = check_mimic_loss_args(features, target, eps, all_finite=_all_finite)
    device = _is_device_array(features)
    rois, size = _sizes(features)
    if rois == 0:
        loss = np.zeros((), dtype=dtype)
        return cuda.to_device(loss) if device else loss
    stats, _, _ = _statistics(features, target, rois, size, eps)
    loss = cuda.device_array(1, dtype=dtype)
    _launch(_sum_kernel, 1, stats, loss)
    return loss.reshape(()) if device else loss.copy_to_host().reshape(())


def mimic_loss_backward(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Both gradients of :func:`mimic_loss` on the GPU: one thread per element, no atomics.

    Same arguments, checks and result as :func:`refdyn.feature_mimic.mimic_loss_backward`; device
    arrays out when ``features`` is a device array.
    """
    dtype = check_mimic_loss_args(features, target, eps, all_finite=_all_finite)
    check_float_array(grad_output, "grad_output", 0, dtype)
    device = _is_device_array(features)
    rois, size = _sizes(features)
    if rois == 0 or size == 0:
        return _deliver(device, MimicLossGrads(np.zeros(features.shape, dtype=dtype),
                                               np.zeros(target.shape, dtype=dtype)))
    stats, rows_f, rows_g = _statistics(features, target, rois, size, eps)
    grad_f = cuda.device_array((rois, size), dtype=dtype)
    grad_g = cuda.device_array((rois, size), dtype=dtype)
    go = _on_device(np.asarray(grad_output).reshape(1) if not _is_device_array(grad_output)
                    else grad_output.reshape(1))
    _launch(_backward_kernel, rois * size, rows_f, rows_g, stats, go, grad_f, grad_g, float(eps))
    grads = MimicLossGrads(grad_f.reshape(features.shape), grad_g.reshape(target.shape))
    return _deliver(device, grads)
