"""The DDF filter branches, the DDF block and DDF-Up, forward and backward (DDF, Zhou et al.,
CVPR 2021).

The filters of a DDF block are predicted from features by two attention-style branches:

- spatial branch: a 1 x 1 convolution with stride s to head * k * k channels, then the spatial
  FN (no learned parameters, scale gain / k): one k x k filter per head and output pixel;
- channel branch: global average pooling, a fully connected layer to int(se_ratio * C) units
  (se_ratio 0.2), ReLU, a fully connected layer to C * k * k, then the channel FN (learned scale
  of shape C * k * k): one k x k filter per channel.

:func:`ddf_block` applies :func:`refdyn.ddf_numpy.ddf` with the two predicted filters (the official
``DDFPack``).  :func:`ddf_up` is the paper's DDF-Up: scale^2 independent (spatial, channel)
branch pairs, the spatial ones reading guidance features; the scale^2 stride-1 DDF outputs are
stacked and pixel-shuffled into an image scale times larger.

Where refdyn departs from the official code, and why:

- The strided 1 x 1 convolution of the spatial branch reads the pixels (ph * s, pw * s) with
  ph < H // s, the centres of the operator's windows.  torch's strided convolution gives
  ceil(H / s) rows, which the official ``DDFPack`` reshapes to H // s: it fails (a reshape error
  or ``ddf``'s shape assertion) when s does not divide H or W; refdyn drops the last row as the
  operator does.
- ``int(se_ratio * C)`` hidden units: the official code builds an empty layer when this is 0;
  :func:`init_branch_params` rejects it (raise ``se_ratio``).
- The official ``DDFUpPack`` at HEAD is not what the paper describes and does not run as
  written: it passes ``head`` into ``ddf``'s ``kernel_combine`` argument (and
  ``kernel_combine`` into ``version``), never uses ``joint_channels`` to size the spatial
  branch (it reads ``in_channels`` channels from the guidance), and pads its extra depth-wise
  convolution by ``kernel_size // 2`` instead of ``dw_kernel_size // 2``.  refdyn implements
  the paper's design (1 x 1 spatial branch on the guidance, stride 1, no extra convolution) and
  reproduces none of these.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Sequence

import numpy as np

from .args import check_float_array, check_shape
from .ddf_numpy import ddf, ddf_backward
from .args import check_positive_int
from .ddf_args import check_kernel_combine, check_kernel_size
from .ddf_filter_norm_numpy import channel_filter_norm, channel_filter_norm_backward, \
    init_channel_scale, nonlinearity_gain, spatial_filter_norm, spatial_filter_norm_backward

#: The official channel-branch reduction ratio.
SE_RATIO = 0.2


@dataclass
class BranchParams:
    """The learned parameters of one (spatial, channel) branch pair, with k the kernel size:

    spatial_weight (head * k * k, C_guide), spatial_bias (head * k * k,): the 1 x 1 convolution;
    squeeze_weight (hidden, C), squeeze_bias (hidden,): the first fully connected layer;
    excite_weight (C * k * k, hidden), excite_bias (C * k * k,): the second one;
    channel_scale (C * k * k,): the learned alpha of the channel FN.

    A gradient of the same type holds dL/d each parameter.
    """

    spatial_weight: np.ndarray
    spatial_bias: np.ndarray
    squeeze_weight: np.ndarray
    squeeze_bias: np.ndarray
    excite_weight: np.ndarray
    excite_bias: np.ndarray
    channel_scale: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters by name (for gradient checks and optimisers)."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


@dataclass
class DDFBlockGrads:
    """Gradients through :func:`ddf_block`: the features and every branch parameter."""

    grad_features: np.ndarray
    grad_params: BranchParams


@dataclass
class DDFUpGrads:
    """Gradients through :func:`ddf_up`: features, guidance (None when the features were the
    guidance: their gradient is then in ``grad_features``) and one :class:`BranchParams` of
    gradients per branch pair."""

    grad_features: np.ndarray
    grad_guidance: Optional[np.ndarray]
    grad_branches: list[BranchParams]


def init_branch_params(channels, kernel_size, head=1, guide_channels=None, se_ratio=SE_RATIO,
                       nonlinearity="relu", rng=None, dtype=np.float64) -> BranchParams:
    """Random parameters of one branch pair, initialised as the official modules are: weights
    and biases of the 1 x 1 convolutions ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's default),
    the channel-FN scale randn * gain / k.

    guide_channels: channels the spatial branch reads (default ``channels``).
    """
    kernel_size = check_kernel_size(kernel_size)
    rng = np.random.default_rng() if rng is None else rng
    guide_channels = channels if guide_channels is None else guide_channels
    hidden = int(se_ratio * channels)
    if hidden < 1:
        raise ValueError(f"the channel branch needs int(se_ratio * channels) >= 1 hidden units, "
                         f"got int({se_ratio} * {channels}) = {hidden}; raise se_ratio")
    taps = kernel_size * kernel_size

    def uniform(shape, fan_in):
        bound = 1 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, shape).astype(dtype)

    return BranchParams(
        spatial_weight=uniform((head * taps, guide_channels), guide_channels),
        spatial_bias=uniform(head * taps, guide_channels),
        squeeze_weight=uniform((hidden, channels), channels),
        squeeze_bias=uniform(hidden, channels),
        excite_weight=uniform((channels * taps, hidden), hidden),
        excite_bias=uniform(channels * taps, hidden),
        channel_scale=init_channel_scale(channels, kernel_size, nonlinearity, rng, dtype))


def _check_branch_params(params: BranchParams, features, guidance, kernel_size) -> None:
    """The parameter shapes against the features (N, C, H, W), guidance (N, C_guide, H, W), k."""
    dtype = np.dtype(features.dtype)
    for name, value in params.arrays().items():
        check_float_array(value, name, 2 if name.endswith("weight") else 1, dtype)
    channels, guide_channels = int(features.shape[1]), int(guidance.shape[1])
    taps = kernel_size * kernel_size
    spatial_channels = int(params.spatial_weight.shape[0])
    if spatial_channels < taps or spatial_channels % taps:
        raise ValueError(f"spatial_weight must have shape (head * k * k, C_guide) with head >= 1 "
                         f"and k * k = {taps}, got {tuple(params.spatial_weight.shape)}")
    hidden = int(params.squeeze_weight.shape[0])
    check_shape(params.spatial_weight, "spatial_weight", (spatial_channels, guide_channels),
                "(head * k * k, C_guide)")
    check_shape(params.spatial_bias, "spatial_bias", (spatial_channels,), "(head * k * k,)")
    check_shape(params.squeeze_weight, "squeeze_weight", (hidden, channels), "(hidden, C)")
    check_shape(params.squeeze_bias, "squeeze_bias", (hidden,), "(hidden,)")
    check_shape(params.excite_weight, "excite_weight", (channels * taps, hidden),
                "(C * k * k, hidden)")
    check_shape(params.excite_bias, "excite_bias", (channels * taps,), "(C * k * k,)")
    check_shape(params.channel_scale, "channel_scale", (channels * taps,), "(C * k * k,)")


# ---------------------------------------------------------------------------------------------
# The two branches
# ---------------------------------------------------------------------------------------------


def _window_centres(guidance, stride):
    """The guidance at the window centres (ph s, pw s), ph < H // s: (N, C_guide, H_out, W_out)."""
    height, width = guidance.shape[2:]
    return guidance[:, :, ::stride, ::stride][:, :, :height // stride, :width // stride]


def _spatial_raw(guidance, params: BranchParams, stride):
    """(guidance at the window centres, the 1 x 1 convolution of it): the spatial filter
    before FN, (N, head * k * k, H // s, W // s)."""
    centres = _window_centres(guidance, stride)
    raw = (np.einsum("oc,nchw->nohw", params.spatial_weight, centres)
           + params.spatial_bias[None, :, None, None])
    return centres, raw


def spatial_branch(guidance, params: BranchParams, kernel_size, stride=1, nonlinearity="relu"):
    """The spatial filter (N, head * k * k, H // s, W // s): a 1 x 1 convolution of the guidance
    at the window centres, then the spatial FN."""
    _, raw = _spatial_raw(guidance, params, stride)
    return spatial_filter_norm(raw, kernel_size, nonlinearity)


def spatial_branch_backward(grad_spatial_filter, guidance, params: BranchParams, kernel_size,
                            stride=1, nonlinearity="relu"):
    """(dL/d guidance, dL/d spatial_weight, dL/d spatial_bias) through :func:`spatial_branch`."""
    centres, raw = _spatial_raw(guidance, params, stride)
    grad_raw = spatial_filter_norm_backward(grad_spatial_filter, raw, kernel_size, nonlinearity)
    grad_guidance = np.zeros_like(guidance)
    out_h, out_w = centres.shape[2:]
    grad_guidance[:, :, :out_h * stride:stride, :out_w * stride:stride] = np.einsum(
        "oc,nohw->nchw", params.spatial_weight, grad_raw)
    return (grad_guidance, np.einsum("nohw,nchw->oc", grad_raw, centres),
            grad_raw.sum(axis=(0, 2, 3)))


class _ChannelBranch:
    """The channel branch's intermediate values: pooled (N, C), hidden pre-activation and
    activation (N, hidden), raw filter (N, C * k * k)."""

    def __init__(self, features, params: BranchParams):
        self.pooled = features.mean(axis=(2, 3))                              # GAP
        self.pre_activation = self.pooled @ params.squeeze_weight.T + params.squeeze_bias
        self.hidden = np.maximum(self.pre_activation, 0)                       # ReLU
        self.raw = self.hidden @ params.excite_weight.T + params.excite_bias


def channel_branch(features, params: BranchParams, kernel_size):
    """The channel filter (N, C, k, k): GAP, FC, ReLU, FC, then the channel FN."""
    return channel_filter_norm(_ChannelBranch(features, params).raw, params.channel_scale,
                               kernel_size)


def channel_branch_backward(grad_channel_filter, features, params: BranchParams, kernel_size):
    """(dL/d features, {parameter name: gradient}) through :func:`channel_branch` (the ReLU's
    derivative at 0 is taken as 0)."""
    values = _ChannelBranch(features, params)
    grad_raw, grad_scale = channel_filter_norm_backward(grad_channel_filter, values.raw,
                                                        params.channel_scale, kernel_size)
    grad_hidden = grad_raw @ params.excite_weight
    grad_pre = grad_hidden * (values.pre_activation > 0)
    grad_pooled = grad_pre @ params.squeeze_weight
    height, width = features.shape[2:]
    grad_features = np.broadcast_to((grad_pooled / (height * width))[:, :, None, None],
                                    features.shape).astype(features.dtype)
    return grad_features, {
        "squeeze_weight": grad_pre.T @ values.pooled, "squeeze_bias": grad_pre.sum(axis=0),
        "excite_weight": grad_raw.T @ values.hidden, "excite_bias": grad_raw.sum(axis=0),
        "channel_scale": grad_scale}


# ---------------------------------------------------------------------------------------------
# One branch pair with the operator: the DDF block and each term of DDF-Up
# ---------------------------------------------------------------------------------------------


def _check_block_args(features, guidance, params, kernel_size, dilation, stride, kernel_combine,
                      nonlinearity):
    """Shared checks of :func:`ddf_block` and :func:`ddf_up` (before the branches run; the
    operator checks the rest); returns the kernel size."""
    kernel_size = check_kernel_size(kernel_size)
    check_positive_int(dilation, "dilation")
    check_positive_int(stride, "stride")
    check_kernel_combine(kernel_combine)
    nonlinearity_gain(nonlinearity)
    dtype = check_float_array(features, "features", 4)
    check_float_array(guidance, "guidance", 4, dtype)
    if guidance.shape[0] != features.shape[0] or guidance.shape[2:] != features.shape[2:]:
        raise ValueError(f"guidance must have shape (N, C_guide, H, W) with the features' N, H, W "
                         f"{features.shape[0], *features.shape[2:]}, got {tuple(guidance.shape)}")
    _check_branch_params(params, features, guidance, kernel_size)
    return kernel_size


def _filters(features, guidance, params, kernel_size, stride, nonlinearity):
    """(channel filter, spatial filter) predicted by one branch pair."""
    return (channel_branch(features, params, kernel_size),
            spatial_branch(guidance, params, kernel_size, stride, nonlinearity))


def _filtered(features, guidance, params, kernel_size, dilation, stride, kernel_combine,
              nonlinearity):
    """DDF of the features with the filters one branch pair predicts."""
    channel_filter, spatial_filter = _filters(features, guidance, params, kernel_size, stride,
                                              nonlinearity)
    return ddf(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
               kernel_combine)


def _filtered_backward(grad_output, features, guidance, params, kernel_size, dilation, stride,
                       kernel_combine, nonlinearity):
    """(dL/d features, dL/d guidance, parameter gradients) through :func:`_filtered`: the
    operator's gradients, then each filter's gradient back through its branch."""
    channel_filter, spatial_filter = _filters(features, guidance, params, kernel_size, stride,
                                              nonlinearity)
    operator = ddf_backward(grad_output, features, channel_filter, spatial_filter, kernel_size,
                            dilation, stride, kernel_combine)
    grad_guidance, grad_spatial_weight, grad_spatial_bias = spatial_branch_backward(
        operator.grad_spatial_filter, guidance, params, kernel_size, stride, nonlinearity)
    grad_from_channel, channel_grads = channel_branch_backward(
        operator.grad_channel_filter, features, params, kernel_size)
    grad_params = BranchParams(spatial_weight=grad_spatial_weight, spatial_bias=grad_spatial_bias,
                               **channel_grads)
    return operator.grad_features + grad_from_channel, grad_guidance, grad_params


def ddf_block(features, params: BranchParams, kernel_size=3, dilation=1, stride=1,
              kernel_combine="mul", nonlinearity="relu"):
    """The DDF block (the official ``DDFPack``): both filters predicted from the features.

    features (N, C, H, W); params: one :class:`BranchParams` (head from spatial_weight's shape).
    Returns (N, C, H // stride, W // stride).
    """
    kernel_size = _check_block_args(features, features, params, kernel_size, dilation, stride,
                                    kernel_combine, nonlinearity)
    return _filtered(features, features, params, kernel_size, dilation, stride, kernel_combine,
                     nonlinearity)


def ddf_block_backward(grad_output, features, params: BranchParams, kernel_size=3, dilation=1,
                       stride=1, kernel_combine="mul", nonlinearity="relu") -> DDFBlockGrads:
    """Gradients through :func:`ddf_block`: through the operator, and through both branches to
    their parameters and back to the features they read."""
    kernel_size = _check_block_args(features, features, params, kernel_size, dilation, stride,
                                    kernel_combine, nonlinearity)
    grad_direct, grad_guidance, grad_params = _filtered_backward(
        grad_output, features, features, params, kernel_size, dilation, stride, kernel_combine,
        nonlinearity)
    return DDFBlockGrads(grad_features=grad_direct + grad_guidance, grad_params=grad_params)


# ---------------------------------------------------------------------------------------------
# DDF-Up
# ---------------------------------------------------------------------------------------------


def pixel_shuffle(stacked, scale):
    """(N, C, scale^2, H, W) -> (N, C, scale H, scale W): term t = a * scale + b fills the pixels
    (scale y + a, scale x + b) (torch ``pixel_shuffle`` of the (N, C * scale^2, H, W) stack)."""
    batch, channels, _, height, width = stacked.shape
    grid = stacked.reshape(batch, channels, scale, scale, height, width)
    return grid.transpose(0, 1, 4, 2, 5, 3).reshape(batch, channels, scale * height, scale * width)


def pixel_unshuffle(image, scale):
    """The inverse (and the adjoint) of :func:`pixel_shuffle`."""
    batch, channels, height, width = image.shape
    grid = image.reshape(batch, channels, height // scale, scale, width // scale, scale)
    return grid.transpose(0, 1, 3, 5, 2, 4).reshape(batch, channels, scale * scale,
                                                    height // scale, width // scale)


def _check_up_args(features, guidance, scale, branches, kernel_size, dilation, kernel_combine,
                   nonlinearity):
    scale = check_positive_int(scale, "scale")
    if len(branches) != scale * scale:
        raise ValueError(f"ddf_up needs scale^2 = {scale * scale} branch pairs, "
                         f"got {len(branches)}")
    guidance = features if guidance is None else guidance
    for params in branches:
        kernel_size = _check_block_args(features, guidance, params, kernel_size, dilation, 1,
                                        kernel_combine, nonlinearity)
    return scale, guidance, kernel_size


def ddf_up(features, guidance, scale, branches: Sequence[BranchParams], kernel_size=3,
           dilation=1, kernel_combine="mul", nonlinearity="linear"):
    """DDF-Up (Zhou et al., CVPR 2021): upsample the features by ``scale`` with scale^2 stride-1
    DDFs.

    features (N, C, H, W); guidance (N, C_guide, H, W) on the same grid, read by the spatial
    branches (None: the features guide themselves); branches: scale^2 :class:`BranchParams`,
    term t = a * scale + b producing the output pixels (scale y + a, scale x + b).
    nonlinearity: the FN gain ("linear", the official DDFUpPack default, or "relu").
    Returns (N, C, scale H, scale W).
    """
    scale, guidance, kernel_size = _check_up_args(features, guidance, scale, branches,
                                                  kernel_size, dilation, kernel_combine,
                                                  nonlinearity)
    terms = [_filtered(features, guidance, params, kernel_size, dilation, 1, kernel_combine,
                       nonlinearity) for params in branches]
    return pixel_shuffle(np.stack(terms, axis=2), scale)


def ddf_up_backward(grad_output, features, guidance, scale, branches: Sequence[BranchParams],
                    kernel_size=3, dilation=1, kernel_combine="mul",
                    nonlinearity="linear") -> DDFUpGrads:
    """Gradients through :func:`ddf_up`: un-shuffle grad_output into the scale^2 terms and sum
    each term's gradients through its operator and branch pair."""
    guidance_given = guidance is not None
    scale, guidance, kernel_size = _check_up_args(features, guidance, scale, branches,
                                                  kernel_size, dilation, kernel_combine,
                                                  nonlinearity)
    check_float_array(grad_output, "grad_output", 4, np.dtype(features.dtype))
    batch, channels, height, width = features.shape
    check_shape(grad_output, "grad_output", (batch, channels, scale * height, scale * width),
                "(N, C, scale H, scale W)")
    grad_terms = pixel_unshuffle(grad_output, scale)
    grad_features = np.zeros_like(features)
    grad_guidance = np.zeros_like(guidance)
    grad_branches = []
    for t, params in enumerate(branches):
        grad_direct, grad_guide, grad_params = _filtered_backward(
            grad_terms[:, :, t], features, guidance, params, kernel_size,
            dilation, 1, kernel_combine, nonlinearity)
        grad_features += grad_direct
        grad_guidance += grad_guide
        grad_branches.append(grad_params)
    if not guidance_given:
        return DDFUpGrads(grad_features + grad_guidance, None, grad_branches)
    return DDFUpGrads(grad_features, grad_guidance, grad_branches)
