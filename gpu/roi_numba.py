"""The RoI pooling family (docs/conventions.md section 3) in Numba CUDA kernels: the kernels and
the launch sequences :func:`forward` and :func:`backward` that :mod:`refdyn.gpu.roi_ops` runs
on the Numba backend for every RoI operator.

The kernels mirror ``roi.cu`` one for one (its header states the equations, the three
kinds of bins and the backward): every bin averages a separable grid of bilinear samples
(DCNv1 Eq. 3-4), moved by one shift per bin (DCNv1 Eq. 6) and scaled by one modulation scalar
(DCNv2 Eq. 2); grad_input is a gather over the bins that read each pixel, the offset and mask
gradients one thread per (RoI, class, offset cell), so there are no atomics and the results are
the same on every run.  As in the NumPy reference, sampling points and sums are float64 whatever
the arrays' dtype.  The call description is :class:`refdyn.gpu.roi_launch.RoICall`.
"""

from __future__ import annotations

import math

import numpy as np

from refdyn.roi_args import RoIPoolGrads, round_half_away

from . import roi_launch
from .numba_support import _device_function, _given, _launch, _optional, _rounded_product, \
    _split, cuda

# enum RoIKind and enum SampleRule of roi.cu.
_ALIGN, _EQ5, _OFFICIAL = (roi_launch.ROI_KINDS[kind] for kind in ("align", "eq5", "official"))
_ZEROS, _BORDER, _ROI_ALIGN = 0, 1, 2
_round_half_away = _device_function(round_half_away)


# ---------------------------------------------------------------------------------------------
# RoIs, bins and their samples (roi.cu: roi_frame, make_axis, make_bin)
# geo: the RoIGeometry fields (GEOMETRY_FIELDS of roi_launch); scales: (spatial_scale, gamma)
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _roi_frame(rois, r, geo, scales):
    """(n, start_h, start_w, h, w) of RoI r in feature-map pixels, by the rules of its kind."""
    kind, aligned = geo[8], geo[10]
    s = scales[0]
    x1, y1, x2, y2 = float(rois[r, 1]), float(rois[r, 2]), float(rois[r, 3]), float(rois[r, 4])
    if kind == _ALIGN:  # torchvision: -0.5 when aligned, else sizes >= 1
        half = 0.5 if aligned else 0.0
        start_w, start_h = _rounded_product(x1, s) - half, _rounded_product(y1, s) - half
        w, h = _rounded_product(x2, s) - half - start_w, _rounded_product(y2, s) - half - start_h
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
    elif kind == _EQ5:  # p0 = (y1, x1) scale, size (y2 - y1) scale
        start_h, start_w = _rounded_product(y1, s), _rounded_product(x1, s)
        h, w = _rounded_product(y2 - y1, s), _rounded_product(x2 - x1, s)
    else:  # official: C round (halves away from zero), end pixel included, sizes >= 0.1
        start_w = _rounded_product(_round_half_away(x1), s) - 0.5
        start_h = _rounded_product(_round_half_away(y1), s) - 0.5
        w = max(_rounded_product(_round_half_away(x2) + 1.0, s) - 0.5 - start_w, 0.1)
        h = max(_rounded_product(_round_half_away(y2) + 1.0, s) - 0.5 - start_h, 0.1)
    return int(rois[r, 0]), start_h, start_w, h, w


@cuda.jit(device=True)
def _axis(geo, start, size, bins, i):
    """(start, base, bin, count) of the samples of bin i along one axis (roi.cu Axis)."""
    kind = geo[8]
    bin_size = size / bins
    if kind == _ALIGN:  # sampling_ratio, or the adaptive ceil(size / P) (>= 0)
        count = geo[9] if geo[9] > 0 else max(int(math.ceil(size / bins)), 0)
        return start, start + _rounded_product(i, bin_size), bin_size, count
    if kind == _EQ5:  # floor(i size/P) <= p < ceil((i + 1) size/P) (Eq. 5)
        low = float(math.floor(i * size / bins))
        return start, low, bin_size, max(int(float(math.ceil((i + 1) * size / bins)) - low), 0)
    return start, _rounded_product(i, bin_size) + start, bin_size, geo[9]  # official: sample_per_part


@cuda.jit(device=True)
def _at(kind, axis, a):
    """Sample a of an axis, in the reference's order of operations."""
    start, base, bin_size, count = axis
    if kind == _ALIGN:
        return base + _rounded_product(a + 0.5, bin_size) / count
    if kind == _EQ5:
        return start + (base + a)
    return base + _rounded_product(a, bin_size / count)


@cuda.jit(device=True)
def _cell_of(kind, i, bins, cells):
    """The offset cell of bin i: i, or floor(i / P part_size) (official)."""
    if kind != _OFFICIAL:
        return i
    return int(math.floor(i / bins * cells))


@cuda.jit(device=True)
def _group_of(i, bins, groups):
    """The position-sensitive group min(floor(i groups / bins), groups - 1) of bin i."""
    return min(i * groups // bins, groups - 1)


@cuda.jit(device=True)
def _channel_of(geo, o, i, j):
    """The input channel (o G_h + g_i) G_w + g_j bin (i, j) of output channel o reads."""
    return (o * geo[11] + _group_of(i, geo[5], geo[11])) * geo[12] + _group_of(j, geo[6], geo[12])


@cuda.jit(device=True)
def _bin(geo, scales, rois, offset, mask, r, o, i, j):
    """Bin (i, j) of output channel o of RoI r: (n, ys, xs, shift_y, shift_x, dm, channel, rule)."""
    kind = geo[8]
    n, start_h, start_w, h, w = _roi_frame(rois, r, geo, scales)
    ys = _axis(geo, start_h, h, geo[5], i)
    xs = _axis(geo, start_w, w, geo[6], j)
    dm = float(mask[r, 0, i, j]) if _given(mask) else 1.0
    channel, channel_y, channel_x = _channel_of(geo, o, i, j), 1, 0  # mmcv: channel 0 = x
    rule = _ROI_ALIGN
    if kind == _EQ5:
        channel_y, channel_x, rule = 0, 1, _ZEROS  # refdyn's (y, x) order
    elif kind == _OFFICIAL:
        c = o // (geo[7] // geo[13])
        channel_x, channel_y, rule = 2 * c, 2 * c + 1, _BORDER
    shift_y = shift_x = 0.0
    if _given(offset):  # dp = gamma dp^ o (h, w) (DCNv1 Eq. 6)
        cell_i, cell_j = _cell_of(kind, i, geo[5], geo[14]), _cell_of(kind, j, geo[6], geo[15])
        shift_y = _rounded_product(offset[r, channel_y, cell_i, cell_j], scales[1] * h)
        shift_x = _rounded_product(offset[r, channel_x, cell_i, cell_j], scales[1] * w)
    return n, ys, xs, shift_y, shift_x, dm, channel, rule


@cuda.jit(device=True)
def _counted(rule, v, extent):
    """Whether a sample coordinate counts: the official rule skips v < -0.5, v > extent - 0.5."""
    return rule != _BORDER or (v >= -0.5 and v <= extent - 0.5)


# ---------------------------------------------------------------------------------------------
# Bilinear sampling along one axis (docs/conventions.md section 1), in float64
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _axis_stencil(rule, v, extent):
    """(inside, low, high, frac, slope, unclamped) of one coordinate (roi.cu AxisStencil)."""
    unclamped = v
    last = extent - 1.0
    inside = rule != _ROI_ALIGN or (v >= -1.0 and v <= extent)
    slope = 1.0
    if rule == _ZEROS:  # far points read zeros only; keeps floor() in range
        v = min(max(v, -2.0), extent + 1.0)
    else:  # clamp into [0, extent - 1]; slope 1 on [0, extent - 1), else 0
        slope = 1.0 if v >= 0.0 and v < last else 0.0
        v = min(max(v, 0.0), last)
    low = int(math.floor(v))
    high = low + 1 if rule == _ZEROS else min(low + 1, extent - 1)
    return inside, low, high, v - low, slope, unclamped


@cuda.jit(device=True)
def _axis_weight(rule, v, q, extent):
    """The factor of G the coordinate v puts on integer coordinate q (both neighbours may be q)."""
    inside, low, high, frac, _, _ = _axis_stencil(rule, v, extent)
    if not inside:
        return 0.0
    return (1.0 - frac if low == q else 0.0) + (frac if high == q else 0.0)


@cuda.jit(device=True)
def _pixel(input, n, ch, qy, qx):
    """x(q), 0 outside the image (the zeros rule's padding)."""
    if qy < 0 or qy >= input.shape[2] or qx < 0 or qx >= input.shape[3]:
        return 0.0
    return float(input[n, ch, qy, qx])


@cuda.jit(device=True)
def _bilinear(rule, mmcv_grad, input, n, ch, y, x):
    """(x(p), d x/d p_y, d x/d p_x) (DCNv1 Eq. 3, Appendix A Eq. 7, right derivatives; with
    mmcv_grad mmcv DeformRoIPool's derivatives, roi.cu bilinear)."""
    in_y, y0, y1, ly, slope_y, raw_y = _axis_stencil(rule, y, input.shape[2])
    in_x, x0, x1, lx, slope_x, raw_x = _axis_stencil(rule, x, input.shape[3])
    if not (in_y and in_x):
        return 0.0, 0.0, 0.0
    v00, v01 = _pixel(input, n, ch, y0, x0), _pixel(input, n, ch, y0, x1)
    v10, v11 = _pixel(input, n, ch, y1, x0), _pixel(input, n, ch, y1, x1)
    value = ((1.0 - ly) * (1.0 - lx) * v00 + (1.0 - ly) * lx * v01 + ly * (1.0 - lx) * v10
             + ly * lx * v11)
    if mmcv_grad:
        return (value, (x1 - raw_x) * (v10 - v00) + (raw_x - x0) * (v11 - v01),
                (y1 - raw_y) * (v01 - v00) + (raw_y - y0) * (v11 - v10))
    return (value, slope_y * ((1.0 - lx) * (v10 - v00) + lx * (v11 - v01)),
            slope_x * ((1.0 - ly) * (v01 - v00) + ly * (v11 - v10)))


@cuda.jit(device=True)
def _bin_sums(geo, input, bin):
    """Sums of x(p), d x/d p_y, d x/d p_x over the counted samples of a bin, and their count."""
    n, ys, xs, shift_y, shift_x, _, channel, rule = bin
    kind = geo[8]
    value = d_y = d_x = 0.0
    count = 0
    for a in range(ys[3]):
        y = _at(kind, ys, a) + shift_y
        if not _counted(rule, y, geo[2]):
            continue
        for b in range(xs[3]):
            x = _at(kind, xs, b) + shift_x
            if not _counted(rule, x, geo[3]):
                continue
            v, g_y, g_x = _bilinear(rule, geo[16] != 0, input, n, channel, y, x)
            value += v
            d_y += g_y
            d_x += g_x
            count += 1
    return value, d_y, d_x, count


# ---------------------------------------------------------------------------------------------
# Kernels (roi.cu: forward, grad_input, grad_offset_mask)
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _forward_kernel(total, input, rois, offset, mask, output, geo, scales):
    """y[r, o, i, j] = dm sum x(p) / max(count, 1), one thread per output element."""
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, j = _split(index, geo[6])
        rest, i = _split(rest, geo[5])
        r, o = _split(rest, geo[7])
        bin = _bin(geo, scales, rois, offset, mask, r, o, i, j)
        value, _, _, count = _bin_sums(geo, input, bin)
        output[r, o, i, j] = bin[5] * (value / max(count, 1))


@cuda.jit(cache=True)
def _grad_input_kernel(total, rois, offset, mask, grad_output, grad_input, geo, scales):
    """dL/d x[n, ch, q]: go dm / count (sum_a w(q_y, y_a)) (sum_b w(q_x, x_b)) over every bin of
    every RoI of image n reading channel ch, one thread per input element, in a fixed order."""
    kind = geo[8]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, qx = _split(index, geo[3])
        rest, qy = _split(rest, geo[2])
        n, ch = _split(rest, geo[1])
        o = ch // (geo[11] * geo[12])  # the output channel whose bins read ch
        total_grad = 0.0
        for r in range(geo[4]):
            if int(rois[r, 0]) != n:
                continue
            for i in range(geo[5]):
                for j in range(geo[6]):
                    bin = _bin(geo, scales, rois, offset, mask, r, o, i, j)
                    _, ys, xs, shift_y, shift_x, dm, channel, rule = bin
                    if channel != ch:
                        continue
                    weight_y = weight_x = 0.0
                    count_y = count_x = 0
                    for a in range(ys[3]):
                        y = _at(kind, ys, a) + shift_y
                        if _counted(rule, y, geo[2]):
                            weight_y += _axis_weight(rule, y, qy, geo[2])
                            count_y += 1
                    for b in range(xs[3]):
                        x = _at(kind, xs, b) + shift_x
                        if _counted(rule, x, geo[3]):
                            weight_x += _axis_weight(rule, x, qx, geo[3])
                            count_x += 1
                    if count_y * count_x == 0:  # an empty bin pools to 0
                        continue
                    total_grad += (float(grad_output[r, o, i, j]) * dm / (count_y * count_x)
                                   * weight_y * weight_x)
        grad_input[n, ch, qy, qx] = total_grad


@cuda.jit(cache=True)
def _grad_offset_mask_kernel(total, input, rois, offset, mask, grad_output, grad_offset,
                             grad_mask, geo, scales):
    """dL/d offset (dL/d shift o gamma (h, w)) and dL/d dm, one thread per (r, class, cell):
    the cell's bins and the class's output channels in increasing order."""
    kind, per_class = geo[8], geo[7] // geo[13]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, cell_j = _split(index, geo[15])
        rest, cell_i = _split(rest, geo[14])
        r, c = _split(rest, geo[13])
        shift_y = shift_x = dm_grad = 0.0
        for o in range(c * per_class, (c + 1) * per_class):
            for i in range(geo[5]):
                if _cell_of(kind, i, geo[5], geo[14]) != cell_i:
                    continue
                for j in range(geo[6]):
                    if _cell_of(kind, j, geo[6], geo[15]) != cell_j:
                        continue
                    bin = _bin(geo, scales, rois, offset, mask, r, o, i, j)
                    value, d_y, d_x, count = _bin_sums(geo, input, bin)
                    go = float(grad_output[r, o, i, j]) / max(count, 1)
                    shift_y += go * bin[5] * d_y
                    shift_x += go * bin[5] * d_x
                    dm_grad += go * value
        if _given(grad_offset):  # d shift / d offset = gamma (h, w), shared by the cell
            _, _, _, h, w = _roi_frame(rois, r, geo, scales)
            channel_y = 0 if kind == _EQ5 else 1  # x first except for Eq. 6
            grad_offset[r, 2 * c + channel_y, cell_i, cell_j] = shift_y * scales[1] * h
            grad_offset[r, 2 * c + 1 - channel_y, cell_i, cell_j] = shift_x * scales[1] * w
        if _given(grad_mask):
            grad_mask[r, 0, cell_i, cell_j] = dm_grad


# ---------------------------------------------------------------------------------------------
# Launch sequences (device arrays in and out; the checks are done before)
# ---------------------------------------------------------------------------------------------

def _shift_and_modulation(call, offset, mask):
    """The kernels' offset and mask arguments: the arrays, or the zero-size stand-ins of
    :func:`_optional` where there is none (no offset, or ``no_trans``; no mask)."""
    return (_optional(None if call.no_trans else offset, 4, call.geo.dtype),
            _optional(mask, 4, call.geo.dtype))


def forward(call, input, rois, offset, mask):
    """The pooled bins (R, C_out, P_h, P_w): one thread per output element."""
    geo = call.geo
    out = cuda.device_array((geo.rois, call.out_channels) + geo.pooled, dtype=geo.dtype)
    if out.size:
        _launch(_forward_kernel, out.size, input, rois, *_shift_and_modulation(call, offset, mask),
                out, call.geometry_values(), call.scales())
    return out


def backward(call, grad_output, input, rois, offset, mask) -> RoIPoolGrads:
    """Every gradient: grad_input by one gather thread per input element, the offset and mask
    gradients by one thread per (RoI, class, offset cell)."""
    geo = call.geo
    grads = RoIPoolGrads(
        grad_input=cuda.to_device(np.zeros(input.shape, dtype=geo.dtype)),
        grad_offset=None if offset is None else cuda.to_device(np.zeros(offset.shape, geo.dtype)),
        grad_mask=None if mask is None else cuda.to_device(np.zeros(mask.shape, geo.dtype)))
    if geo.rois == 0 or input.size == 0:
        return grads
    moving, modulation = _shift_and_modulation(call, offset, mask)
    values, scales = call.geometry_values(), call.scales()
    _launch(_grad_input_kernel, input.size, rois, moving, modulation, grad_output,
            grads.grad_input, values, scales)
    shifted = moving.size > 0   # an offset that moves the bins (given, and not no_trans)
    if shifted or mask is not None:
        cells = call.offset_cells
        _launch(_grad_offset_mask_kernel, geo.rois * call.classes * cells[0] * cells[1], input,
                rois, moving, modulation, grad_output, grads.grad_offset if shifted else moving,
                _optional(grads.grad_mask, 4, geo.dtype), values, scales)
    return grads
