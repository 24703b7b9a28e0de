"""Argument checks, parameter and gradient records of the RoI pooling family (docs/conventions.md
section 3): the shared checks, the checks of each operator (``check_deform_roi_pool_args``,
``check_deform_ps_roi_pool_args`` with its :class:`PSRoIParams`, ``check_roi_align_args``) and
the RoI frames they bound the work by (a RoI row in feature-map pixels by each operator's rules,
which the operators sample on too).

Shared by :mod:`refdyn.roi_pool_numpy`, :mod:`refdyn.roi_align_numpy` and the GPU backends so
that every operator of the family accepts the same RoI layout and rejects bad arguments with the
same messages:

    input  (N, C, H, W)
    rois   (R, 5)  rows [batch_index, x1, y1, x2, y2] in image coordinates (times spatial_scale
                   gives feature-map coordinates); batch_index an integer in [0, N)
    output (R, C_out, P_h, P_w)

RoIs get no gradient in any implementation (their coordinates enter through floor, ceil,
round and the adaptive grid size), so no backward returns one.

Work limits (docs/roi.md, "Limits").  Every backend (NumPy, the CUDA C kernels through
CuPy or the host compiler, Numba) runs these checks before any work, so no call whose loops
could run practically forever, or whose 64-bit index arithmetic could wrap, reaches a kernel:

    MAX_SAMPLES_PER_AXIS  samples a bin takes along one axis: sampling_ratio, sample_per_part,
                          the adaptive ceil(size / P) and the points of a DCNv1 Eq. 5 bin
    MAX_TOTAL_SAMPLES     bilinear samples of one forward, over RoIs, output channels and bins
    MAX_POOLED            bins along one axis (output_size, pooled_size)

and every RoI must be finite in feature-map pixels (its corners times spatial_scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .args import as_pair, check_at_most, check_finite, check_float_array, check_grad_output, \
    check_positive_int, check_shape, numpy_all_finite

#: The most samples one bin takes along one axis.  Adaptive sampling takes about one sample
#: per feature-map pixel, so this accepts RoIs up to 2048 P feature-map pixels per axis (8192
#: image pixels at stride 4 even with a single bin); a bin then averages at most 2**22 samples,
#: tens of milliseconds for one GPU thread, and every count stays far from overflowing.
MAX_SAMPLES_PER_AXIS = 2 ** 11
#: The most bilinear samples one forward call takes: R x C_out x P_h x P_w x samples per bin,
#: summed over the RoIs.  A detection head's call takes about 2**30 to 2**36; 2**44 (1.8e13)
#: is minutes of GPU time, and every index the kernels form (at most the output size) stays
#: below it.
MAX_TOTAL_SAMPLES = 2 ** 44
#: The most bins along one axis: a C int, as torchvision's and mmcv's pooled sizes; the kernels
#: form products of two bin indices (position-sensitive groups), which then stay below 2**62.
MAX_POOLED = 2 ** 31 - 1


@dataclass
class RoIPoolGrads:
    """Gradients of a scalar loss with respect to the inputs of a RoI pooling operator.

    ``grad_input`` has the input's shape; ``grad_offset`` and ``grad_mask`` are None when the
    call had no offset or mask.  There is no RoI gradient (see the module docstring).
    """

    grad_input: object
    grad_offset: Optional[object] = None
    grad_mask: Optional[object] = None


@dataclass(frozen=True)
class RoIGeometry:
    """Sizes of one RoI pooling call, from the argument shapes."""

    batch: int
    channels: int
    height: int
    width: int
    rois: int
    pooled: tuple[int, int]
    dtype: np.dtype


def check_roi_input(input, rois, output_size, spatial_scale,
                    all_finite: Callable = numpy_all_finite) -> RoIGeometry:
    """Validate input (N, C, H, W), rois (R, 5), output_size (int or pair, each in
    [1, MAX_POOLED]) and spatial_scale (finite, > 0)."""
    dtype = check_float_array(input, "input", 4)
    batch, channels, height, width = (int(s) for s in input.shape)
    if height < 1 or width < 1:
        raise ValueError(f"input must have shape (N, C, H, W) with H, W >= 1, got {tuple(input.shape)}")
    check_float_array(rois, "rois", 2, dtype)
    if rois.shape[1] != 5:
        raise ValueError("rois must have shape (R, 5), rows [batch_index, x1, y1, x2, y2], "
                         f"got {tuple(rois.shape)}")
    check_finite(rois, "rois", all_finite)
    indices = np.asarray(rois[:, 0], dtype=np.float64)
    if np.any(indices != np.round(indices)) or np.any((indices < 0) | (indices >= batch)):
        raise ValueError(f"rois[:, 0] (batch_index) must be integers in [0, N) = [0, {batch}), "
                         f"got {sorted(set(indices.tolist()))}")
    pooled = as_pair(output_size, "output_size")
    if min(pooled) < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size!r}")
    check_at_most(max(pooled), "output_size", MAX_POOLED, "bins per axis, MAX_POOLED")
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float, np.floating)) \
            or not math.isfinite(spatial_scale) or spatial_scale <= 0:
        raise ValueError(f"spatial_scale must be a finite number > 0, got {spatial_scale!r}")
    return RoIGeometry(batch=batch, channels=channels, height=height, width=width,
                       rois=int(rois.shape[0]), pooled=pooled, dtype=dtype)


def check_bin_array(array, name: str, geo: RoIGeometry, channels: int, cells: tuple[int, int],
                    meaning: str, all_finite: Callable = numpy_all_finite) -> None:
    """An optional per-bin array (offsets or mask) of shape (R, channels, *cells), finite."""
    if array is None:
        return
    check_float_array(array, name, 4, geo.dtype)
    check_shape(array, name, (geo.rois, channels) + tuple(cells), meaning)
    check_finite(array, name, all_finite)


def check_pooled_grad_output(grad_output, geo: RoIGeometry, out_channels: int) -> None:
    """grad_output must have the forward's output shape (R, C_out, P_h, P_w) and dtype."""
    check_grad_output(grad_output, (geo.rois, out_channels) + geo.pooled, geo.dtype,
                      "(R, C_out, P_h, P_w)")


def check_finite_number(value, name: str) -> float:
    """A finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_roi_work(geo: RoIGeometry, out_channels: int, rois, spatial_scale, frame: Callable,
                   samples: Callable, rule: str) -> None:
    """Bound the sampling work of one call by its RoIs (docs/roi.md, "Limits").

    ``frame(roi) -> (start_h, start_w, h, w)``: a RoI row in feature-map pixels by the
    operator's rules; ``samples(h, w) -> (S_h, S_w)``: the samples of the RoI's widest bin along
    each axis by the operator's rule, which ``rule`` spells (with the way out) for the error.
    Raises ValueError naming ``rois`` (a RoI by its index, row and spatial_scale) unless every
    frame is finite and S_h, S_w <= MAX_SAMPLES_PER_AXIS, and unless the forward's total,
    out_channels P_h P_w sum_r max(S_h, 1) max(S_w, 1) (a bin with no samples along one axis
    still loops over the other), is at most MAX_TOTAL_SAMPLES.
    """
    def which(r, roi):
        return (f"rois: RoI {r} [{', '.join(f'{float(value):.6g}' for value in roi)}] at "
                f"spatial_scale {float(spatial_scale):.6g}")

    per_roi = out_channels * geo.pooled[0] * geo.pooled[1]
    total = 0
    for r, roi in enumerate(rois):
        start_h, start_w, h, w = frame(roi)
        if not all(map(math.isfinite, (start_h, start_w, h, w))):
            raise ValueError(f"{which(r, roi)} is not finite in feature-map pixels (its corners "
                             "times spatial_scale overflow float64); pass a smaller spatial_scale "
                             "or RoI")
        s_h, s_w = samples(h, w)
        if max(s_h, s_w) > MAX_SAMPLES_PER_AXIS:
            raise ValueError(f"{which(r, roi)} takes up to {s_h:.6g} x {s_w:.6g} samples per bin "
                             f"(h x w), more than the maximum {MAX_SAMPLES_PER_AXIS} per axis "
                             f"(MAX_SAMPLES_PER_AXIS): {rule}")
        total += max(s_h, 1) * max(s_w, 1)
    if per_roi * total > MAX_TOTAL_SAMPLES:
        raise ValueError(f"rois and output size: the call takes {per_roi * total} bilinear samples "
                         f"({geo.rois} RoIs x {out_channels} output channels x {geo.pooled[0]} x "
                         f"{geo.pooled[1]} bins x the samples per bin), more than the maximum "
                         f"{MAX_TOTAL_SAMPLES} = 2**44 (MAX_TOTAL_SAMPLES); pool the RoIs in "
                         "several calls")


# ---------------------------------------------------------------------------------------------
# RoI frames: a RoI row in feature-map pixels and its samples per bin, by each operator's rules
# (the work checks below bound the calls by them; the operators sample on them)
# ---------------------------------------------------------------------------------------------


def dcn_roi(roi, spatial_scale):
    """(batch index, p0_y, p0_x, h, w) of a RoI row in feature-map pixels (DCNv1 Eq. 5-6:
    deform_roi_pool, roi_pool)."""
    return (int(roi[0]), float(roi[2]) * spatial_scale, float(roi[1]) * spatial_scale,
            (float(roi[4]) - float(roi[2])) * spatial_scale,
            (float(roi[3]) - float(roi[1])) * spatial_scale)


def _eq5_widest(size: float, bins: int) -> int:
    """The most points a bin of :func:`refdyn.roi_pool_numpy._eq5_span` holds along an axis of
    this size: with x = size / bins, bin i holds ceil((i + 1) x) - floor(i x) = ceil(frac(i x) + x)
    points, which is x for every bin when x is an integer and at most floor(x) + 2 otherwise (and
    never negative: a RoI of size <= 0 has bins of at most one point)."""
    per_bin = size / bins
    whole = math.floor(per_bin)
    return max(whole if per_bin == whole else whole + 2, 0)


def round_half_away(value: float) -> float:
    """The nearest integer, halves away from zero (C's ``round``: 2.5 -> 3, -0.5 -> -1), not
    Python's half-to-even ``round``.  floor(|v|) and |v| - floor(|v|) are exact in floating
    point, so the half is decided exactly (0.49999999999999994 rounds to 0).  Plain ``math``
    only, so the Numba mirror compiles this very function for the device."""
    magnitude = abs(value)
    whole = math.floor(magnitude)
    if magnitude - whole >= 0.5:
        whole += 1.0
    return math.copysign(whole, value)


def official_roi(roi, spatial_scale):
    """(batch index, roi_start_h, roi_start_w, roi_h, roi_w): corners rounded half away from
    zero (the official code and OpenVINO call C's ``round``), the -0.5 half-pixel shift, the end
    pixel included, sizes at least 0.1 (the rules of the official deformable PS RoI pooling)."""
    start_w = round_half_away(float(roi[1])) * spatial_scale - 0.5
    start_h = round_half_away(float(roi[2])) * spatial_scale - 0.5
    end_w = (round_half_away(float(roi[3])) + 1.0) * spatial_scale - 0.5
    end_h = (round_half_away(float(roi[4])) + 1.0) * spatial_scale - 0.5
    return int(roi[0]), start_h, start_w, max(end_h - start_h, 0.1), max(end_w - start_w, 0.1)


def aligned_roi(roi, spatial_scale, aligned):
    """(batch index, y_start, x_start, h, w) of a RoI row in feature-map pixels (torchvision's
    RoIAlign: roi_align, ps_roi_align, deform_roi_align)."""
    half = 0.5 if aligned else 0.0
    start_w, start_h = float(roi[1]) * spatial_scale - half, float(roi[2]) * spatial_scale - half
    w = float(roi[3]) * spatial_scale - half - start_w
    h = float(roi[4]) * spatial_scale - half - start_h
    if not aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    return int(roi[0]), start_h, start_w, h, w


def align_grid_size(size: float, bins: int, sampling_ratio: int) -> int:
    """Samples per bin along one axis of RoIAlign: sampling_ratio, or ceil(size / bins) when it
    is <= 0."""
    return int(sampling_ratio) if sampling_ratio > 0 else max(math.ceil(size / bins), 0)


def output_channels(geo, position_sensitive: bool) -> int:
    """C_out: C / (P_h P_w) for position-sensitive pooling, else C."""
    return geo.channels // (geo.pooled[0] * geo.pooled[1]) if position_sensitive else geo.channels


# ---------------------------------------------------------------------------------------------
# The checks of each operator
# ---------------------------------------------------------------------------------------------


def check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma,
                               all_finite: Callable = numpy_all_finite) -> RoIGeometry:
    """The checks of deform_roi_pool and roi_pool; work limits (:func:`check_roi_work`): every
    RoI finite in feature-map pixels, its widest Eq. 5 bin (:func:`_eq5_widest`) at most
    MAX_SAMPLES_PER_AXIS points per axis, and the forward at most MAX_TOTAL_SAMPLES samples."""
    geo = check_roi_input(input, rois, output_size, spatial_scale, all_finite)
    check_finite_number(gamma, "gamma")
    check_bin_array(offset, "offset", geo, 2, geo.pooled, "(R, 2, P_h, P_w)", all_finite)
    check_roi_work(geo, geo.channels, rois, spatial_scale,
                   lambda roi: dcn_roi(roi, spatial_scale)[1:],
                   lambda h, w: (_eq5_widest(h, geo.pooled[0]), _eq5_widest(w, geo.pooled[1])),
                   "a DCNv1 Eq. 5 bin takes every integer point in it, up to size / P when that "
                   "is an integer and floor(size / P) + 2 otherwise; pass a smaller RoI or "
                   "spatial_scale, or a larger output_size")
    return geo


@dataclass(frozen=True)
class PSRoIParams:
    """The official parameters, checked: P = pooled_size, part_size (0 in the call means P),
    classes = offset.shape[1] / 2 (1 without offsets)."""

    output_dim: int
    group_size: int
    pooled_size: int
    part_size: int
    sample_per_part: int
    trans_std: float
    no_trans: bool
    classes: int


def check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim, group_size,
                                  pooled_size, part_size, sample_per_part, trans_std, no_trans,
                                  all_finite: Callable = numpy_all_finite):
    """The checks of deform_ps_roi_pool and ps_roi_pool, returning (geometry, PSRoIParams);
    work limits (:func:`check_roi_work`): sample_per_part <= MAX_SAMPLES_PER_AXIS, pooled_size
    <= MAX_POOLED, every RoI finite in feature-map pixels and the forward at most
    MAX_TOTAL_SAMPLES samples."""
    output_dim = check_positive_int(output_dim, "output_dim")
    group_size = check_positive_int(group_size, "group_size")
    pooled_size = check_at_most(check_positive_int(pooled_size, "pooled_size"), "pooled_size",
                                MAX_POOLED, "bins per axis, MAX_POOLED")
    part_size = check_positive_int(part_size, "part_size", minimum=0) or pooled_size
    sample_per_part = check_at_most(check_positive_int(sample_per_part, "sample_per_part"),
                                    "sample_per_part", MAX_SAMPLES_PER_AXIS,
                                    "samples per bin axis, MAX_SAMPLES_PER_AXIS")
    trans_std = check_finite_number(trans_std, "trans_std")
    geo = check_roi_input(input, rois, pooled_size, spatial_scale, all_finite)
    if geo.channels != output_dim * group_size * group_size:
        raise ValueError(f"input must have output_dim * group_size**2 = "
                         f"{output_dim * group_size * group_size} channels, got {geo.channels}")
    classes = 1
    if offset is not None:
        channels = offset.shape[1] if len(offset.shape) == 4 else 0
        if channels < 2 or channels % 2 or output_dim % (channels // 2):
            raise ValueError("offset must have shape (R, 2 * classes, part_size, part_size) with "
                             f"classes dividing output_dim = {output_dim}, got {tuple(offset.shape)}")
        classes = channels // 2
        check_bin_array(offset, "offset", geo, 2 * classes, (part_size, part_size),
                        "(R, 2 * classes, part_size, part_size)", all_finite)
    params = PSRoIParams(output_dim, group_size, pooled_size, part_size, sample_per_part,
                         trans_std, bool(no_trans) or offset is None, classes)
    check_roi_work(geo, output_dim, rois, spatial_scale,
                   lambda roi: official_roi(roi, spatial_scale)[1:],
                   lambda h, w: (sample_per_part, sample_per_part),
                   "every bin takes sample_per_part samples per axis")
    return geo, params


def check_modulation_given(mask) -> None:
    """modulated_deform_roi_pool requires its mask (deform_roi_align is the operator without)."""
    if mask is None:
        raise ValueError("mask must be given (R, 1, P_h, P_w); without it use deform_roi_align")


def check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio,
                         gamma, all_finite: Callable = numpy_all_finite,
                         position_sensitive: bool = False, aligned: bool = True):
    """The checks of every operator of :mod:`refdyn.roi_align_numpy` (``all_finite`` tests
    device arrays on the GPU backends); position-sensitive pooling needs C = C_out P_h P_w input
    channels.

    Work limits (:func:`check_roi_work`): sampling_ratio <= MAX_SAMPLES_PER_AXIS; every RoI
    finite in feature-map pixels and, with sampling_ratio <= 0, its adaptive ceil(h / P_h) and
    ceil(w / P_w) <= MAX_SAMPLES_PER_AXIS too (h and w by roi_align's ``aligned`` rule; the other
    operators are always aligned); the forward at most MAX_TOTAL_SAMPLES samples."""
    geo = check_roi_input(input, rois, output_size, spatial_scale, all_finite)
    bins = geo.pooled[0] * geo.pooled[1]
    if position_sensitive and geo.channels % bins:
        raise ValueError(f"input must have shape (N, C_out * P_h * P_w, H, W): a multiple of "
                         f"P_h * P_w = {bins} channels, got {tuple(input.shape)}")
    if isinstance(sampling_ratio, (bool, np.bool_)) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    check_at_most(sampling_ratio, "sampling_ratio", MAX_SAMPLES_PER_AXIS,
                  "samples per bin axis, MAX_SAMPLES_PER_AXIS")
    check_finite_number(gamma, "gamma")
    check_bin_array(offset, "offset", geo, 2, geo.pooled, "(R, 2, P_h, P_w)", all_finite)
    check_bin_array(mask, "mask", geo, 1, geo.pooled, "(R, 1, P_h, P_w)", all_finite)

    def samples(h, w):
        return (align_grid_size(h, geo.pooled[0], sampling_ratio),
                align_grid_size(w, geo.pooled[1], sampling_ratio))

    check_roi_work(geo, output_channels(geo, position_sensitive), rois, spatial_scale,
                   lambda roi: aligned_roi(roi, spatial_scale, aligned)[1:], samples,
                   "adaptive sampling (sampling_ratio <= 0) takes ceil(size / P) samples per "
                   "bin axis; pass sampling_ratio > 0, or a smaller RoI or spatial_scale")
    return geo
