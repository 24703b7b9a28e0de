"""RoIAlign and PS RoIAlign (torchvision), and the deformable and modulated RoI pooling built on
RoIAlign (mmcv).

``roi_align`` follows torchvision's ``roi_align`` (docs/conventions.md section 3).  In feature-map
pixels a RoI starts at (y1, x1) * spatial_scale - o, o = 0.5 when ``aligned`` else 0, and has
size h = (y2 - y1) * spatial_scale (likewise w), clamped to >= 1 when not aligned.  Bin (i, j)
averages a grid of g_h x g_w samples, g_h = sampling_ratio if > 0 else ceil(h / P_h) (the
adaptive rule; a RoI of size 0 then has no samples and pools to 0):

    y(i, j) = sum_{a < g_h, b < g_w} x(y_start + i h/P_h + (a + 1/2) h/(P_h g_h),
                                       x_start + j w/P_w + (b + 1/2) w/(P_w g_w)) / max(g_h g_w, 1)

with the ``roi_align`` sampling rule of :mod:`refdyn.bilinear_numpy` (0 beyond one pixel outside the
image, clamped into it otherwise).

``ps_roi_align`` is torchvision's position-sensitive RoIAlign (R-FCN's PS pooling on this grid):
always half-pixel aligned with no size clamp (as ``aligned=True``), and bin (i, j) of output
channel c reads its own input channel (c P_h + i) P_w + j of an input with C = C_out P_h P_w
channels:

    y(c, i, j) = sum_{a, b} x_{(c P_h + i) P_w + j}(p_ijab) / max(g_h g_w, 1)

(torchvision divides by g_h g_w unclamped, so a RoI of zero size with the adaptive grid gives
0 / 0 = NaN there; refdyn pools it to 0, as ``roi_align``).

``deform_roi_align`` is mmcv's ``DeformRoIPool`` (DCNv1 Eq. 6 on this grid): always half-pixel
aligned, no size clamp, and bin (i, j) moved by (gamma w dx^_ij, gamma h dy^_ij) with offsets
(R, 2, P_h, P_w) whose **channel 0 is x and channel 1 is y** (the reverse of ``deform_conv2d``).
With a mask (R, 1, P_h, P_w) it is DCNv2's modulated deformable RoI pooling (Eq. 2, mmcv's
``ModulatedDeformRoIPoolPack``): y(k) = dm_k sum_j x(p_kj + dp_k) / n_k, one scalar per bin
broadcast over channels (the sigmoid is applied outside the op).  Its backward takes
``coord_grad``: ``"torchvision"`` (default) is the right derivative of the forward, 0 along an
axis where a sample is clamped; ``"mmcv"`` is mmcv's DeformRoIPool backward, which
differentiates the bilinear weights at the unclamped sample (:mod:`refdyn.bilinear_numpy`), so a
sample with -1 <= y < 0 gets the slope between rows 0 and 1 instead of 0.

RoIs get no gradient.  ``*_literal`` loops over RoIs, channels, bins and samples; the vectorized
default loops over RoIs and samples every bin and channel of a RoI at once (see
:class:`refdyn.roi_pool_numpy.BinAverages`).
"""

from __future__ import annotations

import numpy as np

from .bilinear_numpy import check_coord_grad, sample_point, sample_point_grad, scatter_point
from .roi_pool_numpy import BinAverages, BinGrid, averaging_weight, _grads_in_dtype
from .roi_args import RoIPoolGrads, align_grid_size, aligned_roi, check_modulation_given, \
    check_pooled_grad_output, check_roi_align_args, output_channels

BOUNDARY = "roi_align"


def _axis_samples(start, size, bins, grid):
    """start + i size/P + (a + 1/2) size/(P g) for every bin i and sample a: (P, g)."""
    bin_size = size / bins
    return (start + np.arange(bins) * bin_size)[:, None] + (np.arange(grid) + 0.5) * bin_size / grid


def _literal(input, rois, offset, mask, geo, spatial_scale, sampling_ratio, aligned, gamma,
             position_sensitive):
    """Every (r, n, c, ch, i, j, points, scale_y, scale_x, dm) of the pooled bins, by loops:
    output channel c of bin (i, j) reads input channel ch (c, or (c P_h + i) P_w + j)."""
    p_h, p_w = geo.pooled
    for r in range(geo.rois):
        n, start_h, start_w, h, w = aligned_roi(rois[r], spatial_scale, aligned)
        g_h, g_w = align_grid_size(h, p_h, sampling_ratio), align_grid_size(w, p_w, sampling_ratio)
        bin_h, bin_w = h / p_h, w / p_w
        for i in range(p_h):
            for j in range(p_w):
                shift_y, shift_x = (0.0, 0.0) if offset is None else (
                    float(offset[r, 1, i, j]) * (gamma * h), float(offset[r, 0, i, j]) * (gamma * w))
                points = [(start_h + i * bin_h + (a + 0.5) * bin_h / g_h + shift_y,
                           start_w + j * bin_w + (b + 0.5) * bin_w / g_w + shift_x)
                          for a in range(g_h) for b in range(g_w)]
                dm = 1.0 if mask is None else float(mask[r, 0, i, j])
                for c in range(output_channels(geo, position_sensitive)):
                    ch = (c * p_h + i) * p_w + j if position_sensitive else c
                    yield r, n, c, ch, i, j, points, gamma * h, gamma * w, dm


def _forward_literal(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                     aligned, gamma, position_sensitive=False):
    geo = check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                               gamma, position_sensitive=position_sensitive, aligned=aligned)
    out = np.zeros((geo.rois, output_channels(geo, position_sensitive)) + geo.pooled)
    for r, n, c, ch, i, j, points, _, _, dm in _literal(input, rois, offset, mask, geo, spatial_scale,
                                                        sampling_ratio, aligned, gamma,
                                                        position_sensitive):
        total = sum(sample_point(input[n, ch], y, x, BOUNDARY) for y, x in points)
        out[r, c, i, j] = dm * total / max(len(points), 1)        # dm_k sum_j x(p_kj + dp_k) / n_k
    return out.astype(geo.dtype)


def _backward_literal(grad_output, input, rois, offset, mask, output_size, spatial_scale,
                      sampling_ratio, aligned, gamma, position_sensitive=False,
                      coord_grad="torchvision") -> RoIPoolGrads:
    geo = check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                               gamma, position_sensitive=position_sensitive, aligned=aligned)
    check_coord_grad(coord_grad)
    check_pooled_grad_output(grad_output, geo, output_channels(geo, position_sensitive))
    grad_input = np.zeros(input.shape)
    grad_offset = None if offset is None else np.zeros(offset.shape)
    grad_mask = None if mask is None else np.zeros(mask.shape)
    for r, n, c, ch, i, j, points, scale_y, scale_x, dm in _literal(
            input, rois, offset, mask, geo, spatial_scale, sampling_ratio, aligned, gamma,
            position_sensitive):
        go = grad_output[r, c, i, j] / max(len(points), 1)
        for y, x in points:
            scatter_point(grad_input[n, ch], y, x, go * dm, BOUNDARY)
            if mask is not None:
                grad_mask[r, 0, i, j] += go * sample_point(input[n, c], y, x, BOUNDARY)
            if offset is not None:
                d_y, d_x = sample_point_grad(input[n, c], y, x, BOUNDARY, coord_grad)
                grad_offset[r, 0, i, j] += go * dm * d_x * scale_x       # channel 0 = x
                grad_offset[r, 1, i, j] += go * dm * d_y * scale_y
    return _grads_in_dtype(geo.dtype, grad_input, grad_offset, grad_mask)


def align_grid(roi, pooled, spatial_scale, sampling_ratio, aligned, gamma) -> BinGrid:
    """The sampling grid of one RoI row before offsets (torchvision / mmcv rules)."""
    n, start_h, start_w, h, w = aligned_roi(roi, spatial_scale, aligned)
    (p_h, p_w) = pooled
    g_h, g_w = align_grid_size(h, p_h, sampling_ratio), align_grid_size(w, p_w, sampling_ratio)
    return BinGrid(n, _axis_samples(start_h, h, p_h, g_h), _axis_samples(start_w, w, p_w, g_w),
                   np.ones((p_h, g_h), bool), np.ones((p_w, g_w), bool), gamma * h, gamma * w)


def _roi_bins(input, rois, offset, geo, r, spatial_scale, sampling_ratio, aligned, gamma,
              position_sensitive, coord_grad="torchvision") -> BinAverages:
    """The (moved) bins of RoI r, vectorized; position-sensitive bins read their own channels
    (c P_h + i) P_w + j, the input's channels in order when reshaped to (C_out, P_h, P_w)."""
    grid = align_grid(rois[r], geo.pooled, spatial_scale, sampling_ratio, aligned, gamma)
    p_h, p_w = geo.pooled
    if offset is None:
        shift_y = shift_x = np.zeros((1, p_h, p_w))
    else:
        shift_x = offset[r, :1].astype(np.float64) * grid.scale_x
        shift_y = offset[r, 1:].astype(np.float64) * grid.scale_y
    y, x, valid = grid.points(shift_y, shift_x)
    channel_map = group_map = None
    if position_sensitive:
        channel_map = np.arange(geo.channels).reshape((-1,) + geo.pooled)
        group_map = np.zeros(channel_map.shape[0], dtype=np.int64)
    return BinAverages(input[grid.batch_index], y, x, averaging_weight(valid)[None], BOUNDARY,
                       channel_map, group_map, coord_grad)


def _forward(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, aligned, gamma,
             position_sensitive=False):
    geo = check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                               gamma, position_sensitive=position_sensitive, aligned=aligned)
    out = np.zeros((geo.rois, output_channels(geo, position_sensitive)) + geo.pooled, dtype=geo.dtype)
    for r in range(geo.rois):
        out[r] = _roi_bins(input, rois, offset, geo, r, spatial_scale, sampling_ratio, aligned,
                           gamma, position_sensitive).values()
    return out if mask is None else out * mask


def _backward(grad_output, input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
              aligned, gamma, position_sensitive=False, coord_grad="torchvision") -> RoIPoolGrads:
    geo = check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                               gamma, position_sensitive=position_sensitive, aligned=aligned)
    check_coord_grad(coord_grad)
    check_pooled_grad_output(grad_output, geo, output_channels(geo, position_sensitive))
    grad_input = np.zeros(input.shape, dtype=geo.dtype)
    grad_offset = None if offset is None else np.zeros(offset.shape, dtype=geo.dtype)
    grad_mask = None if mask is None else np.zeros(mask.shape, dtype=geo.dtype)
    for r in range(geo.rois):
        bins = _roi_bins(input, rois, offset, geo, r, spatial_scale, sampling_ratio, aligned, gamma,
                         position_sensitive, coord_grad)
        go = grad_output[r] if mask is None else grad_output[r] * mask[r]     # dL/d(bin average)
        bins.scatter(grad_input[int(rois[r, 0])], go)
        if mask is not None:
            grad_mask[r, 0] = np.sum(grad_output[r] * bins.values(), axis=0)
        if offset is not None:
            grid = align_grid(rois[r], geo.pooled, spatial_scale, sampling_ratio, aligned, gamma)
            d_y, d_x = bins.shift_grads()
            grad_offset[r, 0] = np.sum(go * d_x, axis=0) * grid.scale_x
            grad_offset[r, 1] = np.sum(go * d_y, axis=0) * grid.scale_y
    return RoIPoolGrads(grad_input=grad_input, grad_offset=grad_offset, grad_mask=grad_mask)


# ---------------------------------------------------------------------------------------------
# Public operators
# ---------------------------------------------------------------------------------------------


def roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision ``roi_align``: input (N, C, H, W), rois (R, 5) -> (R, C, P_h, P_w).

    sampling_ratio <= 0 is the adaptive ceil(roi size / P); ``aligned`` shifts the RoI by -0.5
    pixel (and drops the size clamp to >= 1).
    """
    return _forward(input, rois, None, None, output_size, spatial_scale, sampling_ratio,
                    bool(aligned), 0.0)


def roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False) -> RoIPoolGrads:
    """Gradient of :func:`roi_align` with respect to the input (the adjoint of the bin
    averages; no RoI gradient)."""
    return _backward(grad_output, input, rois, None, None, output_size, spatial_scale,
                     sampling_ratio, bool(aligned), 0.0)


def roi_align_literal(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                      aligned=False):
    """:func:`roi_align` by loops over RoIs, channels, bins and samples."""
    return _forward_literal(input, rois, None, None, output_size, spatial_scale, sampling_ratio,
                            bool(aligned), 0.0)


def roi_align_backward_literal(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                               sampling_ratio=-1, aligned=False) -> RoIPoolGrads:
    """:func:`roi_align_backward` by loops."""
    return _backward_literal(grad_output, input, rois, None, None, output_size, spatial_scale,
                             sampling_ratio, bool(aligned), 0.0)


def ps_roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1):
    """torchvision ``ps_roi_align``: input (N, C_out * P_h * P_w, H, W), rois (R, 5) ->
    (R, C_out, P_h, P_w).

    Bin (i, j) of output channel c averages the samples of input channel (c P_h + i) P_w + j
    on the RoIAlign grid of a half-pixel aligned RoI (no size clamp); sampling_ratio <= 0 is
    the adaptive ceil(roi size / P).
    """
    return _forward(input, rois, None, None, output_size, spatial_scale, sampling_ratio, True,
                    0.0, position_sensitive=True)


def ps_roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                          sampling_ratio=-1) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_align` with respect to the input: grad_output (R, C_out, P_h,
    P_w) -> grad_input (N, C_out P_h P_w, H, W), each bin scattering go / count with the
    bilinear weights into its own channel (no RoI gradient)."""
    return _backward(grad_output, input, rois, None, None, output_size, spatial_scale,
                     sampling_ratio, True, 0.0, position_sensitive=True)


def ps_roi_align_literal(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1):
    """:func:`ps_roi_align` by loops over RoIs, bins, output channels and samples."""
    return _forward_literal(input, rois, None, None, output_size, spatial_scale, sampling_ratio,
                            True, 0.0, position_sensitive=True)


def ps_roi_align_backward_literal(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                                  sampling_ratio=-1) -> RoIPoolGrads:
    """:func:`ps_roi_align_backward` by loops."""
    return _backward_literal(grad_output, input, rois, None, None, output_size, spatial_scale,
                             sampling_ratio, True, 0.0, position_sensitive=True)


def deform_roi_align(input, rois, offset=None, mask=None, output_size=7, spatial_scale=1.0,
                     sampling_ratio=0, gamma=0.1):
    """mmcv ``DeformRoIPool`` (offset (R, 2, P_h, P_w), channel 0 = x), modulated by ``mask``
    (R, 1, P_h, P_w) when given (DCNv2 Eq. 2).  Returns (R, C, P_h, P_w)."""
    return _forward(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, True,
                    gamma)


def deform_roi_align_backward(grad_output, input, rois, offset=None, mask=None, output_size=7,
                              spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                              coord_grad="torchvision") -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_align` for input, offset and mask (no RoI gradient):

    grad_input = adjoint of the bin averages applied to go * dm;
    grad_offset[r, 0 (x) / 1 (y), i, j] = gamma (w / h) sum_c go dm d avg / d shift (right
    derivatives at kinks; ``coord_grad="mmcv"``: mmcv's rule at clamped samples, see the
    module docstring); grad_mask[r, 0, i, j] = sum_c go * avg.
    """
    return _backward(grad_output, input, rois, offset, mask, output_size, spatial_scale,
                     sampling_ratio, True, gamma, coord_grad=coord_grad)


def deform_roi_align_literal(input, rois, offset=None, mask=None, output_size=7,
                             spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """:func:`deform_roi_align` by loops."""
    return _forward_literal(input, rois, offset, mask, output_size, spatial_scale,
                            sampling_ratio, True, gamma)


def deform_roi_align_backward_literal(grad_output, input, rois, offset=None, mask=None,
                                      output_size=7, spatial_scale=1.0, sampling_ratio=0,
                                      gamma=0.1, coord_grad="torchvision") -> RoIPoolGrads:
    """:func:`deform_roi_align_backward` by loops."""
    return _backward_literal(grad_output, input, rois, offset, mask, output_size, spatial_scale,
                             sampling_ratio, True, gamma, coord_grad=coord_grad)


def modulated_deform_roi_pool(input, rois, offset, mask, output_size=7, spatial_scale=1.0,
                              sampling_ratio=0, gamma=0.1):
    """Modulated deformable RoI pooling, DCNv2 Eq. 2 (mmcv convention): :func:`deform_roi_align`
    with its mask required."""
    check_modulation_given(mask)
    return deform_roi_align(input, rois, offset, mask, output_size, spatial_scale,
                            sampling_ratio, gamma)
