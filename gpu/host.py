"""The CUDA C kernels (``deform_conv.cu``, ``ddf.cu``, ``roi_pool.cu``, ``lsdfn.cu``,
``mimic_loss.cu``) run on the CPU (importable as ``refdyn.gpu.host``).

The very same sources the GPU backend compiles are built by the host C++ compiler
(``refdyn.gpu.host_compiler()``) with ``cuda_host_compat.h`` force-included, each file into a
shared library of its own (:data:`refdyn.gpu._cuda_c.KERNEL_SOURCES`), cached per user and
rebuilt whenever that file, the header or the compiler change.  Each kernel launch is played
by a Python loop over a small grid of :data:`GRID_BLOCKS` blocks of :data:`BLOCK_THREADS`
threads: before each call the harness sets ``blockIdx``/``threadIdx``, so every kernel's
grid-stride loop and index arithmetic run exactly as written for the GPU.

Same functions and arguments as the NumPy reference of every operator with a GPU mirror in
:mod:`refdyn.registry` (deformable convolution, Active Convolution assembled from it, DDF, the
RoI pooling family, the mimic loss, LS-DFN and DFN); NumPy arrays in and out.
"""

from __future__ import annotations

import ctypes
import getpass
import hashlib
import os
import stat
import subprocess
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from refdyn.active_conv import ActiveConvGrads, active_conv2d_backward_via, active_conv2d_via
from refdyn.ddf_args import DDFGrads, check_ddf_args, check_ddf_backward_args
from refdyn.deform_conv_args import DeformConvGrads, check_deform_conv2d_args, \
    check_deform_conv2d_backward_args

from refdyn.roi_pool_args import RoIPoolGrads

from refdyn.lsdfn_args import DFNGrads, LSDFNGrads, LSDFNSampleGrads, check_dfn_args, \
    check_grad_output, check_lsdfn_args, check_lsdfn_sample_args

from refdyn._checks import check_float_array as _check_float_array
from refdyn.feature_mimic import MimicLossGrads, check_mimic_loss_args

from . import _cuda_c, _cuda_c_ddf, _cuda_c_lsdfn, _cuda_c_roi, host_compiler
from . import _cuda_c_mimic

#: The grid each kernel is launched on: a few blocks of a few threads, so that every thread
#: strides over several elements (any values are correct; tests vary them).
GRID_BLOCKS = 2
BLOCK_THREADS = 3

SOURCE_DIR = Path(__file__).resolve().parent
COMPAT_HEADER = SOURCE_DIR / "cuda_host_compat.h"
#: -ffp-contract=off: no fused multiply-adds on any host (as the device build's --fmad=false),
#: so coordinates round as in the NumPy reference.
COMPILE_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC")


def cache_dir() -> Path:
    """Where built libraries are kept: $XDG_CACHE_HOME/refdyn (default ~/.cache/refdyn), or a
    private per-user folder in the temporary directory when that cannot be written."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        directory = base / "refdyn"
        directory.mkdir(parents=True, exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory
    except (OSError, RuntimeError):  # RuntimeError: no home directory
        pass
    return _private_temp_dir()


def _private_temp_dir() -> Path:
    """A folder in the shared temporary directory that only this user can write, so nobody
    else can place a library there for this process to load."""
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    directory = Path(tempfile.gettempdir()) / f"refdyn-{user}"
    directory.mkdir(mode=0o700, exist_ok=True)
    status = directory.lstat()
    if (not stat.S_ISDIR(status.st_mode) or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            or (hasattr(os, "getuid") and status.st_uid != os.getuid())):
        raise RuntimeError(f"{directory} is not a private directory of this user; set "
                           "XDG_CACHE_HOME to a writable folder for the host build")
    return directory


def _build_key(compiler: str, source: Path) -> str:
    """Hash of the source, the compatibility header, the compiler (path and version) and the
    flags."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True)
    digest = hashlib.sha256()
    for part in (compiler, version.stdout, " ".join(COMPILE_FLAGS)):
        digest.update(part.encode() + b"\0")
    for file in (COMPAT_HEADER, source):
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def build_library(source: Path) -> Path:
    """Compile the CUDA C file ``source`` for the CPU unless the cache already holds this
    build; returns the library's path.  The library is written under a temporary name and
    renamed into place, so concurrent builds (parallel test processes) never see a partial
    file."""
    compiler = host_compiler()
    if compiler is None:
        raise RuntimeError("no host C++ compiler (set CXX or install g++)")
    directory = cache_dir()
    library = directory / f"{source.stem}-{_build_key(compiler, source)}.so"
    if library.exists():
        return library
    handle, partial = tempfile.mkstemp(dir=directory, prefix=library.stem + ".", suffix=".tmp")
    os.close(handle)
    command = [compiler, *COMPILE_FLAGS, "-x", "c++", "-include", str(COMPAT_HEADER),
               str(source), "-o", partial]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"host build of {source.name} failed:\n{' '.join(command)}\n"
                               f"{result.stderr}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


@lru_cache(maxsize=None)
def _library(source_name: str) -> ctypes.CDLL:
    """The loaded library of the CUDA C file ``source_name`` of this folder."""
    library = ctypes.CDLL(str(build_library(SOURCE_DIR / source_name)))
    library.refdyn_host_set_thread.argtypes = [ctypes.c_uint] * 4
    library.refdyn_host_set_thread.restype = None
    return library


def _argument(value):
    """A kernel argument as ctypes: NumPy array -> its data pointer, None -> null pointer,
    int -> long long."""
    if value is None:
        return ctypes.c_void_p(None)
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError("kernel arguments must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    return ctypes.c_longlong(value)


def launch(name: str, total_threads: int, args) -> None:
    """Run kernel ``name`` as every thread of a GRID_BLOCKS x BLOCK_THREADS grid, one after the
    other (``total_threads`` does not matter: the grid-stride loops cover every element)."""
    library = _library(_cuda_c.source_of(name))
    kernel = getattr(library, name)
    kernel.restype = None
    arguments = [_argument(value) for value in args]

    def launch_kernel():
        for block in range(GRID_BLOCKS):
            for thread in range(BLOCK_THREADS):
                library.refdyn_host_set_thread(block, thread, GRID_BLOCKS, BLOCK_THREADS)
                kernel(*arguments)

    KERNEL_LOG.run(name, args, launch_kernel)


#: The launches of this backend, timed on the CPU clock inside ``kernel_times()``.
KERNEL_LOG = _cuda_c.KernelLog(mark=time.perf_counter, elapsed=lambda start, end: end - start)
kernel_times = KERNEL_LOG.timing


@contextmanager
def launch_grid(blocks: int, threads: int):
    """Launch every kernel on a grid of ``blocks`` x ``threads`` inside the ``with`` block (the
    results must not depend on it: the tests compare grids)."""
    global GRID_BLOCKS, BLOCK_THREADS
    saved = GRID_BLOCKS, BLOCK_THREADS
    GRID_BLOCKS, BLOCK_THREADS = blocks, threads
    try:
        yield
    finally:
        GRID_BLOCKS, BLOCK_THREADS = saved


def _contiguous(array):
    return None if array is None else np.ascontiguousarray(array)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None,
                  *, boundary="zeros", chunk_elements: int = _cuda_c.DEFAULT_CHUNK_ELEMENTS):
    """Deformable convolution (DCNv1 Eq. 2; DCNv2 Eq. 1), the CUDA C kernel run on the CPU (the
    matrix products by NumPy).

    Same arguments and result as :func:`refdyn.deform_conv2d`; ``chunk_elements`` bounds the
    sampled columns held at a time (:data:`refdyn.gpu._cuda_c.DEFAULT_CHUNK_ELEMENTS`).
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary)
    return _cuda_c.forward(np, launch, geo, *map(_contiguous, (input, offset, weight, bias, mask)),
                           chunk_elements)


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, coord_grad="torchvision", deterministic=False,
                           *, boundary="zeros",
                           chunk_elements: int = _cuda_c.DEFAULT_CHUNK_ELEMENTS) -> DeformConvGrads:
    """Gradients of deform_conv2d (DCNv1 Appendix A; DCNv2), the CUDA C kernels run on the CPU.

    Same arguments and result as :func:`refdyn.deform_conv2d_backward`, plus ``deterministic``:
    grad_input by the ordered gather instead of atomicAdd (on the CPU both are reproducible,
    since the threads run one after the other).
    """
    geo = check_deform_conv2d_args(input, offset, weight, bias, stride, padding, dilation, mask,
                                   boundary=boundary)
    check_deform_conv2d_backward_args(grad_output, geo, coord_grad)
    grad_output, input, offset, weight, mask = map(
        _contiguous, (grad_output, input, offset, weight, mask))
    return _cuda_c.backward(np, launch, geo, grad_output, input, offset, weight, mask,
                            coord_grad, deterministic, chunk_elements)


def active_conv2d(input, positions, weight, bias=None, stride=1, padding=0, boundary="zeros"):
    """Active convolution y(p0) = sum_k w_k x(p0 + p_k + theta_k) (DCNv1 Eq. 2 with dp_k = theta_k)
    from this module's :func:`deform_conv2d`, by :func:`refdyn.active_conv.active_conv2d_via`.

    Same arguments, checks and result as :func:`refdyn.active_conv.active_conv2d`.
    """
    return active_conv2d_via(deform_conv2d, np, input, positions, weight, bias, stride, padding,
                             boundary)


def active_conv2d_backward(grad_output, input, positions, weight, bias=None, stride=1, padding=0,
                           boundary="zeros", coord_grad="torchvision",
                           deterministic=False) -> ActiveConvGrads:
    """Gradients of :func:`active_conv2d` from :func:`deform_conv2d_backward` (the position
    gradient sums the offset gradient over (n, i, j)), by
    :func:`refdyn.active_conv.active_conv2d_backward_via`.

    Same arguments, checks and result as :func:`refdyn.active_conv.active_conv2d_backward`, plus
    ``deterministic`` for grad_input as in :func:`deform_conv2d_backward`.
    """
    return active_conv2d_backward_via(deform_conv2d_backward, np, grad_output, input, positions,
                                      weight, bias, stride, padding, boundary,
                                      coord_grad=coord_grad, deterministic=deterministic)


def ddf(features, channel_filter, spatial_filter, kernel_size, dilation=1, stride=1,
        kernel_combine="mul"):
    """The DDF operation (paper 003), the CUDA C kernel of ddf.cu run on the CPU.

    Same arguments, checks and result as :func:`refdyn.decoupled_dynamic_filter.ddf`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    return _cuda_c_ddf.forward(np, launch, geo,
                               *map(_contiguous, (features, channel_filter, spatial_filter)))


def ddf_backward(grad_output, features, channel_filter, spatial_filter, kernel_size, dilation=1,
                 stride=1, kernel_combine="mul") -> DDFGrads:
    """Every gradient of :func:`ddf` (ddf.cu, Eq. B1-B3), the CUDA C kernels run on the CPU.

    Same arguments, checks and result as :func:`refdyn.decoupled_dynamic_filter.ddf_backward`.
    """
    geo = check_ddf_args(features, channel_filter, spatial_filter, kernel_size, dilation, stride,
                         kernel_combine)
    check_ddf_backward_args(grad_output, geo)
    return _cuda_c_ddf.backward(np, launch, geo, *map(
        _contiguous, (grad_output, features, channel_filter, spatial_filter)))


# --- The RoI pooling family (roi_pool.cu, launched by _cuda_c_roi) -----------------------------


def _roi_forward(call, input, rois, offset=None, mask=None):
    return _cuda_c_roi.forward(np, launch, call, *map(_contiguous, (input, rois, offset, mask)))


def _roi_backward(call, grad_output, input, rois, offset=None, mask=None) -> RoIPoolGrads:
    _cuda_c_roi.check_backward(call, grad_output)
    return _cuda_c_roi.backward(np, launch, call, *map(
        _contiguous, (grad_output, input, rois, offset, mask)))


def roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision roi_align, the kernel of roi_pool.cu run on the CPU.

    Same arguments, checks and result as :func:`refdyn.roi_align_family.roi_align`.
    """
    call = _cuda_c_roi.align_call(input, rois, None, None, output_size, spatial_scale,
                                  sampling_ratio, aligned, 0.0)
    return _roi_forward(call, input, rois)


def roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                       sampling_ratio=-1, aligned=False) -> RoIPoolGrads:
    """Gradient of :func:`roi_align` (a gather, roi_pool.cu), run on the CPU; as
    :func:`refdyn.roi_align_family.roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, rois, None, None, output_size, spatial_scale,
                                  sampling_ratio, aligned, 0.0)
    return _roi_backward(call, grad_output, input, rois)


def ps_roi_align(input, rois, output_size=7, spatial_scale=1.0, sampling_ratio=-1):
    """torchvision ps_roi_align, the kernel of roi_pool.cu run on the CPU; as
    :func:`refdyn.roi_align_family.ps_roi_align`."""
    call = _cuda_c_roi.align_call(input, rois, None, None, output_size, spatial_scale,
                                  sampling_ratio, True, 0.0, position_sensitive=True)
    return _roi_forward(call, input, rois)


def ps_roi_align_backward(grad_output, input, rois, output_size=7, spatial_scale=1.0,
                          sampling_ratio=-1) -> RoIPoolGrads:
    """Gradient of :func:`ps_roi_align` (a gather, roi_pool.cu), run on the CPU; as
    :func:`refdyn.roi_align_family.ps_roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, rois, None, None, output_size, spatial_scale,
                                  sampling_ratio, True, 0.0, position_sensitive=True)
    return _roi_backward(call, grad_output, input, rois)


def deform_roi_align(input, rois, offset=None, mask=None, output_size=7, spatial_scale=1.0,
                     sampling_ratio=0, gamma=0.1):
    """mmcv DeformRoIPool, modulated by ``mask`` (DCNv2 Eq. 2), run on the CPU; as
    :func:`refdyn.roi_align_family.deform_roi_align`."""
    call = _cuda_c_roi.align_call(input, rois, offset, mask, output_size, spatial_scale,
                                  sampling_ratio, True, gamma)
    return _roi_forward(call, input, rois, offset, mask)


def deform_roi_align_backward(grad_output, input, rois, offset=None, mask=None, output_size=7,
                              spatial_scale=1.0, sampling_ratio=0, gamma=0.1,
                              coord_grad="torchvision") -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_align` (input, offset, mask), run on the CPU; as
    :func:`refdyn.roi_align_family.deform_roi_align_backward`."""
    call = _cuda_c_roi.align_call(input, rois, offset, mask, output_size, spatial_scale,
                                  sampling_ratio, True, gamma, coord_grad=coord_grad)
    return _roi_backward(call, grad_output, input, rois, offset, mask)


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, gamma=0.1):
    """Deformable RoI pooling, DCNv1 Eq. 5-6, run on the CPU; as
    :func:`refdyn.roi_pooling.deform_roi_pool`."""
    call = _cuda_c_roi.eq5_call(input, rois, offset, output_size, spatial_scale, gamma)
    return _roi_forward(call, input, rois, offset)


def deform_roi_pool_backward(grad_output, input, rois, offset=None, output_size=7,
                             spatial_scale=1.0, gamma=0.1) -> RoIPoolGrads:
    """Gradients of :func:`deform_roi_pool` (DCNv1 Appendix A, Eq. 8), run on the CPU; as
    :func:`refdyn.roi_pooling.deform_roi_pool_backward`."""
    call = _cuda_c_roi.eq5_call(input, rois, offset, output_size, spatial_scale, gamma)
    return _roi_backward(call, grad_output, input, rois, offset)


def deform_ps_roi_pool(input, rois, offset=None, spatial_scale=1.0, output_dim=1, group_size=1,
                       pooled_size=7, part_size=0, sample_per_part=4, trans_std=0.1,
                       no_trans=False):
    """The official deformable PS RoI pooling, run on the CPU; as
    :func:`refdyn.roi_pooling.deform_ps_roi_pool`."""
    call = _cuda_c_roi.official_call(input, rois, offset, spatial_scale, output_dim, group_size,
                                     pooled_size, part_size, sample_per_part, trans_std, no_trans)
    return _roi_forward(call, input, rois, offset)


def deform_ps_roi_pool_backward(grad_output, input, rois, offset=None, spatial_scale=1.0,
                                output_dim=1, group_size=1, pooled_size=7, part_size=0,
                                sample_per_part=4, trans_std=0.1, no_trans=False) -> RoIPoolGrads:
    """Gradients of :func:`deform_ps_roi_pool`, run on the CPU; as
    :func:`refdyn.roi_pooling.deform_ps_roi_pool_backward`."""
    call = _cuda_c_roi.official_call(input, rois, offset, spatial_scale, output_dim, group_size,
                                     pooled_size, part_size, sample_per_part, trans_std, no_trans)
    return _roi_backward(call, grad_output, input, rois, offset)


# --- LS-DFN (paper 000) and DFN (lsdfn.cu, launched by _cuda_c_lsdfn) ---------------------------


def dfn(features, filters, kernel_size, softmax=False):
    """Dynamic local filtering (Dynamic Filter Networks), the kernels of lsdfn.cu run on the CPU;
    as :func:`refdyn.dynamic_filter_networks.dfn`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    return _cuda_c_lsdfn.dfn_forward(np, launch, geo, per_channel,
                                     *map(_contiguous, (features, filters)), softmax)


def dfn_backward(grad_output, features, filters, kernel_size, softmax=False) -> DFNGrads:
    """Both gradients of :func:`dfn` (gathers), run on the CPU; as
    :func:`refdyn.dynamic_filter_networks.dfn_backward`."""
    geo, per_channel = check_dfn_args(features, filters, kernel_size, softmax)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C, H, W)")
    return _cuda_c_lsdfn.dfn_backward(np, launch, geo, per_channel, *map(
        _contiguous, (grad_output, features, filters)), softmax)


def lsdfn_sample(features, kernels, samples, gamma, kernel_size, indexing="centred"):
    """LS-DFN's Eq. 2, run on the CPU; as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn_sample`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    return _cuda_c_lsdfn.sample_forward(np, launch, geo, *map(_contiguous, (features, kernels)))


def lsdfn_sample_backward(grad_output, features, kernels, samples, gamma, kernel_size,
                          indexing="centred") -> LSDFNSampleGrads:
    """Both gradients of :func:`lsdfn_sample` (gathers), run on the CPU; as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn_sample_backward`."""
    geo = check_lsdfn_sample_args(features, kernels, samples, gamma, kernel_size, indexing)
    check_grad_output(grad_output, geo.sample_output_shape, geo.dtype, "(N, s*s, C', H, W)")
    return _cuda_c_lsdfn.sample_backward(np, launch, geo, *map(
        _contiguous, (grad_output, features, kernels)))


def lsdfn(features, u, v, sample_attention=None, position_attention=None, full_attention=None,
          *, samples, gamma, kernel_size, residual=True, attention="factorized", fuse="sum",
          indexing="centred", kernel_form="described"):
    """LS-DFN, Eq. 4-7 end to end, run on the CPU; as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form)
    options = dict(residual=residual, kernel_form=kernel_form, attention=attention, fuse=fuse)
    return _cuda_c_lsdfn.forward(np, launch, geo, options, list(map(_contiguous, inputs)))


def lsdfn_backward(grad_output, features, u, v, sample_attention=None, position_attention=None,
                   full_attention=None, *, samples, gamma, kernel_size, residual=True,
                   attention="factorized", fuse="sum", indexing="centred",
                   kernel_form="described") -> LSDFNGrads:
    """Every gradient of :func:`lsdfn` (gathers), run on the CPU; as
    :func:`refdyn.large_sampling_dynamic_filter.lsdfn_backward`."""
    inputs = (features, u, v, sample_attention, position_attention, full_attention)
    geo = check_lsdfn_args(*inputs, samples, gamma, kernel_size, residual, attention, fuse,
                           indexing, kernel_form)
    check_grad_output(grad_output, geo.output_shape, geo.dtype, "(N, C', H, W)")
    options = dict(residual=residual, kernel_form=kernel_form, attention=attention, fuse=fuse)
    return _cuda_c_lsdfn.backward(np, launch, geo, options, _contiguous(grad_output),
                                  list(map(_contiguous, inputs)))


# --- DCNv2's R-CNN feature mimic loss (mimic_loss.cu, launched by _cuda_c_mimic) --------------


def mimic_loss(features, target, eps=1e-8):
    """DCNv2's mimic loss sum_b [1 - cos(features[b], target[b])], the kernels of mimic_loss.cu
    run on the CPU; as :func:`refdyn.feature_mimic.mimic_loss` (a 0-d array of the dtype)."""
    dtype = check_mimic_loss_args(features, target, eps)
    return _cuda_c_mimic.forward(np, launch, dtype, *map(_contiguous, (features, target)), eps)


def mimic_loss_backward(grad_output, features, target, eps=1e-8) -> MimicLossGrads:
    """Both gradients of :func:`mimic_loss` (one thread per element, no atomics), run on the
    CPU; as :func:`refdyn.feature_mimic.mimic_loss_backward`."""
    dtype = check_mimic_loss_args(features, target, eps)
    _check_float_array(grad_output, "grad_output", 0, dtype)
    return _cuda_c_mimic.backward(np, launch, dtype, *map(
        _contiguous, (grad_output, features, target)), eps)
