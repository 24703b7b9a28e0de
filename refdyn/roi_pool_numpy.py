"""RoI pooling as in the DCN papers: DCNv1 Eq. 5-6 and the official deformable PS RoI pooling.

Every operator of the family averages bilinear samples x(p) (DCNv1 Eq. 3-4) over the bins of a
RoI; they differ in where the samples lie, which samples count, and which channel a bin reads.

``deform_roi_pool`` (DCNv1 Eq. 5-6, the paper's average form).  A RoI of width w and height h
(feature-map pixels: (x2 - x1) * spatial_scale) with top-left corner p0 = (y1, x1) * spatial_scale
is split into P_h x P_w bins; bin (i, j) holds the integer points p with

    floor(i h / P_h) <= p_y < ceil((i + 1) h / P_h),   floor(j w / P_w) <= p_x < ceil((j + 1) w / P_w)

    y(i, j) = sum_{p in bin(i, j)} x(p0 + p + dp_ij) / n_ij                    (Eq. 5 with dp = 0; Eq. 6)
    dp_ij   = gamma * dp^_ij o (h, w)                                          (normalized offsets)

with the ``zeros`` sampling rule; n_ij is the number of points in the bin, and a bin without
points (a RoI with w <= 0 or h <= 0) is 0.  ``offset`` is (R, 2, P_h, P_w) with channel 0 = dy^,
channel 1 = dx^ (refdyn's (y, x) order, as ``deform_conv2d``).  ``roi_pool`` is the same with no
offsets.  Gradients (Appendix A, Eq. 8): d y(i, j) / d dp^_ij = gamma (h, w) o sum_p dx(p)/dp / n_ij.

``deform_ps_roi_pool`` (the official DCN ``deformable_psroi_pooling``; docs/conventions.md section 3):
position-sensitive bins (bin (i, j) of output channel o reads input channel
(o * group_size + g_i) * group_size + g_j), RoIs rounded and half-pixel shifted, S x S samples per
bin from its corner, samples beyond the -0.5 / W - 0.5 lines skipped and the others clamped
into the image, one (x, y) offset pair per part cell and class (channel 2c = x, 2c + 1 = y).
``ps_roi_pool`` is the same with no offsets (the official ``no_trans``).

RoIs get no gradient.  Two implementations agree to rounding: ``*_literal`` loops over RoIs,
channels, bins and samples as the equations are written; the vectorized default loops over RoIs
only and samples every bin and channel of a RoI at once.  Both compute the sampling points in
float64 whatever the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bilinear_numpy import Stencil, coord_grads_with, gather_corners, interpolate, make_stencil, \
    sample_point, sample_point_grad, scatter_add, scatter_point
from .roi_args import PSRoIParams, RoIGeometry, RoIPoolGrads, check_deform_ps_roi_pool_args, \
    check_deform_roi_pool_args, check_pooled_grad_output, dcn_roi, official_roi

# ---------------------------------------------------------------------------------------------
# Shared vectorized machinery: the sampling grid of one RoI and the averaging of its bins
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinGrid:
    """The samples of every bin of one RoI before offsets, on a separable grid.

    ys (P_h, S_y) and xs (P_w, S_x): the sample rows of each bin row and the sample columns of
    each bin column, in feature-map pixels; valid_y, valid_x: which of them exist (bins of one
    RoI may hold different counts; padding entries are False); scale_y, scale_x: the pixels one
    unit of normalized offset moves a bin by (gamma * roi_h, gamma * roi_w).
    """

    batch_index: int
    ys: np.ndarray
    xs: np.ndarray
    valid_y: np.ndarray
    valid_x: np.ndarray
    scale_y: float
    scale_x: float

    def points(self, shift_y: np.ndarray, shift_x: np.ndarray):
        """Every sample of every bin moved by its bin's shift.

        shift_y, shift_x: (Q, P_h, P_w) pixel shifts of Q point groups (classes, or Q = 1).
        Returns y, x (Q, P_h, P_w, S_y * S_x) float64 and valid (P_h, P_w, S_y * S_x).
        """
        q, p_h, p_w = shift_y.shape
        y = self.ys[None, :, None, :, None] + shift_y[..., None, None]
        x = self.xs[None, None, :, None, :] + shift_x[..., None, None]
        grid = (q, p_h, p_w, self.ys.shape[1], self.xs.shape[1])
        size = grid[:3] + (grid[3] * grid[4],)
        valid = self.valid_y[:, None, :, None] & self.valid_x[None, :, None, :]
        return (np.broadcast_to(y, grid).reshape(size), np.broadcast_to(x, grid).reshape(size),
                valid.reshape(size[1:]))


def averaging_weight(valid: np.ndarray) -> np.ndarray:
    """1 / count for each counted sample of a bin (sum over the last axis), 0 elsewhere; a bin
    without counted samples averages to 0."""
    count = valid.sum(axis=-1, keepdims=True)
    return valid / np.maximum(count, 1)


class BinAverages:
    """The averaged bilinear samples of every bin of one RoI, and their derivatives.

    image (C, H, W); y, x, weight (Q, P_h, P_w, S): sample points of Q point groups and each
    sample's weight in its bin's average.  Without ``channel_map`` there is one point group and
    output channel c reads input channel c.  Position-sensitive pooling passes channel_map
    (C_out, P_h, P_w), the input channel each bin of each output channel reads, and group_map
    (C_out,), the point group of each output channel: the stencil then indexes the image with
    its channels flattened into the pixels.  ``coord_grad`` picks the derivative rule of
    :func:`refdyn.bilinear_numpy.make_stencil`.
    """

    def __init__(self, image, y, x, weight, boundary, channel_map=None, group_map=None,
                 coord_grad="torchvision"):
        channels, height, width = image.shape
        base = make_stencil(y, x, height, width, boundary, coord_grad)
        if channel_map is None:
            def pick(field):
                return field[:, 0] * weight[0]
            index = base.index[:, 0]
            self.image, self.lead_ndim = image, 1
        else:
            def pick(field):
                return field[:, group_map] * weight[group_map]
            index = base.index[:, group_map] + (channel_map * (height * width))[..., None]
            self.image, self.lead_ndim = image.reshape(1, channels * height * width), 0
        self.stencil = Stencil(index=index, weight=pick(base.weight),
                               dweight_dy=pick(base.dweight_dy), dweight_dx=pick(base.dweight_dx))
        self.corners = gather_corners(self.image, self.stencil)

    def values(self) -> np.ndarray:
        """The bin averages, (C_out, P_h, P_w)."""
        return interpolate(self.corners, self.stencil, self.lead_ndim).sum(axis=-1)

    def shift_grads(self):
        """d value / d shift_y and d value / d shift_x of each output channel's bin, (C_out, P_h, P_w)."""
        d_y, d_x = coord_grads_with(self.corners, self.stencil, self.lead_ndim)
        return d_y.sum(axis=-1), d_x.sum(axis=-1)

    def scatter(self, grad_image: np.ndarray, grad_values: np.ndarray) -> None:
        """grad_image (C, H, W) += the adjoint of :meth:`values` applied to grad_values (C_out, P_h, P_w)."""
        view = grad_image.reshape(self.image.shape)
        samples = self.stencil.index.shape[-1]
        scatter_add(view, np.broadcast_to(grad_values[..., None], grad_values.shape + (samples,)),
                    self.stencil)


def _grads_in_dtype(dtype, grad_input, grad_offset=None, grad_mask=None) -> RoIPoolGrads:
    def cast(array):
        return None if array is None else np.asarray(array).astype(dtype, copy=False)
    return RoIPoolGrads(grad_input=cast(grad_input), grad_offset=cast(grad_offset),
                        grad_mask=cast(grad_mask))


# ---------------------------------------------------------------------------------------------
# DCNv1 Eq. 5-6: deformable RoI pooling, average form
# ---------------------------------------------------------------------------------------------


def _eq5_span(i: int, size: float, bins: int) -> range:
    """The integer points of bin i along one axis: floor(i size / k) <= p < ceil((i + 1) size / k)."""
    return range(math.floor(i * size / bins), math.ceil((i + 1) * size / bins))


def _eq5_axis(start: float, size: float, bins: int):
    """:func:`_eq5_span` of every bin along one axis as padded arrays: coordinates start + p
    (bins, S) and which of them exist."""
    i = np.arange(bins)
    low = np.floor(i * size / bins)
    counts = np.maximum(np.ceil((i + 1) * size / bins) - low, 0).astype(np.int64)
    steps = np.arange(int(counts.max()))
    return start + (low[:, None] + steps), steps < counts[:, None]


def eq5_grid(roi, pooled, spatial_scale, gamma) -> BinGrid:
    batch_index, y0, x0, h, w = dcn_roi(roi, spatial_scale)
    ys, valid_y = _eq5_axis(y0, h, pooled[0])
    xs, valid_x = _eq5_axis(x0, w, pooled[1])
    return BinGrid(batch_index, ys, xs, valid_y, valid_x, gamma * h, gamma * w)


def deform_roi_pool_literal(input, rois, offset=None, output_size=7, spatial_scale=1.0,
                            gamma=0.1):
    """Deformable RoI pooling by the loops of DCNv1 Eq. 5-6 (tiny inputs only).

    Same arguments and result as :func:`deform_roi_pool`.
    """
    geo = check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma)
    out = np.zeros((geo.rois, geo.channels) + geo.pooled)
    for r, n, i, j, points, _ in _eq6_bin_points(geo, rois, offset, spatial_scale, gamma):
        for c in range(geo.channels):
            total = sum(sample_point(input[n, c], y, x) for y, x in points)
            out[r, c, i, j] = total / len(points) if points else 0.0          # / n_ij (Eq. 5)
    return out.astype(geo.dtype)


def _eq6_bin_points(geo, rois, offset, spatial_scale, gamma):
    """Every bin (r, i, j) with its batch index n, its points p0 + p + dp_ij (Eq. 6) and the
    offset scale gamma (h, w) that maps dp^_ij to dp_ij."""
    for r in range(geo.rois):
        n, y0, x0, h, w = dcn_roi(rois[r], spatial_scale)
        for i in range(geo.pooled[0]):
            for j in range(geo.pooled[1]):
                dy, dx = (0.0, 0.0) if offset is None else (
                    float(offset[r, 0, i, j]) * (gamma * h), float(offset[r, 1, i, j]) * (gamma * w))
                points = [(y0 + p_y + dy, x0 + p_x + dx)
                          for p_y in _eq5_span(i, h, geo.pooled[0])
                          for p_x in _eq5_span(j, w, geo.pooled[1])]
                yield r, n, i, j, points, (gamma * h, gamma * w)


def deform_roi_pool_backward_literal(grad_output, input, rois, offset=None, output_size=7,
                                     spatial_scale=1.0, gamma=0.1) -> RoIPoolGrads:
    """Gradients of Eq. 6 by loops (DCNv1 Appendix A, Eq. 8): each point p of bin (i, j) with
    incoming gradient go scatters go / n_ij * G(q, p) to its neighbours q and adds
    go / n_ij * gamma (h, w) o dx(p)/dp to dp^_ij (right derivatives at kinks)."""
    geo = check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma)
    check_pooled_grad_output(grad_output, geo, geo.channels)
    grad_input = np.zeros(input.shape)
    grad_offset = None if offset is None else np.zeros(offset.shape)
    for r, n, i, j, points, (scale_y, scale_x) in _eq6_bin_points(geo, rois, offset,
                                                                  spatial_scale, gamma):
        for c in range(geo.channels):
            for y, x in points:
                go = grad_output[r, c, i, j] / len(points)
                scatter_point(grad_input[n, c], y, x, go)
                if offset is not None:
                    d_y, d_x = sample_point_grad(input[n, c], y, x)
                    grad_offset[r, 0, i, j] += go * d_y * scale_y                 # Eq. 8
                    grad_offset[r, 1, i, j] += go * d_x * scale_x
    return _grads_in_dtype(geo.dtype, grad_input, grad_offset)


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, gamma=0.1):
    """Deformable RoI pooling, DCNv1 Eq. 6 (Eq. 5, plain RoI pooling, when ``offset`` is None).

    input (N, C, H, W); rois (R, 5) [batch_index, x1, y1, x2, y2]; offset (R, 2, P_h, P_w)
    normalized (dy^, dx^) or None; output_size: P or (P_h, P_w); gamma: the offset scale.
    Returns (R, C, P_h, P_w) in the input dtype (empty bins are 0).
    """
    geo = check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma)
    out = np.zeros((geo.rois, geo.channels) + geo.pooled, dtype=geo.dtype)
    for r in range(geo.rois):
        grid = eq5_grid(rois[r], geo.pooled, spatial_scale, gamma)
        out[r] = _eq6_bins(input, offset, r, grid).values()
    return out


def _eq6_bins(input, offset, r, grid: BinGrid) -> BinAverages:
    """The bins of RoI r moved by dp_ij = gamma dp^_ij o (h, w) (Eq. 6)."""
    shift = (np.zeros((2, 1) + grid.valid_y.shape[:1] + grid.valid_x.shape[:1]) if offset is None
             else offset[r].astype(np.float64)[:, None] * np.array([grid.scale_y, grid.scale_x])[:, None, None, None])
    y, x, valid = grid.points(shift[0], shift[1])
    return BinAverages(input[grid.batch_index], y, x, averaging_weight(valid)[None], "zeros")


def deform_roi_pool_backward(grad_output, input, rois, offset=None, output_size=7,
                             spatial_scale=1.0, gamma=0.1) -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_pool` (DCNv1 Appendix A, Eq. 8), right derivatives at kinks.

    grad_input: the adjoint of the bin averages; grad_offset[r, :, i, j] =
    gamma (h, w) o sum_c go[r, c, i, j] d y(i, j) / d dp_ij.  No RoI gradient.
    """
    geo = check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma)
    check_pooled_grad_output(grad_output, geo, geo.channels)
    grad_input = np.zeros(input.shape, dtype=geo.dtype)
    grad_offset = None if offset is None else np.zeros(offset.shape, dtype=geo.dtype)
    for r in range(geo.rois):
        grid = eq5_grid(rois[r], geo.pooled, spatial_scale, gamma)
        bins = _eq6_bins(input, offset, r, grid)
        bins.scatter(grad_input[grid.batch_index], grad_output[r])
        if offset is not None:
            d_y, d_x = bins.shift_grads()
            grad_offset[r, 0] = np.sum(grad_output[r] * d_y, axis=0) * grid.scale_y
            grad_offset[r, 1] = np.sum(grad_output[r] * d_x, axis=0) * grid.scale_x
    return RoIPoolGrads(grad_input=grad_input, grad_offset=grad_offset)


def roi_pool(input, rois, output_size=7, spatial_scale=1.0):
    """RoI pooling, DCNv1 Eq. 5 (average form): :func:`deform_roi_pool` without offsets."""
    return deform_roi_pool(input, rois, None, output_size, spatial_scale)


def roi_pool_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0) -> RoIPoolGrads:
    """Gradient of :func:`roi_pool` with respect to the input (no RoI gradient)."""
    return deform_roi_pool_backward(grad_output, input, rois, None, output_size, spatial_scale)


# ---------------------------------------------------------------------------------------------
# The official DCN deformable PS RoI pooling
# ---------------------------------------------------------------------------------------------


def _part_cell(i: int, pooled: int, part_size: int) -> int:
    """The offset cell of bin i: floor(i / P * part_size)."""
    return math.floor(i / pooled * part_size)


def _score_map(o: int, i: int, j: int, params: PSRoIParams) -> int:
    """The input channel bin (i, j) of output channel o reads: (o gs + g_i) gs + g_j."""
    gs, pooled = params.group_size, params.pooled_size
    g_i = min(max(math.floor(i * gs / pooled), 0), gs - 1)
    g_j = min(max(math.floor(j * gs / pooled), 0), gs - 1)
    return (o * gs + g_i) * gs + g_j


def _skipped(y: float, x: float, height: int, width: int) -> bool:
    """A sample beyond the -0.5 / W - 0.5 lines is left out of its bin's average."""
    return x < -0.5 or x > width - 0.5 or y < -0.5 or y > height - 0.5


def _official_samples(params: PSRoIParams, offset, r, o, i, j, roi):
    """The official sample points of bin (i, j) of output channel o and their shift scales."""
    n, start_h, start_w, roi_h, roi_w = roi
    bin_h, bin_w = roi_h / params.pooled_size, roi_w / params.pooled_size
    sub_h, sub_w = bin_h / params.sample_per_part, bin_w / params.sample_per_part
    shift_y = shift_x = 0.0
    if not params.no_trans:
        c = o // (params.output_dim // params.classes)                 # the class of channel o
        cell_i = _part_cell(i, params.pooled_size, params.part_size)
        cell_j = _part_cell(j, params.pooled_size, params.part_size)
        shift_x = float(offset[r, 2 * c, cell_i, cell_j]) * (params.trans_std * roi_w)
        shift_y = float(offset[r, 2 * c + 1, cell_i, cell_j]) * (params.trans_std * roi_h)
    return [(i * bin_h + start_h + ih * sub_h + shift_y, j * bin_w + start_w + iw * sub_w + shift_x)
            for ih in range(params.sample_per_part) for iw in range(params.sample_per_part)]


def deform_ps_roi_pool_literal(input, rois, offset=None, spatial_scale=1.0, output_dim=1,
                               group_size=1, pooled_size=7, part_size=0, sample_per_part=4,
                               trans_std=0.1, no_trans=False):
    """The official deformable PS RoI pooling by loops over RoIs, output channels, bins and
    samples.  Same arguments and result as :func:`deform_ps_roi_pool`."""
    geo, params = check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim,
                                                group_size, pooled_size, part_size,
                                                sample_per_part, trans_std, no_trans)
    out = np.zeros((geo.rois, params.output_dim) + geo.pooled)
    for r in range(geo.rois):
        roi = official_roi(rois[r], spatial_scale)
        for o, i, j in np.ndindex(params.output_dim, *geo.pooled):
            image = input[roi[0], _score_map(o, i, j, params)]
            values = [sample_point(image, y, x, "border")       # clamped into [0, H-1] x [0, W-1]
                      for y, x in _official_samples(params, offset, r, o, i, j, roi)
                      if not _skipped(y, x, geo.height, geo.width)]
            out[r, o, i, j] = sum(values) / len(values) if values else 0.0
    return out.astype(geo.dtype)


def deform_ps_roi_pool_backward_literal(grad_output, input, rois, offset=None, spatial_scale=1.0,
                                        output_dim=1, group_size=1, pooled_size=7, part_size=0,
                                        sample_per_part=4, trans_std=0.1, no_trans=False):
    """Gradients of the official deformable PS RoI pooling by loops: each counted sample
    scatters go / count to its neighbours and adds go / count * trans_std * (roi_w, roi_h) o
    dx(p)/d(p_x, p_y) to the (x, y) offsets of its part cell and class.  Zero offset gradient
    with ``no_trans``; no RoI gradient."""
    geo, params = check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim,
                                                group_size, pooled_size, part_size,
                                                sample_per_part, trans_std, no_trans)
    check_pooled_grad_output(grad_output, geo, params.output_dim)
    grad_input = np.zeros(input.shape)
    grad_offset = None if offset is None else np.zeros(offset.shape)
    for r in range(geo.rois):
        roi = official_roi(rois[r], spatial_scale)
        n, _, _, roi_h, roi_w = roi
        for o, i, j in np.ndindex(params.output_dim, *geo.pooled):
            channel = _score_map(o, i, j, params)
            points = [(y, x) for y, x in _official_samples(params, offset, r, o, i, j, roi)
                      if not _skipped(y, x, geo.height, geo.width)]
            for y, x in points:
                go = grad_output[r, o, i, j] / len(points)
                scatter_point(grad_input[n, channel], y, x, go, "border")
                if not params.no_trans:
                    c = o // (params.output_dim // params.classes)
                    cell_i = _part_cell(i, params.pooled_size, params.part_size)
                    cell_j = _part_cell(j, params.pooled_size, params.part_size)
                    d_y, d_x = sample_point_grad(input[n, channel], y, x, "border")
                    grad_offset[r, 2 * c, cell_i, cell_j] += go * d_x * params.trans_std * roi_w
                    grad_offset[r, 2 * c + 1, cell_i, cell_j] += go * d_y * params.trans_std * roi_h
    return _grads_in_dtype(geo.dtype, grad_input, grad_offset)


def official_grid(roi, params: PSRoIParams) -> BinGrid:
    """The S x S samples of every bin from its corner, before offsets; roi as :func:`official_roi`."""
    n, start_h, start_w, roi_h, roi_w = roi
    pooled, samples = params.pooled_size, params.sample_per_part
    bins, steps = np.arange(pooled), np.arange(samples)
    bin_h, bin_w = roi_h / pooled, roi_w / pooled
    return BinGrid(n, (bins * bin_h + start_h)[:, None] + steps * (bin_h / samples),
                   (bins * bin_w + start_w)[:, None] + steps * (bin_w / samples),
                   np.ones((pooled, samples), bool), np.ones((pooled, samples), bool),
                   params.trans_std * roi_h, params.trans_std * roi_w)


def part_cells(params: PSRoIParams) -> np.ndarray:
    """The offset cell floor(i / P * part_size) of every bin row (and column), (P,)."""
    return np.floor(np.arange(params.pooled_size) / params.pooled_size
                    * params.part_size).astype(np.int64)


class _PSRoI:
    """The sampling of every bin, class and output channel of one RoI (vectorized)."""

    def __init__(self, geo: RoIGeometry, params: PSRoIParams, input, offset, roi, r):
        grid = official_grid(roi, params)
        pooled = params.pooled_size
        bins = np.arange(pooled)
        self.cells = part_cells(params)
        classes = 1 if params.no_trans else params.classes
        if params.no_trans:
            shift_y = shift_x = np.zeros((1, pooled, pooled))
        else:
            cell_offsets = offset[r].astype(np.float64)[:, self.cells][:, :, self.cells]
            shift_x = cell_offsets[0::2] * grid.scale_x
            shift_y = cell_offsets[1::2] * grid.scale_y
        y, x, valid = grid.points(shift_y, shift_x)
        valid = valid & (x >= -0.5) & (x <= geo.width - 0.5) & (y >= -0.5) & (y <= geo.height - 0.5)
        gs = params.group_size
        g = np.clip(np.floor(bins * gs / pooled).astype(np.int64), 0, gs - 1)
        outputs = np.arange(params.output_dim)
        channel_map = (outputs[:, None, None] * gs + g[None, :, None]) * gs + g[None, None, :]
        self.group_map = outputs // (params.output_dim // classes)
        self.grid, self.classes = grid, classes
        self.bins = BinAverages(input[grid.batch_index], y, x, averaging_weight(valid), "border",
                                channel_map, self.group_map)


def deform_ps_roi_pool(input, rois, offset=None, spatial_scale=1.0, output_dim=1, group_size=1,
                       pooled_size=7, part_size=0, sample_per_part=4, trans_std=0.1,
                       no_trans=False):
    """Deformable position-sensitive RoI pooling with the official DCN rules.

    input (N, output_dim * group_size**2, H, W); rois (R, 5); offset (R, 2 * classes, part_size,
    part_size), channel 2c = x and 2c + 1 = y of class c (output channels o with
    o // (output_dim / classes) = c), or None; part_size 0 means pooled_size; ``no_trans`` (or no
    offset) gives PS RoI pooling.  Returns (R, output_dim, P, P) in the input dtype.
    """
    geo, params = check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim,
                                                group_size, pooled_size, part_size,
                                                sample_per_part, trans_std, no_trans)
    out = np.zeros((geo.rois, params.output_dim) + geo.pooled, dtype=geo.dtype)
    for r in range(geo.rois):
        roi = _PSRoI(geo, params, input, offset, official_roi(rois[r], spatial_scale), r)
        out[r] = roi.bins.values()
    return out


def deform_ps_roi_pool_backward(grad_output, input, rois, offset=None, spatial_scale=1.0,
                                output_dim=1, group_size=1, pooled_size=7, part_size=0,
                                sample_per_part=4, trans_std=0.1, no_trans=False):
    """Gradients of :func:`deform_ps_roi_pool`: the input gradient scatters go / count to the
    corners of every counted sample; the offset gradient of a part cell and class sums
    go * trans_std * (roi_w, roi_h) o d value / d shift over its bins and output channels
    (right derivatives at kinks, the clamp's slope 0 outside [0, W - 1)).  No RoI gradient."""
    geo, params = check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim,
                                                group_size, pooled_size, part_size,
                                                sample_per_part, trans_std, no_trans)
    check_pooled_grad_output(grad_output, geo, params.output_dim)
    grad_input = np.zeros(input.shape, dtype=geo.dtype)
    grad_offset = None if offset is None else np.zeros(offset.shape, dtype=np.float64)
    for r in range(geo.rois):
        roi = _PSRoI(geo, params, input, offset, official_roi(rois[r], spatial_scale), r)
        roi.bins.scatter(grad_input[roi.grid.batch_index], grad_output[r])
        if offset is not None and not params.no_trans:
            d_y, d_x = roi.bins.shift_grads()
            for axis, (grads, scale) in enumerate(((d_x, roi.grid.scale_x), (d_y, roi.grid.scale_y))):
                per_class = np.zeros((roi.classes,) + geo.pooled)
                np.add.at(per_class, roi.group_map, grad_output[r] * grads * scale)
                cells = np.ix_(np.arange(roi.classes) * 2 + axis, roi.cells, roi.cells)
                np.add.at(grad_offset[r], cells, per_class)
    return _grads_in_dtype(geo.dtype, grad_input, grad_offset)


def ps_roi_pool(input, rois, spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=7,
                sample_per_part=4):
    """Position-sensitive RoI pooling with the official DCN rules (``no_trans``)."""
    return deform_ps_roi_pool(input, rois, None, spatial_scale, output_dim, group_size,
                              pooled_size, 0, sample_per_part, no_trans=True)


def ps_roi_pool_backward(grad_output, input, rois, spatial_scale=1.0, output_dim=1, group_size=1,
                         pooled_size=7, sample_per_part=4) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_pool` with respect to the input (no RoI gradient)."""
    return deform_ps_roi_pool_backward(grad_output, input, rois, None, spatial_scale, output_dim,
                                       group_size, pooled_size, 0, sample_per_part, no_trans=True)
