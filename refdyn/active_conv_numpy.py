"""Active Convolution (Jeon & Kim, CVPR 2017; the technical note by Wang Hao, 2017).

A deformable convolution whose offsets are **learned parameters** shared by every output
position and every image, instead of being predicted per position:

    y(p0) = sum_k w_k * x(p0 + p_k + theta_k)                         (DCNv1 Eq. 2 with dp_k = theta_k)

positions theta: (K, 2) = (dy, dx) per kernel tap k = a kw + b, relative to the tap's place
p_k = (a, b) on the regular grid (the convention of the MXNet port, which is built on the DCN
code); or (P, K, 2) for P position groups of output channels (output channel o uses group
o // (C_out / P)); P = C_out gives the per-output-channel offsets (C_out, K, 2) that the
technical note proposes.  Because theta is shared, its gradient is the sum over (n, i, j) of the
per-position offset gradients of deformable convolution.

Boundary rules: ``"zeros"`` (the Caffe layer) and ``"border"`` (clamp to the image, the MXNet
port of the technical note; learned offsets there often point far outside the map).

Two routes to the position gradient, which the technical note contrasts (the same chain rule
evaluated in a different order; :func:`active_conv2d_backward_literal` computes both):

- ``"columns"`` (the DCN code): dL/dtheta_k = sum_{n,c,i,j} dL/dcol[n,c,k,i,j] * dcol/dtheta_k,
  with col[n,c,k,i,j] = x_c(p) and dL/dcol = sum_o w[o,c,k] dL/dy[n,o,i,j];
- ``"output"`` (the Active Convolution paper): dL/dtheta_k = sum_{n,o,i,j} dL/dy[n,o,i,j] *
  dy[n,o,i,j]/dtheta_k, with dy/dtheta_k = sum_c w[o,c,k] dx_c(p)/dp.

The vectorized default runs the deformable convolution of :mod:`refdyn.deform_conv_numpy` on the
positions broadcast to every output position, once per block of output channels that share
one position group and one convolution group (:func:`active_conv2d_via` also serves the GPU
backends).  Training helpers follow the papers: per-synapse normalized gradient with an offset
learning-rate factor, the centre synapse held fixed, warm-up, and the Caffe ring start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .args import check_finite, check_float_array, check_grad_output, \
    numpy_all_finite
from .bilinear_numpy import check_coord_grad, sample_point, sample_point_grad, \
    scatter_point
from .deform_conv_numpy import deform_conv2d, deform_conv2d_backward
from .deform_conv_args import check_conv_args

GRADIENT_ROUTES = ("columns", "output")


@dataclass
class ActiveConvGrads:
    """Gradients with respect to each input of ``active_conv2d`` (None for an absent bias)."""

    grad_input: object
    grad_positions: object
    grad_weight: object
    grad_bias: object


@dataclass(frozen=True)
class ActiveConvBlock:
    """Output channels [out_start, out_stop) that share position group ``position_group`` and
    read input channels [in_start, in_stop) (their convolution group)."""

    position_group: int
    out_start: int
    out_stop: int
    in_start: int
    in_stop: int


def check_active_conv2d_args(input, positions, weight, bias, stride, padding, boundary,
                             all_finite: Callable = numpy_all_finite):
    """Validate the arguments; return the geometry and the :class:`ActiveConvBlock`s.

    input, weight, bias, stride and padding as for a convolution (no dilation: the positions
    move the taps); positions (K, 2) or (P, K, 2) with K = kh kw and P dividing C_out.
    """
    geo = check_conv_args(input, weight, bias, stride, padding, 1, boundary)
    check_float_array(positions, "positions", len(positions.shape), geo.dtype)
    shape = tuple(positions.shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or shape[1:] != (geo.taps, 2) or shape[0] < 1:
        raise ValueError(f"positions must have shape (K, 2) or (P, K, 2) with K = kh * kw = "
                         f"{geo.taps}, got {tuple(positions.shape)}")
    position_groups = shape[0]
    if geo.out_channels % position_groups:
        raise ValueError(f"weight.shape[0] (C_out = {geo.out_channels}) must be divisible by the "
                         f"position groups P = positions.shape[0] = {position_groups}")
    check_finite(positions, "positions", all_finite)
    per_position_group = geo.out_channels // position_groups
    blocks = []
    for p in range(position_groups):
        for g in range(geo.groups):
            start = max(p * per_position_group, g * geo.out_per_group)
            stop = min((p + 1) * per_position_group, (g + 1) * geo.out_per_group)
            if start < stop:
                blocks.append(ActiveConvBlock(p, start, stop, g * geo.in_per_group,
                                              (g + 1) * geo.in_per_group))
    return geo, blocks


def grouped_positions(positions):
    """positions, (K, 2), (P, K, 2) or (C_out, K, 2), as (groups of shared positions, K, 2)."""
    return positions.reshape((-1,) + tuple(positions.shape[-2:]))


def _offsets_of_group(xp, positions_pk2, batch, out_h, out_w):
    """theta of one position group broadcast to every position: (N, 2K, H_out, W_out)."""
    pairs = positions_pk2.reshape(1, -1, 1, 1)
    return xp.ascontiguousarray(xp.broadcast_to(pairs, (batch, pairs.shape[1], out_h, out_w)))


def active_conv2d_via(deform_forward: Callable, xp, input, positions, weight, bias=None,
                      stride=1, padding=0, boundary="zeros", all_finite=numpy_all_finite):
    """Active convolution computed by a backend's ``deform_forward`` (same API as
    :func:`refdyn.deform_conv_numpy.deform_conv2d`) over arrays of the array module ``xp``."""
    geo, blocks = check_active_conv2d_args(input, positions, weight, bias, stride, padding,
                                           boundary, all_finite)
    grouped = grouped_positions(positions)
    outputs = []
    for block in blocks:
        out_channels = slice(block.out_start, block.out_stop)
        offsets = _offsets_of_group(xp, grouped[block.position_group], geo.batch, geo.out_h,
                                    geo.out_w)
        outputs.append(deform_forward(
            xp.ascontiguousarray(input[:, block.in_start:block.in_stop]), offsets,
            xp.ascontiguousarray(weight[out_channels]),
            None if bias is None else xp.ascontiguousarray(bias[out_channels]),
            stride, padding, 1, None, boundary=boundary))
    return xp.concatenate(outputs, axis=1)


def active_conv2d_backward_via(deform_backward: Callable, xp, grad_output, input, positions,
                               weight, bias=None, stride=1, padding=0, boundary="zeros",
                               all_finite=numpy_all_finite, **backward_options) -> ActiveConvGrads:
    """Gradients of active convolution from a backend's ``deform_backward``: per block, the
    deformable-convolution gradients; dL/dtheta sums the offset gradient over (n, i, j)."""
    geo, blocks = check_active_conv2d_args(input, positions, weight, bias, stride, padding,
                                           boundary, all_finite)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C_out, H_out, W_out)")
    grouped = grouped_positions(positions)
    grad_input = xp.zeros(input.shape, dtype=input.dtype)
    grad_positions = xp.zeros(grouped.shape, dtype=input.dtype)
    grad_weight = xp.zeros(weight.shape, dtype=input.dtype)
    grad_bias = None if bias is None else xp.zeros(bias.shape, dtype=input.dtype)
    for block in blocks:
        out_channels = slice(block.out_start, block.out_stop)
        in_channels = slice(block.in_start, block.in_stop)
        offsets = _offsets_of_group(xp, grouped[block.position_group], geo.batch, geo.out_h,
                                    geo.out_w)
        grads = deform_backward(
            xp.ascontiguousarray(grad_output[:, out_channels]),
            xp.ascontiguousarray(input[:, in_channels]), offsets,
            xp.ascontiguousarray(weight[out_channels]),
            None if bias is None else xp.ascontiguousarray(bias[out_channels]),
            stride, padding, 1, None, boundary=boundary, **backward_options)
        grad_input[:, in_channels] += grads.grad_input
        grad_weight[out_channels] = grads.grad_weight
        if grad_bias is not None:
            grad_bias[out_channels] = grads.grad_bias
        grad_positions[block.position_group] += grads.grad_offset.sum(axis=(0, 2, 3)).reshape(-1, 2)
    return ActiveConvGrads(grad_input, grad_positions.reshape(positions.shape), grad_weight,
                           grad_bias)


def active_conv2d(input, positions, weight, bias=None, stride=1, padding=0, boundary="zeros"):
    """Active convolution: y(p0) = sum_k w_k x(p0 + p_k + theta_k) with learned theta.

    input (N, C_in, H, W); positions (K, 2), (P, K, 2) or (C_out, K, 2), (dy, dx) per tap;
    weight (C_out, C_in/groups, kh, kw); bias (C_out,) or None; stride, padding: int or pair.
    Returns (N, C_out, H_out, W_out) in the input dtype.
    """
    return active_conv2d_via(deform_conv2d, np, input, positions, weight, bias, stride,
                             padding, boundary)


def active_conv2d_backward(grad_output, input, positions, weight, bias=None, stride=1,
                           padding=0, boundary="zeros", coord_grad="torchvision") -> ActiveConvGrads:
    """Gradients of :func:`active_conv2d`: grad_input, grad_positions (the shape of positions),
    grad_weight, grad_bias (None without bias).  ``coord_grad`` as in deform_conv2d_backward."""
    return active_conv2d_backward_via(deform_conv2d_backward, np, grad_output, input, positions,
                                      weight, bias, stride, padding, boundary,
                                      coord_grad=coord_grad)


# ---------------------------------------------------------------------------------------------
# Literal version: the equation and both gradient routes as loops
# ---------------------------------------------------------------------------------------------

def _literal_terms(geo, positions):
    """Every (n, o, i, j, c, c_local, k, p_y, p_x) term of y(p0) = sum_k w_k x(p0 + p_k + theta_k)."""
    grouped = grouped_positions(positions)
    per_position_group = geo.out_channels // grouped.shape[0]
    for n in range(geo.batch):
        for o in range(geo.out_channels):
            theta = grouped[o // per_position_group]
            for i in range(geo.out_h):
                for j in range(geo.out_w):
                    for c_local in range(geo.in_per_group):
                        c = (o // geo.out_per_group) * geo.in_per_group + c_local
                        for k in range(geo.taps):
                            p_y, p_x = _column_point(geo, theta, k, i, j)
                            yield n, o, i, j, c, c_local, k, p_y, p_x


def active_conv2d_literal(input, positions, weight, bias=None, stride=1, padding=0,
                          boundary="zeros"):
    """:func:`active_conv2d` by loops over the terms of its equation (tiny inputs only)."""
    geo, _ = check_active_conv2d_args(input, positions, weight, bias, stride, padding, boundary)
    out = np.zeros(geo.output_shape)
    for n, o, i, j, c, c_local, k, p_y, p_x in _literal_terms(geo, positions):
        w = weight[o, c_local, k // geo.kernel_w, k % geo.kernel_w]
        out[n, o, i, j] += w * sample_point(input[n, c], p_y, p_x, boundary)
    if bias is not None:
        out += bias[None, :, None, None]
    return out.astype(input.dtype)


def active_conv2d_backward_literal(grad_output, input, positions, weight, bias=None, stride=1,
                                   padding=0, boundary="zeros", coord_grad="torchvision",
                                   route="columns") -> ActiveConvGrads:
    """Every gradient of active convolution by loops; ``route`` picks the order in which the
    position gradient is evaluated (see the module docstring); both give the same numbers."""
    geo, _ = check_active_conv2d_args(input, positions, weight, bias, stride, padding, boundary)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C_out, H_out, W_out)")
    check_coord_grad(coord_grad)
    if route not in GRADIENT_ROUTES:
        raise ValueError(f"route must be one of {GRADIENT_ROUTES}, got {route!r}")
    kernel_w = geo.kernel_w
    grouped = grouped_positions(positions)
    per_position_group = geo.out_channels // grouped.shape[0]
    grad_input = np.zeros(input.shape)
    grad_weight = np.zeros(weight.shape)
    grad_positions = np.zeros(grouped.shape)
    terms = list(_literal_terms(geo, positions))
    # dL/dcol[n, c, k, i, j] = sum_o w[o, c, k] dL/dy[n, o, i, j], per position group (the columns
    # of different position groups sample different points).
    column_grad: dict[tuple, float] = {}
    for n, o, i, j, c, c_local, k, p_y, p_x in terms:
        go = grad_output[n, o, i, j]
        w = weight[o, c_local, k // kernel_w, k % kernel_w]
        x_p = sample_point(input[n, c], p_y, p_x, boundary)
        grad_weight[o, c_local, k // kernel_w, k % kernel_w] += go * x_p
        scatter_point(grad_input[n, c], p_y, p_x, go * w, boundary)
        key = (o // per_position_group, n, c, k, i, j)
        column_grad[key] = column_grad.get(key, 0.0) + w * go
        if route == "output":            # dL/dy * dy/dtheta, term by term of y
            d_y, d_x = sample_point_grad(input[n, c], p_y, p_x, boundary, coord_grad)
            grad_positions[o // per_position_group, k] += go * w * np.array([d_y, d_x])
    if route == "columns":               # dL/dcol * dcol/dtheta, column by column
        for (group, n, c, k, i, j), grad_col in column_grad.items():
            p_y, p_x = _column_point(geo, grouped[group], k, i, j)
            d_y, d_x = sample_point_grad(input[n, c], p_y, p_x, boundary, coord_grad)
            grad_positions[group, k] += grad_col * np.array([d_y, d_x])
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if bias is not None else None
    dtype = input.dtype
    return ActiveConvGrads(grad_input.astype(dtype), grad_positions.reshape(positions.shape).astype(dtype),
                           grad_weight.astype(dtype),
                           None if grad_bias is None else grad_bias.astype(dtype))


def _column_point(geo, theta, k, i, j):
    """p0 + p_k + theta_k for tap k at output (i, j), positions theta (K, 2), in the input dtype."""
    dtype = geo.dtype.type
    return (dtype(i * geo.stride[0] - geo.padding[0] + k // geo.kernel_w) + theta[k, 0],
            dtype(j * geo.stride[1] - geo.padding[1] + k % geo.kernel_w) + theta[k, 1])


# ---------------------------------------------------------------------------------------------
# Training positions as in the papers
# ---------------------------------------------------------------------------------------------

def centre_tap(kernel_h: int, kernel_w: int) -> int:
    """Index k of the centre synapse (the Caffe layer's synapse 0), (kh // 2) kw + kw // 2."""
    return (kernel_h // 2) * kernel_w + kernel_w // 2


def ring_positions(kernel_h: int, kernel_w: int, dtype=np.float64) -> np.ndarray:
    """The Caffe layer's start: the centre synapse at the kernel centre and the other K - 1 on a
    circle of radius 1 around it, equally spaced in angle.

    Returned as positions (K, 2) relative to the regular grid.  Raster taps are assigned to the
    ring in order of their own angle around the centre (ring order, not raster order), so a
    3 x 3 kernel keeps its axis taps and pulls its corner taps onto the unit circle.
    """
    taps = kernel_h * kernel_w
    centre_y, centre_x = (kernel_h - 1) / 2, (kernel_w - 1) / 2
    grid = np.array([(a - centre_y, b - centre_x) for a in range(kernel_h) for b in range(kernel_w)])
    centre = centre_tap(kernel_h, kernel_w)
    around = grid - grid[centre]                      # each tap's place relative to the centre tap
    others = sorted((k for k in range(taps) if k != centre),
                    key=lambda k: (math.atan2(around[k, 0], around[k, 1]) % (2 * math.pi),
                                   np.hypot(*around[k])))
    ring = np.zeros((taps, 2))
    if others:
        first = math.atan2(around[others[0], 0], around[others[0], 1])
        for slot, k in enumerate(others):
            angle = first + 2 * math.pi * slot / len(others)
            ring[k] = (math.sin(angle), math.cos(angle))
    # sin and cos of multiples of pi/2 come out as 1e-16, not 0: snap them, so that axis taps
    # sit exactly on the grid (a kink) and take the documented right derivative.
    ring = np.where(np.abs(ring - np.round(ring)) < 1e-12, np.round(ring), ring)
    return (ring - around).astype(dtype)


def normalized_position_gradient(grad_positions: np.ndarray) -> np.ndarray:
    """Each synapse's gradient (g_y, g_x) divided by its L2 norm when non-zero (Active Convolution
    section 2.5; the technical note, section 3.2.2).  Works on (..., K, 2)."""
    norm = np.linalg.norm(grad_positions, axis=-1, keepdims=True)
    return np.divide(grad_positions, norm, out=np.zeros_like(grad_positions), where=norm > 0)


def position_update(positions: np.ndarray, grad_positions: np.ndarray, learning_rate: float, *,
                    offset_lr_factor: float = 1.0, normalize: bool = True,
                    fixed_taps=(), step: int = 0, warmup_steps: int = 0) -> np.ndarray:
    """One gradient-descent step of the positions as the papers train them.

    theta <- theta - learning_rate * offset_lr_factor * g, where g is the raw or the normalized
    (per synapse) gradient; taps in ``fixed_taps`` (e.g. the centre, :func:`centre_tap`) never
    move; during the first ``warmup_steps`` steps nothing moves (the technical note, section
    3.2.3, held the offsets at their start).  Returns the new positions.
    """
    if step < warmup_steps:
        return positions.copy()
    direction = normalized_position_gradient(grad_positions) if normalize else grad_positions
    update = learning_rate * offset_lr_factor * direction
    update[..., list(fixed_taps), :] = 0
    return positions - update
