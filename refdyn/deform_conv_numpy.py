"""Deformable convolution, DCNv1 (Dai et al. 2017, Eq. 2) and DCNv2 (Zhu et al. 2019, Eq. 1).

    y(p0) = sum_{k} w_k * x(p0 + p_k + dp_k) * dm_k          (dm_k = 1 for DCNv1)

x(p) at a fractional point is bilinear sampling (:mod:`refdyn.bilinear_numpy`, Eq. 3-4).  Layout and
semantics are torchvision's ``deform_conv2d`` (docs/conventions.md section 2):

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
For speed it keeps the channels of a pixel contiguous (each bilinear corner is one gathered
row), works in the input dtype, reuses its chunk buffers, and computes the adjoint of sampling
as a gather: the (corner, point) pairs sorted by pixel, each pixel's run summed once
(``refdyn bench`` measures it; docs/performance.md).
"""

from __future__ import annotations

import numpy as np

from .bilinear_numpy import make_stencil, sample_point, sample_point_grad, scatter_point
from .deform_conv_args import DeformConvGeometry, DeformConvGrads, \
    check_deform_conv2d_args, check_deform_conv2d_backward_args

#: Column elements (C_in * kh * kw * output positions) the vectorized version samples per chunk.
#: Documented bound, checked by the tests and reported by ``refdyn bench``: see
#: :func:`extra_memory_bound`.
DEFAULT_CHUNK_ELEMENTS = 1 << 20
MEMORY_BOUND_BUFFERS = 20
#: Bytes allowed for what a call allocates besides arrays: NumPy's internal caches and the
#: Python objects of the call (about 0.1 MiB measured).
MEMORY_BOUND_ALLOWANCE = 1 << 20


def elements_per_position(in_channels: int, offset_groups: int, taps: int) -> int:
    """What one output position adds to a chunk: its sampled columns (C_in K elements) or,
    where few channels share an offset group, its stencils (4 G K neighbours, each with an
    index, a weight and derivatives), whichever is larger."""
    return taps * max(in_channels, 4 * offset_groups)


def extra_memory_bound(input_shape, offset_shape, weight_shape,
                       chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Bytes a vectorized forward or backward call allocates at most besides its results.

    offset.size (the finiteness checks of offset and mask, one byte per element, before
    anything else) + 8 * (C_in H W + 2 weight.size + MEMORY_BOUND_BUFFERS max(chunk_elements,
    E)) + MEMORY_BOUND_ALLOWANCE, E = :func:`elements_per_position`: one image of the batch with
    its channels last, the weight reordered to the columns' order (and, in the backward, its
    gradient in that order), and the per-chunk buffers (the corner rows, the sampled columns,
    the stencils, the column gradient and its scatter), which scale with the chunk (at least one
    output position) and not with the layer: 160 MiB at the default for any layer with
    E <= 2**20.
    """
    _, in_channels, height, width = input_shape
    taps = int(np.prod(weight_shape[2:]))
    offset_groups = int(offset_shape[1]) // (2 * taps)
    per_chunk = max(int(chunk_elements), elements_per_position(in_channels, offset_groups, taps))
    return (int(np.prod(offset_shape)) + MEMORY_BOUND_ALLOWANCE
            + 8 * (in_channels * height * width + 2 * int(np.prod(weight_shape))
                   + MEMORY_BOUND_BUFFERS * per_chunk))


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


class _Buffers:
    """Arrays reused from chunk to chunk, one per name, allocated once per call.

    A fresh multi-megabyte array per chunk costs a page fault per 4 KiB page, since the allocator
    hands large blocks back to the operating system when they are freed: a third of the time of
    a whole call on the benchmark layer.  The first chunk is the largest, so each buffer is
    allocated once; ``get`` returns a view of the requested shape.
    """

    def __init__(self, dtype):
        self.dtype = dtype
        self.arrays = {}

    def get(self, name: str, shape) -> np.ndarray:
        size = int(np.prod(shape))
        array = self.arrays.get(name)
        if array is None or array.size < size:
            array = self.arrays[name] = np.empty(size, dtype=self.dtype)
        return array[:size].reshape(shape)


def _position_chunks(geo: DeformConvGeometry, chunk_elements: int):
    """Slices of one image's flattened output positions, each chunk holding at most
    ``chunk_elements`` elements (:func:`elements_per_position` per position; at least one)."""
    per_position = elements_per_position(geo.in_channels, geo.offset_groups, geo.taps)
    step = max(1, chunk_elements // per_position)
    positions = geo.out_h * geo.out_w
    for start in range(0, positions, step):
        yield slice(start, min(start + step, positions))


def regular_grid(geo: DeformConvGeometry, positions: slice):
    """p0 + p_k (DCNv1 Eq. 2, the grid before offsets) for every tap and the given flattened
    output positions: two arrays (K, L)."""
    a, b = np.divmod(np.arange(geo.taps), geo.kernel_w)
    i, j = np.divmod(np.arange(positions.start, positions.stop), geo.out_w)
    base_y = (i * geo.stride[0] - geo.padding[0])[None, :] + (a * geo.dilation[0])[:, None]
    base_x = (j * geo.stride[1] - geo.padding[1])[None, :] + (b * geo.dilation[1])[:, None]
    return base_y.astype(geo.dtype), base_x.astype(geo.dtype)


def _pixel_rows(geo: DeformConvGeometry, image, buffers):
    """One image (C_in, H, W) as G matrices (H * W, C_in / G): the channels of an offset group
    at a pixel are one contiguous row, so sampling gathers whole rows."""
    groups = image.reshape(geo.offset_groups, geo.in_per_offset_group, geo.height * geo.width)
    rows = buffers.get("pixel_rows", (geo.offset_groups, geo.height * geo.width,
                                      geo.in_per_offset_group))
    rows[...] = groups.transpose(0, 2, 1)
    return rows


class _Chunk:
    """The sampling of one chunk of L output positions of one image, for every offset group.

    Points are ordered (L, K): position-major, tap-minor.  ``stencils[g]`` holds the four
    neighbours q of the points p of offset group g (index and G(q, p), (4, L, K), and with a
    ``coord_grad`` rule, for a backward, the derivatives of G);
    ``corners[g]`` the input rows x(q), (4, L, K, C_in/G); ``modulation`` dm (G, L, K) (ones
    for DCNv1).
    """

    def __init__(self, geo, buffers, pixel_rows, offset, mask, n, positions, coord_grad=None):
        G, K = geo.offset_groups, geo.taps
        offsets = offset[n].reshape(G, K, 2, -1)[..., positions]
        base_y, base_x = regular_grid(geo, positions)
        # p = p0 + p_k + dp_k, (G, L, K)
        points_y = np.ascontiguousarray((base_y + offsets[:, :, 0]).transpose(0, 2, 1))
        points_x = np.ascontiguousarray((base_x + offsets[:, :, 1]).transpose(0, 2, 1))
        self.stencils = [make_stencil(points_y[g], points_x[g], geo.height, geo.width,
                                      geo.boundary, coord_grad or "torchvision",
                                      derivatives=coord_grad is not None) for g in range(G)]
        corners = buffers.get("corners", (G, 4) + points_y.shape[1:] + (geo.in_per_offset_group,))
        # mode="clip" lets np.take write into ``out`` unbuffered; stencil indices are in range
        self.corners = [np.take(pixel_rows[g], s.index, axis=0, out=corners[g], mode="clip")
                        for g, s in enumerate(self.stencils)]
        self.modulation = (np.ones(points_y.shape, dtype=geo.dtype) if mask is None else
                           np.ascontiguousarray(mask[n].reshape(G, K, -1)[..., positions]
                                                .transpose(0, 2, 1)))

    def columns(self, geo, buffers):
        """The sampled, modulated columns x(p) dm = sum_q G(q, p) dm x(q), (L, K, C_in)."""
        L, K = self.modulation.shape[1:]
        columns = buffers.get("columns", (L, K, geo.offset_groups, geo.in_per_offset_group))
        for g, (stencil, dm, corners) in enumerate(
                zip(self.stencils, self.modulation, self.corners)):
            np.einsum("qlk,qlkc->lkc", stencil.weight * dm, corners, out=columns[:, :, g])
        return columns.reshape(L, K, geo.in_channels)


def _grouped_columns(geo: DeformConvGeometry, columns):
    """Columns (L, K, C_in) as one matrix per group, (groups, L, K * C_in/groups)."""
    L = columns.shape[0]
    per_group = columns.reshape(L, geo.taps, geo.groups, geo.in_per_group).transpose(2, 0, 1, 3)
    return per_group.reshape(geo.groups, L, geo.taps * geo.in_per_group)


def _ungrouped_columns(geo: DeformConvGeometry, grouped):
    """The inverse of :func:`_grouped_columns`: (groups, L, K * C_in/groups) -> (L, K, C_in)."""
    L = grouped.shape[1]
    per_group = grouped.reshape(geo.groups, L, geo.taps, geo.in_per_group).transpose(1, 2, 0, 3)
    return per_group.reshape(L, geo.taps, geo.in_channels)


def _weight_rows(geo: DeformConvGeometry, weight):
    """weight as (groups, C_out/groups, K * C_in/groups), columns in the (k, c) order of
    :func:`_grouped_columns`."""
    per_tap = weight.reshape(geo.groups, geo.out_per_group, geo.in_per_group, geo.taps)
    return np.ascontiguousarray(per_tap.transpose(0, 1, 3, 2)).reshape(
        geo.groups, geo.out_per_group, geo.taps * geo.in_per_group)


def _weight_rows_to_weight(geo: DeformConvGeometry, rows):
    """The inverse of :func:`_weight_rows`: (groups, C_out/gr, K C_in/gr) -> the weight's shape."""
    per_tap = rows.reshape(geo.groups, geo.out_per_group, geo.taps, geo.in_per_group)
    return np.ascontiguousarray(per_tap.transpose(0, 1, 3, 2)).reshape(
        geo.out_channels, geo.in_per_group, geo.kernel_h, geo.kernel_w)


def _scatter_columns(grad_image, grad_columns, stencil, dm, buffers):
    """Adjoint of sampling, grad_image[:, q] += sum_p G(q, p) dm(p) grad_columns[:, p], as a gather.

    grad_image (C, H * W) is updated; grad_columns (C, K * L) are the points in (k, l) order;
    ``stencil`` (4, L, K) and ``dm`` (L, K) those of :class:`_Chunk`; ``buffers`` a
    :class:`_Buffers`.  The (corner, point) pairs are sorted by the pixel q they land on and
    each pixel's run of pairs is summed (``np.add.reduceat``), so every pixel is written once
    (``np.add.at`` and ``np.bincount`` per channel measured 4x and 1.5x slower).
    """
    L, K = dm.shape
    pixels = stencil.index.reshape(-1)
    order = np.argsort(pixels)
    sorted_pixels = pixels[order]
    runs = np.flatnonzero(np.diff(sorted_pixels, prepend=-1))        # first pair of each pixel
    l, k = np.divmod(order % (L * K), K)                              # the point of each pair
    weights = (stencil.weight * dm).reshape(-1)[order]                # G(q, p) dm(p)
    pairs = np.take(grad_columns, k * L + l, axis=1, mode="clip",
                    out=buffers.get("pairs", (len(grad_image), pixels.size)))
    pairs *= weights
    sums = np.add.reduceat(pairs, runs, axis=1,
                           out=buffers.get("sums", (len(grad_image), runs.size)))
    grad_image[:, sorted_pixels[runs]] += sums


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, boundary: str = "zeros", chunk_elements: int = DEFAULT_CHUNK_ELEMENTS):
    """Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1 when ``mask`` is given).

    input (N, C_in, H, W); offset (N, 2 G kh kw, H_out, W_out); weight (C_out, C_in/groups, kh, kw);
    bias (C_out,) or None; mask (N, G kh kw, H_out, W_out) or None.
    stride, padding, dilation: int or (h, w).  Groups and offset groups G follow from the shapes.
    boundary: ``"zeros"`` (every framework's deform_conv2d) or ``"border"`` (clamped samples, the
    MXNet Active Convolution port; see :mod:`refdyn.bilinear_numpy`).
    Returns (N, C_out, H_out, W_out) in the input dtype.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary)
    out = np.empty(geo.output_shape, dtype=geo.dtype)
    out_flat = geo.group_matrices(out)                       # (N, groups, C_out/gr, L)
    weight_rows = _weight_rows(geo, weight)
    buffers = _Buffers(geo.dtype)
    for n in range(geo.batch):
        pixel_rows = _pixel_rows(geo, input[n], buffers)
        for positions in _position_chunks(geo, chunk_elements):
            chunk = _Chunk(geo, buffers, pixel_rows, offset, mask, n, positions)
            columns = _grouped_columns(geo, chunk.columns(geo, buffers))  # x dm, (gr, L, K C/gr)
            out_flat[n, :, :, positions] = weight_rows @ columns.transpose(0, 2, 1)  # sum w x dm
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, coord_grad="torchvision", *,
                           boundary: str = "zeros",
                           chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Gradients of a scalar loss L through :func:`deform_conv2d` (DCNv1 Appendix A; DCNv2).

    grad_output: dL/d output, (N, C_out, H_out, W_out).  With the column gradient
    dL/dcol[c, k, p] = sum_o w[o, c, k] grad_output[o, p] (the transposed matrix product) and,
    per corner q of each point, D_q = sum_c dL/dcol[c] x_c(q) (over an offset group's channels):
      grad_input  = scatter of dL/dcol * dm with the bilinear weights G (the adjoint of sampling)
      grad_offset = dm * sum_q dG(q, p)/dp D_q     (= sum_c dL/dcol * dm * d x(p)/d p)
      grad_mask   = sum_q G(q, p) D_q              (= sum_c dL/dcol * x(p))
      grad_weight = sum over n, p of grad_output * x(p) dm;   grad_bias = sum of grad_output
    ``coord_grad`` ("torchvision" or "mmcv") picks the offset-gradient rule at the image edge
    (see :mod:`refdyn.bilinear_numpy`); ``boundary`` is the forward's.  Returns a
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
    weight_rows = _weight_rows(geo, weight)
    weight_mat = geo.weight_matrices(weight)
    grad_weight_rows = np.zeros(weight_rows.shape, dtype=geo.dtype)
    grad_out_flat = geo.group_matrices(grad_output)
    buffers = _Buffers(geo.dtype)
    for n in range(geo.batch):
        pixel_rows = _pixel_rows(geo, input[n], buffers)
        grad_pixels = grad_input[n].reshape(G, Cg, geo.height * geo.width)
        for positions in _position_chunks(geo, chunk_elements):
            chunk = _Chunk(geo, buffers, pixel_rows, offset, mask, n, positions, coord_grad)
            go = grad_out_flat[n, :, :, positions]                      # (groups, C_out/gr, L)
            L = go.shape[-1]
            grad_weight_rows += go @ _grouped_columns(geo, chunk.columns(geo, buffers))
            # dL/dcol twice: (L, K, C_in) beside the corner rows, (C_in, K L) for the scatter
            grad_rows = _ungrouped_columns(geo, np.matmul(
                go.transpose(0, 2, 1), weight_rows,
                out=buffers.get("grad_rows", (geo.groups, L, K * geo.in_per_group))))
            grad_channels = np.matmul(
                weight_mat.transpose(0, 2, 1), go,
                out=buffers.get("grad_channels", (geo.groups, geo.in_per_group * K, L)),
            ).reshape(G, Cg, K * L)
            for g, (stencil, corners, dm) in enumerate(
                    zip(chunk.stencils, chunk.corners, chunk.modulation)):
                products = np.einsum("qlkc,lkc->qlk", corners, grad_rows[..., g * Cg:(g + 1) * Cg])
                if mask is not None:
                    grad_mask[n, g, :, positions] = np.sum(stencil.weight * products, axis=0).T
                grad_offset[n, g, :, 0, positions] = (
                    dm * np.sum(stencil.dweight_dy * products, axis=0)).T
                grad_offset[n, g, :, 1, positions] = (
                    dm * np.sum(stencil.dweight_dx * products, axis=0)).T
                _scatter_columns(grad_pixels[g], grad_channels[g], stencil, dm, buffers)
    grad_weight = _weight_rows_to_weight(geo, grad_weight_rows)
    return DeformConvGrads(
        grad_input=grad_input,
        grad_offset=grad_offset.reshape(offset.shape),
        grad_weight=grad_weight,
        grad_bias=grad_output.sum(axis=(0, 2, 3)).astype(geo.dtype) if bias is not None else None,
        grad_mask=grad_mask.reshape(mask.shape) if mask is not None else None)

