"""Multiply-adds and parameter counts of DDF against convolutions and full dynamic filters.

The cost claim of DDF (Zhou et al., CVPR 2021): decoupling the depth-wise dynamic filter "limits
computational costs to the same level as depth-wise convolution", and the DDF block has fewer
parameters than the standard convolution it replaces (sigma = 0.2, k = 3, C = 256).

Counting convention (the one behind the "FLOPs" of ResNet-style tables): one multiply-add per
product, whether or not it is accumulated; additions alone are not counted (the global average
pool's sums, the means of FN, the sum D^sp + D^ch of ``kernel_combine="add"``).  Every tap
counts, including taps that read the zero padding, as a dense kernel computes them.  Per piece:

    convolution           N H_out W_out C_out (C_in / groups) k^2     (depth-wise: groups = C)
    DDF operation         N H_out W_out C k^2 * 2 for "mul" (D^sp D^ch, then times F), * 1 for "add"
    spatial branch        1 x 1 convolution N H_out W_out (head k^2) C, plus FN: 2 per filter value
                          (the square of the variance, the scaling by gain / (k (delta + eps)))
    channel branch        N (C hidden + hidden C k^2) for the two FC layers, N C for the
                          pooling's division, FN: 3 per filter value (the square, 1 / (delta + eps),
                          the learned scale)
    full dynamic filter   a 1 x 1 convolution predicting C_out C_in k^2 values per pixel from C_in
                          channels, N H_out W_out C_in (C_out C_in k^2), then applying them,
                          N H_out W_out C_out C_in k^2
"""

from __future__ import annotations

from dataclasses import dataclass

from .ddf_args import check_kernel_combine
from .ddf_block import SE_RATIO


@dataclass(frozen=True)
class DDFCost:
    """Multiply-adds of one DDF block, by piece."""

    operator: int
    spatial_branch: int
    channel_branch: int

    @property
    def total(self) -> int:
        return self.operator + self.spatial_branch + self.channel_branch


def conv2d_multiply_adds(batch, in_channels, out_channels, out_h, out_w, kernel_size, groups=1):
    """A (grouped) convolution: every output value sums C_in / groups * k^2 products."""
    return batch * out_h * out_w * out_channels * (in_channels // groups) * kernel_size ** 2


def depthwise_conv2d_multiply_adds(batch, channels, out_h, out_w, kernel_size):
    """A depth-wise convolution: one k x k filter per channel (groups = C)."""
    return conv2d_multiply_adds(batch, channels, channels, out_h, out_w, kernel_size, channels)


def hidden_units(channels, se_ratio=SE_RATIO) -> int:
    """int(se_ratio * C), the width of the channel branch (as the official code rounds it)."""
    return int(se_ratio * channels)


def ddf_multiply_adds(batch, channels, height, width, kernel_size, stride=1, head=1,
                      kernel_combine="mul", se_ratio=SE_RATIO) -> DDFCost:
    """Multiply-adds of a DDF block (operator and both branches) on (N, C, H, W) features."""
    check_kernel_combine(kernel_combine)
    taps = kernel_size ** 2
    pixels = (height // stride) * (width // stride)
    hidden = hidden_units(channels, se_ratio)
    products_per_tap = 2 if kernel_combine == "mul" else 1
    spatial_values = batch * pixels * head * taps
    channel_values = batch * channels * taps
    return DDFCost(
        operator=batch * pixels * channels * taps * products_per_tap,
        spatial_branch=spatial_values * channels + 2 * spatial_values,
        channel_branch=(batch * (channels * hidden + hidden * channels * taps)
                        + batch * channels + 3 * channel_values))


def dynamic_filter_multiply_adds(batch, in_channels, out_channels, out_h, out_w, kernel_size):
    """A full dynamic filter (a C_out x C_in x k x k filter per pixel predicted by a 1 x 1
    convolution): predicting the filters plus applying them."""
    filter_size = out_channels * in_channels * kernel_size ** 2
    pixels = batch * out_h * out_w
    return pixels * in_channels * filter_size + pixels * filter_size


def conv2d_parameters(in_channels, out_channels, kernel_size, groups=1):
    """Weights of a (grouped) convolution without bias."""
    return out_channels * (in_channels // groups) * kernel_size ** 2


def dynamic_filter_parameters(in_channels, out_channels, kernel_size):
    """The 1 x 1 convolution (with bias) that predicts a full C_out x C_in x k x k filter."""
    filter_size = out_channels * in_channels * kernel_size ** 2
    return in_channels * filter_size + filter_size


def ddf_parameters(channels, kernel_size, head=1, se_ratio=SE_RATIO):
    """Learned parameters of a DDF block (the arrays of :class:`refdyn.ddf_block.BranchParams`):
    the spatial 1 x 1 convolution with bias, the two FC layers with biases, the channel-FN scale."""
    taps = kernel_size ** 2
    hidden = hidden_units(channels, se_ratio)
    return ((channels + 1) * head * taps + (channels + 1) * hidden
            + (hidden + 1) * channels * taps + channels * taps)
