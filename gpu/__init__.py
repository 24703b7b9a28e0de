"""GPU mirrors of the refdyn operators (importable as ``refdyn.gpu``).

Backends, each with the same function names and signatures as the NumPy reference:

- ``refdyn.gpu.cupy``: the CUDA C kernels in this folder, compiled by NVRTC through CuPy.
- ``refdyn.gpu.numba``: Numba CUDA kernels; without a GPU they run under Numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1``).
- ``refdyn.gpu.host``: the same CUDA C files compiled for the CPU by the host C++ compiler
  through ``cuda_host_compat.h``, so the kernel sources are executed without a GPU.

Nothing here imports CuPy or Numba: :func:`backend_problem` tells whether a backend can
run on this machine before anything is imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
from functools import lru_cache

CUDA_SIMULATOR_VARIABLE = "NUMBA_ENABLE_CUDASIM"


@lru_cache(maxsize=None)
def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver), via ``libcuda``."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            libcuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def numba_uses_simulator() -> bool:
    """True when Numba CUDA kernels run under the CUDA simulator."""
    return os.environ.get(CUDA_SIMULATOR_VARIABLE, "0") not in ("", "0")


def use_numba_simulator_without_device() -> None:
    """Select Numba's CUDA simulator when no GPU exists (call before importing numba)."""
    if cuda_device_count() == 0:
        os.environ.setdefault(CUDA_SIMULATOR_VARIABLE, "1")


def host_compiler() -> str | None:
    """The C++ compiler that builds the CUDA C sources for the CPU (``$CXX`` or g++/clang++)."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` ('cupy', 'numba', 'host') cannot run here, or None if it can."""
    if backend == "cupy":
        if importlib.util.find_spec("cupy") is None:
            return "cupy is not installed (pip install 'refdyn[gpu]')"
        if cuda_device_count() == 0:
            return "no CUDA device"
        return None
    if backend == "numba":
        if importlib.util.find_spec("numba") is None:
            return "numba is not installed (pip install 'refdyn[test]')"
        if importlib.util.find_spec("numba.cuda") is None:
            return "numba-cuda is not installed (pip install numba-cuda)"
        if cuda_device_count() == 0 and not numba_uses_simulator():
            return f"no CUDA device and {CUDA_SIMULATOR_VARIABLE} is not set"
        return None
    if backend == "host":
        if host_compiler() is None:
            return "no host C++ compiler (set CXX or install g++)"
        return None
    raise ValueError(f"unknown GPU backend {backend!r}; expected 'cupy', 'numba' or 'host'")
