"""Deformable convolution in Numba CUDA kernels (DCNv1 Eq. 2; DCNv2 Eq. 1 with a mask): the
kernels and the launch sequences :func:`forward` and :func:`backward` that
:mod:`refdyn.gpu.deform_conv_ops` runs on the Numba backend (device arrays in, device arrays
out; the checks are done before).

Kernels (one thread per element, grid-stride loops, 64-bit indices):

- forward: im2col, as the CUDA C kernels and torchvision do: the sampled columns
  x_c(p_k) dm_k of a chunk of images, one thread per (n, c, k, i, j), then out = W columns per
  group by a matrix product kernel (each thread a strip of rows of one column, the bias added
  at the end);
- backward (DCNv1 Appendix A, Eq. 7; DCNv2 adds the mask), a chunk of images at a time, from
  the column gradient col[n, c, k, i, j] = sum_{o in group(c)} weight[o, c', k] *
  grad_output[n, o, i, j] (a matrix product): grad_offset and grad_mask per (n, g, k, i, j),
  grad_weight a product per image summed over the images in order, grad_bias per o, all with a
  fixed summation order; grad_input either by ``cuda.atomic.add`` scatter
  (``deterministic=False``, as torchvision does) or by a gather over a per-pixel list of
  contributions sorted by contribution id (``deterministic=True``: integer atomics only,
  bitwise identical results on every run).

Every kernel samples through :func:`_corner` (the neighbours and weights G(q, p) of DCNv1
Eq. 3-4) and differentiates through :func:`_point_neighbours` and :func:`_sample_and_coord_grad`
(Eq. 7; a point's neighbours found once for all its channels), under the call's boundary rule
(``zeros``, or ``border`` when the kernel's ``border`` flag is set) and, for ``zeros``, the
``torchvision`` or ``mmcv`` edge rule of the coordinate gradient (docs/conventions.md sections
1-2).  Every computation stays in the input dtype: constants are made with
``array.dtype.type``, so no float32 value is ever widened.
"""

from __future__ import annotations

import math

import numpy as np

from refdyn.deform_conv_args import DeformConvGrads

from .deform_conv_launch import image_chunks
from .numba_support import _given, _launch, _optional, _split, cuda

#: Pixel counts summed by one thread of the prefix sums of the deterministic grad_input.
_SCAN_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# Device functions shared by every kernel
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _sampling_point(offset, n, gk, i, j, a, b, layer):
    """p = p0 + p_k + dp_k (DCNv1 Eq. 2) for tap (a, b) of offset channel pair gk = g K + k at
    output (i, j), in the offset dtype.  layer: (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)."""
    T = offset.dtype.type
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w = layer
    p_y = T(i * stride_h - pad_h + a * dil_h) + offset[n, 2 * gk, i, j]
    p_x = T(j * stride_w - pad_w + b * dil_w) + offset[n, 2 * gk + 1, i, j]
    return p_y, p_x


@cuda.jit(device=True)
def _modulation(mask, offset, n, gk, i, j):
    """dm_k of DCNv2 Eq. 1; 1 without a mask (DCNv1: ``mask`` is the zero-size stand-in)."""
    if not _given(mask):
        return offset.dtype.type(1)
    return mask[n, gk, i, j]


@cuda.jit(device=True)
def _clamp(image, p_y, p_x):
    """The border rule's clamp of p into [0, H-1] x [0, W-1] of image (edge replicated)."""
    T = image.dtype.type
    return (min(max(p_y, T(0)), T(image.shape[2] - 1)),
            min(max(p_x, T(0)), T(image.shape[3] - 1)))


@cuda.jit(device=True)
def _corner(image, p_y, p_x, corner, border):
    """Neighbour ``corner`` (0..3: (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1)) of p and its
    bilinear weight G(q, p) = g(q_y, p_y) g(q_x, p_x) (DCNv1 Eq. 3-4).

    Returns (y, x, weight) of the pixel q reads.  ``border``: p is clamped into the image first
    and a neighbour beyond the last row or column reads the edge pixel.  Zeros rule: y = -1 when
    q reads nothing, because p is outside (p_y <= -1, p_y >= H, p_x <= -1 or p_x >= W, where the
    sample is 0) or q is outside the image.
    """
    T = image.dtype.type
    height = image.shape[2]
    width = image.shape[3]
    if border:
        p_y, p_x = _clamp(image, p_y, p_x)
    elif p_y <= T(-1) or p_y >= T(height) or p_x <= T(-1) or p_x >= T(width):
        return -1, -1, T(0)
    y0 = int(math.floor(p_y))  # -1 < p < H or clamped: a small integer (GPU floor is a float)
    x0 = int(math.floor(p_x))
    l_y = p_y - T(y0)
    l_x = p_x - T(x0)
    down, right = _split(corner, 2)
    y = y0 + down
    x = x0 + right
    if border:
        y = min(y, height - 1)
        x = min(x, width - 1)
    elif y < 0 or y >= height or x < 0 or x >= width:
        return -1, -1, T(0)
    weight_y = l_y if down else T(1) - l_y
    weight_x = l_x if right else T(1) - l_x
    return y, x, weight_y * weight_x


@cuda.jit(device=True)
def _sample(image, n, c, p_y, p_x, border):
    """x(p) = sum_q G(q, p) x(q) over the 4 neighbours of p in image[n, c] (DCNv1 Eq. 3)."""
    value = image.dtype.type(0)
    for corner in range(4):
        y, x, weight = _corner(image, p_y, p_x, corner, border)
        if y >= 0:
            value += weight * image[n, c, y, x]
    return value


@cuda.jit(device=True)
def _pixel(image, n, c, y, x):
    """image[n, c, y, x], or 0 outside the image (zero padding)."""
    if y < 0 or y >= image.shape[2] or x < 0 or x >= image.shape[3]:
        return image.dtype.type(0)
    return image[n, c, y, x]


@cuda.jit(device=True)
def _point_neighbours(image, p_y, p_x, mmcv, border):
    """What x(p) (DCNv1 Eq. 3) and d x(p)/d p (Appendix A, Eq. 7) need of the point p, the same
    for every channel: (active, y0, x0, y1, x1, l_y, l_x, slope_y, slope_x), the rows and
    columns of the four neighbours, p - floor(p), and the factor of each derivative.

    ``border``: p is clamped first (neighbours beyond the edge read the edge pixel) and the
    factor is the clamp's right derivative, 1 for 0 <= p_y < H - 1 and 0 elsewhere (likewise
    p_x).  Zeros rule: factor 1, except that ``mmcv`` gives 0 wherever the sample is 0
    (p_y <= -1, p_y >= H, p_x <= -1, p_x >= W; torchvision has no early exit, so at p_y = -1
    its formula reads row 0).  ``active`` is False where both x(p) and its derivatives are 0
    (mmcv outside, or every neighbour outside the image), and floor() is then never reached.
    """
    T = image.dtype.type
    zero = T(0)
    height = image.shape[2]
    width = image.shape[3]
    slope_y = T(1)
    slope_x = T(1)
    if border:
        slope_y = T(1) if T(0) <= p_y < T(height - 1) else zero
        slope_x = T(1) if T(0) <= p_x < T(width - 1) else zero
        p_y, p_x = _clamp(image, p_y, p_x)
    elif ((mmcv and (p_y <= T(-1) or p_y >= T(height) or p_x <= T(-1) or p_x >= T(width)))
          or p_y <= T(-2) or p_y >= T(height + 1) or p_x <= T(-2) or p_x >= T(width + 1)):
        return False, 0, 0, 0, 0, zero, zero, zero, zero
    y0 = int(math.floor(p_y))
    x0 = int(math.floor(p_x))
    y1 = y0 + 1
    x1 = x0 + 1
    if border:
        y1 = min(y1, height - 1)
        x1 = min(x1, width - 1)
    return True, y0, x0, y1, x1, p_y - T(y0), p_x - T(x0), slope_y, slope_x


@cuda.jit(device=True)
def _sample_and_coord_grad(image, n, c, neighbours):
    """(x(p), d x(p)/d p_y, d x(p)/d p_x) in image[n, c] from the four neighbours read once
    (``neighbours`` from :func:`_point_neighbours`); right derivatives at integer coordinates:
        d x(p)/d p_y = (1 - l_x)(v10 - v00) + l_x (v11 - v01)
        d x(p)/d p_x = (1 - l_y)(v01 - v00) + l_y (v11 - v10)
    each times its factor.  Outside the sampling region every neighbour is outside the image or
    weighs 0, so x(p) needs no test of its own."""
    active, y0, x0, y1, x1, l_y, l_x, slope_y, slope_x = neighbours
    T = image.dtype.type
    if not active:
        return T(0), T(0), T(0)
    h_y = T(1) - l_y
    h_x = T(1) - l_x
    v00 = _pixel(image, n, c, y0, x0)
    v01 = _pixel(image, n, c, y0, x1)
    v10 = _pixel(image, n, c, y1, x0)
    v11 = _pixel(image, n, c, y1, x1)
    value = h_y * h_x * v00 + h_y * l_x * v01 + l_y * h_x * v10 + l_y * l_x * v11
    return (value, slope_y * (h_x * (v10 - v00) + l_x * (v11 - v01)),
            slope_x * (h_y * (v01 - v00) + l_y * (v11 - v10)))


# ---------------------------------------------------------------------------------------------
# Sampled columns and matrix products: the forward is im2col then out = W columns per group
# (DCNv1 Eq. 2, DCNv2 Eq. 1); the backward's column gradient and grad_weight are products too
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _column_point(index, offset, columns, kernel_w, layer):
    """Element ``index`` of the flat (N, C_in, K, H_out, W_out) ``columns`` and its sampling
    point: (n, c, k, i, j, gk, p_y, p_x), gk = g K + k for the offset group g of channel c."""
    in_channels, taps = columns.shape[1], columns.shape[2]
    rest, j = _split(index, columns.shape[4])
    rest, i = _split(rest, columns.shape[3])
    rest, k = _split(rest, taps)
    n, c = _split(rest, in_channels)
    a, b = _split(k, kernel_w)
    gk = c // (in_channels // (offset.shape[1] // (2 * taps))) * taps + k
    p_y, p_x = _sampling_point(offset, n, gk, i, j, a, b, layer)
    return n, c, k, i, j, gk, p_y, p_x


@cuda.jit(cache=True)
def _columns_kernel(total, input, offset, mask, columns, kernel_w, layer, border):
    """columns[n, c, k, i, j] = x_c(p_k) * dm_k, one thread per element (im2col)."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, k, i, j, gk, p_y, p_x = _column_point(index, offset, columns, kernel_w, layer)
        columns[n, c, k, i, j] = (_sample(input, n, c, p_y, p_x, border)
                                  * _modulation(mask, offset, n, gk, i, j))


#: Rows of the product one thread computes: each element of B it reads serves _ROWS terms, held
#: in registers (no shared memory, so no barrier: the simulator runs it as fast as any kernel).
_ROWS = 8


@cuda.jit(cache=True)
def _matmul_kernel(total, a, b, out, transpose_a, transpose_b, bias):
    """out[n, g] = A[n, g] B[n, g] (+ bias[g rows + r] on row r when a bias is given) with A = a
    or its transpose (``transpose_a``: a[n, g] is (inner, rows)) and B likewise (b[n, g] is
    (cols, inner)); an operand with one image serves every image.  One thread per strip of
    _ROWS rows of one column, the sum over the inner index in increasing order (the same on
    every run), the bias added last."""
    sums = cuda.local.array(_ROWS, out.dtype)
    biased = _given(bias)
    groups, rows, cols = out.shape[1], out.shape[2], out.shape[3]
    strips = -(-rows // _ROWS)
    inner = a.shape[2] if transpose_a else a.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, col = _split(index, cols)
        rest, strip = _split(rest, strips)
        n, g = _split(rest, groups)
        na, nb = min(n, a.shape[0] - 1), min(n, b.shape[0] - 1)
        first = strip * _ROWS
        for r in range(_ROWS):
            sums[r] = out.dtype.type(0)
        for e in range(inner):
            value = b[nb, g, col, e] if transpose_b else b[nb, g, e, col]
            for r in range(_ROWS):
                if first + r < rows:
                    sums[r] += (a[na, g, e, first + r] if transpose_a
                                else a[na, g, first + r, e]) * value
        for r in range(_ROWS):
            if first + r < rows:
                if biased:
                    sums[r] += bias[g * rows + first + r]
                out[n, g, first + r, col] = sums[r]


def _matmul(a, b, out, transpose_a=False, transpose_b=False, bias=None):
    """out = A B (+ bias) per (image, group) with 4-D device arrays, as :func:`_matmul_kernel`
    says."""
    total = out.shape[0] * out.shape[1] * -(-out.shape[2] // _ROWS) * out.shape[3]
    _launch(_matmul_kernel, total, a, b, out, transpose_a, transpose_b,
            _optional(bias, 1, out.dtype))


@cuda.jit(cache=True)
def _sum_images_kernel(total, partial, out):
    """out[g, r, c] = sum_n partial[n, g, r, c], n in increasing order."""
    rows, cols = partial.shape[2], partial.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, c = _split(index, cols)
        g, r = _split(rest, rows)
        acc = partial.dtype.type(0)
        for n in range(partial.shape[0]):
            acc += partial[n, g, r, c]
        out[g, r, c] = acc


# ---------------------------------------------------------------------------------------------
# Backward (DCNv1 Appendix A, Eq. 7; DCNv2 Eq. 1 differentiated with the mask)
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _offset_mask_grad_kernel(total, input, offset, mask, columns, grad_offset, grad_mask,
                             kernel_w, layer, mmcv, border):
    """For each (n, g, k, i, j), summed over the channels c of offset group g:
    grad_offset (dy, dx) = sum col * dm * d x(p)/d p;  grad_mask = sum col * x(p)."""
    T = input.dtype.type
    in_channels = input.shape[1]
    taps = columns.shape[2]
    out_h = columns.shape[3]
    out_w = columns.shape[4]
    offset_groups = offset.shape[1] // (2 * taps)
    in_per_offset_group = in_channels // offset_groups
    modulated = _given(grad_mask)
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, j = _split(index, out_w)
        rest, i = _split(rest, out_h)
        rest, k = _split(rest, taps)
        n, g = _split(rest, offset_groups)
        a, b = _split(k, kernel_w)
        gk = g * taps + k
        p_y, p_x = _sampling_point(offset, n, gk, i, j, a, b, layer)
        m = _modulation(mask, offset, n, gk, i, j)
        neighbours = _point_neighbours(input, p_y, p_x, mmcv, border)   # once for the channels
        grad_y = T(0)
        grad_x = T(0)
        grad_m = T(0)
        for c in range(g * in_per_offset_group, (g + 1) * in_per_offset_group):
            column = columns[n, c, k, i, j]
            value, d_y, d_x = _sample_and_coord_grad(input, n, c, neighbours)
            grad_y += column * m * d_y
            grad_x += column * m * d_x
            if modulated:
                grad_m += column * value
        grad_offset[n, 2 * gk, i, j] = grad_y
        grad_offset[n, 2 * gk + 1, i, j] = grad_x
        if modulated:
            grad_mask[n, gk, i, j] = grad_m


@cuda.jit(cache=True)
def _bias_grad_kernel(total, grad_output, grad_bias):
    """grad_bias[o] = sum_{n, i, j} grad_output[n, o, i, j]."""
    batch, _, out_h, out_w = grad_output.shape
    for o in range(cuda.grid(1), total, cuda.gridsize(1)):
        acc = grad_output.dtype.type(0)
        for n in range(batch):
            for i in range(out_h):
                for j in range(out_w):
                    acc += grad_output[n, o, i, j]
        grad_bias[o] = acc


@cuda.jit(cache=True)
def _fill_zero_kernel(total, flat):
    """flat[:] = 0 (a 1-D array of any dtype)."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        flat[index] = 0


@cuda.jit(cache=True)
def _input_grad_atomic_kernel(total, input, offset, mask, columns, grad_input, kernel_w, layer,
                              border):
    """grad_input[n, c, q] += col * dm * G(q, p) for the 4 neighbours q of each sampling point
    (the adjoint of Eq. 3), scattered with floating-point atomics: the summation order, and so
    the last bits, depend on the thread schedule.  grad_input must start at 0."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, k, i, j, gk, p_y, p_x = _column_point(index, offset, columns, kernel_w, layer)
        grad_sample = columns[n, c, k, i, j] * _modulation(mask, offset, n, gk, i, j)
        for corner in range(4):
            y, x, weight = _corner(input, p_y, p_x, corner, border)
            if y >= 0:
                cuda.atomic.add(grad_input, (n, c, y, x), grad_sample * weight)


# Deterministic grad_input.  Contribution id = ((k * H_out + i) * W_out + j) * 4 + corner names
# one term of the scatter of one offset group; row = n * G + g.  For each row, a CSR list holds,
# per input pixel, the ids of the terms landing there: counted and placed with integer atomics,
# then sorted, so the gather that follows sums every pixel's terms in increasing id order.

@cuda.jit(device=True)
def _contribution(input, offset, index, kernel_w, layer, border, sizes):
    """The term of contribution ``index`` (flat over (n, g, k, i, j, corner); sizes =
    (G, K, H_out, W_out)): (row, flat pixel y * W + x or -1 when it reads nothing, id)."""
    offset_groups, taps, out_h, out_w = sizes
    rest, corner = _split(index, 4)
    rest, j = _split(rest, out_w)
    rest, i = _split(rest, out_h)
    row, k = _split(rest, taps)
    n, g = _split(row, offset_groups)
    a, b = _split(k, kernel_w)
    p_y, p_x = _sampling_point(offset, n, g * taps + k, i, j, a, b, layer)
    y, x, _ = _corner(input, p_y, p_x, corner, border)
    pixel = y * input.shape[3] + x if y >= 0 else -1
    return row, pixel, index - row * (taps * out_h * out_w * 4)


@cuda.jit(cache=True)
def _count_contributions_kernel(total, input, offset, counts, kernel_w, layer, border, sizes):
    """counts[row, pixel] = number of terms landing on each pixel (integer atomics)."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, pixel, _ = _contribution(input, offset, index, kernel_w, layer, border, sizes)
        if pixel >= 0:
            cuda.atomic.add(counts, (row, pixel), 1)


@cuda.jit(cache=True)
def _chunk_totals_kernel(total, counts, totals):
    """totals[row, q] = sum(counts[row, q * _SCAN_CHUNK:(q + 1) * _SCAN_CHUNK])."""
    length = counts.shape[1]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, chunk = _split(index, totals.shape[1])
        acc = 0
        for p in range(chunk * _SCAN_CHUNK, min((chunk + 1) * _SCAN_CHUNK, length)):
            acc += counts[row, p]
        totals[row, chunk] = acc


@cuda.jit(cache=True)
def _row_starts_kernel(total, counts, totals, starts):
    """starts[row, p] = sum(counts[row, :p]) for p = 0..L (exclusive prefix sum): one thread per
    chunk adds up the totals of the chunks before it, then runs through its own chunk."""
    length = counts.shape[1]
    chunks = totals.shape[1]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, chunk = _split(index, chunks)
        running = 0
        for before in range(chunk):
            running += totals[row, before]
        for p in range(chunk * _SCAN_CHUNK, min((chunk + 1) * _SCAN_CHUNK, length)):
            starts[row, p] = running
            running += counts[row, p]
        if chunk == chunks - 1:
            starts[row, length] = running


@cuda.jit(cache=True)
def _place_contributions_kernel(total, input, offset, counts, starts, entries, kernel_w, layer,
                                border, sizes):
    """Writes each term's id into its pixel's list, at a slot taken by counting counts[row,
    pixel] back down to 0 (integer atomics; the slot order is arbitrary until sorted)."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, pixel, contribution = _contribution(input, offset, index, kernel_w, layer, border,
                                                 sizes)
        if pixel >= 0:
            slot = cuda.atomic.add(counts, (row, pixel), -1) - 1
            entries[row, starts[row, pixel] + slot] = contribution


@cuda.jit(device=True)
def _sift_down(ids, root, size):
    """Sift-down of heapsort: ids[:size] is a max-heap (ids[e] >= ids[2e + 1], ids[2e + 2])
    except perhaps at ids[root]; moves that id down, each step to the place of its larger child,
    until neither child is larger.  O(log size) steps."""
    key = ids[root]
    child = 2 * root + 1
    while child < size:
        if child + 1 < size and ids[child + 1] > ids[child]:
            child += 1
        if ids[child] <= key:
            break
        ids[root] = ids[child]
        root = child
        child = 2 * root + 1
    ids[root] = key


@cuda.jit(cache=True)
def _sort_contributions_kernel(total, starts, entries):
    """Sorts each pixel's list of ids in place, one thread per (row, pixel), by heapsort: the
    list is made a max-heap (sift-down from the last parent to the root, O(s)), then s - 1 times
    the largest id left is swapped to the end of the unsorted part and the root sifted down
    again.  O(s log s) for a list of s ids whatever order the atomics placed them in (s reaches
    4 K H_out W_out when every sample lands on one pixel), no scratch memory; the ids of a list
    are distinct, so stability does not matter."""
    pixels = starts.shape[1] - 1
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, pixel = _split(index, pixels)
        ids = entries[row, starts[row, pixel]:starts[row, pixel + 1]]
        size = ids.shape[0]
        for root in range(size // 2 - 1, -1, -1):
            _sift_down(ids, root, size)
        for end in range(size - 1, 0, -1):
            largest = ids[0]
            ids[0] = ids[end]
            ids[end] = largest
            _sift_down(ids, 0, end)


@cuda.jit(cache=True)
def _weigh_contributions_kernel(total, input, offset, mask, starts, entries, weights, kernel_w,
                                layer, border, sizes):
    """weights[row, e] = G(q, p) * dm of each listed term (corner q of sample p), once for all
    the channels of the row's offset group; one thread per (row, pixel).  sizes = (G, K,
    H_out, W_out)."""
    offset_groups, taps, out_h, out_w = sizes
    pixels = starts.shape[1] - 1
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, pixel = _split(index, pixels)
        n, g = _split(row, offset_groups)
        for e in range(starts[row, pixel], starts[row, pixel + 1]):
            rest, corner = _split(entries[row, e], 4)
            rest, j = _split(rest, out_w)
            k, i = _split(rest, out_h)
            a, b = _split(k, kernel_w)
            gk = g * taps + k
            p_y, p_x = _sampling_point(offset, n, gk, i, j, a, b, layer)
            _, _, weight = _corner(input, p_y, p_x, corner, border)
            weights[row, e] = weight * _modulation(mask, offset, n, gk, i, j)


@cuda.jit(cache=True)
def _input_grad_gather_kernel(total, columns, starts, entries, weights, grad_input):
    """grad_input[n, c, y, x] = sum over the sorted list of (n, g(c), pixel) of col * G(q, p) dm,
    in increasing contribution id: no floating-point atomics, the same bits on every run."""
    T = grad_input.dtype.type
    in_channels, height, width = grad_input.shape[1], grad_input.shape[2], grad_input.shape[3]
    out_h, out_w = columns.shape[3], columns.shape[4]
    offset_groups = starts.shape[0] // grad_input.shape[0]
    in_per_offset_group = in_channels // offset_groups
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        n, c = _split(rest, in_channels)
        row = n * offset_groups + c // in_per_offset_group
        pixel = y * width + x
        acc = T(0)
        for e in range(starts[row, pixel], starts[row, pixel + 1]):
            rest = entries[row, e] // 4
            rest, j = _split(rest, out_w)
            k, i = _split(rest, out_h)
            acc += columns[n, c, k, i, j] * weights[row, e]
        grad_input[n, c, y, x] = acc


# ---------------------------------------------------------------------------------------------
# Launch sequences
# ---------------------------------------------------------------------------------------------

def _fill_zero(array):
    """Fill a C-contiguous device array with zeros by a kernel (nothing copied from the host)."""
    total = math.prod(array.shape)
    if total:
        _launch(_fill_zero_kernel, total, array.reshape(total))
    return array


def _layer(geo) -> tuple[int, int, int, int, int, int]:
    return (*geo.stride, *geo.padding, *geo.dilation)


def _border(geo) -> bool:
    """The kernels' ``border`` flag: True for the border rule, False for zeros."""
    return geo.boundary == "border"


def _one_image(matrices):
    """Matrices (groups, rows, cols) as the one image of a 4-D operand of :func:`_matmul`."""
    return matrices.reshape(1, *matrices.shape)


def _sampled_columns(geo, input, offset, mask):
    """columns[n, c, k, i, j] = x_c(p_k) dm_k of the images of ``input`` (a chunk),
    (images, C_in, K, H_out, W_out)."""
    columns = cuda.device_array((input.shape[0], geo.in_channels, geo.taps, geo.out_h, geo.out_w),
                                dtype=geo.dtype)
    _launch(_columns_kernel, math.prod(columns.shape), input, offset, mask, columns,
            geo.kernel_w, _layer(geo), _border(geo))
    return columns


def forward(geo, input, offset, weight, bias, mask, chunk_elements: int):
    """Output of deform_conv2d: per chunk of images (``image_chunks``) the sampled columns,
    then out = W columns per group (a tiled matrix product kernel, the bias added)."""
    out = cuda.device_array(geo.output_shape, dtype=geo.dtype)
    weights = _one_image(geo.weight_matrices(weight))
    mask = _optional(mask, 4, geo.dtype)    # a stand-in slices to a stand-in
    for images in image_chunks(geo, chunk_elements):
        columns = _sampled_columns(geo, input[images], offset[images], mask[images])
        _matmul(weights, geo.group_matrices(columns), geo.group_matrices(out[images]), bias=bias)
    return out


def backward(geo, grad_output, input, offset, weight, mask, coord_grad: str,
             deterministic: bool, chunk_elements: int) -> DeformConvGrads:
    """Every gradient of deform_conv2d (DCNv1 Appendix A, Eq. 7; DCNv2), a chunk of images
    (``image_chunks``) at a time; the module docstring gives the kernels."""
    if geo.batch == 0:   # launch nothing: all zeros; only grad_weight, grad_bias have elements
        def zeros(shape):
            return cuda.to_device(np.zeros(shape, dtype=geo.dtype))
        return DeformConvGrads(grad_input=zeros(input.shape), grad_offset=zeros(offset.shape),
                               grad_weight=zeros(weight.shape),
                               grad_bias=zeros((geo.out_channels,)) if geo.has_bias else None,
                               grad_mask=None if mask is None else zeros(mask.shape))
    modulated = mask is not None
    mask = _optional(mask, 4, geo.dtype)
    dtype = geo.dtype
    weights = _one_image(geo.weight_matrices(weight))
    grad_offset = cuda.device_array(offset.shape, dtype=dtype)
    grad_mask = cuda.device_array(mask.shape, dtype=dtype)  # the stand-in without a mask
    grad_input = cuda.device_array(input.shape, dtype=dtype)
    per_image = cuda.device_array((geo.batch, *weights.shape[1:]), dtype=dtype)
    for images in image_chunks(geo, chunk_elements):
        chunk_input, chunk_offset, chunk_mask = input[images], offset[images], mask[images]
        go = geo.group_matrices(grad_output[images])
        # col[n, c, k, i, j] = sum_{o in group(c)} weight[o, c', k] grad_output[n, o, i, j]
        columns = cuda.device_array((chunk_input.shape[0], geo.in_channels, geo.taps, geo.out_h,
                                     geo.out_w), dtype=dtype)
        _matmul(weights, go, geo.group_matrices(columns), transpose_a=True)
        _launch(_offset_mask_grad_kernel, math.prod(chunk_offset.shape) // 2, chunk_input,
                chunk_offset, chunk_mask, columns, grad_offset[images], grad_mask[images],
                geo.kernel_w, _layer(geo), coord_grad == "mmcv", _border(geo))
        # grad_weight[o, c', k] = sum_n (sum_{i, j} grad_output[n, o, i, j] x_c(p_k) dm_k): a
        # product per image here, the images summed in order below (no atomics)
        _matmul(go, geo.group_matrices(_sampled_columns(geo, chunk_input, chunk_offset,
                                                        chunk_mask)),
                per_image[images], transpose_b=True)
        if deterministic:
            _input_grad_deterministic(geo, chunk_input, chunk_offset, chunk_mask, columns,
                                      grad_input[images])
        else:
            _launch(_input_grad_atomic_kernel, math.prod(columns.shape), chunk_input,
                    chunk_offset, chunk_mask, columns, _fill_zero(grad_input[images]),
                    geo.kernel_w, _layer(geo), _border(geo))
    grad_weight = cuda.device_array(weight.shape, dtype=dtype)
    _launch(_sum_images_kernel, math.prod(weight.shape), per_image,
            geo.weight_matrices(grad_weight))
    grad_bias = None
    if geo.has_bias:
        grad_bias = cuda.device_array((geo.out_channels,), dtype=dtype)
        _launch(_bias_grad_kernel, geo.out_channels, grad_output, grad_bias)
    return DeformConvGrads(grad_input=grad_input, grad_offset=grad_offset,
                           grad_weight=grad_weight, grad_bias=grad_bias,
                           grad_mask=grad_mask if modulated else None)


def _contribution_sizes(geo) -> tuple[int, int, int, int]:
    """(G, K, H_out, W_out): the sizes a contribution id and its row are split with."""
    return geo.offset_groups, geo.taps, geo.out_h, geo.out_w


def _contribution_lists(geo, input, offset):
    """For each row (n, g) of the chunk and input pixel, the ids of the terms of the scatter
    that land there, in increasing order: (starts (rows, H W + 1), entries (rows, K H_out W_out
    4)), CSR style (pixel p of row r lists entries[r, starts[r, p]:starts[r, p + 1]]).  Integer
    atomics only."""
    layer, border = _layer(geo), _border(geo)
    rows = input.shape[0] * geo.offset_groups
    pixels = geo.height * geo.width
    per_row = geo.taps * geo.out_h * geo.out_w * 4
    sizes = _contribution_sizes(geo)
    counts = _fill_zero(cuda.device_array((rows, pixels), dtype=np.int64))
    _launch(_count_contributions_kernel, rows * per_row, input, offset, counts, geo.kernel_w,
            layer, border, sizes)
    chunks = -(-pixels // _SCAN_CHUNK)
    totals = cuda.device_array((rows, chunks), dtype=np.int64)
    _launch(_chunk_totals_kernel, rows * chunks, counts, totals)
    starts = cuda.device_array((rows, pixels + 1), dtype=np.int64)
    _launch(_row_starts_kernel, rows * chunks, counts, totals, starts)
    entries = cuda.device_array((rows, per_row), dtype=np.int64)
    _launch(_place_contributions_kernel, rows * per_row, input, offset, counts, starts, entries,
            geo.kernel_w, layer, border, sizes)
    _launch(_sort_contributions_kernel, rows * pixels, starts, entries)
    return starts, entries


def _input_grad_deterministic(geo, input, offset, mask, columns, grad_input):
    """grad_input of a chunk without floating-point atomics: the sorted lists of terms per
    (n, g, pixel), each term's weight G(q, p) dm, then one gather per (n, c, pixel) that sums
    its list in order."""
    starts, entries = _contribution_lists(geo, input, offset)
    weights = cuda.device_array(entries.shape, dtype=geo.dtype)
    _launch(_weigh_contributions_kernel, entries.shape[0] * (starts.shape[1] - 1), input, offset,
            mask, starts, entries, weights, geo.kernel_w, _layer(geo), _border(geo),
            _contribution_sizes(geo))
    _launch(_input_grad_gather_kernel, math.prod(input.shape), columns, starts, entries, weights,
            grad_input)
