"""The GPU report's runner (:mod:`refdyn.gpu_report`): each step in a child process of its own under
a time limit, within the report's time budget, its hang, crash or exception that step's result;
and the Markdown report written step by step (header, one block per step, the summary).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import __version__
from .bench_report import cpu_model
from .gpu_report_probes import refdyn_gpu

PASSED, FAILED, TIMED_OUT, SKIPPED = "PASSED", "FAILED", "TIMED OUT", "SKIPPED"
#: The whole report's time budget in seconds (8 minutes on one GPU).
DEFAULT_TIME_BUDGET = 480.0
#: A step does not start with less of the budget left than this (seconds).
MIN_STEP_SECONDS = 5.0
#: Lines of a step's standard output, and of its error output when it failed, in the report.
OUTPUT_LINES, ERROR_LINES = 200, 40


# ---- steps and the runner -------------------------------------------------------------------

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


# ---- the report file ------------------------------------------------------------------------

def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def header_lines(command: str, time_budget: float, steps: int) -> list[str]:
    """The report's title and where, when and how it was made."""
    return ["# refdyn GPU report", "",
            f"- date: {now()}",
            f"- command: `{command}`",
            f"- machine: {platform.node()}, {platform.platform()}, {cpu_model()}, "
            f"{os.cpu_count()} cores, {refdyn_gpu().cuda_device_count()} CUDA device(s) (libcuda)",
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
