"""``refdyn bench --case deterministic``: the cost of the deterministic grad_input's per-pixel sort.

``deform_conv2d_backward(..., deterministic=True)`` lists, per (image, offset group, input
pixel), the ids of the contributions that land on the pixel (placed in arbitrary order by
integer atomics), sorts each list by id (``sort_contributions`` in ``gpu/deform_conv.cu``: one
thread per list, heapsort, O(s log s) for a list of s ids), and sums each list in id order.
The sort's worst case is every contribution on one pixel: under the border rule, offsets far
beyond the bottom-right corner clamp every sampling point to (H - 1, W - 1), and all four
corners of every point read that pixel, so one list per image holds all 4 K H_out W_out ids.

Measured on the host build (``refdyn.gpu.host``: the CUDA C compiled for the CPU, each kernel's
threads run one after the other), whose launches ``host.kernel_times()`` times on the CPU
clock: these are CPU numbers of the algorithm, not GPU numbers.  Three tables:

- ``sort``: the sort kernel alone on one list of s ids in reversed and in shuffled order; the
  time per id divided by log2 s stays flat for an O(s log s) sort (it would grow as s / log2 s
  for a quadratic one).
- ``worst``: a layer whose every contribution lands on one pixel, at growing H = W: the sort
  kernel's time in its deterministic backward, and that backward's grad_input kernels and all
  its kernels against the atomic backward's.
- ``standard``: the standard layer (offsets N(0, 2^2)), then the same layer with every
  contribution on one pixel: the deterministic backward's kernels against the atomic one's.

Kernel times only: the NumPy matrix products around the kernels are the same in both paths.
Every time is the fastest of the repeats (after one warm-up): the cost of an algorithm, measured
on CPUs that other work may share, is best estimated by its least disturbed run.  Each
deterministic grad_input is checked against the atomic one before it is timed (the same
terms summed in another order).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import numpy as np

from .testing.cases import scaled_error
from .testing.deform_conv_cases import DeformConvConfig, make_case

#: Lengths of the list the sort kernel is timed on (``quick``: tiny, not a measurement).
SORT_LENGTHS, QUICK_SORT_LENGTHS = (2**10, 2**12, 2**14, 2**16), (2**4, 2**6)
#: H = W of the worst-case layer (1 image, 16 channels, 3x3, padding 1): lists of 36 H W ids.
WORST_SIZES, QUICK_WORST_SIZES = (8, 16, 32, 64), (4, 6)
#: An offset that clamps every sampling point of these layers to the bottom-right pixel.
FAR_OFFSET = 1e4
#: Largest scaled error of the deterministic grad_input against the atomic one (float32 sums in
#: two orders); beyond it the case stops with an error instead of timing a wrong kernel.
CHECK_TOLERANCE = 1e-3
SORT_KERNEL = "deform_conv_sort_contributions"


def host_sort_contributions(sizes: np.ndarray, entries: np.ndarray) -> None:
    """Sorts, in place, each list of ``entries`` (int64) with the host build's sort kernel: list
    l is ``entries[starts[l]:starts[l] + sizes[l]]``, starts the exclusive prefix sum of
    ``sizes`` (int64), as the deterministic backward stores them."""
    from .gpu import deform_conv_launch, host
    geometry = np.ones(len(deform_conv_launch.GEOMETRY_FIELDS), dtype=np.int64)   # one image, one row of
    geometry[deform_conv_launch.GEOMETRY_FIELDS.index("width")] = len(sizes)     # len(sizes) pixels
    starts = np.cumsum(sizes) - sizes
    host.launch(SORT_KERNEL, len(sizes), [geometry, starts, sizes, entries])


def worst_case(config: DeformConvConfig):
    """The case of ``config`` under the border rule with every offset FAR_OFFSET: every
    contribution of an image lands on pixel (H - 1, W - 1)."""
    case = make_case(replace(config, boundary="border"))
    return case.with_arrays(offset=np.full_like(case.arrays["offset"], FAR_OFFSET))


def list_length(config: DeformConvConfig) -> int:
    """Ids in the one list of an image of :func:`worst_case`: 4 K H_out W_out."""
    kh, kw = config.kernel
    out_h, out_w = config.out_size
    return 4 * kh * kw * out_h * out_w


def kernel_seconds(call, repeats: int) -> dict[str, float]:
    """Seconds of each kernel of ``call()`` (summed over its launches) and of all of them
    (``"total"``), each the fastest of ``repeats`` timed calls after one warm-up."""
    from .gpu import host
    call()
    runs = []
    for _ in range(repeats):
        with host.kernel_times() as times:
            call()
        run = {"total": sum(t.seconds for t in times)}
        for t in times:
            run[t.name] = run.get(t.name, 0.0) + t.seconds
        runs.append(run)
    return {name: min(run[name] for run in runs) for name in runs[0]}


def sort_rows(lengths, repeats: int) -> list[dict]:
    """The sort kernel on one list of each length, in reversed and in shuffled order."""
    from .gpu import host
    rng = np.random.default_rng(0)
    rows = []
    for length in lengths:
        ids, sizes = np.arange(length, dtype=np.int64), np.array([length], dtype=np.int64)
        for order, placed in (("reversed", ids[::-1]), ("shuffled", rng.permutation(ids))):
            times = []
            for repeat in range(repeats + 1):
                entries = placed.copy()
                with host.kernel_times() as launches:
                    host_sort_contributions(sizes, entries)
                if not np.array_equal(entries, ids):
                    raise RuntimeError(f"the sort kernel left a {order} list of {length} ids "
                                       "out of order")
                if repeat:
                    times.append(launches[0].seconds)
            rows.append({"order": order, "length": length, "times_s": times,
                         "min_s": min(times), "median_s": statistics.median(times),
                         "ns_per_id_log2": 1e9 * min(times) / (length * math.log2(length))})
    return rows


def backward_kernels(case, repeats: int) -> dict:
    """Kernel seconds of the deterministic and the atomic backward of ``case`` (host build); the
    seconds of each path's grad_input, i.e. of the kernels the other path does not launch
    (count, fill, sort, weigh and gather against the atomic scatter); and the deterministic
    grad_input's scaled error against the atomic one."""
    from .gpu import host

    def backward(deterministic):
        return host.deform_conv2d_backward(case.grad_output, **case.backward_kwargs(),
                                           deterministic=deterministic)

    error = scaled_error(backward(True).grad_input, backward(False).grad_input)
    if not error <= CHECK_TOLERANCE:
        raise RuntimeError(f"deterministic grad_input off the atomic one by {error}")
    deterministic = kernel_seconds(lambda: backward(True), repeats)
    atomic = kernel_seconds(lambda: backward(False), repeats)

    def seconds_not_in(times, other):
        return sum(seconds for name, seconds in times.items()
                   if name != "total" and name not in other)

    return {"check_error": error, "deterministic": deterministic, "atomic": atomic,
            "grad_input_s": {"deterministic": seconds_not_in(deterministic, atomic),
                             "atomic": seconds_not_in(atomic, deterministic)}}


def worst_rows(sizes, repeats: int) -> list[dict]:
    """The worst-case layer (every contribution on one pixel) at each H = W."""
    rows = []
    for size in sizes:
        config = DeformConvConfig(in_channels=16, out_channels=16, height=size, width=size,
                                  dtype="float32")
        rows.append({"size": size, "list_length": list_length(config),
                     **backward_kernels(worst_case(config), repeats)})
    return rows


def run(repeats: int, quick: bool, standard: DeformConvConfig) -> dict:
    """The three tables (``standard``: the bench's standard layer), or why they cannot run."""
    from .gpu import backend_problem
    problem = backend_problem("host")
    if problem:
        return {"not_run": problem}
    return {"sort": sort_rows(QUICK_SORT_LENGTHS if quick else SORT_LENGTHS, repeats),
            "worst": worst_rows(QUICK_WORST_SIZES if quick else WORST_SIZES, repeats),
            "standard": [{"offsets": f"{standard.offset_kind}, scale {standard.offset_scale:g}",
                          "list_length": None,
                          **backward_kernels(make_case(standard), repeats)},
                         {"offsets": "every contribution on one pixel",
                          "list_length": list_length(standard),
                          **backward_kernels(worst_case(standard), repeats)}]}


def format_section(section: dict) -> list[str]:
    """The report's lines for :func:`run`'s result."""
    lines = ["deterministic grad_input, host build (the CUDA C on the CPU, threads one after "
             "the other; CPU numbers, not GPU numbers):"]
    if "not_run" in section:
        return lines + [f"  not run: {section['not_run']}"]
    lines += ["sort kernel on one list of s ids (ms, fastest / median of the repeats; ns per id "
              "per log2 s, of the fastest):"]
    lines += [f"  {row['order']:9s} s={row['length']:<7d} {1e3 * row['min_s']:10.3f} / "
              f"{1e3 * row['median_s']:10.3f} ms {row['ns_per_id_log2']:8.2f}"
              for row in section["sort"]]
    lines += ["every contribution on one pixel (1 image, 16 channels, 3x3, border rule), ms, "
              "fastest of the repeats: the sort kernel; the grad_input kernels and all kernels, "
              "deterministic / atomic:"]
    lines += [f"  H=W={row['size']:<4d} list of {row['list_length']:7d} ids: sort "
              f"{1e3 * row['deterministic'][SORT_KERNEL]:9.3f}; {format_paths(row)}"
              for row in section["worst"]]
    lines += ["the standard layer, ms, fastest of the repeats: the grad_input kernels and all "
              "kernels, deterministic / atomic; each kernel of the deterministic backward:"]
    for row in section["standard"]:
        lines.append(f"  offsets {row['offsets']}: {format_paths(row)}")
        lines += [f"    {name:42s} {1e3 * seconds:10.3f}"
                  for name, seconds in row["deterministic"].items() if name != "total"]
    return lines


def format_paths(row: dict) -> str:
    """Deterministic / atomic ms of a row's grad_input kernels and of all its kernels."""
    own, total = row["grad_input_s"], {path: row[path]["total"] for path in row["grad_input_s"]}
    return (f"grad_input {1e3 * own['deterministic']:9.3f} / {1e3 * own['atomic']:8.3f}, "
            f"all {1e3 * total['deterministic']:9.3f} / {1e3 * total['atomic']:8.3f}")
