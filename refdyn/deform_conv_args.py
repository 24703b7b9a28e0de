"""Shapes, argument checks and the gradient record of deformable convolution.

Shared by the NumPy implementations in :mod:`refdyn.deform_conv_numpy` and by every GPU backend,
so that all of them accept exactly the same arguments and reject bad ones with the same
messages.  Layout (torchvision, mmcv, ONNX DeformConv, Paddle; docs/conventions.md section 2):

    input   (N, C_in, H, W)
    weight  (C_out, C_in / groups, kh, kw)
    bias    (C_out,)
    offset  (N, 2 * G * kh * kw, H_out, W_out)   G = offset groups; (dy, dx) pairs, tap-major
    mask    (N, G * kh * kw, H_out, W_out)
    H_out = floor((H + 2 pad_h - dil_h (kh - 1) - 1) / stride_h) + 1, likewise W_out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Optional

import numpy as np

from .args import as_pair, check_finite, check_float_array, check_shape, numpy_all_finite
from .bilinear_numpy import check_boundary, check_coord_grad


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one convolution-like call (deformable or active), from the argument shapes."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    groups: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_h: int
    out_w: int
    dtype: np.dtype
    has_bias: bool
    boundary: str = "zeros"

    @property
    def taps(self) -> int:
        """K = kh * kw, the number of kernel taps."""
        return self.kernel_h * self.kernel_w

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    def weight_matrices(self, weight):
        """The weight (C_out, C_in/groups, kh, kw), or an array of its shape such as its
        gradient, as one matrix per group: (groups, C_out/groups, C_in/groups K), columns in
        (c', k) order (a view; any array with ``reshape``: NumPy, CuPy, Numba)."""
        return weight.reshape(self.groups, self.out_per_group, self.in_per_group * self.taps)

    def group_matrices(self, array):
        """A C-contiguous (images, channels, ..., H_out, W_out) array as (images, groups,
        channels/groups * ..., H_out W_out): the matrix of each group of each image, whose
        rows match :meth:`weight_matrices` for (images, C_in, K, H_out, W_out) columns (a view)."""
        per_group = int(np.prod(array.shape[1:-2])) // self.groups   # no -1: empty batches
        return array.reshape(array.shape[0], self.groups, per_group, self.out_h * self.out_w)


@dataclass(frozen=True)
class DeformConvGeometry(ConvGeometry):
    """A :class:`ConvGeometry` with the offset groups G and whether a mask (DCNv2) is given."""

    offset_groups: int = 1
    has_mask: bool = False

    @property
    def in_per_offset_group(self) -> int:
        return self.in_channels // self.offset_groups


@dataclass
class DeformConvGrads:
    """Gradients of a scalar loss with respect to each input of ``deform_conv2d``.

    Each has the shape and dtype of its input; ``grad_bias`` is None without a bias and
    ``grad_mask`` is None without a mask (DCNv1).
    """

    grad_input: object
    grad_offset: object
    grad_weight: object
    grad_bias: Optional[object]
    grad_mask: Optional[object]


def check_conv_args(input, weight, bias=None, stride=1, padding=0, dilation=1,
                    boundary: str = "zeros") -> ConvGeometry:
    """Validate input, weight, bias and the hyper-parameters of a convolution; return its geometry.

    Groups are inferred from the shapes as torchvision does: ``groups = C_in / weight.shape[1]``.
    """
    check_boundary(boundary)
    stride_hw = as_pair(stride, "stride")
    padding_hw = as_pair(padding, "padding")
    dilation_hw = as_pair(dilation, "dilation")
    if min(stride_hw) < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if min(padding_hw) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    if min(dilation_hw) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")

    dtype = check_float_array(input, "input", 4)
    check_float_array(weight, "weight", 4, dtype)
    batch, in_channels, height, width = (int(s) for s in input.shape)
    out_channels, in_per_group, kernel_h, kernel_w = (int(s) for s in weight.shape)
    if in_channels < 1 or height < 1 or width < 1:
        raise ValueError("input must have shape (N, C_in, H, W) with C_in, H, W >= 1, "
                         f"got {tuple(input.shape)}")
    if in_per_group < 1 or kernel_h < 1 or kernel_w < 1:
        raise ValueError("weight must have shape (C_out, C_in / groups, kh, kw) with "
                         f"positive C_in / groups, kh, kw, got {tuple(weight.shape)}")
    if in_channels % in_per_group:
        raise ValueError(f"input channels ({in_channels}) must be divisible by weight.shape[1] "
                         f"({in_per_group}) = C_in / groups")
    groups = in_channels // in_per_group
    if out_channels < 1 or out_channels % groups:
        raise ValueError(f"weight.shape[0] (C_out = {out_channels}) must be a positive "
                         f"multiple of groups = {groups}")
    if bias is not None:
        check_float_array(bias, "bias", 1, dtype)
        check_shape(bias, "bias", (out_channels,), "(C_out,)")

    out_h = (height + 2 * padding_hw[0] - dilation_hw[0] * (kernel_h - 1) - 1) // stride_hw[0] + 1
    out_w = (width + 2 * padding_hw[1] - dilation_hw[1] * (kernel_w - 1) - 1) // stride_hw[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"the dilated kernel ({dilation_hw[0] * (kernel_h - 1) + 1} x "
            f"{dilation_hw[1] * (kernel_w - 1) + 1}) is larger than the padded input "
            f"({height + 2 * padding_hw[0]} x {width + 2 * padding_hw[1]})")
    return ConvGeometry(
        batch=batch, in_channels=in_channels, height=height, width=width,
        out_channels=out_channels, kernel_h=kernel_h, kernel_w=kernel_w, groups=groups,
        stride=stride_hw, padding=padding_hw, dilation=dilation_hw, out_h=out_h, out_w=out_w,
        dtype=dtype, has_bias=bias is not None, boundary=boundary)


def check_deform_conv2d_args(input, offset, weight, bias=None, stride=1, padding=0,
                             dilation=1, mask=None, boundary: str = "zeros",
                             all_finite: Callable = numpy_all_finite) -> DeformConvGeometry:
    """Validate the arguments of ``deform_conv2d`` and return the call's geometry.

    Beyond :func:`check_conv_args`: offset groups are inferred as torchvision does,
    ``G = offset.shape[1] / (2 kh kw)``; offset and mask must match the output size and be finite.
    """
    conv = check_conv_args(input, weight, bias, stride, padding, dilation, boundary)
    check_float_array(offset, "offset", 4, conv.dtype)
    taps = conv.taps
    offset_channels = int(offset.shape[1])
    if offset_channels < 2 * taps or offset_channels % (2 * taps):
        raise ValueError(f"offset.shape[1] must be 2 * offset_groups * kh * kw, a positive "
                         f"multiple of {2 * taps}, got {offset_channels}")
    offset_groups = offset_channels // (2 * taps)
    if conv.in_channels % offset_groups:
        raise ValueError(f"input channels ({conv.in_channels}) must be divisible by offset "
                         f"groups ({offset_groups} = offset.shape[1] / (2 kh kw))")
    check_shape(offset, "offset", (conv.batch, 2 * offset_groups * taps, conv.out_h, conv.out_w),
                "(N, 2 * offset_groups * kh * kw, H_out, W_out)")
    check_finite(offset, "offset", all_finite)
    if mask is not None:
        check_float_array(mask, "mask", 4, conv.dtype)
        check_shape(mask, "mask", (conv.batch, offset_groups * taps, conv.out_h, conv.out_w),
                    "(N, offset_groups * kh * kw, H_out, W_out)")
        check_finite(mask, "mask", all_finite)
    return DeformConvGeometry(**{field.name: getattr(conv, field.name) for field in fields(conv)},
                              offset_groups=offset_groups, has_mask=mask is not None)


def check_deform_conv2d_backward_args(grad_output, geometry: DeformConvGeometry,
                                      coord_grad: str) -> None:
    """Check ``grad_output`` against the forward geometry and the ``coord_grad`` rule name."""
    check_float_array(grad_output, "grad_output", 4, geometry.dtype)
    check_shape(grad_output, "grad_output", geometry.output_shape, "(N, C_out, H_out, W_out)")
    check_coord_grad(coord_grad)

