"""Filter normalization (FN) of DDF (Zhou et al., CVPR 2021), its backward, the official presets.

The paper's FN, for one predicted filter D^ (its k*k taps):

    D = alpha * (D^ - mu(D^)) / delta(D^) + beta

mu and delta are the mean and standard deviation over the taps of that one filter (spatial
filters: per sample, head and pixel; channel filters: per sample and channel); alpha and beta
rescale and shift the normalized filter.  The official code (theFoxofSky/ddfnet, ``FilterNorm``)
differs from that formula in two small ways, which refdyn implements by default and names:

- delta is the *unbiased* standard deviation (torch ``std``, divisor k*k - 1): ``unbiased=True``;
  ``unbiased=False`` divides by k*k.
- it divides by delta + 1e-10, not delta: ``eps=1e-10`` (a constant filter gives 0, not NaN).
  ``eps=0`` is the paper's formula.

Presets (docs/conventions.md section 6): the spatial branch has no learned FN parameters, alpha = gain / k
(gain sqrt(2) after "relu", 1 for "linear") and beta = 0 (:func:`spatial_filter_norm`); the
channel branch has a learned alpha of shape (C * k * k,), one scale per channel *and tap*,
initialised to randn * gain / k, and beta = 0 (:func:`channel_filter_norm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .args import check_finite, check_float_array, numpy_all_finite

#: torch.nn.init.calculate_gain of the nonlinearities the official branches use.
GAINS = {"linear": 1.0, "relu": math.sqrt(2.0)}


@dataclass
class FilterNormGrads:
    """Gradients of a scalar loss through :func:`filter_norm`: ``grad_filters`` has the shape of
    the filters, ``grad_alpha`` and ``grad_beta`` the shapes of alpha and beta."""

    grad_filters: np.ndarray
    grad_alpha: np.ndarray
    grad_beta: np.ndarray


def nonlinearity_gain(nonlinearity: str) -> float:
    """The gain of the official FN scale gain / k: sqrt(2) for "relu", 1 for "linear"."""
    if nonlinearity not in GAINS:
        raise ValueError(f"nonlinearity must be one of {tuple(GAINS)}, got {nonlinearity!r}")
    return GAINS[nonlinearity]


def _tap_axes(filters, axis_of_taps) -> tuple[int, ...]:
    """``axis_of_taps`` (an int or a tuple of ints) as non-negative axes of ``filters``."""
    axes = (axis_of_taps,) if isinstance(axis_of_taps, (int, np.integer)) else tuple(axis_of_taps)
    ndim = len(filters.shape)
    if not axes or any(isinstance(a, bool) or not isinstance(a, (int, np.integer))
                       or not -ndim <= a < ndim for a in axes):
        raise ValueError(f"axis_of_taps must be an axis or a tuple of axes of the {ndim}-D "
                         f"filters, got {axis_of_taps!r}")
    normalized = tuple(sorted(int(a) % ndim for a in axes))
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"axis_of_taps repeats an axis: {axis_of_taps!r}")
    return normalized


def _check_affine(value, name: str, filters) -> None:
    """alpha or beta: a finite number, or an array of the filters' dtype that broadcasts to them."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    elif hasattr(value, "dtype"):
        if np.dtype(value.dtype) != np.dtype(filters.dtype):
            raise TypeError(f"{name} has dtype {value.dtype} but filters have dtype "
                            f"{filters.dtype}")
        try:
            shape = np.broadcast_shapes(np.shape(value), filters.shape)
        except ValueError:
            shape = None
        if shape != tuple(filters.shape):
            raise ValueError(f"{name} of shape {np.shape(value)} does not broadcast to the "
                             f"filters' shape {tuple(filters.shape)}")
        check_finite(value, name, numpy_all_finite)
    else:
        raise TypeError(f"{name} must be a number or an array, got {value!r}")


def _check_filter_norm_args(filters, axis_of_taps, alpha, beta, unbiased, eps):
    """Validate the arguments of :func:`filter_norm`; return (tap axes, divisor of the variance)."""
    if not hasattr(filters, "shape"):
        raise TypeError(f"filters must be an array, got {type(filters).__name__}")
    check_float_array(filters, "filters", len(filters.shape))
    axes = _tap_axes(filters, axis_of_taps)
    taps = math.prod(int(filters.shape[a]) for a in axes)
    divisor = taps - 1 if unbiased else taps
    if divisor < 1:
        raise ValueError(f"filter_norm needs at least {2 if unbiased else 1} taps per filter "
                         f"({'unbiased ' if unbiased else ''}standard deviation), got {taps}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    check_finite(filters, "filters", numpy_all_finite)
    _check_affine(alpha, "alpha", filters)
    _check_affine(beta, "beta", filters)
    return axes, divisor


def _normalized(filters, axes, divisor, eps):
    """(z, spread, denominator, scale) of FN, from each filter divided by its largest |tap| so
    that FN stays scale-invariant up to overflow of its result (a filter times 1e200 gives what
    the filter gives; the statistics of D^ itself would overflow):

        scale = max_t |D^_t| (1 for a zero filter),   u = D^ / scale,
        spread = sqrt(sum_t (u_t - mean u)^2 / m) = delta / scale,
        denominator = spread + eps / scale = (delta + eps) / scale,
        z = (u - mean u) / denominator = (D^ - mu) / (delta + eps).

    Every statistic keeps the tap axes as 1."""
    scale = np.max(np.abs(filters), axis=axes, keepdims=True)
    scale = np.where(scale > 0, scale, 1).astype(filters.dtype, copy=False)
    scaled = filters / scale
    centred = scaled - np.mean(scaled, axis=axes, keepdims=True)
    spread = np.sqrt(np.sum(centred * centred, axis=axes, keepdims=True) / divisor)
    denominator = spread + eps / scale
    return centred / denominator, spread, denominator, scale


def _sum_to_shape(array, shape):
    """Sum a broadcast gradient back to the shape of the argument that was broadcast."""
    lead = array.ndim - len(shape)
    summed = array.sum(axis=tuple(range(lead))) if lead else array
    broadcast_axes = tuple(i for i, size in enumerate(shape) if size == 1 and summed.shape[i] != 1)
    return summed.sum(axis=broadcast_axes, keepdims=True).reshape(shape)


def filter_norm(filters, axis_of_taps, alpha=1.0, beta=0.0, unbiased=True, eps=1e-10):
    """FN: alpha * (D^ - mean(D^)) / (std(D^) + eps) + beta, statistics over ``axis_of_taps``.

    filters: float32/float64 array of predicted filters D^; axis_of_taps: the axis (or tuple of
    axes) holding one filter's taps; alpha, beta: numbers or arrays broadcasting to the filters'
    shape; unbiased: divide the variance by taps - 1 (official) or taps; eps: added to the
    standard deviation (official 1e-10; 0 is the paper's formula).  Returns the filters' dtype.
    """
    axes, divisor = _check_filter_norm_args(filters, axis_of_taps, alpha, beta, unbiased, eps)
    normalized, _, _, _ = _normalized(filters, axes, divisor, eps)
    return (alpha * normalized + beta).astype(filters.dtype, copy=False)


def filter_norm_backward(grad_output, filters, axis_of_taps, alpha=1.0, beta=0.0, unbiased=True,
                         eps=1e-10) -> FilterNormGrads:
    """Gradients through :func:`filter_norm` (through the mean and the standard deviation).

    With c = D^ - mu, delta = sqrt(sum c^2 / m) (m = taps - 1 or taps), z = c / (delta + eps) and
    gz = alpha * grad_output, per filter:

        dL/dD^_t = (gz_t - mean(gz)) / (delta + eps)
                   - c_t * sum_u(gz_u c_u) / ((delta + eps)^2 m delta)
                 = [gz_t - mean(gz) - z_t sum_u(gz_u z_u) (delta + eps) / (m delta)] / (delta + eps)

    computed in the second form with the scaled statistics of :func:`_normalized`, so that no
    power of delta overflows (the second term is 0 for a constant filter, its limit as c -> 0).  It sums to zero over the
    taps: FN does not change when a constant is added to every tap.
    dL/dalpha = sum of grad_output * z and dL/dbeta = sum of grad_output over the axes alpha and
    beta were broadcast along.
    """
    axes, divisor = _check_filter_norm_args(filters, axis_of_taps, alpha, beta, unbiased, eps)
    check_float_array(grad_output, "grad_output", len(filters.shape), np.dtype(filters.dtype))
    if grad_output.shape != filters.shape:
        raise ValueError(f"grad_output must have the filters' shape {tuple(filters.shape)}, "
                         f"got {tuple(grad_output.shape)}")
    normalized, spread, denominator, scale = _normalized(filters, axes, divisor, eps)
    grad_normalized = alpha * grad_output
    projection = np.sum(grad_normalized * normalized, axis=axes, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        through_spread = np.where(spread > 0, projection * denominator / (divisor * spread), 0)
    grad_filters = ((grad_normalized - np.mean(grad_normalized, axis=axes, keepdims=True)
                     - normalized * through_spread) / (denominator * scale))
    dtype = filters.dtype
    return FilterNormGrads(
        grad_filters=grad_filters.astype(dtype, copy=False),
        grad_alpha=_sum_to_shape(grad_output * normalized, np.shape(alpha)).astype(dtype),
        grad_beta=_sum_to_shape(grad_output, np.shape(beta)).astype(dtype))


# ---------------------------------------------------------------------------------------------
# The official presets
# ---------------------------------------------------------------------------------------------


def _spatial_by_head(raw, kernel_size):
    """raw (N, head * k * k, H, W) -> (N, head, k * k, H, W): one filter per head and pixel."""
    check_float_array(raw, "raw spatial filter", 4)
    taps = kernel_size * kernel_size
    batch, channels, height, width = raw.shape
    if channels < taps or channels % taps:
        raise ValueError(f"raw spatial filter must have head * k * k channels, a positive "
                         f"multiple of {taps}, got shape {tuple(raw.shape)}")
    return raw.reshape(batch, channels // taps, taps, height, width)


def spatial_filter_norm(raw, kernel_size, nonlinearity="relu"):
    """The official spatial-branch FN: per sample, head and pixel over the k * k taps, scaled by
    the fixed gain / k, no shift.  raw (N, head * k * k, H, W) -> same shape."""
    alpha = nonlinearity_gain(nonlinearity) / kernel_size
    return filter_norm(_spatial_by_head(raw, kernel_size), 2, alpha).reshape(raw.shape)


def spatial_filter_norm_backward(grad_output, raw, kernel_size, nonlinearity="relu"):
    """dL/d raw through :func:`spatial_filter_norm` (it has no parameters)."""
    alpha = nonlinearity_gain(nonlinearity) / kernel_size
    by_head = _spatial_by_head(raw, kernel_size)
    grads = filter_norm_backward(grad_output.reshape(by_head.shape), by_head, 2, alpha)
    return grads.grad_filters.reshape(raw.shape)


def _channel_by_tap(raw, scale, kernel_size):
    """raw (N, C * k * k) -> (N, C, k * k) and scale (C * k * k,) -> (C, k * k)."""
    check_float_array(raw, "raw channel filter", 2)
    check_float_array(scale, "channel scale", 1, np.dtype(raw.dtype))
    taps = kernel_size * kernel_size
    batch, length = raw.shape
    if length < taps or length % taps or scale.shape != (length,):
        raise ValueError(f"raw channel filter (N, C * k * k) and channel scale (C * k * k,) must "
                         f"agree with k * k = {taps}, got {tuple(raw.shape)} and "
                         f"{tuple(scale.shape)}")
    channels = length // taps
    return raw.reshape(batch, channels, taps), scale.reshape(channels, taps)


def channel_filter_norm(raw, scale, kernel_size):
    """The official channel-branch FN: per sample and channel over the k * k taps, times the
    learned scale (one per channel and tap), no shift.  raw (N, C * k * k), scale (C * k * k,)
    -> the channel filter (N, C, k, k)."""
    by_tap, alpha = _channel_by_tap(raw, scale, kernel_size)
    return filter_norm(by_tap, 2, alpha).reshape(
        raw.shape[0], by_tap.shape[1], kernel_size, kernel_size)


def channel_filter_norm_backward(grad_output, raw, scale, kernel_size):
    """(dL/d raw, dL/d scale) through :func:`channel_filter_norm`; grad_output (N, C, k, k)."""
    by_tap, alpha = _channel_by_tap(raw, scale, kernel_size)
    grads = filter_norm_backward(grad_output.reshape(by_tap.shape), by_tap, 2, alpha)
    return grads.grad_filters.reshape(raw.shape), grads.grad_alpha.reshape(scale.shape)


def init_channel_scale(channels, kernel_size, nonlinearity="relu", rng=None, dtype=np.float64):
    """The official initial channel-FN scale: standard normal (C * k * k,) times gain / k."""
    rng = np.random.default_rng() if rng is None else rng
    scale = rng.standard_normal(channels * kernel_size * kernel_size)
    return (scale * nonlinearity_gain(nonlinearity) / kernel_size).astype(dtype)
