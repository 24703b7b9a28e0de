"""``refdyn validate TARGET``: a conformance report of another implementation against refdyn.

For every suite of the target (:mod:`refdyn.testing.targets`) and each of its configuration
classes, :func:`refdyn.testing.conformance.run_conformance` draws configurations, runs the
target and refdyn, and keeps the largest errors and Hypothesis's minimal counterexample.  An
input the framework rejects (raises on) is counted as rejected, not compared; elements within
rounding of a rule jump are counted apart.  Known convention differences and documented defects
are measured by their probes and reported in their own section; only the classes decide the
verdict.

``refdyn validate all`` (:func:`validate_all`) runs every target in a worker process of its own
with a time limit, so a framework that crashes or hangs is reported as such, with the
configuration it was running, and the other targets still run; :func:`format_matrix` writes
one matrix of operator x framework x class.  Needs ``hypothesis`` (the ``validate`` extra).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
from hypothesis.errors import Unsatisfiable

from .testing.conformance import PROGRESS_FILE_VARIABLE, run_conformance
from .testing.targets import DEFAULT_EXAMPLES, DEFAULT_TIME_LIMIT, TARGETS, Target

#: Where a ``refdyn validate all`` worker keeps the classes it finished (:func:`validate`).
JOURNAL_FILE_VARIABLE = "REFDYN_VALIDATE_JOURNAL"


@dataclass
class ClassResult:
    """One operator, direction and configuration class of a target."""

    operator: str
    direction: str
    config_class: str
    examples: int
    max_abs_error: float
    max_rel_error: float
    counterexample: Optional[str] = None
    near_jumps: int = 0
    rejected: int = 0
    rejection: Optional[str] = None
    crashed: bool = False

    @property
    def verdict(self) -> str:
        if self.crashed:
            return "CRASHED OR HUNG"
        if self.counterexample is not None:
            return "DISAGREES"
        if self.rejected and self.rejected == self.examples:
            return "rejected"
        return f"agrees ({self.rejected} rejected)" if self.rejected else "agrees"


@dataclass
class KnownResult:
    """A known difference as measured by its probe, and for a documented defect the minimal
    counterexample Hypothesis shrank it to (None where it has no ``reproduce`` knobs)."""

    name: str
    source: str
    measured: str
    reproducer: Optional[str] = None


@dataclass
class Report:
    target: str
    description: str
    not_installed: Optional[str] = None
    classes: list[ClassResult] = field(default_factory=list)
    known_differences: list[KnownResult] = field(default_factory=list)
    failure: Optional[str] = None
    versions: dict = field(default_factory=dict)

    @property
    def disagreements(self) -> list[ClassResult]:
        return [result for result in self.classes if result.counterexample is not None]

    @property
    def failed(self) -> bool:
        """A real disagreement, or the framework crashed or hung."""
        return bool(self.disagreements) or self.failure is not None

    def to_json(self) -> dict:
        data = asdict(self)
        for entry, result in zip(data["classes"], self.classes):
            entry["verdict"] = result.verdict
        data["status"] = ("not installed" if self.not_installed else
                          "crashed or hung" if self.failure else
                          "disagreements" if self.disagreements else "agrees")
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Report":
        fields = {key: value for key, value in data.items() if key != "status"}
        fields["classes"] = [ClassResult(**{k: v for k, v in entry.items() if k != "verdict"})
                             for entry in data["classes"]]
        fields["known_differences"] = [KnownResult(**entry) for entry in data["known_differences"]]
        return cls(**fields)


def _journal(path: Optional[str]) -> list[ClassResult]:
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [ClassResult(**json.loads(line)) for line in handle if line.strip()]


def validate(target: Target, max_examples: int = DEFAULT_EXAMPLES,
             journal: Optional[str] = None) -> Report:
    """Run every suite and known-difference probe of ``target`` (derandomized).

    ``journal``: a file of finished classes, one JSON line each; the classes it already holds
    are taken from it, not run again, and each class run is appended (``refdyn validate all``
    restarts a worker after the class a framework crashed or hung in)."""
    report = Report(target.name, target.description)
    problem = target.problem()
    if problem:
        report.not_installed = problem
        return report
    report.versions = target.versions()
    known = target.known_differences()
    exclusions = [difference.excludes for difference in known if difference.excludes]
    done = _journal(journal)
    for suite in target.suites():
        candidate = None

        def skip(config, operator=suite.operator):
            return any(excludes(operator, config) for excludes in exclusions)

        for config_class in suite.classes:
            if len(report.classes) < len(done):
                report.classes.append(done[len(report.classes)])
                continue
            candidate = candidate or suite.candidate()
            result = run_conformance(candidate, suite.operator, suite.direction,
                                     max_examples=max_examples, derandomize=True,
                                     skip=skip if exclusions else None, rejections_allowed=True,
                                     **config_class.knobs)
            report.classes.append(ClassResult(
                suite.operator, suite.direction, config_class.name, result.examples,
                result.max_abs_error, result.max_rel_error, result.counterexample,
                result.near_jumps, result.rejected, result.rejection))
            if journal:
                with open(journal, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(asdict(report.classes[-1])) + "\n")
    for difference in known:
        try:
            with np.errstate(all="ignore"):
                measured = difference.probe()
        except Exception as error:  # a broken probe is reported, it is not a disagreement
            measured = (f"probe failed: {type(error).__name__}: {error}\n"
                        f"{traceback.format_exc()}")
        report.known_differences.append(KnownResult(
            difference.name, difference.source, measured,
            _shrunk_reproducer(target, difference, max_examples)))
    return report


def _shrunk_reproducer(target: Target, difference, max_examples: int) -> Optional[str]:
    """The minimal configuration of a documented defect: the suites of its operator on the
    configurations it excludes, drawn with its ``reproduce`` knobs; the first counterexample
    Hypothesis shrinks."""
    if difference.reproduce is None or difference.excludes is None:
        return None
    operator_name, knobs = difference.reproduce
    for suite in (suite for suite in target.suites() if suite.operator == operator_name):
        try:
            result = run_conformance(
                suite.candidate(), suite.operator, suite.direction, max_examples=max_examples,
                derandomize=True, rejections_allowed=True,
                skip=lambda config: not difference.excludes(operator_name, config), **knobs)
        except Unsatisfiable:
            continue
        if result.counterexample is not None:
            return result.counterexample
    return "no counterexample drawn"


def _row(result: ClassResult) -> tuple[str, ...]:
    return (result.operator, result.direction, result.config_class, str(result.examples),
            str(result.near_jumps), f"{result.max_abs_error:.2e}", f"{result.max_rel_error:.2e}",
            result.verdict)


def _rows(report: Report) -> list[tuple[str, ...]]:
    return [_row(result) for result in report.classes]


HEADER = ("operator", "direction", "configuration class", "examples", "near jumps",
          "max abs err", "max rel err", "verdict")
REL_NOTE = ("max rel err is max |target - refdyn| / max |refdyn| of the compared array; "
            "tolerances: float64 1e-10, float32 2e-4 relative (refdyn.testing.cases.TOLERANCES); "
            "near jumps: elements that differ only because a sample lies within rounding of a "
            "rule jump (they match refdyn with the samples moved by a few roundings), not "
            "counted in the errors; rejected: inputs the framework raised on, not compared")


def format_text(report: Report) -> str:
    """The terminal report: table, counterexamples, known differences, summary."""
    lines = [f"refdyn validate {report.target}: {report.description}", ""]
    if report.not_installed:
        return "\n".join(lines + [f"{report.target} is {report.not_installed}",
                                  "not run (this is not a failure)"])
    table = [HEADER, *_rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in table]
    text.insert(1, "  ".join("-" * width for width in widths))
    lines += text + ["", REL_NOTE]
    for result in report.disagreements:
        lines += ["", f"DISAGREES: {result.operator} {result.direction}, {result.config_class}",
                  *("  " + line for line in result.counterexample.splitlines())]
    for result in report.classes:
        if result.rejection:
            lines += ["", f"rejected: {result.operator} {result.direction}, "
                          f"{result.config_class}: {result.rejected} inputs, the first:",
                      *("  " + line for line in result.rejection.splitlines())]
    lines += ["", "Known convention differences (documented; not counted as disagreements):"]
    for known in report.known_differences:
        lines += [f"- {known.name}", f"    source: {known.source}",
                  f"    measured: {known.measured}"]
        if known.reproducer:
            lines += ["    minimal reproducer (shrunk by Hypothesis):",
                      *("      " + line for line in known.reproducer.splitlines())]
    if not report.known_differences:
        lines.append("- none for this target")
    count = len(report.disagreements)
    lines += ["", f"{'FAILED' if count else 'agrees'}: {len(report.classes)} configuration "
                  f"classes, {count} with real disagreements"]
    return "\n".join(lines)


def format_markdown(report: Report) -> str:
    lines = [f"# refdyn validate {report.target}", "", report.description, ""]
    if report.not_installed:
        return "\n".join(lines + [f"Not run: {report.target} is {report.not_installed}", ""])
    lines += ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(report)]
    lines += ["", REL_NOTE, ""]
    if report.disagreements:
        lines += ["## Disagreements (minimal counterexamples)", ""]
        for result in report.disagreements:
            lines += [f"### {result.operator} {result.direction}, {result.config_class}", "",
                      "```", result.counterexample, "```", ""]
    lines += ["## Known convention differences", ""]
    lines += [f"- **{known.name}** ({known.source}): {known.measured}"
              for known in report.known_differences] or ["- none for this target"]
    return "\n".join(lines) + "\n"


def write_reports(report: Report, json_path: Optional[str], markdown_path: Optional[str]) -> None:
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report.to_json(), handle, indent=2)
    if markdown_path:
        with open(markdown_path, "w", encoding="utf-8") as handle:
            handle.write(format_markdown(report))


# ---- refdyn validate all ----


#: The memory a ``refdyn validate all`` worker may take (RLIMIT_DATA): a framework that
#: allocates without bound fails there instead of exhausting the machine.
WORKER_MEMORY = 6 << 30


def limit_memory() -> None:
    """Cap this process's data segment at :data:`WORKER_MEMORY` (a ``preexec_fn``)."""
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (WORKER_MEMORY, WORKER_MEMORY))


def _run_worker(command: list[str], environment: dict, progress: str, time_limit: float,
                output: str) -> Optional[str]:
    """Run a worker until it writes its report ``output`` and exits (None), or why it did not:
    hung, or its exit status and last output.  It has hung when ``progress`` (rewritten before
    every framework call) is ``time_limit`` seconds old."""
    with tempfile.TemporaryFile("w+") as log:
        worker = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                                  stderr=log, preexec_fn=limit_memory)
        started = time.monotonic()
        while worker.poll() is None:
            time.sleep(0.2)
            last = os.path.getmtime(progress) if os.path.exists(progress) else None
            idle = time.time() - last if last is not None else time.monotonic() - started
            if idle > time_limit:
                worker.kill()
                worker.wait()
                return f"hung: no answer for {time_limit:g} s (killed)"
        if os.path.exists(output):
            return None
        log.seek(0)
        tail = log.read().strip()[-500:]
        return f"crashed (exit status {worker.returncode}): ...{tail}"


def _worker_report(name: str, max_examples: int, time_limit: float) -> Report:
    """``refdyn validate NAME`` in worker processes: when one crashes or hangs in a class, the
    class is reported with the configuration it was running and a new worker goes on from the
    next class."""
    target = TARGETS[name]
    classes = [(suite.operator, suite.direction, config_class.name)
               for suite in target.suites() for config_class in suite.classes]
    with tempfile.TemporaryDirectory() as folder:
        output, progress, journal = (os.path.join(folder, leaf) for leaf in
                                     ("report.json", "progress", "journal"))
        command = [sys.executable, "-m", "refdyn.cli", "validate", name, "--max-examples",
                   str(max_examples), "--json", output]
        environment = {**os.environ, PROGRESS_FILE_VARIABLE: progress,
                       JOURNAL_FILE_VARIABLE: journal}
        while True:
            if os.path.exists(progress):
                os.remove(progress)
            problem = _run_worker(command, environment, progress, time_limit, output)
            if problem is None:
                with open(output, encoding="utf-8") as handle:
                    return Report.from_json(json.load(handle))
            last = "(before its first configuration)"
            if os.path.exists(progress):
                with open(progress, encoding="utf-8") as handle:
                    last = handle.read()
            failure = f"{problem}\n  while running: {last}"
            done = len(_journal(journal))
            if done >= len(classes):      # a probe of the known differences died
                report = Report(name, target.description, classes=_journal(journal),
                                failure=failure, versions=target.versions())
                return report
            operator, direction, class_name = classes[done]
            with open(journal, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(ClassResult(
                    operator, direction, class_name, 0, 0.0, 0.0,
                    f"the framework {failure}", crashed=True))) + "\n")


def validate_all(max_examples: int = DEFAULT_EXAMPLES,
                 time_limit: float = DEFAULT_TIME_LIMIT) -> list[Report]:
    """Every target of :data:`~refdyn.testing.targets.TARGETS`, each in its own worker
    process limited to ``time_limit`` seconds; a target not installed is reported with its
    install command."""
    reports = []
    for name, target in TARGETS.items():
        problem = target.problem()
        reports.append(Report(name, target.description, not_installed=problem) if problem
                       else _worker_report(name, max_examples, time_limit))
    return reports


MATRIX_HEADER = ("operator", "framework", "direction", "configuration class", "examples",
                 "near jumps", "max abs err", "max rel err", "verdict")


def format_matrix(reports: list[Report], markdown: bool = False) -> str:
    """One table of operator x framework x class over every report, then each framework's
    status, versions, disagreements, rejections and known differences."""
    rows = sorted((result.operator, report.target, *_row(result)[1:])
                  for report in reports for result in report.classes)
    lines = []
    if markdown:
        lines += ["| " + " | ".join(MATRIX_HEADER) + " |", "|" + " --- |" * len(MATRIX_HEADER)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        table = [MATRIX_HEADER, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(MATRIX_HEADER))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                  for row in table]
    lines += ["", REL_NOTE, ""]
    heading = "## " if markdown else "== "
    for report in reports:
        lines += [f"{heading}{report.target}", "", report.description, ""]
        if report.not_installed:
            lines += [f"Not run: {report.not_installed} (not a failure)", ""]
            continue
        if report.versions:
            lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()), ""]
        if report.failure:
            lines += ["CRASHED OR HUNG:", "", *_block(report.failure, markdown), ""]
        for result in report.disagreements:
            lines += [f"{result.verdict}: {result.operator} {result.direction}, "
                      f"{result.config_class}", "", *_block(result.counterexample, markdown), ""]
        for result in report.classes:
            if result.rejection:
                lines += [f"Rejected by the framework: {result.operator} {result.direction}, "
                          f"{result.config_class} ({result.rejected} of {result.examples} "
                          f"inputs), the first:", "", *_block(result.rejection, markdown), ""]
        lines += ["Known differences (conventions refdyn names, defects of the framework):", ""]
        for known in report.known_differences:
            lines += ([f"- **{known.name}** ({known.source}): {known.measured}"] if markdown else
                      [f"- {known.name}", f"    source: {known.source}",
                       f"    measured: {known.measured}"])
            if known.reproducer:
                lines += ["", "  Minimal reproducer (shrunk by Hypothesis):", "",
                          *("  " + line for line in _block(known.reproducer, markdown)), ""]
        if not report.known_differences:
            lines.append("- none")
        lines.append("")
    failed = [report.target for report in reports if report.failed]
    ran = [report for report in reports if not report.not_installed]
    lines.append(f"{'FAILED (' + ', '.join(failed) + ')' if failed else 'agrees'}: "
                 f"{len(ran)} frameworks run, {sum(len(r.classes) for r in ran)} configuration "
                 f"classes, {sum(c.examples for r in ran for c in r.classes)} examples, "
                 f"{sum(len(r.disagreements) for r in ran)} with real disagreements")
    return "\n".join(lines) + "\n"


def _block(text: str, markdown: bool) -> list[str]:
    return ["```", *text.splitlines(), "```"] if markdown else ["  " + line for line in text.splitlines()]


def write_matrix(reports: list[Report], json_path: Optional[str], markdown_path: Optional[str]) -> None:
    """``refdyn validate all``'s files: every report as JSON, the matrix as Markdown with the
    date and the Python, NumPy and refdyn versions it ran with."""
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump([report.to_json() for report in reports], handle, indent=2)
    if markdown_path:
        import datetime
        import platform

        from . import __version__
        header = ["# Conformance of other frameworks with refdyn", "",
                  f"Generated by `refdyn validate all --markdown` on "
                  f"{datetime.date.today().isoformat()} (refdyn {__version__}, Python "
                  f"{platform.python_version()}, NumPy {np.__version__}, {platform.machine()} "
                  f"CPU); do not edit by hand.  Each framework ran in its own process; every "
                  f"configuration class drew its examples with Hypothesis, derandomized.", ""]
        with open(markdown_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(header) + "\n" + format_matrix(reports, markdown=True))
