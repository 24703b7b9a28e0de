"""The launch sequences of the CUDA C kernels in ``lsdfn.cu`` (LS-DFN, Wu et al., ECCV 2018,
Eq. 2-7, and the dynamic local filtering layer of Dynamic Filter Networks), run by
:mod:`refdyn.gpu.lsdfn_ops` on both CUDA C backends (:mod:`refdyn.gpu.cupy`,
:mod:`refdyn.gpu.host`), which pass their array module ``xp`` and their
``launch(kernel_name, total_threads, args)`` first.

Arrays reach this module validated (:mod:`refdyn.lsdfn_args`), C-contiguous and in ``xp``.
Every gradient is a gather (lsdfn.cu), so there is no atomic path; an empty batch launches
nothing.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from refdyn.lsdfn_args import DFNGrads, LSDFNGeometry, LSDFNGrads, LSDFNSampleGrads

from . import cuda_c

#: The fields of ``struct LSDFNGeometry`` in lsdfn.cu, in order (13 int64 values).
GEOMETRY_FIELDS = ("batch", "channels", "out_channels", "height", "width", "kernel_size",
                   "samples", "gamma", "indexing", "residual", "kernel_form", "attention", "fuse")

#: The enums of lsdfn.cu: ``Indexing``, ``KernelForm``, ``Attention``, ``Fuse``.
INDEXINGS = {"centred": 0, "paper": 1}
KERNEL_FORMS = {"described": 0, "printed": 1}
ATTENTIONS = {None: 0, "factorized": 1, "full": 2}
FUSES = {"sum": 0, "max": 1}


def geometry_array(xp, geo: LSDFNGeometry, residual=False, kernel_form="described",
                   attention=None, fuse="sum"):
    """``struct LSDFNGeometry`` as an int64 array of ``xp``: the sizes of ``geo`` and lsdfn's
    options as their enum values (the defaults are those Eq. 2 and DFN have: no kernel parts,
    no attention, one summed sample)."""
    values = {name: getattr(geo, name) for name in GEOMETRY_FIELDS[:8]}
    values.update(indexing=INDEXINGS[geo.indexing], residual=int(residual),
                  kernel_form=KERNEL_FORMS[kernel_form], attention=ATTENTIONS[attention],
                  fuse=FUSES[fuse])
    return xp.asarray(np.array([values[name] for name in GEOMETRY_FIELDS], dtype=np.int64))


#: The exported name of kernel ``name`` of lsdfn.cu for a dtype (cuda_c.kernel_name).
kernel_name = partial(cuda_c.kernel_name, "lsdfn")


# --- DFN ----------------------------------------------------------------------------------------


def _dfn_filters(xp, launch, geo, geometry, groups, filters, softmax):
    """The filters the layer applies: ``filters`` or their softmax over the taps."""
    if not softmax:
        return filters
    normalised = xp.empty(filters.shape, dtype=geo.dtype)
    launch(kernel_name("dfn_softmax", geo.dtype), geo.batch * groups * geo.height * geo.width,
           [geometry, groups, filters, normalised])
    return normalised


def dfn_forward(xp, launch, geo: LSDFNGeometry, features, filters, per_channel: bool,
                softmax: bool):
    """Output of dfn: the softmax (when asked for), then one thread per output element."""
    output = xp.empty(geo.output_shape, dtype=geo.dtype)
    if geo.batch == 0:
        return output
    geometry, groups = geometry_array(xp, geo), geo.channels if per_channel else 1
    used = _dfn_filters(xp, launch, geo, geometry, groups, filters, softmax)
    launch(kernel_name("dfn_forward", geo.dtype), output.size,
           [geometry, groups, features, used, output])
    return output


def dfn_backward(xp, launch, geo: LSDFNGeometry, grad_output, features, filters,
                 per_channel: bool, softmax: bool) -> DFNGrads:
    """Both gradients of dfn, gathers: dL/dX, dL/dF' and (softmax) dL/dF through the softmax."""
    grads = DFNGrads(xp.empty(features.shape, dtype=geo.dtype),
                     xp.empty(filters.shape, dtype=geo.dtype))
    if geo.batch == 0:
        return grads
    geometry, groups = geometry_array(xp, geo), geo.channels if per_channel else 1
    used = _dfn_filters(xp, launch, geo, geometry, groups, filters, softmax)
    launch(kernel_name("dfn_grad_features", geo.dtype), features.size,
           [geometry, groups, used, grad_output, grads.grad_features])
    grad_used = xp.empty(filters.shape, dtype=geo.dtype) if softmax else grads.grad_filters
    launch(kernel_name("dfn_grad_filters", geo.dtype), filters.size,
           [geometry, groups, features, grad_output, grad_used])
    if softmax:
        launch(kernel_name("dfn_softmax_backward", geo.dtype), filters.size,
               [geometry, groups, used, grad_used, grads.grad_filters])
    return grads


# --- Eq. 2: lsdfn_sample ------------------------------------------------------------------------


def sample_forward(xp, launch, geo: LSDFNGeometry, features, kernels):
    """Xhat of Eq. 2 (N, s*s, C', H, W): one thread per element."""
    output = xp.empty(geo.sample_output_shape, dtype=geo.dtype)
    if geo.batch == 0:
        return output
    launch(kernel_name("sample_forward", geo.dtype), output.size,
           [geometry_array(xp, geo), features, kernels, output])
    return output


def sample_backward(xp, launch, geo: LSDFNGeometry, grad_output, features,
                    kernels) -> LSDFNSampleGrads:
    """Both gradients of Eq. 2, one gather kernel each."""
    grads = LSDFNSampleGrads(xp.empty(features.shape, dtype=geo.dtype),
                             xp.empty(kernels.shape, dtype=geo.dtype))
    if geo.batch == 0:
        return grads
    geometry = geometry_array(xp, geo)
    launch(kernel_name("sample_grad_features", geo.dtype), features.size,
           [geometry, kernels, grad_output, grads.grad_features])
    launch(kernel_name("sample_grad_kernels", geo.dtype), kernels.size,
           [geometry, features, grad_output, grads.grad_kernels])
    return grads


# --- Eq. 4-7: lsdfn -----------------------------------------------------------------------------


def forward(xp, launch, geo: LSDFNGeometry, *inputs, **options):
    """Output of lsdfn (Eq. 4-7): one thread per output element.  inputs: features, u, v and
    the three attention arrays (None where not given); options: residual, kernel_form,
    attention, fuse."""
    output = xp.empty(geo.output_shape, dtype=geo.dtype)
    if geo.batch == 0:
        return output
    launch(kernel_name("forward", geo.dtype), output.size,
           [geometry_array(xp, geo, **options), *inputs, output])
    return output


def backward(xp, launch, geo: LSDFNGeometry, grad_output, *inputs, **options) -> LSDFNGrads:
    """Every gradient of lsdfn (lsdfn.cu's backward): the unweighted samples Xhat, their
    gradients G (and dL/dA_sam) through the fusion, then one gather kernel per input."""
    features, u, v, sample_attention, position_attention, full_attention = inputs
    grads = LSDFNGrads(*(None if array is None else xp.empty(array.shape, dtype=geo.dtype)
                         for array in inputs))
    if geo.batch == 0:
        return grads
    geometry = geometry_array(xp, geo, **options)
    unweighted = xp.empty(geo.sample_output_shape, dtype=geo.dtype)
    launch(kernel_name("samples", geo.dtype), unweighted.size, [geometry, *inputs, unweighted])
    grad_unweighted = xp.empty(geo.sample_output_shape, dtype=geo.dtype)
    launch(kernel_name("fusion_grads", geo.dtype), unweighted.size,
           [geometry, sample_attention, unweighted, grad_output, grad_unweighted,
            grads.grad_sample_attention])
    launch(kernel_name("grad_features", geo.dtype), features.size,
           [geometry, *inputs, grad_unweighted, grads.grad_features])
    launch(kernel_name("grad_kernel_parts", geo.dtype), u.size + v.size,
           [geometry, *inputs, grad_unweighted, grads.grad_u, grads.grad_v])
    if position_attention is not None:
        launch(kernel_name("grad_position_attention", geo.dtype), position_attention.size,
               [geometry, *inputs, grad_unweighted, grads.grad_position_attention])
    if full_attention is not None:
        launch(kernel_name("grad_full_attention", geo.dtype), full_attention.size,
               [geometry, *inputs, grad_unweighted, grads.grad_full_attention])
    return grads
