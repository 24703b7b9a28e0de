"""The dynamic local filtering layer of Dynamic Filter Networks (De Brabandere et al., 2016).

A filter-generating network predicts one k x k filter per sample and pixel (shared by the
channels, filters (N, k*k, H, W)) or per sample, channel and pixel (filters (N, C*k*k, H, W),
channel c's tap t at index c*k*k + t); the layer applies it at that pixel as a zero-padded
cross-correlation (docs/conventions.md section 5):

    out[c, y, x] = sum_{ky, kx} X[c, y + ky - p, x + kx - p] F[ky*k + kx, y, x],   p = floor((k-1)/2)

With ``softmax=True`` the filters are first normalised by a softmax over their k*k taps, as in
the paper's models.  LS-DFN (:mod:`refdyn.lsdfn_numpy`) with one sample and no
attention reduces to this layer (docs/lsdfn.md).

``dfn_literal`` follows the formula loop by loop; ``dfn`` handles a whole tap at once.
"""

from __future__ import annotations

import numpy as np

from .args import check_grad_output
from .lsdfn_args import DFNGrads, check_dfn_args, pad_by_reach, read_window


def _tap_softmax(filters):
    """Softmax over the taps (axis 2 of (N, C or 1, k*k, H, W)), shifted by the maximum."""
    exponentials = np.exp(filters - filters.max(axis=2, keepdims=True))
    return exponentials / exponentials.sum(axis=2, keepdims=True)


def _filters_by_channel(geo, per_channel, filters, softmax):
    """The filters as (N, C or 1, k*k, H, W), after the softmax when asked for."""
    grouped = filters.reshape(geo.batch, geo.channels if per_channel else 1, geo.taps,
                              geo.height, geo.width)
    return _tap_softmax(grouped) if softmax else grouped


def _softmax_backward(grad_normalised, normalised):
    """dL/dz of y = softmax(z) over the taps: y (dL/dy - sum_t y_t dL/dy_t)."""
    return normalised * (grad_normalised
                         - np.sum(grad_normalised * normalised, axis=2, keepdims=True))


def dfn_literal(features, filters, kernel_size, softmax=False):
    """The dynamic filtering layer by its loops (tiny inputs only); same result as :func:`dfn`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    k, p = geo.kernel_size, (geo.kernel_size - 1) // 2
    used = _filters_by_channel(geo, per_channel, filters, softmax)
    out = np.zeros(geo.output_shape)
    for n, c, y, x in np.ndindex(*geo.output_shape):
        for ky, kx in np.ndindex(k, k):
            if 0 <= y + ky - p < geo.height and 0 <= x + kx - p < geo.width:
                out[n, c, y, x] += (features[n, c, y + ky - p, x + kx - p]
                                    * used[n, c if per_channel else 0, ky * k + kx, y, x])
    return out.astype(geo.dtype)


def dfn_backward_literal(grad_output, features, filters, kernel_size, softmax=False) -> DFNGrads:
    """Gradients of the layer by its loops: each term X F adds go F to dL/dX and go X to dL/dF
    (then through the softmax)."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C, H, W)")
    k, p = geo.kernel_size, (geo.kernel_size - 1) // 2
    used = _filters_by_channel(geo, per_channel, filters, softmax)
    grad_features = np.zeros(features.shape)
    grad_used = np.zeros(used.shape)
    for n, c, y, x in np.ndindex(*geo.output_shape):
        for ky, kx in np.ndindex(k, k):
            if 0 <= y + ky - p < geo.height and 0 <= x + kx - p < geo.width:
                go = grad_output[n, c, y, x]
                group = c if per_channel else 0
                grad_features[n, c, y + ky - p, x + kx - p] += go * used[n, group, ky * k + kx,
                                                                         y, x]
                grad_used[n, group, ky * k + kx, y, x] += go * features[n, c, y + ky - p,
                                                                        x + kx - p]
    grad_filters = _softmax_backward(grad_used, used) if softmax else grad_used
    return DFNGrads(grad_features.astype(geo.dtype),
                    grad_filters.reshape(filters.shape).astype(geo.dtype))


def dfn(features, filters, kernel_size, softmax=False):
    """Dynamic local filtering (Dynamic Filter Networks).

    features (N, C, H, W); filters (N, k*k, H, W) shared by the channels or (N, C*k*k, H, W) one
    per channel; kernel_size: k (the window spans -p .. k-1-p, p = floor((k-1)/2)); softmax:
    normalise each filter over its taps first.  Returns (N, C, H, W).
    """
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    used = _filters_by_channel(geo, per_channel, filters, softmax)
    padded = pad_by_reach(geo, features)
    out = np.zeros(geo.output_shape, dtype=geo.dtype)
    for _, tap, _, (dy, dx) in geo.reads():
        out += used[:, :, tap] * padded[read_window(geo, dy, dx)]
    return out


def dfn_backward(grad_output, features, filters, kernel_size, softmax=False) -> DFNGrads:
    """Gradients through :func:`dfn`: per tap t, dL/dF_t = sum over the channels sharing it of
    go X_shifted, and dL/dX_shifted += go F_t; then through the softmax."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C, H, W)")
    used = _filters_by_channel(geo, per_channel, filters, softmax)
    padded = pad_by_reach(geo, features)
    grad_padded = np.zeros_like(padded)
    grad_used = np.zeros_like(used)
    for _, tap, _, (dy, dx) in geo.reads():
        window = read_window(geo, dy, dx)
        products = grad_output * padded[window]
        grad_used[:, :, tap] = products if per_channel else products.sum(axis=1, keepdims=True)
        grad_padded[window] += grad_output * used[:, :, tap]
    grad_filters = _softmax_backward(grad_used, used) if softmax else grad_used
    return DFNGrads(grad_padded[read_window(geo, 0, 0)].copy(),
                    grad_filters.reshape(filters.shape))
