"""Compiles Numba kernel variants to PTX, as numba-cuda compiles them for a device, on a machine
with neither a GPU nor the simulator (run by tests/test_gpu_numba_ptx.py in its own process,
since the simulator, once imported, replaces numba.cuda for the whole process).

    python tests/gpu_numba_ptx_worker.py VARIANTS.pickle RESULTS.json MAJOR MINOR

VARIANTS: a list of (module, kernel name, argument types) pickled; module ``__main__`` names
the probes below.  RESULTS: one entry per variant, {"module", "kernel", "signature", "error"
(None when it compiled), "fma" (the number of fused multiply-adds in its PTX), "seconds" (the
time it took)}.
"""

import importlib
import json
import os
import pickle
import sys
import time
from types import SimpleNamespace

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)    # before numba is imported

import numba.cuda.dispatcher as numba_dispatcher  # noqa: E402
import refdyn.gpu  # noqa: E402
from numba import cuda, types  # noqa: E402

# Compiling needs no device, but refdyn.gpu.numba's import guard asks for one, and numba-cuda
# asks the current device for the compute capability of the device functions a kernel calls.
refdyn.gpu.cuda_device_count = lambda: 1
cuda.is_available = lambda: True
CAPABILITY = tuple(int(number) for number in sys.argv[3:5]) if len(sys.argv) >= 5 else (9, 0)
numba_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=CAPABILITY)

from refdyn.gpu.roi_numba import _at, _bin  # noqa: E402


def roi_coordinates(rois, offset, mask, geo, scales, out):
    """Probe: the shifted coordinates of sample (a, a) of bin (i, i) of RoI r, output channel 0,
    of every RoI kind.  Indices and kind are run-time values (taken from ``out``'s length and
    ``geo``), so nothing folds away and every branch is compiled.  Its PTX must have no fused
    multiply-add: these coordinates decide kinks and skip lines, and must round as NumPy's."""
    r, i, a = out.shape[0] - 3, out.shape[0] - 2, out.shape[0] - 1
    _, ys, xs, shift_y, shift_x, _, _, _ = _bin(geo, scales, rois, offset, mask, r, 0, i, i)
    out[0] = _at(geo[8], ys, a) + shift_y
    out[1] = _at(geo[8], xs, a) + shift_x


def compile_variant(module: str, name: str, argument_types) -> dict:
    entry = {"module": module, "kernel": name, "signature": str(argument_types)}
    start = time.perf_counter()
    try:
        kernel = getattr(importlib.import_module(module), name)
        function = getattr(kernel, "py_func", kernel)     # a dispatcher, or a probe below
        ptx, _ = cuda.compile_ptx(function, types.void(*argument_types), cc=CAPABILITY)
        entry.update(error=None, fma=ptx.count("fma.rn"))
    except Exception as error:  # every failure is reported with its variant, not raised
        entry.update(error=f"{type(error).__name__}: {error}", fma=None)
    entry["seconds"] = time.perf_counter() - start
    return entry


def main(variants_path: str, results_path: str) -> None:
    with open(variants_path, "rb") as file:
        variants = pickle.load(file)
    results = [compile_variant(module, name, argument_types)
               for module, name, argument_types in variants]
    with open(results_path, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(*sys.argv[1:3])
