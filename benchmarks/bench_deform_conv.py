"""Benchmark of deform_conv2d and its backward on one mid-sized layer.

Times the vectorized NumPy reference and, when a CUDA device is present, the CuPy and Numba
mirrors (refdyn.gpu.cupy, refdyn.gpu.numba).

Layer: N=8, C_in=C_out=64, 32x32, 3x3 kernel, padding 1, one offset group, float32;
offsets ~ normal(0, standard deviation 2), mask ~ uniform(0, 1), with bias.
Each pass is run once to warm up, then ``--repeats`` times; the table gives the median and the
minimum wall time (time.perf_counter).  GPU timings use arrays already on the device and
synchronize the device before the clock stops.  The NumPy rows also give the peak memory the
call allocates (tracemalloc; NumPy reports its buffers to it), outputs included.

    python benchmarks/bench_deform_conv.py [--repeats 5] [--json results.json]

This is a measurement script, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

import refdyn
from refdyn import gpu
from refdyn.deform_conv import DEFAULT_CHUNK_ELEMENTS

LAYER = dict(batch=8, channels=64, size=32, kernel=3, padding=1, offset_std=2.0, dtype="float32")


def make_inputs(seed: int = 0) -> dict:
    """The benchmark layer's arrays (NumPy), keyed by argument name, plus ``grad_output``."""
    rng = np.random.default_rng(seed)
    n, c, s, k = LAYER["batch"], LAYER["channels"], LAYER["size"], LAYER["kernel"]
    dtype = np.dtype(LAYER["dtype"])
    out = s + 2 * LAYER["padding"] - k + 1
    arrays = dict(
        input=rng.standard_normal((n, c, s, s)),
        offset=rng.normal(0.0, LAYER["offset_std"], (n, 2 * k * k, out, out)),
        weight=rng.standard_normal((c, c, k, k)) / np.sqrt(c * k * k),
        bias=rng.standard_normal(c),
        mask=rng.uniform(0.0, 1.0, (n, k * k, out, out)),
        grad_output=rng.standard_normal((n, c, out, out)),
    )
    return {name: value.astype(dtype) for name, value in arrays.items()}


def passes(module, arrays: dict) -> dict:
    """The three timed calls of one backend: forward, backward, forward then backward."""
    args = {name: arrays[name] for name in ("input", "offset", "weight", "bias", "mask")}
    padding = LAYER["padding"]

    def forward():
        return module.deform_conv2d(**args, padding=padding)

    def backward():
        return module.deform_conv2d_backward(arrays["grad_output"], **args, padding=padding)

    def forward_backward():
        forward()
        return backward()

    return {"forward": forward, "backward": backward, "forward+backward": forward_backward}


def time_call(call, repeats: int, synchronize=lambda: None) -> list[float]:
    """Wall times of ``repeats`` calls after one warm-up call, each ended by ``synchronize()``."""
    call()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize()
        times.append(time.perf_counter() - start)
    return times


def peak_memory(call) -> dict:
    """Peak bytes allocated while ``call`` runs, and the bytes of the arrays it returns, which
    that peak includes.  Tracing starts just before the call, so nothing else is counted."""
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    arrays = [result] if isinstance(result, np.ndarray) else [
        value for value in vars(result).values() if value is not None]
    return {"peak_bytes": peak, "result_bytes": sum(a.nbytes for a in arrays)}


def gpu_backend(name: str):
    """(module, to_device, synchronize) for a GPU backend, or a string saying why it is skipped."""
    problem = gpu.backend_problem(name)
    if problem is None and gpu.cuda_device_count() == 0:
        problem = "no CUDA device"
    if problem is None and name == "numba" and gpu.numba_uses_simulator():
        problem = f"{gpu.CUDA_SIMULATOR_VARIABLE} is set: the simulator is not worth timing"
    if problem is not None:
        return problem
    try:
        module = importlib.import_module(f"refdyn.gpu.{name}")
    except ImportError as error:
        return f"refdyn.gpu.{name} cannot be imported: {error}"
    if name == "cupy":
        import cupy
        return module, cupy.asarray, cupy.cuda.Device().synchronize
    from numba import cuda
    return module, cuda.to_device, cuda.synchronize


def summarize(backend: str, name: str, times: list[float]) -> dict:
    return {"backend": backend, "pass": name, "median_s": statistics.median(times),
            "min_s": min(times), "times_s": times}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per pass after the warm-up (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    options = parser.parse_args(argv)
    if options.repeats < 1:
        parser.error("--repeats must be at least 1")

    arrays = make_inputs()
    results, memory, skipped = [], {}, {}

    numpy_passes = passes(refdyn, arrays)
    for name, call in numpy_passes.items():
        results.append(summarize("numpy", name, time_call(call, options.repeats)))
    for name in ("forward", "backward"):
        memory[name] = peak_memory(numpy_passes[name])

    for backend in ("cupy", "numba"):
        found = gpu_backend(backend)
        if isinstance(found, str):
            skipped[backend] = found
            continue
        module, to_device, synchronize = found
        device_arrays = {name: to_device(value) for name, value in arrays.items()}
        for name, call in passes(module, device_arrays).items():
            results.append(summarize(backend, name, time_call(call, options.repeats, synchronize)))

    report = {
        "layer": LAYER,
        "repeats": options.repeats,
        "chunk_elements": DEFAULT_CHUNK_ELEMENTS,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "results": results,
        "numpy_memory": memory,
        "skipped": skipped,
    }
    print_report(report)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return report


def print_report(report: dict) -> None:
    layer = report["layer"]
    print(f"deform_conv2d  N={layer['batch']} C_in=C_out={layer['channels']} "
          f"{layer['size']}x{layer['size']} {layer['kernel']}x{layer['kernel']} "
          f"padding {layer['padding']} {layer['dtype']}, offsets ~ N(0, {layer['offset_std']:g}^2), "
          f"mask ~ U(0, 1); {report['repeats']} repeats after 1 warm-up")
    print(f"{report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
          f"NumPy {report['machine']['numpy']}")
    print()
    print(f"{'backend':8s} {'pass':18s} {'median ms':>10s} {'min ms':>10s}")
    for row in report["results"]:
        print(f"{row['backend']:8s} {row['pass']:18s} {1e3 * row['median_s']:10.2f} "
              f"{1e3 * row['min_s']:10.2f}")
    print()
    print(f"NumPy peak allocated memory (tracemalloc), chunk_elements = {report['chunk_elements']}:")
    for name, usage in report["numpy_memory"].items():
        print(f"  {name:8s} {usage['peak_bytes'] / 2**20:6.1f} MiB, of which results "
              f"{usage['result_bytes'] / 2**20:.1f} MiB")
    for backend, reason in report["skipped"].items():
        print(f"{backend} skipped: {reason}")


if __name__ == "__main__":
    main()
