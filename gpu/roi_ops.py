"""The RoI pooling family on a GPU backend (:mod:`refdyn.gpu.backend`): the NumPy reference's
checks build one :class:`refdyn.gpu.roi_launch.RoICall` (the kind of pooling and its
parameters), then the backend runs ``roi_launch`` (CuPy, host build) or ``roi_numba``.  Every
gradient is a gather (one thread per input element, one per offset cell): no atomics, the same
bits on every run.  RoIs are read on the host for the batch-index check (R x 5 values).

``roi_pool``, ``ps_roi_pool`` and ``modulated_deform_roi_pool`` are the same special cases of
the deformable operators as in NumPy (refdyn/roi_pool_numpy.py, refdyn/roi_align_numpy.py).
"""

from __future__ import annotations

from refdyn.roi_args import RoIPoolGrads, check_modulation_given

from .roi_launch import align_call, check_backward, eq5_call, official_call


def _forward(backend, call, input, rois, offset=None, mask=None):
    return backend.forward("roi", "forward", call, input, rois, offset, mask)


def _backward(backend, call, grad_output, input, rois, offset=None, mask=None) -> RoIPoolGrads:
    check_backward(call, grad_output)
    return backend.backward("roi", "backward", call, grad_output, input, rois, offset, mask)


def roi_align(backend, input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1,
              aligned=False):
    """torchvision roi_align on the GPU; as :func:`refdyn.roi_align`."""
    call = align_call(input, backend.to_host(rois), None, None, output_size, spatial_scale,
                      sampling_ratio, aligned, 0.0, backend.all_finite)
    return _forward(backend, call, input, rois)


def roi_align_backward(backend, grad_output, input, rois, output_size=7, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False) -> RoIPoolGrads:
    """Gradient of :func:`roi_align` on the GPU; as :func:`refdyn.roi_align_backward`."""
    call = align_call(input, backend.to_host(rois), None, None, output_size, spatial_scale,
                      sampling_ratio, aligned, 0.0, backend.all_finite)
    return _backward(backend, call, grad_output, input, rois)


def ps_roi_align(backend, input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1):
    """torchvision ps_roi_align on the GPU; as :func:`refdyn.ps_roi_align`."""
    call = align_call(input, backend.to_host(rois), None, None, output_size, spatial_scale,
                      sampling_ratio, True, 0.0, backend.all_finite, position_sensitive=True)
    return _forward(backend, call, input, rois)


def ps_roi_align_backward(backend, grad_output, input, rois, output_size=7, spatial_scale=1.0,
                          sampling_ratio=-1) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_align` on the GPU; as :func:`refdyn.ps_roi_align_backward`."""
    call = align_call(input, backend.to_host(rois), None, None, output_size, spatial_scale,
                      sampling_ratio, True, 0.0, backend.all_finite, position_sensitive=True)
    return _backward(backend, call, grad_output, input, rois)


def deform_roi_align(backend, input, rois, offset=None, mask=None, output_size=7,
                     spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """mmcv DeformRoIPool, modulated by ``mask`` (DCNv2 Eq. 2), on the GPU; as
    :func:`refdyn.deform_roi_align`."""
    call = align_call(input, backend.to_host(rois), offset, mask, output_size, spatial_scale,
                      sampling_ratio, True, gamma, backend.all_finite)
    return _forward(backend, call, input, rois, offset, mask)


def deform_roi_align_backward(backend, grad_output, input, rois, offset=None, mask=None,
                              output_size=7, spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                              coord_grad="torchvision") -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_align` (input, offset, mask) on the GPU; as
    :func:`refdyn.deform_roi_align_backward`."""
    call = align_call(input, backend.to_host(rois), offset, mask, output_size, spatial_scale,
                      sampling_ratio, True, gamma, backend.all_finite, coord_grad=coord_grad)
    return _backward(backend, call, grad_output, input, rois, offset, mask)


def modulated_deform_roi_pool(backend, input, rois, offset, mask, output_size=7,
                              spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
    """Modulated deformable RoI pooling, DCNv2 Eq. 2 (mmcv convention), on the GPU:
    :func:`deform_roi_align` with its mask required; as :func:`refdyn.modulated_deform_roi_pool`."""
    check_modulation_given(mask)
    return deform_roi_align(backend, input, rois, offset, mask, output_size, spatial_scale,
                            sampling_ratio, gamma)


def deform_roi_pool(backend, input, rois, offset=None, output_size=7, spatial_scale=1.0,
                    gamma=0.1):
    """Deformable RoI pooling, DCNv1 Eq. 5-6, on the GPU; as :func:`refdyn.deform_roi_pool`."""
    call = eq5_call(input, backend.to_host(rois), offset, output_size, spatial_scale, gamma,
                    backend.all_finite)
    return _forward(backend, call, input, rois, offset)


def deform_roi_pool_backward(backend, grad_output, input, rois, offset=None, output_size=7,
                             spatial_scale=1.0, gamma=0.1) -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_pool` (DCNv1 Appendix A, Eq. 8) on the GPU; as
    :func:`refdyn.deform_roi_pool_backward`."""
    call = eq5_call(input, backend.to_host(rois), offset, output_size, spatial_scale, gamma,
                    backend.all_finite)
    return _backward(backend, call, grad_output, input, rois, offset)


def roi_pool(backend, input, rois, output_size=7, spatial_scale=1.0):
    """RoI pooling, DCNv1 Eq. 5 (average form): :func:`deform_roi_pool` without offsets; as
    :func:`refdyn.roi_pool`."""
    return deform_roi_pool(backend, input, rois, None, output_size, spatial_scale)


def roi_pool_backward(backend, grad_output, input, rois, output_size=7,
                      spatial_scale=1.0) -> RoIPoolGrads:
    """Gradient of :func:`roi_pool` with respect to the input; as
    :func:`refdyn.roi_pool_backward`."""
    return deform_roi_pool_backward(backend, grad_output, input, rois, None, output_size,
                                    spatial_scale)


def deform_ps_roi_pool(backend, input, rois, offset=None, spatial_scale=1.0, output_dim=1,
                       group_size=1, pooled_size=7, part_size=0, sample_per_part=4,
                       trans_std=0.1, no_trans=False):
    """The official deformable PS RoI pooling on the GPU; as :func:`refdyn.deform_ps_roi_pool`."""
    call = official_call(input, backend.to_host(rois), offset, spatial_scale, output_dim,
                         group_size, pooled_size, part_size, sample_per_part, trans_std,
                         no_trans, backend.all_finite)
    return _forward(backend, call, input, rois, offset)


def deform_ps_roi_pool_backward(backend, grad_output, input, rois, offset=None,
                                spatial_scale=1.0, output_dim=1, group_size=1, pooled_size=7,
                                part_size=0, sample_per_part=4, trans_std=0.1,
                                no_trans=False) -> RoIPoolGrads:
    """Gradients of :func:`deform_ps_roi_pool` on the GPU; as
    :func:`refdyn.deform_ps_roi_pool_backward`."""
    call = official_call(input, backend.to_host(rois), offset, spatial_scale, output_dim,
                         group_size, pooled_size, part_size, sample_per_part, trans_std,
                         no_trans, backend.all_finite)
    return _backward(backend, call, grad_output, input, rois, offset)


def ps_roi_pool(backend, input, rois, spatial_scale=1.0, output_dim=1, group_size=1,
                pooled_size=7, sample_per_part=4):
    """Position-sensitive RoI pooling with the official DCN rules (``no_trans``); as
    :func:`refdyn.ps_roi_pool`."""
    return deform_ps_roi_pool(backend, input, rois, None, spatial_scale, output_dim, group_size,
                              pooled_size, 0, sample_per_part, no_trans=True)


def ps_roi_pool_backward(backend, grad_output, input, rois, spatial_scale=1.0, output_dim=1,
                         group_size=1, pooled_size=7, sample_per_part=4) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_pool` with respect to the input; as
    :func:`refdyn.ps_roi_pool_backward`."""
    return deform_ps_roi_pool_backward(backend, grad_output, input, rois, None, spatial_scale,
                                       output_dim, group_size, pooled_size, 0, sample_per_part,
                                       no_trans=True)
