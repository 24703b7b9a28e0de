"""The launch sequence of the CUDA C kernels in ``deform_conv.cu``, run by
:mod:`refdyn.gpu.deform_conv_ops` on both CUDA C backends (every family has its own
``<stem>_launch.py``).

:mod:`refdyn.gpu.cupy` runs the kernels on a GPU with CuPy arrays; :mod:`refdyn.gpu.host` runs
the same source on the CPU with NumPy arrays.  Both call :func:`forward` and :func:`backward`
here with their array module ``xp`` and a ``launch(kernel_name, total_threads, args)``
callable that runs one kernel over at least one thread per element (any grid: the kernels use
grid-stride loops).  ``args`` holds arrays of ``xp`` (C-contiguous), ``None`` for a null
pointer, and Python ints for ``long long`` parameters.  The matrix products of im2col are
``xp.matmul`` (cuBLAS through CuPy; NumPy's BLAS on the host).  Each backend's launcher runs
through a :class:`refdyn.gpu.cuda_c.KernelLog`, which times every kernel inside
``kernel_times()``.

Arrays reach this module validated (:func:`refdyn.deform_conv_args.check_deform_conv2d_args`),
C-contiguous and in ``xp``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from refdyn.deform_conv_args import DeformConvGeometry, DeformConvGrads

from . import cuda_c

#: The fields of ``struct Geometry`` in deform_conv.cu, in order (18 int64 values).
GEOMETRY_FIELDS = ("batch", "in_channels", "height", "width", "out_channels", "kernel_h",
                   "kernel_w", "groups", "offset_groups", "stride_h", "stride_w", "pad_h",
                   "pad_w", "dilation_h", "dilation_w", "out_h", "out_w", "boundary")

#: ``enum BoundaryRule`` in deform_conv.cu.
BOUNDARY_RULES = {"zeros": 0, "border": 1}

#: ``enum CoordGradRule`` in deform_conv.cu.
COORD_GRAD_RULES = {"torchvision": 0, "mmcv": 1}


def geometry_array(xp, geo: DeformConvGeometry, batch: int):
    """``struct Geometry`` as an int64 array of ``xp``, for ``batch`` images (the boundary rule
    as its ``enum BoundaryRule`` value)."""
    values = {
        "batch": batch, "in_channels": geo.in_channels, "height": geo.height, "width": geo.width,
        "out_channels": geo.out_channels, "kernel_h": geo.kernel_h, "kernel_w": geo.kernel_w,
        "groups": geo.groups, "offset_groups": geo.offset_groups,
        "stride_h": geo.stride[0], "stride_w": geo.stride[1],
        "pad_h": geo.padding[0], "pad_w": geo.padding[1],
        "dilation_h": geo.dilation[0], "dilation_w": geo.dilation[1],
        "out_h": geo.out_h, "out_w": geo.out_w, "boundary": BOUNDARY_RULES[geo.boundary],
    }
    return xp.asarray(np.array([values[name] for name in GEOMETRY_FIELDS], dtype=np.int64))


#: The exported name of kernel ``name`` of deform_conv.cu for a dtype (cuda_c.kernel_name).
kernel_name = partial(cuda_c.kernel_name, "deform_conv")


def image_chunks(geo: DeformConvGeometry, chunk_elements: int):
    """Slices of images whose columns (C_in K H_out W_out elements per image) hold at most
    ``chunk_elements`` elements; at least one image per slice."""
    per_image = geo.in_channels * geo.taps * geo.out_h * geo.out_w
    step = max(1, chunk_elements // per_image)
    for first in range(0, geo.batch, step):
        yield slice(first, min(first + step, geo.batch))


def sampled_columns(xp, launch, geo: DeformConvGeometry, input, offset, mask, images: slice):
    """columns[n, c, k, i, j] = x_c(p_k) dm_k of the images ``images`` (kernel "columns"),
    (images, C_in, K, H_out, W_out)."""
    count = images.stop - images.start
    columns = xp.empty((count, geo.in_channels, geo.taps, geo.out_h, geo.out_w), dtype=geo.dtype)
    launch(kernel_name("columns", geo.dtype), columns.size,
           [geometry_array(xp, geo, count), input[images], offset[images],
            None if mask is None else mask[images], columns])
    return columns


def forward(xp, launch, geo: DeformConvGeometry, input, offset, weight, bias, mask,
            chunk_elements: int):
    """Output of deform_conv2d (DCNv1 Eq. 2 / DCNv2 Eq. 1): per chunk of images the sampled
    columns, then out = W columns, one matrix product per group (batched over the images)."""
    output = xp.empty(geo.output_shape, dtype=geo.dtype)
    weights = geo.weight_matrices(weight)
    for images in image_chunks(geo, chunk_elements):
        columns = sampled_columns(xp, launch, geo, input, offset, mask, images)
        output[images] = xp.matmul(weights, geo.group_matrices(columns)).reshape(
            output[images].shape)
    if bias is not None:
        output += bias[None, :, None, None]
    return output


def backward(xp, launch, geo: DeformConvGeometry, grad_output, input, offset, weight, mask,
             coord_grad: str, deterministic: bool, chunk_elements: int) -> DeformConvGrads:
    """Every gradient of deform_conv2d (DCNv1 Appendix A; DCNv2), a chunk of images at a time.

    Matrix products give the column gradient col_grad = W^T go and grad_weight = go columns^T
    (the columns sampled again); the kernels give grad_offset and grad_mask from col_grad, and
    grad_input, the adjoint of sampling, by atomicAdd or (``deterministic``) an ordered gather.
    """
    weights = geo.weight_matrices(weight)
    grad_input = xp.zeros(input.shape, dtype=geo.dtype)
    grad_offset = xp.zeros(offset.shape, dtype=geo.dtype)
    grad_weight = xp.zeros(weights.shape, dtype=geo.dtype)
    grad_mask = xp.zeros(mask.shape, dtype=geo.dtype) if mask is not None else None
    rule = COORD_GRAD_RULES[coord_grad]
    for images in image_chunks(geo, chunk_elements):
        count = images.stop - images.start
        chunk_geometry = geometry_array(xp, geo, count)
        chunk_mask = mask[images] if mask is not None else None
        go = geo.group_matrices(grad_output[images])            # (images, groups, O/gr, L)
        column_grad = xp.matmul(weights.transpose(0, 2, 1), go)         # C-contiguous
        launch(kernel_name("grad_offset_mask", geo.dtype), count * geo.offset_groups * geo.taps
               * geo.out_h * geo.out_w,
               [chunk_geometry, input[images], offset[images], chunk_mask, column_grad, rule,
                grad_offset[images], grad_mask[images] if mask is not None else None])
        if deterministic:
            _grad_input_ordered(xp, launch, geo, chunk_geometry, count, offset[images],
                                chunk_mask, column_grad, grad_input[images])
        else:
            launch(kernel_name("grad_input_atomic", geo.dtype), column_grad.size,
                   [chunk_geometry, offset[images], chunk_mask, column_grad, grad_input[images]])
        columns = geo.group_matrices(
            sampled_columns(xp, launch, geo, input, offset, mask, images))
        grad_weight += xp.matmul(go, columns.transpose(0, 1, 3, 2)).sum(axis=0)
    grad_bias = grad_output.sum(axis=(0, 2, 3)) if geo.has_bias else None
    return DeformConvGrads(grad_input, grad_offset, grad_weight.reshape(weight.shape), grad_bias,
                           grad_mask)


def _grad_input_ordered(xp, launch, geo, chunk_geometry, images, offset, mask, column_grad,
                        grad_input):
    """grad_input of a chunk of images without floating-point atomics (deform_conv.cu explains
    the five passes); the lists' exclusive prefix sum is an integer cumsum of ``xp``."""
    lists = images * geo.offset_groups * geo.height * geo.width
    samples = images * geo.offset_groups * geo.taps * geo.out_h * geo.out_w
    sizes = xp.zeros(lists, dtype=np.int64)
    launch(kernel_name("count_contributions", geo.dtype), samples, [chunk_geometry, offset, sizes])
    ends = xp.cumsum(sizes)
    starts = ends - sizes
    entries = xp.empty(max(int(ends[-1]), 1), dtype=np.int64)
    filled = xp.zeros(lists, dtype=np.int64)
    launch(kernel_name("fill_contributions", geo.dtype), samples,
           [chunk_geometry, offset, starts, filled, entries])
    launch("deform_conv_sort_contributions", lists, [chunk_geometry, starts, sizes, entries])
    weights = xp.empty(len(entries), dtype=geo.dtype)
    launch(kernel_name("weigh_contributions", geo.dtype), lists,
           [chunk_geometry, offset, mask, starts, sizes, entries, weights])
    launch(kernel_name("grad_input_gather", geo.dtype), grad_input.size,
           [chunk_geometry, column_grad, starts, sizes, entries, weights, grad_input])
