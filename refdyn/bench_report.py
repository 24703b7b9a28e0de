"""``refdyn bench``'s report (:mod:`refdyn.bench`): what the numbers were measured on (the machine,
every library's thread setting, the GPU's peak bandwidth) and the report as text.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from typing import Optional

import numpy as np

from . import bench_deterministic
from .bench_peers import cpu_threads
from .deform_conv_numpy import DEFAULT_CHUNK_ELEMENTS


# ---- the machine ----------------------------------------------------------------------------

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


# ---- text output ----------------------------------------------------------------------------

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
