"""The PaddlePaddle and OpenVINO targets of ``refdyn validate`` (CPU, installed with pip).

Each adapter runs one framework operator with refdyn's calling convention (NumPy in, NumPy out);
:mod:`refdyn.testing.targets` registers the targets.  What each framework computes was measured
against refdyn (``refdyn validate paddle`` / ``openvino``); the conventions and defects found are
the targets' known differences, each with a probe that measures it again on the installed
version.

PaddlePaddle (``paddle.vision.ops``): ``deform_conv2d`` has refdyn's layout and the mmcv
offset-gradient rule (0 where a coordinate is exactly -1); ``roi_align`` takes boxes (K, 4)
grouped by image with a count per image, so refdyn's RoIs are sorted by batch index (stable)
and the result put back in refdyn's order.  ``psroi_pool`` (R-FCN's integer-pixel average)
matches no refdyn operator and is not run.

OpenVINO (CPU plugin, forward only; float64 models run in float32, so only float32 classes
are compared): DeformableConvolution-8 with ``bilinear_interpolation_pad=True`` is refdyn's
``zeros`` rule (a bias, which the operation lacks, is added after it); DeformablePSROIPooling
is the official DCN rule with pooled_size = group_size; ROIAlign-9 ``asymmetric`` is
``aligned=False``, ``half_pixel_for_nn`` is ``aligned=True`` and ``half_pixel`` is ``aligned=True``
on RoIs moved by half an image pixel.  Not run: DeformableConvolution-1
and -8 with ``bilinear_interpolation_pad=False`` (a one-sided edge rule no refdyn boundary
reproduces: 0 above and left of the image, the edge pixel in the last row and column strip),
PSROIPooling (R-FCN integer-pixel average and a crop-and-resize bilinear mode, no refdyn
operator).
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from typing import Callable

import numpy as np

from ..roi_align_numpy import roi_align_backward
from .roi_cases import make_case as make_roi_case
from .targets import _pair


# ---- PaddlePaddle ----

def _paddle():
    os.environ.setdefault("GLOG_minloglevel", "2")
    import paddle

    paddle.set_device("cpu")
    return paddle


def _paddle_tensor(array, requires_grad=False):
    if array is None:
        return None
    tensor = _paddle().to_tensor(np.ascontiguousarray(array))
    tensor.stop_gradient = not requires_grad
    return tensor


def _paddle_grad(tensor, like):
    if tensor is None:
        return None
    return np.zeros_like(like) if tensor.grad is None else tensor.grad.numpy()


def _paddle_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, grad):
    kh, kw = weight.shape[2:]
    leaves = {name: _paddle_tensor(value, grad) for name, value in
              dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask).items()}
    out = _paddle().vision.ops.deform_conv2d(
        leaves["input"], leaves["offset"], leaves["weight"], leaves["bias"], _pair(stride),
        _pair(padding), _pair(dilation), deformable_groups=offset.shape[1] // (2 * kh * kw),
        groups=input.shape[1] // weight.shape[1], mask=leaves["mask"])
    return out, leaves


def paddle_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                         mask=None):
    """``paddle.vision.ops.deform_conv2d`` with refdyn's signature."""
    return _paddle_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask,
                                 False)[0].numpy()


def paddle_deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1,
                                  padding=0, dilation=1, mask=None):
    """Paddle autograd through deform_conv2d, returning ``grad_<input>``."""
    out, leaves = _paddle_deform_conv2d(input, offset, weight, bias, stride, padding, dilation,
                                        mask, True)
    out.backward(_paddle_tensor(grad_output))
    arrays = dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask)
    return {f"grad_{name}": _paddle_grad(leaf, arrays[name]) for name, leaf in leaves.items()}


def _paddle_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned, grad):
    """Paddle's roi_align on refdyn's RoIs sorted by batch index; (out, input leaf, order)."""
    index = rois[:, 0].astype(np.int64)
    order = np.argsort(index, kind="stable")
    leaf = _paddle_tensor(input, grad)
    out = _paddle().vision.ops.roi_align(
        leaf, _paddle_tensor(rois[order, 1:5]),
        _paddle_tensor(np.bincount(index, minlength=input.shape[0]).astype(np.int32)),
        _pair(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
    return out, leaf, order


def paddle_roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                     aligned=False):
    """``paddle.vision.ops.roi_align`` with refdyn's signature (RoIs in refdyn's order)."""
    out, _, order = _paddle_roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
                                      aligned, False)
    result = np.empty(out.shape, dtype=input.dtype)
    result[order] = out.numpy()
    return result


def paddle_roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                              sampling_ratio=-1, aligned=False):
    """Paddle autograd through roi_align (input gradient)."""
    out, leaf, order = _paddle_roi_align(input, rois, output_size, spatial_scale,
                                         sampling_ratio, aligned, True)
    out.backward(_paddle_tensor(grad_output[order]))
    return {"grad_input": _paddle_grad(leaf, input)}


INVERTED_ROI_REPRODUCER = (
    "import numpy as np; from refdyn.testing.framework_targets import paddle_roi_align; "
    "paddle_roi_align(np.ones((1, 1, 4, 4), np.float32), "
    "np.array([[0, 3, 3, 1, 1]], np.float32), 1, 1.0, 0, True)")


def probe_paddle_inverted_roi(seconds: float = 30) -> str:
    """Run the minimal reproducer in a worker process limited in memory and time."""
    import subprocess
    import sys

    from ..validate import limit_memory

    command = [sys.executable, "-c", INVERTED_ROI_REPRODUCER]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds,
                                  preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        outcome = f"still running after {seconds:g} s"
    else:
        outcome = (f"exit status {finished.returncode}, "
                   f"{finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else ''}"
                   if finished.returncode else "returned (this release no longer fails)")
    return (f"4 x 4 image, RoI [0, 3, 3, 1, 1], 1 x 1 bin, adaptive sampling, aligned: "
            f"{outcome}; refdyn averages the zero samples of a negative-size RoI to 0")


def aligned_roi_below_one_pixel(operator: str, config) -> bool:
    """An aligned roi_align RoI with a side below one feature-map pixel, inverted sides
    (x2 < x1 or y2 < y1: negative) included."""
    if operator != "roi_align" or not config.aligned or config.rois == 0:
        return False
    rois = make_roi_case(config).arrays["rois"].astype(np.float64)
    sides = (rois[:, 3:5] - rois[:, 1:3]) * config.spatial_scale
    return bool(np.any(sides < 1))


def probe_paddle_aligned_backward() -> str:
    """Paddle's roi_align input gradient against the transpose of its own forward (the exact
    gradient of a linear map), on the minimal RoI below one pixel."""
    image = np.zeros((1, 1, 4, 4))
    rois = np.array([[0, 0.2, 0.2, 1.0, 1.0]])
    arguments = dict(rois=rois, output_size=1, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    jacobian = np.zeros(image.size)
    for pixel in range(image.size):
        unit = image.copy().ravel()
        unit[pixel] = 1.0
        jacobian[pixel] = paddle_roi_align(unit.reshape(image.shape), **arguments)[0, 0, 0, 0]
    paddle_grad = paddle_roi_align_backward(np.ones((1, 1, 1, 1)), image, **arguments)
    ours = roi_align_backward(np.ones((1, 1, 1, 1)), image, **arguments).grad_input

    def corner(array):
        return np.round(np.asarray(array).reshape(4, 4)[:2, :2], 4).tolist()
    return (f"4 x 4 image, RoI [0, 0.2, 0.2, 1, 1], 1 x 1 bin, sampling_ratio 1, aligned: the "
            f"transpose of Paddle's own forward (its exact gradient, linear in the input) has "
            f"top-left 2 x 2 {corner(jacobian)}, refdyn's gradient {corner(ours)}; Paddle's "
            f"backward gives {corner(paddle_grad['grad_input'])} (the gradient of the RoI "
            f"enlarged to one pixel): a defect of Paddle's roi_align backward")


def probe_empty_aligned_roi(run: Callable) -> Callable[[], str]:
    def probe() -> str:
        image = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
        out = run(image, np.array([[0, 1.0, 2.0, 4.0, 2.0]]), 1, 1.0, 0, True)
        return (f"RoI [0, 1, 2, 4, 2] (zero height), aligned, adaptive sampling: "
                f"{float(out[0, 0, 0, 0])!r}; refdyn and torchvision 0 (no samples, the "
                f"average of nothing taken as 0)")
    return probe


# ---- OpenVINO ----

#: Compiled OpenVINO models by (operation, attributes, shapes, dtypes), the most recent last;
#: each holds the plugin's threads and buffers, so only the last few are kept (thousands
#: exhaust the process).
_COMPILED: OrderedDict = OrderedDict()
_KEEP_COMPILED = 16


@functools.cache
def _openvino_core():
    import openvino as ov

    return ov.Core()


def _openvino_run(key: tuple, arrays: list, build: Callable) -> np.ndarray:
    """Compile (once per key, shapes and dtypes, while it stays among the recent ones) a model
    of Parameters like ``arrays`` whose output is ``build(*parameters)``, in float32 precision
    with one stream on the CPU plugin, and run it."""
    import openvino as ov
    import openvino.opset1 as opset1

    arrays = [np.ascontiguousarray(array) for array in arrays]
    full_key = key + tuple((array.shape, array.dtype.str) for array in arrays)
    if full_key in _COMPILED:
        _COMPILED.move_to_end(full_key)
    else:
        types = {np.dtype(np.float32): ov.Type.f32, np.dtype(np.float64): ov.Type.f64,
                 np.dtype(np.int32): ov.Type.i32}
        parameters = [opset1.parameter(list(array.shape), types[array.dtype])
                      for array in arrays]
        model = ov.Model([build(*parameters).output(0)], parameters, key[0])
        _COMPILED[full_key] = _openvino_core().compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1"})
        while len(_COMPILED) > _KEEP_COMPILED:
            _COMPILED.popitem(last=False)
    compiled = _COMPILED[full_key]
    return np.array(compiled(arrays)[compiled.output(0)])


def openvino_deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1,
                           mask=None, interpolation_pad=True):
    """DeformableConvolution-8 with refdyn's signature; ``interpolation_pad`` is its
    bilinear_interpolation_pad (True: refdyn's zeros rule)."""
    import openvino.opset8 as opset8

    kh, kw = weight.shape[2:]
    group, offset_groups = input.shape[1] // weight.shape[1], offset.shape[1] // (2 * kh * kw)
    strides, pads, dilations = (list(_pair(v)) for v in (stride, padding, dilation))
    key = ("DeformableConvolution", tuple(strides), tuple(pads), tuple(dilations), group,
           offset_groups, mask is not None, interpolation_pad)

    def build(x, o, w, m=None):
        return opset8.deformable_convolution(x, o, w, strides, pads, pads, dilations, m,
                                             "explicit", group, offset_groups,
                                             interpolation_pad)
    arrays = [input, offset, weight] + ([] if mask is None else [mask])
    out = _openvino_run(key, arrays, build)
    return out if bias is None else out + bias[None, :, None, None]


def openvino_deform_ps_roi_pool(input, rois, offset=None, spatial_scale=1.0, output_dim=1,
                                group_size=1, pooled_size=7, part_size=0, sample_per_part=4,
                                trans_std=0.1, no_trans=False):
    """DeformablePSROIPooling-1 with refdyn's signature; its output is group_size x group_size,
    so pooled_size must equal group_size (other configurations are left out)."""
    import openvino.opset1 as opset1

    if pooled_size != group_size:
        raise ValueError("OpenVINO DeformablePSROIPooling pools group_size x group_size bins")
    with_offset = offset is not None and not no_trans
    key = ("DeformablePSROIPooling", output_dim, float(spatial_scale), group_size,
           sample_per_part, float(trans_std), part_size or pooled_size, with_offset)

    def build(x, r, o=None):
        return opset1.deformable_psroi_pooling(
            x, r, int(output_dim), float(spatial_scale), int(group_size), "bilinear_deformable",
            int(sample_per_part), int(sample_per_part), float(trans_std),
            int(part_size or pooled_size), o)
    return _openvino_run(key, [input, rois] + ([offset] if with_offset else []), build)


def openvino_roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
                       aligned=False, mode=None):
    """ROIAlign-9 (mode avg) with refdyn's signature: aligned_mode ``half_pixel_for_nn`` for
    aligned=True, ``asymmetric`` for False, or ``mode``; sampling_ratio <= 0 is its adaptive 0."""
    import openvino.opset9 as opset9

    height, width = _pair(output_size)
    mode = mode or ("half_pixel_for_nn" if aligned else "asymmetric")
    ratio = max(int(sampling_ratio), 0)
    key = ("ROIAlign", height, width, ratio, float(spatial_scale), mode)

    def build(x, boxes, indices):
        return opset9.roi_align(x, boxes, indices, height, width, ratio, float(spatial_scale),
                                "avg", mode)
    return _openvino_run(key, [input, rois[:, 1:5], rois[:, 0].astype(np.int32)], build)


def openvino_roi_align_half_pixel(input, rois, output_size=7, spatial_scale=1.0,
                                  sampling_ratio=-1, aligned=False):
    """ROIAlign-9 aligned_mode ``half_pixel`` as refdyn's aligned roi_align: that mode starts a
    RoI at (x1 + 0.5) spatial_scale - 0.5, refdyn's aligned rule on RoIs moved by half an image
    pixel, so the RoIs are moved back by 0.5 first; not aligned is ``asymmetric``."""
    if not aligned:
        return openvino_roi_align(input, rois, output_size, spatial_scale, sampling_ratio)
    moved = rois.astype(np.float64) - [0.0, 0.5, 0.5, 0.5, 0.5]
    return openvino_roi_align(input, moved.astype(rois.dtype), output_size, spatial_scale,
                              sampling_ratio, mode="half_pixel")


def pooled_size_is_not_group_size(operator: str, config) -> bool:
    """A deform_ps_roi_pool configuration OpenVINO cannot express (pooled_size != group_size)."""
    return operator == "deform_ps_roi_pool" and config.pooled[0] != config.group_size


def probe_openvino_float64() -> str:
    from .. import deform_conv2d
    from .deform_conv_cases import DeformConvConfig, make_case

    case = make_case(DeformConvConfig(batch=2, height=6, width=7, offset_kind="normal", seed=7))
    arguments = {k: v for k, v in case.forward_kwargs().items() if k != "boundary"}
    error = float(np.max(np.abs(openvino_deform_conv2d(**arguments) - deform_conv2d(**arguments))))
    one = np.array([[[[1 + 2.0 ** -30]]]])
    kept = openvino_deform_conv2d(one, np.zeros((1, 2, 1, 1)), np.ones((1, 1, 1, 1)))
    return (f"float64 DeformableConvolution, 2 x 2 x 6 x 7 input: max |error| {error:.2g}; "
            f"1 + 2**-30 comes back as {float(kept[0, 0, 0, 0])!r}: the CPU plugin computes "
            f"float64 models in float32, so only float32 classes are compared")



def inside_image(case) -> np.ndarray:
    """1 where a deform_conv2d sample p = p0 + p_k + dp lies in [0, H) x [0, W), else 0, in the
    mask's layout (N, offset_groups kh kw, H_out, W_out)."""
    offset, weight = case.arrays["offset"].astype(np.float64), case.arrays["weight"]
    height, width = case.arrays["input"].shape[2:]
    kh, kw = weight.shape[2:]
    (s_y, s_x), (p_y, p_x), (d_y, d_x) = (_pair(case.params[key]) for key in
                                          ("stride", "padding", "dilation"))
    n, channels, out_h, out_w = offset.shape
    pairs = offset.reshape(n, channels // (2 * kh * kw), kh, kw, 2, out_h, out_w)
    rows = (np.arange(out_h) * s_y - p_y)[None, :] + (np.arange(kh) * d_y)[:, None]
    cols = (np.arange(out_w) * s_x - p_x)[None, :] + (np.arange(kw) * d_x)[:, None]
    y = pairs[:, :, :, :, 0] + rows[:, None, :, None]
    x = pairs[:, :, :, :, 1] + cols[None, :, None, :]
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return inside.reshape(n, -1, out_h, out_w)


def probe_openvino_unpadded_rule(cases: int = 40) -> str:
    """DeformableConvolution-8 with bilinear_interpolation_pad=False against refdyn's border
    rule with the samples outside [0, H) x [0, W) masked out, on drawn float32 cases."""
    from .. import deform_conv2d
    from .deform_conv_cases import DeformConvConfig, make_case

    worst = 0.0
    for seed in range(cases):
        kind = ("normal", "far", "integer", "kink_free")[seed % 4]
        case = make_case(DeformConvConfig(batch=2, in_channels=2, out_channels=2, height=5,
                                          width=6, offset_kind=kind, dtype="float32", seed=seed,
                                          with_mask=seed % 2 == 0, boundary="border"))
        arguments = {k: v for k, v in case.forward_kwargs().items() if k != "boundary"}
        mask = inside_image(case) * (1.0 if arguments["mask"] is None else arguments["mask"])
        expected = deform_conv2d(**{**arguments, "mask": mask.astype(np.float32)},
                                 boundary="border")
        actual = openvino_deform_conv2d(**arguments, interpolation_pad=False)
        worst = max(worst, float(np.max(np.abs(actual - expected))))
    return (f"{cases} float32 cases (normal, far, integer and kink-free offsets, with and without "
            f"mask): OpenVINO = refdyn boundary='border' with the samples outside [0, H) x "
            f"[0, W) masked to 0, max |error| {worst:.2g}")
