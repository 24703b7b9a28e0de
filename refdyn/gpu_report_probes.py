"""The GPU report's probes of this machine (:mod:`refdyn.gpu_report`), run as the child processes
of its steps 1 and 3 (``python -m refdyn.gpu_report environment`` and ``... deterministic
BACKEND``): what the machine has (the GPU, driver and CUDA versions as nvidia-smi, torch, CuPy
and Numba see them, the installed packages, which backends can run here), and the deterministic
deform_conv2d backward run to run.  Also the helpers the report shares with them:
:mod:`refdyn.gpu` imported on demand and the backends' labels.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Iterator

from . import __version__
from .bench_cases import Bench, describe, standard_config
from .bench_report import cpu_model, short
from .bench_timing import CHECK_TOLERANCE, device_tools, refdyn_peer
from .registry import GPU_BACKENDS

#: Calls of the deterministic backward compared bit for bit.
DETERMINISTIC_RUNS = 3
#: Distributions whose versions the environment step lists (those installed).
PACKAGES = ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "cupy", "torch",
            "torchvision", "onnxruntime", "pytest", "hypothesis")


def refdyn_gpu():
    """:mod:`refdyn.gpu`, imported when a step needs it: ``refdyn.cli`` imports this module, and
    run from a source checkout (``python -m refdyn.cli``, as ``refdyn validate`` starts its
    workers) ``refdyn.gpu`` exists only once refdyn is installed."""
    from . import gpu
    return gpu


def backend_label(backend: str) -> str:
    """The backend's name, marked when Numba kernels run under the CUDA simulator."""
    simulated = backend == "numba" and refdyn_gpu().numba_uses_simulator()
    return f"{backend} (simulator)" if simulated else backend


# ---- step 1: the environment ----------------------------------------------------------------

def cuda_version(number: int) -> str:
    """CUDA's integer version (12040) as text (12.4)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def nvidia_smi() -> Iterator[str]:
    if shutil.which("nvidia-smi") is None:
        yield "nvidia-smi: not found"
        return
    done = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,"
                           "compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    for line in (done.stdout.strip() or done.stderr.strip()).splitlines():
        yield f"nvidia-smi: {line}"


def torch_cuda() -> Iterator[str]:
    if importlib.util.find_spec("torch") is None:
        yield "torch: not installed"
        return
    import torch
    yield (f"torch {torch.__version__}: built for CUDA {torch.version.cuda}, cuDNN "
           f"{torch.backends.cudnn.version()}, CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        yield (f"torch device {index}: {properties.name}, compute capability "
               f"{properties.major}.{properties.minor}, {properties.total_memory / 2**30:.1f} GiB")


def cupy_cuda() -> Iterator[str]:
    if importlib.util.find_spec("cupy") is None:
        yield "cupy: not installed"
        return
    if refdyn_gpu().cuda_device_count() == 0:
        yield "cupy: installed; no CUDA device to query"
        return
    import cupy
    runtime = cupy.cuda.runtime
    nvrtc = ".".join(str(part) for part in cupy.cuda.nvrtc.getVersion())
    yield (f"cupy {cupy.__version__}: CUDA runtime {cuda_version(runtime.runtimeGetVersion())}, "
           f"driver {cuda_version(runtime.driverGetVersion())}, NVRTC {nvrtc}")
    for index in range(runtime.getDeviceCount()):
        properties = runtime.getDeviceProperties(index)
        name = properties["name"]
        yield (f"cupy device {index}: {name.decode() if isinstance(name, bytes) else name}, "
               f"compute capability {properties['major']}.{properties['minor']}, "
               f"{properties['totalGlobalMem'] / 2**30:.1f} GiB")


def numba_cuda() -> Iterator[str]:
    if importlib.util.find_spec("numba") is None or importlib.util.find_spec("numba.cuda") is None:
        yield "numba-cuda: not installed"
        return
    if refdyn_gpu().numba_uses_simulator():
        yield (f"numba-cuda: the CUDA simulator ({refdyn_gpu().CUDA_SIMULATOR_VARIABLE}=1): kernels run "
               "on the CPU")
        return
    if refdyn_gpu().cuda_device_count() == 0:
        yield "numba-cuda: no CUDA device"
        return
    from numba import cuda
    from numba.cuda.cudadrv import driver, runtime
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    capability = ".".join(str(part) for part in device.compute_capability)
    yield (f"numba-cuda: device {device.id}: {name}, compute capability {capability}, driver "
           f"CUDA {'.'.join(map(str, driver.get_version()))}, toolkit (NVRTC) "
           f"{'.'.join(map(str, runtime.get_version()))}")


def environment() -> int:
    """Step 1: print what this machine has, line by line (a probe that raises is one line)."""
    print(f"python {platform.python_version()} ({sys.executable}), {platform.platform()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"CUDA devices (libcuda): {refdyn_gpu().cuda_device_count()}")
    print(f"{refdyn_gpu().CUDA_SIMULATOR_VARIABLE}={os.environ.get(refdyn_gpu().CUDA_SIMULATOR_VARIABLE, '')}")
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    print(f"installed: refdyn {__version__}, {', '.join(versions)}", flush=True)
    for probe in (nvidia_smi, torch_cuda, cupy_cuda, numba_cuda):
        try:
            for line in probe():
                print(line, flush=True)
        except Exception as error:   # one probe's failure is reported, the others still run
            print(f"{probe.__name__}: {type(error).__name__}: {error}", flush=True)
    problems = {backend: refdyn_gpu().backend_problem(backend) for backend in GPU_BACKENDS}
    for backend, problem in problems.items():
        print(f"backend {backend_label(backend)}: "
              f"{'can run here' if problem is None else 'cannot run here: ' + problem}")
    able = [backend_label(backend) for backend, problem in problems.items() if problem is None]
    print(f"backends that can run here: {', '.join(able) or 'none'}")
    return 0


# ---- step 3: the deterministic backward, run to run -----------------------------------------

def deterministic_backward(backend: str, quick: bool, runs: int = DETERMINISTIC_RUNS) -> list[str]:
    """Step 3: the deterministic deform_conv2d backward on ``backend`` at the standard layer
    (tiny with ``quick``), through refdyn bench's timing path (device arrays): checked against
    the float64 reference, then called ``runs`` times; returns the failures (none: every
    gradient bitwise identical in every run)."""
    bench = Bench("deform_conv2d", standard_config(quick))
    peer = refdyn_peer(bench, backend, ("backward",), deterministic=True)
    if isinstance(peer, str):
        return [peer]
    print(f"deform_conv2d_backward(deterministic=True) on {backend_label(backend)}: "
          f"{short(describe(bench.config))}", flush=True)
    error = peer.check()["backward"]
    failures = [] if error <= CHECK_TOLERANCE else [
        f"error {error:.2e} against the float64 reference exceeds {CHECK_TOLERANCE:g}"]
    to_host = device_tools(backend)[1]
    results = [to_host(peer.calls["backward"]()()) for _ in range(runs)]
    for name, first in results[0].items():
        if first is None:
            continue
        for number, result in enumerate(results[1:], 2):
            if first.tobytes() != result[name].tobytes():
                difference = abs(result[name].astype(float) - first).max()
                failures.append(f"{name} of run {number} differs from run 1 (max |difference| "
                                f"{difference:.3g})")
    print(f"error against the float64 reference {error:.2e} (tolerance {CHECK_TOLERANCE:g})")
    print("; ".join(failures) if failures else
          f"bitwise identical in {runs} runs: {', '.join(results[0])}")
    return failures
