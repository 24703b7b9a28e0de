"""Other implementations ``refdyn bench`` times against refdyn, each on refdyn's own arrays.

A peer is built once per input set (sessions, tensors, graphs: everything outside the timed
region) and returns a :class:`PeerPasses`: the timed calls per pass and a ``check`` that runs
each pass once and returns its largest error against refdyn, so a wrong peer is never timed
silently.  A peer that cannot run here is a string saying why (e.g. how to install it).

CPU peers of ``deform_conv2d``:

- ONNX Runtime's C++ ``DeformConv`` (forward only), the one-node model of
  :mod:`refdyn.testing.targets`, in one ``InferenceSession``;
- a PyTorch composition: the sampling points p0 + p_k + dp_k normalized for
  ``torch.nn.functional.grid_sample`` (bilinear, ``padding_mode="zeros"``: the same
  zero-padded bilinear rule as refdyn's ``zeros`` boundary), the samples times the mask, then
  one matrix product with the weight; backward by autograd.

GPU peers (CUDA builds of torch and torchvision only): ``torchvision.ops.deform_conv2d``
forward and backward, and a depthwise ``conv2d`` (groups = C) of DDF's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .deform_conv_numpy import regular_grid
from .deform_conv_args import check_deform_conv2d_args
from .testing.cases import scaled_error
from .testing.targets import not_installed

TORCH_INSTALL = "pip install torch  (the CPU wheel: https://pytorch.org)"
TORCHVISION_INSTALL = "pip install torch torchvision  (a CUDA build: https://pytorch.org)"
ORT_INSTALL = "pip install 'refdyn[bench]'  (onnx, onnxruntime)"


@dataclass
class PeerPasses:
    """A peer ready to time: ``calls`` maps a pass name to a preparation that returns the call to
    time (untimed work such as a backward's forward happens in the preparation); ``check()``
    runs each pass once and returns {pass: max |peer - refdyn| / max(1, max |refdyn|)};
    ``synchronize`` ends a timed call (the device's, for GPU peers)."""

    calls: dict[str, Callable[[], Callable[[], object]]]
    check: Callable[[], dict[str, float]]
    synchronize: Callable[[], None] = lambda: None


def ready(call: Callable[[], object]) -> Callable[[], Callable[[], object]]:
    """The preparation of a call that needs none."""
    return lambda: call


def grad_errors(actual: dict, expected) -> float:
    """The largest :func:`~refdyn.testing.cases.scaled_error` over the gradients a peer returns
    (``grad_<name>``)."""
    return max(scaled_error(value, getattr(expected, name))
               for name, value in actual.items() if value is not None)


# ---- ONNX Runtime DeformConv -------------------------------------------------------------------

def onnxruntime_deform_conv2d(arrays: dict, params: dict, expected, threads: int):
    """ORT's DeformConv forward on ``arrays`` (refdyn argument names), one session."""
    absent = not_installed(("onnx", "onnxruntime"), ORT_INSTALL)
    if absent:
        return absent
    import onnxruntime

    from .testing.adapters import onnx_deform_conv_attributes
    from .testing.targets import DEFORM_CONV_OPSET, onnx_node_model

    geometry = {name: params[name] for name in ("stride", "padding", "dilation")}
    attributes = onnx_deform_conv_attributes(arrays["input"], arrays["offset"], arrays["weight"],
                                             **geometry)
    inputs = {"X": arrays["input"], "W": arrays["weight"], "offset": arrays["offset"],
              "B": arrays["bias"], "mask": arrays["mask"]}
    model = onnx_node_model("DeformConv", inputs, attributes, DEFORM_CONV_OPSET)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    feeds = {name: value for name, value in inputs.items() if value is not None}

    def forward():
        return session.run(None, feeds)[0]

    return PeerPasses(
        calls={"forward": ready(forward)},
        check=lambda: {"forward": scaled_error(forward(), expected["forward"])})


# ---- PyTorch CPU composition: grid_sample + matrix product ------------------------------------

def torch_sampling_grid(torch, offset, geo):
    """grid_sample's grid for every tap and output position of every offset group.

    offset (N, 2 G K, H_out, W_out) -> (N G, K H_out, W_out, 2) holding (x, y) normalized with
    ``align_corners=False``: grid_sample reads pixel ((u + 1) extent - 1) / 2 at u, so
    u = (2 p + 1) / extent - 1 (any extent, 1 included).
    """
    n, G, K = geo.batch, geo.offset_groups, geo.taps
    base_y, base_x = (torch.as_tensor(base.reshape(K, geo.out_h, geo.out_w), dtype=offset.dtype)
                      for base in regular_grid(geo, slice(0, geo.out_h * geo.out_w)))  # p0 + p_k
    pairs = offset.reshape(n * G, K, 2, geo.out_h, geo.out_w)
    p_y = base_y + pairs[:, :, 0]
    p_x = base_x + pairs[:, :, 1]

    grid = torch.stack([(2 * p_x + 1) / geo.width - 1, (2 * p_y + 1) / geo.height - 1], dim=-1)
    return grid.reshape(n * G, K * geo.out_h, geo.out_w, 2)


def torch_deform_conv2d(torch, geo, input, offset, weight, bias, mask):
    """deform_conv2d (groups = 1) by ``grid_sample`` and one batched matrix product.

    columns[n, (c, k), p] = x_c(p0 + p_k + dp_k) dm_k;  out[n] = weight (C_out, C_in K) @ columns[n]
    """
    n, G, K, L = geo.batch, geo.offset_groups, geo.taps, geo.out_h * geo.out_w
    images = input.reshape(n * G, geo.in_per_offset_group, geo.height, geo.width)
    samples = torch.nn.functional.grid_sample(
        images, torch_sampling_grid(torch, offset, geo), mode="bilinear", padding_mode="zeros",
        align_corners=False)                                        # (N G, C_in/G, K H_out, W_out)
    samples = samples.reshape(n, G, geo.in_per_offset_group, K, L)
    if mask is not None:
        samples = samples * mask.reshape(n, G, 1, K, L)
    columns = samples.reshape(n, geo.in_channels * K, L)
    out = weight.reshape(geo.out_channels, -1) @ columns
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(geo.output_shape)


def _torch_peer(torch, function, leaves: dict, grad_output, expected,
                synchronize: Callable[[], None] = lambda: None) -> PeerPasses:
    """``function(**leaves)`` with autograd as a peer: forward, backward (its forward is the
    untimed preparation) and forward+backward; a backward returns the gradients named
    ``grad_<name>``, checked against ``expected`` like the forward."""
    def forward():
        with torch.no_grad():
            return function(**leaves)

    def gradients(out):
        for leaf in leaves.values():
            if leaf is not None:
                leaf.grad = None
        out.backward(grad_output)
        return {f"grad_{name}": leaf.grad for name, leaf in leaves.items() if leaf is not None}

    def forward_backward():
        return gradients(function(**leaves))

    def prepare_backward():
        out = function(**leaves)
        return lambda: gradients(out)

    def check():
        grads = {name: value.cpu().numpy() for name, value in forward_backward().items()}
        return {"forward": scaled_error(forward().cpu().numpy(), expected["forward"]),
                "backward": grad_errors(grads, expected["backward"])}

    return PeerPasses(calls={"forward": ready(forward), "backward": prepare_backward,
                             "forward+backward": ready(forward_backward)},
                      check=check, synchronize=synchronize)


def torch_cpu_deform_conv2d(arrays: dict, params: dict, grad_output, expected, threads: int):
    """The PyTorch CPU composition's forward, backward and forward+backward."""
    absent = not_installed(("torch",), TORCH_INSTALL)
    if absent:
        return absent
    import torch

    geo = check_deform_conv2d_args(**arrays, **params)
    if geo.groups != 1:
        return "the grid_sample composition covers groups = 1 only"
    torch.set_num_threads(threads)
    leaves = {name: None if value is None else torch.tensor(value, requires_grad=True)
              for name, value in arrays.items()}
    go = torch.tensor(grad_output)

    def function(**tensors):
        return torch_deform_conv2d(torch, geo, **tensors)

    return _torch_peer(torch, function, leaves, go, expected)


# ---- GPU peers: torchvision deform_conv2d, a depthwise convolution ------------------------------

def _cuda_torch():
    """torch with a CUDA device, or why not."""
    absent = not_installed(("torch",), TORCHVISION_INSTALL)
    if absent:
        return absent
    import torch
    if not torch.cuda.is_available():
        return "not run: no CUDA device (or a CPU-only torch build)"
    return torch


def torchvision_cuda_deform_conv2d(arrays: dict, params: dict, grad_output, expected):
    """torchvision's CUDA ``deform_conv2d``, forward and backward by autograd."""
    torch = _cuda_torch()
    if isinstance(torch, str):
        return torch
    absent = not_installed(("torchvision",), TORCHVISION_INSTALL)
    if absent:
        return absent
    from torchvision.ops import deform_conv2d as tv_deform_conv2d

    leaves = {name: None if value is None else
              torch.tensor(value, device="cuda", requires_grad=True)
              for name, value in arrays.items()}
    go = torch.tensor(grad_output, device="cuda")
    geometry = {name: tuple(int(v) for v in np.broadcast_to(params[name], 2))
                for name in ("stride", "padding", "dilation")}

    def function(input, offset, weight, bias, mask):
        return tv_deform_conv2d(input, offset, weight, bias, mask=mask, **geometry)

    return _torch_peer(torch, function, leaves, go, expected, torch.cuda.synchronize)


def torch_cuda_depthwise_conv2d(features, kernel_size: int):
    """A depthwise ``conv2d`` (groups = C, zero padding k // 2) on the DDF case's features: the
    plain-convolution cost DDF is compared with.  Its check is the output shape only (the
    weights are not DDF's filters)."""
    torch = _cuda_torch()
    if isinstance(torch, str):
        return torch
    x = torch.tensor(features, device="cuda")
    channels = features.shape[1]
    weight = torch.ones((channels, 1, kernel_size, kernel_size), dtype=x.dtype, device="cuda")

    def forward():
        return torch.nn.functional.conv2d(x, weight, padding=kernel_size // 2, groups=channels)

    def check():
        return {"forward": 0.0 if tuple(forward().shape) == tuple(features.shape) else np.inf}

    return PeerPasses(calls={"forward": ready(forward)}, check=check,
                      synchronize=torch.cuda.synchronize)


def cpu_threads() -> int:
    """The cores this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
