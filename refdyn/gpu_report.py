"""``refdyn check --gpu-report FILE``: the one command to run on a machine with a GPU.

It checks every GPU backend, times the standard deform_conv2d layer against torchvision's CUDA
kernels and writes a Markdown report, step by step, so that a run stopped half-way still leaves
what was done.  Each step runs in a child process of its own under a time limit; a crash, a
hang or an exception is that step's FAILED or TIMED OUT result, with the last lines of its
error output, and the report goes on with the next step:

1. ``environment``: the GPU, driver and CUDA versions as nvidia-smi, torch, CuPy and Numba see
   them, the installed packages, and which backends can run here (and why not);
2. ``refdyn check`` on each GPU backend: ``host`` (the CUDA C compiled for the CPU, the
   control), ``numba``, ``cupy``: every registered operator against the NumPy reference;
3. the deterministic deform_conv2d backward on ``numba`` and ``cupy``, run
   :data:`DETERMINISTIC_RUNS` times on the standard layer: within the tolerance of the float64
   reference and bitwise identical from run to run;
4. ``refdyn bench --case standard``: the standard layer's forward, backward and
   forward+backward (medians) on refdyn's GPU backends and torchvision's CUDA kernels, each
   checked against the float64 reference before it is timed (its JSON is written beside the
   report);
5. the GPU test files of the checkout (``tests/test_*gpu*.py``: the backend-wide
   ``test_gpu_*.py`` and every family's ``test_<stem>_gpu.py``, but this report's own tests)
   under ``pytest -q -x``.

The steps share a time budget (:data:`DEFAULT_TIME_BUDGET`, 8 minutes): each runs under its own
limit or what is left of the budget, whichever is smaller, and a step that finds the budget
spent is skipped.  The test files come last because they are optional and the longest step:
on a GPU, Numba compiles every kernel variant they use (on the order of two minutes of CPU).

A step that cannot run here (no CUDA device, a package missing) is SKIPPED with the reason;
where a CUDA device exists, a device backend (numba, cupy) that cannot run is FAILED instead:
on a GPU machine the GPU checks must not skip.  The exit status is 1 if any step FAILED or
TIMED OUT.

``python -m refdyn.gpu_report environment`` and ``... deterministic BACKEND`` are the child
processes of steps 1 and 3 (:mod:`refdyn.gpu_report_probes`).  This module holds the steps and
the command; :mod:`refdyn.gpu_report_runner` runs them and writes the report.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional

from .bench_timing import gpu_problem
from .gpu_report_probes import DETERMINISTIC_RUNS, backend_label, deterministic_backward, \
    environment, refdyn_gpu
from .gpu_report_runner import DEFAULT_TIME_BUDGET, FAILED, TIMED_OUT, Step, run_report
from .registry import GPU_BACKENDS
from .testing.targets import not_installed

#: Each step's own time limit in seconds (``--step-time-limit`` caps them all).
TIME_LIMITS = {"environment": 60.0, "check host": 120.0, "check numba": 240.0,
               "check cupy": 180.0, "deterministic": 120.0, "bench": 180.0, "pytest": 300.0}
#: The backends whose kernels run on a CUDA device (``host`` is their CPU control).
DEVICE_BACKENDS = ("numba", "cupy")
#: Timed calls per pass of the standard layer after the warm-up (1 with ``--quick``).
BENCH_REPEATS = 7
#: The GPU test files of step 5, a glob under the checkout's tests/ ...
DEFAULT_TESTS = "test_*gpu*.py"
#: ... but for this report's own tests, which run the report.
OWN_TESTS = "test_gpu_report.py"


# ---- the steps of the GPU report ------------------------------------------------------------

def unavailable(backend: str, problem: Optional[str]) -> dict:
    """The ``skip`` or ``failure`` of a step on ``backend`` that cannot run (``problem``): a
    skip without a CUDA device, a failure for a device backend where one exists; {} if it can
    run.  Numba under the simulator on a machine with a device is a failure too."""
    device = refdyn_gpu().cuda_device_count() > 0
    if backend == "numba" and device and refdyn_gpu().numba_uses_simulator():
        problem = (f"{refdyn_gpu().CUDA_SIMULATOR_VARIABLE} is set: unset it so that the Numba kernels "
                   "run on the device")
    if problem is None:
        return {}
    if backend in DEVICE_BACKENDS and device:
        return {"failure": f"a CUDA device is present but the {backend} backend cannot run: "
                           f"{problem}"}
    return {"skip": problem}


def bench_judge(json_path: str) -> Callable[[str], tuple[bool, str]]:
    """The verdict of the timing step from ``refdyn bench``'s JSON: failed when an
    implementation disagreed with the float64 reference or crashed, or, where a CUDA device
    exists, when a device row (refdyn numba or cupy, torchvision CUDA) was not timed; the
    detail gives the ratios to torchvision CUDA and the device rows not timed."""
    def judge(_output: str) -> tuple[bool, str]:
        with open(json_path, encoding="utf-8") as handle:
            standard = json.load(handle)["standard"]
        device_rows = tuple(f"refdyn {backend}" for backend in DEVICE_BACKENDS)
        wrong, untimed = [], {}
        for row in standard["rows"]:
            if row["not_run"].startswith(("check failed", "failed:")):
                wrong.append(f"{row['implementation']} {row['pass']}: {row['not_run']}")
            elif not row["times_s"] and (row["implementation"].startswith(device_rows)
                                         or "CUDA" in row["implementation"]):
                untimed.setdefault(row["implementation"], row["not_run"])
        ratios = [f"{r['numerator']} / torchvision CUDA, {r['pass']}: {r['ratio']:.2f}"
                  for r in standard["ratios"] if r["denominator"] == "torchvision CUDA"]
        named = "; ".join(f"{name} ({reason})" for name, reason in untimed.items())
        missing = [f"not timed: {named}"] if untimed else []
        failed = bool(wrong) or bool(missing and refdyn_gpu().cuda_device_count() > 0)
        return not failed, "; ".join(wrong + ratios + missing)
    return judge


def bench_json_path(report_path: str) -> str:
    """Where the timing step's ``refdyn bench`` JSON goes: beside the report."""
    return str(Path(report_path).with_suffix(".bench.json"))


def pytest_judge(output: str) -> tuple[bool, str]:
    """pytest's counts (its last summary line); the exit status decides."""
    counts = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", output, flags=re.M)
    return True, counts[-1] if counts else "no pytest summary line"


def checkout_test_files(pattern: str) -> list[str]:
    """The files ``tests/<pattern>`` of the checkout (the one of this package, else the
    current folder), as absolute paths (pytest finds the checkout's configuration from them),
    but for :data:`OWN_TESTS`."""
    for root in (Path(__file__).resolve().parent.parent, Path.cwd()):
        files = sorted(path for path in (root / "tests").glob(pattern) if path.name != OWN_TESTS)
        if files:
            return [str(path.resolve()) for path in files]
    return []


def gpu_report_steps(report_path: str, backends=GPU_BACKENDS, operators=(),
                     thorough: bool = False, quick: bool = False, tests: str = DEFAULT_TESTS,
                     step_time_limit: Optional[float] = None) -> list[Step]:
    """The steps of the report (module docstring).  ``operators`` (default: all, with
    ``quick`` deform_conv2d only) and ``thorough`` go to ``refdyn check``; ``quick`` also
    shrinks the timed layer (no measurement, for tests)."""
    python = sys.executable

    def limit(name: str) -> float:
        return min(TIME_LIMITS[name], step_time_limit or TIME_LIMITS[name])

    operators = list(operators) or (["deform_conv2d"] if quick else [])
    quick_flag = ["--quick"] if quick else []
    steps = [Step("environment", (python, "-m", "refdyn.gpu_report", "environment"),
                  limit("environment"))]
    for backend in backends:
        steps.append(Step(
            f"refdyn check on {backend_label(backend)}",
            (python, "-m", "refdyn.cli", "check", "--backend", backend,
             *(argument for name in operators for argument in ("--operator", name)),
             *(["--thorough"] if thorough else [])),
            limit(f"check {backend}"), **unavailable(backend, refdyn_gpu().backend_problem(backend))))
    for backend in (name for name in DEVICE_BACKENDS if name in backends):
        problem = gpu_problem(backend) or refdyn_gpu().backend_problem(backend)
        steps.append(Step(
            f"deterministic deform_conv2d backward on {backend}: {DETERMINISTIC_RUNS} runs "
            "bitwise identical",
            (python, "-m", "refdyn.gpu_report", "deterministic", backend, *quick_flag),
            limit("deterministic"), **unavailable(backend, problem)))
    bench_json = bench_json_path(report_path)
    steps.append(Step(
        "timing: the standard deform_conv2d layer, refdyn's GPU backends against torchvision "
        "CUDA", (python, "-m", "refdyn.bench", "--case", "standard", "--repeats",
                 str(1 if quick else BENCH_REPEATS), "--json", bench_json, *quick_flag),
        limit("bench"), judge=bench_judge(bench_json)))
    files = checkout_test_files(tests)
    absent = not_installed(("pytest", "hypothesis"), "pip install '.[test]'")
    steps.append(Step(
        f"the GPU test files under pytest (tests/{tests})",
        (python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files),
        limit("pytest"), judge=pytest_judge,
        skip=absent or ("" if files else f"no tests/{tests} in this checkout or the current "
                                         "folder (run the report from a checkout)")))
    return steps


def command_gpu_report(args) -> int:
    """``refdyn check --gpu-report FILE``: write the report; 1 if a step failed or timed out."""
    refdyn_gpu().use_numba_simulator_without_device()   # children inherit the choice
    Path(args.gpu_report).parent.mkdir(parents=True, exist_ok=True)
    Path(bench_json_path(args.gpu_report)).unlink(missing_ok=True)   # none of an earlier run
    backends = [backend for backend in GPU_BACKENDS if not args.backend or backend in args.backend]
    steps = gpu_report_steps(args.gpu_report, backends, args.operator or (), args.thorough,
                             args.quick, args.tests, args.step_time_limit)
    print(f"writing the GPU report (Markdown) to {args.gpu_report}: {len(steps)} steps within "
          f"{args.time_budget:.0f} s", flush=True)
    results = run_report(args.gpu_report, steps, "refdyn " + shlex.join(args.argv),
                         args.time_budget)
    return 1 if any(result.status in (FAILED, TIMED_OUT) for result in results) else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``refdyn check`` for the GPU report."""
    parser.add_argument("--gpu-report", metavar="FILE",
                        help="instead of the table: check every GPU backend, time the standard "
                             "layer against torchvision CUDA and run the GPU tests, each step in "
                             "a child process under a time limit, writing a Markdown report to "
                             "FILE; --backend and --operator narrow the checks")
    parser.add_argument("--step-time-limit", type=float, metavar="SECONDS",
                        help="with --gpu-report: no step runs longer than this")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS",
                        default=DEFAULT_TIME_BUDGET,
                        help=f"with --gpu-report: the whole report's time (default "
                             f"{DEFAULT_TIME_BUDGET:.0f}); steps that find it spent are skipped")
    parser.add_argument("--tests", metavar="GLOB", default=DEFAULT_TESTS,
                        help=f"with --gpu-report: the test files under tests/ to run (default "
                             f"{DEFAULT_TESTS})")
    parser.add_argument("--quick", action="store_true",
                        help="with --gpu-report: deform_conv2d only and a tiny timed layer (a "
                             "test of the report, not a measurement)")


def main(argv=None) -> int:
    """The child processes of steps 1 and 3."""
    parser = argparse.ArgumentParser(prog="python -m refdyn.gpu_report",
                                     description=__doc__.split("\n\n")[0].replace("``", ""))
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("environment", help="step 1: the GPU, CUDA, packages and backends")
    deterministic = steps.add_parser("deterministic",
                                     help="step 3: the deterministic backward, run to run")
    deterministic.add_argument("backend", choices=DEVICE_BACKENDS)
    deterministic.add_argument("--quick", action="store_true", help="a tiny layer")
    args = parser.parse_args(argv)
    refdyn_gpu().use_numba_simulator_without_device()
    if args.step == "environment":
        return environment()
    return 1 if deterministic_backward(args.backend, args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
