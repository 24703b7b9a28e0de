"""``refdyn check --gpu-report FILE``: the report runs end to end where no GPU is (the Numba
simulator stands in for the device), each step in a child process whose hang, crash or
exception is that step's result while the next steps still run, and on a GPU machine a GPU
backend that cannot run fails instead of skipping."""

import dataclasses
import itertools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refdyn import bench_timing, cli, gpu, gpu_report, gpu_report_probes, gpu_report_runner
from refdyn.gpu_report_runner import FAILED, PASSED, SKIPPED, TIMED_OUT, Step

PYTHON = sys.executable


def summary(text: str) -> dict[str, tuple[str, str]]:
    """The report's summary table: step title -> (result, detail)."""
    rows = re.findall(r"^\| \d+ \| (.*?) \| (PASSED|FAILED|TIMED OUT|SKIPPED) \| [\d.]+ \| (.*) \|$",
                      text.split("## Summary", 1)[1], flags=re.M)
    return {title: (status, detail) for title, status, detail in rows}


def section(text: str, title_start: str) -> str:
    """The block of the step whose heading starts with ``title_start``."""
    return re.search(rf"^## \d+\. {re.escape(title_start)}.*?(?=^## )", text,
                     flags=re.M | re.S).group(0)


def test_report_runs_end_to_end(tmp_path, capsys):
    """The one command with quick settings (one cheap operator, a tiny timed layer, one test
    file): header, environment, a line per backend (Numba checked, under the simulator without
    a GPU; CuPy skipped without a device), the timing section (the device rows not timed without
    a GPU, with the reason) and the summary.  On a GPU machine every step must pass instead:
    nothing may skip there."""
    report = tmp_path / "gpu-report.md"
    command = ["check", "--gpu-report", str(report), "--quick", "--operator", "roi_align",
               "--tests", "test_gpu_availability.py"]
    status = cli.main(command)
    text = report.read_text()
    assert status == 0, text
    assert text.startswith("# refdyn GPU report\n")
    for field in ("date", "machine"):
        assert re.search(rf"^- {field}: \S", text, flags=re.M)
    assert f"- command: `refdyn {' '.join(command)}`" in text

    environment = section(text, "environment")
    assert "CUDA devices (libcuda):" in environment and "installed: refdyn" in environment
    for backend in ("host", "numba", "cupy"):
        assert f"backend {gpu_report_probes.backend_label(backend)}: " in environment

    results = summary(text)
    device = gpu.cuda_device_count() > 0
    assert results["environment"][0] == PASSED
    assert results["refdyn check on host"] == (
        PASSED, "all checks passed: 1 operator x backend rows, 0 not run here")
    numba = "refdyn check on numba" + ("" if device else " (simulator)")
    assert results[numba] == (PASSED, "all checks passed: 1 operator x backend rows, 0 not run here")
    assert re.search(r"^roi_align +numba.* ok", section(text, numba), flags=re.M)
    deterministic = [title for title in results if title.startswith("deterministic")]
    assert len(deterministic) == 2
    timing = results["timing: the standard deform_conv2d layer, refdyn's GPU backends against "
                     "torchvision CUDA"]
    if device:
        assert all(status == PASSED for status, _ in results.values()), results
        assert "refdyn cupy / torchvision CUDA, forward" in timing[1]
    else:
        assert results["refdyn check on cupy"] == (SKIPPED, gpu.backend_problem("cupy"))
        assert {results[title] for title in deterministic} == {(SKIPPED, "no CUDA device")}
        assert timing[0] == PASSED
        assert "torchvision CUDA (not run: no CUDA device" in timing[1]
    timed = section(text, "timing")
    assert re.search(r"^  refdyn numpy +forward +[\d.]+ ", timed, flags=re.M)
    assert re.search(r"^  torchvision CUDA +forward ", timed, flags=re.M)
    json.loads((tmp_path / "gpu-report.bench.json").read_text())
    pytest_step = results["the GPU test files under pytest (tests/test_gpu_availability.py)"]
    assert pytest_step[0] == PASSED and re.fullmatch(r"\d+ passed", pytest_step[1])

    passed, skipped = (sum(1 for status, _ in results.values() if status == wanted)
                       for wanted in (PASSED, SKIPPED))
    assert len(results) == 8 and passed + skipped == 8
    last = text.rstrip().splitlines()[-1]
    assert re.fullmatch(rf"GPU REPORT: {passed} steps passed, 0 failed, 0 timed out, {skipped} "
                        r"skipped \(8 steps in \d+ s\)", last)
    output = capsys.readouterr().out
    assert f"[3/8] PASSED: {numba}" in output and output.rstrip().endswith(last)


def hanging_command(pid_file: Path) -> tuple[str, ...]:
    """A step that prints, starts a grandchild that sleeps (its pid in ``pid_file``), and hangs."""
    return (PYTHON, "-c",
            "import subprocess, sys, time\n"
            "print('started', flush=True)\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(120)")


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_hanging_and_raising_steps_are_reported_and_the_next_steps_run(tmp_path):
    """A hang is killed at its limit (with everything it started) and is TIMED OUT with the
    output it had printed; an exception is FAILED with its error line; the next step runs."""
    pid_file = tmp_path / "grandchild.pid"
    steps = [Step("hangs", hanging_command(pid_file), time_limit=3),
             Step("raises", (PYTHON, "-c", "raise RuntimeError('kernel launch failed')"), 30),
             Step("works", (PYTHON, "-c", "print('all good')"), 30)]
    report = tmp_path / "report.md"
    start = time.monotonic()
    results = gpu_report_runner.run_report(str(report), steps, "a test", time_budget=120)
    assert time.monotonic() - start < 30
    assert [result.status for result in results] == [TIMED_OUT, FAILED, PASSED]
    assert 3 <= results[0].seconds < 15
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(grandchild)

    text = report.read_text()
    hung = section(text, "hangs")
    assert "started" in hung and "**Result: TIMED OUT** after" in hung
    assert "killed at its time limit of 3 s" in hung
    raised = section(text, "raises")
    assert "Traceback (most recent call last)" in raised
    assert re.search(r"^\*\*Result: FAILED\*\* after [\d.]+ s: exit status 1; "
                     r"RuntimeError: kernel launch failed$", raised, flags=re.M)
    assert "**Result: PASSED**" in text.split("## 3. works", 1)[1]
    assert summary(text) == {"hangs": (TIMED_OUT, "killed at its time limit of 3 s"),
                             "raises": (FAILED, "exit status 1; RuntimeError: kernel launch failed"),
                             "works": (PASSED, "all good")}
    assert re.search(r"\nGPU REPORT: 1 steps passed, 1 failed, 1 timed out, 0 skipped \(3 steps "
                     r"in \d+ s\)$", text.rstrip())


def test_the_budget_cuts_a_step_and_skips_the_rest(tmp_path):
    steps = [Step("slow", (PYTHON, "-c", "import time; time.sleep(60)"), time_limit=60),
             Step("late", (PYTHON, "-c", "print(1)"), time_limit=60)]
    results = gpu_report_runner.run_report(str(tmp_path / "report.md"), steps, "a test",
                                           time_budget=6)
    assert [result.status for result in results] == [TIMED_OUT, SKIPPED]
    assert 6 <= results[0].seconds < 15
    assert results[0].detail == "killed at its time limit of 6 s (what was left of the report's 6 s)"
    assert results[1].detail == "the report's time budget of 6 s is spent"
    assert "(what is left of the budget)" in (tmp_path / "report.md").read_text()


def test_a_failed_step_fails_the_command(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_report, "gpu_report_steps", lambda *args: [
        Step("raises", (PYTHON, "-c", "raise SystemExit(3)"), 30)])
    report = tmp_path / "report.md"
    assert cli.main(["check", "--gpu-report", str(report)]) == 1
    assert summary(report.read_text()) == {"raises": (FAILED, "exit status 3")}


def steps_by_title(steps) -> dict[str, Step]:
    return {step.title: step for step in steps}


def test_on_a_gpu_machine_a_gpu_backend_that_cannot_run_fails(monkeypatch, tmp_path):
    """GPU checks must not skip where a device exists: a device backend that cannot run (CuPy
    missing; Numba left on the simulator) is FAILED; without a device it is SKIPPED."""
    def problem(backend):
        return "cupy is not installed" if backend == "cupy" else None

    monkeypatch.setattr(gpu, "backend_problem", problem)
    monkeypatch.setenv(gpu.CUDA_SIMULATOR_VARIABLE, "1")
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 1)
    steps = steps_by_title(gpu_report.gpu_report_steps(str(tmp_path / "r.md"), quick=True))
    assert steps["refdyn check on cupy"].failure == (
        "a CUDA device is present but the cupy backend cannot run: cupy is not installed")
    numba = steps["refdyn check on numba (simulator)"]
    assert "NUMBA_ENABLE_CUDASIM is set: unset it" in numba.failure and not numba.skip
    for backend in ("numba", "cupy"):
        title = (f"deterministic deform_conv2d backward on {backend}: "
                 f"{gpu_report_probes.DETERMINISTIC_RUNS} runs bitwise identical")
        assert steps[title].failure.startswith("a CUDA device is present")
    assert not steps["refdyn check on host"].failure
    result = gpu_report_runner.run_step(steps["refdyn check on cupy"], 10)
    assert (result.status, result.seconds) == (FAILED, 0.0)

    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 0)
    steps = steps_by_title(gpu_report.gpu_report_steps(str(tmp_path / "r.md"), quick=True))
    cupy = steps["refdyn check on cupy"]
    assert (cupy.skip, cupy.failure) == ("cupy is not installed", "")
    assert not steps["refdyn check on numba (simulator)"].skip


def bench_json(path: Path, rows: list[dict]) -> str:
    path.write_text(json.dumps({"standard": {"rows": rows, "ratios": [
        {"numerator": "refdyn cupy", "denominator": "torchvision CUDA", "pass": "forward",
         "ratio": 0.8}]}}))
    return str(path)


def test_timing_step_fails_on_a_wrong_implementation_and_untimed_device_rows_on_a_gpu(
        monkeypatch, tmp_path):
    timed = {"implementation": "refdyn cupy", "pass": "forward", "times_s": [1e-3], "not_run": ""}
    untimed = {"implementation": "torchvision CUDA", "pass": "forward", "times_s": [],
               "not_run": "not installed (torchvision)"}
    wrong = {"implementation": "refdyn numba", "pass": "backward", "times_s": [],
             "not_run": "check failed: error 0.5 against the float64 reference"}
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 0)
    judge = gpu_report.bench_judge(bench_json(tmp_path / "a.json", [timed, untimed]))
    assert judge("") == (True, "refdyn cupy / torchvision CUDA, forward: 0.80; not timed: "
                               "torchvision CUDA (not installed (torchvision))")
    judge = gpu_report.bench_judge(bench_json(tmp_path / "b.json", [timed, wrong]))
    assert judge("") == (False, "refdyn numba backward: check failed: error 0.5 against the "
                                "float64 reference; refdyn cupy / torchvision CUDA, forward: 0.80")
    monkeypatch.setattr(gpu, "cuda_device_count", lambda: 1)
    judge = gpu_report.bench_judge(bench_json(tmp_path / "c.json", [timed, untimed]))
    assert judge("")[0] is False


def test_the_test_step_runs_the_gpu_test_files_but_the_reports_own():
    files = gpu_report.checkout_test_files(gpu_report.DEFAULT_TESTS)
    here = Path(__file__).resolve().parent
    assert str(here / "test_gpu_availability.py") in files
    assert str(here / "test_deform_conv_gpu.py") in files      # every family's GPU tests
    assert str(here / "test_gpu_report.py") not in files


def test_a_step_runs_in_an_empty_folder():
    """``python -m refdyn...`` from a checkout would import the source folder refdyn/, which has
    no refdyn.gpu (CI, with refdyn installed, found the report's children failing so)."""
    step = Step("where", (sys.executable, "-c", "import os; print(os.listdir('.'))"))
    result = gpu_report_runner.run_step(step, 30)
    assert (result.status, result.detail) == (PASSED, "[]"), result


def test_pytest_counts_are_the_detail():
    output = "....s..F\n=== short test summary info ===\nFAILED x\n2 failed, 10 passed, 1 skipped in 3.21s\n"
    assert gpu_report.pytest_judge(output) == (True, "2 failed, 10 passed, 1 skipped")


def with_device_standing_in(monkeypatch):
    """The Numba simulator standing in for a device (as in tests/test_bench.py)."""
    if gpu.cuda_device_count() == 0:
        monkeypatch.setattr(bench_timing, "gpu_problem", lambda backend: None)


def test_deterministic_backward_is_checked_run_to_run(monkeypatch, capsys, nb):
    with_device_standing_in(monkeypatch)
    assert gpu_report_probes.deterministic_backward("numba", quick=True) == []
    assert "bitwise identical in 3 runs: grad_input, grad_offset, grad_weight, grad_bias, " \
           "grad_mask" in capsys.readouterr().out


def test_deterministic_backward_finds_a_run_that_differs(monkeypatch, nb, cuda):
    """A backward whose grad_input drifts from call to call (as float atomics can) fails."""
    with_device_standing_in(monkeypatch)
    original, calls = nb.deform_conv2d_backward, itertools.count()

    def drifting(*args, **kwargs):
        grads = original(*args, **kwargs)
        grad_input = grads.grad_input.copy_to_host()
        grad_input.flat[0] += np.float32(1e-3) * next(calls)
        return dataclasses.replace(grads, grad_input=cuda.to_device(grad_input))

    monkeypatch.setattr(nb, "deform_conv2d_backward", drifting)
    failures = gpu_report_probes.deterministic_backward("numba", quick=True)
    assert len(failures) == 2 and all(failure.startswith("grad_input of run ")
                                      for failure in failures), failures


def test_the_child_of_the_environment_step_lists_every_backend(capsys):
    assert gpu_report.main(["environment"]) == 0
    output = capsys.readouterr().out
    assert f"CUDA devices (libcuda): {gpu.cuda_device_count()}" in output
    assert output.rstrip().splitlines()[-1].startswith("backends that can run here: ")


def test_readme_shows_the_report_options_as_help_prints_them(monkeypatch, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Checking on a GPU", 1)[1].split("\n## ", 1)[0]
    assert "refdyn check --gpu-report gpu-report.md" in section
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    assert shown in capsys.readouterr().out
