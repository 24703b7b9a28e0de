"""The CUDA C pieces every family's launch glue shares, on both CUDA C backends
(:mod:`refdyn.gpu.cupy`, :mod:`refdyn.gpu.host`): the dtype suffix of the exported kernel names,
the kernels each ``.cu`` file of this folder exports, and the timing of launches.

Each ``<stem>.cu`` file is a translation unit of its own (with its own ``struct`` of sizes), so
each is compiled into its own CuPy module or host library; the launchers pick the file from the
kernel's name with :func:`source_of`.  The kernel list is read from the sources themselves
(:func:`exported_kernels`), so no other file repeats it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent

#: The suffix of an exported kernel's name for each dtype: ``EXPORT_F32_F64`` of common.cuh
#: instantiates every ``KERNELS(suffix, scalar_t)`` macro with these, float and double.
KERNEL_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

#: A kernel declaration, ``extern "C" __global__ void <name>(`` or, inside a
#: ``KERNELS(suffix, scalar_t)`` macro, ``... <name>_##suffix(``.
_KERNEL_DECLARATION = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(\w+?)(_##suffix)?\s*\(')
_LINE_COMMENT = re.compile(r"//[^\n]*")


@lru_cache(maxsize=None)
def exported_kernels() -> dict[str, frozenset[str]]:
    """The kernels each CUDA C file of this folder exports, by file name (``"ddf.cu"``), read
    from its ``extern "C" __global__`` declarations (comments left out); a name declared with
    ``_##suffix`` stands for one kernel per :data:`KERNEL_SUFFIX` value."""
    kernels = {}
    for source in sorted(SOURCE_DIR.glob("*.cu")):
        code = _LINE_COMMENT.sub("", source.read_text(encoding="utf-8"))
        kernels[source.name] = frozenset(
            kernel for name, per_dtype in _KERNEL_DECLARATION.findall(code)
            for kernel in ([f"{name}_{suffix}" for suffix in KERNEL_SUFFIX.values()]
                           if per_dtype else [name]))
    return kernels


def kernel_name(stem: str, name: str, dtype) -> str:
    """The exported name of kernel ``name`` of ``<stem>.cu`` for ``dtype``, e.g.
    ``kernel_name("ddf", "forward", float32)`` is ``ddf_forward_f32``.  Each launch module binds
    its stem once (``kernel_name = partial(cuda_c.kernel_name, "<stem>")``)."""
    return f"{stem}_{name}_{KERNEL_SUFFIX[np.dtype(dtype)]}"


def source_of(kernel: str) -> str:
    """The CUDA C file of this folder that exports ``kernel`` (a file name, ``"ddf.cu"``)."""
    for source, kernels in exported_kernels().items():
        if kernel in kernels:
            return source
    raise KeyError(f"no CUDA C file of {SOURCE_DIR} exports a kernel named {kernel!r}")


@dataclass(frozen=True)
class KernelTime:
    """One kernel launch: its exported name, the bytes of its array arguments (what it reads
    or writes at least once: the compulsory traffic of the launch) and its time on the clock
    of the backend (CUDA events on a GPU)."""

    name: str
    bytes: int
    seconds: float


class KernelLog:
    """The launches of one backend, timed while :meth:`timing` is active.

    ``mark()`` returns a point on the backend's clock (after everything launched before it)
    and ``elapsed(start, end)`` the seconds between two marks, waiting for ``end`` if need be.
    The launcher calls :meth:`run` with each launch.
    """

    def __init__(self, mark: Callable[[], object], elapsed: Callable[[object, object], float]):
        self.mark, self.elapsed = mark, elapsed
        self.pending = None

    def run(self, name: str, args, launch_kernel: Callable[[], None]) -> None:
        """Run ``launch_kernel()`` (the launch of kernel ``name`` with ``args``), timed when a
        :meth:`timing` block is active."""
        if self.pending is None:
            launch_kernel()
            return
        start = self.mark()
        launch_kernel()
        self.pending.append((name, sum(arg.nbytes for arg in args if hasattr(arg, "nbytes")),
                             start, self.mark()))

    @contextmanager
    def timing(self):
        """``with log.timing() as times``: ``times`` receives a :class:`KernelTime` per launch
        made inside the block, in launch order, when the block ends."""
        times: list[KernelTime] = []
        self.pending, pending = [], self.pending
        try:
            yield times
        finally:
            launches, self.pending = self.pending, pending
            times.extend(KernelTime(name, nbytes, self.elapsed(start, end))
                         for name, nbytes, start, end in launches)
