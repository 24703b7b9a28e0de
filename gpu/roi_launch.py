"""The launch sequence of the CUDA C kernels in ``roi.cu`` (the RoI pooling family,
docs/conventions.md section 3), run by :mod:`refdyn.gpu.roi_ops` on both CUDA C backends
(:mod:`refdyn.gpu.cupy`, :mod:`refdyn.gpu.host`), which pass their array module ``xp`` and
their ``launch(kernel_name, total_threads, args)`` first.

:class:`RoICall` describes one checked call of any RoI operator on every GPU backend (the
Numba kernels take its :meth:`RoICall.geometry_values` too): :func:`align_call`,
:func:`eq5_call` and :func:`official_call` build it from the NumPy reference's checks.
Arrays reach this module validated, C-contiguous and in ``xp``.  Every gradient is a gather
(roi.cu), so there is no atomic path: the results are the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from refdyn.args import numpy_all_finite
from refdyn.bilinear_numpy import check_coord_grad
from refdyn.roi_args import RoIGeometry, RoIPoolGrads, check_deform_ps_roi_pool_args, \
    check_deform_roi_pool_args, check_pooled_grad_output, check_roi_align_args, output_channels

from . import cuda_c

#: The fields of ``struct RoIGeometry`` in roi.cu, in order (17 int64 values).
GEOMETRY_FIELDS = ("batch", "channels", "height", "width", "rois", "pooled_h", "pooled_w",
                   "out_channels", "kind", "sampling_ratio", "aligned", "group_h", "group_w",
                   "classes", "cells_h", "cells_w", "mmcv_grad")

#: ``enum RoIKind`` in roi.cu.
ROI_KINDS = {"align": 0, "eq5": 1, "official": 2}


#: The exported name of kernel ``name`` of roi.cu for a dtype (cuda_c.kernel_name).
kernel_name = partial(cuda_c.kernel_name, "roi")


@dataclass(frozen=True)
class RoICall:
    """One checked call: the reference's geometry, the kernel's kind and parameters.

    sampling_ratio is sample_per_part for the official kind; groups the position-sensitive
    score-map groups per output channel (1 x 1, the bins for ps_roi_align, group_size x
    group_size for the official kind); classes the offset classes (1 except for the official
    kind); cells the offset grid (the bins, or part_size x part_size);
    gamma is trans_std for the official kind; no_trans (official) ignores the offset;
    coord_grad the offset-gradient rule of deform_roi_align (refdyn.roi_align_numpy).
    """

    geo: RoIGeometry
    kind: str
    out_channels: int
    spatial_scale: float
    gamma: float
    sampling_ratio: int = 0
    aligned: bool = True
    groups: tuple[int, int] = (1, 1)
    classes: int = 1
    cells: tuple[int, int] = (0, 0)
    no_trans: bool = False
    coord_grad: str = "torchvision"

    @property
    def offset_cells(self) -> tuple[int, int]:
        """The offset grid: part_size x part_size (official), else the bins."""
        return self.cells if self.kind == "official" else self.geo.pooled

    def geometry_values(self) -> tuple[int, ...]:
        """The fields of ``struct RoIGeometry`` (GEOMETRY_FIELDS), also the Numba kernels'."""
        geo = self.geo
        return (geo.batch, geo.channels, geo.height, geo.width, geo.rois, *geo.pooled,
                self.out_channels, ROI_KINDS[self.kind], self.sampling_ratio, int(self.aligned),
                *self.groups, self.classes, *self.offset_cells, int(self.coord_grad == "mmcv"))

    def scales(self) -> tuple[float, float]:
        """The fields of ``struct RoIScales``: spatial_scale, gamma."""
        return self.spatial_scale, self.gamma

    def geometry_array(self, xp):
        """``struct RoIGeometry`` as an int64 array of ``xp``."""
        return xp.asarray(np.array(self.geometry_values(), dtype=np.int64))

    def scales_array(self, xp):
        """``struct RoIScales`` as a float64 array of ``xp``."""
        return xp.asarray(np.array(self.scales(), dtype=np.float64))

# The checks of the NumPy reference, then the call.  ``rois`` must be a host (NumPy) array for
# the batch-index check; the backends pass a host copy of device RoIs (R x 5 values).

def align_call(input, rois, offset, mask, output_size, spatial_scale, sampling_ratio, aligned,
               gamma, all_finite=numpy_all_finite, position_sensitive=False,
               coord_grad="torchvision") -> RoICall:
    """roi_align (gamma 0, no offsets), ps_roi_align (also always aligned, one score-map group
    per bin) and deform_roi_align (always aligned; its backward takes ``coord_grad``)."""
    geo = check_roi_align_args(input, rois, offset, mask, output_size, spatial_scale,
                               sampling_ratio, gamma, all_finite, position_sensitive,
                               aligned=bool(aligned))
    check_coord_grad(coord_grad)
    return RoICall(geo, "align", output_channels(geo, position_sensitive), float(spatial_scale),
                   float(gamma), int(sampling_ratio), bool(aligned),
                   geo.pooled if position_sensitive else (1, 1), coord_grad=coord_grad)


def eq5_call(input, rois, offset, output_size, spatial_scale, gamma,
             all_finite=numpy_all_finite) -> RoICall:
    """deform_roi_pool (DCNv1 Eq. 5-6)."""
    geo = check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, gamma,
                                     all_finite)
    return RoICall(geo, "eq5", geo.channels, float(spatial_scale), float(gamma))


def official_call(input, rois, offset, spatial_scale, output_dim, group_size, pooled_size,
                  part_size, sample_per_part, trans_std, no_trans,
                  all_finite=numpy_all_finite) -> RoICall:
    """deform_ps_roi_pool (the official DCN rules)."""
    geo, params = check_deform_ps_roi_pool_args(input, rois, offset, spatial_scale, output_dim,
                                                group_size, pooled_size, part_size,
                                                sample_per_part, trans_std, no_trans, all_finite)
    return RoICall(geo, "official", params.output_dim, float(spatial_scale),
                   params.trans_std, params.sample_per_part, True,
                   (params.group_size, params.group_size), params.classes,
                   (params.part_size, params.part_size), params.no_trans)


def check_backward(call: RoICall, grad_output) -> None:
    """grad_output must have the forward's output shape and dtype."""
    check_pooled_grad_output(grad_output, call.geo, call.out_channels)


def forward(xp, launch, call: RoICall, input, rois, offset, mask):
    """The pooled bins (R, C_out, P_h, P_w): one thread per output element (none without RoIs
    or channels); the official ``no_trans`` ignores the offset."""
    geo = call.geo
    output = xp.empty((geo.rois, call.out_channels) + geo.pooled, dtype=geo.dtype)
    if output.size == 0:
        return output
    moving = None if call.no_trans else offset
    launch(kernel_name("forward", call.geo.dtype), output.size,
           [call.geometry_array(xp), call.scales_array(xp), input, rois, moving, mask, output])
    return output


def backward(xp, launch, call: RoICall, grad_output, input, rois, offset, mask) -> RoIPoolGrads:
    """Every gradient (roi.cu): grad_input by one gather thread per input element; the
    offset and mask gradients by one thread per (RoI, class, offset cell); a zero offset
    gradient with the official ``no_trans``.  Empty RoI lists and inputs launch nothing."""
    geo = call.geo
    grads = RoIPoolGrads(
        grad_input=xp.zeros(input.shape, dtype=geo.dtype),
        grad_offset=None if offset is None else xp.zeros(offset.shape, dtype=geo.dtype),
        grad_mask=None if mask is None else xp.zeros(mask.shape, dtype=geo.dtype))
    if geo.rois == 0 or input.size == 0:
        return grads
    moving = None if call.no_trans else offset
    geometry, scales = call.geometry_array(xp), call.scales_array(xp)
    launch(kernel_name("grad_input", geo.dtype), input.size,
           [geometry, scales, rois, moving, mask, grad_output, grads.grad_input])
    if moving is not None or mask is not None:
        cells = call.offset_cells
        launch(kernel_name("grad_offset_mask", geo.dtype),
               geo.rois * call.classes * cells[0] * cells[1],
               [geometry, scales, input, rois, moving, mask, grad_output,
                None if moving is None else grads.grad_offset, grads.grad_mask])
    return grads
