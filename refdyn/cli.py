"""The ``refdyn`` command.

``refdyn check`` runs every registered operator on every backend this machine has, and prints
one row per operator and backend: the largest forward and backward errors against the NumPy
reference (scaled by the largest expected magnitude), the finite-difference check and the
largest adjoint (dot-product) residual.  Backends that cannot run here are named with the
reason.  The exit status is 1 if any check fails.

``refdyn check --gpu-report FILE`` is the one command for a machine with a GPU: every GPU
backend checked, the standard layer timed against torchvision CUDA and the GPU tests run, each
step in a child process under a time limit, written to a Markdown report
(:mod:`refdyn.gpu_report`).

``refdyn validate TARGET`` compares another implementation (ONNX Runtime, the ONNX reference
evaluator, torchvision) with refdyn per operator and configuration class, reports documented
convention differences apart, and exits with 1 on any real disagreement
(:mod:`refdyn.validate`).  A target that is not installed is reported, not failed.

``refdyn bench`` times refdyn's backends against the peers installed beside it
(:mod:`refdyn.bench`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .bench import add_arguments as add_bench_arguments, command_bench
from .checks import ADJOINT_TOLERANCE, adjoint_residuals, compare_with_reference, \
    finite_difference_check
from .gpu_report import DEFAULT_TESTS, add_arguments as add_gpu_report_arguments, \
    command_gpu_report
from .gpu_report_probes import backend_label
from .gpu_report_runner import DEFAULT_TIME_BUDGET
from .registry import BACKENDS, OPERATORS, REFERENCE_BACKEND, Operator, load
from .testing.targets import DEFAULT_EXAMPLES, DEFAULT_TIME_LIMIT, TARGETS

#: Entries per input the finite-difference check perturbs on the slow (non-reference) backends.
FD_ENTRIES_SLOW_BACKENDS = 6


@dataclass
class Row:
    """One line of the ``check`` table."""

    operator: str
    backend: str
    cases: int = 0
    forward_error: float = 0.0
    backward_error: float = 0.0
    fd: str = "-"
    adjoint: float = 0.0
    failures: list[str] = field(default_factory=list)
    not_run: str = ""

    @property
    def verdict(self) -> str:
        if self.not_run:
            return "not run"
        return "FAIL" if self.failures else "ok"


def check_backend(op: Operator, backend: str, thorough: bool) -> Row:
    """Run the generic checks of one operator on one backend over its example configurations."""
    row = Row(op.name, backend)
    implementation = op.implementation(backend)
    problem = implementation.problem()
    if problem:
        row.not_run = problem
        return row
    make_case = load(op.make_case)
    fd_done = False
    for config in load(op.examples)(thorough):
        case = make_case(config)
        row.cases += 1
        comparison = compare_with_reference(op, implementation, case)
        row.forward_error = max(row.forward_error, comparison.max_error(["output"]))
        row.backward_error = max(row.backward_error, comparison.max_error(
            [f"grad_{name}" for name in op.differentiable]))
        row.failures += [f"{case.description}: {failure}" for failure in comparison.failures]
        usable_for_fd = (case.grad_output.dtype == np.float64 and case.grad_output.size > 0)
        if usable_for_fd:
            for name, residual in adjoint_residuals(op, implementation, case).items():
                row.adjoint = max(row.adjoint, residual)
                if residual > ADJOINT_TOLERANCE:
                    row.failures.append(f"{case.description}: adjoint residual of {name} "
                                        f"{residual:.3g} > {ADJOINT_TOLERANCE:g}")
        if usable_for_fd and not fd_done and case.kink_free:
            entries = None if backend == REFERENCE_BACKEND else FD_ENTRIES_SLOW_BACKENDS
            result = finite_difference_check(op, implementation, case, max_entries=entries)
            fd_done = True
            row.fd = f"{max(result.max_abs_error.values()):.1e}" if result.ok else "FAIL"
            row.failures += [f"{case.description}: {failure}" for failure in result.failures]
    return row


def run_check(thorough: bool, backends, operators) -> list[Row]:
    from refdyn.gpu import use_numba_simulator_without_device
    use_numba_simulator_without_device()
    rows = []
    for op in (OPERATORS[name] for name in operators):
        for backend in backends:
            if backend not in op.implementations:
                continue
            start = time.perf_counter()
            try:
                row = check_backend(op, backend, thorough)
            except Exception as error:  # a crashing backend is a failed check, reported as such
                row = Row(op.name, backend, failures=[
                    f"raised {type(error).__name__}: {error}\n{traceback.format_exc()}"])
            print(f"  checked {op.name} on {backend} in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr)
            rows.append(row)
    return rows


def format_table(rows: list[Row]) -> str:
    header = ("operator", "backend", "cases", "fwd err", "bwd err", "finite diff", "adjoint",
              "verdict")
    lines = [header]
    for row in rows:
        if row.not_run:
            lines.append((row.operator, backend_label(row.backend), "-", "-", "-", "-", "-",
                          row.verdict))
        else:
            lines.append((row.operator, backend_label(row.backend), str(row.cases), f"{row.forward_error:.1e}",
                          f"{row.backward_error:.1e}", row.fd, f"{row.adjoint:.1e}", row.verdict))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def command_check(args) -> int:
    if args.gpu_report:
        return command_gpu_report(args)
    report_only = [option for option, given in (
        ("--step-time-limit", args.step_time_limit is not None),
        ("--time-budget", args.time_budget != DEFAULT_TIME_BUDGET),
        ("--tests", args.tests != DEFAULT_TESTS), ("--quick", args.quick)) if given]
    if report_only:
        raise SystemExit(f"refdyn check: {', '.join(report_only)} only with --gpu-report FILE")
    rows = run_check(args.thorough, args.backend or BACKENDS, args.operator or list(OPERATORS))
    print(format_table(rows))
    print("\nErrors are max |actual - reference| / max(1, max |reference|); the finite-difference "
          "column is the largest |analytic - numeric| gradient entry (float64).")
    for row in rows:
        if row.not_run:
            print(f"not run: {row.operator} on {row.backend}: {row.not_run}")
    failed = [row for row in rows if row.failures]
    for row in failed:
        print(f"\nFAILED {row.operator} on {row.backend}:")
        for failure in row.failures[:10]:
            print(f"  {failure}")
    print(f"\n{'FAILED' if failed else 'all checks passed'}: {len(rows)} operator x backend rows, "
          f"{sum(1 for row in rows if row.not_run)} not run here")
    return 1 if failed else 0


def command_validate(args) -> int:
    from .validate import JOURNAL_FILE_VARIABLE, format_matrix, format_text, validate, \
        validate_all, write_matrix, write_reports   # needs hypothesis

    if args.target == "all":
        reports = validate_all(args.max_examples, args.time_limit)
        print(format_matrix(reports))
        write_matrix(reports, args.json, args.markdown)
        return 1 if any(report.failed for report in reports) else 0
    report = validate(TARGETS[args.target], args.max_examples,
                      os.environ.get(JOURNAL_FILE_VARIABLE))
    print(format_text(report))
    write_reports(report, args.json, args.markdown)
    return 1 if report.disagreements else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refdyn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"refdyn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check every operator on every available backend")
    check.add_argument("--thorough", action="store_true", help="run more configurations")
    check.add_argument("--backend", action="append", choices=BACKENDS,
                       help="only this backend (repeatable)")
    check.add_argument("--operator", action="append", choices=sorted(OPERATORS),
                       help="only this operator (repeatable)")
    add_gpu_report_arguments(check)
    check.set_defaults(run=command_check)
    validate = commands.add_parser(
        "validate", help="compare another implementation with refdyn (conformance report)")
    validate.add_argument("target", choices=["all", *sorted(TARGETS)],
                          help="a framework, or all: every installed one, each isolated")
    validate.add_argument("--max-examples", type=int, default=DEFAULT_EXAMPLES,
                          help=f"examples per configuration class (default {DEFAULT_EXAMPLES})")
    validate.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                          help=f"with all: seconds per framework before it counts as hung "
                               f"(default {DEFAULT_TIME_LIMIT})")
    validate.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    validate.add_argument("--markdown", metavar="PATH", help="also write the report as Markdown")
    validate.set_defaults(run=command_validate)
    bench = commands.add_parser(
        "bench", help="time refdyn's backends against the peers installed beside them")
    add_bench_arguments(bench)
    bench.set_defaults(run=command_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)   # the command, for reports
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
