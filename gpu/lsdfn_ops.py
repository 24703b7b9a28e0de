"""LS-DFN (Wu et al., ECCV 2018; Eq. 2-7) and the dynamic local filtering layer of Dynamic
Filter Networks (its s = 1 case) on a GPU backend (:mod:`refdyn.gpu.backend`): the NumPy
reference's checks, then ``lsdfn_launch`` (CuPy, host build) or ``lsdfn_numba``.  Every gradient
is a gather: the same bits on every run."""

from __future__ import annotations

from refdyn.args import check_grad_output
from refdyn.lsdfn_args import DFNGrads, LSDFNGrads, LSDFNSampleGrads, check_dfn_args, \
    check_lsdfn_args, check_lsdfn_sample_args


def dfn(backend, features, filters, kernel_size, softmax=False):
    """Dynamic local filtering (Dynamic Filter Networks) on the GPU; as :func:`refdyn.dfn`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax,
                                      all_finite=backend.all_finite)
    return backend.forward("lsdfn", "dfn_forward", geo, features, filters,
                           per_channel=per_channel, softmax=softmax)


def dfn_backward(backend, grad_output, features, filters, kernel_size, softmax=False) -> DFNGrads:
    """Both gradients of :func:`dfn` on the GPU; as :func:`refdyn.dfn_backward`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax,
                                      all_finite=backend.all_finite)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C, H, W)")
    return backend.backward("lsdfn", "dfn_backward", geo, grad_output, features, filters,
                            per_channel=per_channel, softmax=softmax)


def lsdfn_sample(backend, features, kernels, samples, gamma, kernel_size, indexing="centred"):
    """LS-DFN's Eq. 2 on the GPU; as :func:`refdyn.lsdfn_sample`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing,
                                  all_finite=backend.all_finite)
    return backend.forward("lsdfn", "sample_forward", geo, features, kernels)


def lsdfn_sample_backward(backend, grad_output, features, kernels, samples, gamma, kernel_size,
                          indexing="centred") -> LSDFNSampleGrads:
    """Both gradients of :func:`lsdfn_sample` on the GPU; as
    :func:`refdyn.lsdfn_sample_backward`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing,
                                  all_finite=backend.all_finite)
    check_grad_output(grad_output, geo.sample_output_shape, geo.dtype, "(N, s*s, C', H, W)")
    return backend.backward("lsdfn", "sample_backward", geo, grad_output, features, kernels)


def lsdfn(backend, features, u, v, sample_attention=None, position_attention=None,
          full_attention=None, *, samples, gamma, kernel_size, residual=True,
          attention="factorized", fuse="sum", indexing="centred", kernel_form="described"):
    """LS-DFN, Eq. 4-7 end to end, on the GPU; as :func:`refdyn.lsdfn`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form, all_finite=backend.all_finite)
    return backend.forward("lsdfn", "forward", geo, *inputs, residual=residual,
                           kernel_form=kernel_form, attention=attention, fuse=fuse)


def lsdfn_backward(backend, grad_output, features, u, v, sample_attention=None,
                   position_attention=None, full_attention=None, *, samples, gamma, kernel_size,
                   residual=True, attention="factorized", fuse="sum", indexing="centred",
                   kernel_form="described") -> LSDFNGrads:
    """Every gradient of :func:`lsdfn` on the GPU; as :func:`refdyn.lsdfn_backward`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form, all_finite=backend.all_finite)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C', H, W)")
    return backend.backward("lsdfn", "backward", geo, grad_output, *inputs, residual=residual,
                            kernel_form=kernel_form, attention=attention, fuse=fuse)
