"""``refdyn validate TARGET``: a conformance report of another implementation against refdyn.

For every suite of the target (:mod:`refdyn.testing.targets`) and each of its configuration
classes, :func:`refdyn.testing.conformance.run_conformance` draws configurations, runs the
target and refdyn, and keeps the largest errors and Hypothesis's minimal counterexample.  Known
convention differences are measured by their probes and reported in their own section; only the
classes decide the verdict.  Needs ``hypothesis`` (the ``test`` extra).
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .testing.conformance import run_conformance
from .testing.targets import DEFAULT_EXAMPLES, Target


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

    @property
    def verdict(self) -> str:
        return "agrees" if self.counterexample is None else "DISAGREES"


@dataclass
class KnownResult:
    name: str
    source: str
    measured: str


@dataclass
class Report:
    target: str
    description: str
    not_installed: Optional[str] = None
    classes: list[ClassResult] = field(default_factory=list)
    known_differences: list[KnownResult] = field(default_factory=list)

    @property
    def disagreements(self) -> list[ClassResult]:
        return [result for result in self.classes if result.counterexample is not None]

    def to_json(self) -> dict:
        data = asdict(self)
        for entry, result in zip(data["classes"], self.classes):
            entry["verdict"] = result.verdict
        data["status"] = ("not installed" if self.not_installed else
                          "disagreements" if self.disagreements else "agrees")
        return data


def validate(target: Target, max_examples: int = DEFAULT_EXAMPLES) -> Report:
    """Run every suite and known-difference probe of ``target`` (derandomized)."""
    report = Report(target.name, target.description)
    problem = target.problem()
    if problem:
        report.not_installed = problem
        return report
    known = target.known_differences()
    exclusions = [difference.excludes for difference in known if difference.excludes]
    for suite in target.suites():
        candidate = suite.candidate()

        def skip(config, operator=suite.operator):
            return any(excludes(operator, config) for excludes in exclusions)

        for config_class in suite.classes:
            result = run_conformance(candidate, suite.operator, suite.direction,
                                     max_examples=max_examples, derandomize=True,
                                     skip=skip if exclusions else None, **config_class.knobs)
            report.classes.append(ClassResult(
                suite.operator, suite.direction, config_class.name, result.examples,
                result.max_abs_error, result.max_rel_error, result.counterexample))
    for difference in known:
        try:
            with np.errstate(all="ignore"):
                measured = difference.probe()
        except Exception as error:  # a broken probe is reported, it is not a disagreement
            measured = (f"probe failed: {type(error).__name__}: {error}\n"
                        f"{traceback.format_exc()}")
        report.known_differences.append(KnownResult(difference.name, difference.source, measured))
    return report


def _rows(report: Report) -> list[tuple[str, ...]]:
    return [(result.operator, result.direction, result.config_class, str(result.examples),
             f"{result.max_abs_error:.2e}", f"{result.max_rel_error:.2e}", result.verdict)
            for result in report.classes]


HEADER = ("operator", "direction", "configuration class", "examples", "max abs err",
          "max rel err", "verdict")
REL_NOTE = ("max rel err is max |target - refdyn| / max |refdyn| of the compared array; "
            "tolerances: float64 1e-10, float32 2e-4 relative (refdyn.testing.cases.TOLERANCES)")


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
    lines += ["", "Known convention differences (documented; not counted as disagreements):"]
    for known in report.known_differences:
        lines += [f"- {known.name}", f"    source: {known.source}",
                  f"    measured: {known.measured}"]
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
