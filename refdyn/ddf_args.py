"""Shapes, argument checks and the gradient record of the DDF operator.

Shared by the NumPy implementations in :mod:`refdyn.ddf_numpy` (and by any later GPU mirror), so that
all of them accept exactly the same arguments and reject bad ones with the same messages.
Layout of the official code (theFoxofSky/ddfnet; docs/conventions.md section 6):

    features        (N, C, H, W)
    channel_filter  (N, C, k, k)                      one k x k filter per sample and channel
    spatial_filter  (N, head * k * k, H_out, W_out)   one k x k filter per sample, head and pixel
    output          (N, C, H_out, W_out),  H_out = H // stride,  W_out = W // stride

k is odd.  Heads split the C channels into ``head`` consecutive groups of C / head channels;
group h uses spatial-filter channels h k^2 ... (h + 1) k^2 - 1; ``head`` follows from the shape.

The window of output (ph, pw) is centred on the input pixel (ph * stride, pw * stride); tap
(ky, kx) reads the input at (ph * stride + (ky - r) * dilation, pw * stride + (kx - r) * dilation)
with r = (k - 1) / 2, and zero outside the image.  A zero-padded strided convolution with these
centres has ceil(H / stride) output rows; the official code (and refdyn) keep H // stride, which
drops the last row when stride does not divide H.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .args import check_at_most, check_finite, check_float_array, check_positive_int, \
    check_shape, numpy_all_finite

#: The largest dilation: a C int, as every stride and dilation, so the farthest tap of any
#: kernel that fits in memory lies far from wrapping a 64-bit index (a dilation this large
#: already leaves only the centre tap inside any image that fits in memory).
MAX_DILATION = 2 ** 31 - 1

KERNEL_COMBINES = ("mul", "add")


@dataclass(frozen=True)
class DDFGeometry:
    """Every size of one DDF call, derived from the argument shapes."""

    batch: int
    channels: int
    height: int
    width: int
    kernel_size: int
    dilation: int
    stride: int
    head: int
    out_h: int
    out_w: int
    dtype: np.dtype
    kernel_combine: str

    @property
    def taps(self) -> int:
        """k * k, the number of taps of one filter."""
        return self.kernel_size * self.kernel_size

    @property
    def radius(self) -> int:
        """r = (k - 1) / 2: taps run from -r to r around the window centre (before dilation)."""
        return (self.kernel_size - 1) // 2

    @property
    def channels_per_head(self) -> int:
        return self.channels // self.head

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.out_h, self.out_w)


@dataclass
class DDFGrads:
    """Gradients of a scalar loss with respect to each array input of ``ddf``; each has the
    shape and dtype of its input."""

    grad_features: object
    grad_channel_filter: object
    grad_spatial_filter: object


def check_kernel_size(kernel_size) -> int:
    """An odd kernel size >= 1 (the window is centred on the output pixel)."""
    kernel_size = check_positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (the window is centred on the output pixel), "
                         f"got {kernel_size}")
    return kernel_size


def check_kernel_combine(kernel_combine) -> str:
    if kernel_combine not in KERNEL_COMBINES:
        raise ValueError(f"kernel_combine must be one of {KERNEL_COMBINES}, got {kernel_combine!r}")
    return kernel_combine


def check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
                   kernel_combine="mul", all_finite: Callable = numpy_all_finite) -> DDFGeometry:
    """Validate the arguments of ``ddf`` and return the call's geometry (``head`` from the
    spatial filter's shape: ``spatial_filter.shape[1] / k^2``)."""
    kernel_size = check_kernel_size(kernel_size)
    dilation = check_at_most(check_positive_int(dilation, "dilation"), "dilation", MAX_DILATION,
                             "a C int, MAX_DILATION")
    stride = check_positive_int(stride, "stride")
    check_kernel_combine(kernel_combine)

    dtype = check_float_array(features, "features", 4)
    check_float_array(channel_filter, "channel_filter", 4, dtype)
    check_float_array(spatial_filter, "spatial_filter", 4, dtype)
    batch, channels, height, width = (int(s) for s in features.shape)
    if channels < 1 or height < 1 or width < 1:
        raise ValueError("features must have shape (N, C, H, W) with C, H, W >= 1, "
                         f"got {tuple(features.shape)}")
    out_h, out_w = height // stride, width // stride
    if out_h < 1 or out_w < 1:
        raise ValueError(f"stride ({stride}) must not exceed the image size ({height} x {width}): "
                         "the output has H // stride x W // stride pixels")
    check_shape(channel_filter, "channel_filter", (batch, channels, kernel_size, kernel_size),
                "(N, C, k, k)")

    taps = kernel_size * kernel_size
    spatial_channels = int(spatial_filter.shape[1])
    if spatial_channels < taps or spatial_channels % taps:
        raise ValueError(f"spatial_filter.shape[1] must be head * k * k, a positive multiple of "
                         f"{taps}, got {spatial_channels}")
    head = spatial_channels // taps
    if channels % head:
        raise ValueError(f"channels ({channels}) must be divisible by the number of heads "
                         f"({head} = spatial_filter.shape[1] / (k * k))")
    check_shape(spatial_filter, "spatial_filter", (batch, head * taps, out_h, out_w),
                "(N, head * k * k, H // stride, W // stride)")
    check_finite(channel_filter, "channel_filter", all_finite)
    check_finite(spatial_filter, "spatial_filter", all_finite)
    return DDFGeometry(batch=batch, channels=channels, height=height, width=width,
                       kernel_size=kernel_size, dilation=dilation, stride=stride, head=head,
                       out_h=out_h, out_w=out_w, dtype=dtype, kernel_combine=kernel_combine)


def check_ddf_backward_args(grad_output, geometry: DDFGeometry) -> None:
    """Check ``grad_output`` against the forward geometry."""
    check_float_array(grad_output, "grad_output", 4, geometry.dtype)
    check_shape(grad_output, "grad_output", geometry.output_shape,
                "(N, C, H // stride, W // stride)")
