"""Deformable convolution, DCNv1 (Dai et al. 2017, Eq. 2) and DCNv2 (Zhu et al. 2019, Eq. 1).

    y(p0) = sum_{k} w_k * x(p0 + p_k + dp_k) * dm_k          (dm_k = 1 for DCNv1)

x(p) at a fractional point is bilinear sampling (:mod:`refdyn.bilinear`, Eq. 3-4).  Layout and
semantics are torchvision's ``deform_conv2d`` (REFERENCE.md section 2):

    input  (N, C_in, H, W)            offset (N, 2 G kh kw, H_out, W_out), (dy, dx) per tap
    weight (C_out, C_in/groups, kh, kw)  mask (N, G kh kw, H_out, W_out)
    bias   (C_out,)                   output (N, C_out, H_out, W_out)

For output (n, o, i, j) and tap (a, b), k = a kw + b, input channel c in offset group g:

    p_y = i stride_h - pad_h + a dil_h + offset[n, g*2K + 2k, i, j]          (K = kh kw)
    p_x = j stride_w - pad_w + b dil_w + offset[n, g*2K + 2k + 1, i, j]

Two implementations that agree to rounding: ``*_literal`` loops over every index exactly as
the equations are written (tiny inputs only), and the vectorized default, which builds the
sampled columns of a bounded number of output positions at a time and multiplies them with
the weight (im2col), so its extra memory stays below a fixed bound whatever the layer size.
"""

from __future__ import annotations

import numpy as np

from .bilinear import coord_grads_with, gather_corners, interpolate, make_stencil, \
    sample_point, sample_point_grad, scatter_add, scatter_point
from .deform_conv_args import DeformConvGeometry, DeformConvGrads, \
    check_deform_conv2d_args, check_deform_conv2d_backward_args

#: Column elements (C_in * kh * kw * output positions) the vectorized version samples per chunk.
#: Documented bound, checked by the tests: besides its results (the output, or the gradients
#: plus one float64 image gradient of an offset group), a call allocates at most
#: MEMORY_BOUND_BUFFERS * max(chunk_elements, C_in * kh * kw) * 8 bytes at any time (a chunk
#: holds at least one output position), 64 MiB at the default for any layer with
#: C_in * kh * kw <= 2**18 (the sampled columns, their corners, the stencils, the column gradient).
DEFAULT_CHUNK_ELEMENTS = 1 << 18
MEMORY_BOUND_BUFFERS = 32

# ---------------------------------------------------------------------------------------------
# Literal version: DCNv1 Eq. 2 and Appendix A written as loops
# ---------------------------------------------------------------------------------------------


def _sampling_point(geo: DeformConvGeometry, offset, n, g, a, b, i, j):
    """p = p0 + p_k + dp_k for output (i, j) and tap (a, b) in offset group g (Eq. 2)."""
    k = a * geo.kernel_w + b
    base = g * 2 * geo.taps
    p_y = i * geo.stride[0] - geo.padding[0] + a * geo.dilation[0] + offset[n, base + 2 * k, i, j]
    p_x = j * geo.stride[1] - geo.padding[1] + b * geo.dilation[1] + offset[n, base + 2 * k + 1, i, j]
    return p_y, p_x


def _modulation(geo: DeformConvGeometry, mask, n, g, a, b, i, j):
    """dm_k of DCNv2 Eq. 1 (1 for DCNv1)."""
    if mask is None:
        return 1.0
    return mask[n, g * geo.taps + a * geo.kernel_w + b, i, j]


def _contributions(geo: DeformConvGeometry, offset, mask):
    """Every (n, o, i, j, c, c_local, a, b, g, p_y, p_x, dm) term of the sum in Eq. 2."""
    dtype = geo.dtype.type
    for n in range(geo.batch):
        for o in range(geo.out_channels):
            group = o // geo.out_per_group
            for i in range(geo.out_h):
                for j in range(geo.out_w):
                    for c_local in range(geo.in_per_group):
                        c = group * geo.in_per_group + c_local
                        g = c // geo.in_per_offset_group
                        for a in range(geo.kernel_h):
                            for b in range(geo.kernel_w):
                                p_y, p_x = _sampling_point(geo, offset, n, g, a, b, i, j)
                                m = _modulation(geo, mask, n, g, a, b, i, j)
                                yield n, o, i, j, c, c_local, a, b, g, dtype(p_y), dtype(p_x), m


def deform_conv2d_literal(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                          mask=None, *, boundary="zeros"):
    """Deformable convolution by the loops of DCNv1 Eq. 2 / DCNv2 Eq. 1 (tiny inputs only).

    Same arguments, shapes and result as :func:`deform_conv2d`.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary)
    out = np.zeros(geo.output_shape, dtype=np.float64)
    for n, o, i, j, c, c_local, a, b, g, p_y, p_x, m in _contributions(geo, offset, mask):
        x_p = sample_point(input[n, c], p_y, p_x, boundary)           # x(p0 + p_k + dp_k), Eq. 3
        out[n, o, i, j] += weight[o, c_local, a, b] * x_p * m         # w_k x(.) dm_k, Eq. 2
    if bias is not None:
        out += bias[None, :, None, None]
    return out.astype(geo.dtype)


def deform_conv2d_backward_literal(grad_output, input, offset, weight, bias=None, stride=1,
                                   padding=0, dilation=1, mask=None, coord_grad="torchvision", *,
                                   boundary="zeros"):
    """Every gradient of Eq. 2 by loops over its terms (DCNv1 Appendix A, Eq. 7; DCNv2).

    For each term t = w * x(p) * dm of output y(n, o, i, j) with incoming gradient go:
      dL/dw        += go * x(p) * dm
      dL/d dm      += go * w * x(p)
      dL/d dp      += go * w * dm * d x(p)/d p                    (Eq. 7, right derivative at kinks)
      dL/d x(q)    += go * w * dm * G(q, p)  for the 4 neighbours q of p   (x(p) is linear in x)
    Same arguments and result as :func:`deform_conv2d_backward`.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary)
    check_deform_conv2d_backward_args(grad_output, geo, coord_grad)
    grad_input = np.zeros(input.shape)
    grad_offset = np.zeros(offset.shape)
    grad_weight = np.zeros(weight.shape)
    grad_mask = np.zeros(mask.shape) if mask is not None else None
    for n, o, i, j, c, c_local, a, b, g, p_y, p_x, m in _contributions(geo, offset, mask):
        go = grad_output[n, o, i, j]
        w = weight[o, c_local, a, b]
        k = a * geo.kernel_w + b
        x_p = sample_point(input[n, c], p_y, p_x, boundary)
        dx_dpy, dx_dpx = sample_point_grad(input[n, c], p_y, p_x, boundary, coord_grad)
        grad_weight[o, c_local, a, b] += go * x_p * m
        if mask is not None:
            grad_mask[n, g * geo.taps + k, i, j] += go * w * x_p
        grad_offset[n, g * 2 * geo.taps + 2 * k, i, j] += go * w * m * dx_dpy
        grad_offset[n, g * 2 * geo.taps + 2 * k + 1, i, j] += go * w * m * dx_dpx
        scatter_point(grad_input[n, c], p_y, p_x, go * w * m, boundary)  # G(q, p) to each q
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if bias is not None else None
    return _grads_in_dtype(geo, grad_input, grad_offset, grad_weight, grad_bias, grad_mask)


def _grads_in_dtype(geo, grad_input, grad_offset, grad_weight, grad_bias, grad_mask):
    """Pack the gradients, each cast to the input dtype."""
    def cast(array):
        return None if array is None else np.asarray(array).astype(geo.dtype, copy=False)
    return DeformConvGrads(grad_input=cast(grad_input), grad_offset=cast(grad_offset),
                           grad_weight=cast(grad_weight), grad_bias=cast(grad_bias),
                           grad_mask=cast(grad_mask))


# ---------------------------------------------------------------------------------------------
# Vectorized version: chunks of output positions, im2col and a matrix product per group
# ---------------------------------------------------------------------------------------------


def _position_chunks(geo: DeformConvGeometry, chunk_elements: int):
    """Yield (n, positions) slices of the flattened output positions, each chunk holding at most
    ``chunk_elements`` column elements (C_in * K * positions; at least one position)."""
    per_position = geo.in_channels * geo.taps
    step = max(1, chunk_elements // per_position)
    positions = geo.out_h * geo.out_w
    for n in range(geo.batch):
        for start in range(0, positions, step):
            yield n, slice(start, min(start + step, positions))


def _base_grid(geo: DeformConvGeometry, positions: slice):
    """p0 + p_k for every tap and the chunk's flattened output positions: two arrays (K, L)."""
    a, b = np.divmod(np.arange(geo.taps), geo.kernel_w)
    i, j = np.divmod(np.arange(positions.start, positions.stop), geo.out_w)
    base_y = (i * geo.stride[0] - geo.padding[0])[None, :] + (a * geo.dilation[0])[:, None]
    base_x = (j * geo.stride[1] - geo.padding[1])[None, :] + (b * geo.dilation[1])[:, None]
    return base_y.astype(geo.dtype), base_x.astype(geo.dtype)


class _Chunk:
    """The sampling of one chunk of output positions of one image, for every offset group.

    ``stencils[g]`` holds the neighbours of the (K, L) points of offset group g; ``corners[g]``
    the input values at them, (C_in/G, 4, K, L); ``values`` the sampled columns x(p), (C_in, K, L);
    ``modulation`` dm (G, K, L) (ones for DCNv1).
    """

    def __init__(self, geo, input, offset, mask, n, positions, coord_grad="torchvision"):
        G, K = geo.offset_groups, geo.taps
        offsets = offset[n].reshape(G, K, 2, -1)[..., positions]
        base_y, base_x = _base_grid(geo, positions)
        self.stencils = [
            make_stencil(base_y + offsets[g, :, 0], base_x + offsets[g, :, 1],
                         geo.height, geo.width, geo.boundary, coord_grad)
            for g in range(G)]
        channel_groups = input[n].reshape(G, geo.in_per_offset_group, geo.height, geo.width)
        self.corners = [gather_corners(channel_groups[g], s) for g, s in enumerate(self.stencils)]
        self.values = np.concatenate(
            [interpolate(c, s, lead_ndim=1) for c, s in zip(self.corners, self.stencils)])
        self.modulation = (np.ones((G, K, self.values.shape[-1]), dtype=geo.dtype) if mask is None
                           else mask[n].reshape(G, K, -1)[..., positions])

    def modulate(self, geo, columns):
        """columns (C_in, K, L) times dm of each channel's offset group."""
        per_group = columns.reshape(geo.offset_groups, geo.in_per_offset_group, geo.taps, -1)
        return (per_group * self.modulation[:, None]).reshape(columns.shape)


def _grouped_weight(geo: DeformConvGeometry, weight):
    """weight as (groups, C_out/groups, C_in/groups * K), the matrix of each group."""
    return weight.reshape(geo.groups, geo.out_per_group, geo.in_per_group * geo.taps)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, boundary: str = "zeros", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1 when ``mask`` is given).

    input (N, C_in, H, W); offset (N, 2 G kh kw, H_out, W_out); weight (C_out, C_in/groups, kh, kw);
    bias (C_out,) or None; mask (N, G kh kw, H_out, W_out) or None.
    stride, padding, dilation: int or (h, w).  Groups and offset groups G follow from the shapes.
    boundary: ``"zeros"`` (every framework's deform_conv2d) or ``"border"`` (clamped samples, the
    MXNet Active Convolution port; see :mod:`refdyn.bilinear`).
    Returns (N, C_out, H_out, W_out) in the input dtype.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary)
    out = np.empty(geo.output_shape, dtype=geo.dtype)
    out_flat = out.reshape(geo.batch, geo.groups, geo.out_per_group, geo.out_h * geo.out_w)
    weight_mat = _grouped_weight(geo, weight)
    for n, positions in _position_chunks(geo, chunk_elements):
        chunk = _Chunk(geo, input, offset, mask, n, positions)
        columns = chunk.modulate(geo, chunk.values)                    # x(p) dm, (C_in, K, L)
        columns = columns.reshape(geo.groups, geo.in_per_group * geo.taps, -1)
        out_flat[n, :, :, positions] = weight_mat @ columns            # sum_k w_k x(p) dm_k
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, coord_grad="torchvision", *,
                           boundary: str = "zeros",
                           chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Gradients of a scalar loss L through :func:`deform_conv2d` (DCNv1 Appendix A; DCNv2).

    grad_output: dL/d output, (N, C_out, H_out, W_out).  With the column gradient
    dL/dcol[c, k, p] = sum_o w[o, c, k] grad_output[o, p] (the transposed matrix product):
      grad_input  = scatter of dL/dcol * dm with the bilinear weights G (the adjoint of sampling)
      grad_offset = sum over the channels of an offset group of dL/dcol * dm * d x(p)/d p
      grad_mask   = sum over the channels of an offset group of dL/dcol * x(p)
      grad_weight = sum over n, p of grad_output * x(p) dm;   grad_bias = sum of grad_output
    ``coord_grad`` ("torchvision" or "mmcv") picks the offset-gradient rule at the image edge
    (see :mod:`refdyn.bilinear`); ``boundary`` is the forward's.  Returns a
    :class:`DeformConvGrads` in the input dtype.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary)
    check_deform_conv2d_backward_args(grad_output, geo, coord_grad)
    G, K, Cg = geo.offset_groups, geo.taps, geo.in_per_offset_group
    grad_input = np.zeros(input.shape, dtype=geo.dtype)
    grad_offset = np.zeros((geo.batch, G, K, 2, geo.out_h * geo.out_w), dtype=geo.dtype)
    grad_mask = (np.zeros((geo.batch, G, K, geo.out_h * geo.out_w), dtype=geo.dtype)
                 if mask is not None else None)
    grad_weight_mat = np.zeros(_grouped_weight(geo, weight).shape, dtype=geo.dtype)
    weight_mat = _grouped_weight(geo, weight)
    grad_out_flat = grad_output.reshape(geo.batch, geo.groups, geo.out_per_group,
                                        geo.out_h * geo.out_w)
    for n, positions in _position_chunks(geo, chunk_elements):
        chunk = _Chunk(geo, input, offset, mask, n, positions, coord_grad)
        go = grad_out_flat[n, :, :, positions]                          # (groups, C_out/gr, L)
        columns = chunk.modulate(geo, chunk.values).reshape(geo.groups, -1, go.shape[-1])
        grad_weight_mat += go @ columns.transpose(0, 2, 1)
        grad_columns = (weight_mat.transpose(0, 2, 1) @ go).reshape(chunk.values.shape)
        if mask is not None:
            grad_mask[n, :, :, positions] = np.sum(
                (grad_columns * chunk.values).reshape(G, Cg, K, -1), axis=1)
        grad_sampled = chunk.modulate(geo, grad_columns).reshape(G, Cg, K, -1)
        for g, (stencil, corners) in enumerate(zip(chunk.stencils, chunk.corners)):
            dx_dpy, dx_dpx = coord_grads_with(corners, stencil, lead_ndim=1)
            grad_offset[n, g, :, 0, positions] = np.sum(grad_sampled[g] * dx_dpy, axis=0)
            grad_offset[n, g, :, 1, positions] = np.sum(grad_sampled[g] * dx_dpx, axis=0)
            scatter_add(grad_input[n, g * Cg:(g + 1) * Cg], grad_sampled[g], stencil)
    return DeformConvGrads(
        grad_input=grad_input,
        grad_offset=grad_offset.reshape(offset.shape),
        grad_weight=grad_weight_mat.reshape(weight.shape),
        grad_bias=grad_output.sum(axis=(0, 2, 3)).astype(geo.dtype) if bias is not None else None,
        grad_mask=grad_mask.reshape(mask.shape) if mask is not None else None)
