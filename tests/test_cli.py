"""The ``refdyn`` command: ``check`` prints the table, names what it could not run, and fails
(exit status 1) when an implementation is wrong."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from refdyn import cli, deform_conv2d, deform_conv2d_backward
from refdyn.registry import DEFORM_CONV2D, Implementation


def test_check_passes_on_the_numpy_backends(capsys):
    assert cli.main(["check", "--backend", "literal", "--backend", "vectorized"]) == 0
    output = capsys.readouterr().out
    rows = [line.split() for line in output.splitlines()]
    for operator in ("bilinear_sample", "deform_conv2d"):
        for backend in ("literal", "vectorized"):
            assert [operator, backend] in [row[:2] for row in rows]
            assert [row[-1] for row in rows if row[:2] == [operator, backend]] == ["ok"]
    assert "all checks passed" in output


def test_check_names_backends_it_cannot_run(monkeypatch, capsys):
    monkeypatch.setitem(DEFORM_CONV2D.implementations, "cupy", Implementation(
        "refdyn.gpu.cupy:deform_conv2d", "refdyn.gpu.cupy:deform_conv2d_backward",
        lambda: "no CUDA device"))
    assert cli.main(["check", "--backend", "cupy"]) == 0
    output = capsys.readouterr().out
    assert "not run: deform_conv2d on cupy: no CUDA device" in output


def test_check_fails_on_a_wrong_backward(monkeypatch, capsys):
    def swapped_backward(grad_output, *args, **kwargs):
        grads = deform_conv2d_backward(grad_output, *args, **kwargs)
        return dataclasses.replace(grads, grad_offset=grads.grad_offset[:, ::-1].copy())

    monkeypatch.setitem(DEFORM_CONV2D.implementations, "literal",
                        Implementation(deform_conv2d, swapped_backward))
    assert cli.main(["check", "--backend", "literal"]) == 1
    output = capsys.readouterr().out
    assert "FAIL" in output and "grad_offset" in output


def test_console_script_entry_point_runs():
    completed = subprocess.run([sys.executable, "-m", "refdyn.cli", "--version"],
                               capture_output=True, text=True, check=True)
    assert completed.stdout.startswith("refdyn ")


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check", "--backend", "opencl"])
    assert exit_info.value.code == 2


def test_table_formatting_aligns_columns():
    rows = [cli.Row("op", "literal", cases=1, forward_error=np.float64(1e-9)),
            cli.Row("op", "cupy", not_run="no CUDA device")]
    lines = cli.format_table(rows).splitlines()
    assert len({len(line.rstrip()) for line in lines[:2]}) == 1
    assert lines[3].rstrip().endswith("not run")


def test_the_cli_imports_without_refdyn_gpu():
    """``python -m refdyn.cli`` from a source checkout, as ``refdyn validate`` starts its
    workers, has no ``refdyn.gpu`` (the package maps gpu/ there only when installed): the CLI
    must import and build its parser without it."""
    code = ("import sys; sys.modules['refdyn.gpu'] = None; import refdyn.cli; "
            "refdyn.cli.build_parser().parse_args(['check', '--help'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "usage: refdyn check" in result.stdout, result.stderr[-2000:]


def test_report_options_need_the_report():
    with pytest.raises(SystemExit, match=r"--tests, --quick only with --gpu-report FILE"):
        cli.main(["check", "--quick", "--tests", "test_gpu_cuda_c.py"])
