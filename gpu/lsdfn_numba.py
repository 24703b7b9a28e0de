"""LS-DFN (Wu et al., ECCV 2018; Eq. 2-7) and the dynamic local filtering layer of Dynamic Filter
Networks in Numba CUDA kernels: the kernels and the launch sequences (:func:`dfn_forward`,
:func:`sample_forward`, :func:`forward` and their backwards) that :mod:`refdyn.gpu.lsdfn_ops`
runs on the Numba backend.

The kernels mirror ``lsdfn.cu`` one for one (its header states the equations and the
backward).  For output (n, v, y, x), sample s_ and tap t, reading X at q = (y, x) + (dy, dx):

    T_t     = mu_t sum_u U^{v,u} X^u[q] + (nu_t V^v_t + rho_t) sum_u X^u[q]      (Eq. 6 / 7)
    Xhat_s_ = sum_t P_t T_t,  P_t = 1 + A_pos (Eq. 4), 1 + A (Eq. 3) or 1
    out     = sum_s_ alpha_s_ Xhat_s_ (Eq. 5; alpha = 1 + A_sam or 1), or the max over s_

Every kernel runs one thread per element it writes over a grid-stride loop; every gradient is
a gather summed in a fixed order (no atomics).  The kernels see the attention arrays split by
output channel: A_sam (N, C', S, H, W), A_pos (N, C', K, H, W), A (N, C', S, K, H, W); those a
call does not use arrive as zero-size stand-ins (``_given`` tells them apart).
float32 and float64: every constant is made with the arrays' ``dtype.type``.
"""

from __future__ import annotations

import math

from refdyn.lsdfn_args import DFNGrads, LSDFNGeometry, LSDFNGrads, LSDFNSampleGrads

from .numba_support import _given, _launch, _optional, _split, cuda


# ---------------------------------------------------------------------------------------------
# Device functions.  layer = (k, s, gamma, centred, residual, described, fuse_max)
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _read(s_, t, layer):
    """(cy, cx, dy, dx): the offsets of sample s_'s centre, (o_s(b), o_s(a)), and of its tap t's
    read, + (o_k(j), o_k(i)) (Eq. 2; refdyn.lsdfn_args)."""
    k, s, gamma, centred = layer[0], layer[1], layer[2], layer[3]
    sample_origin = (s - 1) // 2 if centred else 0
    tap_origin = (k - 1) // 2 if centred else 0
    b, a = _split(s_, s)
    j, i = _split(t, k)
    cy = (b - sample_origin) * gamma
    cx = (a - sample_origin) * gamma
    return cy, cx, cy + j - tap_origin, cx + i - tap_origin


@cuda.jit(device=True)
def _inside(features, y, x):
    """(y, x) lies in the (H, W) map of ``features``."""
    return 0 <= y < features.shape[2] and 0 <= x < features.shape[3]


@cuda.jit(device=True)
def _coefficients(t, features, layer):
    """Eq. 6 / 7's (mu_t, nu_t, rho_t) of tap t, in the features' dtype."""
    T = features.dtype.type
    k, residual, described = layer[0], layer[4], layer[5]
    centre = T(1) if t == (k - 1) // 2 * (k + 1) else T(0)
    mu = centre if described else T(1)
    nu = T(1) if described else centre
    rho = centre / T(features.shape[1]) if residual else T(0)
    return mu, nu, rho


@cuda.jit(device=True)
def _tap_response(features, u, v, n, vo, t, y, x, yq, xq, layer):
    """T_t of output (n, vo, y, x) reading (yq, xq) in the map: mu sum_u U X + (nu V + rho)
    sum_u X (the NumPy reference's form)."""
    T = features.dtype.type
    mu, nu, rho = _coefficients(t, features, layer)
    channel_sum = T(0)
    filtered = T(0)
    for uc in range(features.shape[1]):
        value = features[n, uc, yq, xq]
        channel_sum += value
        if mu != 0:
            filtered += u[n, vo, uc, y, x] * value
    return (nu * v[n, vo, t, y, x] + rho) * channel_sum + mu * filtered


@cuda.jit(device=True)
def _tap_weight(features, position_attention, full_attention, n, vo, s_, t, y, x, cy, cx):
    """P_t: 1 + A_pos at the sample's centre (Eq. 4; 1 outside the map), 1 + A (Eq. 3), or 1."""
    T = features.dtype.type
    if _given(position_attention):
        if not _inside(features, y + cy, x + cx):
            return T(1)
        return T(1) + position_attention[n, vo, t, y + cy, x + cx]
    if _given(full_attention):
        return T(1) + full_attention[n, vo, s_, t, y, x]
    return T(1)


@cuda.jit(device=True)
def _sample_weight(features, sample_attention, n, vo, s_, y, x):
    """alpha_s_ = 1 + A_sam (Eq. 4), or 1."""
    T = features.dtype.type
    if not _given(sample_attention):
        return T(1)
    return T(1) + sample_attention[n, vo, s_, y, x]


@cuda.jit(device=True)
def _unweighted_sample(features, u, v, position_attention, full_attention, n, vo, s_, y, x,
                       layer):
    """Xhat_s_ = sum_t P_t T_t over the reads in the map, taps in increasing t."""
    acc = features.dtype.type(0)
    for t in range(layer[0] * layer[0]):
        cy, cx, dy, dx = _read(s_, t, layer)
        if _inside(features, y + dy, x + dx):
            acc += _tap_weight(features, position_attention, full_attention, n, vo, s_, t, y, x,
                               cy, cx) * _tap_response(features, u, v, n, vo, t, y, x, y + dy,
                                                       x + dx, layer)
    return acc


# ---------------------------------------------------------------------------------------------
# LS-DFN kernels (Eq. 4-7)
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _forward_kernel(total, features, u, v, sample_attention, position_attention, full_attention,
                    out, layer):
    """Eq. 4 and 5: out = sum_s_ alpha Xhat, or its max over s_ (the first largest)."""
    out_channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        n, vo = _split(rest, out_channels)
        fused = features.dtype.type(0)
        for s_ in range(layer[1] * layer[1]):
            weighted = _sample_weight(features, sample_attention, n, vo, s_, y, x) * \
                _unweighted_sample(features, u, v, position_attention, full_attention, n, vo,
                                   s_, y, x, layer)
            if layer[6]:
                if s_ == 0 or weighted > fused:
                    fused = weighted
            else:
                fused += weighted
        out[n, vo, y, x] = fused


@cuda.jit(cache=True)
def _samples_kernel(total, features, u, v, position_attention, full_attention, unweighted,
                    layer):
    """Xhat[n, s_, v, y, x] for the backward."""
    _, samples, out_channels, height, width = unweighted.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, vo = _split(rest, out_channels)
        n, s_ = _split(rest, samples)
        unweighted[n, s_, vo, y, x] = _unweighted_sample(
            features, u, v, position_attention, full_attention, n, vo, s_, y, x, layer)


@cuda.jit(cache=True)
def _fusion_grads_kernel(total, features, sample_attention, unweighted, grad_output,
                         grad_unweighted, grad_sample_attention, layer):
    """G = go picked alpha per sample (picked: 1 for the sum, the one-hot of the first largest
    for max), and dL/dA_sam = go picked Xhat when A_sam is given."""
    T = features.dtype.type
    _, samples, out_channels, height, width = unweighted.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, vo = _split(rest, out_channels)
        n, s_ = _split(rest, samples)
        picked = True
        if layer[6]:
            best = 0
            largest = T(0)
            for other in range(samples):
                weighted = _sample_weight(features, sample_attention, n, vo, other, y, x) * \
                    unweighted[n, other, vo, y, x]
                if other == 0 or weighted > largest:
                    best = other
                    largest = weighted
            picked = best == s_
        go = grad_output[n, vo, y, x] if picked else T(0)
        grad_unweighted[n, s_, vo, y, x] = go * _sample_weight(features, sample_attention, n, vo,
                                                               s_, y, x)
        if _given(grad_sample_attention):
            grad_sample_attention[n, vo, s_, y, x] = go * unweighted[n, s_, vo, y, x]


@cuda.jit(cache=True)
def _grad_features_kernel(total, features, u, v, position_attention, full_attention,
                          grad_unweighted, grad_features, layer):
    """dL/dX[n, u, q] = sum over the reads (s_, t) from an output (y, x) = q - (dy, dx) in the map
    and over v of G P_t W^{v,u}_t, W_t = mu U + nu V_t + rho (Eq. 6 / 7)."""
    T = features.dtype.type
    _, channels, height, width = features.shape
    out_channels = u.shape[1]
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, xq = _split(index, width)
        rest, yq = _split(rest, height)
        n, uc = _split(rest, channels)
        acc = T(0)
        for s_ in range(layer[1] * layer[1]):
            for t in range(layer[0] * layer[0]):
                cy, cx, dy, dx = _read(s_, t, layer)
                y = yq - dy
                x = xq - dx
                if _inside(features, y, x):
                    mu, nu, rho = _coefficients(t, features, layer)
                    for vo in range(out_channels):
                        acc += grad_unweighted[n, s_, vo, y, x] * _tap_weight(
                            features, position_attention, full_attention, n, vo, s_, t, y, x,
                            cy, cx) * (mu * u[n, vo, uc, y, x] + nu * v[n, vo, t, y, x] + rho)
        grad_features[n, uc, yq, xq] = acc


@cuda.jit(cache=True)
def _grad_kernel_parts_kernel(total, features, u, v, position_attention, full_attention,
                              grad_unweighted, grad_u, grad_v, layer):
    """dL/dU[n, v, u, y, x] = sum_{s_, t} G P_t mu_t X^u[q] (the first u.size indices) and
    dL/dV[n, v, t, y, x] = nu_t sum_s_ G P_t sum_u X^u[q] (the rest), reads in the map."""
    T = features.dtype.type
    _, out_channels, channels, height, width = u.shape
    u_elements = grad_u.size
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        for_u = index < u_elements
        rest, x = _split(index if for_u else index - u_elements, width)
        rest, y = _split(rest, height)
        nv, which = _split(rest, channels if for_u else v.shape[2])  # u or t
        n, vo = _split(nv, out_channels)
        first_t = 0 if for_u else which
        stop_t = v.shape[2] if for_u else which + 1
        acc = T(0)
        for s_ in range(layer[1] * layer[1]):
            for t in range(first_t, stop_t):
                cy, cx, dy, dx = _read(s_, t, layer)
                mu, nu, _ = _coefficients(t, features, layer)
                if _inside(features, y + dy, x + dx) and (mu if for_u else nu) != 0:
                    value = T(0)  # X^u[q] for U, sum_u X^u[q] for V
                    for uc in range(which if for_u else 0, which + 1 if for_u else channels):
                        value += features[n, uc, y + dy, x + dx]
                    acc += grad_unweighted[n, s_, vo, y, x] * _tap_weight(
                        features, position_attention, full_attention, n, vo, s_, t, y, x, cy,
                        cx) * value
        if for_u:
            grad_u[n, vo, which, y, x] = acc
        else:
            grad_v[n, vo, which, y, x] = acc


@cuda.jit(cache=True)
def _grad_position_kernel(total, features, u, v, grad_unweighted, grad_position, layer):
    """dL/dA_pos[n, v, t, centre] = sum over the samples s_ centred there from an output (y, x)
    in the map of G T_t (0 when the read is outside)."""
    T = features.dtype.type
    _, out_channels, taps, height, width = grad_position.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, centre_x = _split(index, width)
        rest, centre_y = _split(rest, height)
        rest, t = _split(rest, taps)
        n, vo = _split(rest, out_channels)
        acc = T(0)
        for s_ in range(layer[1] * layer[1]):
            cy, cx, dy, dx = _read(s_, t, layer)
            y = centre_y - cy
            x = centre_x - cx
            if _inside(features, y, x) and _inside(features, y + dy, x + dx):
                acc += grad_unweighted[n, s_, vo, y, x] * _tap_response(
                    features, u, v, n, vo, t, y, x, y + dy, x + dx, layer)
        grad_position[n, vo, t, centre_y, centre_x] = acc


@cuda.jit(cache=True)
def _grad_full_kernel(total, features, u, v, grad_unweighted, grad_full, layer):
    """dL/dA[n, v, s_, t, y, x] = G T_t (Eq. 3; 0 when the read is outside)."""
    T = features.dtype.type
    _, out_channels, samples, taps, height, width = grad_full.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, t = _split(rest, taps)
        rest, s_ = _split(rest, samples)
        n, vo = _split(rest, out_channels)
        _, _, dy, dx = _read(s_, t, layer)
        value = T(0)
        if _inside(features, y + dy, x + dx):
            value = grad_unweighted[n, s_, vo, y, x] * _tap_response(
                features, u, v, n, vo, t, y, x, y + dy, x + dx, layer)
        grad_full[n, vo, s_, t, y, x] = value


# ---------------------------------------------------------------------------------------------
# Eq. 2 kernels (lsdfn_sample): kernels W (N, C', C, K, H, W)
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _sample_forward_kernel(total, features, kernels, out, layer):
    """Xhat[n, s_, v, y, x] = sum_t sum_u X^u[q] W^{v,u}_t[y, x] over the reads in the map."""
    T = features.dtype.type
    _, samples, out_channels, height, width = out.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, vo = _split(rest, out_channels)
        n, s_ = _split(rest, samples)
        acc = T(0)
        for t in range(layer[0] * layer[0]):
            _, _, dy, dx = _read(s_, t, layer)
            if _inside(features, y + dy, x + dx):
                for uc in range(features.shape[1]):
                    acc += features[n, uc, y + dy, x + dx] * kernels[n, vo, uc, t, y, x]
        out[n, s_, vo, y, x] = acc


@cuda.jit(cache=True)
def _sample_grad_features_kernel(total, kernels, grad_output, grad_features, layer):
    """dL/dX[n, u, q] = sum over the reads (s_, t) from (y, x) = q - (dy, dx) in the map and over
    v of go[n, s_, v, y, x] W^{v,u}_t[y, x]."""
    T = grad_features.dtype.type
    _, channels, height, width = grad_features.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, xq = _split(index, width)
        rest, yq = _split(rest, height)
        n, uc = _split(rest, channels)
        acc = T(0)
        for s_ in range(layer[1] * layer[1]):
            for t in range(layer[0] * layer[0]):
                _, _, dy, dx = _read(s_, t, layer)
                y = yq - dy
                x = xq - dx
                if _inside(grad_features, y, x):
                    for vo in range(kernels.shape[1]):
                        acc += grad_output[n, s_, vo, y, x] * kernels[n, vo, uc, t, y, x]
        grad_features[n, uc, yq, xq] = acc


@cuda.jit(cache=True)
def _sample_grad_kernels_kernel(total, features, grad_output, grad_kernels, layer):
    """dL/dW[n, v, u, t, y, x] = sum_s_ go[n, s_, v, y, x] X^u[q] over the reads in the map."""
    T = features.dtype.type
    _, out_channels, channels, taps, height, width = grad_kernels.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, t = _split(rest, taps)
        rest, uc = _split(rest, channels)
        n, vo = _split(rest, out_channels)
        acc = T(0)
        for s_ in range(layer[1] * layer[1]):
            _, _, dy, dx = _read(s_, t, layer)
            if _inside(features, y + dy, x + dx):
                acc += grad_output[n, s_, vo, y, x] * features[n, uc, y + dy, x + dx]
        grad_kernels[n, vo, uc, t, y, x] = acc


# ---------------------------------------------------------------------------------------------
# DFN kernels: filters (N, G, K, H, W), G = 1 (shared) or C (one per channel)
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _softmax_kernel(total, filters, normalised):
    """F' = exp(F_t - max F) / sum_t' exp(F_t' - max F) over the taps of (n, g, y, x)."""
    _, groups, taps, height, width = filters.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        n, g = _split(rest, groups)
        largest = filters[n, g, 0, y, x]
        for t in range(1, taps):
            largest = max(largest, filters[n, g, t, y, x])
        total_exp = filters.dtype.type(0)
        for t in range(taps):
            normalised[n, g, t, y, x] = math.exp(filters[n, g, t, y, x] - largest)
            total_exp += normalised[n, g, t, y, x]
        for t in range(taps):
            normalised[n, g, t, y, x] /= total_exp


@cuda.jit(cache=True)
def _softmax_backward_kernel(total, normalised, grad_normalised, grad_filters):
    """dL/dF = F' (dL/dF' - sum_t' F'_t' dL/dF'_t')."""
    _, groups, taps, height, width = normalised.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, t = _split(rest, taps)
        n, g = _split(rest, groups)
        dot = normalised.dtype.type(0)
        for other in range(taps):
            dot += grad_normalised[n, g, other, y, x] * normalised[n, g, other, y, x]
        grad_filters[n, g, t, y, x] = normalised[n, g, t, y, x] * (
            grad_normalised[n, g, t, y, x] - dot)


@cuda.jit(cache=True)
def _dfn_forward_kernel(total, features, filters, out, layer):
    """out[n, c, y, x] = sum_t X[n, c, q] F'[n, g(c), t, y, x] over the reads in the map."""
    T = features.dtype.type
    _, channels, height, width = features.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        n, c = _split(rest, channels)
        g = c if filters.shape[1] > 1 else 0
        acc = T(0)
        for t in range(layer[0] * layer[0]):
            _, _, dy, dx = _read(0, t, layer)
            if _inside(features, y + dy, x + dx):
                acc += features[n, c, y + dy, x + dx] * filters[n, g, t, y, x]
        out[n, c, y, x] = acc


@cuda.jit(cache=True)
def _dfn_grad_features_kernel(total, filters, grad_output, grad_features, layer):
    """dL/dX[n, c, q] = sum_t go[n, c, y, x] F'[n, g(c), t, y, x], (y, x) = q - (dy, dx) in the
    map."""
    T = grad_features.dtype.type
    _, channels, height, width = grad_features.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, xq = _split(index, width)
        rest, yq = _split(rest, height)
        n, c = _split(rest, channels)
        g = c if filters.shape[1] > 1 else 0
        acc = T(0)
        for t in range(layer[0] * layer[0]):
            _, _, dy, dx = _read(0, t, layer)
            if _inside(grad_features, yq - dy, xq - dx):
                acc += grad_output[n, c, yq - dy, xq - dx] * filters[n, g, t, yq - dy, xq - dx]
        grad_features[n, c, yq, xq] = acc


@cuda.jit(cache=True)
def _dfn_grad_filters_kernel(total, features, grad_output, grad_filters, layer):
    """dL/dF'[n, g, t, y, x] = sum over the channels c of group g of go[n, c, y, x] X[n, c, q]."""
    T = features.dtype.type
    _, groups, taps, height, width = grad_filters.shape
    for index in range(cuda.grid(1), total, cuda.gridsize(1)):
        rest, x = _split(index, width)
        rest, y = _split(rest, height)
        rest, t = _split(rest, taps)
        n, g = _split(rest, groups)
        _, _, dy, dx = _read(0, t, layer)
        acc = T(0)
        if _inside(features, y + dy, x + dx):
            first = 0 if groups == 1 else g
            stop = features.shape[1] if groups == 1 else g + 1
            for c in range(first, stop):
                acc += grad_output[n, c, y, x] * features[n, c, y + dy, x + dx]
        grad_filters[n, g, t, y, x] = acc


# ---------------------------------------------------------------------------------------------
# Launch sequences (device arrays in and out; the checks are done before)
# ---------------------------------------------------------------------------------------------

def _layer(geo: LSDFNGeometry, residual=False, kernel_form="described", fuse="sum"):
    """The kernels' ``layer`` tuple (k, s, gamma, centred, residual, described, fuse_max)."""
    return (geo.kernel_size, geo.samples, geo.gamma, geo.indexing == "centred", bool(residual),
            kernel_form == "described", fuse == "max")


def _device_like(arrays, dtype):
    """Uninitialised device arrays shaped like ``arrays`` (None stays None), for outputs and
    gradients of which a kernel writes every element; nothing runs for an empty batch."""
    return [None if array is None else cuda.device_array(array.shape, dtype=dtype)
            for array in arrays]


def _grouped(geo, per_channel, filters):
    """The filters as (N, G, K, H, W)."""
    return filters.reshape(geo.batch, geo.channels if per_channel else 1, geo.taps, geo.height,
                           geo.width)


def _dfn_used(geo, grouped, softmax):
    """The filters the layer applies: ``grouped`` or their softmax over the taps."""
    if not softmax:
        return grouped
    normalised = cuda.device_array(grouped.shape, dtype=geo.dtype)
    _launch(_softmax_kernel, math.prod(grouped.shape) // geo.taps, grouped, normalised)
    return normalised


def dfn_forward(geo: LSDFNGeometry, features, filters, per_channel: bool, softmax: bool):
    """Output of dfn: one thread per output element."""
    out = cuda.device_array(geo.output_shape, dtype=geo.dtype)
    if geo.batch:
        used = _dfn_used(geo, _grouped(geo, per_channel, filters), softmax)
        _launch(_dfn_forward_kernel, out.size, features, used, out, _layer(geo))
    return out


def dfn_backward(geo: LSDFNGeometry, grad_output, features, filters, per_channel: bool,
                 softmax: bool) -> DFNGrads:
    """Both gradients of dfn (gathers), through the softmax when it is applied."""
    if geo.batch == 0:
        return DFNGrads(*_device_like((features, filters), geo.dtype))
    used = _dfn_used(geo, _grouped(geo, per_channel, filters), softmax)
    grad_features, grad_used = _device_like((features, used), geo.dtype)
    _launch(_dfn_grad_features_kernel, features.size, used, grad_output, grad_features,
            _layer(geo))
    _launch(_dfn_grad_filters_kernel, used.size, features, grad_output, grad_used, _layer(geo))
    grad_filters = grad_used
    if softmax:
        grad_filters = cuda.device_array(used.shape, dtype=geo.dtype)
        _launch(_softmax_backward_kernel, used.size, used, grad_used, grad_filters)
    return DFNGrads(grad_features, grad_filters.reshape(filters.shape))


def _full_kernels(geo, kernels):
    """Eq. 2's kernels as (N, C', C, K, H, W)."""
    return kernels.reshape(geo.batch, geo.out_channels, geo.channels, geo.taps, geo.height,
                           geo.width)


def sample_forward(geo: LSDFNGeometry, features, kernels):
    """Output of lsdfn_sample (Eq. 2): one thread per output element."""
    out = cuda.device_array(geo.sample_output_shape, dtype=geo.dtype)
    if geo.batch:
        _launch(_sample_forward_kernel, out.size, features, _full_kernels(geo, kernels), out,
                _layer(geo))
    return out


def sample_backward(geo: LSDFNGeometry, grad_output, features, kernels) -> LSDFNSampleGrads:
    """Both gradients of lsdfn_sample (gathers)."""
    if geo.batch == 0:
        return LSDFNSampleGrads(*_device_like((features, kernels), geo.dtype))
    full = _full_kernels(geo, kernels)
    grad_features, grad_kernels = _device_like((features, full), geo.dtype)
    _launch(_sample_grad_features_kernel, features.size, full, grad_output, grad_features,
            _layer(geo))
    _launch(_sample_grad_kernels_kernel, full.size, features, grad_output, grad_kernels,
            _layer(geo))
    return LSDFNSampleGrads(grad_features, grad_kernels.reshape(kernels.shape))


def _operands(geo, features, u, v, sample_attention, position_attention, full_attention):
    """The kernels' operands: the attention split by output channel (module docstring); an
    attention array not given is its zero-size stand-in (:func:`_optional`)."""
    split = (geo.batch, geo.out_channels)
    grid = (geo.height, geo.width)
    attention_shapes = ((*split, geo.sample_count, *grid), (*split, geo.taps, *grid),
                        (*split, geo.sample_count, geo.taps, *grid))
    return [features, u, v,
            *(_optional(None, len(shape), geo.dtype) if array is None else array.reshape(shape)
              for array, shape in zip((sample_attention, position_attention, full_attention),
                                      attention_shapes))]


def forward(geo: LSDFNGeometry, *inputs, residual, kernel_form, attention, fuse):
    """Output of lsdfn (Eq. 4-7): one thread per output element.  inputs: features, u, v and
    the three attention arrays (None where not given); ``attention`` is implied by them."""
    out = cuda.device_array(geo.output_shape, dtype=geo.dtype)
    if geo.batch:
        _launch(_forward_kernel, out.size, *_operands(geo, *inputs), out,
                _layer(geo, residual, kernel_form, fuse))
    return out


def backward(geo: LSDFNGeometry, grad_output, *inputs, residual, kernel_form, attention,
             fuse) -> LSDFNGrads:
    """Every gradient of lsdfn (lsdfn.cu's backward, gathers only): the unweighted samples,
    their gradients through the fusion (and dL/dA_sam), then one gather kernel per input."""
    if geo.batch == 0:
        return LSDFNGrads(*_device_like(inputs, geo.dtype))
    operands = _operands(geo, *inputs)
    x, u_, v_, sam, pos, full = operands
    grads = _device_like(operands, geo.dtype)
    layer = _layer(geo, residual, kernel_form, fuse)
    unweighted, grad_unweighted = (cuda.device_array(geo.sample_output_shape, dtype=geo.dtype)
                                   for _ in range(2))
    total = math.prod(geo.sample_output_shape)
    _launch(_samples_kernel, total, x, u_, v_, pos, full, unweighted, layer)
    _launch(_fusion_grads_kernel, total, x, sam, unweighted, grad_output, grad_unweighted,
            grads[3], layer)
    _launch(_grad_features_kernel, x.size, x, u_, v_, pos, full, grad_unweighted, grads[0],
            layer)
    _launch(_grad_kernel_parts_kernel, u_.size + v_.size, x, u_, v_, pos, full, grad_unweighted,
            grads[1], grads[2], layer)
    position_given, full_given = inputs[4] is not None, inputs[5] is not None
    if position_given:
        _launch(_grad_position_kernel, pos.size, x, u_, v_, grad_unweighted, grads[4], layer)
    if full_given:
        _launch(_grad_full_kernel, full.size, x, u_, v_, grad_unweighted, grads[5], layer)
    return LSDFNGrads(*(None if array is None else grad.reshape(array.shape)
                        for grad, array in zip(grads, inputs)))
