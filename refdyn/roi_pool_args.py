"""Argument checks and gradient records of the RoI pooling family (REFERENCE.md section 3).

Shared by :mod:`refdyn.roi_pooling` and :mod:`refdyn.roi_align_family` so that every operator of the
family accepts the same RoI layout and rejects bad arguments with the same messages:

    input  (N, C, H, W)
    rois   (R, 5)  rows [batch_index, x1, y1, x2, y2] in image coordinates (times spatial_scale
                   gives feature-map coordinates); batch_index an integer in [0, N)
    output (R, C_out, P_h, P_w)

RoIs get no gradient in any implementation (their coordinates enter through floor, ceil,
round and the adaptive grid size), so no backward returns one.

Work limits (docs/roi_pooling.md, "Limits").  Every backend (NumPy, the CUDA C kernels through
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

from ._checks import as_pair, check_at_most, check_finite, check_float_array, check_shape, \
    numpy_all_finite

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


def check_grad_output(grad_output, geo: RoIGeometry, out_channels: int) -> None:
    """grad_output must have the forward's output shape (R, C_out, P_h, P_w) and dtype."""
    check_float_array(grad_output, "grad_output", 4, geo.dtype)
    check_shape(grad_output, "grad_output", (geo.rois, out_channels) + geo.pooled,
                "(R, C_out, P_h, P_w)")


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An int (not bool) >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_finite_number(value, name: str) -> float:
    """A finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_roi_work(geo: RoIGeometry, out_channels: int, rois, spatial_scale, frame: Callable,
                   samples: Callable, rule: str) -> None:
    """Bound the sampling work of one call by its RoIs (docs/roi_pooling.md, "Limits").

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
