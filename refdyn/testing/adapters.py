"""The argument conventions of other implementations, mapped onto refdyn's operators.

Each function takes the arguments the way one framework names and lays them out, checks what
refdyn infers from the shapes against what the framework declares, and calls refdyn's
operator (it computes nothing itself).  The ``*_arguments`` / ``*_inputs`` functions map the
other way, from a refdyn call to the framework's, to wrap a framework's kernel as a candidate
for :func:`refdyn.testing.check_forward`.

torchvision (``torchvision.ops``): ``deform_conv2d(input, offset, weight, bias, stride, padding,
dilation, mask)``, ``roi_align(input, boxes, output_size, spatial_scale, sampling_ratio,
aligned)`` and ``ps_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio)`` with
boxes (K, 5) are refdyn's own layouts and argument orders; call :func:`refdyn.deform_conv2d`,
:func:`refdyn.roi_align` and :func:`refdyn.ps_roi_align` directly.  Its offset gradient at a
coordinate of exactly -1 is the right derivative: ``coord_grad="torchvision"``
(pytorch/vision issue 6885).

mmcv: see :func:`mmcv_deform_conv2d`, :func:`mmcv_modulated_deform_conv2d`; ``deform_roi_pool``
already has the argument order and the x-first offset channels of
:func:`refdyn.deform_roi_align`.  mmcv returns a zero offset gradient at -1:
``coord_grad="mmcv"``.

ONNX: :func:`onnx_deform_conv` (DeformConv, opset 19) and :func:`onnx_roi_align` (RoiAlign,
opset 16).  Official DCN MXNet operators: :func:`mxnet_deformable_convolution`,
:func:`mxnet_deformable_psroi_pooling`.
"""

from __future__ import annotations

import numpy as np

from ..deform_conv_numpy import deform_conv2d
from ..roi_align_numpy import roi_align
from ..roi_pool_numpy import deform_ps_roi_pool

#: The offset-gradient rule at the image edge of each framework (``coord_grad`` argument of
#: :func:`refdyn.deform_conv2d_backward`; docs/conventions.md section 1).
COORD_GRAD_RULES = {"torchvision": "torchvision", "mmcv": "mmcv", "dcnv2-official": "mmcv"}

#: ONNX RoiAlign coordinate_transformation_mode -> refdyn/torchvision ``aligned``.
ONNX_ROI_ALIGN_MODES = {"half_pixel": True, "output_half_pixel": False}


def _expect(name: str, declared, implied) -> None:
    """Reject a declared hyper-parameter (int or tuple) that the array shapes contradict."""
    if np.atleast_1d(declared).tolist() != np.atleast_1d(implied).tolist():
        raise ValueError(f"{name}={declared} contradicts the shapes, which imply {implied}")


def _groups(input, offset, weight) -> tuple[int, int]:
    """(groups, offset groups) implied by the shapes (refdyn infers both)."""
    kh, kw = weight.shape[2:]
    return input.shape[1] // weight.shape[1], offset.shape[1] // (2 * kh * kw)


def mmcv_deform_conv2d(input, offset, weight, stride=1, padding=0, dilation=1, groups=1,
                       deform_groups=1, bias=False, im2col_step=32):
    """mmcv ``deform_conv2d`` (DCNv1, no bias).  ``im2col_step`` only splits the batch into
    chunks the CUDA kernel processes in turn: it does not change the result, and is ignored."""
    del im2col_step
    if bias:
        raise ValueError("mmcv deform_conv2d has no bias (bias=False)")
    _expect("groups", groups, _groups(input, offset, weight)[0])
    _expect("deform_groups", deform_groups, _groups(input, offset, weight)[1])
    return deform_conv2d(input, offset, weight, None, stride, padding, dilation)


def mmcv_modulated_deform_conv2d(input, offset, mask, weight, bias, stride=1, padding=0,
                                 dilation=1, groups=1, deform_groups=1):
    """mmcv ``modulated_deform_conv2d`` (DCNv2): mask after offset, before weight."""
    _expect("groups", groups, _groups(input, offset, weight)[0])
    _expect("deform_groups", deform_groups, _groups(input, offset, weight)[1])
    return deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)


def onnx_deform_conv_attributes(input, offset, weight, stride=1, padding=0,
                                dilation=1) -> dict:
    """The ONNX DeformConv attributes of a :func:`refdyn.deform_conv2d` call."""
    groups, offset_groups = _groups(input, offset, weight)
    stride, padding, dilation = (tuple(int(v) for v in np.broadcast_to(value, 2))
                                 for value in (stride, padding, dilation))
    return {"dilations": list(dilation), "group": groups, "kernel_shape": list(weight.shape[2:]),
            "offset_group": offset_groups, "pads": [*padding, *padding], "strides": list(stride)}


def onnx_deform_conv(X, W, offset, B=None, mask=None, *, dilations=(1, 1), group=1,
                     kernel_shape=None, offset_group=1, pads=(0, 0, 0, 0), strides=(1, 1)):
    """ONNX DeformConv (opset 19): inputs X, W, offset, B, mask; offsets in refdyn's (y, x)
    order.  pads are [top, left, bottom, right]; refdyn pads symmetrically, so top must equal
    bottom and left right."""
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise ValueError(f"asymmetric pads {list(pads)} are not supported (refdyn pads each "
                         "axis symmetrically)")
    if kernel_shape is not None:
        _expect("kernel_shape", kernel_shape, W.shape[2:])
    _expect("group", group, _groups(X, offset, W)[0])
    _expect("offset_group", offset_group, _groups(X, offset, W)[1])
    return deform_conv2d(X, offset, W, B, tuple(strides), (top, left), tuple(dilations), mask)


def onnx_roi_align_inputs(rois, aligned: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """ONNX RoiAlign's rois (R, 4), batch_indices (R,) int64 and coordinate_transformation_mode
    for refdyn/torchvision RoIs (R, 5) (batch index first) and ``aligned``."""
    rois = np.asarray(rois)
    mode = "half_pixel" if aligned else "output_half_pixel"
    return rois[:, 1:], rois[:, 0].astype(np.int64), mode


def onnx_roi_align(X, rois, batch_indices, *, coordinate_transformation_mode="half_pixel",
                   mode="avg", output_height=1, output_width=1, sampling_ratio=0,
                   spatial_scale=1.0):
    """ONNX RoiAlign (opset 16): rois (R, 4) [x1, y1, x2, y2] and batch_indices (R,);
    ``half_pixel`` is torchvision's aligned=True, ``output_half_pixel`` aligned=False;
    sampling_ratio 0 is adaptive.  Only mode "avg" (the max mode is not RoIAlign)."""
    if mode != "avg":
        raise ValueError(f"only mode='avg' is supported, got {mode!r}")
    if coordinate_transformation_mode not in ONNX_ROI_ALIGN_MODES:
        raise ValueError(f"coordinate_transformation_mode must be one of "
                         f"{sorted(ONNX_ROI_ALIGN_MODES)}, got {coordinate_transformation_mode!r}")
    rois5 = np.concatenate([np.asarray(batch_indices, dtype=X.dtype)[:, None],
                            np.asarray(rois, dtype=X.dtype)], axis=1)
    return roi_align(X, rois5, (output_height, output_width), spatial_scale, sampling_ratio,
                     ONNX_ROI_ALIGN_MODES[coordinate_transformation_mode])


def mxnet_deformable_convolution(data, offset, weight, bias=None, *, kernel, stride=(1, 1),
                                 dilate=(1, 1), pad=(0, 0), num_filter, num_group=1,
                                 num_deformable_group=1, no_bias=False):
    """Official DCN ``mx.contrib.sym.DeformableConvolution``; offsets in refdyn's (y, x) order;
    its offset gradient is 0 at -1 like mmcv's (``coord_grad="mmcv"``)."""
    _expect("kernel", kernel, weight.shape[2:])
    _expect("num_filter", num_filter, weight.shape[0])
    _expect("num_group", num_group, _groups(data, offset, weight)[0])
    _expect("num_deformable_group", num_deformable_group, _groups(data, offset, weight)[1])
    return deform_conv2d(data, offset, weight, None if no_bias else bias, tuple(stride),
                         tuple(pad), tuple(dilate))


def mxnet_deformable_psroi_pooling(data, rois, trans, *, spatial_scale, output_dim, group_size,
                                   pooled_size, part_size=0, sample_per_part=1, trans_std=0.0,
                                   no_trans=False):
    """Official DCN ``mx.contrib.sym.DeformablePSROIPooling`` (MXNet's defaults); trans is
    refdyn's offset (R, 2 * classes, part, part), x first.  Returns the pooled output only
    (MXNet also returns the per-bin sample counts)."""
    return deform_ps_roi_pool(data, rois, trans, spatial_scale, output_dim, group_size,
                              pooled_size, part_size, sample_per_part, trans_std, no_trans)
