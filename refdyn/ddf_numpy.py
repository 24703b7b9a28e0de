"""The DDF operation: decoupled dynamic filters (DDF, Zhou et al., CVPR 2021).

A depth-wise dynamic filter (one k x k filter per sample, channel and pixel) is decoupled into a
spatial dynamic filter D^sp (one per sample and pixel, shared by the channels of a head) and a
channel dynamic filter D^ch (one per sample and channel, shared by the pixels).  The paper's
DDF operation, for channel r and output pixel i:

    F'(r, i) = sum_{j in Omega(i)} D^sp_i[p_i - p_j] * D^ch_r[p_i - p_j] * F(r, j)     ("mul")

and the official code's second option replaces the product by the sum D^sp + D^ch ("add").
Omega(i) is the k x k window centred on p_i (dilated, strided; zero outside the image).  The
paper indexes the filters by p_i - p_j; like the official CUDA code and every CNN framework,
refdyn reads tap (ky, kx) at p_j = p_i + ((ky - r) d, (kx - r) d), i.e. a cross-correlation
(no flip).  Layout and output size: :mod:`refdyn.ddf_args` (docs/conventions.md section 6).

Two implementations that agree to rounding: ``*_literal`` loops over every term of the sum as
written (tiny inputs only), and the vectorized default, which loops over the k^2 taps only and
handles every sample, channel and pixel of a tap with one strided view of the zero-padded
features.  Besides its results it allocates the padded features (and, in the backward, their
gradient) and a few arrays of the output's size.
"""

from __future__ import annotations

import numpy as np

from .ddf_args import DDFGeometry, DDFGrads, check_ddf_args, check_ddf_backward_args


def combine(kernel_combine: str, spatial, channel):
    """The filter value of one tap: D^sp * D^ch ("mul", the paper) or D^sp + D^ch ("add")."""
    return spatial * channel if kernel_combine == "mul" else spatial + channel


def combine_partials(kernel_combine: str, spatial, channel):
    """(d combined / d D^sp, d combined / d D^ch) of :func:`combine`."""
    return (channel, spatial) if kernel_combine == "mul" else (1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Literal version: the DDF operation written as loops over its terms
# ---------------------------------------------------------------------------------------------


def _window(geo: DDFGeometry, ph: int, pw: int):
    """Omega(i) for output pixel i = (ph, pw): every tap (ky, kx) with the input pixel p_j it
    reads, p_j = p_i + ((ky - r) d, (kx - r) d), p_i = (ph s, pw s).  p_j may lie outside."""
    centre_y, centre_x = ph * geo.stride, pw * geo.stride
    for ky in range(geo.kernel_size):
        for kx in range(geo.kernel_size):
            yield (ky, kx, centre_y + (ky - geo.radius) * geo.dilation,
                   centre_x + (kx - geo.radius) * geo.dilation)


def _terms(geo: DDFGeometry):
    """Every (n, c, h, ph, pw, ky, kx, y, x) term of the sum whose input pixel (y, x) lies in the
    image (outside it the zero padding makes the term 0); h is the head of channel c."""
    for n in range(geo.batch):
        for c in range(geo.channels):
            h = c // geo.channels_per_head
            for ph in range(geo.out_h):
                for pw in range(geo.out_w):
                    for ky, kx, y, x in _window(geo, ph, pw):
                        if 0 <= y < geo.height and 0 <= x < geo.width:
                            yield n, c, h, ph, pw, ky, kx, y, x


def _tap_filters(geo: DDFGeometry, channel_filter, spatial_filter, n, c, h, ph, pw, ky, kx):
    """(D^sp_i[tap], D^ch_c[tap]) of one term: the spatial filter of head h at pixel (ph, pw)
    and the channel filter of channel c, both at tap (ky, kx)."""
    tap = ky * geo.kernel_size + kx
    return spatial_filter[n, h * geo.taps + tap, ph, pw], channel_filter[n, c, ky, kx]


def ddf_literal(features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
                kernel_combine="mul"):
    """The DDF operation by the loops of its equation (tiny inputs only).

    Same arguments, shapes and result as :func:`ddf`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    out = np.zeros(geo.output_shape, dtype=np.float64)
    for n, c, h, ph, pw, ky, kx, y, x in _terms(geo):
        d_sp, d_ch = _tap_filters(geo, channel_filter, spatial_filter, n, c, h, ph, pw, ky, kx)
        # D^sp_i[p_i - p_j] * D^ch_r[p_i - p_j] * F(r, j)   (or (D^sp + D^ch) F for "add")
        out[n, c, ph, pw] += combine(kernel_combine, d_sp, d_ch) * features[n, c, y, x]
    return out.astype(geo.dtype)


def ddf_backward_literal(grad_output, features, channel_filter, spatial_filter, kernel_size,
                         dilation=1, stride=1, kernel_combine="mul") -> DDFGrads:
    """Every gradient of the DDF operation by loops over its terms.

    For each term t = combine(D^sp, D^ch) * F(c, j) of output (n, c, i) with incoming gradient go:
      dL/dF(c, j)  += go * combine(D^sp, D^ch)
      dL/dD^sp     += go * F(c, j) * d combine / d D^sp      (D^ch for "mul", 1 for "add")
      dL/dD^ch     += go * F(c, j) * d combine / d D^ch      (D^sp for "mul", 1 for "add")
    Same arguments and result as :func:`ddf_backward`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    check_ddf_backward_args(grad_output, geo)
    grad_features = np.zeros(features.shape)
    grad_channel = np.zeros(channel_filter.shape)
    grad_spatial = np.zeros(spatial_filter.shape)
    for n, c, h, ph, pw, ky, kx, y, x in _terms(geo):
        d_sp, d_ch = _tap_filters(geo, channel_filter, spatial_filter, n, c, h, ph, pw, ky, kx)
        go = grad_output[n, c, ph, pw]
        value = features[n, c, y, x]
        by_spatial, by_channel = combine_partials(kernel_combine, d_sp, d_ch)
        grad_features[n, c, y, x] += go * combine(kernel_combine, d_sp, d_ch)
        grad_spatial[n, h * geo.taps + ky * geo.kernel_size + kx, ph, pw] += go * value * by_spatial
        grad_channel[n, c, ky, kx] += go * value * by_channel
    return DDFGrads(grad_features=grad_features.astype(geo.dtype),
                    grad_channel_filter=grad_channel.astype(geo.dtype),
                    grad_spatial_filter=grad_spatial.astype(geo.dtype))


# ---------------------------------------------------------------------------------------------
# Vectorized version: one strided view of the padded features per tap
# ---------------------------------------------------------------------------------------------


def _pad_widths(geo: DDFGeometry) -> tuple[int, int]:
    """Zero padding on each side of the rows and of the columns that holds every tap: the reach
    r * dilation, but at most the image's extent on that axis (a tap that far away reads only
    zeros, as any farther one does, so a huge dilation costs no memory)."""
    reach = geo.radius * geo.dilation
    return min(reach, geo.height), min(reach, geo.width)


def _tap_slice(geo: DDFGeometry, k: int, pad: int, outputs: int) -> slice:
    """The padded indices tap k reads along one axis for outputs 0, s, 2 s, ...: the offset
    (k - r) d, clamped to the padding (beyond it every read is a zero anyway)."""
    start = pad + max(-pad, min(pad, (k - geo.radius) * geo.dilation))
    return slice(start, start + (outputs - 1) * geo.stride + 1, geo.stride)


def _tap_slices(geo: DDFGeometry):
    """For each tap t = (ky, kx): (t, rows, cols), the slices of the padded features holding the
    pixel p_i + ((ky - r) d, (kx - r) d) of every output pixel i (or a zero of the padding where
    that pixel lies outside the image)."""
    pad_h, pad_w = _pad_widths(geo)
    for ky in range(geo.kernel_size):
        for kx in range(geo.kernel_size):
            yield (ky * geo.kernel_size + kx, _tap_slice(geo, ky, pad_h, geo.out_h),
                   _tap_slice(geo, kx, pad_w, geo.out_w))


class _Operands:
    """The inputs of one call arranged so that every tap broadcasts over the heads: ``padded``
    the zero-padded features (N, C, H + 2 pad_h, W + 2 pad_w) (:func:`_pad_widths`); ``spatial`` (N, head, k*k, H_out,
    W_out); ``channel`` (N, head, C/head, k*k)."""

    def __init__(self, geo: DDFGeometry, features, channel_filter, spatial_filter):
        self.geo = geo
        pad_h, pad_w = _pad_widths(geo)
        self.padded = np.pad(features, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)))
        self.spatial = spatial_filter.reshape(geo.batch, geo.head, geo.taps, geo.out_h, geo.out_w)
        self.channel = channel_filter.reshape(geo.batch, geo.head, geo.channels_per_head, geo.taps)

    def by_head(self, array):
        """(N, C, H_out, W_out) -> (N, head, C/head, H_out, W_out)."""
        geo = self.geo
        return array.reshape(geo.batch, geo.head, geo.channels_per_head, geo.out_h, geo.out_w)

    def tap(self, t, rows, cols):
        """(F at the pixels tap t reads, D^sp of tap t, D^ch of tap t), broadcastable to
        (N, head, C/head, H_out, W_out)."""
        return (self.by_head(self.padded[:, :, rows, cols]), self.spatial[:, :, None, t],
                self.channel[:, :, :, t, None, None])


def ddf(features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
        kernel_combine="mul"):
    """The DDF operation (Zhou et al., CVPR 2021), with the semantics of the official ``ddf`` and
    its CUDA kernels.

    features (N, C, H, W); channel_filter (N, C, k, k); spatial_filter (N, head * k * k,
    H // stride, W // stride), head (the number of channel groups with their own spatial filter)
    inferred from its shape.  kernel_size: odd k; dilation, stride: ints >= 1; kernel_combine:
    ``"mul"`` (D^sp * D^ch, the paper) or ``"add"`` (D^sp + D^ch).
    Returns (N, C, H // stride, W // stride) in the input dtype.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    operands = _Operands(geo, features, channel_filter, spatial_filter)
    out = np.zeros((geo.batch, geo.head, geo.channels_per_head, geo.out_h, geo.out_w),
                   dtype=geo.dtype)
    for t, rows, cols in _tap_slices(geo):
        values, d_sp, d_ch = operands.tap(t, rows, cols)
        out += combine(kernel_combine, d_sp, d_ch) * values      # one tap of the sum over Omega(i)
    return out.reshape(geo.output_shape)


def ddf_backward(grad_output, features, channel_filter, spatial_filter, kernel_size, dilation=1,
                 stride=1, kernel_combine="mul") -> DDFGrads:
    """Gradients of a scalar loss L through :func:`ddf`.

    With go = dL/d output, per tap t and output pixel i reading input pixel j = j(i, t):
      grad_features[c, j]     += go[c, i] * combine(D^sp_i[t], D^ch_c[t])   (the transposed filter)
      grad_spatial_filter[i, t] = sum_{c in head} go[c, i] F[c, j] d combine / d D^sp
      grad_channel_filter[c, t] = sum_i go[c, i] F[c, j] d combine / d D^ch
    Returns a :class:`~refdyn.ddf_args.DDFGrads` in the input dtype.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    check_ddf_backward_args(grad_output, geo)
    operands = _Operands(geo, features, channel_filter, spatial_filter)
    go = operands.by_head(grad_output)
    grad_padded = np.zeros_like(operands.padded)
    grad_spatial = np.zeros(operands.spatial.shape, dtype=geo.dtype)
    grad_channel = np.zeros(operands.channel.shape, dtype=geo.dtype)
    for t, rows, cols in _tap_slices(geo):
        values, d_sp, d_ch = operands.tap(t, rows, cols)
        by_spatial, by_channel = combine_partials(kernel_combine, d_sp, d_ch)
        grad_padded[:, :, rows, cols] += (go * combine(kernel_combine, d_sp, d_ch)).reshape(
            geo.output_shape)
        go_values = go * values
        grad_spatial[:, :, t] = np.sum(go_values * by_spatial, axis=2)
        grad_channel[:, :, :, t] = np.sum(go_values * by_channel, axis=(3, 4))
    pad_h, pad_w = _pad_widths(geo)
    return DDFGrads(
        grad_features=grad_padded[:, :, pad_h:pad_h + geo.height, pad_w:pad_w + geo.width].copy(),
        grad_channel_filter=grad_channel.reshape(channel_filter.shape),
        grad_spatial_filter=grad_spatial.reshape(spatial_filter.shape))
