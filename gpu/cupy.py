"""The CUDA C kernels (``deform_conv.cu``, ``ddf.cu``, ``roi_pool.cu``, ``lsdfn.cu``,
``mimic_loss.cu``) on a GPU via CuPy (importable as ``refdyn.gpu.cupy``).

Each source is compiled by NVRTC through CuPy (:func:`compile_source`, with
:data:`NVRTC_OPTIONS`) once per device and kept as a loaded module.  Same functions and
arguments as the NumPy reference of every operator with a GPU mirror in
:mod:`refdyn.registry`; NumPy arrays are copied to the device and the results come back as
NumPy arrays, while CuPy arrays stay on the device (the result is a CuPy array when the first
array argument is one).  :func:`refdyn.gpu.backend_problem` says whether
this can run here.

Floating point on the device is IEEE, as in the NumPy reference and the host build
(``refdyn.gpu.host``): no fused multiply-adds (``--fmad=false``) and float32 subnormals kept,
not flushed to zero (``-ftz=false``).  That is why the sources are not compiled by
``cupy.RawModule``: its compile appends ``-ftz=true`` after the caller's options, and NVRTC
obeys the last of conflicting options, so float32 subnormal inputs and results would become
zero.  tests/test_gpu_nvrtc.py compiles every source as here for an sm_90 device (H100/H200)
and checks the options NVRTC receives and the float instructions of the PTX.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cupy
import numpy as np
from cupy.cuda.compiler import compile_using_nvrtc
from cupy.cuda.function import Module

from refdyn.active_conv import ActiveConvGrads, active_conv2d_backward_via, active_conv2d_via
from refdyn.ddf_args import DDFGrads, check_ddf_args, check_ddf_backward_args
from refdyn.deform_conv_args import DeformConvGrads, check_deform_conv2d_args, \
    check_deform_conv2d_backward_args

from refdyn.roi_pool_args import RoIPoolGrads

from refdyn.lsdfn_args import DFNGrads, LSDFNGrads, LSDFNSampleGrads, check_dfn_args, \
    check_grad_output, check_lsdfn_args, check_lsdfn_sample_args

from refdyn._checks import check_float_array as _check_float_array
from refdyn.feature_mimic import MimicLossGrads, check_mimic_loss_args

from . import _cuda_c, _cuda_c_ddf, _cuda_c_lsdfn, _cuda_c_roi
from . import _cuda_c_mimic

#: Launch configuration: threads per block, and a cap on the blocks (the kernels' grid-stride
#: loops cover any remaining elements).
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 65535

SOURCE_DIR = Path(__file__).resolve().parent


#: The NVRTC options of every source; CuPy's compile_using_nvrtc appends the device's
#: architecture (``-arch=sm_XY``) and ``--device-as-default-execution-space``.
#: --fmad=false: no fused multiply-adds, so coordinates round as in the NumPy reference and
#: samples placed exactly on a kink or a skip line stay exactly there.
#: -ftz=false: float32 subnormals are kept (IEEE), as in the NumPy reference.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false", "-ftz=false")


def compile_source(source_name: str, arch: str | None = None) -> bytes:
    """The CUDA C file ``source_name`` of this folder compiled by NVRTC with
    :data:`NVRTC_OPTIONS` for compute capability ``arch`` ("90" for sm_90; default: the current
    device's): a cubin, or PTX where CuPy is set to compile PTX (``CUPY_COMPILE_WITH_PTX=1``).
    Raises ``cupy.cuda.compiler.CompileException``, with NVRTC's log, when the source does not
    compile."""
    binary, _ = compile_using_nvrtc((SOURCE_DIR / source_name).read_text(), NVRTC_OPTIONS,
                                    arch=arch, filename=source_name)
    return binary


@lru_cache(maxsize=None)
def _module(source_name: str, device_id: int) -> Module:
    """The CUDA C file ``source_name`` of this folder compiled for device ``device_id`` (the
    current one) and loaded there."""
    module = Module()
    module.load(compile_source(source_name))
    return module


def launch(name: str, total_threads: int, args) -> None:
    """Run kernel ``name`` on the current stream with at least ``total_threads`` threads (up to
    MAX_BLOCKS blocks); ints are passed as long long, None as a null pointer."""
    blocks = max(1, min(-(-total_threads // THREADS_PER_BLOCK), MAX_BLOCKS))
    arguments = tuple(np.int64(value) if isinstance(value, int) else value for value in args)
    kernel = _module(_cuda_c.source_of(name), cupy.cuda.Device().id).get_function(name)
    KERNEL_LOG.run(name, args, lambda: kernel((blocks,), (THREADS_PER_BLOCK,), arguments))


def _event():
    """A CUDA event recorded now on the current stream."""
    event = cupy.cuda.Event()
    event.record()
    return event


def _event_seconds(start, end) -> float:
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3


#: The launches of this backend, timed with CUDA events inside ``kernel_times()``: each
#: kernel's device time, without the matrix products (cuBLAS) between them.
KERNEL_LOG = _cuda_c.KernelLog(mark=_event, elapsed=_event_seconds)
kernel_times = KERNEL_LOG.timing


def _all_finite(array) -> bool:
    return bool(cupy.get_array_module(array).isfinite(array).all())


def _to_device(*arrays):
    return [None if array is None else cupy.ascontiguousarray(cupy.asarray(array))
            for array in arrays]


def _like_input(array, input):
    """``array`` as a CuPy array if ``input`` is one, else as a NumPy array."""
    if array is None or isinstance(input, cupy.ndarray):
        return array
    return cupy.asnumpy(array)


def _grads_like_input(grads, input):
    """Each gradient of a DeformConvGrads, ActiveConvGrads, DDFGrads, RoIPoolGrads or an LS-DFN /
    DFN record passed through
    :func:`_like_input`."""
    return type(grads)(**{name: _like_input(value, input) for name, value in vars(grads).items()})


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, boundary="zeros", chunk_elements: int = _cuda_c.DEFAULT_CHUNK_ELEMENTS):
    """Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1) on the GPU: the sampled columns of a
    chunk of images (CUDA C), then one cuBLAS matrix product per group.

    Same arguments and result as :func:`refdyn.deform_conv2d`; NumPy or CuPy arrays.
    ``chunk_elements`` bounds the columns held at a time
    (:data:`refdyn.gpu._cuda_c.DEFAULT_CHUNK_ELEMENTS`).
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary, all_finite=_all_finite)
    output = _cuda_c.forward(cupy, launch, geo, *_to_device(input, offset, weight, bias, mask),
                             chunk_elements)
    return _like_input(output, input)


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, coord_grad="torchvision", deterministic=False,
                           *, boundary="zeros",
                           chunk_elements: int = _cuda_c.DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Gradients of deform_conv2d (DCNv1 Appendix A; DCNv2) on the GPU.

    Same arguments and result as :func:`refdyn.deform_conv2d_backward`, plus ``deterministic``:
    grad_input by an ordered gather (bitwise reproducible) instead of atomicAdd.
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary, all_finite=_all_finite)
    check_deform_conv2d_backward_args(grad_output, geo, coord_grad)
    device_grad_output, device_input, device_offset, device_weight, device_mask = _to_device(
        grad_output, input, offset, weight, mask)
    grads = _cuda_c.backward(cupy, launch, geo, device_grad_output, device_input, device_offset,
                             device_weight, device_mask, coord_grad, deterministic, chunk_elements)
    return _grads_like_input(grads, input)


def _on_device(array):
    """A NumPy array copied to the device; anything else as it is (for the checks to judge)."""
    return cupy.asarray(array) if isinstance(array, np.ndarray) else array


def active_conv2d(input, positions, weight, bias=None, stride=1, padding=0, boundary="zeros"):
    """Active convolution y(p0) = sum_k w_k x(p0 + p_k + theta_k) (DCNv1 Eq. 2 with dp_k = theta_k)
    from this module's :func:`deform_conv2d`, by :func:`refdyn.active_conv.active_conv2d_via`
    over CuPy arrays (NumPy arguments are copied to the device first).

    Same arguments, checks and result as :func:`refdyn.active_conv.active_conv2d`.
    """
    output = active_conv2d_via(deform_conv2d, cupy,
                               *map(_on_device, (input, positions, weight, bias)), stride,
                               padding, boundary, all_finite=_all_finite)
    return _like_input(output, input)


def active_conv2d_backward(grad_output, input, positions, weight, bias=None, stride=1, padding=0,
                           boundary="zeros", coord_grad="torchvision",
                           deterministic=False) -> ActiveConvGrads:
    """Gradients of :func:`active_conv2d` from :func:`deform_conv2d_backward` (the position
    gradient sums the offset gradient over (n, i, j)), by
    :func:`refdyn.active_conv.active_conv2d_backward_via` over CuPy arrays.

    Same arguments, checks and result as :func:`refdyn.active_conv.active_conv2d_backward`, plus
    ``deterministic`` for grad_input as in :func:`deform_conv2d_backward`.
    """
    grads = active_conv2d_backward_via(
        deform_conv2d_backward, cupy,
        *map(_on_device, (grad_output, input, positions, weight, bias)), stride, padding,
        boundary, all_finite=_all_finite, coord_grad=coord_grad, deterministic=deterministic)
    return _grads_like_input(grads, input)


def ddf(features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
        kernel_combine="mul"):
    """The DDF operation (paper 003) on the GPU, the kernel of ddf.cu.

    Same arguments, checks and result as :func:`refdyn.decoupled_dynamic_filter.ddf`; NumPy or
    CuPy arrays (the result is a CuPy array when ``features`` is one).
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine, all_finite=_all_finite)
    output = _cuda_c_ddf.forward(cupy, launch, geo,
                                 *_to_device(features, channel_filter, spatial_filter))
    return _like_input(output, features)


def ddf_backward(grad_output, features, channel_filter, spatial_filter, kernel_size, dilation=1,
                 stride=1, kernel_combine="mul") -> DDFGrads:
    """Every gradient of :func:`ddf` (ddf.cu, Eq. B1-B3) on the GPU; gathers only, so bitwise
    reproducible.

    Same arguments, checks and result as :func:`refdyn.decoupled_dynamic_filter.ddf_backward`;
    CuPy gradients when ``features`` is a CuPy array.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine, all_finite=_all_finite)
    check_ddf_backward_args(grad_output, geo)
    grads = _cuda_c_ddf.backward(cupy, launch, geo, *_to_device(
        grad_output, features, channel_filter, spatial_filter))
    return _grads_like_input(grads, features)


# --- The RoI pooling family (roi_pool.cu, launched by _cuda_c_roi) -----------------------------


def _host_rois(rois):
    """The RoIs on the host for the batch-index check (R x 5 values); anything else as it is."""
    return cupy.asnumpy(rois) if isinstance(rois, cupy.ndarray) else rois


def _roi_forward(call, input, rois, offset=None, mask=None):
    output = _cuda_c_roi.forward(cupy, launch, call, *_to_device(input, rois, offset, mask))
    return _like_input(output, input)


def _roi_backward(call, grad_output, input, rois, offset=None, mask=None) -> RoIPoolGrads:
    _cuda_c_roi.check_backward(call, grad_output)
    grads = _cuda_c_roi.backward(cupy, launch, call,
                                 *_to_device(grad_output, input, rois, offset, mask))
    return _grads_like_input(grads, input)


def roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision roi_align on the GPU (roi_pool.cu); as :func:`refdyn.roi_align_family.roi_align`,
    NumPy or CuPy arrays (a CuPy result when ``input`` is one)."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), None, None, output_size,
                                  spatial_scale, sampling_ratio, aligned, 0.0, _all_finite)
    return _roi_forward(call, input, rois)


def roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False) -> RoIPoolGrads:
    """Gradient of :func:`roi_align` on the GPU (a gather: no atomics, reproducible); as
    :func:`refdyn.roi_align_family.roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), None, None, output_size,
                                  spatial_scale, sampling_ratio, aligned, 0.0, _all_finite)
    return _roi_backward(call, grad_output, input, rois)


def ps_roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1):
    """torchvision ps_roi_align on the GPU (roi_pool.cu); as
    :func:`refdyn.roi_align_family.ps_roi_align`."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), None, None, output_size,
                                  spatial_scale, sampling_ratio, True, 0.0, _all_finite, True)
    return _roi_forward(call, input, rois)


def ps_roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                          sampling_ratio=-1) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_align` on the GPU (a gather: no atomics, reproducible); as
    :func:`refdyn.roi_align_family.ps_roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), None, None, output_size,
                                  spatial_scale, sampling_ratio, True, 0.0, _all_finite, True)
    return _roi_backward(call, grad_output, input, rois)


def deform_roi_align(input, rois, offset=None, mask=None, output_size=7, spatial_scale=1.0,
                     sampling_ratio=0, gamma=0.1):
    """mmcv DeformRoIPool, modulated by ``mask`` (DCNv2 Eq. 2), on the GPU; as
    :func:`refdyn.roi_align_family.deform_roi_align`."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), offset, mask, output_size,
                                  spatial_scale, sampling_ratio, True, gamma, _all_finite)
    return _roi_forward(call, input, rois, offset, mask)


def deform_roi_align_backward(grad_output, input, rois, offset=None, mask=None, output_size=7,
                              spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                              coord_grad="torchvision") -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_align` (input, offset, mask) on the GPU; as
    :func:`refdyn.roi_align_family.deform_roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, _host_rois(rois), offset, mask, output_size,
                                  spatial_scale, sampling_ratio, True, gamma, _all_finite,
                                  coord_grad=coord_grad)
    return _roi_backward(call, grad_output, input, rois, offset, mask)


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, gamma=0.1):
    """Deformable RoI pooling, DCNv1 Eq. 5-6, on the GPU; as
    :func:`refdyn.roi_pooling.deform_roi_pool`."""
    call = _cuda_c_roi.eq5_call(input, _host_rois(rois), offset, output_size, spatial_scale,
                                gamma, _all_finite)
    return _roi_forward(call, input, rois, offset)


def deform_roi_pool_backward(grad_output, input, rois, offset=None, output_size=7,
                             spatial_scale=1.0, gamma=0.1) -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_pool` (DCNv1 Appendix A, Eq. 8) on the GPU; as
    :func:`refdyn.roi_pooling.deform_roi_pool_backward`."""
    call = _cuda_c_roi.eq5_call(input, _host_rois(rois), offset, output_size, spatial_scale,
                                gamma, _all_finite)
    return _roi_backward(call, grad_output, input, rois, offset)


def deform_ps_roi_pool(input, rois, offset=None, spatial_scale=1.0, output_dim=1, group_size=1,
                       pooled_size=7, part_size=0, sample_per_part=4, trans_std=0.1,
                       no_trans=False):
    """The official deformable PS RoI pooling on the GPU; as
    :func:`refdyn.roi_pooling.deform_ps_roi_pool`."""
    call = _cuda_c_roi.official_call(input, _host_rois(rois), offset, spatial_scale, output_dim,
                                     group_size, pooled_size, part_size, sample_per_part,
                                     trans_std, no_trans, _all_finite)
    return _roi_forward(call, input, rois, offset)


def deform_ps_roi_pool_backward(grad_output, input, rois, offset=None, spatial_scale=1.0,
                                output_dim=1, group_size=1, pooled_size=7, part_size=0,
                                sample_per_part=4, trans_std=0.1, no_trans=False) -> RoIPoolGrads:
    """Gradients of :func:`deform_ps_roi_pool` on the GPU; as
    :func:`refdyn.roi_pooling.deform_ps_roi_pool_backward`."""
    call = _cuda_c_roi.official_call(input, _host_rois(rois), offset, spatial_scale, output_dim,
                                     group_size, pooled_size, part_size, sample_per_part,
                                     trans_std, no_trans, _all_finite)
    return _roi_backward(call, grad_output, input, rois, offset)


# --- LS-DFN (paper 000) and DFN (lsdfn.cu, launched by _cuda_c_lsdfn) ---------------------------


def dfn(features, filters, kernel_size, softmax=False):
    """Dynamic local filtering (Dynamic Filter Networks) on the GPU (lsdfn.cu); as
    :func:`refdyn.dynamic_filter_networks.dfn`, NumPy or CuPy arrays (a CuPy result when
    ``features`` is one)."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax,
                                      all_finite=_all_finite)
    output = _cuda_c_lsdfn.dfn_forward(cupy, launch, geo, per_channel,
                                       *_to_device(features, filters), softmax)
    return _like_input(output, features)


def dfn_backward(grad_output, features, filters, kernel_size, softmax=False) -> DFNGrads:
    """Both gradients of :func:`dfn` on the GPU (gathers: reproducible); as
    :func:`refdyn.dynamic_filter_networks.dfn_backward`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax,
                                      all_finite=_all_finite)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C, H, W)")
    grads = _cuda_c_lsdfn.dfn_backward(cupy, launch, geo, per_channel,
                                       *_to_device(grad_output, features, filters), softmax)
    return _grads_like_input(grads, features)


def lsdfn_sample(features, kernels, samples, gamma, kernel_size, indexing="centred"):
    """LS-DFN's Eq. 2 on the GPU; as :func:`refdyn.large_sampling_dynamic_filter.lsdfn_sample`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing,
                                  all_finite=_all_finite)
    output = _cuda_c_lsdfn.sample_forward(cupy, launch, geo, *_to_device(features, kernels))
    return _like_input(output, features)


def lsdfn_sample_backward(grad_output, features, kernels, samples, gamma, kernel_size,
                          indexing="centred") -> LSDFNSampleGrads:
    """Both gradients of :func:`lsdfn_sample` on the GPU (gathers); as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn_sample_backward`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing,
                                  all_finite=_all_finite)
    check_grad_output(grad_output, geo.sample_output_shape, geo.dtype, "(N, s*s, C', H, W)")
    grads = _cuda_c_lsdfn.sample_backward(cupy, launch, geo,
                                          *_to_device(grad_output, features, kernels))
    return _grads_like_input(grads, features)


def lsdfn(features, u, v, sample_attention=None, position_attention=None, full_attention=None,
          *, samples, gamma, kernel_size, residual=True, attention="factorized", fuse="sum",
          indexing="centred", kernel_form="described"):
    """LS-DFN, Eq. 4-7 end to end, on the GPU; as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form, all_finite=_all_finite)
    options = dict(residual=residual, kernel_form=kernel_form, attention=attention, fuse=fuse)
    output = _cuda_c_lsdfn.forward(cupy, launch, geo, options, _to_device(*inputs))
    return _like_input(output, features)


def lsdfn_backward(grad_output, features, u, v, sample_attention=None, position_attention=None,
                   full_attention=None, *, samples, gamma, kernel_size, residual=True,
                   attention="factorized", fuse="sum", indexing="centred",
                   kernel_form="described") -> LSDFNGrads:
    """Every gradient of :func:`lsdfn` on the GPU (gathers: reproducible); as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn_backward`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form, all_finite=_all_finite)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C', H, W)")
    options = dict(residual=residual, kernel_form=kernel_form, attention=attention, fuse=fuse)
    device_grad_output, *device_inputs = _to_device(grad_output, *inputs)
    grads = _cuda_c_lsdfn.backward(cupy, launch, geo, options, device_grad_output, device_inputs)
    return _grads_like_input(grads, features)


# --- DCNv2's R-CNN feature mimic loss (mimic_loss.cu, launched by _cuda_c_mimic) --------------


def mimic_loss(features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])] on the GPU (mimic_loss.cu); as
    :func:`refdyn.feature_mimic.mimic_loss`, NumPy or CuPy arrays (a 0-d CuPy result when
    ``features`` is one)."""
    dtype = check_mimic_loss_args(features, target, eps, all_finite=_all_finite)
    loss = _cuda_c_mimic.forward(cupy, launch, dtype, *_to_device(features, target), eps)
    return _like_input(loss, features)


def mimic_loss_backward(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Both gradients of :func:`mimic_loss` on the GPU (one thread per element, no atomics:
    reproducible); as :func:`refdyn.feature_mimic.mimic_loss_backward`."""
    dtype = check_mimic_loss_args(features, target, eps, all_finite=_all_finite)
    _check_float_array(grad_output, "grad_output", 0, dtype)
    grads = _cuda_c_mimic.backward(cupy, launch, dtype,
                                   *_to_device(grad_output, features, target), eps)
    return _grads_like_input(grads, features)
