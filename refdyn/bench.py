"""``refdyn bench``: refdyn's backends and the peers installed beside them, timed in one process.

    refdyn bench [--case standard,scaling,operators,deterministic] [--repeats 5] [--threads N]
                 [--quick] [--json PATH]
    python -m refdyn.bench ...           (the same)

Cases (``--case``, comma-separated; all by default):

- ``standard``: deform_conv2d, N=8, C_in=C_out=64, 32x32, 3x3, padding 1, one offset group,
  offsets ~ N(0, 2^2) (kept 1e-3 pixel off the integers: :func:`off_the_kinks`),
  mask ~ U(0, 1), float32; forward, backward, forward+backward of the NumPy
  reference, the GPU backends present, and the peers (:mod:`refdyn.bench_peers`): ONNX Runtime
  DeformConv, a PyTorch CPU composition, torchvision's CUDA kernels.  Ratios are refdyn time /
  peer time.  Also the peak extra memory of the NumPy paths against their documented bound.
- ``scaling``: the standard layer with H=W in {16, 32, 64, 128} (C=64), then with
  C_in=C_out in {16, 64, 256} (32x32): NumPy and the CPU peers, how time grows, and the
  memory bound at every size.
- ``operators``: one case each of roi_align (128 RoIs of a 256-channel map), LS-DFN (s=3) and
  DDF (3x3, 64 channels), NumPy against the GPU backends present (and, for DDF, a depthwise
  convolution of the same size on the GPU).
- ``deterministic``: the per-pixel sort of the deterministic grad_input in its worst case
  (every contribution on one pixel), and that backward's kernels against the atomic one's, on
  the host build (:mod:`refdyn.bench_deterministic`: CPU numbers of the algorithm).

Every timed implementation is first checked against the float64 NumPy reference on the same
(float32) inputs; one that disagrees is reported and not timed.  Each pass runs once to warm
up, then ``--repeats`` times (median and minimum of wall time; GPU calls on device arrays,
ended by a device synchronization).  ``--quick`` shrinks every case (for tests; not a
measurement).  The ``host`` backend (the CUDA C compiled for the CPU, one thread per loop
iteration) is an emulation taking seconds per call and is not timed, except by the
``deterministic`` case, which measures how the sort's cost grows.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Callable, Optional

import numpy as np

from . import bench_deterministic
from .bench_peers import PeerPasses, cpu_threads, grad_errors, onnxruntime_deform_conv2d, ready, \
    torch_cpu_deform_conv2d, torch_cuda_depthwise_conv2d, torchvision_cuda_deform_conv2d
from .deform_conv import DEFAULT_CHUNK_ELEMENTS, extra_memory_bound
from .registry import OPERATORS, load
from .testing.cases import scaled_error
from .testing.ddf_cases import DDFConfig
from .testing.deform_conv_cases import DeformConvConfig
from .testing.lsdfn_cases import LSDFNConfig
from .testing.roi_cases import RoIPoolConfig

CASES = ("standard", "scaling", "operators", "deterministic")
PASSES = ("forward", "backward", "forward+backward")
DEFAULT_REPEATS = 5
#: Largest error (max |peer - reference| / max(1, max |reference|)) a float32 implementation
#: may show against the float64 reference before it is reported instead of timed.
CHECK_TOLERANCE = 1e-3
#: A row whose median is more than this many times its fastest repeat was disturbed (a shared
#: machine, frequency changes): a goal's verdict from it is flagged as unstable.
UNSTABLE_SPREAD = 1.25
#: Pixel distance the deform_conv2d offsets keep from the bilinear kinks (:func:`off_the_kinks`).
KINK_MARGIN = 1e-3
NUMPY = "refdyn numpy"
TIMED_GPU_BACKENDS = ("cupy", "numba")
HOST_NOT_TIMED = ("not timed: the CUDA C compiled for the CPU is an emulation (seconds per call), "
                  "not a GPU result; `refdyn check` covers its correctness")

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


# ---- configurations -----------------------------------------------------------------------------

def standard_config(quick: bool) -> DeformConvConfig:
    """The standard deform_conv2d layer (a tiny one with ``quick``)."""
    size, channels, batch = (8, 4, 2) if quick else (32, 64, 8)
    return DeformConvConfig(batch=batch, in_channels=channels, out_channels=channels,
                            height=size, width=size, kernel=(3, 3), padding=(1, 1),
                            offset_kind="normal", offset_scale=2.0, dtype="float32")


def scaling_configs(quick: bool) -> list[tuple[str, int, DeformConvConfig]]:
    """(series, value, layer): the standard layer at each size, then at each channel count."""
    base = standard_config(quick)
    sizes, channels = ((6, 8), (2, 4)) if quick else ((16, 32, 64, 128), (16, 64, 256))
    return ([("H=W", size, replace(base, height=size, width=size)) for size in sizes]
            + [("C", count, replace(base, in_channels=count, out_channels=count))
               for count in channels])


def operator_configs(quick: bool) -> dict[str, object]:
    """One representative configuration per operator, float32."""
    if quick:
        return {"roi_align": RoIPoolConfig(operator="roi_align", batch=1, channels=4, height=8,
                                           width=8, rois=4, roi_kind="inside", pooled=(2, 2),
                                           dtype="float32"),
                "lsdfn": LSDFNConfig(batch=1, channels=2, out_channels=2, height=6, width=6,
                                     samples=3, dtype="float32"),
                "ddf": DDFConfig(batch=1, channels=4, height=6, width=6, dtype="float32")}
    return {"roi_align": RoIPoolConfig(operator="roi_align", batch=2, channels=256, height=64,
                                       width=64, rois=128, roi_kind="inside", pooled=(7, 7),
                                       spatial_scale=0.25, sampling_ratio=2, aligned=True,
                                       dtype="float32"),
            "lsdfn": LSDFNConfig(batch=2, channels=32, out_channels=32, height=32, width=32,
                                 samples=3, dtype="float32"),
            "ddf": DDFConfig(batch=8, channels=64, height=32, width=32, kernel_size=3,
                             dtype="float32")}


# ---- one case: its arrays, reference results and timed implementations ------------------------

@dataclass
class Bench:
    """One case: the operator, its float32 case, and the float64 reference results."""

    operator: str
    config: object
    case: object = field(init=False)
    expected: dict = field(init=False)

    def __post_init__(self):
        op = OPERATORS[self.operator]
        self.case = load(op.make_case)(self.config)
        if self.operator == "deform_conv2d":
            self.case = self.case.with_arrays(offset=off_the_kinks(self.case.arrays["offset"]))
        forward, backward = op.implementation("vectorized").load()
        wide = self.case.with_arrays(**{name: None if value is None else value.astype(np.float64)
                                        for name, value in self.case.arrays.items()})
        grad_output = self.case.grad_output.astype(np.float64)
        self.expected = {"forward": forward(**wide.forward_kwargs()),
                         "backward": backward(grad_output, **wide.backward_kwargs())}
        self.expected["forward+backward"] = self.expected["backward"]


def off_the_kinks(offset: np.ndarray, margin: float = KINK_MARGIN) -> np.ndarray:
    """Offsets moved at least ``margin`` pixel away from the integers.

    The sampling points are p0 + p_k (integers) + offsets.  Within float32 rounding of an
    integer, a float32 implementation and the float64 reference can pick different bilinear
    cells, and the offset gradient jumps between cells; away from the integers they agree.
    """
    nearest = np.round(offset)
    fraction = offset - nearest
    pushed = nearest + np.where(fraction < 0, -margin, margin)
    return np.where(np.abs(fraction) < margin, pushed, offset).astype(offset.dtype)


@dataclass
class Row:
    """One implementation and pass of a case: times, or why it was not timed."""

    implementation: str
    pass_name: str
    times_s: list = field(default_factory=list)
    check_error: Optional[float] = None
    not_run: str = ""
    bytes_moved: Optional[int] = None

    @property
    def median_s(self) -> Optional[float]:
        return statistics.median(self.times_s) if self.times_s else None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["pass"] = data.pop("pass_name")
        data["median_s"] = self.median_s
        data["min_s"] = min(self.times_s) if self.times_s else None
        return data


def time_pass(prepare: Callable, repeats: int, synchronize: Callable = lambda: None) -> list:
    """Wall times of ``repeats`` calls after one warm-up; ``prepare()`` (untimed) returns the
    call to time, and ``synchronize()`` waits for the device before and after it."""
    times = []
    for repeat in range(repeats + 1):
        call = prepare()
        synchronize()
        start = time.perf_counter()
        call()
        synchronize()
        if repeat:
            times.append(time.perf_counter() - start)
    return times


def error_against(result, expected) -> float:
    """Largest scaled error of an output, or of every gradient the reference has."""
    if isinstance(expected, np.ndarray):
        return scaled_error(result, expected)
    gradients = result if isinstance(result, dict) else vars(result)
    return grad_errors({name: value for name, value in gradients.items()
                        if getattr(expected, name, None) is not None}, expected)


def timed_rows(name: str, peer, passes, repeats: int, bytes_moved=None) -> list[Row]:
    """Rows of one implementation: checked against the reference, then timed pass by pass.
    ``peer`` is a :class:`PeerPasses` or a string saying why it cannot run."""
    if isinstance(peer, str):
        return [Row(name, pass_name, not_run=peer) for pass_name in passes]
    try:
        errors = peer.check()
    except Exception as error:   # a peer that crashes is reported, never fails the benchmark
        return [Row(name, pass_name, not_run=f"failed: {type(error).__name__}: {error}")
                for pass_name in passes]
    rows = []
    for pass_name in passes:
        if pass_name not in peer.calls:
            continue
        error = errors.get(pass_name, errors.get("backward"))
        row = Row(name, pass_name, check_error=error,
                  bytes_moved=None if bytes_moved is None else bytes_moved[pass_name])
        if error is None or not error <= CHECK_TOLERANCE:
            row.not_run = f"check failed: error {error} against the float64 reference"
        else:
            row.times_s = time_pass(peer.calls[pass_name], repeats, peer.synchronize)
        rows.append(row)
    return rows


def refdyn_peer(bench: Bench, backend: str, passes, **backward_options):
    """A refdyn backend as a :class:`PeerPasses` (device arrays for the GPU backends), or why
    it cannot run here."""
    implementation = OPERATORS[bench.operator].implementation(backend)
    problem = gpu_problem(backend) if backend != "vectorized" else None
    problem = problem or implementation.problem()
    if problem:
        return f"not run: {problem}"
    forward, backward = implementation.load()
    backward = partial(backward, **backward_options)
    to_device, to_host, synchronize = device_tools(backend)
    case = bench.case
    arrays = {name: None if value is None else to_device(value)
              for name, value in case.arrays.items()}
    grad_output = to_device(case.grad_output)
    params = {**case.params, **case.backward_params}

    def run_forward():
        return forward(**arrays, **case.params)

    def run_backward():
        return backward(grad_output, **arrays, **params)

    def run_both():
        run_forward()
        return run_backward()

    calls = {"forward": ready(run_forward), "backward": ready(run_backward),
             "forward+backward": ready(run_both)}

    def check():
        return {"forward": error_against(to_host(run_forward()), bench.expected["forward"]),
                "backward": error_against(to_host(run_backward()), bench.expected["backward"])}

    return PeerPasses({name: calls[name] for name in passes}, check, synchronize)


def gpu_problem(backend: str) -> Optional[str]:
    """Why a GPU backend is not timed here (beyond its registry availability), or None."""
    from . import gpu
    if backend == "host":
        return HOST_NOT_TIMED
    if backend in TIMED_GPU_BACKENDS and gpu.cuda_device_count() == 0:
        return "no CUDA device"
    return None


def device_tools(backend: str):
    """(to_device, to_host, synchronize) for a backend's arrays (identity for NumPy)."""
    if backend == "cupy":
        import cupy
        return cupy.asarray, partial(_to_host, cupy.asnumpy), cupy.cuda.Device().synchronize
    if backend == "numba":
        from numba import cuda
        return cuda.to_device, partial(_to_host, lambda a: a if isinstance(a, np.ndarray)
                                       else a.copy_to_host()), cuda.synchronize
    return (lambda array: array), (lambda result: result), (lambda: None)


def _to_host(copy, result):
    """An output array or a gradient record with every array copied to the host."""
    if hasattr(result, "shape"):
        return copy(result)
    return {name: None if value is None else copy(value) for name, value in vars(result).items()}


def bytes_moved(bench: Bench) -> dict[str, int]:
    """The bytes a pass must move at least: every input read once, every result written once."""
    inputs = sum(value.nbytes for value in bench.case.arrays.values() if value is not None)
    itemsize = bench.case.grad_output.itemsize
    output = bench.expected["forward"].size * itemsize
    grads = bench.expected["backward"]
    gradients = sum(value.size * itemsize for value in vars(grads).values() if value is not None)
    backward = inputs + bench.case.grad_output.nbytes + gradients
    return {"forward": inputs + output, "backward": backward,
            "forward+backward": inputs + output + backward}


# ---- sections -----------------------------------------------------------------------------------

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


def describe(config) -> dict:
    return {"operator": type(config).__name__, **asdict(config)}


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


# ---- the machine ---------------------------------------------------------------------------------

def machine(threads: int) -> dict:
    """What the numbers were measured on, and every library's thread setting."""
    info = {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "usable_cores": cpu_threads(), "python": platform.python_version(),
            "numpy": np.__version__, "numpy_blas": numpy_blas(),
            "blas_thread_variables": {name: os.environ[name] for name in
                                      ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "MKL_NUM_THREADS") if name in os.environ},
            "chunk_elements": DEFAULT_CHUNK_ELEMENTS}
    for module in ("onnxruntime", "torch", "torchvision", "cupy", "numba"):
        if importlib.util.find_spec(module) is not None:
            info[module] = getattr(__import__(module), "__version__", "?")
    info["onnxruntime_intra_op_threads"] = threads
    info["torch_threads"] = threads
    from . import gpu
    info["cuda_devices"] = gpu.cuda_device_count()
    info["gpu_peak_bandwidth"] = peak_bandwidth() if info["cuda_devices"] else None
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numpy_blas() -> str:
    """NumPy's BLAS library and version (multi-threaded unless the variables above limit it)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:   # older NumPy: no dict mode
        return "unknown"


def peak_bandwidth() -> Optional[dict]:
    """The device's peak memory bandwidth, 2 * memory clock * bus width / 8 (CuPy's runtime)."""
    try:
        import cupy
        runtime = cupy.cuda.runtime
        properties = runtime.getDeviceProperties(0)
        clock_khz = properties.get("memoryClockRate") or runtime.deviceGetAttribute(36, 0)
        bus_bits = properties.get("memoryBusWidth") or runtime.deviceGetAttribute(37, 0)
        name = properties["name"]
        return {"device": name.decode() if isinstance(name, bytes) else str(name),
                "bytes_per_s": 2 * clock_khz * 1e3 * bus_bits / 8}
    except Exception:   # no CuPy: bandwidth fractions are left out
        return None


# ---- text output -------------------------------------------------------------------------------

def format_rows(rows: list[dict], bandwidth: Optional[dict]) -> list[str]:
    lines = [f"  {'implementation':38s} {'pass':17s} {'median ms':>10s} {'min ms':>9s} "
             f"{'check err':>9s}  notes"]
    for row in rows:
        if not row["times_s"]:
            lines.append(f"  {row['implementation']:38s} {row['pass']:17s} {'-':>10s} {'-':>9s} "
                         f"{'-':>9s}  {row['not_run']}")
            continue
        note = ""
        if row["bytes_moved"] and bandwidth:
            note = (format_rate(row["bytes_moved"] / row["median_s"], bandwidth)
                    + " (inputs read + results written once)")
        lines.append(f"  {row['implementation']:38s} {row['pass']:17s} "
                     f"{1e3 * row['median_s']:10.2f} {1e3 * row['min_s']:9.2f} "
                     f"{row['check_error']:9.1e}  {note}")
    return lines


def format_ratios(found: list[dict]) -> list[str]:
    return [f"  {r['pass']:17s} {r['numerator']} / {r['denominator']}: {r['ratio']:.2f}"
            for r in found]


def format_rate(bytes_per_s: float, bandwidth: Optional[dict]) -> str:
    """An achieved bandwidth in GB/s and, with the device's peak, its fraction of it."""
    peak = f" = {bytes_per_s / bandwidth['bytes_per_s']:.0%} of peak" if bandwidth else ""
    return f"{bytes_per_s / 1e9:.0f} GB/s{peak}"


def format_kernels(rows: list[dict], bandwidth: Optional[dict]) -> list[str]:
    lines = []
    for row in rows:
        rate = row["bytes"] / row["seconds"] if row["seconds"] > 0 else float("inf")
        lines.append(f"  {row['pass']:8s} {row['kernel']:38s} x{row['launches']:<3d} "
                     f"{1e3 * row['seconds']:9.3f} ms {row['bytes'] / 1e6:9.2f} MB "
                     f"{format_rate(rate, bandwidth):>7s}")
    return lines


def format_memory(rows: list[dict]) -> list[str]:
    return [f"  {row['pass']:8s} extra {row['extra_bytes'] / 2**20:7.1f} MiB (results "
            f"{row['result_bytes'] / 2**20:.1f} MiB), bound {row['bound_bytes'] / 2**20:.1f} MiB: "
            f"{'within' if row['within_bound'] else 'EXCEEDED'}" for row in rows]


def format_report(report: dict) -> str:
    m = report["machine"]
    bandwidth = m.get("gpu_peak_bandwidth")
    lines = [f"refdyn bench, {report['repeats']} repeats after a warm-up"
             f"{' (--quick: tiny sizes, not a measurement)' if report['quick'] else ''}",
             f"{m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), {m['platform']}",
             f"NumPy {m['numpy']} ({m['numpy_blas']}), onnxruntime {m.get('onnxruntime', '-')}"
             f" ({m['onnxruntime_intra_op_threads']} intra-op threads), torch "
             f"{m.get('torch', '-')} ({m['torch_threads']} threads), CUDA devices "
             f"{m['cuda_devices']}"]
    if "standard" in report:
        section = report["standard"]
        lines += ["", f"standard case: deform_conv2d {short(section['config'])}"]
        lines += format_rows(section["rows"], bandwidth)
        lines += ["ratios (refdyn time / peer time, medians):"] + format_ratios(section["ratios"])
        lines += ["NumPy peak extra memory (tracemalloc) against the documented bound:"]
        lines += format_memory(section["memory"])
        if section["cupy_kernels"]:
            lines += ["refdyn cupy, each CUDA C kernel of one call (CUDA events; bytes = its "
                      "array arguments, each read or written once; the cuBLAS matrix products "
                      "between the kernels are not listed):"]
            lines += format_kernels(section["cupy_kernels"], bandwidth)
    if "scaling" in report:
        lines += ["", "scaling series (the standard layer at other sizes):"]
        for point in report["scaling"]["points"]:
            lines += [f"{point['series']} = {point['value']}: {short(point['config'])}"]
            lines += format_rows(point["rows"], None) + format_ratios(point["ratios"])
            lines += format_memory(point["memory"])
        lines += ["time growth against work growth (columns N C_in K H_out W_out):"]
        for item in report["scaling"]["growth"]:
            times = ", ".join("-" if t is None else f"{t:.1f}" for t in item["time_growth"])
            work = ", ".join(f"{w:g}" for w in item["work_growth"])
            lines.append(f"  {item['series']} {item['values']}: {item['implementation']} "
                         f"{item['pass']}: time x[{times}], work x[{work}]")
    if "operators" in report:
        lines += ["", "other operators (NumPy against the GPU backends):"]
        for case in report["operators"]["cases"]:
            lines += [f"{case['operator']}: {short(case['config'])}"]
            lines += format_rows(case["rows"], bandwidth) + format_ratios(case["ratios"])
    if "deterministic" in report:
        lines += ["", *bench_deterministic.format_section(report["deterministic"])]
    lines += ["", "goals:"]
    for goal in report["goals"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[goal["met"]]
        ratio = "" if goal["ratio"] is None else f" (ratio {goal['ratio']:.2f})"
        if goal.get("unstable"):
            ratio += (f", UNSTABLE: a median {goal['spread']:.2f}x its fastest repeat; re-run "
                      "before trusting this verdict")
        lines.append(f"  {goal['goal']}: {verdict}{ratio}")
    return "\n".join(lines)


def short(config: dict) -> str:
    skip = {"operator", "seed"}
    return ", ".join(f"{key}={value}" for key, value in config.items() if key not in skip)


# ---- command line ------------------------------------------------------------------------------

def parse_cases(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(CASES)} (comma-separated)")
    return chosen


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", type=parse_cases, default=list(CASES),
                        help=f"comma-separated cases to run (default: {','.join(CASES)})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help=f"timed calls per pass after the warm-up (default {DEFAULT_REPEATS})")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads of the peers (ONNX Runtime intra-op, torch); default: the "
                             "usable cores.  NumPy's BLAS follows OPENBLAS_NUM_THREADS / "
                             "OMP_NUM_THREADS, its other work is single-threaded")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (checks that everything runs; not a measurement)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")


def run(options) -> dict:
    """Run the chosen cases, print the report, write the JSON; returns the report."""
    threads = options.threads or cpu_threads()
    report = {"repeats": options.repeats, "quick": options.quick, "cases": options.case,
              "check_tolerance": CHECK_TOLERANCE, "machine": machine(threads)}
    if "standard" in options.case:
        report["standard"] = run_standard(options.repeats, options.quick, threads)
    if "scaling" in options.case:
        report["scaling"] = run_scaling(options.repeats, options.quick, threads)
    if "operators" in options.case:
        report["operators"] = run_operators(options.repeats, options.quick)
    if "deterministic" in options.case:
        report["deterministic"] = bench_deterministic.run(options.repeats, options.quick,
                                                          standard_config(options.quick))
    report["goals"] = goals(report)
    print(format_report(report))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(report, file, indent=2)
    return report


def command_bench(options) -> int:
    run(options)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m refdyn.bench",
                                     description=__doc__.split("\n\n")[0].replace("``", ""))
    add_arguments(parser)
    return parser


def main(argv=None) -> int:
    return command_bench(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
