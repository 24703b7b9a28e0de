"""The launch sequence of the CUDA C kernels in ``deform_conv.cu``, shared by two backends
(``ddf.cu``, ``roi_pool.cu``, ``lsdfn.cu`` and ``mimic_loss.cu`` have their own in
:mod:`refdyn.gpu._cuda_c_ddf`, ``_cuda_c_roi``, ``_cuda_c_lsdfn`` and ``_cuda_c_mimic``; the
file table is here).

:mod:`refdyn.gpu.cupy` runs the kernels on a GPU with CuPy arrays; :mod:`refdyn.gpu.host` runs
the same source on the CPU with NumPy arrays.  Both call :func:`forward` and :func:`backward`
here with their array module ``xp`` and a ``launch(kernel_name, total_threads, args)``
callable that runs one kernel over at least one thread per element (any grid: the kernels use
grid-stride loops).  ``args`` holds arrays of ``xp`` (C-contiguous), ``None`` for a null
pointer, and Python ints for ``long long`` parameters.

Arrays reach this module validated (:func:`refdyn.deform_conv_args.check_deform_conv2d_args`),
C-contiguous and in ``xp``.
"""

from __future__ import annotations

import numpy as np

from refdyn.deform_conv import DEFAULT_CHUNK_ELEMENTS
from refdyn.deform_conv_args import DeformConvGeometry, DeformConvGrads

#: The fields of ``struct Geometry`` in deform_conv.cu, in order (18 int64 values).
GEOMETRY_FIELDS = ("batch", "in_channels", "height", "width", "out_channels", "kernel_h",
                   "kernel_w", "groups", "offset_groups", "stride_h", "stride_w", "pad_h",
                   "pad_w", "dilation_h", "dilation_w", "out_h", "out_w", "boundary")

#: ``enum BoundaryRule`` in deform_conv.cu.
BOUNDARY_RULES = {"zeros": 0, "border": 1}

#: ``enum CoordGradRule`` in deform_conv.cu.
COORD_GRAD_RULES = {"torchvision": 0, "mmcv": 1}

KERNEL_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

#: The CUDA C files of this folder, by the prefix of the names of the kernels they export
#: (``<prefix>_...``).  Each file is a translation unit of its own (with its own ``struct``
#: of sizes), so each is compiled into its own CuPy module or host library; the launchers pick
#: the file from the kernel's name with :func:`source_of`.
KERNEL_SOURCES = {"deform_conv": "deform_conv.cu", "ddf": "ddf.cu", "roi": "roi_pool.cu",
                  "lsdfn": "lsdfn.cu", "dfn": "lsdfn.cu", "mimic": "mimic_loss.cu"}


def source_of(kernel: str) -> str:
    """The file of :data:`KERNEL_SOURCES` that exports ``kernel``."""
    for prefix, source in KERNEL_SOURCES.items():
        if kernel.startswith(prefix + "_"):
            return source
    raise KeyError(f"no CUDA C file exports a kernel named {kernel!r}")


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


def kernel_name(name: str, geo: DeformConvGeometry) -> str:
    """The exported name of kernel ``name`` for the call's dtype, e.g. deform_conv_forward_f64."""
    return f"deform_conv_{name}_{KERNEL_SUFFIX[geo.dtype]}"


def image_chunks(geo: DeformConvGeometry, chunk_elements: int):
    """(first, stop) ranges of images whose column gradient (C_in K H_out W_out elements per
    image) holds at most ``chunk_elements`` elements; at least one image per chunk."""
    per_image = geo.in_channels * geo.taps * geo.out_h * geo.out_w
    step = max(1, chunk_elements // per_image)
    for first in range(0, geo.batch, step):
        yield first, min(first + step, geo.batch)


def forward(xp, launch, geo: DeformConvGeometry, input, offset, weight, bias, mask):
    """Output of deform_conv2d (DCNv1 Eq. 2 / DCNv2 Eq. 1): one kernel, one thread per element."""
    output = xp.empty(geo.output_shape, dtype=geo.dtype)
    if geo.batch == 0:
        return output
    launch(kernel_name("forward", geo), output.size,
           [geometry_array(xp, geo, geo.batch), input, offset, mask, weight, bias, output])
    return output


def backward(xp, launch, geo: DeformConvGeometry, grad_output, input, offset, weight, mask,
             coord_grad: str, deterministic: bool,
             chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Every gradient of deform_conv2d (DCNv1 Appendix A; DCNv2).

    The column gradient is held for a chunk of images at a time (``chunk_elements``, as in the
    NumPy reference); grad_weight and grad_bias are gathered over the whole batch at the end.
    ``deterministic`` picks the ordered gather for grad_input instead of atomicAdd.
    """
    grad_input = xp.zeros(input.shape, dtype=geo.dtype)
    grad_offset = xp.zeros(offset.shape, dtype=geo.dtype)
    grad_weight = xp.zeros(weight.shape, dtype=geo.dtype)
    grad_bias = xp.zeros(geo.out_channels, dtype=geo.dtype) if geo.has_bias else None
    grad_mask = xp.zeros(mask.shape, dtype=geo.dtype) if mask is not None else None
    if geo.batch == 0:
        return DeformConvGrads(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)

    rule = COORD_GRAD_RULES[coord_grad]
    for first, stop in image_chunks(geo, chunk_elements):
        images = slice(first, stop)
        chunk_geometry = geometry_array(xp, geo, stop - first)
        chunk_mask = mask[images] if mask is not None else None
        chunk_grad_mask = grad_mask[images] if mask is not None else None
        column_grad = xp.empty((stop - first, geo.in_channels, geo.taps, geo.out_h, geo.out_w),
                               dtype=geo.dtype)
        launch(kernel_name("col_grad", geo), column_grad.size,
               [chunk_geometry, weight, grad_output[images], column_grad])
        launch(kernel_name("grad_offset_mask", geo),
               (stop - first) * geo.offset_groups * geo.taps * geo.out_h * geo.out_w,
               [chunk_geometry, input[images], offset[images], chunk_mask, column_grad, rule,
                grad_offset[images], chunk_grad_mask])
        if deterministic:
            _grad_input_ordered(xp, launch, geo, chunk_geometry, stop - first, offset[images],
                                chunk_mask, column_grad, grad_input[images])
        else:
            launch(kernel_name("grad_input_atomic", geo), column_grad.size,
                   [chunk_geometry, offset[images], chunk_mask, column_grad, grad_input[images]])

    whole_batch = geometry_array(xp, geo, geo.batch)
    launch(kernel_name("grad_weight", geo), grad_weight.size,
           [whole_batch, input, offset, mask, grad_output, grad_weight])
    if grad_bias is not None:
        launch(kernel_name("grad_bias", geo), grad_bias.size, [whole_batch, grad_output, grad_bias])
    return DeformConvGrads(grad_input, grad_offset, grad_weight, grad_bias, grad_mask)


def _grad_input_ordered(xp, launch, geo, chunk_geometry, images, offset, mask, column_grad,
                        grad_input):
    """grad_input of a chunk of images without floating-point atomics (deform_conv.cu explains
    the four passes); the lists' exclusive prefix sum is an integer cumsum of ``xp``."""
    lists = images * geo.offset_groups * geo.height * geo.width
    samples = images * geo.offset_groups * geo.taps * geo.out_h * geo.out_w
    sizes = xp.zeros(lists, dtype=np.int64)
    launch(kernel_name("count_contributions", geo), samples, [chunk_geometry, offset, sizes])
    ends = xp.cumsum(sizes)
    starts = ends - sizes
    entries = xp.empty(max(int(ends[-1]), 1), dtype=np.int64)
    filled = xp.zeros(lists, dtype=np.int64)
    launch(kernel_name("fill_contributions", geo), samples,
           [chunk_geometry, offset, starts, filled, entries])
    launch("deform_conv_sort_contributions", lists, [chunk_geometry, starts, sizes, entries])
    launch(kernel_name("grad_input_gather", geo), grad_input.size,
           [chunk_geometry, offset, mask, column_grad, starts, sizes, entries, grad_input])
