"""The LS-DFN block of the paper's Fig. 2 in NumPy, forward and backward (LS-DFN, Wu et al.,
ECCV 2018, Sec. 3.1).

Three branches read the block's input Z (N, C_in, H, W), each a b x b convolution ("same" zero
padding, b odd; the paper does not give b):

- feature branch: C channels, the features X that the dynamic kernels filter;
- kernel branch: C'(C + k^2) channels, split into U (N, C', C, H, W) (the first C' C channels,
  row-major) and V (N, C', k*k, H, W) (the last C' k^2), Eq. 6's two kernel parts;
- attention branches (with ``attention="factorized"``): C' s^2 channels of sample attention and
  C' k^2 channels of position attention, Eq. 4.

The branches feed :func:`refdyn.lsdfn_numpy.lsdfn`; the block returns its
(N, C', H, W) output.  No activation is placed inside the block (the paper names none; put one
after the block as a network would).  The convolutions are refdyn's deformable convolution with
zero offsets, i.e. plain convolutions with a tested backward.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from .args import check_float_array, check_shape
from .deform_conv_numpy import deform_conv2d, deform_conv2d_backward
from .lsdfn_numpy import lsdfn, lsdfn_backward

BRANCHES = ("feature", "kernel", "sample", "position")


@dataclass
class LSDFNBlockParams:
    """The convolutions of the block: ``<branch>_weight`` (C_out, C_in, b, b) and
    ``<branch>_bias`` (C_out,) for the feature (C), kernel (C'(C + k^2)), sample (C' s^2) and
    position (C' k^2) branches; the attention ones are None without attention.  A gradient of
    the same type holds dL/d each parameter."""

    feature_weight: np.ndarray
    feature_bias: np.ndarray
    kernel_weight: np.ndarray
    kernel_bias: np.ndarray
    sample_weight: Optional[np.ndarray] = None
    sample_bias: Optional[np.ndarray] = None
    position_weight: Optional[np.ndarray] = None
    position_bias: Optional[np.ndarray] = None

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters that are present, by name (for gradient checks and optimisers)."""
        return {field.name: getattr(self, field.name) for field in fields(self)
                if getattr(self, field.name) is not None}


@dataclass
class LSDFNBlockGrads:
    """Gradients through :func:`lsdfn_block`: the block input and every parameter."""

    grad_input: np.ndarray
    grad_params: LSDFNBlockParams


def branch_channels(channels, out_channels, samples, kernel_size) -> dict[str, int]:
    """Output channels of each branch: C, C'(C + k^2), C' s^2, C' k^2."""
    taps = kernel_size * kernel_size
    return {"feature": channels, "kernel": out_channels * (channels + taps),
            "sample": out_channels * samples * samples, "position": out_channels * taps}


def init_block_params(in_channels, channels, out_channels, samples, kernel_size,
                      branch_kernel=3, attention=True, rng=None,
                      dtype=np.float64) -> LSDFNBlockParams:
    """Random parameters: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's
    default for convolutions).  attention: whether to create the attention branches."""
    rng = np.random.default_rng() if rng is None else rng
    fan_in = in_channels * branch_kernel * branch_kernel
    bound = 1 / np.sqrt(fan_in)
    params = {}
    for branch, size in branch_channels(channels, out_channels, samples, kernel_size).items():
        if branch in ("sample", "position") and not attention:
            continue
        params[f"{branch}_weight"] = rng.uniform(
            -bound, bound, (size, in_channels, branch_kernel, branch_kernel)).astype(dtype)
        params[f"{branch}_bias"] = rng.uniform(-bound, bound, size).astype(dtype)
    return LSDFNBlockParams(**params)


def _check_block(block_input, params: LSDFNBlockParams, out_channels, samples, kernel_size,
                 attention):
    """Check the parameters against the input and the options; returns C (the features')."""
    if attention not in ("factorized", None):
        raise ValueError(f"attention must be 'factorized' or None in the block, got {attention!r}")
    dtype = check_float_array(block_input, "block_input", 4)
    in_channels = int(block_input.shape[1])
    check_float_array(params.feature_weight, "feature_weight", 4, dtype)
    channels, _, branch_kernel, _ = (int(size) for size in params.feature_weight.shape)
    if branch_kernel % 2 == 0:
        raise ValueError(f"feature_weight must have an odd branch kernel size b, "
                         f"got {tuple(params.feature_weight.shape)}")
    sizes = branch_channels(channels, out_channels, samples, kernel_size)
    for branch in BRANCHES:
        weight, bias = getattr(params, f"{branch}_weight"), getattr(params, f"{branch}_bias")
        wanted = branch in ("feature", "kernel") or attention == "factorized"
        if (weight is None or bias is None) == wanted:
            raise ValueError(f"attention={attention!r} {'needs' if wanted else 'takes no'} "
                             f"{branch}_weight and {branch}_bias")
        if wanted:
            check_float_array(weight, f"{branch}_weight", 4, dtype)
            check_shape(weight, f"{branch}_weight",
                        (sizes[branch], in_channels, branch_kernel, branch_kernel),
                        f"({branch} channels, C_in, b, b)")
            check_float_array(bias, f"{branch}_bias", 1, dtype)
            check_shape(bias, f"{branch}_bias", (sizes[branch],), f"({branch} channels,)")
    return channels


def _conv(block_input, weight, bias):
    """A b x b convolution with "same" zero padding (deformable convolution, zero offsets)."""
    batch, _, height, width = block_input.shape
    taps = weight.shape[2] * weight.shape[3]
    offset = np.zeros((batch, 2 * taps, height, width), dtype=block_input.dtype)
    return deform_conv2d(block_input, offset, weight, bias, padding=weight.shape[2] // 2)


def _conv_backward(grad_output, block_input, weight, bias):
    """(dL/d input, dL/d weight, dL/d bias) of :func:`_conv`."""
    batch, _, height, width = block_input.shape
    taps = weight.shape[2] * weight.shape[3]
    offset = np.zeros((batch, 2 * taps, height, width), dtype=block_input.dtype)
    grads = deform_conv2d_backward(grad_output, block_input, offset, weight, bias,
                                   padding=weight.shape[2] // 2)
    return grads.grad_input, grads.grad_weight, grads.grad_bias


def _branch_outputs(block_input, params, channels, out_channels, kernel_size):
    """The lsdfn operands the branches predict: X, U, V, A_sam, A_pos (None without attention)."""
    batch, _, height, width = block_input.shape
    kernel_parts = _conv(block_input, params.kernel_weight, params.kernel_bias)
    split = out_channels * channels
    operands = {
        "features": _conv(block_input, params.feature_weight, params.feature_bias),
        "u": kernel_parts[:, :split].reshape(batch, out_channels, channels, height, width),
        "v": kernel_parts[:, split:].reshape(batch, out_channels, kernel_size * kernel_size,
                                             height, width),
        "sample_attention": None, "position_attention": None}
    if params.sample_weight is not None:
        operands["sample_attention"] = _conv(block_input, params.sample_weight,
                                             params.sample_bias)
        operands["position_attention"] = _conv(block_input, params.position_weight,
                                               params.position_bias)
    return operands


def lsdfn_block(block_input, params: LSDFNBlockParams, out_channels, samples, gamma,
                kernel_size, residual=True, attention="factorized", fuse="sum",
                indexing="centred", kernel_form="described"):
    """The LS-DFN block: (N, C_in, H, W) -> (N, C', H, W); the options are :func:`lsdfn`'s
    (attention "factorized" or None)."""
    channels = _check_block(block_input, params, out_channels, samples, kernel_size, attention)
    operands = _branch_outputs(block_input, params, channels, out_channels, kernel_size)
    return lsdfn(**operands, samples=samples, gamma=gamma, kernel_size=kernel_size,
                 residual=residual, attention=attention, fuse=fuse, indexing=indexing,
                 kernel_form=kernel_form)


def lsdfn_block_backward(grad_output, block_input, params: LSDFNBlockParams, out_channels,
                         samples, gamma, kernel_size, residual=True, attention="factorized",
                         fuse="sum", indexing="centred", kernel_form="described"
                         ) -> LSDFNBlockGrads:
    """Gradients through :func:`lsdfn_block`: :func:`lsdfn_backward` gives dL/d each operand,
    U and V's gradients are concatenated back into the kernel branch's channels, and each
    branch's convolution passes its gradient to its parameters and to the block input."""
    channels = _check_block(block_input, params, out_channels, samples, kernel_size, attention)
    operands = _branch_outputs(block_input, params, channels, out_channels, kernel_size)
    grads = lsdfn_backward(grad_output, **operands, samples=samples, gamma=gamma,
                           kernel_size=kernel_size, residual=residual, attention=attention,
                           fuse=fuse, indexing=indexing, kernel_form=kernel_form)
    batch, _, height, width = block_input.shape
    per_branch = {"feature": grads.grad_features,
                  "kernel": np.concatenate([grads.grad_u.reshape(batch, -1, height, width),
                                            grads.grad_v.reshape(batch, -1, height, width)],
                                           axis=1),
                  "sample": grads.grad_sample_attention,
                  "position": grads.grad_position_attention}
    grad_input = np.zeros_like(block_input)
    grad_params = {}
    for branch, grad_branch in per_branch.items():
        if grad_branch is None:
            continue
        grad_from, grad_params[f"{branch}_weight"], grad_params[f"{branch}_bias"] = \
            _conv_backward(grad_branch, block_input, getattr(params, f"{branch}_weight"),
                           getattr(params, f"{branch}_bias"))
        grad_input += grad_from
    return LSDFNBlockGrads(grad_input, LSDFNBlockParams(**grad_params))
