"""The DDF operation (DDF, Zhou et al., CVPR 2021) on a GPU backend (:mod:`refdyn.gpu.backend`):
the NumPy reference's checks, then ``ddf_launch`` (CuPy, host build) or ``ddf_numba``.  Every
gradient is a gather, one thread per element it writes: bitwise reproducible."""

from __future__ import annotations

from refdyn.ddf_args import DDFGrads, check_ddf_args, check_ddf_backward_args


def ddf(backend, features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
        kernel_combine="mul"):
    """The DDF operation on the GPU, one thread per output element.

    Same arguments, checks and result as :func:`refdyn.ddf`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine, all_finite=backend.all_finite)
    return backend.forward("ddf", "forward", geo, features, channel_filter, spatial_filter)


def ddf_backward(backend, grad_output, features, channel_filter, spatial_filter, kernel_size,
                 dilation=1, stride=1, kernel_combine="mul") -> DDFGrads:
    """Every gradient of :func:`ddf` (Eq. B1-B3 of ddf.cu) on the GPU: three gathers.

    Same arguments, checks and result as :func:`refdyn.ddf_backward`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine, all_finite=backend.all_finite)
    check_ddf_backward_args(grad_output, geo)
    return backend.backward("ddf", "backward", geo, grad_output, features, channel_filter,
                            spatial_filter)
