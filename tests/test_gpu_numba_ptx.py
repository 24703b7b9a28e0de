"""Every Numba kernel variant the test session launched compiles to PTX for compute capability
9.0 (an H200), as numba-cuda compiles it on a device; and the RoI sampling coordinates compile
without fused multiply-adds, so they round as the NumPy reference does.

The simulator runs kernels as Python and would accept code that NVVM refuses (types it cannot
unify, unsupported calls); this compiles each launched variant (kernel and argument types,
recorded by refdyn.gpu.numba_support.LAUNCHED_VARIANTS) in a separate process where numba.cuda
is the real compiler.  conftest.py runs this file last, so the variants of the whole session
are compiled; run alone, it first launches every kernel through ``refdyn check``'s checks.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
from numba import types

from refdyn.cli import run_check
from refdyn.gpu import numba_uses_simulator
from refdyn.registry import OPERATORS

WORKER = Path(__file__).with_name("gpu_numba_ptx_worker.py")
CAPABILITY = (9, 0)
#: The modules that define Numba kernels: every family's ``<stem>_numba.py`` and numba_support.
NUMBA_MODULES = ("refdyn.gpu.numba_support", *sorted(
    f"refdyn.gpu.{path.stem}" for path in (Path(__file__).parents[1] / "gpu").glob("*_numba.py")))
COMPILE_TIME_LIMIT_S = 1200


def is_kernel(value) -> bool:
    """A ``@cuda.jit`` kernel (not a device function), on a device or under the simulator."""
    if numba_uses_simulator():
        from numba.cuda.simulator.kernel import FakeCUDAKernel
        return isinstance(value, FakeCUDAKernel) and not value._device
    from numba.cuda.dispatcher import CUDADispatcher
    return isinstance(value, CUDADispatcher) and not value.targetoptions.get("device")


def module_kernels() -> set[tuple[str, str]]:
    """(module, name) of every kernel the Numba backend defines."""
    import importlib
    found = set()
    for module_name in NUMBA_MODULES:
        module = importlib.import_module(module_name)
        found |= {(module_name, name) for name, value in vars(module).items()
                  if is_kernel(value) and value.__module__ == module_name}
    return found


def compile_in_workers(variants: list, tmp_path: Path, workers: int = 2) -> list[dict]:
    """Compile ``variants`` in ``workers`` processes side by side; their results in order."""
    processes, outputs, logs = [], [], []
    for index in range(workers):
        part = variants[index::workers]
        variants_path = tmp_path / f"variants_{index}.pickle"
        outputs.append(tmp_path / f"results_{index}.json")
        variants_path.write_bytes(pickle.dumps(part))
        environment = {key: value for key, value in os.environ.items()
                       if key != "NUMBA_ENABLE_CUDASIM"}
        logs.append(tmp_path / f"stderr_{index}.txt")    # a file: a pipe could fill and block
        with logs[-1].open("w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(variants_path), str(outputs[-1]),
                 *map(str, CAPABILITY)], env=environment, stderr=log))
    results = []
    try:
        for process, output, log in zip(processes, outputs, logs):
            process.wait(timeout=COMPILE_TIME_LIMIT_S)
            assert process.returncode == 0, \
                f"the PTX worker failed:\n{log.read_text()[-3000:]}"
            results += json.loads(output.read_text())
    finally:
        for process in processes:
            process.kill()              # a no-op for a worker that has finished
    return results


def launch_deterministic_backward_on_device_arrays(nb):
    """The kernels ``refdyn check`` does not reach: the deterministic grad_input, and the
    finiteness check of device arrays, in both dtypes."""
    from numba import cuda
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        arrays = [rng.uniform(-1, 1, shape).astype(dtype)
                  for shape in ((1, 2, 4, 4), (1, 2, 4, 4), (1, 2, 4, 4), (2, 2, 1, 1))]
        grad_output, input, offset, weight = map(cuda.to_device, arrays)
        nb.deform_conv2d_backward(grad_output, input, offset, weight, deterministic=True)


def test_every_launched_numba_kernel_variant_compiles_for_sm90(nb, tmp_path):
    from refdyn.gpu.numba_support import LAUNCHED_VARIANTS
    kernels = module_kernels()
    assert len(kernels) >= 40, sorted(kernels)       # the finder sees the kernels
    if not kernels <= set(LAUNCHED_VARIANTS):        # run alone: launch every kernel first
        run_check(False, ["numba"], sorted(OPERATORS))
        launch_deterministic_backward_on_device_arrays(nb)
    never_launched = sorted(kernels - set(LAUNCHED_VARIANTS))
    assert not never_launched, f"kernels no test launches (so nothing checks them): " \
                               f"{never_launched}"

    variants = [(module, name, argument_types)
                for (module, name), signatures in sorted(LAUNCHED_VARIANTS.items())
                if (module, name) in kernels              # not a test's own kernel
                for argument_types in sorted(signatures, key=str)]
    roi_forward = sorted(LAUNCHED_VARIANTS["refdyn.gpu.roi_numba", "_forward_kernel"], key=str)
    probes = [("__main__", "roi_coordinates",
               (rois, offset, mask, geo, scales, types.float64[::1]))
              for _, _, rois, offset, mask, _, geo, scales in roi_forward]
    results = compile_in_workers(variants + probes, tmp_path)

    failed = [f"{entry['module']}.{entry['kernel']}{entry['signature']}: {entry['error']}"
              for entry in results if entry["error"] is not None]
    assert not failed, "\n".join(failed)
    compiled = {(entry["module"], entry["kernel"]) for entry in results}
    assert kernels <= compiled
    fused = [entry for entry in results if entry["kernel"] == "roi_coordinates" and entry["fma"]]
    assert len(probes) >= 2 and not fused, fused
