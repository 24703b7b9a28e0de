"""How ``refdyn bench`` (:mod:`refdyn.bench`) times one implementation: checked against the float64
reference first (one that disagrees is reported, not timed), then one warm-up and the timed
repeats (:class:`Row`); a refdyn backend as a peer (device arrays for the GPU backends), and the
bytes a pass must move at least.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable, Optional

import numpy as np

from .bench_cases import Bench
from .bench_peers import PeerPasses, grad_errors, ready
from .registry import OPERATORS
from .testing.cases import scaled_error

#: Largest error (max |peer - reference| / max(1, max |reference|)) a float32 implementation
#: may show against the float64 reference before it is reported instead of timed.
CHECK_TOLERANCE = 1e-3
TIMED_GPU_BACKENDS = ("cupy", "numba")
HOST_NOT_TIMED = ("not timed: the CUDA C compiled for the CPU is an emulation (seconds per call), "
                  "not a GPU result; `refdyn check` covers its correctness")


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


# ---- refdyn's backends as peers -------------------------------------------------------------

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
