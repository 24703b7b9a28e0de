"""The sections of ``refdyn bench``'s report (:mod:`refdyn.bench`): the ``standard``, ``scaling``
and ``operators`` cases run (rows, ratios, per-kernel times, NumPy peak memory, growth), and the
goals of the performance issue judged from them.  The ``deterministic`` case is
:mod:`refdyn.bench_deterministic`.
"""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np

from .bench_cases import Bench, describe, operator_configs, scaling_configs, standard_config
from .bench_peers import PeerPasses, onnxruntime_deform_conv2d, torch_cpu_deform_conv2d, \
    torch_cuda_depthwise_conv2d, torchvision_cuda_deform_conv2d
from .bench_timing import HOST_NOT_TIMED, TIMED_GPU_BACKENDS, Row, bytes_moved, refdyn_peer, \
    timed_rows
from .deform_conv_numpy import extra_memory_bound
from .registry import OPERATORS

PASSES = ("forward", "backward", "forward+backward")
#: A row whose median is more than this many times its fastest repeat was disturbed (a shared
#: machine, frequency changes): a goal's verdict from it is flagged as unstable.
UNSTABLE_SPREAD = 1.25
NUMPY = "refdyn numpy"
#: The goals of the performance issue: (name, numerator, denominator, pass, largest ratio).
GOALS = (
    ("NumPy forward <= 3x ONNX Runtime DeformConv", NUMPY, "onnxruntime DeformConv",
     "forward", 3.0),
    ("NumPy forward+backward <= PyTorch CPU composition", NUMPY, "torch CPU grid_sample+matmul",
     "forward+backward", 1.0),
    ("CuPy forward <= torchvision CUDA", "refdyn cupy", "torchvision CUDA", "forward", 1.0),
    ("CuPy forward+backward <= torchvision CUDA", "refdyn cupy", "torchvision CUDA",
     "forward+backward", 1.0),
    ("CuPy deterministic backward <= 1.5x atomic", "refdyn cupy (deterministic)", "refdyn cupy",
     "backward", 1.5),
    ("Numba forward+backward <= 2x CuPy", "refdyn numba", "refdyn cupy", "forward+backward", 2.0),
)


# ---- deform_conv2d: timed rows, kernels, memory, ratios -------------------------------------

def deform_conv_rows(bench: Bench, repeats: int, gpu: bool, threads: int) -> list[Row]:
    """NumPy, the CPU peers and (with ``gpu``) the GPU backends and torchvision on one layer."""
    case = bench.case
    geometry = {name: case.params[name] for name in ("stride", "padding", "dilation")}
    rows = timed_rows(NUMPY, refdyn_peer(bench, "vectorized", PASSES), PASSES, repeats)
    rows += timed_rows("onnxruntime DeformConv", onnxruntime_deform_conv2d(
        case.arrays, geometry, bench.expected, threads), ("forward",), repeats)
    rows += timed_rows("torch CPU grid_sample+matmul", torch_cpu_deform_conv2d(
        case.arrays, geometry, case.grad_output, bench.expected, threads), PASSES, repeats)
    if gpu:
        moved = bytes_moved(bench)
        for name, backend, options in (("refdyn cupy", "cupy", {}),
                                       ("refdyn cupy (deterministic)", "cupy",
                                        {"deterministic": True}),
                                       ("refdyn numba", "numba", {})):
            passes = ("backward",) if options else PASSES
            rows += timed_rows(name, refdyn_peer(bench, backend, passes, **options), passes,
                               repeats, moved)
        rows += timed_rows("torchvision CUDA", torchvision_cuda_deform_conv2d(
            case.arrays, geometry, case.grad_output, bench.expected), PASSES, repeats, moved)
        rows.append(Row("refdyn host", "forward", not_run=HOST_NOT_TIMED))
    return rows


def kernel_rows(peer: PeerPasses, kernel_times, passes=("forward", "backward")) -> list[dict]:
    """Device time and argument bytes of each CUDA C kernel in one call of each pass, summed
    per kernel name; ``kernel_times`` is the backend's context manager
    (:data:`refdyn.gpu.cupy.kernel_times`).  The call runs once untimed first (compilation),
    then once with every launch timed."""
    found = []
    for pass_name in passes:
        call = peer.calls[pass_name]()
        call()
        peer.synchronize()
        with kernel_times() as times:
            call()
            peer.synchronize()
        totals: dict[str, dict] = {}
        for launch in times:
            total = totals.setdefault(launch.name, {"pass": pass_name, "kernel": launch.name,
                                                    "launches": 0, "seconds": 0.0, "bytes": 0})
            total["launches"] += 1
            total["seconds"] += launch.seconds
            total["bytes"] += launch.bytes
        found += totals.values()
    return found


def memory_rows(bench: Bench) -> list[dict]:
    """Peak extra memory (tracemalloc) of the NumPy forward and backward against the bound."""
    forward, backward = OPERATORS["deform_conv2d"].implementation("vectorized").load()
    case = bench.case
    bound = extra_memory_bound(case.arrays["input"].shape, case.arrays["offset"].shape,
                               case.arrays["weight"].shape)
    calls = {"forward": lambda: forward(**case.forward_kwargs()),
             "backward": lambda: backward(case.grad_output, **case.backward_kwargs())}
    rows = []
    for name, call in calls.items():
        tracemalloc.start()
        try:
            result = call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        arrays = [result] if isinstance(result, np.ndarray) else [
            value for value in vars(result).values() if value is not None]
        results = sum(array.nbytes for array in arrays)
        rows.append({"pass": name, "peak_bytes": peak, "result_bytes": results,
                     "extra_bytes": peak - results, "bound_bytes": bound,
                     "within_bound": peak - results <= bound})
    return rows


def ratios(rows: list[Row], pairs) -> list[dict]:
    """refdyn time / peer time for each (numerator, denominator) pair and pass both ran."""
    timed = {(row.implementation, row.pass_name): row for row in rows if row.times_s}
    found = []
    for numerator, denominator in pairs:
        for pass_name in PASSES:
            top, bottom = timed.get((numerator, pass_name)), timed.get((denominator, pass_name))
            if top is not None and bottom is not None:
                found.append({"numerator": numerator, "denominator": denominator,
                              "pass": pass_name, "numerator_s": top.median_s,
                              "denominator_s": bottom.median_s,
                              "ratio": top.median_s / bottom.median_s,
                              "spread": max(row.median_s / min(row.times_s)
                                            for row in (top, bottom))})
    return found


RATIO_PAIRS = ((NUMPY, "onnxruntime DeformConv"), (NUMPY, "torch CPU grid_sample+matmul"),
               ("refdyn cupy", "torchvision CUDA"), ("refdyn numba", "torchvision CUDA"),
               ("refdyn cupy (deterministic)", "refdyn cupy"), ("refdyn numba", "refdyn cupy"))


# ---- the sections ---------------------------------------------------------------------------

def run_standard(repeats: int, quick: bool, threads: int) -> dict:
    bench = Bench("deform_conv2d", standard_config(quick))
    rows = deform_conv_rows(bench, repeats, gpu=True, threads=threads)
    cupy_peer = refdyn_peer(bench, "cupy", ("forward", "backward"))
    kernels = [] if isinstance(cupy_peer, str) else kernel_rows(
        cupy_peer, importlib.import_module("refdyn.gpu.cupy").kernel_times)
    return {"config": describe(bench.config), "rows": [row.as_dict() for row in rows],
            "ratios": ratios(rows, RATIO_PAIRS), "memory": memory_rows(bench),
            "cupy_kernels": kernels}


def run_scaling(repeats: int, quick: bool, threads: int) -> dict:
    points = []
    for series, value, config in scaling_configs(quick):
        bench = Bench("deform_conv2d", config)
        rows = deform_conv_rows(bench, repeats, gpu=False, threads=threads)
        points.append({"series": series, "value": value, "config": describe(config),
                       "rows": [row.as_dict() for row in rows],
                       "ratios": ratios(rows, RATIO_PAIRS[:2]), "memory": memory_rows(bench)})
    return {"points": points, "growth": growth(points)}


def growth(points: list[dict]) -> list[dict]:
    """Per series, implementation and pass: time relative to the series' first point, beside
    the growth of the work (column elements N C_in K H_out W_out)."""
    found = []
    for series in dict.fromkeys(point["series"] for point in points):
        members = [point for point in points if point["series"] == series]
        work = [point["config"]["in_channels"] * point["config"]["height"]
                * point["config"]["width"] for point in members]
        for row in members[0]["rows"]:
            if row["median_s"] is None:
                continue
            times = [next((r["median_s"] for r in point["rows"]
                           if r["implementation"] == row["implementation"]
                           and r["pass"] == row["pass"]), None) for point in members]
            found.append({"series": series, "implementation": row["implementation"],
                          "pass": row["pass"], "values": [point["value"] for point in members],
                          "time_growth": [None if t is None else t / times[0] for t in times],
                          "work_growth": [w / work[0] for w in work]})
    return found


def run_operators(repeats: int, quick: bool) -> dict:
    results = []
    for operator, config in operator_configs(quick).items():
        bench = Bench(operator, config)
        passes = ("forward", "backward")
        rows = timed_rows(NUMPY, refdyn_peer(bench, "vectorized", passes), passes, repeats)
        moved = bytes_moved(bench)
        for backend in TIMED_GPU_BACKENDS:
            rows += timed_rows(f"refdyn {backend}", refdyn_peer(bench, backend, passes), passes,
                               repeats, moved)
        rows.append(Row("refdyn host", "forward", not_run=HOST_NOT_TIMED))
        if operator == "ddf":
            rows += timed_rows("torch CUDA depthwise conv2d (same size)",
                               torch_cuda_depthwise_conv2d(bench.case.arrays["features"],
                                                           config.kernel_size),
                               ("forward",), repeats)
        results.append({"operator": operator, "config": describe(config),
                        "rows": [row.as_dict() for row in rows],
                        "ratios": ratios(rows, [(NUMPY, f"refdyn {b}")
                                                for b in TIMED_GPU_BACKENDS])})
    return {"cases": results}


def goals(report: dict) -> list[dict]:
    """Each goal of the issue with its measured ratio (standard case) and verdict (None: not
    measured, e.g. with ``--quick``, whose tiny sizes are no measurement)."""
    standard = report.get("standard")
    found = []
    for name, numerator, denominator, pass_name, limit in GOALS:
        match = None
        if standard is not None:
            match = next((r for r in standard["ratios"]
                          if (r["numerator"], r["denominator"], r["pass"])
                          == (numerator, denominator, pass_name)), None)
        ratio = None if match is None else match["ratio"]
        found.append({"goal": name, "limit": limit, "ratio": ratio,
                      "met": None if ratio is None or report["quick"] else ratio <= limit,
                      "unstable": match is not None and match["spread"] > UNSTABLE_SPREAD,
                      "spread": None if match is None else match["spread"]})
    if "scaling" in report or standard is not None:
        memory = [row for point in report.get("scaling", {}).get("points", [])
                  for row in point["memory"]] + (standard["memory"] if standard else [])
        found.append({"goal": "NumPy peak extra memory within its documented bound at every size",
                      "limit": None, "ratio": None,
                      "met": all(row["within_bound"] for row in memory)})
    return found
