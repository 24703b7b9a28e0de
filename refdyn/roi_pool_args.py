"""Argument checks and gradient records of the RoI pooling family (REFERENCE.md section 3).

Shared by :mod:`refdyn.roi_pooling` and :mod:`refdyn.roi_align_family` so that every operator of the
family accepts the same RoI layout and rejects bad arguments with the same messages:

    input  (N, C, H, W)
    rois   (R, 5)  rows [batch_index, x1, y1, x2, y2] in image coordinates (times spatial_scale
                   gives feature-map coordinates); batch_index an integer in [0, N)
    output (R, C_out, P_h, P_w)

RoIs get no gradient in any implementation (their coordinates enter through floor, ceil,
round and the adaptive grid size), so no backward returns one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ._checks import as_pair, check_finite, check_float_array, check_shape, numpy_all_finite


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
    """Validate input (N, C, H, W), rois (R, 5), output_size (int or pair) and spatial_scale."""
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
