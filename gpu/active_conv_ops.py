"""Active Convolution on a GPU backend (:mod:`refdyn.gpu.backend`), assembled from the
backend's deformable convolution by :func:`refdyn.active_conv_numpy.active_conv2d_via`: one
deformable convolution per block of channels whose taps share positions, with the offsets
theta_k broadcast over (n, i, j).  The glue (broadcasting, channel slices, concatenation) runs
in the backend's glue array module: CuPy on the CuPy backend, NumPy on the host build and on
Numba, whose device arrays have none of these operations.
"""

from __future__ import annotations

from refdyn.active_conv_numpy import ActiveConvGrads, active_conv2d_backward_via, active_conv2d_via

from . import deform_conv_ops


def active_conv2d(backend, input, positions, weight, bias=None, stride=1, padding=0,
                  boundary="zeros"):
    """Active convolution y(p0) = sum_k w_k x(p0 + p_k + theta_k) (DCNv1 Eq. 2 with
    dp_k = theta_k) from the backend's deformable convolution.

    Same arguments, checks and result as :func:`refdyn.active_conv2d`.
    """
    def deform_forward(*args, **kwargs):
        return deform_conv_ops.deform_conv2d(backend, *args, **kwargs)

    output = active_conv2d_via(deform_forward, backend.glue_xp,
                               *map(backend.to_glue, (input, positions, weight, bias)), stride,
                               padding, boundary, all_finite=backend.all_finite)
    return backend.deliver(output, input)


def active_conv2d_backward(backend, grad_output, input, positions, weight, bias=None, stride=1,
                           padding=0, boundary="zeros", coord_grad="torchvision",
                           deterministic=False) -> ActiveConvGrads:
    """Gradients of :func:`active_conv2d` from the backend's deformable-convolution backward
    (the position gradient sums the offset gradient over (n, i, j)).

    Same arguments, checks and result as :func:`refdyn.active_conv2d_backward`, plus
    ``deterministic`` for grad_input as in
    :func:`refdyn.gpu.deform_conv_ops.deform_conv2d_backward`.
    """
    def deform_backward(*args, **kwargs):
        return deform_conv_ops.deform_conv2d_backward(backend, *args, **kwargs)

    grads = active_conv2d_backward_via(
        deform_backward, backend.glue_xp,
        *map(backend.to_glue, (grad_output, input, positions, weight, bias)), stride, padding,
        boundary, all_finite=backend.all_finite, coord_grad=coord_grad,
        deterministic=deterministic)
    return backend.deliver(grads, input)
