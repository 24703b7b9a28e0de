"""Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1 with a mask) on a GPU backend, written once
for every backend (:mod:`refdyn.gpu.backend`): the NumPy reference's argument checks, then the
backend's launch sequence (``deform_conv_launch`` for CuPy and the host build,
``deform_conv_numba`` for Numba).

Both functions take what :func:`refdyn.deform_conv2d` and :func:`refdyn.deform_conv2d_backward`
take, plus the GPU extras: ``chunk_elements`` bounds the sampled columns held at a time (a chunk
of whole images), and the backward's ``deterministic`` chooses how grad_input is summed.
"""

from __future__ import annotations

from refdyn.deform_conv_args import DeformConvGrads, check_deform_conv2d_args, \
    check_deform_conv2d_backward_args

#: Column elements (C_in K H_out W_out per image) a call holds at a time, in the sampled columns
#: and in the column gradient (each at most 128 MiB in float32, at least one image): a GPU
#: multiplies the columns of many images in one matrix product, as torchvision does.
DEFAULT_CHUNK_ELEMENTS = 1 << 25


def deform_conv2d(backend, input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                  mask=None, *, boundary="zeros", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1) on the GPU: per chunk of images the
    sampled columns x_c(p_k) dm_k (a kernel), then out = W columns, one matrix product per group.

    Same arguments, checks and result as :func:`refdyn.deform_conv2d` (NumPy arrays in, a NumPy
    array out; the backend's device arrays in, a device array out), plus ``chunk_elements``: the
    column elements held at a time (:data:`DEFAULT_CHUNK_ELEMENTS`; at least one image).
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary, all_finite=backend.all_finite)
    return backend.forward("deform_conv", "forward", geo, input, offset, weight, bias, mask,
                           chunk_elements=chunk_elements)


def deform_conv2d_backward(backend, grad_output, input, offset, weight, bias=None, stride=1,
                           padding=0, dilation=1, mask=None, coord_grad="torchvision",
                           deterministic=False, *, boundary="zeros",
                           chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Every gradient of :func:`deform_conv2d` (DCNv1 Appendix A, Eq. 7; DCNv2) on the GPU.

    Same arguments, checks and result as :func:`refdyn.deform_conv2d_backward`, plus
    ``deterministic``: False scatters grad_input with floating-point atomics (as torchvision
    does: the last bits may change from run to run on a device), True gathers it through sorted
    per-pixel lists of contributions (bitwise identical on every run); every other gradient is
    a gather or a matrix product.  ``chunk_elements`` as in :func:`deform_conv2d`.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary, all_finite=backend.all_finite)
    check_deform_conv2d_backward_args(grad_output, geo, coord_grad)
    return backend.backward("deform_conv", "backward", geo, grad_output, input, offset, weight,
                            mask, coord_grad=coord_grad, deterministic=deterministic,
                            chunk_elements=chunk_elements)
