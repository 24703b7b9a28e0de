"""The launch sequence of the CUDA C kernels in ``ddf.cu`` (the DDF operation, DDF, Zhou et al.,
CVPR 2021), run by :mod:`refdyn.gpu.ddf_ops` on both CUDA C backends (:mod:`refdyn.gpu.cupy`,
:mod:`refdyn.gpu.host`), which pass their array module ``xp`` and their
``launch(kernel_name, total_threads, args)`` first.

Arrays reach this module validated (:func:`refdyn.ddf_args.check_ddf_args`), C-contiguous and
in ``xp``.  Every gradient is a gather (ddf.cu), so there is no atomic path and nothing to
zero first.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from refdyn.ddf_args import DDFGeometry, DDFGrads

from . import cuda_c

#: The fields of ``struct DDFGeometry`` in ddf.cu, in order (11 int64 values).
GEOMETRY_FIELDS = ("batch", "channels", "height", "width", "kernel_size", "dilation", "stride",
                   "head", "out_h", "out_w", "kernel_combine")

#: ``enum KernelCombine`` in ddf.cu.
KERNEL_COMBINES = {"mul": 0, "add": 1}


def geometry_array(xp, geo: DDFGeometry):
    """``struct DDFGeometry`` as an int64 array of ``xp`` (kernel_combine as its
    ``enum KernelCombine`` value)."""
    values = {name: getattr(geo, name) for name in GEOMETRY_FIELDS}
    values["kernel_combine"] = KERNEL_COMBINES[geo.kernel_combine]
    return xp.asarray(np.array([values[name] for name in GEOMETRY_FIELDS], dtype=np.int64))


#: The exported name of kernel ``name`` of ddf.cu for a dtype (cuda_c.kernel_name).
kernel_name = partial(cuda_c.kernel_name, "ddf")


def forward(xp, launch, geo: DDFGeometry, features, channel_filter, spatial_filter):
    """Output of ddf: one kernel, one thread per output element (none for an empty batch)."""
    output = xp.empty(geo.output_shape, dtype=geo.dtype)
    if geo.batch == 0:
        return output
    launch(kernel_name("forward", geo.dtype), output.size,
           [geometry_array(xp, geo), features, channel_filter, spatial_filter, output])
    return output


def backward(xp, launch, geo: DDFGeometry, grad_output, features, channel_filter,
             spatial_filter) -> DDFGrads:
    """Every gradient of ddf (ddf.cu, Eq. B1-B3): one gather kernel per gradient, one thread
    per element it writes (none for an empty batch, whose gradients are empty)."""
    grads = DDFGrads(grad_features=xp.empty(features.shape, dtype=geo.dtype),
                     grad_channel_filter=xp.empty(channel_filter.shape, dtype=geo.dtype),
                     grad_spatial_filter=xp.empty(spatial_filter.shape, dtype=geo.dtype))
    if geo.batch == 0:
        return grads
    geometry = geometry_array(xp, geo)
    launch(kernel_name("grad_features", geo.dtype), grads.grad_features.size,
           [geometry, channel_filter, spatial_filter, grad_output, grads.grad_features])
    launch(kernel_name("grad_spatial_filter", geo.dtype), grads.grad_spatial_filter.size,
           [geometry, features, channel_filter, grad_output, grads.grad_spatial_filter])
    launch(kernel_name("grad_channel_filter", geo.dtype), grads.grad_channel_filter.size,
           [geometry, features, spatial_filter, grad_output, grads.grad_channel_filter])
    return grads
