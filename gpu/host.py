"""The CUDA C kernels (``deform_conv.cu``, ``ddf.cu``, ``roi.cu``, ``lsdfn.cu``,
``mimic_loss.cu``) run on the CPU (importable as ``refdyn.gpu.host``).

The very same sources the GPU backend compiles are built by the host C++ compiler
(``refdyn.gpu.host_compiler()``) with ``cuda_host_compat.h`` force-included and this folder on
the include path (for ``common.cuh``), each file into a shared library of its own
(:func:`refdyn.gpu.cuda_c.source_of` names a kernel's file), cached per user and rebuilt
whenever that file, either header or the compiler change.  Each kernel launch is played
by a Python loop over a small grid of :data:`GRID_BLOCKS` blocks of :data:`BLOCK_THREADS`
threads: before each call the harness sets ``blockIdx``/``threadIdx``, so every kernel's
grid-stride loop and index arithmetic run exactly as written for the GPU.

This module is the backend's adapter (:class:`refdyn.gpu.backend.Backend`: NumPy arrays, the
launch sequences of ``<stem>_launch.py``) and one binding per operator of the ``<stem>_ops``
modules, with the same functions and arguments as the NumPy reference; NumPy arrays in and
out.
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

from refdyn.args import numpy_all_finite

from . import active_conv_ops, ddf_ops, deform_conv_ops, host_compiler, lsdfn_ops, \
    mimic_loss_ops, roi_ops
from .backend import Backend
from .cuda_c import SOURCE_DIR, KernelLog, source_of

#: The grid each kernel is launched on: a few blocks of a few threads, so that every thread
#: strides over several elements (any values are correct; tests vary them).
GRID_BLOCKS = 2
BLOCK_THREADS = 3

COMPAT_HEADER = SOURCE_DIR / "cuda_host_compat.h"
#: The header every source includes (``#include "common.cuh"``); its folder is on the include
#: path, so a source compiled from another folder finds it too.
COMMON_HEADER = SOURCE_DIR / "common.cuh"
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
    """Hash of the source, both headers, the compiler (path and version) and the flags."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True)
    digest = hashlib.sha256()
    for part in (compiler, version.stdout, " ".join(COMPILE_FLAGS)):
        digest.update(part.encode() + b"\0")
    for file in (COMPAT_HEADER, COMMON_HEADER, source):
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
               f"-I{COMMON_HEADER.parent}", str(source), "-o", partial]
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
    library = _library(source_of(name))
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
KERNEL_LOG = KernelLog(mark=time.perf_counter, elapsed=lambda start, end: end - start)
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


def _as_it_is(array):
    return array


BACKEND = Backend(module=__name__, sequences="_launch", launch_with=(np, launch),
                  to_device=_contiguous, deliver=lambda result, like: result,
                  all_finite=numpy_all_finite, to_host=_as_it_is, glue_xp=np, to_glue=_as_it_is)

deform_conv2d = BACKEND.bind(deform_conv_ops.deform_conv2d)
deform_conv2d_backward = BACKEND.bind(deform_conv_ops.deform_conv2d_backward)
active_conv2d = BACKEND.bind(active_conv_ops.active_conv2d)
active_conv2d_backward = BACKEND.bind(active_conv_ops.active_conv2d_backward)
ddf = BACKEND.bind(ddf_ops.ddf)
ddf_backward = BACKEND.bind(ddf_ops.ddf_backward)
roi_align = BACKEND.bind(roi_ops.roi_align)
roi_align_backward = BACKEND.bind(roi_ops.roi_align_backward)
ps_roi_align = BACKEND.bind(roi_ops.ps_roi_align)
ps_roi_align_backward = BACKEND.bind(roi_ops.ps_roi_align_backward)
deform_roi_align = BACKEND.bind(roi_ops.deform_roi_align)
deform_roi_align_backward = BACKEND.bind(roi_ops.deform_roi_align_backward)
modulated_deform_roi_pool = BACKEND.bind(roi_ops.modulated_deform_roi_pool)
deform_roi_pool = BACKEND.bind(roi_ops.deform_roi_pool)
deform_roi_pool_backward = BACKEND.bind(roi_ops.deform_roi_pool_backward)
roi_pool = BACKEND.bind(roi_ops.roi_pool)
roi_pool_backward = BACKEND.bind(roi_ops.roi_pool_backward)
deform_ps_roi_pool = BACKEND.bind(roi_ops.deform_ps_roi_pool)
deform_ps_roi_pool_backward = BACKEND.bind(roi_ops.deform_ps_roi_pool_backward)
ps_roi_pool = BACKEND.bind(roi_ops.ps_roi_pool)
ps_roi_pool_backward = BACKEND.bind(roi_ops.ps_roi_pool_backward)
dfn = BACKEND.bind(lsdfn_ops.dfn)
dfn_backward = BACKEND.bind(lsdfn_ops.dfn_backward)
lsdfn_sample = BACKEND.bind(lsdfn_ops.lsdfn_sample)
lsdfn_sample_backward = BACKEND.bind(lsdfn_ops.lsdfn_sample_backward)
lsdfn = BACKEND.bind(lsdfn_ops.lsdfn)
lsdfn_backward = BACKEND.bind(lsdfn_ops.lsdfn_backward)
mimic_loss = BACKEND.bind(mimic_loss_ops.mimic_loss)
mimic_loss_backward = BACKEND.bind(mimic_loss_ops.mimic_loss_backward)

__all__ = BACKEND.bound
