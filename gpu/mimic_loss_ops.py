"""DCNv2's R-CNN feature mimic loss on a GPU backend (:mod:`refdyn.gpu.backend`): the NumPy
reference's checks, then ``mimic_loss_launch`` (CuPy, host build) or ``mimic_loss_numba``.
One thread per RoI for the statistics, one per element for the gradients: no atomics."""

from __future__ import annotations

from refdyn.args import check_float_array
from refdyn.mimic_loss_numpy import MimicLossGrads, check_mimic_loss_args


def mimic_loss(backend, features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])] on the GPU.

    Same arguments, checks and result as :func:`refdyn.mimic_loss` (a 0-d array of the dtype).
    """
    dtype = check_mimic_loss_args(features, target, eps, all_finite=backend.all_finite)
    return backend.forward("mimic_loss", "forward", dtype, features, target, eps=eps)


def mimic_loss_backward(backend, grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Both gradients of :func:`mimic_loss` on the GPU.

    Same arguments, checks and result as :func:`refdyn.mimic_loss_backward`.
    """
    dtype = check_mimic_loss_args(features, target, eps, all_finite=backend.all_finite)
    check_float_array(grad_output, "grad_output", 0, dtype)
    return backend.backward("mimic_loss", "backward", dtype, grad_output, features, target,
                            eps=eps)
