"""The DDF operation (DDF, Zhou et al., CVPR 2021) in Numba CUDA kernels: the kernels and the
launch sequences :func:`forward` and :func:`backward` that :mod:`refdyn.gpu.ddf_ops` runs on the
Numba backend.

The kernels mirror ``ddf.cu`` one for one (its header states the equations, Eq. B1-B3 for the
backward).  With K = k k taps, tap t = ky k + kx, head h(c):

    out[n, c, i] = sum_t combine(Dsp[n, h(c) K + t, i], Dch[n, c, t]) X[n, c, j(i, t)]
    j(i, t) = (ph stride + (ky - r) dilation, pw stride + (kx - r) dilation),  0 outside

combine = Dsp Dch ("mul") or Dsp + Dch ("add").  Every kernel runs one thread per element it
writes over a grid-stride loop; every gradient is a gather summed in a fixed order, so there
are no atomics and the results are the same on every run.  float32 and float64: every constant
is made with the arrays' ``dtype.type``, so nothing is widened.
"""

from __future__ import annotations

import math

from refdyn.ddf_args import DDFGeometry, DDFGrads

from .numba_support import _launch, _split, cuda


# ---------------------------------------------------------------------------------------------
# Device functions
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _combine(add, spatial, channel):
    """combine(Dsp, Dch) of one tap: Dsp + Dch when ``add``, else Dsp Dch ("mul")."""
    return spatial + channel if add else spatial * channel


@cuda.jit(device=True)
def _combine_partial(add, other, one):
    """d combine / d (one filter), given the other filter's value: 1 ("add") or the other
    filter ("mul"); ``one`` is 1 in the arrays' dtype."""
    return one if add else other


@cuda.jit(device=True)
def _tap_offset(k, layer):
    """(k - r) dilation: the offset of tap row (or column) k from the window centre."""
    kernel_size, dilation, _ = layer
    return (k - (kernel_size - 1) // 2) * dilation


@cuda.jit(device=True)
def _tap_pixel(features, ph, pw, t, layer):
    """(y, x) = j(i, t), the input pixel tap t of output pixel i = (ph, pw) reads; y = -1 when
    it lies outside the image (the zero padding).  layer: (kernel_size, dilation, stride)."""
    kernel_size, _, stride = layer
    ky, kx = _split(t, kernel_size)
    y = ph * stride + _tap_offset(ky, layer)
    x = pw * stride + _tap_offset(kx, layer)
    if y < 0 or y >= features.shape[2] or x < 0 or x >= features.shape[3]:
        return -1, -1
    return y, x


@cuda.jit(device=True)
def _reaching_output(v, offset, stride, extent):
    """The output coordinate o with o stride + offset = v, when it is an integer in
    [0, extent); -1 when no output reaches input coordinate v through this tap."""
    centre = v - offset
    if centre < 0 or centre % stride != 0 or centre // stride >= extent:
        return -1
    return centre // stride


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _forward_kernel(total, features, channel_filter, spatial_filter, out, layer, add):
    """out[n, c, i] = sum_t combine(Dsp, Dch) X[n, c, j(i, t)], taps in increasing t."""
    T = features.dtype.type
    kernel_size = layer[0]
    taps = kernel_size * kernel_size
    channels = features.shape[1]
    out_h = out.shape[2]
    out_w = out.shape[3]
    per_head = channels // (spatial_filter.shape[1] // taps)
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, pw = _split(index, out_w)
        rest, ph = _split(rest, out_h)
        n, c = _split(rest, channels)
        h = c // per_head
        acc = T(0)
        for t in range(taps):
            y, x = _tap_pixel(features, ph, pw, t, layer)
            if y >= 0:
                ky, kx = _split(t, kernel_size)
                acc += _combine(add, spatial_filter[n, h * taps + t, ph, pw],
                                channel_filter[n, c, ky, kx]) * features[n, c, y, x]
        out[n, c, ph, pw] = acc


@cuda.jit(cache=True)
def _grad_features_kernel(total, channel_filter, spatial_filter, grad_output, grad_features,
                          layer, add):
    """Eq. B1: grad_features[n, c, y, x] = sum over the taps t (increasing) through which an
    output pixel i reads (y, x) of go[n, c, i] combine(Dsp, Dch); at most one i per tap."""
    T = grad_features.dtype.type
    kernel_size, _, stride = layer
    taps = kernel_size * kernel_size
    _, channels, height, width = grad_features.shape
    out_h = grad_output.shape[2]
    out_w = grad_output.shape[3]
    per_head = channels // (spatial_filter.shape[1] // taps)
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        n, c = _split(rest, channels)
        h = c // per_head
        acc = T(0)
        for t in range(taps):
            ky, kx = _split(t, kernel_size)
            ph = _reaching_output(y, _tap_offset(ky, layer), stride, out_h)
            pw = _reaching_output(x, _tap_offset(kx, layer), stride, out_w)
            if ph >= 0 and pw >= 0:
                acc += grad_output[n, c, ph, pw] * _combine(
                    add, spatial_filter[n, h * taps + t, ph, pw], channel_filter[n, c, ky, kx])
        grad_features[n, c, y, x] = acc


@cuda.jit(cache=True)
def _grad_spatial_kernel(total, features, channel_filter, grad_output, grad_spatial, layer,
                         add):
    """Eq. B2: grad_spatial[n, h K + t, i] = sum_{c in head h} go[n, c, i] X[n, c, j(i, t)]
    d combine / d Dsp; 0 where j(i, t) lies outside the image."""
    T = features.dtype.type
    kernel_size = layer[0]
    taps = kernel_size * kernel_size
    head = grad_spatial.shape[1] // taps
    per_head = features.shape[1] // head
    out_h = grad_spatial.shape[2]
    out_w = grad_spatial.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, pw = _split(index, out_w)
        rest, ph = _split(rest, out_h)
        n, ht = _split(rest, head * taps)
        h, t = _split(ht, taps)
        ky, kx = _split(t, kernel_size)
        y, x = _tap_pixel(features, ph, pw, t, layer)
        acc = T(0)
        if y >= 0:
            for c in range(h * per_head, (h + 1) * per_head):
                acc += grad_output[n, c, ph, pw] * features[n, c, y, x] * _combine_partial(
                    add, channel_filter[n, c, ky, kx], T(1))
        grad_spatial[n, ht, ph, pw] = acc


@cuda.jit(cache=True)
def _grad_channel_kernel(total, features, spatial_filter, grad_output, grad_channel, layer,
                         add):
    """Eq. B3: grad_channel[n, c, t] = sum_i go[n, c, i] X[n, c, j(i, t)] d combine / d Dch,
    output pixels i in row-major order."""
    T = features.dtype.type
    kernel_size = layer[0]
    taps = kernel_size * kernel_size
    channels = features.shape[1]
    per_head = channels // (spatial_filter.shape[1] // taps)
    out_h = grad_output.shape[2]
    out_w = grad_output.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, t = _split(index, taps)
        n, c = _split(rest, channels)
        ky, kx = _split(t, kernel_size)
        h = c // per_head
        acc = T(0)
        for ph in range(out_h):
            for pw in range(out_w):
                y, x = _tap_pixel(features, ph, pw, t, layer)
                if y >= 0:
                    acc += grad_output[n, c, ph, pw] * features[n, c, y, x] * _combine_partial(
                        add, spatial_filter[n, h * taps + t, ph, pw], T(1))
        grad_channel[n, c, ky, kx] = acc


# ---------------------------------------------------------------------------------------------
# Launch sequences (device arrays in and out; the checks are done before)
# ---------------------------------------------------------------------------------------------

def _layer(geo: DDFGeometry) -> tuple[int, int, int]:
    return geo.kernel_size, geo.dilation, geo.stride


def _add(geo: DDFGeometry) -> bool:
    """The kernels' ``add`` flag: True for kernel_combine "add", False for "mul"."""
    return geo.kernel_combine == "add"


def forward(geo: DDFGeometry, features, channel_filter, spatial_filter):
    """Output of ddf: one thread per output element (none for an empty batch)."""
    out = cuda.device_array(geo.output_shape, dtype=geo.dtype)
    if geo.batch:
        _launch(_forward_kernel, math.prod(geo.output_shape), features, channel_filter,
                spatial_filter, out, _layer(geo), _add(geo))
    return out


def backward(geo: DDFGeometry, grad_output, features, channel_filter, spatial_filter) -> DDFGrads:
    """Every gradient of ddf (Eq. B1-B3 of ddf.cu): three gather kernels, one thread per
    gradient element (none for an empty batch, whose gradients are empty)."""
    grads = DDFGrads(*(cuda.device_array(array.shape, dtype=geo.dtype)
                       for array in (features, channel_filter, spatial_filter)))
    if geo.batch == 0:
        return grads
    layer, add = _layer(geo), _add(geo)
    _launch(_grad_features_kernel, math.prod(features.shape), channel_filter, spatial_filter,
            grad_output, grads.grad_features, layer, add)
    _launch(_grad_spatial_kernel, math.prod(spatial_filter.shape), features, channel_filter,
            grad_output, grads.grad_spatial_filter, layer, add)
    _launch(_grad_channel_kernel, math.prod(channel_filter.shape), features, spatial_filter,
            grad_output, grads.grad_channel_filter, layer, add)
    return grads
