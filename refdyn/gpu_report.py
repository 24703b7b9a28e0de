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
5. the GPU test files of the checkout (``tests/test_gpu_*.py``, but this report's own tests)
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
processes of steps 1 and 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import __version__
from .bench import CHECK_TOLERANCE, Bench, cpu_model, describe, device_tools, gpu_problem, \
    refdyn_peer, short, standard_config
from .registry import GPU_BACKENDS
from .testing.targets import not_installed

PASSED, FAILED, TIMED_OUT, SKIPPED = "PASSED", "FAILED", "TIMED OUT", "SKIPPED"


def _gpu():
    """:mod:`refdyn.gpu`, imported when a step needs it: ``refdyn.cli`` imports this module, and
    run from a source checkout (``python -m refdyn.cli``, as ``refdyn validate`` starts its
    workers) ``refdyn.gpu`` exists only once refdyn is installed."""
    from . import gpu
    return gpu
#: The whole report's time budget in seconds (8 minutes on one GPU).
DEFAULT_TIME_BUDGET = 480.0
#: A step does not start with less of the budget left than this (seconds).
MIN_STEP_SECONDS = 5.0
#: Each step's own time limit in seconds (``--step-time-limit`` caps them all).
TIME_LIMITS = {"environment": 60.0, "check host": 120.0, "check numba": 240.0,
               "check cupy": 180.0, "deterministic": 120.0, "bench": 180.0, "pytest": 300.0}
#: The backends whose kernels run on a CUDA device (``host`` is their CPU control).
DEVICE_BACKENDS = ("numba", "cupy")
#: Calls of the deterministic backward compared bit for bit.
DETERMINISTIC_RUNS = 3
#: Timed calls per pass of the standard layer after the warm-up (1 with ``--quick``).
BENCH_REPEATS = 7
#: The GPU test files of step 5, a glob under the checkout's tests/ ...
DEFAULT_TESTS = "test_gpu_*.py"
#: ... but for this report's own tests, which run the report.
OWN_TESTS = "test_gpu_report.py"
#: Lines of a step's standard output, and of its error output when it failed, in the report.
OUTPUT_LINES, ERROR_LINES = 200, 40
#: Distributions whose versions the environment step lists (those installed).
PACKAGES = ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "cupy", "torch",
            "torchvision", "onnxruntime", "pytest", "hypothesis")


def backend_label(backend: str) -> str:
    """The backend's name, marked when Numba kernels run under the CUDA simulator."""
    simulated = backend == "numba" and _gpu().numba_uses_simulator()
    return f"{backend} (simulator)" if simulated else backend


# ---- steps and the runner ----------------------------------------------------------------------

def last_line(output: str) -> tuple[bool, str]:
    """A step's verdict from its output: its last non-empty line, as the detail."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return True, lines[-1] if lines else ""


@dataclass
class Step:
    """One step: ``command`` run in a child process under ``time_limit`` seconds, or not run
    when ``skip`` (SKIPPED) or ``failure`` (FAILED) says why.  ``judge`` turns the finished
    child's standard output into (ok, detail); an exit status other than 0 fails the step
    whatever it says.  The child runs in an empty folder of its own: ``python -m`` puts the
    current folder first on the import path, and in a checkout that would import the source
    folder ``refdyn/``, which has no ``refdyn.gpu`` (gpu/ becomes refdyn.gpu when installed)."""

    title: str
    command: tuple[str, ...] = ()
    time_limit: float = 60.0
    skip: str = ""
    failure: str = ""
    judge: Callable[[str], tuple[bool, str]] = last_line


@dataclass
class StepResult:
    """What became of a step: its status, seconds, a one-line detail, and the tails of the
    child's standard output and (FAILED or TIMED OUT) error output."""

    title: str
    status: str
    seconds: float = 0.0
    detail: str = ""
    output: str = ""
    errors: str = ""


def tail(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``, saying how many were left out."""
    found = text.rstrip().splitlines()
    if len(found) <= lines:
        return "\n".join(found)
    return "\n".join([f"[... {len(found) - lines} earlier lines left out]"] + found[-lines:])


def run_step(step: Step, time_limit: float) -> StepResult:
    """Run ``step`` in a child process (a session of its own, so that everything it starts is
    killed with it) for at most ``time_limit`` seconds."""
    if step.failure:
        return StepResult(step.title, FAILED, detail=step.failure)
    if step.skip:
        return StepResult(step.title, SKIPPED, detail=step.skip)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}   # output up to a kill is kept
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.TemporaryDirectory(prefix="refdyn-gpu-report-") as empty:
        try:
            child = subprocess.Popen(step.command, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, cwd=empty, env=environment,
                                     start_new_session=True)
        except OSError as error:
            return StepResult(step.title, FAILED, detail=f"could not start: {error}")
        try:
            child.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            pass
        finally:                       # also when the report itself is interrupted
            timed_out = child.poll() is None
            if timed_out:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        seconds = time.monotonic() - start
        output, errors = (read_back(handle) for handle in (out, err))
    result = StepResult(step.title, PASSED, seconds, output=tail(output, OUTPUT_LINES))
    if timed_out:
        result.status = TIMED_OUT
        result.detail = f"killed at its time limit of {time_limit:.0f} s"
    else:
        try:
            ok, detail = step.judge(output)
        except Exception as error:     # a judge that cannot read the results fails the step
            ok, detail = False, (f"could not read the step's results: "
                                 f"{type(error).__name__}: {error}")
        if child.returncode != 0 or not ok:
            result.status = FAILED
            reasons = [exit_reason(child.returncode), *raised(errors)] if child.returncode else []
            detail = "; ".join(reasons + ([detail] if detail else []))
        result.detail = detail
    if result.status != PASSED:
        result.errors = tail(errors, ERROR_LINES)
    return result


def read_back(handle) -> str:
    """The text a child wrote to the temporary file ``handle``."""
    handle.seek(0)
    return handle.read().decode("utf-8", errors="replace")


def raised(errors: str) -> list[str]:
    """The last exception line of a Python traceback in ``errors`` ("RuntimeError: ..."), if
    any."""
    found = re.findall(r"^[A-Za-z_][\w.]*(?:Error|Exception)\b.*$", errors, flags=re.M)
    return found[-1:]


def exit_reason(returncode: int) -> str:
    """'exit status N', or the signal that ended the process."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


# ---- the report file ---------------------------------------------------------------------------

def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def header_lines(command: str, time_budget: float, steps: int) -> list[str]:
    """The report's title and where, when and how it was made."""
    return ["# refdyn GPU report", "",
            f"- date: {now()}",
            f"- command: `{command}`",
            f"- machine: {platform.node()}, {platform.platform()}, {cpu_model()}, "
            f"{os.cpu_count()} cores, {_gpu().cuda_device_count()} CUDA device(s) (libcuda)",
            f"- refdyn {__version__} ({Path(__file__).resolve().parent}), Python "
            f"{platform.python_version()} ({sys.executable})",
            f"- {steps} steps, each in a child process under its own time limit, within a "
            f"budget of {time_budget:.0f} s; each ends with a line `**Result: PASSED**`, "
            f"`FAILED`, `TIMED OUT` or `SKIPPED`; the summary is at the end", ""]


def result_lines(result: StepResult) -> list[str]:
    """A finished step's block: its output, error output and result line."""
    lines = []
    if result.output:
        lines += ["```text", result.output, "```", ""]
    if result.errors:
        lines += ["last lines of its error output:", "", "```text", result.errors, "```", ""]
    seconds = f" after {result.seconds:.1f} s" if result.seconds else ""
    detail = f": {result.detail}" if result.detail else ""
    return lines + [f"**Result: {result.status}**{seconds}{detail}", ""]


def summary_lines(results: list[StepResult], seconds: float) -> list[str]:
    """The summary table and the final line."""
    lines = ["## Summary", "", "| # | step | result | seconds | detail |",
             "| --- | --- | --- | --- | --- |"]
    for number, result in enumerate(results, 1):
        detail = result.detail.replace("|", "/").replace("\n", " ")
        lines.append(f"| {number} | {result.title} | {result.status} | {result.seconds:.1f} "
                     f"| {detail} |")
    counts = {status: sum(1 for result in results if result.status == status)
              for status in (PASSED, FAILED, TIMED_OUT, SKIPPED)}
    return lines + ["", f"GPU REPORT: {counts[PASSED]} steps passed, {counts[FAILED]} failed, "
                        f"{counts[TIMED_OUT]} timed out, {counts[SKIPPED]} skipped "
                        f"({len(results)} steps in {seconds:.0f} s)"]


def run_report(path: str, steps: list[Step], command: str,
               time_budget: float = DEFAULT_TIME_BUDGET) -> list[StepResult]:
    """Run ``steps`` in order within ``time_budget`` seconds, writing the report to ``path`` as
    it goes (flushed after every block) and a progress line per step to standard output."""
    started = time.monotonic()
    results = []
    with open(path, "w", encoding="utf-8") as report:
        def write(lines):
            report.write("\n".join(lines) + "\n")
            report.flush()

        write(header_lines(command, time_budget, len(steps)))
        for number, step in enumerate(steps, 1):
            left = time_budget - (time.monotonic() - started)
            limit = min(step.time_limit, left)
            block = [f"## {number}. {step.title}", ""]
            if step.command and not (step.skip or step.failure) and left >= MIN_STEP_SECONDS:
                block += [f"`{shlex.join(step.command)}`", "",
                          f"started {now()}, time limit {limit:.0f} s"
                          + (" (what is left of the budget)" if limit < step.time_limit else ""),
                          ""]
            write(block)
            if left < MIN_STEP_SECONDS and not (step.skip or step.failure):
                result = StepResult(step.title, SKIPPED, detail=f"the report's time budget of "
                                    f"{time_budget:.0f} s is spent")
            else:
                result = run_step(step, limit)
                if result.status == TIMED_OUT and limit < step.time_limit:
                    result.detail += f" (what was left of the report's {time_budget:.0f} s)"
            write(result_lines(result))
            results.append(result)
            print(f"[{number}/{len(steps)}] {result.status}: {step.title} "
                  f"({result.seconds:.1f} s) {result.detail}", flush=True)
        summary = summary_lines(results, time.monotonic() - started)
        write(summary)
    print(summary[-1], flush=True)
    return results


# ---- the steps of the GPU report ----------------------------------------------------------------

def unavailable(backend: str, problem: Optional[str]) -> dict:
    """The ``skip`` or ``failure`` of a step on ``backend`` that cannot run (``problem``): a
    skip without a CUDA device, a failure for a device backend where one exists; {} if it can
    run.  Numba under the simulator on a machine with a device is a failure too."""
    device = _gpu().cuda_device_count() > 0
    if backend == "numba" and device and _gpu().numba_uses_simulator():
        problem = (f"{_gpu().CUDA_SIMULATOR_VARIABLE} is set: unset it so that the Numba kernels "
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
        failed = bool(wrong) or bool(missing and _gpu().cuda_device_count() > 0)
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
            limit(f"check {backend}"), **unavailable(backend, _gpu().backend_problem(backend))))
    for backend in (name for name in DEVICE_BACKENDS if name in backends):
        problem = gpu_problem(backend) or _gpu().backend_problem(backend)
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
    _gpu().use_numba_simulator_without_device()   # children inherit the choice
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


# ---- the child processes of the environment and determinism steps -------------------------------

def cuda_version(number: int) -> str:
    """CUDA's integer version (12040) as text (12.4)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def nvidia_smi() -> Iterator[str]:
    if shutil.which("nvidia-smi") is None:
        yield "nvidia-smi: not found"
        return
    done = subprocess.run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,"
                           "compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    for line in (done.stdout.strip() or done.stderr.strip()).splitlines():
        yield f"nvidia-smi: {line}"


def torch_cuda() -> Iterator[str]:
    if importlib.util.find_spec("torch") is None:
        yield "torch: not installed"
        return
    import torch
    yield (f"torch {torch.__version__}: built for CUDA {torch.version.cuda}, cuDNN "
           f"{torch.backends.cudnn.version()}, CUDA available: {torch.cuda.is_available()}")
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        yield (f"torch device {index}: {properties.name}, compute capability "
               f"{properties.major}.{properties.minor}, {properties.total_memory / 2**30:.1f} GiB")


def cupy_cuda() -> Iterator[str]:
    if importlib.util.find_spec("cupy") is None:
        yield "cupy: not installed"
        return
    if _gpu().cuda_device_count() == 0:
        yield "cupy: installed; no CUDA device to query"
        return
    import cupy
    runtime = cupy.cuda.runtime
    nvrtc = ".".join(str(part) for part in cupy.cuda.nvrtc.getVersion())
    yield (f"cupy {cupy.__version__}: CUDA runtime {cuda_version(runtime.runtimeGetVersion())}, "
           f"driver {cuda_version(runtime.driverGetVersion())}, NVRTC {nvrtc}")
    for index in range(runtime.getDeviceCount()):
        properties = runtime.getDeviceProperties(index)
        name = properties["name"]
        yield (f"cupy device {index}: {name.decode() if isinstance(name, bytes) else name}, "
               f"compute capability {properties['major']}.{properties['minor']}, "
               f"{properties['totalGlobalMem'] / 2**30:.1f} GiB")


def numba_cuda() -> Iterator[str]:
    if importlib.util.find_spec("numba") is None or importlib.util.find_spec("numba.cuda") is None:
        yield "numba-cuda: not installed"
        return
    if _gpu().numba_uses_simulator():
        yield (f"numba-cuda: the CUDA simulator ({_gpu().CUDA_SIMULATOR_VARIABLE}=1): kernels run "
               "on the CPU")
        return
    if _gpu().cuda_device_count() == 0:
        yield "numba-cuda: no CUDA device"
        return
    from numba import cuda
    from numba.cuda.cudadrv import driver, runtime
    device = cuda.get_current_device()
    name = device.name.decode() if isinstance(device.name, bytes) else device.name
    capability = ".".join(str(part) for part in device.compute_capability)
    yield (f"numba-cuda: device {device.id}: {name}, compute capability {capability}, driver "
           f"CUDA {'.'.join(map(str, driver.get_version()))}, toolkit (NVRTC) "
           f"{'.'.join(map(str, runtime.get_version()))}")


def environment() -> int:
    """Step 1: print what this machine has, line by line (a probe that raises is one line)."""
    print(f"python {platform.python_version()} ({sys.executable}), {platform.platform()}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"CUDA devices (libcuda): {_gpu().cuda_device_count()}")
    print(f"{_gpu().CUDA_SIMULATOR_VARIABLE}={os.environ.get(_gpu().CUDA_SIMULATOR_VARIABLE, '')}")
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    print(f"installed: refdyn {__version__}, {', '.join(versions)}", flush=True)
    for probe in (nvidia_smi, torch_cuda, cupy_cuda, numba_cuda):
        try:
            for line in probe():
                print(line, flush=True)
        except Exception as error:   # one probe's failure is reported, the others still run
            print(f"{probe.__name__}: {type(error).__name__}: {error}", flush=True)
    problems = {backend: _gpu().backend_problem(backend) for backend in GPU_BACKENDS}
    for backend, problem in problems.items():
        print(f"backend {backend_label(backend)}: "
              f"{'can run here' if problem is None else 'cannot run here: ' + problem}")
    able = [backend_label(backend) for backend, problem in problems.items() if problem is None]
    print(f"backends that can run here: {', '.join(able) or 'none'}")
    return 0


def deterministic_backward(backend: str, quick: bool, runs: int = DETERMINISTIC_RUNS) -> list[str]:
    """Step 3: the deterministic deform_conv2d backward on ``backend`` at the standard layer
    (tiny with ``quick``), through refdyn bench's timing path (device arrays): checked against
    the float64 reference, then called ``runs`` times; returns the failures (none: every
    gradient bitwise identical in every run)."""
    bench = Bench("deform_conv2d", standard_config(quick))
    peer = refdyn_peer(bench, backend, ("backward",), deterministic=True)
    if isinstance(peer, str):
        return [peer]
    print(f"deform_conv2d_backward(deterministic=True) on {backend_label(backend)}: "
          f"{short(describe(bench.config))}", flush=True)
    error = peer.check()["backward"]
    failures = [] if error <= CHECK_TOLERANCE else [
        f"error {error:.2e} against the float64 reference exceeds {CHECK_TOLERANCE:g}"]
    to_host = device_tools(backend)[1]
    results = [to_host(peer.calls["backward"]()()) for _ in range(runs)]
    for name, first in results[0].items():
        if first is None:
            continue
        for number, result in enumerate(results[1:], 2):
            if first.tobytes() != result[name].tobytes():
                difference = abs(result[name].astype(float) - first).max()
                failures.append(f"{name} of run {number} differs from run 1 (max |difference| "
                                f"{difference:.3g})")
    print(f"error against the float64 reference {error:.2e} (tolerance {CHECK_TOLERANCE:g})")
    print("; ".join(failures) if failures else
          f"bitwise identical in {runs} runs: {', '.join(results[0])}")
    return failures


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
    _gpu().use_numba_simulator_without_device()
    if args.step == "environment":
        return environment()
    return 1 if deterministic_backward(args.backend, args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
