"""``refdyn bench``: refdyn's backends and the peers installed beside them, timed in one process.

    refdyn bench [--case standard,scaling,operators,deterministic] [--repeats 5] [--threads N]
                 [--quick] [--json PATH]
    python -m refdyn.bench ...           (the same)

Cases (``--case``, comma-separated; all by default):

- ``standard``: deform_conv2d, N=8, C_in=C_out=64, 32x32, 3x3, padding 1, one offset group,
  offsets ~ N(0, 2^2) (kept 1e-3 pixel off the integers:
  :func:`refdyn.bench_cases.off_the_kinks`), mask ~ U(0, 1), float32; forward, backward,
  forward+backward of the NumPy reference, the GPU backends present, and the peers
  (:mod:`refdyn.bench_peers`): ONNX Runtime DeformConv, a PyTorch CPU composition,
  torchvision's CUDA kernels.  Ratios are refdyn time / peer time.  Also the peak extra
  memory of the NumPy paths against their documented bound.
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

This module is the command line; the cases are :mod:`refdyn.bench_cases`, the checking and
timing of one implementation :mod:`refdyn.bench_timing`, the sections and goals
:mod:`refdyn.bench_sections`, the machine and the text report :mod:`refdyn.bench_report`.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import bench_deterministic
from .bench_cases import standard_config
from .bench_peers import cpu_threads
from .bench_report import format_report, machine
from .bench_sections import goals, run_operators, run_scaling, run_standard
from .bench_timing import CHECK_TOLERANCE

CASES = ("standard", "scaling", "operators", "deterministic")
DEFAULT_REPEATS = 5


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
